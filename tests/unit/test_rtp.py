"""RTP parse/serialize and the outbound stream state (golden bytes, exact error messages)."""

from __future__ import annotations

import pytest

from sipbot.errors import RtpParseError
from sipbot.media.rtp import OutboundStream, RtpPacket, parse_rtp, seq_distance, serialize_rtp

SIMPLE = bytes.fromhex("80 00 00 01 00 00 00 a0 de ad be ef") + b"\xff" * 4


def test_parse_simple_packet() -> None:
    packet = parse_rtp(SIMPLE)
    assert packet == RtpPacket(0, 1, 160, 0xDEADBEEF, b"\xff" * 4, False)


def test_parse_marker_and_payload_type() -> None:
    packet = parse_rtp(bytes.fromhex("80 e5 ff ff ff ff ff ff 00 00 00 01") + b"x")
    assert (packet.marker, packet.payload_type, packet.sequence) == (True, 101, 0xFFFF)
    assert packet.timestamp == 0xFFFFFFFF
    assert packet.payload == b"x"


def test_parse_csrc_extension_and_padding() -> None:
    data = (
        bytes.fromhex("b2 08 00 05 00 00 01 00 00 00 00 07")  # P, X, CC=2, PT 8
        + bytes.fromhex("00 00 00 0a 00 00 00 0b")  # two CSRCs
        + bytes.fromhex("be de 00 01 11 22 33 44")  # extension: profile 0xBEDE, one word
        + b"payload"
        + b"\x00\x00\x03"  # three bytes of padding, the last one counts them
    )
    packet = parse_rtp(data)
    assert packet.csrc == (10, 11)
    assert packet.extension == (0xBEDE, bytes.fromhex("11 22 33 44"))
    assert packet.payload == b"payload"
    assert packet.payload_type == 8
    assert not packet.marker


HDR = SIMPLE[1:12]
ERRORS = [
    (b"", "RTP packet too short: 0 bytes"),
    (SIMPLE[:11], "RTP packet too short: 11 bytes"),
    (b"\x40" + HDR, "RTP version 1 is not 2"),
    (b"INVITE sip:a@b SIP/2.0\r\n", "RTP version 1 is not 2"),
    (b"\x00" * 12, "RTP version 0 is not 2"),
    (b"\x83" + HDR + bytes(8), "RTP CSRC list truncated: 3 CSRCs need 24 bytes, packet has 20"),
    (b"\x90" + HDR + b"\xbe\xde", "RTP header extension truncated"),
    (b"\x90" + HDR + b"\xbe\xde\x00\x02" + bytes(4), "RTP header extension truncated"),
    (b"\xa0" + HDR + b"ab\x00", "RTP padding length 0 invalid for 3 bytes after the header"),
    (b"\xa0" + HDR + b"ab\x04", "RTP padding length 4 invalid for 3 bytes after the header"),
]


@pytest.mark.parametrize(("data", "message"), ERRORS)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError) as caught:
        parse_rtp(data)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_serialize_golden_and_round_trip() -> None:
    packet = RtpPacket(8, 5, 256, 7, b"payload", True, (10, 11), (0xBEDE, b"\x11\x22\x33\x44"))
    wire = serialize_rtp(packet)
    assert wire == (
        bytes.fromhex("92 88 00 05 00 00 01 00 00 00 00 07 00 00 00 0a 00 00 00 0b")
        + bytes.fromhex("be de 00 01 11 22 33 44")
        + b"payload"
    )
    assert parse_rtp(wire) == packet
    assert packet.serialize() == wire
    assert serialize_rtp(parse_rtp(SIMPLE)) == SIMPLE


def test_serialize_rejects_unaligned_extension() -> None:
    with pytest.raises(ValueError, match="whole number of 32-bit words"):
        serialize_rtp(RtpPacket(0, 0, 0, 0, b"", extension=(1, b"abc")))


@pytest.mark.parametrize(
    ("newer", "older", "distance"),
    [(5, 3, 2), (3, 5, -2), (0, 65535, 1), (65535, 0, -1), (32767, 0, 32767), (32768, 0, -32768)],
)
def test_seq_distance(newer: int, older: int, distance: int) -> None:
    assert seq_distance(newer, older) == distance


def test_outbound_stream_packets_and_wrap() -> None:
    stream = OutboundStream(160, ssrc=0x01020304, sequence=0xFFFF, timestamp=0xFFFFFFC0)
    first = stream.packet(0, b"\xff", marker=True)
    assert first == bytes.fromhex("80 80 ff ff ff ff ff c0 01 02 03 04 ff")
    second = stream.packet(0, b"\xff")
    assert second == bytes.fromhex("80 00 00 00 00 00 00 60 01 02 03 04 ff")
    assert (stream.sequence, stream.timestamp) == (1, 0x100)


def test_outbound_stream_skip_and_event_packet() -> None:
    stream = OutboundStream(160, ssrc=1, sequence=10, timestamp=1000)
    stream.skip(3)
    assert (stream.sequence, stream.timestamp) == (10, 1480)
    event = parse_rtp(stream.event_packet(101, b"\x05\x0a\x00\xa0", 1234, marker=True))
    assert (event.payload_type, event.sequence, event.timestamp, event.marker) == (
        101,
        10,
        1234,
        True,
    )
    assert (stream.sequence, stream.timestamp) == (11, 1640)


def test_outbound_stream_random_initial_values() -> None:
    streams = [OutboundStream(160) for _ in range(4)]
    assert len({stream.ssrc for stream in streams}) == 4
    assert all(0 <= s.sequence < 65536 and 0 <= s.timestamp < 2**32 for s in streams)
