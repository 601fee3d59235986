"""Integrator hooks: the dispatcher (sipbot.hooks), its events and config (sipbot.hook_events),
and a call's use of them (sipbot.call Rule 6).

No sockets, no sleeps: the dispatcher and the call run on the virtual-time loop of
``tests/unit/test_call.py``, where a hook that sleeps 30 s takes microseconds; a sync hook that
blocks its thread is released by the test once the dispatcher has given up on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import threading
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest

from sipbot.call import REDACTION_WAIT_S, Call, CallPlan
from sipbot.config import config_from_objects, load_config
from sipbot.dialplan import Agent, Dialplan
from sipbot.domain import (
    AudioOut,
    CallInfo,
    Interrupted,
    SessionConfig,
    ToolCall,
    Transcript,
    TurnComplete,
)
from sipbot.errors import ConfigError
from sipbot.hook_events import (
    BARGE_IN,
    CALL_START,
    DEFAULT_TIMEOUT_MS,
    EVENTS,
    REDACTION_FAILED,
    SPEECH_END,
    SPEECH_START,
    TOOL_CALL,
    TOOL_RESULT,
    TRANSCRIPT,
    TRANSCRIPT_TIMEOUT_MS,
    BargeIn,
    CallStart,
    Decision,
    Hook,
    HookEvent,
    SpeechStart,
    ToolCalled,
    ToolResult,
    TranscriptLine,
    WebhookTarget,
    parse_decision,
    python_hook,
    redacted,
    webhook_hook,
)
from sipbot.hooks import SIGNATURE_HEADER, Hooks, webhook_headers
from sipbot.secret import Secret
from tests.unit.test_call import (
    RecorderDialog,
    RecorderMedia,
    RecorderProvider,
    RecorderSession,
    run,
    until,
)

CARD_RE = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")


def line(text: str, role: str = "caller") -> TranscriptLine:
    return TranscriptLine("call-1", 0.0, role, text)  # type: ignore[arg-type]


def hook(function: Any, *events: str, timeout_ms: int | None = None) -> Hook:
    return python_hook(function, events or EVENTS, timeout_ms=timeout_ms)


async def redact_cards(event: HookEvent) -> str | None:
    if isinstance(event, TranscriptLine):
        return CARD_RE.sub("[card]", event.text)
    return None


# --------------------------------------------------------------------------- events, decisions


def test_events_are_frozen_and_their_json_names_the_event() -> None:
    event = SpeechStart("call-1", 12.5, "agent")
    with pytest.raises(FrozenInstanceError):
        event.side = "caller"  # type: ignore[misc]
    assert event.to_json() == {
        "event": "speech.start",
        "call_id": "call-1",
        "at": 12.5,
        "side": "agent",
    }
    start = CallStart("c", 1.0, "+49301", "100", headers={"X-Id": "7"}, route="r", agent="a")
    assert start.to_json()["event"] == CALL_START
    assert start.to_json()["headers"] == {"X-Id": "7"}


@pytest.mark.parametrize(
    ("value", "decision"),
    [
        ({"agent": "billing"}, Decision(agent="billing")),
        ({"reject": 603, "reason": "Decline"}, Decision(reject=603, reason="Decline")),
        ({"reject": 486}, Decision(reject=486)),
        (Decision(agent="billing"), Decision(agent="billing")),
        ({"agent": "nobody"}, None),  # not an agent of the dialplan
        ({"reject": 200}, None),  # not a final failure status
        ({"reject": True}, None),
        ({"reject": "603"}, None),
        ({}, None),
        (None, None),
        ("billing", None),
    ],
)
def test_a_call_start_answer_is_a_decision_or_none(
    value: object, decision: Decision | None
) -> None:
    assert parse_decision(value, ["sales", "billing"]) == decision


def test_redaction_fails_closed() -> None:
    assert redacted("my card is [card]", failed=False) == "my card is [card]"
    assert redacted(None, failed=False) is None  # unchanged
    assert redacted(42, failed=False) == REDACTION_FAILED  # not text: fail closed
    assert redacted("partial", failed=True) == REDACTION_FAILED


def test_webhook_posts_carry_the_token_and_an_hmac_of_the_body() -> None:
    target = WebhookTarget("http://127.0.0.1/x", Secret("tok"), Secret("key"))
    body = b'{"event": "call.end"}'
    headers = webhook_headers(target, body)
    assert headers["Authorization"] == "Bearer tok"
    expected = hmac.new(b"key", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert webhook_headers(WebhookTarget("http://h/"), body) == {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- the dispatcher


def test_emit_returns_at_once_and_starts_hooks_in_config_order() -> None:
    seen: list[tuple[str, str]] = []

    async def first(event: HookEvent) -> None:
        seen.append(("first", event.name))

    async def second(event: HookEvent) -> None:
        seen.append(("second", event.name))

    def blocking(event: HookEvent) -> None:  # a sync hook runs on a hook thread
        seen.append(("sync", event.name))

    async def main() -> None:
        hooks = Hooks([hook(first), hook(second), hook(blocking, BARGE_IN)])
        hooks.emit(BargeIn("call-1", 0.0, 300))
        hooks.emit(SpeechStart("call-1", 0.0, "caller"))
        assert seen == []  # nothing ran inside emit
        await until(lambda: len(seen) == 5)
        await hooks.aclose(1.0)

    asyncio.run(main())
    assert [s for s in seen if s[0] != "sync"] == [
        ("first", "barge_in"),
        ("second", "barge_in"),
        ("first", "speech.start"),
        ("second", "speech.start"),
    ]
    assert ("sync", "barge_in") in seen


def test_a_hung_hook_is_timed_out_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[tuple[str, str]] = []

    async def hangs(event: HookEvent) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        hooks = Hooks([hook(hangs)], on_failure=lambda e, o: failures.append((e, o)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(3):
            hooks.emit(BargeIn("call-1", 0.0, 0))
        await until(lambda: len(failures) == 3)
        assert loop.time() - started == pytest.approx(DEFAULT_TIMEOUT_MS / 1000, abs=0.02)
        assert not hooks._tasks  # abandoned, not awaited
        await hooks.aclose(1.0)

    with caplog.at_level(logging.WARNING, logger="sipbot.hooks"):
        run(main)
    assert failures == [("barge_in", "timeout")] * 3
    lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert len(lines) == 1  # rate-limited
    assert "on barge_in (call call-1)" in lines[0]


def test_a_raising_hook_is_logged_and_counted_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def broken(event: HookEvent) -> None:
        raise RuntimeError("integrator bug")

    async def fine(event: HookEvent) -> None:
        ran.append(event.name)

    async def main() -> None:
        hooks = Hooks([hook(broken), hook(fine)])
        hooks.emit(BargeIn("call-1", 0.0, 0))
        await until(lambda: hooks.failures[("barge_in", "error")] == 1 and ran == ["barge_in"])
        await hooks.aclose(1.0)

    with caplog.at_level(logging.DEBUG, logger="sipbot.hooks"):
        run(main)
    logged = [r.getMessage() for r in caplog.records]
    assert any("broken raised RuntimeError on barge_in" in line for line in logged), logged
    assert not any("integrator bug" in line for line in logged)  # Rule 3: its text may quote data


def test_a_raising_hook_s_text_is_logged_at_debug_only_when_opted_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(event: HookEvent) -> None:
        raise RuntimeError("card 4111 1111 1111 1111 declined")

    async def main() -> None:
        hooks = Hooks([hook(broken)], log_sensitive=True)
        hooks.emit(BargeIn("call-1", 0.0, 0))
        await until(lambda: hooks.failures[("barge_in", "error")] == 1)
        await hooks.aclose(1.0)

    with caplog.at_level(logging.DEBUG, logger="sipbot.hooks"):
        run(main)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("card 4111" in line for line in debug), debug
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert not any("card 4111" in line for line in warnings)


def test_runs_over_the_in_flight_bound_are_dropped() -> None:
    async def hangs(event: HookEvent) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        hooks = Hooks([hook(hangs)], max_in_flight=2)
        for _ in range(5):
            hooks.emit(BargeIn("call-1", 0.0, 0))
        await until(lambda: hooks.failures[("barge_in", "timeout")] == 2)
        assert hooks.failures[("barge_in", "dropped")] == 3
        await hooks.aclose(1.0)

    run(main)


def test_transcript_hooks_redact_in_order_and_fail_closed() -> None:
    async def card(event: HookEvent) -> str | None:
        return await redact_cards(event)

    def upper(event: HookEvent) -> str:
        assert isinstance(event, TranscriptLine)
        return event.text.upper()

    async def broken(event: HookEvent) -> str:
        raise ValueError("bad regex")

    async def keeps(event: HookEvent) -> None:
        return None

    async def main() -> None:
        chain = Hooks([hook(card, TRANSCRIPT), hook(upper, TRANSCRIPT)])
        said = "my card is 4111 1111 1111 1111 thanks"
        assert await chain.redact(line(said)) == "MY CARD IS [CARD] THANKS"
        assert await Hooks([hook(keeps, TRANSCRIPT)]).redact(line(said)) == said
        failing = Hooks([hook(card, TRANSCRIPT), hook(broken, TRANSCRIPT)])
        assert await failing.redact(line(said)) == REDACTION_FAILED

    asyncio.run(main())


def test_a_blocking_sync_redactor_times_out_closed_without_blocking_the_loop() -> None:
    release = threading.Event()

    def blocks(event: HookEvent) -> str:
        release.wait(10)
        return "too late"

    async def main() -> None:
        hooks = Hooks([hook(blocks, TRANSCRIPT, timeout_ms=500)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await hooks.redact(line("4111111111111111")) == REDACTION_FAILED
        assert loop.time() - started == pytest.approx(0.5, abs=0.02)
        release.set()
        await hooks.aclose(1.0)

    run(main)


def test_call_start_takes_the_first_decision_in_config_order() -> None:
    async def undecided(event: HookEvent) -> None:
        return None

    async def hangs(event: HookEvent) -> dict[str, str]:
        await asyncio.sleep(30)
        return {"agent": "sales"}

    async def rejects(event: HookEvent) -> dict[str, object]:
        return {"reject": 603, "reason": "Decline"}

    async def chooses(event: HookEvent) -> Decision:
        return Decision(agent="billing")

    event = CallStart("call-1", 0.0, "+4930555", "100", route="main", agent="sales")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hooks = Hooks([hook(undecided), hook(hangs), hook(rejects)])
        started = loop.time()
        assert await hooks.call_start(event, ["sales"]) == Decision(reject=603, reason="Decline")
        assert loop.time() - started <= 1.0 + 0.02  # the hung one was given its 1 s
        hooks = Hooks([hook(chooses, CALL_START), hook(rejects)])
        assert await hooks.call_start(event, ["sales", "billing"]) == Decision(agent="billing")
        assert await Hooks([hook(hangs)]).call_start(event, ["sales"]) is None
        assert await Hooks([]).call_start(event, ["sales"]) is None

    run(main)


# --------------------------------------------------------------------------- a call (Rule 6)


class HookRig:
    """A call on the recorders of test_call, with hooks."""

    def __init__(self, hooks: Hooks, log_transcripts: bool = True, tools: Any = ()) -> None:
        self.session = RecorderSession()
        self.dialog = RecorderDialog()
        self.media = RecorderMedia()
        plan = CallPlan(
            CallInfo("call-1"),
            Agent("a", tools=list(tools), max_duration_s=600.0),
            RecorderProvider(self.session),
            SessionConfig(),
            log_transcripts=log_transcripts,
            hooks=hooks,
        )
        self.call = Call(self.dialog, plan)
        self.call.attach(self.media, "PCMU")
        self.task = asyncio.get_running_loop().create_task(self.call.run())

    async def confirm(self) -> None:
        self.dialog.confirmed.set_result(None)
        await until(lambda: self.call._session is not None)


def test_a_redacting_hook_keeps_the_card_out_of_the_record_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        rig = HookRig(Hooks([hook(redact_cards, TRANSCRIPT)]))
        await rig.confirm()
        rig.session.emit(
            Transcript("caller", "my card is 4111 1111 1111 1111"), Transcript("agent", "thanks")
        )
        await until(lambda: len(rig.call.record.lines) == 2)
        rig.call.hang_up_now("shutdown")
        await rig.task
        texts = [(ln.role, ln.text) for ln in rig.call.record.lines]
        assert texts == [("caller", "my card is [card]"), ("agent", "thanks")]
        assert [t.text for t in rig.call.transcript] == ["my card is [card]", "thanks"]

    with caplog.at_level(logging.DEBUG):
        run(main)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "my card is [card]" in logged
    assert "4111" not in logged


def test_a_hook_that_sleeps_30_s_does_not_delay_audio_or_the_end() -> None:
    calls: list[str] = []

    async def sleeps(event: HookEvent) -> None:
        calls.append(event.name)
        await asyncio.sleep(30)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hooks = Hooks([hook(sleeps)])
        rig = HookRig(hooks)
        await rig.confirm()
        rig.session.emit(AudioOut(b"\x00" * 48 * 200, "i1"))
        await until(lambda: bool(rig.media.segments))
        queued_at = loop.time()
        assert rig.media.segments[0][1] == pytest.approx(queued_at, abs=0.011)  # played at once
        rig.session.emit(Transcript("caller", "4111 1111 1111 1111"), Interrupted(), TurnComplete())
        await until(lambda: len(rig.call.record.lines) == 1)
        bye_asked = loop.time()
        rig.call.hang_up_now("shutdown")
        assert await rig.task == "shutdown"
        assert rig.dialog.byes[0] - bye_asked < 0.011  # BYE at once
        assert loop.time() - bye_asked <= REDACTION_WAIT_S + 0.011  # the record: bounded
        assert rig.call.record.lines[0].text == REDACTION_FAILED  # it timed out: fail closed
        assert rig.call.record.ended is not None
        await hooks.aclose(0.1)

    run(main)
    assert {"speech.start", "transcript", "barge_in", "speech.end"} <= set(calls)
    assert TRANSCRIPT_TIMEOUT_MS / 1000 == REDACTION_WAIT_S


def test_speech_hooks_see_both_sides() -> None:
    seen: list[tuple[str, str, bool]] = []

    async def speech(event: HookEvent) -> None:
        side = getattr(event, "side", "")
        seen.append((event.name, side, getattr(event, "cut", False)))

    async def main() -> None:
        rig = HookRig(Hooks([hook(speech, SPEECH_START, SPEECH_END)]))
        await rig.confirm()
        loud = b"\x00\x40" * 320  # PCM16 16 kHz, -6 dBFS
        for _ in range(10):
            rig.call.on_audio(loud)
        for _ in range(30):
            rig.call.on_audio(b"\x00\x00" * 320)
        rig.session.emit(AudioOut(b"\x00" * 48 * 100, "i1"), TurnComplete())
        await until(lambda: len(seen) == 4)
        rig.call.hang_up_now("shutdown")
        await rig.task

    run(main)
    assert seen == [
        ("speech.start", "caller", False),
        ("speech.end", "caller", False),
        ("speech.start", "agent", False),
        ("speech.end", "agent", False),
    ]


def test_tool_and_barge_in_events_carry_what_happened() -> None:
    seen: list[HookEvent] = []

    async def keep(event: HookEvent) -> None:
        seen.append(event)

    async def main() -> None:
        rig = HookRig(
            Hooks([hook(keep, TOOL_CALL, TOOL_RESULT, BARGE_IN)]), tools=["get_caller_info"]
        )
        await rig.confirm()
        rig.session.emit(ToolCall("t1", "get_caller_info", {}))
        await until(lambda: len(seen) == 2)
        rig.session.emit(AudioOut(b"\x00" * 48 * 1000, "i1"))  # 1 s of agent audio
        await until(lambda: bool(rig.media.segments))
        await asyncio.sleep(0.3)
        rig.session.emit(Interrupted())
        await until(lambda: len(seen) == 3)
        rig.call.hang_up_now("shutdown")
        await rig.task

    run(main)
    called, result, barge = seen
    assert isinstance(called, ToolCalled)
    assert (called.id, called.tool) == ("t1", "get_caller_info")
    assert isinstance(result, ToolResult)
    assert (result.id, result.tool, result.error) == ("t1", "get_caller_info", False)
    assert json.loads(result.output) == {"caller": "", "display_name": "", "did": ""}
    assert isinstance(barge, BargeIn)
    assert 290 <= barge.heard_ms <= 320


# --------------------------------------------------------------------------- config (Rule 4)


def test_hooks_built_in_code_are_checked_and_reach_the_config() -> None:
    redactor = python_hook(redact_cards, [TRANSCRIPT], timeout_ms=200)
    assert redactor.label == "python redact_cards"
    assert redactor.timeout_s(TRANSCRIPT) == 0.2
    posted = webhook_hook("https://crm.example.com/h", token="t", secret="s")
    assert posted.events == frozenset(EVENTS)
    assert posted.webhook is not None
    assert posted.webhook.secret is not None
    assert posted.webhook.secret.reveal() == "s"
    with pytest.raises(ConfigError, match=re.escape("events: unknown event 'call.begin'")):
        python_hook(redact_cards, ["call.begin"])
    with pytest.raises(ConfigError, match=re.escape("url: bad URL 'crm.example.com'")):
        webhook_hook("crm.example.com")
    config = config_from_objects(Dialplan([]), hooks=[redactor, posted])
    assert config.hooks == (redactor, posted)
    hooks = Hooks(config.hooks)  # a reload with the same hooks keeps them
    assert hooks.same([redactor, webhook_hook("https://crm.example.com/h", token="t", secret="s")])
    assert not hooks.same([redactor, webhook_hook("https://crm.example.com/h", token="t")])
    assert not hooks.same([redactor])


HOOKS_MODULE = """
async def redact(event):
    return None

