"""Keypresses and tool calls in the log (:mod:`sipbot.sensitive`): a card number typed on the
keypad or passed by the model to a tool reaches the log only at DEBUG, and only when the
operator opted in with ``server.log_sensitive``; the call record keeps tool values only with
``server.records.tool_values``.

Whole calls run on the recorders of ``test_call`` in virtual time; the log is captured at DEBUG
for every ``sipbot`` logger, so a value logged at any level is seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

import sipbot.tools.runner as runner_module
from sipbot.call import AgentSetup
from sipbot.config import load_config
from sipbot.dialplan import Agent
from sipbot.domain import CallInfo, ToolCall
from sipbot.errors import ConfigError, ToolError
from sipbot.providers.base import SessionConfig
from sipbot.providers.local import LocalProvider
from sipbot.ratelimit import RateLimitedLog
from sipbot.records.attempt import Attempt
from sipbot.sensitive import REDACTED, argument_names, dtmf_line, tool_outcome
from sipbot.tools import ToolContext, ToolRunner, tool
from tests.unit.test_call import RecorderProvider, RecorderSession, Rig, run, slow_gate, until

CARD = "4111111111111111"
DIGITS = CARD  # typed on the keypad, one key at a time


@pytest.fixture(autouse=True)
def fresh_raised_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's rate limiters are process-wide: each test starts with its own."""
    monkeypatch.setattr(runner_module, "_RAISED", RateLimitedLog(runner_module.log))
    monkeypatch.setattr(runner_module, "_TIMED_OUT", RateLimitedLog(runner_module.log))


