"""The inbound RTP core: latching policy, payload-type checks, DTMF and SSRC handling."""

from __future__ import annotations

import logging
import struct

import pytest

from sipbot.media._ratelimit import RateLimitedLog
from sipbot.media.receiver import RtpReceiver
from sipbot.media.rtp import RtpPacket

SDP = ("192.0.2.10", 4000)
NAT = ("198.51.100.7", 31000)
EVIL = ("203.0.113.66", 5555)


def rtp(seq: int, pt: int = 0, ssrc: int = 1, payload: bytes = b"\xff" * 160) -> bytes:
    return RtpPacket(pt, seq, seq * 160, ssrc, payload).serialize()


def dtmf(seq: int, ts: int, end: bool = False, ssrc: int = 1) -> bytes:
    payload = struct.pack("!BBH", 3, (0x80 if end else 0) | 10, 160)
    return RtpPacket(101, seq, ts, ssrc, payload).serialize()


class Sink:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.digits: list[str] = []
        self.restarts = 0

    def receiver(self, **kwargs: float) -> RtpReceiver:
        rx = RtpReceiver(
            on_payload=self.payloads.append,
            on_dtmf=self.digits.append,
            on_restart=self.restart,
            log=RateLimitedLog(logging.getLogger("test")),
            **kwargs,  # type: ignore[arg-type]
        )
        rx.configure(0, 101, SDP)
        return rx

    def restart(self) -> None:
        self.restarts += 1


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


@pytest.mark.parametrize("data", [b"", b"\x80", b"\x00" * 40, b"\xff" * 200])
def test_garbage_never_raises(data: bytes) -> None:
    sink = Sink()
    rx = sink.receiver()
    rx.receive(data, SDP, 1.0)
    assert sink.payloads == []
