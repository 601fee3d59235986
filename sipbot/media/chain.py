"""The DSP chains of one call, between RTP payloads and the provider's audio formats (sync).

* :class:`InboundChain`: payload → decode → resample → (re-encode) → exact 20 ms frames in the
  provider's input format, returned by :meth:`InboundChain.feed` (usually one frame per 20 ms
  payload, in a 1-tuple; ``()`` while a frame is still partial). A G.711 provider format that
  matches the codec is passed through untouched.
  A lost stretch (:class:`~sipbot.media.receiver.Gap`) goes through :meth:`InboundChain.fill`:
  concealed (:mod:`sipbot.media.plc`) and silence-filled at the codec's rate, then down the same
  path, so the provider hears continuous audio with no clicks and no time compression.
* :class:`OutboundChain`: provider audio → (decode) → resample → the *pacer format* (PCM16 at the
  codec's rate, or the G.711 bytes themselves in pass-through), and pacer frames → payloads.
  Encoding happens per slot, after the pacer, so a stateful encoder (G.722) sees one continuous
  signal, silence included, and a barge-in flush discards audio that was never encoded.

One chain per call and direction: each owns its codec and resampler state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from sipbot.errors import CodecError
from sipbot.media.codecs import CodecInfo, Decoder, make_decoder, make_encoder, silence_payload
from sipbot.media.formats import FRAME_MS, AudioFormat
from sipbot.media.plc import Concealer
from sipbot.media.resample import BATCH_MIN, Resampler, resample_batch

G711_RATE_HZ = 8_000
NO_FRAMES: Final[tuple[bytes, ...]] = ()


def _check_format(fmt: AudioFormat) -> None:
    if fmt.encoding != "pcm16" and fmt.rate_hz != G711_RATE_HZ:
        raise CodecError(f"{fmt.encoding} audio must be 8000 Hz, not {fmt.rate_hz} Hz")


def _passthrough(codec: CodecInfo, fmt: AudioFormat) -> bool:
    return fmt.encoding != "pcm16" and fmt.encoding.upper() == codec.name


class InboundChain:
    """RTP payloads of ``codec`` → 20 ms frames of ``target``, returned by :meth:`feed`.

    Raises:
        CodecError: an unsupported codec or format combination.
    """

    def __init__(self, codec: CodecInfo, target: AudioFormat) -> None:
        _check_format(target)
        self.codec = codec
        self.target = target
        self.passthrough = _passthrough(codec, target)
        self._decoder = make_decoder(codec.name)
        linear_rate = target.rate_hz if target.encoding == "pcm16" else G711_RATE_HZ
        try:
            self._resampler = Resampler(codec.pcm_rate_hz, linear_rate)
        except ValueError as error:
            raise CodecError(str(error)) from None
        self._encoder = (
            None
            if target.encoding == "pcm16" or self.passthrough
            else make_encoder(target.encoding)
        )
        self._frame_bytes = target.frame_bytes
        self._partial = bytearray()
        self.last_pcm = b""  # PCM16 at the codec's rate of the last payload (for recording)
        self.plc = Concealer(codec.pcm_rate_hz)
        self._units_to_samples = codec.pcm_rate_hz // codec.clock_rate_hz
        self._passthrough_encoder = make_encoder(codec.name) if self.passthrough else None

    def restart(self) -> None:
        """A new inbound stream (SSRC): fresh decoder state; a partial frame is dropped."""
        self._decoder = make_decoder(self.codec.name)
        self._partial.clear()
        self.plc.reset()

    def feed(self, payload: bytes, want_pcm: bool = False) -> tuple[bytes, ...]:
        """Convert one payload; return the frames it completed, oldest first.

        A 20 ms payload with nothing pending gives one frame (a 1-tuple, the only allocation
        besides the DSP's own); a shorter one may give :data:`NO_FRAMES`, a longer one two.
        Pass-through decodes too (the concealer's history); ``want_pcm`` makes ``last_pcm``
        valid there (for the recorder).
        """
        pcm = self._decoder.decode(payload)
        if want_pcm or not self.passthrough:
            self.last_pcm = pcm
        heard = self.plc.good(pcm)
        if self.passthrough and heard is pcm:
            return self._frames(payload)
        return self._frames(self._convert(heard))  # pass-through: blended after a concealment

    def fill(self, lost_units: int, silence_units: int) -> tuple[bytes, ...]:
        """Audio for a gap in RTP timestamp units: concealed, then silence (receiver Rule 8).

        Returns the frames completed, as :meth:`feed` does; ``last_pcm`` holds the filler.
        """
        scale = self._units_to_samples
        pcm = self.plc.conceal(lost_units * scale) + self.plc.silence(silence_units * scale)
        self.last_pcm = pcm
        return self._frames(self._convert(pcm))

    def _convert(self, pcm: bytes) -> bytes:
        """PCM16 at the codec's rate → the target format."""
        if self.passthrough:
            assert self._passthrough_encoder is not None
            return self._passthrough_encoder.encode(pcm)
        audio = self._resampler.process(pcm)
        return audio if self._encoder is None else self._encoder.encode(audio)

    def _frames(self, audio: bytes) -> tuple[bytes, ...]:
        frame_bytes = self._frame_bytes
        partial = self._partial
        if not partial and len(audio) == frame_bytes:
            return (audio,)  # the common case: 20 ms in, 20 ms out
        partial += audio
        if len(partial) < frame_bytes:
            return NO_FRAMES
        frames = []
        while len(partial) >= frame_bytes:
            frames.append(bytes(partial[:frame_bytes]))
            del partial[:frame_bytes]
        return tuple(frames)


class OutboundChain:
    """Provider audio in ``source`` format → pacer frames → ``codec`` payloads.

    Attributes:
        frame_bytes, silence, bytes_per_ms: the pacer format (see the module docstring).

    Raises:
        CodecError: an unsupported codec or format combination.
    """

    def __init__(self, codec: CodecInfo, source: AudioFormat) -> None:
        _check_format(source)
        self.codec = codec
        self.source = source
        self.passthrough = _passthrough(codec, source)
        self._encoder = make_encoder(codec.name)
        self._to_linear: Decoder | None = None
        self._resampler: Resampler | None = None
        self._record_decoder: Decoder | None = None
        if self.passthrough:
            constant = silence_payload(codec.name)
            assert constant is not None  # pass-through is G.711 only
            self.silence = constant
            self.frame_bytes = codec.payload_bytes_per_frame
            self.bytes_per_ms = self.frame_bytes // FRAME_MS
            self._record_decoder = make_decoder(codec.name)
            self._silence_payload: bytes | None = constant
            return
        if source.encoding != "pcm16":
            self._to_linear = make_decoder(source.encoding)
        linear_rate = source.rate_hz if source.encoding == "pcm16" else G711_RATE_HZ
        try:
            self._resampler = Resampler(linear_rate, codec.pcm_rate_hz)
        except ValueError as error:
            raise CodecError(str(error)) from None
        self.frame_bytes = codec.pcm_bytes_per_frame
        self.bytes_per_ms = self.frame_bytes // FRAME_MS
        self.silence = bytes(self.frame_bytes)
        self._silence_payload = silence_payload(codec.name)

    @property
    def pcm_rate_hz(self) -> int:
        """Rate of :meth:`to_pcm` output (the codec's PCM rate)."""
        return self.codec.pcm_rate_hz

    def convert(self, audio: bytes) -> bytes:
        """Provider audio → pacer format (any length; a resampler remainder waits)."""
        if self.passthrough:
            return audio
        if self._to_linear is not None:
            audio = self._to_linear.decode(audio)
        assert self._resampler is not None
        return self._resampler.process(audio)

    def encode(self, frame: bytes) -> bytes:
        """A pacer frame → its RTP payload."""
        if self.passthrough:
            return frame
        if frame is self.silence and self._silence_payload is not None:
            return self._silence_payload  # G.711 silence is a constant
        return self._encoder.encode(frame)

    def from_pcm(self, pcm: bytes) -> bytes:
        """PCM16 at the codec's rate (in-band DTMF tones) → pacer format."""
        return pcm if self._record_decoder is None else self._encoder.encode(pcm)

    def to_pcm(self, frame: bytes) -> bytes:
        """A pacer frame as PCM16 at the codec's rate (for the recorder)."""
        if self._record_decoder is not None:
            return self._record_decoder.decode(frame)
        return frame

    def scale(self, frame: bytes, gain: float) -> bytes:
        """A pacer frame at ``gain`` (linear, < 1: ducking), in the pacer format."""
        if self._record_decoder is not None:  # G.711 pass-through: decode, scale, encode
            pcm = np.frombuffer(self._record_decoder.decode(frame), dtype="<i2")
            return self._encoder.encode((pcm * gain).astype("<i2").tobytes())
        return (np.frombuffer(frame, dtype="<i2") * gain).astype("<i2").tobytes()

    def reset(self) -> None:
        """Forget resampler history and remainder (after a flush)."""
        if self._resampler is not None:
            self._resampler.reset()


def convert_outbound(chains: Sequence[OutboundChain], chunks: Sequence[bytes]) -> list[bytes]:
    """``[chain.convert(chunk) ...]`` with the resampling of each rate pair in one batch.

    The result is bit-identical to converting one chunk at a time (resample Rule 7); chains
    that do not resample PCM16 (pass-through, G.711 provider audio) convert on their own.
    """
    results = [b""] * len(chunks)
    batches: dict[tuple[int, int], tuple[list[int], list[Resampler]]] = {}
    for index, chain in enumerate(chains):
        resampler = chain._resampler
        if resampler is None or chain._to_linear is not None or resampler.passthrough:
            results[index] = chain.convert(chunks[index])
            continue
        pair = (resampler.in_rate_hz, resampler.out_rate_hz)
        indexes, resamplers = batches.setdefault(pair, ([], []))
        indexes.append(index)
        resamplers.append(resampler)
    for indexes, resamplers in batches.values():
        if len(indexes) < BATCH_MIN:
            for index in indexes:
                results[index] = chains[index].convert(chunks[index])
            continue
        converted = resample_batch(resamplers, [chunks[i] for i in indexes])
        for index, audio in zip(indexes, converted, strict=True):
            results[index] = audio
    return results
