"""Packet-loss concealment: pitch repetition, fade, overlap-add, silence (sipbot.media.plc)."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.media.plc import Concealer


def voiced(rate: int, ms: int, period: int, start: int = 0) -> np.ndarray:
    """A periodic, speech-like wave (fundamental + two harmonics) of ``period`` samples."""
    n = np.arange(start, start + rate * ms // 1000)
    phase = 2 * np.pi * n / period
    wave = 6000 * np.sin(phase) + 3000 * np.sin(2 * phase + 0.5) + 1500 * np.sin(3 * phase + 1)
    return np.rint(wave).astype(np.int16)


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def primed(rate: int = 8000, period: int = 57) -> Concealer:
    plc = Concealer(rate)
    for k in range(5):
        plc.good(voiced(rate, 20, period, start=k * rate // 50).tobytes())
    return plc


def test_a_good_frame_passes_untouched() -> None:
    plc = Concealer(8000)
    frame = voiced(8000, 20, 57).tobytes()
    assert plc.good(frame) is frame
    assert np.array_equal(plc.history[-160:], voiced(8000, 20, 57))


@pytest.mark.parametrize(("rate", "period"), [(8000, 57), (8000, 100), (16000, 130)])
def test_the_first_10_ms_continue_the_waveform(rate: int, period: int) -> None:
    plc = primed(rate, period)
    n = rate // 100
    concealed = samples(plc.conceal(n))
    truth = voiced(rate, 10, period, start=5 * rate // 50).astype(np.float64)
    error = rms(concealed - truth) / rms(truth)
    assert error < 0.1  # the pitch was found: it continues in phase


def test_it_fades_by_20_percent_per_10_ms_to_silence_at_60_ms() -> None:
    plc = primed()
    out = samples(plc.conceal(8 * 80))  # 80 ms
    levels = [rms(out[i * 80 : (i + 1) * 80]) for i in range(8)]
    full = levels[0]
    for i in range(1, 6):  # 10-60 ms: a linear ramp from 1.0 to 0.0
        high, low = 1.2 - 0.2 * i, 1.0 - 0.2 * i
        gain = np.sqrt((high * high + high * low + low * low) / 3)  # RMS of a linear ramp
        assert levels[i] == pytest.approx(full * gain, rel=0.12)
    assert levels[6] == levels[7] == 0.0
    assert plc.concealed_samples == 640


def test_the_next_good_frame_is_blended_without_a_click() -> None:
    plc = primed()
    plc.conceal(160)
    truth = voiced(8000, 20, 57, start=6 * 160)
    frame = truth.tobytes()
    blended = plc.good(frame)
    assert blended is not frame
    out = samples(blended)
    # 4 ms + 4 ms for the second 10 ms lost = 8 ms of overlap-add, the rest untouched
    assert np.array_equal(out[64:], truth[64:].astype(np.float64))
    assert rms(out[:64] - truth[:64]) / rms(truth[:64].astype(np.float64)) < 0.25
    assert plc.good(frame) is frame  # once only


def test_after_a_long_loss_the_good_frame_fades_in() -> None:
    plc = primed()
    plc.conceal(800)  # 100 ms: silent by now
    frame = voiced(8000, 20, 57).tobytes()
    out = samples(plc.good(frame))
    truth = samples(frame)
    assert abs(out[0]) < abs(truth[0]) or truth[0] == 0
    assert np.array_equal(out[80:], truth[80:])  # 10 ms of fade-in at most


def test_silence_is_zeros_and_ends_the_concealment() -> None:
    plc = primed()
    plc.conceal(80)
    assert plc.silence(240) == bytes(480)
    frame = voiced(8000, 20, 57).tobytes()
    assert plc.good(frame) is frame  # no overlap-add after meant silence
    assert plc.silence(0) == b""
    assert plc.conceal(0) == b""
    plc.conceal(80)
    plc.silence(0)  # nothing meant: the concealment goes on
    assert plc.good(frame) is not frame


def test_reset_forgets_the_history() -> None:
    plc = primed()
    plc.reset()
    assert plc.conceal(160) == bytes(320)  # nothing to repeat


def test_the_history_survives_many_frames_and_odd_sizes() -> None:
    plc = Concealer(8000)
    wave = voiced(8000, 2000, 64)
    for i in range(0, wave.size, 120):  # 15 ms packets
        plc.good(wave[i : i + 120].tobytes())
    assert np.array_equal(plc.history, wave[-plc.history.size :])
    plc.good(voiced(8000, 100, 64).tobytes())  # one frame longer than the history
    assert np.array_equal(plc.history, voiced(8000, 100, 64)[-plc.history.size :])
