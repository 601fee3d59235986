"""The per-call DSP chains between RTP payloads and provider formats."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.domain import PCM16_8K, PCM16_16K, PCM16_24K, PCMA_8K, PCMU_8K, AudioFormat
from sipbot.errors import CodecError
from sipbot.media.chain import NO_FRAMES, InboundChain, OutboundChain
from sipbot.media.codecs import G722, PCMA, PCMU, CodecInfo, make_decoder, make_encoder


def sine(rate: int, ms: int, freq: float = 1000.0, amplitude: float = 8000.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def level(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    return float(np.sqrt(np.mean(x**2)))


class Collecting(InboundChain):
    """An inbound chain whose returned frames are also collected in ``frames``."""

    def __init__(self, codec: CodecInfo, target: AudioFormat, frames: list[bytes]) -> None:
        super().__init__(codec, target)
        self.frames = frames

    def feed(self, payload: bytes, want_pcm: bool = False) -> tuple[bytes, ...]:
        produced = super().feed(payload, want_pcm)
        self.frames.extend(produced)
        return produced


@pytest.mark.parametrize(
    ("codec", "target", "frame_bytes"),
    [
        (PCMU, PCM16_16K, 640),
        (PCMA, PCM16_16K, 640),
        (G722, PCM16_16K, 640),
        (PCMU, PCM16_24K, 960),
        (G722, PCM16_8K, 320),
        (PCMU, PCMU_8K, 160),
        (PCMA, PCMU_8K, 160),
    ],
)
def test_inbound_one_payload_one_frame(
    codec: CodecInfo, target: AudioFormat, frame_bytes: int
) -> None:
    frames: list[bytes] = []
    chain = Collecting(codec, target, frames)
    encoder = make_encoder(codec.name)
    for _ in range(5):
        chain.feed(encoder.encode(sine(codec.pcm_rate_hz, 20)))
    assert [len(f) for f in frames] == [frame_bytes] * 5
    assert chain.passthrough == (codec is PCMU and target == PCMU_8K)


def test_inbound_passthrough_is_untouched_and_decodes_only_for_the_recorder() -> None:
    frames: list[bytes] = []
    chain = Collecting(PCMU, PCMU_8K, frames)
    payload = bytes(range(160))
    chain.feed(payload)
    assert frames == [payload]
    assert chain.last_pcm == b""
    chain.feed(payload, want_pcm=True)
    assert chain.last_pcm == make_decoder("PCMU").decode(payload)


def test_inbound_reframes_other_packet_durations() -> None:
    frames: list[bytes] = []
    chain = Collecting(PCMU, PCM16_16K, frames)
    encoder = make_encoder("PCMU")
    chain.feed(encoder.encode(sine(8000, 30)))  # 30 ms packets
    chain.feed(encoder.encode(sine(8000, 30)))
    chain.feed(encoder.encode(sine(8000, 10)))  # and a 10 ms one
    assert [len(f) for f in frames] == [640] * 3


def test_inbound_level_survives_decode_and_resample() -> None:
    frames: list[bytes] = []
    chain = Collecting(PCMU, PCM16_16K, frames)
    encoder = make_encoder("PCMU")
    for _ in range(10):
        chain.feed(encoder.encode(sine(8000, 20)))
    assert level(b"".join(frames[2:])) == pytest.approx(8000 / np.sqrt(2), rel=0.02)


def test_inbound_feed_returns_the_frames_it_completed() -> None:
    chain = InboundChain(PCMU, PCM16_16K)
    encoder = make_encoder("PCMU")
    (frame,) = chain.feed(encoder.encode(sine(8000, 20)))  # 20 ms in, one frame out
    assert len(frame) == 640
    assert chain.feed(encoder.encode(sine(8000, 10))) is NO_FRAMES  # 10 ms: still partial
    assert [len(f) for f in chain.feed(encoder.encode(sine(8000, 30)))] == [640, 640]
    assert [len(f) for f in chain.feed(encoder.encode(sine(8000, 20)))] == [640]


def test_inbound_passthrough_returns_the_payload_itself() -> None:
    chain = InboundChain(PCMU, PCMU_8K)
    payload = bytes(range(160))
    (frame,) = chain.feed(payload)
    assert frame is payload


def test_inbound_restart_drops_a_partial_frame() -> None:
    chain = InboundChain(PCMU, PCMU_8K)
    assert chain.feed(b"\x01" * 80) == ()
    chain.restart()
    assert chain.feed(b"\x02" * 160) == (b"\x02" * 160,)


@pytest.mark.parametrize(
    ("codec", "source", "frame_bytes", "passthrough"),
    [
        (PCMU, PCM16_24K, 320, False),
        (PCMA, PCM16_16K, 320, False),
        (G722, PCM16_24K, 640, False),
        (PCMU, PCMU_8K, 160, True),
        (PCMA, PCMU_8K, 320, False),
        (G722, PCMA_8K, 640, False),
    ],
)
def test_outbound_pacer_format(
    codec: CodecInfo, source: AudioFormat, frame_bytes: int, passthrough: bool
) -> None:
    chain = OutboundChain(codec, source)
    assert (chain.frame_bytes, chain.passthrough) == (frame_bytes, passthrough)
    assert len(chain.silence) == frame_bytes
    assert chain.bytes_per_ms * 20 == frame_bytes
    if source.encoding == "pcm16":
        audio = sine(source.rate_hz, 20)
    else:
        audio = make_encoder(source.encoding).encode(sine(8000, 20))
    assert len(chain.convert(audio)) == frame_bytes
    assert len(chain.encode(chain.convert(audio))) == 160


def test_outbound_silence_payload_is_constant_for_g711_and_encoded_for_g722() -> None:
    ulaw = OutboundChain(PCMU, PCM16_24K)
    assert ulaw.encode(ulaw.silence) == b"\xff" * 160
    g722 = OutboundChain(G722, PCM16_24K)
    assert len(g722.encode(g722.silence)) == 160


def test_outbound_pcm_helpers() -> None:
    passthrough = OutboundChain(PCMU, PCMU_8K)
    pcm = sine(8000, 20)
    assert passthrough.from_pcm(pcm) == make_encoder("PCMU").encode(pcm)
    assert passthrough.to_pcm(b"\xff" * 160) == bytes(320)
    linear = OutboundChain(PCMU, PCM16_24K)
    assert linear.from_pcm(pcm) is pcm
    assert linear.to_pcm(pcm) is pcm
    assert linear.pcm_rate_hz == 8000


def test_outbound_reset_forgets_resampler_history() -> None:
    chain = OutboundChain(PCMU, PCM16_24K)
    loud = sine(24000, 20, amplitude=20000)
    first = chain.convert(loud)
    chain.convert(loud)
    chain.reset()
    assert chain.convert(loud) == first


def test_bad_formats() -> None:
    with pytest.raises(CodecError, match="pcmu audio must be 8000 Hz, not 16000 Hz"):
        OutboundChain(PCMU, AudioFormat("pcmu", 16000))
    with pytest.raises(CodecError, match="no resampler from 8000 Hz to 44100 Hz"):
        InboundChain(PCMU, AudioFormat("pcm16", 44100))


# --------------------------------------------------------------------------- gaps (PLC)


@pytest.mark.parametrize(
    ("codec", "target"),
    [(PCMU, PCM16_16K), (G722, PCM16_16K), (PCMU, PCMU_8K), (PCMA, PCMU_8K), (G722, PCM16_24K)],
)
def test_a_gap_keeps_the_caller_time_whole(codec: CodecInfo, target: AudioFormat) -> None:
    chain = InboundChain(codec, target)
    encoder = make_encoder(codec.name)
    frames: list[bytes] = []
    for _ in range(5):
        frames.extend(chain.feed(encoder.encode(sine(codec.pcm_rate_hz, 20, freq=200.0))))
    frames.extend(chain.fill(2 * codec.samples_per_frame, codec.samples_per_frame))  # 40 + 20 ms
    for _ in range(4):
        frames.extend(chain.feed(encoder.encode(sine(codec.pcm_rate_hz, 20, freq=200.0))))
    assert [len(f) for f in frames] == [target.frame_bytes] * 12
    assert chain.plc.concealed_samples == 2 * codec.pcm_bytes_per_frame // 2


def test_a_concealed_gap_is_not_a_hole() -> None:
    chain = InboundChain(PCMU, PCM16_8K)
    encoder = make_encoder("PCMU")
    for _ in range(5):
        chain.feed(encoder.encode(sine(8000, 20, freq=250.0)))
    (concealed,) = chain.fill(160, 0)
    assert level(concealed) > 0.5 * level(sine(8000, 20, freq=250.0))
    (silence,) = chain.fill(0, 160)
    assert silence == bytes(320)


def test_passthrough_reencodes_only_the_blended_frame() -> None:
    chain = InboundChain(PCMU, PCMU_8K)
    encoder = make_encoder("PCMU")
    payloads = [encoder.encode(sine(8000, 20, freq=f)) for f in (250.0, 430.0, 250.0)]
    assert chain.feed(payloads[0]) == (payloads[0],)
    (concealed,) = chain.fill(160, 0)
    assert len(concealed) == 160
    (blended,) = chain.feed(payloads[1])
    assert blended != payloads[1]
    assert len(blended) == 160
    assert chain.feed(payloads[2]) == (payloads[2],)
