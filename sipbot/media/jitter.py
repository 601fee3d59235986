"""A small reordering buffer for inbound RTP, tuned for minimal latency (sans-I/O).

It does not smooth arrival jitter (the provider consumes audio as fast as it comes); it only puts
packets back in sequence order, waiting a bounded time for a missing one.

Rules:

* Rule 1: a packet that is next in sequence is released at once, together with every buffered
  packet that follows it without a gap.
* Rule 2: a packet after a gap is held until the gap fills or until it has waited ``max_wait_s``
  (or more than ``max_packets`` are held); then the gap is skipped and counted as lost.
* Rule 3: duplicates and packets older than the last released one are dropped and counted.
* Rule 4: a new SSRC, or a sequence jump larger than ``MAX_JUMP`` either way, restarts the
  stream: whatever is held is released first (it is older), then the new packet.
* Rule 5: time is a value: ``now`` is passed in; :meth:`poll` must be called at least every
  frame while :meth:`next_deadline` is not None (the media ticker does).
"""

from __future__ import annotations

from dataclasses import dataclass

from sipbot.media.rtp import RtpPacket, seq_distance

MAX_JUMP = 100  # packets: a larger jump is a restarted stream, not loss (2 s at 20 ms)


@dataclass(slots=True)
class JitterStats:
    """Counters since the buffer was made."""

    released: int = 0
    lost: int = 0
    duplicates: int = 0
    late: int = 0
    restarts: int = 0


class JitterBuffer:
    """Reorders one inbound RTP stream.

    Args:
        max_wait_s: longest a packet waits for a gap before it to fill.
        max_packets: most packets held at once; one more skips the oldest gap.
    """

    def __init__(self, max_wait_s: float = 0.06, max_packets: int = 16) -> None:
        self.max_wait_s = max_wait_s
        self.max_packets = max_packets
        self.stats = JitterStats()
        self._ssrc: int | None = None
        self._expected = 0
        self._held: dict[int, tuple[RtpPacket, float]] = {}

    def reset(self) -> None:
        """Forget the stream (held packets are discarded)."""
        self._ssrc = None
        self._held.clear()

    def next_deadline(self) -> float | None:
        """When the oldest held packet stops waiting, or None if nothing is held."""
        if not self._held:
            return None
        return min(arrival for _, arrival in self._held.values()) + self.max_wait_s

    def push(self, packet: RtpPacket, now: float) -> list[RtpPacket]:
        """Add a packet that arrived at ``now``; return the packets now released, in order."""
        if packet.ssrc != self._ssrc:
            return self._restart(packet, counted=self._ssrc is not None)
        distance = seq_distance(packet.sequence, self._expected)
        if distance == 0:
            released = [packet]
            self._expected = (self._expected + 1) & 0xFFFF
            if self._held:
                self._release_run(released)
            self.stats.released += len(released)
            return released
        if distance > MAX_JUMP or distance < -MAX_JUMP:
            return self._restart(packet, counted=True)
        if distance < 0:
            self.stats.late += 1
            return []
        if packet.sequence in self._held:
            self.stats.duplicates += 1
            return []
        self._held[packet.sequence] = (packet, now)
        return self.poll(now)

    def poll(self, now: float) -> list[RtpPacket]:
        """Skip gaps whose packets have waited long enough; return what that releases."""
        released: list[RtpPacket] = []
        while self._held and (
            len(self._held) > self.max_packets
            or now - min(arrival for _, arrival in self._held.values()) >= self.max_wait_s
        ):
            first = min(self._held, key=lambda seq: seq_distance(seq, self._expected))
            self.stats.lost += seq_distance(first, self._expected)
            self._expected = first
            self._release_run(released)
        self.stats.released += len(released)
        return released

    def _release_run(self, released: list[RtpPacket]) -> None:
        """Move the held packets that continue the sequence without a gap into ``released``."""
        held = self._held
        while self._expected in held:
            released.append(held.pop(self._expected)[0])
            self._expected = (self._expected + 1) & 0xFFFF

    def _restart(self, packet: RtpPacket, *, counted: bool) -> list[RtpPacket]:
        """Begin a new stream at ``packet``, releasing what the old one still held."""
        released = [
            held
            for held, _ in sorted(
                self._held.values(), key=lambda item: seq_distance(item[0].sequence, self._expected)
            )
        ]
        self._held.clear()
        if counted:
            self.stats.restarts += 1
        self._ssrc = packet.ssrc
        self._expected = (packet.sequence + 1) & 0xFFFF
        released.append(packet)
        self.stats.released += len(released)
        return released
