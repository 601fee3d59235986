"""Per-source admission limits, sans-I/O: a message rate and a count of concurrent calls.

One :class:`SourceLimiter` per server. The user agent asks :meth:`SourceLimiter.allow_message`
for every datagram or stream message before the core parses it; the server asks
:meth:`SourceLimiter.open_call` before it admits an INVITE and calls
:meth:`SourceLimiter.close_call` when that call is over. A source is an IP address (not
address and port: a flood rotates its ports for free). Time is a value: every method that
needs it takes ``now`` (monotonic seconds); nothing here reads a clock.

Rules:

* Rule 1: messages: a token bucket per source, ``rate`` tokens a second up to ``burst``; a
  message takes one token or is refused. A flood from one address empties only its own bucket:
  every other source keeps its full allowance.
* Rule 2: calls: at most ``max_calls`` calls per source are open at once; ``close_call`` gives
  the place back. Counting is exact (never evicted): the server's own call limit bounds it.
* Rule 3: bounded memory: a source whose bucket has refilled is indistinguishable from one never
  seen, so it is forgotten (oldest first, a few per message). When more than ``max_sources``
  buckets are live anyway (a flood from many addresses), the least recently seen are forgotten:
  each of those sources may then burst once more, which the per-source call limit still bounds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_SOURCES = 10_000
EVICT_PER_MESSAGE = 2  # idle buckets examined per message: amortised O(1) cleanup


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """How much one source may do.

    Attributes:
        rate: messages per second a source may send on average (the refill rate).
        burst: messages a source may send at once (the bucket size, at least 1).
        max_calls: calls a source may have open at once.
        max_sources: buckets kept at most (Rule 3).
    """

    rate: float
    burst: float
    max_calls: int
    max_sources: int = DEFAULT_MAX_SOURCES

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if not self.burst >= 1:
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")
        if self.max_calls < 1 or self.max_sources < 1:
            raise ValueError("max_calls and max_sources must be at least 1")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float  # when ``tokens`` was last brought up to date


class SourceLimiter:
    """Per-source message rate and concurrent calls (see the module rules).

    Attributes:
        refused_messages: messages refused by :meth:`allow_message` since start.
        refused_calls: calls refused by :meth:`open_call` since start.
    """

    def __init__(self, settings: LimiterSettings) -> None:
        self.settings = settings
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently seen first
        self._calls: dict[str, int] = {}
        self._refill_s = settings.burst / settings.rate  # an empty bucket is full again after
        self.refused_messages = 0
        self.refused_calls = 0

    def allow_message(self, source: str, now: float) -> bool:
        """Take one token from ``source``'s bucket (Rule 1); False: refuse the message."""
        buckets = self._buckets
        bucket = buckets.get(source)
        settings = self.settings
        if bucket is None:
            self._forget(now)
            bucket = buckets[source] = _Bucket(settings.burst, now)
        else:
            buckets.move_to_end(source)
            elapsed = now - bucket.last
            if elapsed > 0:
                bucket.tokens = min(settings.burst, bucket.tokens + elapsed * settings.rate)
                bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused_messages += 1
        return False

    def open_call(self, source: str) -> bool:
        """Count a new call from ``source`` (Rule 2); False: it already has ``max_calls``."""
        open_calls = self._calls.get(source, 0)
        if open_calls >= self.settings.max_calls:
            self.refused_calls += 1
            return False
        self._calls[source] = open_calls + 1
        return True

    def close_call(self, source: str) -> None:
        """A call :meth:`open_call` admitted is over."""
        open_calls = self._calls.get(source, 0)
        if open_calls <= 1:
            self._calls.pop(source, None)
        else:
            self._calls[source] = open_calls - 1

    def open_calls(self, source: str) -> int:
        """How many calls from ``source`` are open."""
        return self._calls.get(source, 0)

    @property
    def tracked_sources(self) -> int:
        """How many buckets are held (Rule 3 bounds it by ``max_sources``)."""
        return len(self._buckets)

    def _forget(self, now: float) -> None:
        """Rule 3: drop refilled buckets (oldest first), then the oldest beyond the cap."""
        buckets = self._buckets
        for _ in range(EVICT_PER_MESSAGE):
            if not buckets:
                return
            oldest = next(iter(buckets.values()))
            if now - oldest.last < self._refill_s:
                break
            buckets.popitem(last=False)
        while len(buckets) >= self.settings.max_sources:
            buckets.popitem(last=False)
