"""The inbound RTP core: latching policy, payload-type checks, DTMF and SSRC handling."""

from __future__ import annotations

import logging
import struct

import pytest

from sipbot.media.receiver import (
    MAX_SILENCE_UNITS,
    NOTHING,
    RESTART,
    Address,
    Digit,
    Gap,
    Received,
    RtpReceiver,
)
from sipbot.media.rtp import RtpPacket
from sipbot.ratelimit import RateLimitedLog

SDP = ("192.0.2.10", 4000)
NAT = ("198.51.100.7", 31000)
EVIL = ("203.0.113.66", 5555)


def rtp(seq: int, pt: int = 0, ssrc: int = 1, payload: bytes = b"\xff" * 160) -> bytes:
    return RtpPacket(pt, seq, seq * 160, ssrc, payload).serialize()


def dtmf(seq: int, ts: int, end: bool = False, ssrc: int = 1) -> bytes:
    payload = struct.pack("!BBH", 3, (0x80 if end else 0) | 10, 160)
    return RtpPacket(101, seq, ts, ssrc, payload).serialize()


def make_receiver(**kwargs: float) -> RtpReceiver:
    rx = RtpReceiver(log=RateLimitedLog(logging.getLogger("test")), **kwargs)  # type: ignore[arg-type]
    rx.configure(0, 101, SDP)
    return rx


