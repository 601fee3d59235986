"""Rate-limited logging for per-message and per-packet problems (SIP junk and floods, RTP
garbage, foreign sources, bad payload types, core bugs).

A neutral module: sip/, media/ and the server all use it, and it imports nothing of theirs.
"""

from __future__ import annotations

import logging
from typing import Any

DEFAULT_INTERVAL_S = 10.0


class RateLimitedLog:
    """Logs each kind of problem at most once per ``interval_s``, with a count of the rest.

    ``now`` is passed in (monotonic seconds), so the limiter reads no clock itself. Keys are a
    fixed set of kinds chosen by the caller (never peer data), so memory stays bounded.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _allow(self, key: str, now: float) -> int | None:
        """None if suppressed, else the number of suppressed lines since the last one."""
        if now < self._next.get(key, float("-inf")):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._next[key] = now + self.interval_s
        return self._suppressed.pop(key, 0)

    def log(
        self,
        level: int,
        key: str,
        now: float,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log ``message % args`` at ``level`` unless ``key`` was logged within the interval
        (with ``exc_info``'s traceback, when given)."""
        suppressed = self._allow(key, now)
        if suppressed is None:
            return
        if suppressed:
            message += " (%d similar suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)

    def warning(self, key: str, now: float, message: str, *args: Any) -> None:
        """:meth:`log` at WARNING."""
        self.log(logging.WARNING, key, now, message, *args)

    def info(self, key: str, now: float, message: str, *args: Any) -> None:
        """:meth:`log` at INFO."""
        self.log(logging.INFO, key, now, message, *args)

    def exception(self, key: str, now: float, message: str, *args: Any) -> None:
        """:meth:`log` at ERROR with the current exception's traceback."""
        suppressed = self._allow(key, now)
        if suppressed is None:
            return
        if suppressed:
            message += " (%d similar suppressed)"
            args = (*args, suppressed)
        self.logger.exception(message, *args)
