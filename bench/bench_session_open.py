"""How long opening a provider session blocks the event loop (OpenAI and Gemini, real SDKs).

Usage::

    python bench/bench_session_open.py [--provider openai|gemini|both] [--opens 10]
                                       [--concurrent 1] [--stacks]

The emulator runs in its own process (``sipbot emulate``), so this process's loop does only
what the server's would: the provider is made first (as the server does before ``sipbot
ready``), then sessions are opened one after another (``--concurrent`` at a time) while a
ticker wakes every 5 ms and records how late it woke. The figure per open is the worst
lateness while that open was in flight; the first open and the later ones are shown apart.
``--stacks`` adds a sampler thread that records the loop thread's stack whenever the ticker
has not run for 8 ms, and prints the most frequent places the loop was stuck.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sipbot.domain import CallInfo, SessionConfig, TurnDetection

KEY = "bench-key"
TICK_S = 0.005
STUCK_S = 0.008
DEPTH = int(os.environ.get("BENCH_STACK_DEPTH", "14"))  # frames kept per sample
SHOWN = int(os.environ.get("BENCH_STACKS", "6"))  # distinct stacks printed


class Ticker:
    """A 5 ms ticker on the loop; ``worst`` is the largest lateness since the last reset."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.beat = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            now = self.beat = time.perf_counter()
            self.worst = max(self.worst, now - due)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Sampler(threading.Thread):
    """Records the loop thread's stack whenever the ticker is stale by more than 8 ms."""

    def __init__(self, ticker: Ticker, loop_thread: int) -> None:
        super().__init__(daemon=True)
        self.ticker, self.loop_thread = ticker, loop_thread
        self.stacks: collections.Counter[str] = collections.Counter()
        self.phase = "first"
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.002):
            if time.perf_counter() - self.ticker.beat < STUCK_S:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            lines = [
                f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                for f in traceback.extract_stack(frame)[-DEPTH:]
            ]
            self.stacks[self.phase + ":\n    " + "\n    ".join(lines)] += 1


def start_emulator(provider: str) -> tuple[subprocess.Popen[str], str, str | None]:
    cmd = [
        sys.executable,
        "-m",
        "sipbot",
        "emulate",
        provider,
        "--port",
        "0",
        "--set",
        "speed=0",
        "--set",
        f"api_keys=[{KEY}]",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"emulator ready (\S+)(?: ca_file=(\S+))?", line)
        if match:
            return proc, match.group(1), match.group(2)
    proc.kill()
    raise RuntimeError("emulator did not start")


def make(provider: str, url: str, ca_file: str | None) -> Any:
    if provider == "openai":
        from sipbot.providers.openai import OpenAIProvider

        return OpenAIProvider(KEY, websocket_base_url=url)
    from sipbot.providers.gemini import GeminiProvider

    return GeminiProvider(KEY, base_url=url, ca_file=ca_file)


async def measure(provider_name: str, opens: int, concurrent: int, stacks: bool) -> None:
    proc, url, ca_file = start_emulator(provider_name)
    try:
        started = time.perf_counter()
        provider = make(provider_name, url, ca_file)  # at server start, before any call
        made_ms = (time.perf_counter() - started) * 1000
        gc.collect()  # what the server does once its providers are made (see _warm_providers)
        gc.freeze()
        ticker = Ticker()
        ticker.start()
        sampler = Sampler(ticker, threading.get_ident())
        if stacks:
            sampler.start()
        await asyncio.sleep(0.05)
        ticker.take()
        idle = []
        for _ in range(opens):  # the machine's own noise, for comparison
            await asyncio.sleep(0.05)
            idle.append(ticker.take() * 1000)
        config = SessionConfig(instructions="Bench.", turn_detection=TurnDetection())
        worst: list[float] = []
        wall: list[float] = []
        sessions = []
        for batch in range(0, opens, concurrent):
            calls = [
                CallInfo(call_id=f"c{batch + i}", codec="PCMU")
                for i in range(min(concurrent, opens - batch))
            ]
            ticker.take()
            t0 = time.perf_counter()
            sessions += await asyncio.gather(*(provider.open(c, config) for c in calls))
            wall.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.02)
            worst.append(ticker.take() * 1000)
            sampler.phase = "later"
        for session in sessions:
            await session.close()
        ticker.stop()
        sampler.done.set()
        later = worst[1:] or [0.0]
        print(
            f"{provider_name}: provider made in {made_ms:.0f} ms; {opens} opens, "
            f"{concurrent} at a time; loop lateness (5 ms ticker) "
            f"first open {worst[0]:.1f} ms (open took {wall[0]:.0f} ms), "
            f"later opens max {max(later):.1f} ms, median {sorted(later)[len(later) // 2]:.1f} ms"
        )
        print("  per open (ms late):", " ".join(f"{w:.1f}" for w in worst))
        print("  idle 50 ms windows (ms late):", " ".join(f"{w:.1f}" for w in idle))
        if stacks:
            for stack, count in sampler.stacks.most_common(SHOWN):
                print(f"  stuck x{count} (2 ms samples):\n    {stack}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("openai", "gemini", "both"), default="both")
    parser.add_argument("--opens", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--stacks", action="store_true")
    args = parser.parse_args()
    names = ("openai", "gemini") if args.provider == "both" else (args.provider,)
    for name in names:
        asyncio.run(measure(name, args.opens, args.concurrent, args.stacks))


if __name__ == "__main__":
    main()
