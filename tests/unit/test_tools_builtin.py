"""Built-in telephony tools; the transfer allow-list is checked before CallControl is reached."""

from __future__ import annotations

import pytest

from sipbot.domain import ToolCall
from sipbot.errors import ToolDefinitionError, ToolNotAllowed
from sipbot.tools import (
    ToolContext,
    ToolRunner,
    TransferPolicy,
    builtin_tool,
    get_caller_info,
    hang_up,
    send_dtmf,
    transfer_call,
)
from sipbot.tools.builtin import MAX_TRANSFER_TIMEOUT_S, TRANSFER_TOOL_TIMEOUT_S
from tests.unit.test_tools_runner import Control

ALLOW = ["sip:*@pbx.example.com", "sip:+4930*@Trunk.example.com:5070", "tel:+1800*"]


def runner_for(control: Control) -> ToolRunner:
    tools = [hang_up, send_dtmf, get_caller_info, transfer_call(ALLOW)]
    return ToolRunner(ToolContext(control), tools)


async def test_hang_up_and_caller_info() -> None:
    control = Control()
    runner = runner_for(control)
    result = await runner.start(ToolCall("1", "hang_up", {}))
    assert result.output == "the call will end after this sentence"
    assert control.actions == [("hang_up", "")]
    result = await runner.start(ToolCall("2", "get_caller_info", {}))
    assert result.output == {"caller": "+4930555", "display_name": "", "did": "100"}


async def test_send_dtmf_validates_digits() -> None:
    control = Control()
    runner = runner_for(control)
    result = await runner.start(ToolCall("1", "send_dtmf", {"digits": "1 2#*a"}))
    assert result.output == "sent 12#*A"
    result = await runner.start(ToolCall("2", "send_dtmf", {"digits": "12x"}))
    assert result.output == {
        "error": "invalid DTMF digits '12x': use 0-9, *, # or A-D (at most 32)"
    }
    assert control.actions == [("dtmf", "12#*A")]


@pytest.mark.parametrize(
    ("destination", "normalized"),
    [
        ("sip:200@pbx.example.com", "sip:200@pbx.example.com"),
        ("SIP:200@PBX.Example.com", "sip:200@pbx.example.com"),
        (" sip:operator@pbx.example.com ", "sip:operator@pbx.example.com"),
        ("sip:+4930123@trunk.example.com:5070", "sip:+4930123@trunk.example.com:5070"),
        ("tel:+18001234567", "tel:+18001234567"),
    ],
)
def test_policy_allows(destination: str, normalized: str) -> None:
    assert TransferPolicy(ALLOW).check(destination) == normalized


@pytest.mark.parametrize(
    "destination",
    [
        "+19005550100",  # a bare number: no pattern
        "tel:+19005550100",
        "sip:+19005550100@evil.example.net",
        "sip:200@pbx.example.com.evil.net",
        "sip:evil@evil.net;x=@pbx.example.com",  # parameters could smuggle a target
        "sip:200@pbx.example.com;transport=tcp",
        "sip:200@pbx.example.com?Refer-To=sip:evil@evil.net",
        "sip:a@b@pbx.example.com",
        "<sip:200@pbx.example.com>",
        "sip:200@pbx.example.com:5060",  # the pattern has no port
        "sip:+4930123@trunk.example.com",  # this pattern needs :5070
        "",
    ],
)
def test_policy_refuses(destination: str) -> None:
    with pytest.raises(ToolNotAllowed) as info:
        TransferPolicy(ALLOW).check(destination)
    assert str(info.value) == (
        f"transfer to {destination!r} is not allowed (allowed: sip:*@pbx.example.com, "
        "sip:+4930*@Trunk.example.com:5070, tel:+1800*)"
    )


async def test_forbidden_transfer_never_reaches_call_control() -> None:
    control = Control()
    runner = runner_for(control)
    result = await runner.start(ToolCall("1", "transfer_call", {"destination": "+19005550100"}))
    assert result.error is not None
    assert result.error.startswith("transfer to '+19005550100' is not allowed")
    assert control.actions == []
    result = await runner.start(
        ToolCall("2", "transfer_call", {"destination": "sip:200@pbx.example.com"})
    )
    assert result.output == "transferred: the caller is now connected to sip:200@pbx.example.com"
    assert control.actions == [("transfer", "sip:200@pbx.example.com")]