not_callable = 3
"""


def write_config(tmp_path: Path, hooks: str) -> str:
    (tmp_path / "myhooks_unit.py").write_text(HOOKS_MODULE)
    path = tmp_path / "sipbot.yaml"
    path.write_text(
        "agents:\n  a:\n    provider: local\nroutes:\n  - match: {}\n    answer: a\n" + hooks
    )
    return str(path)


def test_hooks_load_from_the_config(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "hooks:\n"
        "  - python: myhooks_unit:redact\n"
        "    events: [transcript]\n"
        "    timeout_ms: 300\n"
        "  - webhook: {url: 'http://127.0.0.1:9/h', token: abc}\n"
        "    events: [call.end]\n",
    )
    config = load_config(path)
    first, second = config.hooks
    assert first.events == {"transcript"}
    assert first.timeout_s("transcript") == 0.3
    assert first.is_async
    assert second.webhook is not None
    assert second.webhook.token is not None
    assert second.webhook.token.reveal() == "abc"
    assert "abc" not in repr(second)
    assert second.timeout_s("call.end") == DEFAULT_TIMEOUT_MS / 1000


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (
            "hooks:\n  - python: myhooks_unit:redact\n    events: [transcript, call.begin]\n",
            ":9: hooks[0].events[1]: unknown event 'call.begin'",
        ),
        ("hooks:\n  - events: [call.end]\n", ":8: hooks[0]: a hook needs exactly one of python:"),
        (
            "hooks:\n  - python: myhooks_unit:nothing\n",
            ":8: hooks[0].python: module myhooks_unit has no 'nothing'",
        ),
        (
            "hooks:\n  - python: myhooks_unit:not_callable\n",
            ":8: hooks[0].python: myhooks_unit:not_callable is not a function",
        ),
        (
            "hooks:\n  - python: no_such_hooks_module:f\n",
            ":8: hooks[0].python: cannot import no_such_hooks_module",
        ),
        (
            "hooks:\n  - webhook: {url: 'ftp://x'}\n",
            ":8: hooks[0].webhook.url: bad URL 'ftp://x': expected http:// or https://",
        ),
        (
            "hooks:\n  - python: myhooks_unit:redact\n    timeout_ms: 0\n",
            ":9: hooks[0].timeout_ms: input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_hook_is_a_load_error_with_file_and_line(
    tmp_path: Path, hooks: str, message: str
) -> None:
    path = write_config(tmp_path, hooks)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(path)
