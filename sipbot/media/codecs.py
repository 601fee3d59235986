"""Voice codecs on the RTP path: G.711 μ-law/A-law and G.722 (synchronous, stateful per stream).

G.711 uses the C ``audioop`` module (stdlib up to 3.12, the ``audioop-lts`` package from 3.13);
if neither imports, identical numpy lookup tables are used (about 15× slower, still small).
G.722 uses the ``g722`` package (import name ``G722``), whose encoder and decoder carry ADPCM
state: make one :class:`Encoder` and one :class:`Decoder` per call and direction, never share.

PCM is 16-bit signed little-endian mono ``bytes`` at the codec's ``pcm_rate_hz``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sipbot.errors import CodecError
from sipbot.media.formats import FRAME_MS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # 3.11/3.12 warn; 3.13 uses audioop-lts
    try:
        import audioop as _audioop
    except ImportError:  # pragma: no cover - Python >= 3.13 without audioop-lts
        _audioop = None  # type: ignore[assignment]

G722_BITRATE = 64_000


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """What the media path needs to know about a codec.

    ``clock_rate_hz`` is the RTP timestamp clock, ``pcm_rate_hz`` the audio rate; they differ for
    G.722 (RTP clock 8000 for historical reasons, RFC 3551 §4.5.2, audio 16 kHz).
    """

    name: str
    static_payload_type: int
    clock_rate_hz: int
    pcm_rate_hz: int
    payload_bytes_per_frame: int  # one 20 ms frame

    @property
    def samples_per_frame(self) -> int:
        """RTP timestamp units per 20 ms frame."""
        return self.clock_rate_hz * FRAME_MS // 1000

    @property
    def pcm_bytes_per_frame(self) -> int:
        """PCM16 bytes in one 20 ms frame at ``pcm_rate_hz``."""
        return 2 * self.pcm_rate_hz * FRAME_MS // 1000


PCMU = CodecInfo("PCMU", 0, 8_000, 8_000, 160)
PCMA = CodecInfo("PCMA", 8, 8_000, 8_000, 160)
G722 = CodecInfo("G722", 9, 8_000, 16_000, 160)
CODECS = {info.name: info for info in (PCMU, PCMA, G722)}


def codec_info(name: str) -> CodecInfo:
    """The codec called ``name`` (case-insensitive, e.g. ``"pcmu"``, ``"G722"``).

    Raises:
        CodecError: ``unsupported codec 'NAME'`` for anything but PCMU, PCMA and G722.
    """
    info = CODECS.get(name.upper())
    if info is None:
        raise CodecError(f"unsupported codec {name!r}")
    return info


class Encoder(Protocol):
    """PCM16 at the codec's rate → payload."""

    def encode(self, pcm: bytes) -> bytes: ...


class Decoder(Protocol):
    """Payload → PCM16 at the codec's rate."""

    def decode(self, payload: bytes) -> bytes: ...


# --------------------------------------------------------------------------- G.711


def _ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    """(encode[65536] uint8 indexed by uint16 view of the sample, decode[256] int16), as audioop."""
    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    magnitude = (((inverted & 0x0F) << 3) + 0x84) << ((inverted & 0x70) >> 4)
    decode = np.where(inverted & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)
    samples = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    value = samples >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    value = np.minimum(np.abs(value), 8159) + (0x84 >> 2)
    segment = np.searchsorted(
        np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), value
    )
    code = (segment << 4) | ((value >> (segment + 1)) & 0x0F)
    encode = (np.where(segment >= 8, 0x7F, code) ^ mask).astype(np.uint8)
    return encode, decode


def _alaw_tables() -> tuple[np.ndarray, np.ndarray]:
    """(encode[65536] uint8 indexed by uint16 view of the sample, decode[256] int16), as audioop."""
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (codes & 0x70) >> 4
    base = (codes & 0x0F) << 4
    magnitude = np.where(segment == 0, base + 8, (base + 0x108) << np.maximum(segment - 1, 0))
    decode = np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)
    samples = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    value = samples >> 3
    mask = np.where(value >= 0, 0xD5, 0x55)
    value = np.where(value >= 0, value, -value - 1)
    segment = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), value)
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((value >> shift) & 0x0F)
    encode = (np.where(segment >= 8, 0x7F, code) ^ mask).astype(np.uint8)
    return encode, decode


class _TableCodec:
    """G.711 through numpy lookup tables (the fallback when audioop is missing)."""

    def __init__(self, tables: tuple[np.ndarray, np.ndarray]) -> None:
        self._encode_table, self._decode_table = tables

    def encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<u2", count=len(pcm) // 2)
        return bytes(self._encode_table[samples].data)

    def decode(self, payload: bytes) -> bytes:
        return bytes(self._decode_table[np.frombuffer(payload, dtype=np.uint8)].data)


class _AudioopCodec:
    """G.711 through audioop (stateless; the object only binds the two functions)."""

    def __init__(
        self, encode: Callable[[bytes, int], bytes], decode: Callable[[bytes, int], bytes]
    ):
        self._encode = encode
        self._decode = decode

    def encode(self, pcm: bytes) -> bytes:
        return self._encode(pcm, 2)

    def decode(self, payload: bytes) -> bytes:
        return self._decode(payload, 2)


def _g711(name: str, *, use_audioop: bool = True) -> _AudioopCodec | _TableCodec:
    if use_audioop and _audioop is not None:
        if name == "PCMU":
            return _AudioopCodec(_audioop.lin2ulaw, _audioop.ulaw2lin)
        return _AudioopCodec(_audioop.lin2alaw, _audioop.alaw2lin)
    return _TableCodec(_ulaw_tables() if name == "PCMU" else _alaw_tables())


# --------------------------------------------------------------------------- G.722


class G722Encoder:
    """A stateful G.722 encoder (64 kbit/s, 16 kHz PCM in)."""

    def __init__(self) -> None:
        import G722 as _g722

        self._codec = _g722.G722(16_000, G722_BITRATE)

    def encode(self, pcm: bytes) -> bytes:
        # The extension reads a bytes object as 8-bit samples: hand it 16-bit items.
        return bytes(self._codec.encode(memoryview(pcm).cast("h")))


class G722Decoder:
    """A stateful G.722 decoder (16 kHz PCM out)."""

    def __init__(self) -> None:
        import G722 as _g722

        self._codec = _g722.G722(16_000, G722_BITRATE)

    def decode(self, payload: bytes) -> bytes:
        return bytes(self._codec.decode(payload))


def make_encoder(name: str) -> Encoder:
    """A new encoder for codec ``name`` (one per call and direction).

    Raises:
        CodecError: the codec is not supported.
    """
    info = codec_info(name)
    if info is G722:
        return G722Encoder()
    return _g711(info.name)


def make_decoder(name: str) -> Decoder:
    """A new decoder for codec ``name`` (one per call and direction).

    Raises:
        CodecError: the codec is not supported.
    """
    info = codec_info(name)
    if info is G722:
        return G722Decoder()
    return _g711(info.name)


def silence_payload(name: str) -> bytes | None:
    """A constant 20 ms silence payload, or None if silence must go through the encoder (G.722)."""
    info = codec_info(name)
    if info is G722:
        return None
    return _g711(info.name).encode(bytes(info.pcm_bytes_per_frame))
