"""CPU cost of the Gemini / OpenAI adapters per call, against an emulator in another process.

N sessions are opened through the real SDKs; one ticker hands each a 20 ms frame every 20 ms
(1 s of tone, 1.5 s of silence, repeated, so the emulator answers every 2.5 s with an echo).
Printed: this process's CPU per call-second, ticker lateness, and how long the main thread
waited for a CPU (on a shared machine lateness is mostly that, not the adapters).

    python bench/bench_provider_adapters.py gemini 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from typing import Any

import numpy as np

from sipbot.domain import AudioOut, CallInfo, SessionConfig, TurnDetection


async def serve_emulator(kind: str) -> None:
    """Child process: run an emulator, print its URL and CA file, serve until stdin closes."""
    from sipbot.emulators.script import EmulatorScript

    script = EmulatorScript(speed=4.0, reply="echo", vad_silence_ms=300)
    emulator: Any
    if kind == "gemini":
        from sipbot.emulators.gemini import GeminiEmulator

        emulator = GeminiEmulator(script, port=0)
    else:
        from sipbot.emulators.openai import OpenAIEmulator

        emulator = OpenAIEmulator(script, port=0)
    async with emulator:
        print(emulator.base_url, getattr(emulator, "ca_file", "-"), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def tone(rate_hz: int, ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    return (np.sin(2 * math.pi * hz * t) * 0.3 * 32767).astype("<i2").tobytes()


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / 100.0


def runqueue_wait_s() -> float:
    _, wait, _ = open("/proc/self/schedstat").read().split()  # noqa: SIM115
    return int(wait) / 1e9


async def open_sessions(kind: str, url: str, ca_file: str, count: int) -> tuple[list[Any], int]:
    config = SessionConfig(turn_detection=TurnDetection(silence_ms=300))
    provider: Any
    if kind == "gemini":
        from sipbot.providers.gemini import GeminiProvider

        provider, rate_hz = GeminiProvider("k", base_url=url, ca_file=ca_file), 16_000
    else:
        from sipbot.providers.openai import OpenAIProvider

        provider, rate_hz = OpenAIProvider("k", websocket_base_url=url), 24_000
    sessions = [await provider.open(CallInfo(f"c{i}", codec="G722"), config) for i in range(count)]
    return sessions, rate_hz


async def run(kind: str, count: int, seconds: float, child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    url, ca_file = child.stdout.readline().split()
    sessions, rate_hz = await open_sessions(kind, url, ca_file, count)
    received = [0]

    async def drain(session: Any) -> None:
        async for event in session.events():
            if isinstance(event, AudioOut):
                received[0] += len(event.audio)

    drains = [asyncio.create_task(drain(s)) for s in sessions]
    pattern = tone(rate_hz, 1000) + bytes(2 * rate_hz * 1500 // 1000)
    size = 2 * rate_hz // 50
    frames = [pattern[i : i + size] for i in range(0, len(pattern), size)]
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    emulator_cpu, cpu, waited = cpu_seconds(child.pid), time.process_time(), runqueue_wait_s()
    start, tick = loop.time(), 0
    while loop.time() - start < seconds:
        deadline = start + tick * 0.02
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        lateness.append(loop.time() - deadline)
        for session in sessions:
            session.send_audio(frames[tick % len(frames)])
        tick += 1
    wall = loop.time() - start
    out_rate_hz = 24_000 if kind == "gemini" else rate_hz
    cpu = time.process_time() - cpu
    late_ms = np.array(lateness) * 1000.0
    print(
        f"{kind} calls={count}: adapters CPU {100 * cpu / wall:.1f}% of a core "
        f"({1000 * cpu / wall / count:.2f} ms per call-second); "
        f"emulator CPU {100 * (cpu_seconds(child.pid) - emulator_cpu) / wall:.0f}%; "
        f"ticker lateness p50 {np.percentile(late_ms, 50):.1f} ms "
        f"p99 {np.percentile(late_ms, 99):.1f} ms max {late_ms.max():.1f} ms; "
        f"main thread waited {runqueue_wait_s() - waited:.2f} s for a CPU; "
        f"agent audio received {received[0] // 2 // out_rate_hz} s"
    )
    for session in sessions:
        await session.close()
    for task in drains:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("provider", choices=("gemini", "openai"))
    parser.add_argument("calls", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--emulator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulator:
        asyncio.run(serve_emulator(args.provider))
        return
    child = subprocess.Popen(
        [sys.executable, __file__, args.provider, "0", "--emulator"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        asyncio.run(run(args.provider, args.calls, args.seconds, child))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
