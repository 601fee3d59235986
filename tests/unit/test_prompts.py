"""Non-real-time audio: WAV files and prompt rendering into any provider/media format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sipbot.domain import PCM16_24K, PCMA_8K, PCMU_8K, AudioFormat
from sipbot.errors import MediaError
from sipbot.prompts import APOLOGY_PROMPT, load_prompt, read_wav, render, write_wav


def tone(rate: int, seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(16_000, 0.1)
    write_wav(tmp_path / "a.wav", pcm, 16_000)
    assert read_wav(tmp_path / "a.wav") == (pcm, 16_000)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, 3000, dtype="<i2")
    stereo = np.column_stack([left, right]).astype("<i2").tobytes()
    write_wav(tmp_path / "s.wav", stereo, 8_000, channels=2)
    pcm, rate = read_wav(tmp_path / "s.wav")
    assert rate == 8_000
    assert set(np.frombuffer(pcm, "<i2")) == {2000}


def test_not_a_wav_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"not a wav file")
    with pytest.raises(MediaError, match=r"x\.wav: cannot read WAV file"):
        read_wav(tmp_path / "x.wav")


@pytest.mark.parametrize(
    ("fmt", "size"),
    [
        (PCM16_24K, 2 * 24_000),
        (AudioFormat("pcm16", 16_000), 2 * 16_000),
        (PCMU_8K, 8_000),
        (PCMA_8K, 8_000),
    ],
)
def test_render_one_second_into_each_format(fmt: AudioFormat, size: int) -> None:
    out = render(tone(16_000, 1.0), 16_000, fmt)
    assert abs(len(out) - size) <= 4


def test_render_g711_is_the_encoded_tone() -> None:
    ulaw = render(tone(16_000, 0.5), 16_000, PCMU_8K)
    assert ulaw != render(tone(16_000, 0.5), 16_000, PCMA_8K)
    assert len(set(ulaw)) > 20  # a tone, not silence (μ-law silence is one byte value)


def test_the_apology_prompt_is_shipped() -> None:
    pcm = load_prompt(APOLOGY_PROMPT, 16_000)
    seconds = len(pcm) / 2 / 16_000
    assert 2.0 < seconds < 8.0
