"""Runs a call's tool calls concurrently with its audio: timeouts, errors, truncation, cancellation.

One :class:`ToolRunner` per call. ``start(call)`` returns at once with a task; the call's
provider loop keeps receiving and the media path keeps sending while tools run.

Rules:

* Rule 1: the task returned by :meth:`ToolRunner.start` never raises: every outcome (result,
  unknown tool, bad arguments, exception, timeout, cancellation) is a :class:`ToolResult`.
* Rule 2: an error result's ``output`` is ``{"error": message}`` in words a model can repeat
  to the caller. A :class:`~sipbot.errors.SipbotError` (``ToolError``, ``ToolNotAllowed``,
  ``RequestFailed``...) passes its message on; any other exception is logged with its traceback
  and the model hears only that the tool failed (its text may hold internals).
* Rule 3: an output whose JSON text is longer than ``max_result_chars`` becomes that JSON text
  cut to ``max_result_chars`` and marked ``…[truncated]``.
* Rule 4: :meth:`ToolRunner.cancel` / :meth:`ToolRunner.cancel_all` stop the tool's work now;
  its task then resolves to a result with ``cancelled=True``, which the call does not send.
* Rule 5: ``on_slow(call)`` is called once if a tool is still running after ``filler_after_ms``
  (the call can say "one moment"); never for a tool that finishes first.
* Rule 6: the traceback of Rule 2 is logged at most once per tool and 10 s across the process
  (the rest are counted in the next line): a broken tool that every call's model keeps calling
  does not flood the log.
* Rule 7: likewise, a timeout (Rule 1) is logged at most once per tool and 10 s across the
  process, with the count of those suppressed: a hanging tool that every call's model calls
  says so once, not once per call. Each call still gets its error result.
* Rule 8: what the runner logs carries no argument or result values (:mod:`sipbot.sensitive`):
  a refusal is logged with its error class, not its text; the traceback of Rule 2 with its
  frames but the exception's text withheld (:func:`withheld`: ``cannot parse 4111...`` is
  exactly what a card-handling tool's bug would say).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_jsonable_python

from sipbot.domain import ToolCall, ToolSpec
from sipbot.errors import SipbotError
from sipbot.ratelimit import RateLimitedLog
from sipbot.tools.context import ToolContext
from sipbot.tools.registry import Tool

log = logging.getLogger(__name__)
_RAISED = RateLimitedLog(log)  # Rule 6
_TIMED_OUT = RateLimitedLog(log)  # Rule 7

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_RESULT_CHARS = 4_000
TRUNCATED_MARK = "…[truncated]"


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call.

    Attributes:
        call_id: the :class:`ToolCall` id (pass to ``send_tool_result``).
        name: the tool name.
        output: what to send to the model (JSON-serialisable; ``{"error": ...}`` on error).
        error: the error message, or None on success.
        cancelled: the call was cancelled; send nothing.
        elapsed_ms: time from start to outcome.
    """

    call_id: str
    name: str
    output: Any
    error: str | None = None
    cancelled: bool = False
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the tool returned normally."""
        return self.error is None and not self.cancelled


class MessageWithheld(Exception):  # never raised: it only stands in a log line
    """Stands in a log line's traceback for a tool's exception whose text is withheld (Rule 8)."""


def withheld(exc: BaseException) -> MessageWithheld:
    """``exc``'s traceback (its frames: where it was raised) under its class name only."""
    name = type(exc).__qualname__
    stand_in = MessageWithheld(f"{name} (message withheld: it may hold call data)")
    return stand_in.with_traceback(exc.__traceback__)


