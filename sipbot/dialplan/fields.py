"""Helpers for precise config errors: a field name on every error, suggestions for typos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from sipbot.domain import SRTP_MODES, SrtpMode
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


def parse_srtp(value: Any) -> SrtpMode | None:
    """An ``srtp:`` setting: ``off``, ``optional`` or ``required``; None when not given.

    YAML 1.1 reads a bare ``off`` as false, so false is ``off``; true is refused (which mode?).

    Raises:
        ConfigError: any other value.
    """
    if value is None:
        return None
    if value is False:
        return "off"
    text = value.lower() if isinstance(value, str) else None
    for mode in SRTP_MODES:
        if text == mode:
            return mode
    hint = did_you_mean(str(value), SRTP_MODES)
    raise ConfigError(f"srtp must be off, optional or required, not {value!r}{hint}")
