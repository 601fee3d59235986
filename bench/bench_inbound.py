"""CPU per RTP packet through a real MediaSession, inbound and outbound (the per-packet paths).

    python bench/bench_inbound.py [--batches 150] [--batch 2000] [--profile FILE]

One MediaSession on a loopback port (PCMU, telephone-event 101), fed datagrams through its
public entry point :meth:`MediaSession.process` (what the engine's drain calls): latch check,
parse, jitter buffer, the receiver's result, the inbound chain, ``on_audio``. No socket read, no
provider: the figure is the media shell and its cores alone. CPU time (``process_time``) per
packet, best batch of ``--batches`` (the machine is shared: the minimum filters out preemption),
for the provider formats PCMU pass-through and PCM16 16 kHz (decode + resample).

The outbound figure is one 20 ms slot of a talking bot, per call, for a phase group of
``--group`` calls: ``play()`` of 20 ms of 24 kHz provider audio to every call, the ticker's
group hook (the batched 24 → 8 kHz resampling, session Rule 9) and one
:meth:`MediaSession.tick` per call (pacer, PCMU encode, RTP header, ``sendto`` on the session's
real socket to a socket nobody reads). ``--profile`` writes a cProfile of the loops (for
development).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: no BLAS threads on the hot path

import argparse
import asyncio
import cProfile
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np

from sipbot.media.formats import PCM16_16K, PCM16_24K, PCMU_8K, AudioFormat
from sipbot.media.rtp import RtpPacket
from sipbot.media.session import MediaEngine, MediaSettings

PEER = ("127.0.0.1", 9)


async def cost_us(target: AudioFormat, batches: int, batch: int) -> float:
    """Best CPU µs per packet over ``batches`` batches of ``batch`` packets in sequence."""
    base = random.randrange(30_000, 60_000, 2)
    engine = MediaEngine(MediaSettings(port_min=base, port_max=base + 50))
    frames: list[bytes] = []
    session = await engine.open_session(
        on_audio=frames.append, on_dtmf=lambda digit: None, on_timeout=lambda: None
    )
    session.set_formats(target, PCM16_24K)
    session.configure(codec="PCMU", payload_type=0, dtmf_payload_type=101, remote=PEER)
    wire = [
        RtpPacket(0, seq, seq * 160, 1, bytes([seq & 0x7F]) * 160).serialize()
        for seq in range(1 << 16)
    ]
    best = float("inf")
    start = 0
    for _ in range(batches):
        if start + batch > len(wire):
            start = 0  # a sequence jump: the jitter buffer restarts (one batch of many)
        chunk = wire[start : start + batch]
        start += batch
        began = time.process_time_ns()
        for data in chunk:
            session.process(data, PEER, 1.0)
        best = min(best, (time.process_time_ns() - began) / batch)
        frames.clear()
    await session.close()
    await engine.close()
    return best / 1000


async def outbound_cost_us(batches: int, batch: int, calls: int) -> float:
    """Best CPU µs per outbound slot and call over ``batches`` of ``batch`` packets.

    ``calls`` sessions in one phase group; each slot, every session is given 20 ms of 24 kHz
    audio (``play``), then the group ticks as the ticker does it (its group hook, then each
    member's ``tick``).
    """
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # never read: the kernel drops what overflows its buffer
    base = random.randrange(30_000, 60_000, 2)
    engine = MediaEngine(MediaSettings(port_min=base, port_max=base + 2 * calls + 50))
    sessions = []
    for _ in range(calls):
        session = await engine.open_session(
            on_audio=lambda frame: None, on_dtmf=lambda digit: None, on_timeout=lambda: None
        )
        session.configure(
            codec="PCMU", payload_type=0, dtmf_payload_type=101, remote=sink.getsockname()
        )
        session.start()
        engine.ticker.remove(session)  # this loop ticks it, not the loop's timers
        sessions.append(session)
    group = tuple(sessions)
    before_tick = getattr(engine.ticker, "before_tick", None)  # absent before the batching
    t = np.arange(480) / 24_000
    chunk = np.rint(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    best = float("inf")
    now = 1.0
    slots = max(1, batch // calls)
    for _ in range(batches):
        began = time.process_time_ns()
        for _ in range(slots):
            for session in group:
                session.play(chunk, "reply")
            now += 0.02
            if before_tick is not None:
                before_tick(group)
            for session in group:
                session.tick(now, 1, 0)
        best = min(best, (time.process_time_ns() - began) / (slots * calls))
    assert sessions[0].stats.packets_out > slots, "the outbound loop sent nothing"
    await engine.close()
    sink.close()
    return best / 1000


def run(args: argparse.Namespace) -> None:
    for label, target in (("PCMU pass-through", PCMU_8K), ("PCMU -> PCM16 16 kHz", PCM16_16K)):
        cost = asyncio.run(cost_us(target, args.batches, args.batch))
        print(f"inbound  {label:22} {cost:6.2f} µs per packet")
    for calls in args.group:
        cost = asyncio.run(outbound_cost_us(args.batches, args.batch, calls))
        label = f"24 kHz -> PCMU, {calls} call(s)"
        print(f"outbound {label:22} {cost:6.2f} µs per packet (play + group tick + sendto)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--profile", help="write a cProfile of the run to this file")
    parser.add_argument(
        "--group",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 50, 100],
        help="calls in the outbound phase group (200 and 400 calls over 4 groups: 50, 100)",
    )
    args = parser.parse_args()
    if args.profile:
        cProfile.runctx("run(args)", globals(), {"args": args}, args.profile)
        return
    run(args)


if __name__ == "__main__":
    main()
