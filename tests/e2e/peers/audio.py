"""Test audio: speech made at test time, codec files for peers, and proof that audio arrived.

Speech comes from espeak-ng and sox (G.722 from ffmpeg: sox cannot encode it), so nothing binary is
committed. To prove received audio *is* the sent speech use :func:`correlation` (RMS alone proves
nothing): it is ≥ 0.9 for the same speech after G.711/G.722 and resampling, ~0 for other audio.

All PCM here is mono int16 numpy arrays plus a rate in Hz.
"""

from __future__ import annotations

import importlib
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

Pcm = npt.NDArray[np.int16]

DEFAULT_TEXT = "What is the weather in Paris today? Tell me about the rain."
OTHER_TEXT = "Seven hundred elephants marched quietly across the old stone bridge at midnight."
PAD_BEFORE_S = 0.3
PAD_AFTER_S = 0.5
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # what survives G.711 at 8 kHz; compare in this band
TOOL_TIMEOUT_S = 60.0

# RTP payload type → (codec, PCM rate in Hz) for the static types the peers use.
PT_PCMU = 0
PT_PCMA = 8
PT_G722 = 9
PT_TELEPHONE_EVENT = 101


@dataclass(frozen=True, slots=True)
class Speech:
    """One utterance in every form the peers need (same speech, same padding, same timing)."""

    text: str
    wav_8k: Path  # PCM16 mono 8 kHz WAV (baresip/pjsua2 source, reference)
    wav_16k: Path  # PCM16 mono 16 kHz WAV
    ulaw: Path  # raw μ-law 8 kHz (SIPp rtp_stream PT 0)
    alaw: Path  # raw A-law 8 kHz (SIPp rtp_stream PT 8)
    g722: Path  # raw G.722 64 kbit/s, 160 bytes per 20 ms (SIPp rtp_stream PT 9)

    def pcm(self, rate: int = 8000) -> Pcm:
        """The speech as int16 samples at 8000 or 16000 Hz."""
        samples, _ = read_wav(self.wav_8k if rate == 8000 else self.wav_16k)
        return samples

    @property
    def duration_s(self) -> float:
        samples, rate = read_wav(self.wav_8k)
        return len(samples) / rate

    def raw_for(self, codec: str) -> Path:
        """Raw payload file for ``codec`` (``PCMU``, ``PCMA`` or ``G722``)."""
        return {"PCMU": self.ulaw, "PCMA": self.alaw, "G722": self.g722}[codec.upper()]


def make_speech(directory: Path, text: str = DEFAULT_TEXT, name: str = "speech") -> Speech:
    """Speak ``text`` into ``directory/name.*`` (padded 0.3 s before, 0.5 s after).

    Raises:
        subprocess.CalledProcessError: espeak-ng, sox or ffmpeg failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / name
    raw = base.with_suffix(".espeak.wav")
    _run(["espeak-ng", "-w", str(raw), text])
    speech = Speech(
        text=text,
        wav_8k=directory / f"{name}_8k.wav",
        wav_16k=directory / f"{name}_16k.wav",
        ulaw=base.with_suffix(".ulaw"),
        alaw=base.with_suffix(".alaw"),
        g722=base.with_suffix(".g722"),
    )
    pad = ["pad", str(PAD_BEFORE_S), str(PAD_AFTER_S)]
    for rate, out in ((8000, speech.wav_8k), (16000, speech.wav_16k)):
        _run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out), *pad])
    _run(["sox", str(speech.wav_8k), "-t", "ul", str(speech.ulaw)])
    _run(["sox", str(speech.wav_8k), "-t", "al", str(speech.alaw)])
    ffmpeg = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(speech.wav_16k), "-ar", "16000"]
    _run([*ffmpeg, "-ac", "1", "-c:a", "g722", "-f", "g722", str(speech.g722)])
    return speech


def pad_wav(source: Path, dest: Path, total_s: float) -> Path:
    """Copy ``source`` to ``dest`` followed by silence up to ``total_s`` seconds in all.

    baresip hangs up when its aufile source ends: give it a file longer than its call.
    """
    samples, rate = read_wav(source)
    total = max(len(samples), int(total_s * rate))
    out = np.zeros(total, dtype=np.int16)
    out[: len(samples)] = samples
    write_wav(dest, out, rate)
    return dest


def read_wav(path: Path) -> tuple[Pcm, int]:
    """Read a PCM16 WAV; stereo is reduced to its first channel. Returns (samples, rate)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit WAV, expected 16-bit")
        frames = wav.readframes(wav.getnframes())
        channels = wav.getnchannels()
        rate = wav.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    return samples[::channels].copy(), rate


def write_wav(path: Path, samples: npt.ArrayLike, rate: int) -> Path:
    """Write mono PCM16 ``samples`` at ``rate`` Hz to ``path``."""
    data = np.asarray(samples, dtype=np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.astype("<i2").tobytes())
    return path


