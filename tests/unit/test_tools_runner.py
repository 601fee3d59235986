"""ToolRunner: results, errors, timeouts, truncation, cancellation, filler, and loop lag."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from sipbot.domain import CallInfo, ToolCall
from sipbot.errors import ToolError
from sipbot.tools import ToolContext, ToolRunner, tool
from sipbot.tools.runner import TRUNCATED_MARK


class Control:
    """Records call-control actions (a recorder, not a mock of any peer)."""

    def __init__(self) -> None:
        self.info = CallInfo("call-1", caller="+4930555", did="100")
        self.actions: list[tuple[str, str]] = []

    async def hang_up(self) -> None:
        self.actions.append(("hang_up", ""))

    async def transfer(self, uri: str) -> None:
        self.actions.append(("transfer", uri))

    async def send_dtmf(self, digits: str) -> None:
        self.actions.append(("dtmf", digits))


@tool
async def echo(text: str, context: ToolContext) -> dict[str, str]:
    """Echo text back."""
    return {"text": text, "caller": context.caller}


@tool
async def slow(seconds: float) -> str:
    """Sleep on the loop."""
    await asyncio.sleep(seconds)
    return "done"


@tool
def blocking(seconds: float) -> str:
    """Block a thread."""
    time.sleep(seconds)
    return "done"


@tool
async def broken() -> None:
    """Raise."""
    raise RuntimeError("secret internals")


@tool
async def refusing() -> None:
    """Refuse."""
    raise ToolError("no such order A9")


@tool
async def big(size: int) -> str:
    """Return a big string."""
    return "x" * size


@tool
async def big_dict(size: int) -> dict[str, Any]:
    """Return a big object."""
    return {"items": list(range(size))}


def make_runner(**kwargs: Any) -> ToolRunner:
    tools = [echo, slow, blocking, broken, refusing, big, big_dict]
    return ToolRunner(ToolContext(Control()), tools, **kwargs)


async def test_result_and_specs() -> None:
    runner = make_runner()
    result = await runner.start(ToolCall("t1", "echo", {"text": "hi"}))
    assert (result.call_id, result.name, result.ok) == ("t1", "echo", True)
    assert result.output == {"text": "hi", "caller": "+4930555"}
    assert result.error is None
    assert [s.name for s in runner.specs] == [
        "echo", "slow", "blocking", "broken", "refusing", "big", "big_dict",
    ]  # fmt: skip


async def test_unknown_tool_and_bad_arguments() -> None:
    runner = make_runner()
    result = await runner.start(ToolCall("t1", "nope", {}))
    assert result.error == (
        "unknown tool 'nope' (tools: big, big_dict, blocking, broken, echo, refusing, slow)"
    )
    assert result.output == {"error": result.error}
    result = await runner.start(ToolCall("t2", "echo", {"txt": "hi"}))
    assert result.output == {"error": "unexpected argument 'txt'"}


async def test_exception_is_an_error_result_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = make_runner()
    with caplog.at_level(logging.ERROR, logger="sipbot.tools.runner"):
        result = await runner.start(ToolCall("t1", "broken", {}))
    assert result.output == {"error": "the tool broken failed"}
    assert "secret internals" not in str(result.output)
    assert [r.getMessage() for r in caplog.records] == ["tool broken (t1) raised"]
    assert caplog.records[0].exc_info is not None


async def test_tool_error_message_reaches_the_model() -> None:
    result = await make_runner().start(ToolCall("t1", "refusing", {}))
    assert result.output == {"error": "no such order A9"}


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


async def test_truncation_of_text_and_json() -> None:
    runner = make_runner(max_result_chars=14)
    result = await runner.start(ToolCall("t1", "big", {"size": 25}))
    assert result.output == "x" * 14 + TRUNCATED_MARK
    result = await runner.start(ToolCall("t2", "big", {"size": 14}))
    assert result.output == "x" * 14
    result = await runner.start(ToolCall("t3", "big_dict", {"size": 50}))
    assert result.output == '{"items": [0, ' + TRUNCATED_MARK
    result = await runner.start(ToolCall("t4", "big_dict", {"size": 1}))
    assert result.output == {"items": [0]}  # '{"items": [0]}' is exactly 14 characters


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
