"""RFC 4733 telephone-events both ways, and in-band tones."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sipbot.media.dtmf import DtmfReceiver, DtmfSender, check_digits, dtmf_tone
from sipbot.media.rtp import RtpPacket


def event(code: int, timestamp: int, duration: int, end: bool = False, seq: int = 0) -> RtpPacket:
    payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)
    return RtpPacket(101, seq, timestamp, 1, payload)


def test_receiver_reports_one_digit_per_event() -> None:
    rx = DtmfReceiver()
    packets = [event(5, 1000, d) for d in (160, 320, 480)]
    packets += [event(5, 1000, 800, end=True) for _ in range(3)]  # end + two retransmissions
    packets += [event(11, 2600, 160), event(11, 2600, 800, end=True)]
    digits = [rx.receive(p) for p in packets]
    assert [d for d in digits if d is not None] == ["5", "#"]
    assert digits[0] == "5"  # reported on the first packet, not at the end


def test_receiver_reports_an_event_seen_only_by_its_end_packet() -> None:
    rx = DtmfReceiver()
    assert rx.receive(event(0, 500, 800, end=True)) == "0"
    assert rx.receive(event(0, 500, 800, end=True)) is None


def test_receiver_ignores_non_digits_and_short_payloads() -> None:
    rx = DtmfReceiver()
    assert rx.receive(event(16, 100, 160)) is None  # flash
    assert rx.receive(RtpPacket(101, 0, 200, 1, b"\x01\x0a")) is None
    assert rx.receive(event(15, 300, 160)) == "D"


def test_receiver_reset_forgets_timestamps() -> None:
    rx = DtmfReceiver()
    assert rx.receive(event(1, 100, 160)) == "1"
    rx.reset()
    assert rx.receive(event(1, 100, 160)) == "1"


def test_sender_packet_series_for_one_digit() -> None:
    tx = DtmfSender(gap_ms=40)
    tx.queue("1", 100)
    slots = []
    timestamp = 8000
    while tx.active:
        slots.append(tx.next_packet(timestamp))
        timestamp += 160
    expected = [(160, False, True), (320, False, False), (480, False, False), (640, False, False)]
    expected += [(800, True, False)] * 3
    sent = [s for s in slots if s is not None]
    decoded = []
    for payload, ts, marker in sent:
        code, flags, duration = struct.unpack("!BBH", payload)
        assert (code, flags & 0x3F, ts) == (1, 10, 8000)
        decoded.append((duration, bool(flags & 0x80), marker))
    assert decoded == expected
    assert slots[len(sent) :] == [None, None]  # 40 ms pause after the event


def test_sender_two_digits_and_odd_duration() -> None:
    tx = DtmfSender(gap_ms=20)
    tx.queue("9*", 90)
    packets = []
    timestamp = 0
    while tx.active:
        packets.append(tx.next_packet(timestamp))
        timestamp += 160
    starts = [p[1] for p in packets if p is not None and p[2]]
    assert starts == [0, 160 * 8]  # 5 slots + 2 extra end packets + 1 gap slot
    ends = [struct.unpack("!BBH", p[0]) for p in packets if p is not None and p[0][1] & 0x80]
    assert ends == [(9, 0x8A, 720)] * 3 + [(10, 0x8A, 720)] * 3


def test_sender_round_trip_through_receiver() -> None:
    tx, rx = DtmfSender(), DtmfReceiver()
    tx.queue("0123456789*#abcd", 60)
    got = []
    timestamp = 0
    while tx.active:
        packet = tx.next_packet(timestamp)
        if packet is not None:
            digit = rx.receive(RtpPacket(101, 0, packet[1], 1, packet[0], packet[2]))
            if digit:
                got.append(digit)
        timestamp += 160
    assert "".join(got) == "0123456789*#ABCD"


@pytest.mark.parametrize(("digits", "duration"), [("1x", 100), ("1", 39), ("1", 5001)])
def test_sender_rejects_bad_input(digits: str, duration: int) -> None:
    with pytest.raises(ValueError, match=r"invalid DTMF digit 'X'|DTMF duration"):
        DtmfSender().queue(digits, duration)
    assert not DtmfSender().active


def test_check_digits() -> None:
    assert check_digits("12ab#") == "12AB#"
    with pytest.raises(ValueError, match=r"^invalid DTMF digit 'E'$"):
        check_digits("e")


def test_inband_tone_has_the_two_frequencies() -> None:
    pcm = dtmf_tone("5", 8000, duration_ms=100, gap_ms=60)
    assert len(pcm) == 2 * (800 + 480)
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    tone, gap = x[:800], x[800:]
    assert not gap.any()
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(800)))
    freqs = np.fft.rfftfreq(800, 1 / 8000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert peaks == [770.0, 1340.0]  # 770 + 1336 Hz, on a 10 Hz grid
