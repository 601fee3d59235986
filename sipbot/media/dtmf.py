"""DTMF: RFC 4733 telephone-events both ways, and in-band tones as a fallback (sans-I/O).

An RFC 4733 event is a series of RTP packets that all carry the event's start timestamp, a
growing duration and, at the end, the E bit; the end packet is sent three times (§2.5.1.4).

Rules:

* Rule 1 (receive): a digit is reported once, on the first packet of its event, identified by
  the RTP timestamp; later updates, end packets and their retransmissions are ignored.
* Rule 2 (send): one packet per 20 ms slot; the first has the marker bit, all share the
  timestamp of the slot the event began in, ``duration`` counts the slots so far, the last three
  repeat the E bit with the final duration; then ``gap_ms`` without events before the next digit.
"""

from __future__ import annotations

import struct
from collections import deque

import numpy as np

from sipbot.media.formats import FRAME_MS
from sipbot.media.rtp import RtpPacket

EVENT_CODES = "0123456789*#ABCD"  # RFC 4733 §3.2: events 0-15; 16 is flash (not a digit)
END_REPEATS = 3
DEFAULT_VOLUME = 10  # -dBm0, RFC 4733 §2.3.4
MIN_DURATION_MS = 40
MAX_DURATION_MS = 5_000
_EVENT = struct.Struct("!BBH")

# (low, high) Hz for in-band tones, ITU-T Q.23
_TONES = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip


def check_digits(digits: str) -> str:
    """``digits`` upper-cased, or ValueError ``invalid DTMF digit 'x'``."""
    digits = digits.upper()
    for digit in digits:
        if digit not in EVENT_CODES:
            raise ValueError(f"invalid DTMF digit {digit!r}")
    return digits


class DtmfReceiver:
    """Turns inbound telephone-event packets into digits (one per event)."""

    def __init__(self) -> None:
        self._recent: deque[int] = deque(maxlen=8)  # timestamps of recent events

    def reset(self) -> None:
        """Forget recent events (a new SSRC)."""
        self._recent.clear()

    def receive(self, packet: RtpPacket) -> str | None:
        """The digit this packet starts, or None (continuation, end, retransmit, non-digit)."""
        if len(packet.payload) < _EVENT.size or packet.timestamp in self._recent:
            return None
        self._recent.append(packet.timestamp)
        event = packet.payload[0]
        return EVENT_CODES[event] if event < len(EVENT_CODES) else None


class DtmfSender:
    """Schedules telephone-event packets, one per slot.

    Args:
        clock_rate_hz: RTP clock of the telephone-event payload type (8000 in practice).
        volume: power level in -dBm0 (0-63).
        gap_ms: pause without events between two digits.
    """

    def __init__(
        self, clock_rate_hz: int = 8_000, *, volume: int = DEFAULT_VOLUME, gap_ms: int = 40
    ) -> None:
        self.samples_per_frame = clock_rate_hz * FRAME_MS // 1000
        self.clock_rate_hz = clock_rate_hz
        self.volume = volume
        self.gap_frames = -(-gap_ms // FRAME_MS)
        self._queue: deque[tuple[int, int]] = deque()  # (event code, duration in samples)
        self._event: int | None = None
        self._duration = 0
        self._timestamp = 0
        self._sent = 0  # packets of the current event so far
        self._gap = 0  # slots left in the pause after an event

    @property
    def active(self) -> bool:
        """True while events are queued, being sent, or in the pause after one."""
        return bool(self._queue) or self._event is not None or self._gap > 0

    def queue(self, digits: str, duration_ms: int = 100) -> None:
        """Queue ``digits`` (0-9 * # A-D), each ``duration_ms`` long (40-5000 ms).

        Raises:
            ValueError: an invalid digit or duration.
        """
        if not MIN_DURATION_MS <= duration_ms <= MAX_DURATION_MS:
            raise ValueError(
                f"DTMF duration {duration_ms} ms outside {MIN_DURATION_MS}-{MAX_DURATION_MS} ms"
            )
        samples = duration_ms * self.clock_rate_hz // 1000
        for digit in check_digits(digits):
            self._queue.append((EVENT_CODES.index(digit), samples))

    def clear(self) -> None:
        """Drop queued digits (the event in progress still ends properly)."""
        self._queue.clear()

    def next_packet(self, slot_timestamp: int) -> tuple[bytes, int, bool] | None:
        """For the slot whose timestamp is ``slot_timestamp``: ``(payload, timestamp, marker)``,
        or None when this slot carries audio instead."""
        if self._event is None:
            if self._gap > 0:
                self._gap -= 1
                return None
            if not self._queue:
                return None
            self._event, self._duration = self._queue.popleft()
            self._timestamp = slot_timestamp
            self._sent = 0
        self._sent += 1
        elapsed = self._sent * self.samples_per_frame
        marker = self._sent == 1
        if elapsed < self._duration:
            payload = _EVENT.pack(self._event, self.volume, elapsed)
            return payload, self._timestamp, marker
        payload = _EVENT.pack(self._event, 0x80 | self.volume, self._duration)
        timestamp = self._timestamp
        if elapsed >= self._duration + (END_REPEATS - 1) * self.samples_per_frame:
            self._event = None
            self._gap = self.gap_frames
        return payload, timestamp, marker


def dtmf_tone(digits: str, rate_hz: int, duration_ms: int = 100, gap_ms: int = 60) -> bytes:
    """In-band DTMF (PCM16) for ``digits``: each tone ``duration_ms`` then ``gap_ms`` of silence.

    Both tones at -10 dBFS each. Raises ValueError for an invalid digit.
    """
    tone_samples = rate_hz * duration_ms // 1000
    gap = bytes(2 * (rate_hz * gap_ms // 1000))
    t = np.arange(tone_samples) / rate_hz
    amplitude = 32767 * 10 ** (-10 / 20)
    parts = []
    for digit in check_digits(digits):
        low, high = _TONES[digit]
        wave = amplitude * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
        parts.append(np.rint(wave).astype("<i2").tobytes())
        parts.append(gap)
    return b"".join(parts)
