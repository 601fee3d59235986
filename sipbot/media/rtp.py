"""RTP packets (RFC 3550 §5.1): parse, serialize, and the state of one outbound stream.

Sans-I/O and synchronous. Parsing accepts everything RFC 3550 allows in a header (CSRC list,
one header extension, padding) and raises :class:`~sipbot.errors.RtpParseError` with an exact
message for anything that is not RTP version 2 or does not fit in the datagram.

Rules:

* Rule 1: sequence numbers wrap at 2**16 and timestamps at 2**32; every arithmetic on them here
  is masked, so callers never see a value out of range.
* Rule 2: an :class:`OutboundStream` never repeats or skips a sequence number, and its timestamp
  advances by the samples of every slot (sent or not), so the peer can play it against its clock.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from sipbot.errors import RtpParseError

RTP_VERSION = 2
HEADER_BYTES = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

_HEADER = struct.Struct("!BBHII")
_EXTENSION = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. ``payload`` excludes padding; ``extension`` is (profile, data) or None."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None

    def serialize(self) -> bytes:
        """The packet on the wire (never padded)."""
        return serialize_rtp(self)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one datagram as RTP.

    Raises:
        RtpParseError: with one of these messages (``N`` stands for numbers)::

            RTP packet too short: N bytes
            RTP version N is not 2
            RTP CSRC list truncated: N CSRCs need N bytes, packet has N
            RTP header extension truncated
            RTP padding length N invalid for N bytes after the header
    """
    size = len(data)
    if size < HEADER_BYTES:
        raise RtpParseError(f"RTP packet too short: {size} bytes")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {first >> 6} is not 2")
    if first == 0x80:  # the common case: no padding, no extension, no CSRC
        return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, data[12:], second >= 0x80)
    return _parse_extended(data, first, second, sequence, timestamp, ssrc)


def _parse_extended(
    data: bytes, first: int, second: int, sequence: int, timestamp: int, ssrc: int
) -> RtpPacket:
    """The rest of :func:`parse_rtp`: CSRC list, header extension, padding."""
    size = len(data)
    offset = HEADER_BYTES
    csrc: tuple[int, ...] = ()
    count = first & 0x0F
    if count:
        end = offset + 4 * count
        if end > size:
            raise RtpParseError(
                f"RTP CSRC list truncated: {count} CSRCs need {end} bytes, packet has {size}"
            )
        csrc = struct.unpack_from(f"!{count}I", data, offset)
        offset = end
    extension = None
    if first & 0x10:
        if offset + 4 > size:
            raise RtpParseError("RTP header extension truncated")
        profile, words = _EXTENSION.unpack_from(data, offset)
        end = offset + 4 + 4 * words
        if end > size:
            raise RtpParseError("RTP header extension truncated")
        extension = (profile, bytes(data[offset + 4 : end]))
        offset = end
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or offset + padding > size:
            raise RtpParseError(
                f"RTP padding length {padding} invalid for {size - offset} bytes after the header"
            )
        end = size - padding
    payload = bytes(data[offset:end])
    return RtpPacket(
        second & 0x7F, sequence, timestamp, ssrc, payload, second >= 0x80, csrc, extension
    )


def serialize_rtp(packet: RtpPacket) -> bytes:
    """The wire form of ``packet`` (header, CSRCs, extension, payload; no padding)."""
    first = 0x80 | len(packet.csrc) | (0x10 if packet.extension is not None else 0)
    second = (0x80 if packet.marker else 0) | packet.payload_type
    parts = [_HEADER.pack(first, second, packet.sequence, packet.timestamp, packet.ssrc)]
    if packet.csrc:
        parts.append(struct.pack(f"!{len(packet.csrc)}I", *packet.csrc))
    if packet.extension is not None:
        profile, data = packet.extension
        if len(data) % 4:
            raise ValueError("RTP header extension data must be a whole number of 32-bit words")
        parts.append(_EXTENSION.pack(profile, len(data) // 4))
        parts.append(data)
    parts.append(packet.payload)
    return b"".join(parts)


def seq_distance(newer: int, older: int) -> int:
    """Signed distance from ``older`` to ``newer`` in sequence-number space (-32768..32767)."""
    delta = (newer - older) & 0xFFFF
    return delta - SEQ_MOD if delta >= 0x8000 else delta


class OutboundStream:
    """Sequence number, timestamp and SSRC of the RTP stream we send.

    Args:
        samples_per_frame: timestamp units per 20 ms frame (160 at an 8 kHz RTP clock, which is
            also G.722's RTP clock, RFC 3551 §4.5.2).
        ssrc, sequence, timestamp: initial values; random (RFC 3550 §5.1) when None.
    """

    def __init__(
        self,
        samples_per_frame: int,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.samples_per_frame = samples_per_frame
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.sequence = secrets.randbits(16) if sequence is None else sequence
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp

    def packet(self, payload_type: int, payload: bytes, marker: bool = False) -> bytes:
        """The next audio packet: this slot's timestamp, then advance one frame."""
        header = _HEADER.pack(
            0x80,
            (0x80 | payload_type) if marker else payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.samples_per_frame) & 0xFFFFFFFF
        return header + payload

    def event_packet(
        self, payload_type: int, payload: bytes, timestamp: int, marker: bool = False
    ) -> bytes:
        """A packet with an explicit timestamp (telephone-events); advances the slot too."""
        header = _HEADER.pack(
            0x80,
            (0x80 | payload_type) if marker else payload_type,
            self.sequence,
            timestamp,
            self.ssrc,
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.samples_per_frame) & 0xFFFFFFFF
        return header + payload

    def skip(self, frames: int) -> None:
        """Let ``frames`` slots pass without a packet (hold, stall): the timestamp moves on."""
        self.timestamp = (self.timestamp + frames * self.samples_per_frame) & 0xFFFFFFFF