class ToolRunner:
    """Runs tool calls for one call.

    Args:
        context: the call's :class:`ToolContext`, handed to tools that ask for it.
        tools: the agent's tools (names must be unique).
        timeout_s: default per-tool timeout (a tool's own ``timeout_s`` wins).
        max_result_chars: cap on the JSON size of a result.
        filler_after_ms: when set, ``on_slow`` fires for tools still running after this long.
        on_slow: callback for slow tools (e.g. play "one moment"); must not block.
    """

    def __init__(
        self,
        context: ToolContext,
        tools: Iterable[Tool],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
        filler_after_ms: float | None = None,
        on_slow: Callable[[ToolCall], None] | None = None,
    ) -> None:
        self.context = context
        self._tools = {t.spec.name: t for t in tools}
        self._timeout_s = timeout_s
        self._max_chars = max_result_chars
        self._filler_after_s = None if filler_after_ms is None else filler_after_ms / 1000
        self._on_slow = on_slow
        self._work: dict[str, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[ToolResult]] = set()

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        """The specs of the runner's tools, for :class:`~sipbot.domain.SessionConfig`."""
        return tuple(t.spec for t in self._tools.values())

    @property
    def running(self) -> tuple[str, ...]:
        """Ids of the tool calls still running."""
        return tuple(self._work)

    def start(self, call: ToolCall) -> asyncio.Task[ToolResult]:
        """Start ``call`` in the background; the task resolves to its :class:`ToolResult`."""
        task = asyncio.get_running_loop().create_task(self._run(call), name=f"tool:{call.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel(self, ids: Iterable[str]) -> None:
        """Cancel these tool calls (the provider no longer wants their results)."""
        for call_id in ids:
            work = self._work.get(call_id)
            if work is not None:
                work.cancel()

    def cancel_all(self) -> None:
        """Cancel every running tool call (barge-in, hang-up)."""
        self.cancel(list(self._work))

    async def aclose(self) -> None:
        """Cancel everything and wait until every task has resolved."""
        self.cancel_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, call: ToolCall) -> ToolResult:
        started = time.monotonic()
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return self._error(call, started, f"unknown tool {call.name!r} (tools: {known})")
        timeout_s = tool.timeout_s if tool.timeout_s is not None else self._timeout_s
        work = asyncio.ensure_future(tool.invoke(self.context, call.arguments))
        self._work[call.id] = work
        try:
            await self._wait(call, work, timeout_s)
        except asyncio.CancelledError:
            work.cancel()  # the runner's own task was cancelled: stop the tool too
            raise
        finally:
            self._work.pop(call.id, None)
        return self._outcome(call, work, started, timeout_s)

    async def _wait(self, call: ToolCall, work: asyncio.Future[Any], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if self._filler_after_s is not None and self._filler_after_s < timeout_s:
            done, _ = await asyncio.wait({work}, timeout=self._filler_after_s)
            if not done and self._on_slow is not None:
                try:
                    self._on_slow(call)
                except Exception:
                    log.exception("on_slow callback failed for tool %s", call.name)
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.wait({work}, timeout=remaining)

    def _outcome(
        self, call: ToolCall, work: asyncio.Future[Any], started: float, timeout_s: float
    ) -> ToolResult:
        if not work.done():
            work.cancel()
            _TIMED_OUT.warning(  # Rule 7 (tool names come from the config: bounded keys)
                call.name,
                time.monotonic(),
                "tool %s (%s) timed out after %.1f s",
                call.name,
                call.id,
                timeout_s,
            )
            return self._error(call, started, f"the tool {call.name} did not answer in time")
        if work.cancelled():
            elapsed = (time.monotonic() - started) * 1000
            return ToolResult(call.id, call.name, None, "cancelled", True, elapsed)
        exc = work.exception()
        if isinstance(exc, SipbotError):
            # Rule 8: the refusal's text may quote the arguments (the model hears it, the log not)
            log.info("tool %s (%s) refused (%s)", call.name, call.id, type(exc).__name__)
            return self._error(call, started, str(exc))
        if exc is not None:
            # one traceback per tool and 10 s, process-wide: a model that keeps calling a
            # broken tool on every call must not flood the log (tool names come from the config)
            _RAISED.log(
                logging.ERROR,
                call.name,
                time.monotonic(),
                "tool %s (%s) raised",
                call.name,
                call.id,
                exc_info=withheld(exc),  # Rule 8
            )
            # the exception text may hold internals: the model hears only that it failed
            return self._error(call, started, f"the tool {call.name} failed")
        output = self._truncate(work.result())
        elapsed = (time.monotonic() - started) * 1000
        return ToolResult(call.id, call.name, output, None, False, elapsed)

    def _error(self, call: ToolCall, started: float, message: str) -> ToolResult:
        elapsed = (time.monotonic() - started) * 1000
        return ToolResult(call.id, call.name, {"error": message}, message, False, elapsed)

    def _truncate(self, value: Any) -> Any:
        output = to_jsonable_python(value, fallback=str)
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        if len(text) <= self._max_chars:
            return output
        return text[: self._max_chars] + TRUNCATED_MARK
