"""Audio files that are not real time: prompts, `sipbot call --play/--record`.

The only module that imports ``soxr``: it converts whole files at once, where its latency does not
matter (the real-time path uses the stateful FIR resampler in :mod:`sipbot.media.resample`).
"""

from __future__ import annotations

import functools
import wave
from importlib import resources
from pathlib import Path

import numpy as np
import soxr

from sipbot.domain import AudioFormat
from sipbot.errors import MediaError
from sipbot.media.codecs import make_encoder

APOLOGY_PROMPT = "apology.wav"
FILLER_PROMPT = "filler.wav"


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Read a PCM16 WAV file as mono PCM16 little-endian bytes and its sample rate.

    Stereo files are mixed down. Raises:
        MediaError: the file is missing, not a WAV, or not 16-bit PCM.
    """
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise MediaError(f"{path}: only 16-bit PCM WAV files are supported")
            rate = w.getframerate()
            channels = w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise MediaError(f"{path}: cannot read WAV file: {exc}") from None
    if channels > 1:
        samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.int32)
        frames = samples.mean(axis=1).astype("<i2").tobytes()
    return frames, rate


def write_wav(path: str | Path, pcm: bytes, rate_hz: int, channels: int = 1) -> None:
    """Write PCM16 little-endian audio to a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm)


def convert_rate(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """Resample a whole PCM16 buffer at once (high quality, not for streaming)."""
    if from_hz == to_hz or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, from_hz, to_hz, quality="HQ")
    return np.asarray(out, dtype="<i2").tobytes()


def load_wav(path: str | Path, rate_hz: int) -> bytes:
    """Read a WAV file and return it as mono PCM16 at ``rate_hz``."""
    pcm, rate = read_wav(path)
    return convert_rate(pcm, rate, rate_hz)


def load_prompt(name: str, rate_hz: int) -> bytes:
    """A prompt shipped in ``sipbot/data`` as mono PCM16 at ``rate_hz``."""
    with resources.as_file(resources.files("sipbot.data").joinpath(name)) as path:
        return load_wav(path, rate_hz)


@functools.lru_cache(maxsize=32)
def render(pcm: bytes, rate_hz: int, fmt: AudioFormat) -> bytes:
    """Convert PCM16 audio at ``rate_hz`` into ``fmt`` (PCM16 at its rate, or G.711)."""
    if fmt.encoding == "pcm16":
        return convert_rate(pcm, rate_hz, fmt.rate_hz)
    narrow = convert_rate(pcm, rate_hz, fmt.rate_hz)
    return make_encoder(fmt.encoding.upper()).encode(narrow)
