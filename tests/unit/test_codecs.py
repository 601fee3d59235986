"""G.711 and G.722 codecs: golden vectors, round trips, per-stream state."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sipbot.errors import CodecError
from sipbot.media import codecs


def pcm(values: list[int]) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


def samples(data: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(data, dtype="<i2")]


def tone(rate_hz: int, count: int, *parts: tuple[float, float]) -> bytes:
    t = np.arange(count) / rate_hz
    wave = sum(amplitude * np.sin(2 * np.pi * freq * t) for freq, amplitude in parts)
    return np.rint(wave).astype("<i2").tobytes()


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    error = reference.astype(float) - decoded.astype(float)
    return float(10 * np.log10(np.sum(reference.astype(float) ** 2) / np.sum(error**2)))


EDGES = [0, 1, -1, 100, -100, 1000, 32767, -32768]


def test_codec_info() -> None:
    assert codecs.codec_info("pcmu") is codecs.PCMU
    assert codecs.codec_info("G722").pcm_rate_hz == 16_000
    assert codecs.G722.clock_rate_hz == 8_000
    assert codecs.G722.samples_per_frame == 160
    assert codecs.G722.pcm_bytes_per_frame == 640
    assert codecs.PCMA.static_payload_type == 8
    with pytest.raises(CodecError) as caught:
        codecs.codec_info("opus")
    assert str(caught.value) == "unsupported codec 'opus'"


@pytest.mark.parametrize("use_audioop", [True, False])
def test_g711_golden_vectors(use_audioop: bool) -> None:
    ulaw = codecs._g711("PCMU", use_audioop=use_audioop)
    alaw = codecs._g711("PCMA", use_audioop=use_audioop)
    assert ulaw.encode(pcm(EDGES)).hex() == "ffff7ef272ce8000"
    assert alaw.encode(pcm(EDGES)).hex() == "d5d555d353faaa2a"
    assert samples(ulaw.decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xF0, 0x70]))) == [
        0, 0, 32124, -32124, 120, -120,
    ]  # fmt: skip
    assert samples(alaw.decode(bytes([0xD5, 0x55, 0xAA, 0x2A, 0xD4]))) == [8, -8, 32256, -32256, 24]


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_table_fallback_matches_audioop_exhaustively(name: str) -> None:
    fast = codecs._g711(name, use_audioop=True)
    table = codecs._g711(name, use_audioop=False)
    every_sample = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert table.encode(every_sample) == fast.encode(every_sample)
    every_code = bytes(range(256))
    assert table.decode(every_code) == fast.decode(every_code)


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_round_trip(name: str) -> None:
    encoder, decoder = codecs.make_encoder(name), codecs.make_decoder(name)
    audio = tone(8_000, 160, (1000.0, 8000.0), (300.0, 2000.0))
    payload = encoder.encode(audio)
    assert len(payload) == 160
    decoded = decoder.decode(payload)
    assert len(decoded) == 320
    ref = np.frombuffer(audio, dtype="<i2")
    assert snr_db(ref, np.frombuffer(decoded, dtype="<i2")) > 35.0


def test_g711_silence_payloads() -> None:
    assert codecs.silence_payload("PCMU") == b"\xff" * 160
    assert codecs.silence_payload("PCMA") == b"\xd5" * 160
    assert codecs.silence_payload("G722") is None


def test_g722_golden_vector() -> None:
    audio = tone(16_000, 320, (1000.0, 8000.0), (2500.0, 3000.0))
    encoder = codecs.make_encoder("G722")
    first, second = encoder.encode(audio), encoder.encode(audio)
    assert len(first) == 160
    assert first[:16].hex() == "b78e2188229320a022acd04754fbfa69"
    assert hashlib.sha256(first + second).hexdigest() == (
        "d47ce3f689859121d0e0d7fe874adef9e79810ace43dbf6ace46dd9861d6ec2e"
    )
    decoded = codecs.make_decoder("G722").decode(first)
    assert len(decoded) == 640
    assert hashlib.sha256(decoded).hexdigest() == (
        "1d972eafa223ad5e4ce35639f615f0de688bb374b8d49cd49fda723847b76d22"
    )


def test_g722_is_stateful_per_stream() -> None:
    audio = tone(16_000, 320, (1000.0, 8000.0))
    encoder = codecs.make_encoder("G722")
    encoder.encode(audio)
    continued = encoder.encode(audio)
    fresh = codecs.make_encoder("G722").encode(audio)
    assert continued != fresh  # the ADPCM state carries over: one encoder per stream


def test_g722_round_trip_quality() -> None:
    t = np.arange(16_000) / 16_000
    chirp = np.rint(6000 * np.sin(2 * np.pi * (300 * t + 1500 * t * t)))  # 0.3-3.3 kHz
    audio = chirp.astype("<i2").tobytes()
    encoder, decoder = codecs.make_encoder("G722"), codecs.make_decoder("G722")
    decoded = b"".join(
        decoder.decode(encoder.encode(audio[i : i + 640])) for i in range(0, len(audio), 640)
    )
    out = np.frombuffer(decoded, dtype="<i2").astype(float)
    assert len(out) == len(chirp)
    lag = int(np.argmax([np.dot(chirp[2000:6000], out[2000 + d : 6000 + d]) for d in range(64)]))
    assert lag == 22  # the G.722 QMF pair delays by 22 samples
    assert snr_db(chirp[2000:10000], out[2000 + lag : 10000 + lag]) > 40.0
