"""How late the event loop runs: a task that sleeps ``interval`` and measures its oversleep.

The media path paces RTP from the same loop, so a lagging loop is late audio: the server stops
admitting calls above a limit (:mod:`sipbot.ops.admission`) and ``/healthz`` fails above another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

INTERVAL_S = 0.25
DECAY = 0.5  # the reported lag falls by half each quiet interval (a spike is seen, then fades)


class LoopLagMonitor:
    """Measures event-loop lag; ``lag_ms`` is the recent figure (max of the last, decayed).

    Args:
        interval_s: how often to measure.
        on_sample: called with every measured lag in seconds (e.g. a metric's observe).
    """

    def __init__(
        self, interval_s: float = INTERVAL_S, on_sample: Callable[[float], None] | None = None
    ) -> None:
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.lag_ms = 0.0
        self.max_lag_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def record(self, lag_s: float) -> None:
        """Take one measurement (seconds late)."""
        lag_ms = max(0.0, lag_s * 1000.0)
        self.lag_ms = max(lag_ms, self.lag_ms * DECAY)
        self.max_lag_ms = max(self.max_lag_ms, lag_ms)
        if self.on_sample is not None:
            self.on_sample(lag_ms / 1000.0)

    def start(self) -> None:
        """Start measuring on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(loop.time() - expected)
