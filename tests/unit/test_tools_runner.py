"""ToolRunner: results, errors and truncation (no clock, no sleeps).

Timeouts, cancellation, the slow-tool filler and loop lag need real time: they run in
``tests/integration/test_tools_runner_timing.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import sipbot.tools.runner as runner_module
from sipbot.domain import CallInfo, ToolCall
from sipbot.errors import ToolError
from sipbot.ratelimit import RateLimitedLog
from sipbot.tools import ToolContext, ToolRunner, tool
from sipbot.tools.runner import TRUNCATED_MARK


class Control:
    """Records call-control actions (a recorder, not a mock of any peer)."""

    def __init__(self) -> None:
        self.info = CallInfo("call-1", caller="+4930555", did="100")
        self.actions: list[tuple[str, str]] = []
        self.transfer_outcome = "transferred"  # what transfer() reports

    async def hang_up(self) -> None:
        self.actions.append(("hang_up", ""))

    async def transfer(self, uri: str, *, warm: bool = False) -> str:
        self.actions.append(("warm-transfer" if warm else "transfer", uri))
        return self.transfer_outcome

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


@tool
async def stuck() -> None:
    """Never answers."""
    await asyncio.Event().wait()


@tool
async def stuck_too() -> None:
    """Never answers either."""
    await asyncio.Event().wait()


@pytest.fixture(autouse=True)
def fresh_raised_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule 6's and Rule 7's limiters are process-wide: each test starts with its own."""
    monkeypatch.setattr(runner_module, "_RAISED", RateLimitedLog(runner_module.log))
    monkeypatch.setattr(runner_module, "_TIMED_OUT", RateLimitedLog(runner_module.log))


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


async def test_a_tool_raising_on_every_call_logs_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rule 6: ten calls' models call the same broken tool: one traceback, across runners."""
    with caplog.at_level(logging.ERROR, logger="sipbot.tools.runner"):
        for n in range(10):
            result = await make_runner().start(ToolCall(f"t{n}", "broken", {}))
            assert result.output == {"error": "the tool broken failed"}
    assert [r.getMessage() for r in caplog.records] == ["tool broken (t0) raised"]
    assert caplog.records[0].exc_info is not None


async def test_a_tool_timing_out_on_every_call_logs_one_line_per_tool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rule 7: ten calls' models call the same hanging tool: each call gets its error result,
    the log one line for that tool (and one for another hanging tool), across runners."""
    with caplog.at_level(logging.WARNING, logger="sipbot.tools.runner"):
        for n in range(10):
            runner = ToolRunner(ToolContext(Control()), [stuck, stuck_too], timeout_s=0.0)
            result = await runner.start(ToolCall(f"t{n}", "stuck", {}))
            assert result.output == {"error": "the tool stuck did not answer in time"}
            result = await runner.start(ToolCall(f"u{n}", "stuck_too", {}))
            assert result.output == {"error": "the tool stuck_too did not answer in time"}
    assert [r.getMessage() for r in caplog.records] == [
        "tool stuck (t0) timed out after 0.0 s",
        "tool stuck_too (u0) timed out after 0.0 s",
    ]
    limiter = runner_module._TIMED_OUT
    # 10 s later the next timeout is logged again, with the count of the suppressed ones
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sipbot.tools.runner"):
        limiter.warning("stuck", time.monotonic() + limiter.interval_s, "tool %s", "stuck")
    assert [r.getMessage() for r in caplog.records] == ["tool stuck (9 similar suppressed)"]


async def test_tool_error_message_reaches_the_model() -> None:
    result = await make_runner().start(ToolCall("t1", "refusing", {}))
    assert result.output == {"error": "no such order A9"}


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
