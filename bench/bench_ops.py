"""Cost of the operations layer on a call, in process (issue 10): what metrics and observation
add per call-second, measured on the code paths themselves.

Per call the layer adds (1) the observed provider session on the caller-audio path — one extra
Python call per 20 ms frame (``send_audio``) — and one async-generator hop per provider event,
(2) at the call's end: its metrics (outcome, RTP counters, 9 latency observations, setup time)
and its entry in the recent-calls ring, (3) per scrape: the exposition. This script times each
with ``timeit`` and prints µs per call-second for a given call length (default 60 s) and events
per second (default 10: a provider streaming 100 ms chunks).

    python bench/bench_ops.py [--call-s 60] [--events-per-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from collections.abc import AsyncIterator
from typing import Any

from sipbot.media.formats import PCM16_16K
from sipbot.media.latency import LatencySummary, MediaLatency
from sipbot.media.session import MediaStats
from sipbot.ops.metrics import Gauges, Metrics
from sipbot.ops.observe import NullSink, ObservedSession, RecentCalls, SessionWatch
from sipbot.providers.base import AudioOut, ProviderEvent

FRAME = bytes(640)


class Bare:
    input_format = PCM16_16K
    output_format = PCM16_16K

    def __init__(self, events: int = 0) -> None:
        self.n = events

    def send_audio(self, audio: bytes) -> None:
        pass

    async def events(self) -> AsyncIterator[ProviderEvent]:
        for _ in range(self.n):
            yield AudioOut(FRAME, "i")


def per_op_us(stmt: Any, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--call-s", type=float, default=60.0)
    parser.add_argument("--events-per-s", type=float, default=10.0)
    args = parser.parse_args()

    bare = Bare()
    observed = ObservedSession(Bare(), SessionWatch("local"), NullSink())
    frame_bare = per_op_us(lambda: bare.send_audio(FRAME), 200_000)
    frame_obs = per_op_us(lambda: observed.send_audio(FRAME), 200_000)

    async def drain(session: Any) -> None:
        async for _ in session.events():
            pass

    n = 20_000

    def events(wrapped: bool) -> float:
        inner = Bare(n)
        session = ObservedSession(inner, SessionWatch("x"), NullSink()) if wrapped else inner
        start = time.perf_counter()
        asyncio.run(drain(session))
        return (time.perf_counter() - start) / n * 1e6

    event_bare = min(events(False) for _ in range(3))
    event_obs = min(events(True) for _ in range(3))

    metrics = Metrics(Gauges(dict, dict, lambda: None, lambda: 0.0, lambda: False, 500))
    stats = MediaStats(packets_in=3000, packets_out=3000)
    summary = LatencySummary(3000, 1.0, 2.0, 3.0)
    latency = MediaLatency(summary, summary, summary)
    recent = RecentCalls()
    record = {"call_id": "x", "caller": "1", "transcript": []}

    def call_end() -> None:
        metrics.setup_time(0.05)
        metrics.media_ended(stats, latency)
        metrics.call_ended("default", "echo", "bye-received")
        recent.add(record)

    end_us = per_op_us(call_end, 5_000)
    scrape_us = per_op_us(metrics.exposition, 500)

    frames_per_s = 50
    added = (
        (frame_obs - frame_bare) * frames_per_s
        + (event_obs - event_bare) * args.events_per_s
        + end_us / args.call_s
    )
    print(f"send_audio per frame: {frame_bare:.3f} µs bare, {frame_obs:.3f} µs observed")
    print(f"provider event: {event_bare:.2f} µs bare, {event_obs:.2f} µs observed")
    print(f"call end (metrics + recent ring): {end_us:.1f} µs per call")
    print(f"scrape (/metrics exposition, idle labels): {scrape_us:.0f} µs")
    print(
        f"added per call-second ({args.call_s:g} s calls, {args.events_per_s:g} events/s): "
        f"{added:.1f} µs = {added / 10:.2f} ms CPU per 100 call-seconds"
    )
    print(f"at 200 calls: {added * 200 / 1000:.2f} ms CPU per second ({added * 200 / 1e4:.2f} %)")


if __name__ == "__main__":
    main()
