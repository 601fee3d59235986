"""Emulator audio: tones, G.711, reply audio and the VAD turn detector (no sockets, no clock)."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.domain import PCM16_24K, PCMA_8K, PCMU_8K
from sipbot.emulators.audio import (
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    Utterance,
    decode,
    encode,
    reply_audio,
    tone,
)
from sipbot.emulators.script import EmulatorScript

RATE = 16_000


def silence(ms: int, rate: int = RATE) -> bytes:
    return bytes(2 * rate * ms // 1000)


def feed_in_odd_chunks(detector: TurnDetector, pcm: bytes, size: int = 333) -> list[object]:
    events: list[object] = []
    for i in range(0, len(pcm), size):
        events += detector.feed(pcm[i : i + size])
    return events


def test_tone_length_frequency_and_fades() -> None:
    pcm = tone(1000.0, 250, 24_000)
    x = np.frombuffer(pcm, dtype="<i2")
    assert len(x) == 6000
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    assert np.argmax(spectrum) * 24_000 / len(x) == 1000.0
    assert abs(int(x[0])) == 0
    assert abs(int(x[-1])) < 200  # faded out: no click
    assert np.max(np.abs(x)) == pytest.approx(0.3 * 32767, rel=0.01)


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K])
def test_g711_round_trip(fmt: object) -> None:
    pcm = tone(440.0, 100, 8000)
    coded = encode(pcm, fmt)  # type: ignore[arg-type]
    assert len(coded) == 800
    back = np.frombuffer(decode(coded, fmt), dtype="<i2").astype(np.int32)  # type: ignore[arg-type]
    original = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    assert np.max(np.abs(back - original)) < 400  # G.711 step size at this level


def test_pcm16_decode_drops_an_odd_byte() -> None:
    assert decode(b"\x01\x02\x03", PCM16_24K) == b"\x01\x02"


def test_echo_reply_is_the_utterance_resampled() -> None:
    utterance = Utterance(tone(300.0, 200, RATE), RATE)
    audio = reply_audio(EmulatorScript(reply="echo"), utterance, PCM16_24K)
    assert len(audio) == 200 * 48
    assert len(reply_audio(EmulatorScript(reply="echo"), utterance, PCMU_8K)) == 200 * 8


def test_echo_without_an_utterance_and_tone_replies_are_tones() -> None:
    script = EmulatorScript(reply="echo", reply_ms=120, tone_hz=500.0)
    assert reply_audio(script, None, PCM16_24K) == tone(500.0, 120, 24_000)
    tone_script = EmulatorScript(reply="tone", reply_ms=80, tone_hz=700.0)
    utterance = Utterance(tone(300.0, 200, RATE), RATE)
    assert reply_audio(tone_script, utterance, PCMA_8K) == encode(tone(700.0, 80, 8000), PCMA_8K)


def test_turn_is_found_with_prefix_and_without_trailing_silence() -> None:
    detector = TurnDetector(RATE, threshold_dbfs=-40.0, silence_ms=500, prefix_ms=300)
    speech = tone(300.0, 500, RATE)
    events = feed_in_odd_chunks(detector, silence(400) + speech + silence(700))
    assert len(events) == 2
    started, stopped = events
    # Speech starts at 400 ms; 300 ms of prefix padding comes before it.
    assert started == SpeechStarted(audio_start_ms=100)
    assert isinstance(stopped, SpeechStopped)
    # Confirmed after 500 ms of silence following the speech.
    assert stopped.audio_end_ms == 400 + 500 + 500
    assert stopped.utterance == Utterance(silence(300) + speech, RATE)
    assert detector.position_ms == 1600
    assert not detector.speaking


def test_short_leading_silence_gives_a_shorter_prefix() -> None:
    detector = TurnDetector(RATE, threshold_dbfs=-40.0, silence_ms=200)
    speech = tone(300.0, 300, RATE)
    started, stopped = feed_in_odd_chunks(detector, silence(100) + speech + silence(300))
    assert started == SpeechStarted(audio_start_ms=0)
    assert stopped.utterance.pcm == silence(100) + speech  # type: ignore[attr-defined]
    assert stopped.audio_end_ms == 600  # type: ignore[attr-defined]


def test_flush_ends_a_turn_in_progress() -> None:
    detector = TurnDetector(RATE, threshold_dbfs=-40.0, silence_ms=500, prefix_ms=0)
    speech = tone(300.0, 300, RATE)
    assert feed_in_odd_chunks(detector, speech) == [SpeechStarted(audio_start_ms=0)]
    assert detector.speaking
    (stopped,) = detector.flush()
    assert stopped == SpeechStopped(300, Utterance(speech, RATE))
    assert detector.flush() == []


def test_quiet_audio_is_no_turn() -> None:
    detector = TurnDetector(RATE, threshold_dbfs=-40.0, silence_ms=500)
    quiet = (np.frombuffer(tone(300.0, 1000, RATE), dtype="<i2") // 100).astype("<i2").tobytes()
    assert feed_in_odd_chunks(detector, quiet) == []
