"""Latency instrumentation: the histogram core, and its wiring in the RTP sender and receiver."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sipbot.media.codecs import PCMU
from sipbot.media.latency import (
    BINS,
    LatencyHistogram,
    LatencySummary,
    MediaLatency,
)
from sipbot.media.receiver import Address, Received, RtpReceiver
from sipbot.media.rtp import RtpPacket, parse_rtp
from sipbot.media.sender import RtpSender
from sipbot.ratelimit import RateLimitedLog

SILENT_ULAW = b"\xff" * 160


def histogram(*ms: float) -> LatencyHistogram:
    hist = LatencyHistogram()
    for value in ms:
        hist.record(value / 1000.0)
    return hist


# --------------------------------------------------------------------------- histogram


def test_empty_histogram_summarises_to_zeros() -> None:
    assert LatencyHistogram().summary() == LatencySummary(0, 0.0, 0.0, 0.0)


def test_integer_millisecond_readings_come_back_exactly() -> None:
    hist = histogram(*range(1, 101))  # 1..100 ms
    assert hist.summary() == LatencySummary(100, 50.0, 99.0, 100.0)
    assert hist.percentile_ms(100) == 100.0
    assert hist.percentile_ms(1) == 1.0


def test_values_round_to_the_nearest_half_millisecond_bin_and_max_is_exact() -> None:
    hist = histogram(0.2, 0.3, 7.74, 7.76)
    assert hist.percentile_ms(25) == 0.0  # 0.2 → bin 0
    assert hist.percentile_ms(50) == 0.5  # 0.3 → bin 0.5
    assert hist.percentile_ms(75) == 7.5  # 7.74 → 7.5
    assert hist.percentile_ms(100) == 7.76  # 7.76 → bin 8.0, capped at the exact max
    assert hist.max_ms == 7.76


def test_zero_and_negative_readings_count_as_zero() -> None:
    hist = histogram(0.0, -1.0, 0.0)
    assert hist.summary() == LatencySummary(3, 0.0, 0.0, 0.0)


def test_overflow_bin_reports_the_maximum() -> None:
    hist = histogram(*([10.0] * 98), 300.0, 900.0)
    assert hist.counts[BINS] == 2
    # the 99th value (300 ms) is in the overflow bin: reported as the maximum
    assert hist.summary() == LatencySummary(100, 10.0, 900.0, 900.0)


def test_p99_is_the_nearest_rank() -> None:
    hist = histogram(*([5.0] * 990), *([40.0] * 10))  # 1 % at 40 ms
    assert hist.summary() == LatencySummary(1000, 5.0, 5.0, 40.0)
    hist.record(0.040)  # 11 of 1001 above: the 991st value is 40
    assert hist.percentile_ms(99) == 40.0


def test_merge_adds_counts_and_keeps_the_larger_max() -> None:
    total = histogram(1.0, 2.0)
    total.merge(histogram(3.0, 50.0))
    assert total.summary() == LatencySummary(4, 2.0, 50.0, 50.0)


def test_record_does_not_grow_the_histogram() -> None:
    hist = LatencyHistogram()
    before = len(hist.counts)
    for value in np.linspace(0.0, 2.0, 1000):
        hist.record(float(value))
    assert len(hist.counts) == before == BINS + 1
    assert hist.count == 1000


def test_media_latency_as_dict_is_the_cdr_shape() -> None:
    report = MediaLatency(inbound=LatencySummary(10, 0.0, 20.0, 60.0))
    assert report.as_dict() == {
        "inbound": {"n": 10, "p50": 0.0, "p99": 20.0, "max": 60.0},
        "first_audio": {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0},
        "barge_in": {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0},
    }


# --------------------------------------------------------------------------- receiver


def rtp(seq: int) -> bytes:
    return RtpPacket(0, seq, seq * 160, 1, SILENT_ULAW).serialize()


class _Collecting(RtpReceiver):
    """A receiver whose returned payloads are also collected in ``payloads``."""

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__(log=RateLimitedLog(logging.getLogger("test")), jitter_max_s=0.06)
        self.payloads = payloads

    def receive(
        self, data: bytes, addr: Address, now: float, arrived: float | None = None
    ) -> tuple[Received, ...]:
        produced = super().receive(data, addr, now, arrived)
        self.payloads.extend(item for item in produced if isinstance(item, bytes))
        return produced

    def poll(self, now: float) -> tuple[Received, ...]:
        produced = super().poll(now)
        self.payloads.extend(item for item in produced if isinstance(item, bytes))
        return produced


def receiver(payloads: list[bytes]) -> RtpReceiver:
    rx = _Collecting(payloads)
    rx.configure(0, 101, ("127.0.0.1", 4000))
    return rx


def test_in_sequence_packets_have_zero_inbound_latency() -> None:
    payloads: list[bytes] = []
    rx = receiver(payloads)
    for seq in range(10):
        rx.receive(rtp(seq), ("127.0.0.1", 4000), 1.0 + seq * 0.02)
    assert len(payloads) == 10
    assert rx.latency.summary() == LatencySummary(10, 0.0, 0.0, 0.0)


def test_a_reordered_packet_counts_the_wait_for_the_gap() -> None:
    payloads: list[bytes] = []
    rx = receiver(payloads)
    peer = ("127.0.0.1", 4000)
    rx.receive(rtp(0), peer, 1.000)
    rx.receive(rtp(2), peer, 1.020)  # held: 1 is missing
    rx.receive(rtp(1), peer, 1.033)  # fills the gap: 1 at once, 2 after waiting 13 ms
    assert len(payloads) == 3
    assert rx.latency.counts[0] == 2  # packets 0 and 1
    assert rx.latency.summary() == LatencySummary(3, 0.0, 13.0, 13.0)


def test_a_lost_packet_counts_the_jitter_buffers_full_wait() -> None:
    payloads: list[bytes] = []
    rx = receiver(payloads)
    peer = ("127.0.0.1", 4000)
    rx.receive(rtp(0), peer, 1.000)
    rx.receive(rtp(2), peer, 1.040)  # 1 never comes
    rx.receive(rtp(3), peer, 1.060)
    rx.poll(1.090)  # not yet: 2 has waited 50 ms
    assert len(payloads) == 1
    rx.poll(1.100)  # 2 waited 60 ms, 3 waited 40 ms
    assert len(payloads) == 3
    assert rx.latency.summary() == LatencySummary(3, 40.0, 60.0, 60.0)


# --------------------------------------------------------------------------- sender


def loud_24k(ms: int) -> bytes:
    t = np.arange(24 * ms) / 24_000
    return bytes(np.rint(12_000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


def sender(prebuffer_ms: int) -> RtpSender:
    tx = RtpSender(prebuffer_ms=prebuffer_ms, max_hold_ms=40)
    tx.configure(PCMU, 0, 101)
    return tx


def send(tx: RtpSender, now: float) -> bool:
    """One slot at ``now``; True if it carried audio."""
    return parse_rtp(tx.next_packet(now=now)).payload != SILENT_ULAW


def test_first_audio_waits_for_the_next_slot_without_a_prebuffer() -> None:
    tx = sender(prebuffer_ms=0)
    assert not send(tx, 10.000)
    tx.play(loud_24k(100), "a", now=10.007)
    assert send(tx, 10.020)
    tx.play(loud_24k(100), "a", now=10.025)  # queue not empty: not a first chunk
    assert all(send(tx, 10.040 + 0.02 * k) for k in range(8))
    assert tx.first_audio_latency.summary() == LatencySummary(1, 13.0, 13.0, 13.0)


def test_first_audio_includes_the_prebuffer_hold() -> None:
    tx = sender(prebuffer_ms=60)
    tx.play(loud_24k(20), "a", now=5.000)  # 20 ms: held until 60 ms queued or 40 ms passed
    assert not send(tx, 5.010)
    tx.play(loud_24k(20), "a", now=5.015)
    assert not send(tx, 5.030)
    tx.play(loud_24k(20), "a", now=5.035)  # 60 ms queued
    assert send(tx, 5.050)
    assert tx.first_audio_latency.summary() == LatencySummary(1, 50.0, 50.0, 50.0)


def test_each_response_after_silence_is_measured_again() -> None:
    tx = sender(prebuffer_ms=0)
    for start in (1.0, 2.0):
        tx.play(loud_24k(40), "item", now=start + 0.002)
        sent = [send(tx, start + 0.01 + 0.02 * k) for k in range(4)]
        assert sent == [True, True, False, False]
    assert tx.first_audio_latency.summary() == LatencySummary(2, 8.0, 8.0, 8.0)


def test_flush_measures_the_time_to_the_next_packet_and_cancels_first_audio() -> None:
    tx = sender(prebuffer_ms=60)
    tx.play(loud_24k(20), "a", now=3.000)  # held by the pre-buffer
    tx.flush(now=3.004)
    assert not send(tx, 3.020)
    tx.flush(now=3.025)
    assert not send(tx, 3.040)
    assert not send(tx, 3.060)  # no flush pending: nothing recorded
    assert tx.barge_in_latency.summary() == LatencySummary(2, 15.0, 16.0, 16.0)
    assert tx.first_audio_latency.count == 0  # the held chunk was dropped, never sent
    tx.play(loud_24k(100), "b", now=3.065)  # timed from here, not from the dropped chunk
    assert send(tx, 3.080)
    assert tx.first_audio_latency.summary() == LatencySummary(1, 15.0, 15.0, 15.0)


@pytest.mark.parametrize("call", ["play", "flush", "next_packet"])
def test_without_now_nothing_is_measured(call: str) -> None:
    tx = sender(prebuffer_ms=0)
    tx.play(loud_24k(40), "a", now=None if call == "play" else 1.0)
    tx.flush(now=None if call == "flush" else 1.0)
    tx.play(loud_24k(40), "a", now=None if call == "play" else 1.0)
    tx.next_packet(now=None if call == "next_packet" else 1.01)
    recorded = tx.first_audio_latency.count + tx.barge_in_latency.count
    assert recorded == {"play": 1, "flush": 1, "next_packet": 0}[call]


# --------------------------------------------------------------------------- underruns


def test_audio_resuming_after_a_gap_in_one_item_is_an_underrun() -> None:
    tx = sender(prebuffer_ms=0)
    tx.play(loud_24k(40), "a")
    assert [send(tx, 0.0) for _ in range(3)] == [True, True, False]  # ran dry
    tx.play(loud_24k(20), "a")  # the rest of the same item
    assert send(tx, 0.0)
    assert tx.underruns == 1


def test_a_new_item_after_silence_is_not_an_underrun() -> None:
    tx = sender(prebuffer_ms=0)
    tx.play(loud_24k(20), "a")
    assert [send(tx, 0.0) for _ in range(2)] == [True, False]
    tx.play(loud_24k(20), "b")
    tx.play(loud_24k(20), "b")  # back to back with no gap: nothing either
    assert [send(tx, 0.0) for _ in range(3)] == [True, True, False]
    assert tx.underruns == 0


def test_after_a_flush_the_same_item_starts_afresh() -> None:
    tx = sender(prebuffer_ms=0)
    tx.play(loud_24k(100), "a")
    assert send(tx, 0.0)
    tx.flush()
    assert not send(tx, 0.0)
    tx.play(loud_24k(20), "a")
    assert send(tx, 0.0)
    assert tx.underruns == 0