class Sink:
    """Collects what a receiver returns (as the media session consumes it)."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.digits: list[str] = []
        self.restarts = 0
        self.gaps: list[Gap] = []

    def receiver(self, **kwargs: float) -> RtpReceiver:
        return _Collecting(self, **kwargs)

    def take(self, produced: tuple[Received, ...]) -> None:
        for item in produced:
            if isinstance(item, bytes):
                self.payloads.append(item)
            elif isinstance(item, Digit):
                self.digits.append(item.digit)
            elif isinstance(item, Gap):
                self.gaps.append(item)
            else:
                assert item is RESTART
                self.restarts += 1


class _Collecting(RtpReceiver):
    def __init__(self, sink: Sink, **kwargs: float) -> None:
        super().__init__(log=RateLimitedLog(logging.getLogger("test")), **kwargs)  # type: ignore[arg-type]
        self.configure(0, 101, SDP)
        self.sink = sink

    def receive(
        self, data: bytes, addr: Address, now: float, arrived: float | None = None
    ) -> tuple[Received, ...]:
        produced = super().receive(data, addr, now, arrived)
        self.sink.take(produced)
        return produced

    def poll(self, now: float) -> tuple[Received, ...]:
        produced = super().poll(now)
        self.sink.take(produced)
        return produced


def test_sends_to_the_sdp_address_until_the_first_valid_packet() -> None:
    sink = Sink()
    rx = sink.receiver()
    assert (rx.peer, rx.latched) == (SDP, False)
    rx.receive(b"garbage", NAT, 1.0)
    rx.receive(rtp(1, pt=8), NAT, 1.0)  # wrong payload type: not valid, no latch
    assert (rx.peer, rx.latched) == (SDP, False)
    rx.receive(rtp(1), NAT, 1.0)
    assert (rx.peer, rx.latched) == (NAT, True)
    assert len(sink.payloads) == 1
    assert (rx.stats.bad_packets, rx.stats.wrong_payload_type) == (1, 1)


def test_foreign_source_is_ignored_while_the_peer_is_alive() -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(rtp(1), NAT, 1.0)
    rx.receive(rtp(500, ssrc=9), EVIL, 1.01)
    rx.receive(rtp(2), NAT, 1.02)
    rx.receive(rtp(501, ssrc=9), EVIL, 1.9)  # peer silent for 0.88 s only
    assert rx.peer == NAT
    assert rx.stats.foreign_packets == 2
    assert len(sink.payloads) == 2
    assert rx.last_rx == 1.02


def test_relatch_after_the_peer_went_silent() -> None:
    sink = Sink()
    rx = sink.receiver(relatch_after_s=1.0)
    rx.receive(rtp(1), NAT, 1.0)
    moved = ("198.51.100.7", 31002)  # NAT rebinding
    rx.receive(rtp(2), moved, 2.0)
    assert rx.peer == moved
    assert rx.stats.relatches == 1
    rx.receive(rtp(3), NAT, 2.02)
    assert rx.stats.foreign_packets == 1


def test_new_remote_in_configure_restarts_learning() -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(rtp(1), NAT, 1.0)
    rx.configure(0, 101, SDP)  # same SDP (e.g. a session refresh): keep the latch
    assert rx.peer == NAT
    rx.configure(0, 101, ("192.0.2.20", 6000))
    assert (rx.peer, rx.latched) == (("192.0.2.20", 6000), False)
    rx.receive(rtp(2), EVIL, 1.1)
    assert rx.peer == EVIL


def test_comfort_noise_is_dropped_quietly() -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(rtp(1, pt=13, payload=b"\x40"), SDP, 1.0)
    assert rx.stats.comfort_noise == 1
    assert rx.stats.wrong_payload_type == 0
    assert sink.payloads == []


def test_dtmf_events_share_the_sequence_space() -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(rtp(1), SDP, 1.0)
    rx.receive(dtmf(2, 320), SDP, 1.02)
    rx.receive(dtmf(3, 320, end=True), SDP, 1.04)
    rx.receive(dtmf(4, 320, end=True), SDP, 1.06)
    rx.receive(rtp(5), SDP, 1.08)
    assert sink.digits == ["3"]
    assert len(sink.payloads) == 2
    assert rx.stats.dtmf_in == 1
    assert rx.jitter.stats.lost == 0
    assert sink.gaps == [Gap(0, 480, 0)]  # the event replaced audio: silence, not loss


def test_dtmf_events_under_their_own_ssrc_beside_the_audio() -> None:
    # SIPp's play_pcap_audio interleaves its pcap's events (own SSRC) with the audio stream
    sink = Sink()
    rx = sink.receiver()
    rx.receive(rtp(1), SDP, 1.0)
    for i in range(4):
        rx.receive(dtmf(8155 + i, 43200, end=i == 3, ssrc=0x0E05384E), SDP, 1.01 + i * 0.02)
        rx.receive(rtp(2 + i), SDP, 1.02 + i * 0.02)
    assert sink.digits == ["3"]
    assert len(sink.payloads) == 5
    assert (sink.restarts, rx.stats.ssrc_changes, rx.jitter.stats.lost) == (0, 0, 0)


def test_ssrc_change_restarts_the_decoder_once() -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(rtp(1), SDP, 1.0)
    rx.receive(rtp(2), SDP, 1.02)
    rx.receive(rtp(9000, ssrc=2), SDP, 1.04)
    rx.receive(rtp(9001, ssrc=2), SDP, 1.06)
    assert sink.restarts == 1
    assert rx.stats.ssrc_changes == 1
    assert len(sink.payloads) == 4


def test_poll_releases_after_a_gap() -> None:
    sink = Sink()
    rx = sink.receiver(jitter_max_s=0.06)
    rx.receive(rtp(1), SDP, 1.0)
    rx.receive(rtp(3), SDP, 1.04)
    assert len(sink.payloads) == 1
    rx.poll(1.09)
    assert len(sink.payloads) == 1
    rx.poll(1.1)
    assert len(sink.payloads) == 2
    assert rx.jitter.stats.lost == 1
    assert sink.gaps == [Gap(160, 0, 1)]


@pytest.mark.parametrize("data", [b"", b"\x80", b"\x00" * 40, b"\xff" * 200])
def test_garbage_never_raises(data: bytes) -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(data, SDP, 1.0)
    assert sink.payloads == []


# --------------------------------------------------------------------------- return values


def test_an_in_sequence_packet_returns_its_payload() -> None:
    rx = make_receiver()
    payload = bytes(range(160))
    assert rx.receive(rtp(1, payload=payload), SDP, 1.0) == (payload,)
    assert rx.receive(rtp(2, payload=payload[::-1]), SDP, 1.02) == (payload[::-1],)


def test_dropped_packets_return_nothing() -> None:
    rx = make_receiver()
    assert rx.receive(b"garbage", SDP, 1.0) is NOTHING
    assert rx.receive(rtp(1, pt=8), SDP, 1.0) is NOTHING  # not negotiated
    assert rx.receive(rtp(1, pt=13, payload=b"\x40"), SDP, 1.0) is NOTHING  # comfort noise
    assert rx.receive(rtp(1), SDP, 1.0) == (b"\xff" * 160,)
    assert rx.receive(rtp(2, ssrc=9), EVIL, 1.01) is NOTHING  # foreign
    assert rx.receive(rtp(1), SDP, 1.02) is NOTHING  # duplicate


def test_a_held_packet_returns_nothing_then_comes_out_in_order() -> None:
    rx = make_receiver()
    one, two, three = (bytes([n]) * 160 for n in (1, 2, 3))
    assert rx.receive(rtp(1, payload=one), SDP, 1.0) == (one,)
    assert rx.receive(rtp(3, payload=three), SDP, 1.04) == ()
    assert rx.receive(rtp(2, payload=two), SDP, 1.05) == (two, three)


def test_poll_returns_what_the_wait_releases() -> None:
    rx = make_receiver(jitter_max_s=0.06)
    three = b"\x03" * 160
    rx.receive(rtp(1), SDP, 1.0)
    rx.receive(rtp(3, payload=three), SDP, 1.04)
    assert rx.poll(1.09) == ()
    assert rx.poll(1.1) == (Gap(160, 0, 1), three)
    assert rx.poll(1.12) is NOTHING  # nothing held


def test_a_digit_is_returned_once_in_stream_order() -> None:
    rx = make_receiver()
    audio = b"\xff" * 160
    assert rx.receive(rtp(1), SDP, 1.0) == (audio,)
    assert rx.receive(dtmf(2, 320), SDP, 1.02) == (Digit("3"),)
    assert rx.receive(dtmf(3, 320, end=True), SDP, 1.04) == ()
    assert rx.receive(dtmf(5, 640), SDP, 1.06) == ()  # held: 4 is missing
    # 4 fills the gap: audio, then the next event's digit, in sequence order
    assert rx.receive(rtp(4), SDP, 1.07) == (Gap(0, 320, 0), audio, Digit("3"))


def test_a_digit_beside_the_audio_stream_is_returned_at_once() -> None:
    rx = make_receiver()
    rx.receive(rtp(1), SDP, 1.0)
    assert rx.receive(dtmf(8155, 43200, ssrc=77), SDP, 1.01) == (Digit("3"),)
    assert rx.receive(dtmf(8156, 43200, ssrc=77), SDP, 1.02) == ()


def test_restart_comes_between_the_old_streams_payloads_and_the_new_one() -> None:
    rx = make_receiver()
    old, held, new = b"\x01" * 160, b"\x03" * 160, b"\x09" * 160
    assert rx.receive(rtp(1, payload=old), SDP, 1.0) == (old,)  # the first stream: no restart
    rx.receive(rtp(3, payload=held), SDP, 1.02)  # held: 2 is missing
    # a new SSRC releases what the old stream held first, then restarts
    assert rx.receive(rtp(9000, ssrc=2, payload=new), SDP, 1.04) == (
        Gap(160, 0, 1),
        held,
        RESTART,
        new,
    )
    assert rx.receive(rtp(9001, ssrc=2, payload=new), SDP, 1.06) == (new,)
    assert rx.stats.ssrc_changes == 1


def test_every_event_code_comes_back_as_its_digit() -> None:
    rx = make_receiver()
    got: list[Received] = []
    for code in range(17):  # 0-15 are digits, 16 is flash (not a digit)
        payload = struct.pack("!BBH", code, 10, 160)
        got.extend(rx.receive(RtpPacket(101, code, code * 800, 1, payload).serialize(), SDP, 1.0))
    assert got == [Digit(c) for c in "0123456789*#ABCD"]
    assert rx.stats.dtmf_in == 16


# --------------------------------------------------------------------------- gaps (Rule 8)


def rtp_at(seq: int, ts: int, payload: bytes = b"\xff" * 160, marker: bool = False) -> bytes:
    return RtpPacket(0, seq, ts, 1, payload, marker=marker).serialize()


def test_a_lost_packet_is_a_gap_to_conceal() -> None:
    rx = make_receiver(jitter_max_s=0.06)
    rx.receive(rtp_at(1, 160), SDP, 1.0)
    rx.receive(rtp_at(4, 640), SDP, 1.06)  # 2 and 3 are lost
    assert rx.poll(1.12) == (Gap(320, 0, 2), b"\xff" * 160)


def test_silence_suppression_is_a_gap_to_fill_with_silence() -> None:
    rx = make_receiver()
    rx.receive(rtp_at(1, 160), SDP, 1.0)
    # the next packet in sequence, 1 s later in time, with the marker bit (RFC 3551 §4.1)
    assert rx.receive(rtp_at(2, 160 + 160 + 8000, marker=True), SDP, 2.0) == (
        Gap(0, 8000, 0),
        b"\xff" * 160,
    )


def test_loss_inside_silence_conceals_only_what_the_lost_packets_carried() -> None:
    rx = make_receiver(jitter_max_s=0.06)
    rx.receive(rtp_at(1, 160), SDP, 1.0)
    rx.receive(rtp_at(3, 320 + 160 + 4000), SDP, 1.5)
    assert rx.poll(1.6)[0] == Gap(160, 4000, 1)


def test_a_long_silence_is_filled_up_to_the_bound() -> None:
    rx = make_receiver()
    rx.receive(rtp_at(1, 160), SDP, 1.0)
    produced = rx.receive(rtp_at(2, 320 + 10 * 8000), SDP, 11.0)
    assert produced[0] == Gap(0, MAX_SILENCE_UNITS, 0)


@pytest.mark.parametrize("ts", [0, 320 - 80, 320 + 2**31 + 5])
def test_a_timestamp_that_goes_back_is_no_gap(ts: int) -> None:
    rx = make_receiver()
    rx.receive(rtp_at(1, 160), SDP, 1.0)
    assert rx.receive(rtp_at(2, ts), SDP, 1.02) == (b"\xff" * 160,)


def test_a_new_stream_starts_without_a_gap() -> None:
    rx = make_receiver()
    rx.receive(rtp_at(1, 160), SDP, 1.0)
    new = RtpPacket(0, 500, 999_999, 2, b"\x01" * 160).serialize()
    assert rx.receive(new, SDP, 1.02) == (RESTART, b"\x01" * 160)


def test_shorter_packets_advance_the_expected_timestamp_by_their_length() -> None:
    rx = make_receiver()
    rx.receive(rtp_at(1, 0, b"\xff" * 80), SDP, 1.0)  # 10 ms
    assert rx.receive(rtp_at(2, 80, b"\xff" * 80), SDP, 1.01) == (b"\xff" * 80,)


def test_foreign_alone_is_the_check_before_any_parsing() -> None:
    """Rule 9: what the shell asks as a datagram is read, before the queue."""
    sink = Sink()
    rx = sink.receiver(relatch_after_s=1.0)
    assert not rx.foreign(EVIL, 0.5)  # nothing latched yet: anyone may be the peer
    rx.receive(rtp(1), NAT, 1.0)
    assert not rx.foreign(NAT, 1.1)
    assert rx.foreign(EVIL, 1.1)
    assert rx.stats.foreign_packets == 1
    assert not rx.foreign(EVIL, 2.0)  # the peer silent for 1 s: another source may take over
    assert rx.stats.foreign_packets == 1
