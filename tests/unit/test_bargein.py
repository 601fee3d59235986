"""The barge-in guard core (sipbot.bargein), with a speech model of our own that scores tones.

The real Silero model is exercised on spoken scenarios by bench/bench_bargein.py and its test
(tests/e2e/test_bargein_guard.py); here a :class:`ToneModel` (loud 300 Hz = speech) makes every
rule's timing exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.bargein import (
    CLEAR,
    CONFIRM,
    SUSPECT,
    BargeInGuard,
    GuardInput,
    Verdict,
    is_backchannel,
    level_dbfs,
)
from sipbot.domain import PCM16_16K, PCM16_24K, PCMU_8K
from sipbot.media.codecs import make_encoder

CHUNK = 320  # 20 ms: the tone model works on frames, so chunk ms == frame ms


class ToneModel:
    """Speech = a chunk whose energy is mostly around 300 Hz (a stand-in for Silero)."""

    chunk_samples = CHUNK

    def __init__(self) -> None:
        self.resets = 0

    def score(self, chunk: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(chunk))
        band = spectrum[4:8].sum()  # 200-350 Hz at 50 Hz per bin
        return float(band / (spectrum.sum() + 1e-9) > 0.5)

    def reset(self) -> None:
        self.resets += 1


def tone(ms: int, hz: float = 300.0, dbfs: float = -20.0) -> bytes:
    t = np.arange(16 * ms) / 16_000
    amplitude = 10 ** (dbfs / 20) * np.sqrt(2) * 32767
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def quiet(ms: int) -> bytes:
    return bytes(32 * ms)


def agent_at(guard: BargeInGuard, dbfs: float = -20.0) -> None:
    guard.agent_audio(np.frombuffer(tone(20, 1000.0, dbfs), dtype="<i2") / 32768.0)


def feed(guard: BargeInGuard, pcm: bytes, audible: bool = True) -> list[tuple[int, Verdict]]:
    """20 ms frames; returns (frame index, verdict) for each verdict, the agent at -20 dBFS."""
    out = []
    for i in range(0, len(pcm), 640):
        if audible:
            agent_at(guard)
        verdict = guard.caller_audio(pcm[i : i + 640], audible)
        if verdict is not None:
            out.append((i // 640, verdict))
    return out


def make(min_speech_ms: int = 400) -> BargeInGuard:
    return BargeInGuard(ToneModel(), min_speech_ms=min_speech_ms)


def test_speech_is_suspected_at_once_and_confirmed_after_min_speech_ms() -> None:
    guard = make(400)
    assert feed(guard, tone(600)) == [(0, SUSPECT), (20, CONFIRM)]  # 21 frames = 420 ms > 400
    assert guard.stats.confirmed == 1


def test_a_short_utterance_is_cleared_after_the_quiet() -> None:
    guard = make(400)
    verdicts = feed(guard, tone(200) + quiet(600))
    assert verdicts == [(0, SUSPECT), (10 + 20 - 1, CLEAR)]  # CLEAR_MS = 400 ms of quiet
    assert not guard.suspecting


def test_short_pauses_are_part_of_the_utterance_long_ones_are_not() -> None:
    guard = make(400)
    # 200 ms + the 100 ms pause + 120 ms > 400 ms: frame 20
    assert feed(guard, tone(200) + quiet(100) + tone(200))[-1] == (20, CONFIRM)
    guard = make(400)
    verdicts = feed(guard, tone(200) + quiet(360) + tone(300))
    assert CONFIRM not in [v for _, v in verdicts]  # the 360 ms pause split it: 200 + 300


def test_echo_below_the_agent_is_not_even_scored() -> None:
    guard = make(400)
    assert feed(guard, tone(1000, dbfs=-34.0)) == []  # 14 dB below the agent: echo
    assert guard.stats.chunks_scored == 0
    assert feed(guard, tone(100, dbfs=-60.0)) == []  # below the floor


def test_nothing_runs_while_the_agent_is_not_audible() -> None:
    guard = make(400)
    assert feed(guard, tone(1000), audible=False) == []
    assert guard.stats.chunks_scored == 0


def test_noise_is_not_speech() -> None:
    guard = make(400)
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16 * 600) * 3000).astype("<i2").tobytes()
    assert feed(guard, noise) == []
    assert guard.stats.chunks_scored > 0


def test_the_agent_going_quiet_ends_an_episode_and_rearms_after_a_confirm() -> None:
    guard = make(400)
    assert feed(guard, tone(100)) == [(0, SUSPECT)]
    assert guard.caller_audio(b"", False) == CLEAR
    guard = make(400)
    feed(guard, tone(600))
    assert feed(guard, tone(600)) == []  # Rule 5: confirmed once per reply
    assert guard.caller_audio(b"", False) is None
    assert guard.model.resets == 1  # type: ignore[attr-defined]
    assert feed(guard, tone(40))[0] == (0, SUSPECT)  # the next reply


def test_words_confirm_unless_they_are_a_backchannel() -> None:
    guard = make(400)
    assert guard.caller_words("okay", True) is None
    assert guard.caller_words("Mm-hm.", True) is None
    assert guard.caller_words("wait, that's wrong", False) is None  # agent silent, no episode
    assert guard.caller_words("wait, that's wrong", True) == CONFIRM
    assert guard.caller_words("and another thing", True) is None  # Rule 5


@pytest.mark.parametrize(
    ("text", "backchannel"),
    [
        ("mm-hm", True),
        ("Okay.", True),
        ("yeah, right", True),
        ("uh-huh", True),
        ("", True),
        ("okay but what about Tuesday", False),
        ("stop", False),
    ],
)
def test_backchannels(text: str, backchannel: bool) -> None:
    assert is_backchannel(text) is backchannel


def test_level_dbfs() -> None:
    assert level_dbfs(np.zeros(10, np.float32)) == -96.0
    assert level_dbfs(np.full(10, 0.1, np.float32)) == pytest.approx(-20.0)


@pytest.mark.parametrize("fmt", [PCM16_16K, PCM16_24K, PCMU_8K])
def test_guard_input_gives_16k_pcm(fmt: object) -> None:
    source = GuardInput(fmt)  # type: ignore[arg-type]
    rate = 8_000 if fmt is PCMU_8K else fmt.rate_hz  # type: ignore[attr-defined]
    t = np.arange(rate // 50 * 10) / rate
    pcm = (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()
    audio = make_encoder("PCMU").encode(pcm) if fmt is PCMU_8K else pcm
    out = b"".join(
        source.pcm16k(audio[i : i + len(audio) // 10])
        for i in range(0, len(audio), len(audio) // 10)
    )
    assert abs(len(out) - 2 * 16_000 * 200 // 1000) <= 2 * 64  # 200 ms, resampler delay aside
    floats = source.floats(audio)
    assert floats.dtype == np.float32
    assert 0.1 < float(np.max(np.abs(floats))) < 0.3
