"""ToolRunner in real time: timeouts, cancellation, the slow-tool filler and loop lag.

Bounded waits on a real event loop; the runner's pure behaviour is unit-tested in
``tests/unit/test_tools_runner.py`` (whose recorder and tools these tests share).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sipbot.domain import ToolCall
from sipbot.tools import ToolContext, ToolRunner, tool
from tests.unit.test_tools_runner import Control, make_runner, slow


async def test_timeout_gives_an_error_result() -> None:
    runner = make_runner(timeout_s=0.05)
    started = time.monotonic()
    result = await runner.start(ToolCall("t1", "slow", {"seconds": 5}))
    assert time.monotonic() - started < 1.0
    assert result.output == {"error": "the tool slow did not answer in time"}
    assert not result.cancelled
    assert runner.running == ()


async def test_own_timeout_of_a_tool_wins() -> None:
    quick = slow.renamed("quick", timeout_s=0.05)
    runner = ToolRunner(ToolContext(Control()), [quick], timeout_s=30)
    result = await asyncio.wait_for(runner.start(ToolCall("t1", "quick", {"seconds": 5})), 2)
    assert result.error == "the tool quick did not answer in time"


async def test_cancel_by_id_and_cancel_all() -> None:
    runner = make_runner()
    first = runner.start(ToolCall("a", "slow", {"seconds": 5}))
    second = runner.start(ToolCall("b", "slow", {"seconds": 5}))
    third = runner.start(ToolCall("c", "slow", {"seconds": 5}))
    await asyncio.sleep(0.01)
    assert set(runner.running) == {"a", "b", "c"}
    runner.cancel(["b", "unknown"])
    result = await asyncio.wait_for(second, 1)
    assert (result.call_id, result.cancelled, result.error) == ("b", True, "cancelled")
    assert set(runner.running) == {"a", "c"}
    runner.cancel_all()
    results = await asyncio.wait_for(asyncio.gather(first, third), 1)
    assert [r.cancelled for r in results] == [True, True]
    assert runner.running == ()


async def test_cancelling_the_task_stops_the_tool() -> None:
    finished: list[str] = []

    @tool
    async def sleeper() -> None:
        """Sleep."""
        try:
            await asyncio.sleep(5)
        finally:
            finished.append("stopped")

    runner = ToolRunner(ToolContext(Control()), [sleeper])
    task = runner.start(ToolCall("a", "sleeper", {}))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert finished == ["stopped"]


async def test_filler_fires_once_for_slow_tools_only() -> None:
    slow_calls: list[str] = []
    runner = make_runner(filler_after_ms=30, on_slow=lambda call: slow_calls.append(call.id))
    fast, late = await asyncio.gather(
        runner.start(ToolCall("fast", "slow", {"seconds": 0})),
        runner.start(ToolCall("late", "slow", {"seconds": 0.1})),
    )
    assert fast.output == late.output == "done"
    assert slow_calls == ["late"]


async def loop_lag_while(work: asyncio.Future[Any], tick_s: float = 0.005) -> float:
    """Largest lateness (s) of a periodic absolute-deadline timer while ``work`` runs."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    worst = 0.0
    k = 0
    while not work.done():
        k += 1
        deadline = start + k * tick_s
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        worst = max(worst, loop.time() - deadline)
    return worst


async def test_slow_tools_do_not_block_the_loop() -> None:
    runner = make_runner()
    async_tool = runner.start(ToolCall("a", "slow", {"seconds": 0.3}))
    thread_tool = runner.start(ToolCall("b", "blocking", {"seconds": 0.3}))
    both = asyncio.gather(async_tool, thread_tool)
    lag = await loop_lag_while(both)
    assert [r.output for r in await both] == ["done", "done"]
    assert lag < 0.1, f"loop lag {lag * 1000:.1f} ms while tools ran"

    # the measurement can fail: a tool that blocks the loop itself shows ~300 ms of lag
    @tool
    async def hog() -> None:
        """Block the loop (what the runner avoids for sync tools)."""
        time.sleep(0.3)  # noqa: ASYNC251  (blocking on purpose)

    hog_runner = ToolRunner(ToolContext(Control()), [hog])
    hogging = hog_runner.start(ToolCall("h", "hog", {}))
    assert await loop_lag_while(hogging) > 0.2


async def test_aclose_cancels_everything() -> None:
    runner = make_runner()
    task = runner.start(ToolCall("a", "slow", {"seconds": 5}))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(runner.aclose(), 1)
    assert task.result().cancelled