async def test_a_failed_transfer_tells_the_model_the_outcome_and_that_the_caller_stays() -> None:
    control = Control()
    control.transfer_outcome = "busy (486)"
    result = await runner_for(control).start(
        ToolCall("1", "transfer_call", {"destination": "sip:200@pbx.example.com"})
    )
    assert result.output == (
        "busy (486): the transfer to sip:200@pbx.example.com did not happen; the caller is "
        "still on the line with you, tell them"
    )


def test_transfer_call_waits_longer_than_any_agent_transfer_timeout() -> None:
    # the REFER's own transaction (32 s) plus the longest NOTIFY wait fit in the tool timeout
    assert transfer_call(ALLOW).timeout_s == TRANSFER_TOOL_TIMEOUT_S
    assert TRANSFER_TOOL_TIMEOUT_S > 32 + MAX_TRANSFER_TIMEOUT_S


def test_transfer_spec_lists_the_allowed_destinations() -> None:
    spec = transfer_call(["sip:*@pbx.example.com"]).spec
    assert spec.description == (
        "Transfer the caller to another phone number or SIP address (blind, or warm: the "
        "destination is called and briefed first while the caller holds). The result says "
        "what happened: when the target answered, your part of the call ends; when it was "
        "busy, did not answer or refused, the caller is still with you. "
        "Allowed destinations: sip:*@pbx.example.com"
    )
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "destination": {
                "type": "string",
                "description": "the SIP URI to transfer to, e.g. sip:200@pbx.example.com.",
            },
            "warm": {
                "type": "boolean",
                "description": "true to call the destination first and brief them while the "
                "caller is on hold, then connect the two (attended transfer); false or absent: "
                "blind.",
            },
        },
        "required": ["destination"],
    }


@pytest.mark.parametrize("pattern", ["pbx.example.com", "sip:pbx.example.com", "sip:1?@x.com"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ToolDefinitionError) as info:
        transfer_call([pattern])
    assert str(info.value) == (
        f"invalid transfer pattern {pattern!r}: expected a URI such as sip:*@pbx.example.com"
    )


def test_builtin_tool_lookup() -> None:
    assert builtin_tool("hang_up") is hang_up
    assert builtin_tool("transfer_call", ["tel:+1800*"]).spec.name == "transfer_call"
    with pytest.raises(ToolDefinitionError) as info:
        builtin_tool("transfer_call")
    assert str(info.value) == "transfer_call needs at least one allowed destination"
    with pytest.raises(ToolDefinitionError) as info:
        builtin_tool("reboot")
    assert str(info.value) == "unknown built-in tool 'reboot'"


class HandoffControl(Control):
    """A call that can be handed over (records it)."""

    async def handoff(self, agent: str, reason: str) -> None:
        self.actions.append(("handoff", f"{agent}: {reason}"))


async def test_handoff_goes_only_to_allowed_agents_and_only_on_calls_that_can() -> None:
    tool = builtin_tool("handoff", handoff_allow=["billing", "sales"])
    assert tool.spec.description == (
        "Hand the call over to another agent, who continues the conversation with what was "
        "said so far. Say a short sentence to the caller first. Agents: billing, sales"
    )
    assert tool.spec.parameters["required"] == ["agent", "reason"]
    control = HandoffControl()
    runner = ToolRunner(ToolContext(control), [tool])
    refused = await runner.start(ToolCall("1", "handoff", {"agent": "root", "reason": "x"}))
    assert refused.error == "handoff to 'root' is not allowed (allowed: billing, sales)"
    done = await runner.start(ToolCall("2", "handoff", {"agent": "billing", "reason": "invoice"}))
    assert done.output == "the call goes to billing now"
    assert control.actions == [("handoff", "billing: invoice")]
    plain = ToolRunner(ToolContext(Control()), [tool])
    result = await plain.start(ToolCall("3", "handoff", {"agent": "sales", "reason": "x"}))
    assert result.error == "this call cannot be handed over"
    with pytest.raises(ToolDefinitionError) as info:
        builtin_tool("handoff")
    assert str(info.value) == "handoff needs at least one agent to hand over to"
