"""Per-frame cost of each media stage and of the whole inbound/outbound chains, per codec,
plus the resampler's measured delay and alias/image rejection.

    python bench/bench_dsp.py [--frames N]

Figures are µs per 20 ms frame on this machine (best of 5 runs, so scheduling noise from other
processes is mostly filtered out; the machine is shared, treat them as ±20 %).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: no BLAS threads on the hot path

import argparse
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from sipbot.domain import PCM16_16K, PCM16_24K
from sipbot.media.chain import InboundChain, OutboundChain
from sipbot.media.codecs import CODECS, CodecInfo, make_decoder, make_encoder
from sipbot.media.jitter import JitterBuffer
from sipbot.media.pacer import Pacer
from sipbot.media.resample import SUPPORTED_RATES, Resampler
from sipbot.media.rtp import OutboundStream, RtpPacket, parse_rtp
from sipbot.media.vad import EnergyVad


def speech_like(rate_hz: int, ms: int) -> bytes:
    rng = np.random.default_rng(1)
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    x = 6000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 800 * (
        rng.standard_normal(len(t))
    )
    return bytes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())


def per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def row(label: str, cost_us: float) -> None:
    print(f"  {label:28} {cost_us:7.2f}")


def stage_costs(frames: int) -> None:
    print(f"\n== stages (µs per 20 ms frame, best of 5 x {frames})")
    packet = RtpPacket(0, 1, 160, 1, b"\xff" * 160).serialize()
    row("rtp parse", per_call_us(lambda: parse_rtp(packet), frames))
    stream = OutboundStream(160)
    payload = b"\xff" * 160
    row("rtp build (header+payload)", per_call_us(lambda: stream.packet(0, payload), frames))
    jitter = JitterBuffer()
    seq = [0]

    def jitter_push() -> None:
        seq[0] = (seq[0] + 1) & 0xFFFF
        jitter.push(RtpPacket(0, seq[0], 0, 1, payload), 0.0)

    row("jitter push (in order)", per_call_us(jitter_push, frames))
    for name, info in CODECS.items():
        pcm = speech_like(info.pcm_rate_hz, 20)
        encoder, decoder = make_encoder(name), make_decoder(name)
        encoded = encoder.encode(pcm)
        row(f"{name} encode", per_call_us(partial(encoder.encode, pcm), frames))
        row(f"{name} decode", per_call_us(partial(decoder.decode, encoded), frames))
    for in_rate, out_rate in SUPPORTED_RATES:
        resampler = Resampler(in_rate, out_rate)
        pcm = speech_like(in_rate, 20)
        label = f"resample {in_rate // 1000}k -> {out_rate // 1000}k"
        row(label, per_call_us(partial(resampler.process, pcm), frames))
    pacer = Pacer(320, bytes(320), 16, prebuffer_ms=0)
    chunk = bytes(320 * 5)

    def pacer_cycle() -> None:
        pacer.push(chunk, "item")
        for _ in range(5):
            pacer.pull()

    row("pacer push+pull", per_call_us(pacer_cycle, frames // 5) / 5)
    vad = EnergyVad(16_000)
    row("energy VAD (16 kHz)", per_call_us(partial(vad.process, speech_like(16_000, 20)), frames))


def inbound_path(info: CodecInfo) -> Callable[[], None]:
    """One 20 ms packet: parse, jitter, decode, resample to 16 kHz, sink."""
    payload = make_encoder(info.name).encode(speech_like(info.pcm_rate_hz, 20))
    inbound = InboundChain(info, PCM16_16K, lambda frame: None)
    jitter = JitterBuffer()
    wire = [
        RtpPacket(info.static_payload_type, seq, 0, 1, payload).serialize() for seq in range(65536)
    ]
    seq = [0]

    def run() -> None:
        seq[0] = (seq[0] + 1) & 0xFFFF
        for packet in jitter.push(parse_rtp(wire[seq[0]]), 0.0):
            inbound.feed(packet.payload)

    return run


def outbound_path(info: CodecInfo) -> Callable[[], None]:
    """20 ms of 24 kHz provider audio: resample, pacer, encode, RTP header."""
    outbound = OutboundChain(info, PCM16_24K)
    pacer = Pacer(outbound.frame_bytes, outbound.silence, outbound.bytes_per_ms, prebuffer_ms=0)
    stream = OutboundStream(info.samples_per_frame)
    provider_frame = speech_like(24_000, 20)

    def run() -> None:
        pacer.push(outbound.convert(provider_frame), "item")
        stream.packet(info.static_payload_type, outbound.encode(pacer.pull()))

    return run


def chain_costs(frames: int) -> None:
    print(f"\n== full chains per codec (µs per 20 ms frame, best of 5 x {frames})")
    print("  inbound  = parse + jitter + decode + resample to 16 kHz (+ sink call)")
    print("  outbound = resample 24 kHz provider audio + pacer + encode + RTP header")
    for name, info in CODECS.items():
        cost_in = per_call_us(inbound_path(info), frames)
        cost_out = per_call_us(outbound_path(info), frames)
        total = cost_in + cost_out
        print(
            f"  {name:5} inbound {cost_in:6.2f}   outbound {cost_out:6.2f}   both {total:6.2f} µs"
            f"  = {total * 50 / 1000:.2f} ms CPU per call-second"
        )


def tone(rate_hz: int, freq_hz: float, seconds: float = 0.5) -> bytes:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return bytes(np.rint(10_000 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes())


def rms(data: bytes) -> float:
    x = np.frombuffer(data, dtype="<i2").astype(float)
    x = x[len(x) // 5 :]
    return float(np.sqrt(np.mean(x**2)) + 1e-9)


def worst_rejection_db(in_rate: int, out_rate: int) -> float:
    """Worst stopband leakage: decimation → aliases of tones above the output Nyquist rate;
    interpolation → images of in-band tones above the input Nyquist rate."""
    worst = -200.0
    if in_rate > out_rate:
        for freq in np.linspace(out_rate / 2, in_rate / 2 - 20, 40):
            out = Resampler(in_rate, out_rate).process(tone(in_rate, freq))
            worst = max(worst, 20 * np.log10(rms(out) / rms(tone(in_rate, freq))))
        return worst
    edge = 3400.0 if in_rate == 8000 else 7000.0
    for freq in np.linspace(100, edge, 30):
        pcm = Resampler(in_rate, out_rate).process(tone(in_rate, freq))
        samples = np.frombuffer(pcm, dtype="<i2").astype(float)
        x = samples[len(samples) // 5 :] * np.hanning(len(samples) - len(samples) // 5)
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / out_rate)
        wanted = spectrum[np.abs(freqs - freq) < 60].sum()
        images = spectrum[freqs > in_rate / 2].sum()
        worst = max(worst, 10 * np.log10(images / wanted + 1e-30))
    return worst


def resampler_quality() -> None:
    print("\n== resampler: added delay (impulse peak) and worst alias/image level")
    for in_rate, out_rate in SUPPORTED_RATES:
        resampler = Resampler(in_rate, out_rate)
        click = np.zeros(in_rate // 10)
        click[in_rate // 50] = 20_000
        out = np.frombuffer(resampler.process(click.astype("<i2").tobytes()), dtype="<i2")
        measured_ms = (np.argmax(np.abs(out)) / out_rate - 0.02) * 1000
        leakage = worst_rejection_db(in_rate, out_rate)
        print(
            f"  {in_rate // 1000:2}k -> {out_rate // 1000:2}k  delay {resampler.delay_ms:5.3f} ms "
            f"(measured {measured_ms:5.3f})  worst leakage {leakage:6.1f} dB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    stage_costs(args.frames)
    chain_costs(args.frames)
    resampler_quality()


if __name__ == "__main__":
    main()
