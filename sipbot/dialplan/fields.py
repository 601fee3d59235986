"""Helpers for precise config errors: a field name on every error, suggestions for typos."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

from sipbot.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    options = list(candidates)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close and len(name) >= 2:  # a shortened name: ``t1`` for ``t1_ms``
        close = [c for c in options if c.startswith(name)][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def fail(field: str, message: str) -> NoReturn:
    """Raise a :class:`ConfigError` for ``field`` (relative to the object being checked)."""
    raise ConfigError(message, field=field)


def with_field(field: str, parse: Callable[[Any], T], value: Any) -> T:
    """``parse(value)``, putting ``field`` in front of the field of a ConfigError it raises."""
    try:
        return parse(value)
    except ConfigError as exc:
        inner = f"{field}.{exc.field}" if exc.field else field
        raise ConfigError(exc.message, field=inner) from None
