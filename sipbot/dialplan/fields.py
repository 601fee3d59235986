"""Helpers for precise config errors: a field name on every error, suggestions for typos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from sipbot.errors import ConfigError
from sipbot.suggest import did_you_mean as did_you_mean

T = TypeVar("T")


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
