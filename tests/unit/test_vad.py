"""The energy VAD: levels, start/end timing counted in samples, noise floor tracking."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.media.vad import SILENCE_DBFS, EnergyVad, level_dbfs

RATE = 16_000
FRAME = RATE // 50


def tone(dbfs: float, ms: int = 20, freq: float = 440.0) -> bytes:
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)  # RMS = dbfs
    t = np.arange(RATE * ms // 1000) / RATE
    return bytes(np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes())


def noise(dbfs: float, seed: int, ms: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(RATE * ms // 1000) * 32768 * 10 ** (dbfs / 20)
    return np.rint(x).astype("<i2").tobytes()


SILENCE = bytes(2 * FRAME)


def feed(vad: EnergyVad, frames: list[bytes]) -> list[tuple[int, str]]:
    events: list[tuple[int, str]] = []
    for index, frame in enumerate(frames):
        event = vad.process(frame)
        if event is not None:
            events.append((index, event))
    return events


def test_levels() -> None:
    assert level_dbfs(b"") == SILENCE_DBFS
    assert level_dbfs(SILENCE) == SILENCE_DBFS
    assert level_dbfs(np.full(320, -32768, dtype="<i2").tobytes()) == pytest.approx(0.0)
    assert level_dbfs(tone(-20.0)) == pytest.approx(-20.0, abs=0.05)


def test_start_after_start_ms_and_end_after_hangover() -> None:
    vad = EnergyVad(RATE, start_ms=60, hangover_ms=500)
    frames = [SILENCE] * 10 + [tone(-20.0)] * 50 + [SILENCE] * 30
    assert feed(vad, frames) == [(12, "speech_start"), (84, "speech_end")]
    assert not vad.speaking


def test_time_is_counted_in_samples_not_calls() -> None:
    vad = EnergyVad(RATE, start_ms=60, hangover_ms=100)
    assert vad.process(tone(-20.0, ms=60)) == "speech_start"  # one 60 ms chunk is enough
    assert vad.process(SILENCE * 5) == "speech_end"  # one 100 ms chunk of silence


def test_short_clicks_are_not_speech() -> None:
    vad = EnergyVad(RATE, start_ms=60)
    frames = ([tone(-10.0)] * 2 + [SILENCE] * 3) * 10
    assert feed(vad, frames) == []


def test_below_threshold_is_not_speech() -> None:
    vad = EnergyVad(RATE, threshold_dbfs=-40.0)
    assert feed(vad, [tone(-45.0)] * 50) == []


def test_steady_noise_raises_the_floor_so_only_louder_speech_counts() -> None:
    vad = EnergyVad(RATE, threshold_dbfs=-60.0, margin_db=12.0)
    frames = [noise(-50.0, seed) for seed in range(100)]  # arrives after silence: first loud
    feed(vad, [SILENCE] * 5)
    events = feed(vad, frames[:5])
    assert events == [(2, "speech_start")]  # the floor was at digital silence
    vad.reset()
    vad.noise_floor_dbfs = -50.0
    assert feed(vad, frames[5:]) == []  # steady noise at the floor: quiet
    assert vad.noise_floor_dbfs == pytest.approx(-50.0, abs=1.0)
    assert feed(vad, [tone(-45.0)] * 10) == []  # only 5 dB above the noise
    assert feed(vad, [tone(-30.0)] * 10)[0] == (2, "speech_start")


def test_a_steady_loud_sound_eventually_stops_being_speech() -> None:
    vad = EnergyVad(RATE, threshold_dbfs=-40.0, margin_db=12.0, hangover_ms=500)
    vad.noise_floor_dbfs = -60.0
    frames = [tone(-20.0)] * (50 * 15)  # 15 s of a constant tone
    events = feed(vad, frames)
    assert events[0] == (2, "speech_start")
    assert events[1][1] == "speech_end"
    # the floor creeps 2.5 dB/s: from -60 it reaches -32 (12 dB under the tone) after 11.2 s
    assert events[1][0] == pytest.approx(50 * 11.2 + 25, abs=3)


def test_reset_keeps_the_floor() -> None:
    vad = EnergyVad(RATE)
    feed(vad, [tone(-20.0)] * 5)
    assert vad.speaking
    floor = vad.noise_floor_dbfs
    vad.reset()
    assert not vad.speaking
    assert vad.noise_floor_dbfs == floor
