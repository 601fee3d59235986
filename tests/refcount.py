"""Whether an object is freed by reference counting alone (issue 12: ended calls were cyclic
garbage that only a full GC pass freed, which a frozen start-up heap makes rare)."""

from __future__ import annotations

import gc
import weakref


def freed_by_refcount(held: list[object]) -> bool:
    """Drop ``held``'s only element, the object's last strong reference the caller knows of,
    with the cyclic collector off: True when the object is gone at once (no cycle kept it)."""
    gone = weakref.ref(held[0])
    gc.disable()
    try:
        held.clear()
        return gone() is None
    finally:
        gc.enable()
