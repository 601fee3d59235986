"""UplinkBuffer: batching and bounded buffering of caller audio (fake clock, no sleeps)."""

from __future__ import annotations

import pytest

from sipbot.domain import PCM16_16K, PCMU_8K
from sipbot.providers.uplink import UplinkBuffer

FRAME_16K = 640  # 20 ms of PCM16 at 16 kHz


def frame(value: int, size: int = FRAME_16K) -> bytes:
    return bytes([value]) * size


def test_lone_frame_waits_max_wait_then_is_due() -> None:
    buf = UplinkBuffer(PCM16_16K)
    buf.push(frame(1), now=10.0)
    assert not buf.due(10.0)
    assert buf.deadline() == pytest.approx(10.02)
    assert not buf.due(10.019)
    assert buf.due(10.021)
    assert buf.pop(10.021) == frame(1)
    assert len(buf) == 0
    assert buf.deadline() is None
    assert not buf.due(11.0)


def test_two_frames_make_a_batch_at_once() -> None:
    buf = UplinkBuffer(PCM16_16K)
    buf.push(frame(1), now=0.0)
    buf.push(frame(2), now=0.0)
    assert buf.due(0.0)
    assert buf.pop(0.0) == frame(1) + frame(2)


def test_backlog_drains_in_batches_of_batch_ms() -> None:
    buf = UplinkBuffer(PCM16_16K)
    for i in range(5):
        buf.push(frame(i), now=0.0)
    assert buf.pop(0.0) == frame(0) + frame(1)
    assert buf.pop(0.0) == frame(2) + frame(3)
    # The 20 ms left over is not a full batch: due by age only.
    assert not buf.due(0.0)
    assert buf.due(0.02)
    assert buf.pop(0.02) == frame(4)
    assert buf.pop(0.02) == b""


def test_limit_drops_oldest_whole_samples() -> None:
    buf = UplinkBuffer(PCM16_16K, limit_ms=100)  # 3200 bytes
    for i in range(6):  # 120 ms
        buf.push(frame(i), now=0.0)
    assert len(buf) == 3200
    assert buf.dropped_bytes == 640
    assert buf.pop(0.0) == frame(1) + frame(2)


def test_limit_rounds_odd_excess_up_to_a_sample() -> None:
    buf = UplinkBuffer(PCM16_16K, limit_ms=40)  # 1280 bytes
    buf.push(b"\x01" * 1280, now=0.0)
    buf.push(b"\x02\x02\x02", now=0.0)  # 3 bytes over: drop 4 to keep whole samples
    assert buf.dropped_bytes == 4
    assert len(buf) == 1279


def test_g711_batches_are_320_bytes() -> None:
    buf = UplinkBuffer(PCMU_8K)
    buf.push(b"\xff" * 500, now=0.0)
    assert buf.pop(0.0) == b"\xff" * 320
    assert len(buf) == 180


def test_empty_push_is_ignored_and_clear_forgets() -> None:
    buf = UplinkBuffer(PCM16_16K)
    buf.push(b"", now=0.0)
    assert buf.deadline() is None
    buf.push(frame(1), now=0.0)
    buf.clear()
    assert len(buf) == 0
    assert not buf.due(1.0)
    assert buf.dropped_bytes == 0


def test_unpop_puts_a_failed_batch_back_in_front_and_due() -> None:
    buf = UplinkBuffer(PCM16_16K)
    buf.push(frame(1) + frame(2), now=0.0)
    batch = buf.pop(0.0)
    buf.push(frame(3), now=0.01)
    buf.unpop(batch, now=0.01)
    assert buf.due(0.01)
    assert buf.pop(0.01) == frame(1) + frame(2)
    buf.unpop(b"", now=0.02)
    assert buf.pop(0.05) == frame(3)
