"""Answering-machine detection: verdict rules and timing, the beep detector (no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.media.amd import (
    AFTER_GREETING_SILENCE_MS,
    BEEP_MIN_MS,
    GREETING_END_SILENCE_MS,
    INITIAL_SILENCE_MS,
    MAX_GREETING_MS,
    AmdVerdict,
    AnsweringMachineDetection,
    Beep,
    BeepDetector,
    GreetingEnded,
    MachineDetector,
)

FRAME_MS = 20


def frames(pcm: np.ndarray, rate: int) -> list[bytes]:
    step = rate * FRAME_MS // 1000
    data = np.clip(np.round(pcm), -32768, 32767).astype("<i2").tobytes()
    return [data[2 * i : 2 * (i + step)] for i in range(0, pcm.size - step + 1, step)]


def silence(ms: int, rate: int) -> np.ndarray:
    return np.zeros(rate * ms // 1000)


def sine(hz: float, ms: int, rate: int, dbfs: float = -15.0) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    out: np.ndarray = 32768 * 10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)
    return out


def babble(ms: int, rate: int, seed: int = 1) -> np.ndarray:
    """Speech-like: noise shaped by a 4 Hz syllable envelope (never a pure tone)."""
    rng = np.random.default_rng(seed)
    t = np.arange(rate * ms // 1000) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return rng.standard_normal(t.size) * 3000 * envelope


def run(detector: MachineDetector, pcm: np.ndarray, rate: int) -> list[AmdVerdict]:
    verdicts = (
        detector.feed(f, 100.0 + i * FRAME_MS / 1000) for i, f in enumerate(frames(pcm, rate))
    )
    return [v for v in verdicts if v is not None]


def run_all(pcm: np.ndarray, rate: int) -> list[AmdVerdict | Beep | GreetingEnded]:
    detector = AnsweringMachineDetection(rate)
    events: list[AmdVerdict | Beep | GreetingEnded] = []
    for index, frame in enumerate(frames(pcm, rate)):
        events.extend(detector.feed(frame, 100.0 + index * FRAME_MS / 1000))
    return events


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_short_answer_then_silence_is_a_human(rate: int) -> None:
    pcm = np.concatenate([silence(400, rate), babble(600, rate), silence(3000, rate)])
    (verdict,) = run(MachineDetector(rate), pcm, rate)
    assert (verdict.result, verdict.cause) == ("human", "silence-after-greeting")
    assert verdict.after_ms == 400 + 600 + AFTER_GREETING_SILENCE_MS
    assert verdict.at == pytest.approx(100.0 + (verdict.after_ms - FRAME_MS) / 1000)


def test_a_long_greeting_is_a_machine_as_soon_as_it_is_too_long() -> None:
    rate = 8000
    talk = np.concatenate([babble(900, rate), silence(300, rate), babble(3000, rate, seed=2)])
    pcm = np.concatenate([silence(200, rate), talk, silence(2000, rate)])
    (verdict,) = run(MachineDetector(rate), pcm, rate)
    assert (verdict.result, verdict.cause) == ("machine", "long-greeting")
    assert verdict.after_ms == 200 + MAX_GREETING_MS  # the pause counts as greeting


def test_many_words_are_a_machine() -> None:
    rate = 8000
    words = [np.concatenate([babble(150, rate, seed=i), silence(100, rate)]) for i in range(6)]
    (verdict,) = run(MachineDetector(rate), np.concatenate([*words, silence(2000, rate)]), rate)
    assert (verdict.result, verdict.cause) == ("machine", "max-words")


def test_a_silent_line_is_unknown_after_the_initial_silence_even_with_line_noise() -> None:
    rate = 8000
    noise = np.random.default_rng(3).standard_normal(rate * 6) * 32768 * 10 ** (-50 / 20)
    (verdict,) = run(MachineDetector(rate), noise, rate)
    assert (verdict.result, verdict.cause, verdict.after_ms) == (
        "unknown",
        "initial-silence",
        INITIAL_SILENCE_MS,
    )


def test_the_verdict_comes_once_and_within_max_wait() -> None:
    rate = 8000
    # words separated by pauses just short of a human's: neither rule decides before the bound
    detector = MachineDetector(rate, max_wait_s=1.5)
    pcm = np.concatenate([babble(120, rate), silence(700, rate)] * 6)
    events = run(detector, pcm, rate)
    assert [(v.result, v.cause, v.after_ms) for v in events] == [("unknown", "timeout", 1500)]
    assert detector.feed(bytes(320), 0.0) is None


@pytest.mark.parametrize(("rate", "hz"), [(8000, 1000.0), (16000, 1000.0), (8000, 440.0)])
def test_a_beep_is_reported_when_it_ends(rate: int, hz: float) -> None:
    pcm = np.concatenate([babble(1000, rate), silence(400, rate), sine(hz, 500, rate)])
    pcm = np.concatenate([pcm, silence(500, rate)])
    detector = BeepDetector(rate)
    beeps = [b for b in run_beeps(detector, pcm, rate) if b is not None]
    assert len(beeps) == 1
    assert abs(beeps[0].frequency_hz - hz) <= 20
    assert (beeps[0].start_ms, beeps[0].end_ms) == (1400, 1900)


def run_beeps(detector: BeepDetector, pcm: np.ndarray, rate: int) -> list[Beep | None]:
    return [detector.feed(f, i * FRAME_MS / 1000) for i, f in enumerate(frames(pcm, rate))]


def test_no_beep_in_speech_noise_short_tones_or_chords() -> None:
    rate = 8000
    short = sine(1000, BEEP_MIN_MS - 40, rate)
    chord = sine(700, 600, rate) + sine(1300, 600, rate)
    quiet = sine(1000, 600, rate, dbfs=-50)
    gap = silence(300, rate)
    pcm = np.concatenate([babble(3000, rate), gap, short, gap, chord, gap, quiet, gap])
    assert [b for b in run_beeps(BeepDetector(rate), pcm, rate) if b is not None] == []


def test_a_tone_that_never_stops_is_reported_at_the_bound() -> None:
    rate = 8000
    beeps = [b for b in run_beeps(BeepDetector(rate), sine(1000, 5000, rate), rate) if b]
    assert [(b.start_ms, b.end_ms) for b in beeps] == [(0, 3000)]


def test_the_whole_detection_reports_verdict_beep_and_greeting_end_once() -> None:
    rate = 8000
    greeting = np.concatenate([silence(300, rate), babble(3000, rate)])
    with_beep = np.concatenate([greeting, silence(500, rate), sine(1000, 400, rate)])
    events = run_all(np.concatenate([with_beep, silence(3000, rate)]), rate)
    assert [type(e) for e in events] == [AmdVerdict, Beep]
    assert isinstance(events[0], AmdVerdict)
    assert isinstance(events[1], Beep)
    assert (events[0].result, events[1].end_ms) == ("machine", 4200)

    events = run_all(np.concatenate([greeting, silence(3000, rate)]), rate)
    assert [type(e) for e in events] == [AmdVerdict, GreetingEnded]
    assert isinstance(events[1], GreetingEnded)
    assert events[1].after_ms == 3300 + GREETING_END_SILENCE_MS

    human = np.concatenate([babble(500, rate), silence(4000, rate)])
    events = run_all(human, rate)
    assert [type(e) for e in events] == [AmdVerdict]  # no greeting end for a person
