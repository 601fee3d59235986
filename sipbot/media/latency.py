"""Per-call latency figures of the media path, cheap enough to leave on in production (sans-I/O).

Three measures per call, each a :class:`LatencyHistogram` fed with differences of the monotonic
readings the media shell already takes (the event loop's clock: 1 ms resolution on uvloop):

* **inbound** (:class:`~sipbot.media.receiver.RtpReceiver`): an audio RTP packet is read from
  the socket → its payload goes down the decode chain to ``on_audio`` (the provider's
  ``send_audio``). Zero for a packet in sequence (the synchronous DSP, ~10 µs, is not counted);
  the jitter buffer's wait for a missing packet otherwise. Time a datagram spends in the socket
  buffer before the loop reads it is not seen here (the caller-side echo delay of the benchmark
  includes it).
* **first audio** (:class:`~sipbot.media.sender.RtpSender`): provider audio handed to ``play()``
  while nothing was queued (the first chunk of a response, or the first after the provider fell
  behind) → the first packet carrying it is sent. This is the pre-buffer's hold plus the wait for
  the next 20 ms slot.
* **barge-in** (:class:`~sipbot.media.sender.RtpSender`): ``flush()`` → the next packet (silent
  by the pacer's Rule 5) is sent.

Rules:

* Rule 1: :meth:`LatencyHistogram.record` allocates nothing that outlives it and does not grow:
  fixed bins of :data:`BIN_MS` up to :data:`RANGE_MS`, one overflow bin, and the exact maximum.
* Rule 2: values are rounded to the nearest bin; a percentile is the value of the bin holding
  the nearest-rank sample (the exact maximum for the overflow bin), so integer-millisecond
  readings come back exactly.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

BIN_MS = 0.5
RANGE_MS = 256.0  # values above land in the overflow bin (percentiles there report the maximum)
BINS = int(RANGE_MS / BIN_MS)
_BINS_PER_S = 1000.0 / BIN_MS


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """One measure of one call: sample count and p50/p99/max in ms (zeros when count is 0)."""

    count: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """``{"n", "p50", "p99", "max"}`` for the CDR line."""
        return {"n": self.count, "p50": self.p50_ms, "p99": self.p99_ms, "max": self.max_ms}


class LatencyHistogram:
    """A fixed-size latency histogram (see the module rules)."""

    __slots__ = ("count", "counts", "max_s")

    def __init__(self) -> None:
        self.counts = array("I", [0]) * (BINS + 1)
        self.count = 0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        """Add one latency (seconds; negative readings count as zero)."""
        if seconds <= 0.0:
            self.counts[0] += 1
        else:
            index = int(seconds * _BINS_PER_S + 0.5)
            self.counts[index if index < BINS else BINS] += 1
            if seconds > self.max_s:
                self.max_s = seconds
        self.count += 1

    def percentile_ms(self, q: float) -> float:
        """The nearest-rank ``q``-th percentile (0 < q ≤ 100) in ms; 0.0 without samples."""
        if not self.count:
            return 0.0
        rank = max(1, -int(-q * self.count // 100))  # ceil(q/100 * count), at least 1
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                if index == BINS:
                    return self.max_ms
                return min(index * BIN_MS, self.max_ms)
        return self.max_ms  # pragma: no cover - the counts always add up to count

    @property
    def max_ms(self) -> float:
        """The largest value recorded, exact, in ms (rounded to 0.1 µs)."""
        return round(self.max_s * 1000.0, 4)

    def summary(self) -> LatencySummary:
        """Count, p50, p99 and max."""
        return LatencySummary(
            self.count, self.percentile_ms(50), self.percentile_ms(99), self.max_ms
        )

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this one (e.g. a process-wide total)."""
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.count += other.count
        self.max_s = max(self.max_s, other.max_s)


@dataclass(frozen=True, slots=True)
class MediaLatency:
    """The three measures of one call (see the module docstring)."""

    inbound: LatencySummary = LatencySummary()
    first_audio: LatencySummary = LatencySummary()
    barge_in: LatencySummary = LatencySummary()

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{"inbound": {...}, "first_audio": {...}, "barge_in": {...}}`` for the CDR line."""
        return {
            "inbound": self.inbound.as_dict(),
            "first_audio": self.first_audio.as_dict(),
            "barge_in": self.barge_in.as_dict(),
        }
