"""Per-trunk outbound limits: concurrent calls, calls per second, a bounded wait queue.

:class:`DialGate` is sans-I/O: the dialer submits requests and asks, with ``now``, which may send
their INVITE; it arms one timer at :meth:`DialGate.next_deadline`.

Rules:

* Rule 1: INVITEs never leave faster than ``cps``: two releases are at least ``1 / cps``
  seconds apart (spacing, no burst), and so are two INVITEs as they leave: a released call
  prepares its media first, which takes a varying time, so it sends only once
  :meth:`DialGate.invite_wait` says 0 and reports the moment it sent with
  :meth:`DialGate.invite_sent`. The spacing is ``(1 + CPS_MARGIN) / cps``: the 2 % (20 ms
  over ``cps`` INVITEs) absorbs the scheduling delay between deciding to send and the packet
  leaving (measured up to ~12 ms on a loaded 2-core host), so any window of one second *on the
  wire* holds at most ``cps`` INVITEs.
* Rule 2: at most ``max_calls`` released calls are in progress; :meth:`DialGate.finished`
  gives a slot back.
* Rule 3: a request that cannot be released at once waits, first come first served, in a queue
  of at most ``queue`` requests; a request beyond it is refused at once, one that waited longer
  than ``queue_timeout_s`` is dropped (:meth:`DialGate.expired`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

CPS_MARGIN = 0.02  # spacing is (1 + margin) / cps: see Rule 1


@dataclass(frozen=True, slots=True)
class OutboundLimits:
    """A trunk's ``outbound`` limits (None: unlimited)."""

    max_calls: int | None = None
    cps: float | None = None
    queue: int = 0
    queue_timeout_s: float = 30.0


class DialGate:
    """One trunk's limits (see the module rules).

    Args:
        limits: the trunk's limits.
    """

    def __init__(self, limits: OutboundLimits) -> None:
        self.limits = limits
        self._interval = (1.0 + CPS_MARGIN) / limits.cps if limits.cps else 0.0
        self._next_send = float("-inf")
        self._next_invite = float("-inf")
        self._active: set[str] = set()
        self._waiting: OrderedDict[str, float] = OrderedDict()  # ticket -> queued at

    @property
    def active(self) -> int:
        """Calls released and not finished."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return len(self._waiting)

    def _slot_free(self) -> bool:
        return self.limits.max_calls is None or len(self._active) < self.limits.max_calls

    def _goes_at_once(self, now: float) -> bool:
        """Whether a new request would be released now (behind those already waiting)."""
        limit = self.limits.max_calls
        if limit is not None and len(self._active) + len(self._waiting) >= limit:
            return False
        return not self._interval or (not self._waiting and now >= self._next_send)

    def submit(self, ticket: str, now: float) -> bool:
        """Add a request; False when it is refused (the queue is full, Rule 3)."""
        if not self._goes_at_once(now) and len(self._waiting) >= self.limits.queue:
            return False
        self._waiting[ticket] = now
        return True

    def release(self, now: float) -> list[str]:
        """The requests whose INVITE may leave now (Rules 1-2), in order."""
        out: list[str] = []
        while self._waiting and self._slot_free() and now >= self._next_send:
            ticket, _ = self._waiting.popitem(last=False)
            self._active.add(ticket)
            if self._interval:
                self._next_send = max(now, self._next_send) + self._interval
            out.append(ticket)
        return out

    def invite_wait(self, now: float) -> float:
        """How long a released call must still wait before its INVITE leaves (Rule 1)."""
        return max(0.0, self._next_invite - now)

    def invite_sent(self, now: float) -> None:
        """An INVITE left at ``now``: the next one waits ``1 / cps`` from then (Rule 1)."""
        self._next_invite = max(self._next_invite, now + self._interval)

    def expired(self, now: float) -> list[str]:
        """The requests that waited longer than ``queue_timeout_s`` (removed; Rule 3)."""
        limit = self.limits.queue_timeout_s
        out = [t for t, at in self._waiting.items() if now - at >= limit]
        for ticket in out:
            del self._waiting[ticket]
        return out

    def adopt(self, old: DialGate) -> None:
        """Take over ``old``'s calls, queue and pacing (its trunk's limits were reloaded)."""
        self._active |= old._active
        self._waiting.update(old._waiting)
        self._next_send = old._next_send
        self._next_invite = old._next_invite

    def cancel(self, ticket: str) -> None:
        """Forget a waiting request (the server is stopping)."""
        self._waiting.pop(ticket, None)

    def finished(self, ticket: str) -> None:
        """A released call ended: its slot is free (Rule 2)."""
        self._active.discard(ticket)

    def next_deadline(self) -> float | None:
        """When :meth:`release` or :meth:`expired` may next have something (None: only after
        :meth:`finished` or :meth:`submit`)."""
        if not self._waiting:
            return None
        first_expiry = next(iter(self._waiting.values())) + self.limits.queue_timeout_s
        if not self._slot_free():
            return first_expiry
        return min(first_expiry, self._next_send)
