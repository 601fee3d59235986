"""Stereo call recording: channel placement, alignment, skew bound, early media, buffering,
close."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from sipbot.media.recorder import CallRecorder


def frame(value: int, samples: int = 160) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def read(path: Path) -> tuple[int, int, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return wav.getnchannels(), wav.getframerate(), data.reshape(-1, 2)


def test_caller_left_bot_right(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = CallRecorder(str(path), 8000)
    rec.caller(frame(100))
    rec.bot(frame(-7))
    rec.bot(frame(5))  # no caller audio yet for this frame: silence on the left
    rec.caller(frame(200))
    rec.bot(frame(6))
    rec.close()
    channels, rate, data = read(path)
    assert (channels, rate, len(data)) == (2, 8000, 480)
    assert data[:160].tolist() == [[100, -7]] * 160
    assert data[160:320].tolist() == [[0, 5]] * 160
    assert data[320:].tolist() == [[200, 6]] * 160


def test_early_media_is_written_before_the_bot_has_a_clock(tmp_path: Path) -> None:
    path = tmp_path / "early.wav"
    rec = CallRecorder(str(path), 8000, max_skew_ms=20)  # far less than the early audio
    for _ in range(5):  # a second of early media would all be kept
        rec.caller_alone(frame(300))
    rec.caller(frame(400))  # answered: the bot's frames are the clock again
    rec.bot(frame(9))
    rec.close()
    _, _, data = read(path)
    assert len(data) == 6 * 160
    assert data[: 5 * 160].tolist() == [[300, 0]] * (5 * 160)
    assert data[5 * 160 :].tolist() == [[400, 9]] * 160


def test_caller_burst_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "burst.wav"
    rec = CallRecorder(str(path), 8000, max_skew_ms=40)
    for value in range(1, 11):  # 200 ms arrive at once
        rec.caller(frame(value))
    rec.bot(frame(0))
    rec.bot(frame(0))
    rec.bot(frame(0))
    rec.close()
    _, _, data = read(path)
    assert data[:, 0].tolist() == [9] * 160 + [10] * 160 + [0] * 160  # only the last 40 ms kept


def test_writes_are_buffered_and_close_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "buffered.wav"
    rec = CallRecorder(str(path), 8000, flush_bytes=10_000)
    rec.bot(frame(1))
    size_before = path.stat().st_size
    for _ in range(20):
        rec.bot(frame(1))
    assert path.stat().st_size > size_before  # a flush happened
    rec.close()
    rec.close()
    assert rec.closed
    rec.bot(frame(1))  # ignored after close
    assert len(read(path)[2]) == 21 * 160


def test_other_rates_are_resampled(tmp_path: Path) -> None:
    path = tmp_path / "rates.wav"
    rec = CallRecorder(str(path), 16000)
    rec.caller(frame(1000, 160), rate_hz=8000)
    rec.bot(frame(0, 320))
    rec.bot(frame(0, 160), rate_hz=8000)
    rec.close()
    channels, rate, data = read(path)
    assert (channels, rate, len(data)) == (2, 16000, 640)