def resample(samples: npt.ArrayLike, from_rate: int, to_rate: int) -> Pcm:
    """Resample int16 PCM offline (soxr HQ); identity when the rates match."""
    data = np.asarray(samples, dtype=np.int16)
    if from_rate == to_rate:
        return data
    out: npt.NDArray[np.float32] = soxr.resample(
        data.astype(np.float32), from_rate, to_rate, quality="HQ"
    )
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def tone(freq_hz: float, seconds: float, rate: int = 8000, amplitude: float = 0.5) -> Pcm:
    """A sine tone; ``amplitude`` is a fraction of full scale (0..1)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def rms(samples: npt.ArrayLike) -> float:
    """Root mean square in int16 units (0 for an empty array)."""
    data = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(data * data))) if data.size else 0.0


def rms_dbfs(samples: npt.ArrayLike) -> float:
    """RMS in dB relative to full scale (32768); -inf for silence."""
    value = rms(samples)
    return float(20 * np.log10(value / 32768.0)) if value > 0 else float("-inf")


def correlation(
    reference: npt.ArrayLike,
    recorded: npt.ArrayLike,
    rate: int,
    recorded_rate: int | None = None,
    band_hz: tuple[float, float] = TELEPHONE_BAND_HZ,
) -> float:
    """Peak normalized cross-correlation of ``reference`` found anywhere in ``recorded``.

    Both are band-limited to ``band_hz`` (so 16 kHz speech compares fairly with its G.711 copy);
    ``recorded`` is first resampled from ``recorded_rate`` to ``rate`` if they differ. For each lag
    the score is ``<ref, rec_window> / (|ref| |rec_window|)``, so gain does not matter and a
    recording holding only part of the reference scores lower. The recording may start earlier or
    later than the reference (any delay up to its length).

    Returns:
        The maximum over lags, in [-1, 1]; 0.0 if either side is silent.
    """
    ref = _band_limit(np.asarray(reference, dtype=np.int16).astype(np.float64), rate, band_hz)
    rec_pcm = resample(recorded, recorded_rate or rate, rate)
    rec = _band_limit(rec_pcm.astype(np.float64), rate, band_hz)
    ref_energy = float(np.dot(ref, ref))
    if ref.size == 0 or rec.size == 0 or ref_energy == 0.0:
        return 0.0
    # Pad so the reference may hang over either end of the recording.
    rec = np.concatenate([np.zeros(ref.size), rec, np.zeros(ref.size)])
    n = _fft_size(rec.size + ref.size)
    xcorr = np.fft.irfft(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), n)
    lags = rec.size - ref.size + 1
    numerator = xcorr[:lags]
    csum = np.concatenate([[0.0], np.cumsum(rec * rec)])
    window_energy = csum[ref.size : ref.size + lags] - csum[:lags]
    # Windows with (almost) no energy cannot match; the floor keeps rounding noise out.
    floor = 1e-6 * ref_energy
    scores = numerator / np.sqrt(ref_energy * np.maximum(window_energy, floor))
    return float(np.max(scores))


def segment_correlations(
    reference: npt.ArrayLike,
    recorded: npt.ArrayLike,
    rate: int,
    recorded_rate: int | None = None,
    segment_s: float = 0.5,
    silence_dbfs: float = -40.0,
) -> list[float | None]:
    """:func:`correlation` of each ``segment_s`` slice of ``reference`` against ``recorded``.

    Diagnoses a recording that holds the speech with a slip (a peer's jitter buffer dropping
    10 ms, say): each segment then scores high while the whole utterance does not. Silent
    reference segments give None.
    """
    ref = np.asarray(reference, dtype=np.int16)
    rec = resample(recorded, recorded_rate or rate, rate)
    step = max(1, int(segment_s * rate))
    scores: list[float | None] = []
    for start in range(0, len(ref), step):
        segment = ref[start : start + step]
        loud = rms_dbfs(segment) > silence_dbfs
        scores.append(correlation(segment, rec, rate) if loud else None)
    return scores


def _band_limit(
    x: npt.NDArray[np.float64], rate: int, band_hz: tuple[float, float]
) -> npt.NDArray[np.float64]:
    if x.size == 0:
        return x
    x = x - np.mean(x)
    n = _fft_size(2 * x.size)  # zero-padded: the brick-wall filter's ringing does not wrap
    spectrum = np.fft.rfft(x, n)
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    spectrum[(freqs < band_hz[0]) | (freqs > band_hz[1])] = 0.0
    return np.fft.irfft(spectrum, n)[: x.size]


def _fft_size(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


# --- G.711 / G.722 decoding of captured payloads ------------------------------------------------


def _ulaw_table() -> Pcm:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    sample = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -sample, sample).astype(np.int16)


def _alaw_table() -> Pcm:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    sample = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1).clip(0)
    )
    return np.where(a & 0x80, sample, -sample).astype(np.int16)


ULAW_TABLE = _ulaw_table()
ALAW_TABLE = _alaw_table()


def decode_ulaw(payload: bytes) -> Pcm:
    """μ-law bytes → int16 PCM at 8 kHz (ITU-T G.711)."""
    return ULAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def decode_alaw(payload: bytes) -> Pcm:
    """A-law bytes → int16 PCM at 8 kHz (ITU-T G.711)."""
    return ALAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def decode_g722(payload: bytes) -> Pcm:
    """G.722 64 kbit/s bytes → int16 PCM at 16 kHz (one decoder for the whole stream)."""
    decoder = importlib.import_module("G722").G722(16000, 64000)  # PyPI package `g722`
    return np.asarray(decoder.decode(payload), dtype=np.int16)


def decode_payloads(payload_type: int, payloads: list[bytes]) -> tuple[Pcm, int]:
    """Decode one stream's consecutive RTP payloads; returns (pcm, rate).

    Raises:
        ValueError: A payload type other than 0, 8 or 9.
    """
    joined = b"".join(payloads)
    if payload_type == PT_PCMU:
        return decode_ulaw(joined), 8000
    if payload_type == PT_PCMA:
        return decode_alaw(joined), 8000
    if payload_type == PT_G722:
        return decode_g722(joined), 16000
    raise ValueError(f"cannot decode RTP payload type {payload_type}")


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=TOOL_TIMEOUT_S)