def logged(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    """Every captured message (with its traceback text), optionally of one level only."""
    out = []
    for record in caplog.records:
        if level is not None and record.levelno != level:
            continue
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        out.append(text)
    return out


def leaks(messages: list[str]) -> list[str]:
    """The messages that carry the card number (or any 4-digit run of it)."""
    runs = {CARD[i : i + 4] for i in range(len(CARD) - 3)}
    return [m for m in messages if any(r in m for r in runs)]


# --------------------------------------------------------------------------- DTMF (Rule 1)


def press_the_card(log_sensitive: bool) -> list[tuple[Any, ...]]:
    async def main() -> list[tuple[Any, ...]]:
        rig = Rig(log_sensitive=log_sensitive)
        await rig.confirm()
        for digit in DIGITS:
            rig.call.on_dtmf(digit)
        await until(lambda: len(rig.session.sent) == len(DIGITS))
        rig.call.hang_up_now("shutdown")
        await rig.reason()
        return rig.session.sent

    return run(main)


def test_keypresses_are_counted_in_the_log_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        sent = press_the_card(log_sensitive=False)
    # the model still hears every key (Rule 4)
    assert sent == [("text", f"The caller pressed the key {d}.") for d in DIGITS]
    assert leaks(logged(caplog)) == []
    dtmf = [m for m in logged(caplog) if "DTMF" in m]
    assert dtmf == [f"call call-1: DTMF * ({n} so far)" for n in range(1, len(DIGITS) + 1)]
    assert {r.levelno for r in caplog.records if "DTMF" in r.getMessage()} == {logging.INFO}


def test_keypresses_reach_debug_only_when_the_operator_opts_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        press_the_card(log_sensitive=True)
    assert leaks(logged(caplog, logging.INFO)) == []
    shown = [m for m in logged(caplog, logging.DEBUG) if "DTMF" in m]
    assert shown == [f"call call-1: DTMF {d}" for d in DIGITS]


def test_opted_in_keypresses_stay_out_of_an_info_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sipbot"):
        press_the_card(log_sensitive=True)
    dtmf = [m for m in logged(caplog) if "DTMF" in m]
    assert dtmf == [f"call call-1: DTMF * ({n} so far)" for n in range(1, len(DIGITS) + 1)]


# --------------------------------------------------------------------------- tools (Rule 2)


def pay_with_the_card(log_sensitive: bool) -> Any:
    """The model passes the card to a tool (and once under a name the tool does not declare)."""

    async def main() -> Any:
        rig = Rig(log_sensitive=log_sensitive)
        await rig.confirm()
        slow_gate[CARD] = rig.loop.create_future()
        rig.session.emit(ToolCall("t1", "slow_lookup", {"what": CARD}))
        await asyncio.sleep(0.25)
        slow_gate[CARD].set_result(f"card {CARD} approved")
        await until(lambda: len(rig.results()) == 1)
        rig.session.emit(ToolCall("t2", "slow_lookup", {"what": "x", CARD: "y"}))
        await until(lambda: len(rig.results()) == 2)
        rig.call.hang_up_now("shutdown")
        await rig.reason()
        return rig.results()

    return run(main)


def test_tool_calls_are_logged_by_name_never_by_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        results = pay_with_the_card(log_sensitive=False)
    # the model still gets the result (Rule 4)
    assert results[0] == ("result", "t1", "slow_lookup", f"card {CARD} approved")
    assert results[1][3] == {"error": f"unexpected argument '{CARD}'"}
    assert leaks(logged(caplog)) == [], leaks(logged(caplog))
    tools = [m for m in logged(caplog, logging.INFO) if m.startswith("call call-1: tool")]
    # durations are real time (the runner's monotonic clock), not the loop's virtual time
    assert [re.sub(r" in \d+ ms$", " in N ms", m) for m in tools] == [
        "call call-1: tool slow_lookup (t1) called with what",
        "call call-1: tool slow_lookup (t1) ok in N ms",
        "call call-1: tool slow_lookup (t2) called with what and 1 undeclared",
        "call call-1: tool slow_lookup (t2) error in N ms",
    ]


def test_tool_values_reach_debug_only_when_the_operator_opts_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        pay_with_the_card(log_sensitive=True)
    assert leaks(logged(caplog, logging.INFO)) == []
    shown = leaks(logged(caplog, logging.DEBUG))
    assert shown == [
        f"call call-1: tool slow_lookup({{'what': '{CARD}'}})",
        f"call call-1: tool slow_lookup (t1) result: card {CARD} approved",
        f"call call-1: tool slow_lookup({{'what': 'x', '{CARD}': 'y'}})",
        f'call call-1: tool slow_lookup (t2) result: {{"error": "unexpected argument \'{CARD}\'"}}',
    ]


def hand_over(log_sensitive: bool) -> RecorderSession:
    """The model hands the call to agent ``b``, giving the card number as the reason."""

    async def main() -> RecorderSession:
        other = RecorderSession()
        setup = AgentSetup(Agent("b"), RecorderProvider(other), SessionConfig())

        async def to(name: str) -> AgentSetup:
            return setup

        rig = Rig(log_sensitive=log_sensitive, handoff_to=to)
        await rig.confirm()
        reason = f"pays with {CARD}"
        rig.session.emit(ToolCall("t1", "handoff", {"agent": "b", "reason": reason}))
        await until(lambda: rig.session.closed)
        rig.call.hang_up_now("shutdown")
        await rig.reason()
        return other

    return run(main)


def test_a_handoff_reason_is_the_models_words_shown_only_when_opted_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        hand_over(log_sensitive=False)
    assert leaks(logged(caplog)) == []
    assert "call call-1: handed off to agent b" in logged(caplog, logging.INFO)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        hand_over(log_sensitive=True)
    assert leaks(logged(caplog, logging.INFO)) == []
    assert f"call call-1: handoff reason: pays with {CARD}" in logged(caplog, logging.DEBUG)


@tool
async def charge(card: str) -> str:
    """Charge a card (refuses, quoting it, as an HTTP service's error body may).

    Args:
        card: the card number.
    """
    raise ToolError(f"card {card} declined")


@tool
async def charge_broken(card: str) -> str:
    """Charge a card (a bug: the exception's text holds the card).

    Args:
        card: the card number.
    """
    raise ValueError(f"cannot parse {card}")


class Control:
    info = CallInfo("call-1")


async def test_a_refusal_or_a_traceback_does_not_carry_the_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = ToolRunner(ToolContext(Control()), [charge, charge_broken])  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        refused = await runner.start(ToolCall("t1", "charge", {"card": CARD}))
        raised = await runner.start(ToolCall("t2", "charge_broken", {"card": CARD}))
    assert refused.output == {"error": f"card {CARD} declined"}  # the model hears it
    assert raised.output == {"error": "the tool charge_broken failed"}
    messages = logged(caplog)
    assert leaks(messages) == [], leaks(messages)
    assert messages[0] == "tool charge (t1) refused (ToolError)"
    assert messages[1].startswith("tool charge_broken (t2) raised\nTraceback")
    assert 'raise ValueError(f"cannot parse {card}")' in messages[1]  # where, not what
    assert messages[1].endswith("ValueError (message withheld: it may hold call data)")


# --------------------------------------------------------------------------- local provider


async def test_the_local_provider_does_not_log_the_text_it_ignores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = LocalProvider()
    session = await provider.open(CallInfo("call-1"), SessionConfig())
    with caplog.at_level(logging.DEBUG, logger="sipbot"):
        await session.send_text("The caller pressed the key 4.")
    await session.close()
    assert logged(caplog) == ["local provider: text ignored (29 characters)"]


# --------------------------------------------------------------------------- call record (Rule 4)


class Entry:
    name = "charge"
    output = f"card {CARD} approved"
    started = 1.0
    ended = 2.0
    error = False

    def __init__(self) -> None:
        self.arguments = {"card": CARD, "amount": 12}


class Record:
    lines = ()

    def __init__(self) -> None:
        self.tools = [Entry()]


class FinishedCall:
    record = Record()
    transcript = ()


class Dialog:
    def reject(self, status: int, reason: str, headers: Any = None) -> None:
        del status, reason, headers


@pytest.mark.parametrize("keep", [False, True])
def test_the_call_record_keeps_tool_values_only_when_asked(keep: bool) -> None:
    rows: list[Any] = []
    attempt = Attempt(
        Dialog(), rows.append, call_id="c1", caller="+4930555", did="100", tool_values=keep
    )
    attempt.answered = 1_000_000_000.0
    attempt.finish(FinishedCall(), reason="bye-received")
    [tool_row] = json.loads(rows[0].tools)
    if keep:
        assert json.loads(tool_row["arguments"]) == {"card": CARD, "amount": 12}
        assert tool_row["output"] == f"card {CARD} approved"
    else:
        assert json.loads(tool_row["arguments"]) == {"card": REDACTED, "amount": REDACTED}
        assert tool_row["output"] == REDACTED
        assert CARD not in rows[0].tools
    assert tool_row["name"] == "charge"


# --------------------------------------------------------------------------- config and helpers


def write(tmp_path: Path, server: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"server:\n{server}\nagents:\n  a: {{provider: local}}\nroutes:\n  - answer: a\n"
    )
    return str(path)


def test_the_opt_ins_are_off_by_default_and_must_be_booleans(tmp_path: Path) -> None:
    server = load_config(write(tmp_path, "  log_level: info")).server
    assert (server.log_sensitive, server.records.tool_values) == (False, False)
    server = load_config(
        write(tmp_path, "  log_sensitive: true\n  records: {tool_values: true}")
    ).server
    assert (server.log_sensitive, server.records.tool_values) == (True, True)
    with pytest.raises(ConfigError) as bad:
        load_config(write(tmp_path, '  log_sensitive: "yes"'))
    assert str(bad.value).endswith(
        "c.yaml:2: server.log_sensitive: input should be a valid boolean"
    )
    with pytest.raises(ConfigError) as bad:
        load_config(write(tmp_path, "  records: {tool_values: 1}"))
    assert str(bad.value).endswith(
        "c.yaml:2: server.records.tool_values: input should be a valid boolean"
    )


def test_the_helpers() -> None:
    assert dtmf_line(3) == "DTMF * (3 so far)"
    assert argument_names({"card": 1, "amount": 2}, {"card", "amount"}) == "card, amount"
    assert argument_names({}, {"card"}) == "no arguments"
    assert argument_names({CARD: 1}, {"card"}) == "1 undeclared"
    assert argument_names({"card": 1, CARD: 1}, {"card"}) == "card and 1 undeclared"
    assert [tool_outcome(None, False), tool_outcome("x", False), tool_outcome(None, True)] == [
        "ok",
        "error",
        "cancelled",
    ]
