"""Every example dialplan loads (and routes as its comments say); the Python example builds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipbot.config import load_config
from sipbot.dialplan import Answer, Dialplan, Reject, RouteRequest, Transfer, route
from sipbot.domain import CallInfo, ToolCall
from sipbot.tools import ToolContext, ToolRunner
from tests.unit.test_tools_runner import Control

ROOT = Path(__file__).resolve().parents[2]
DIALPLANS = sorted((ROOT / "dialplans").glob("*.yaml"))
ENV = {
    "GEMINI_API_KEY": "test-gemini",
    "OPENAI_API_KEY": "test-openai",
    "PBX_PASSWORD": "pw",
    "CARRIER_PASSWORD": "carrier-pw",
    "SIPBOT_HTTP_TOKEN": "http-token",
}


@pytest.fixture(autouse=True)
def from_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


def test_the_examples_are_there() -> None:
    assert [p.name for p in DIALPLANS] == [
        "default.yaml", "outbound.yaml", "pbx-trunk.yaml", "support.yaml",
    ]  # fmt: skip


@pytest.mark.parametrize("path", DIALPLANS, ids=lambda p: p.name)
def test_example_loads_without_warnings(path: Path) -> None:
    config = load_config(str(path.relative_to(ROOT)), environ=ENV)
    assert config.warnings == ()
    assert config.dialplan.routes


def decide(plan: Dialplan, did: str, caller: str, when: datetime, source: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    return route(plan, RouteRequest(did, caller, "", source, {}, when))


def test_support_line_business_hours() -> None:
    plan = load_config("dialplans/support.yaml", environ=ENV).dialplan
    tuesday_10_berlin = datetime(2025, 6, 3, 8, 0, tzinfo=UTC)
    tuesday_20_berlin = datetime(2025, 6, 3, 18, 0, tzinfo=UTC)
    open_call = decide(plan, "100", "+4930555", tuesday_10_berlin)
    assert open_call.route_name == "business-hours"
    assert isinstance(open_call.action, Answer)
    assert open_call.action.agent.provider == "gemini"
    fallback = open_call.action.agent.fallback
    assert fallback is not None
    assert (fallback.provider, fallback.voice) == ("openai", "marin")
    assert open_call.dtmf == {"0": Transfer("sip:operator@pbx.example.com")}
    closed = decide(plan, "+4930123456100", "+4930555", tuesday_20_berlin)
    assert closed.route_name == "after-hours"
    assert isinstance(closed.action, Answer)
    assert closed.action.agent.provider == "openai"
    assert decide(plan, "100", "+19005550100", tuesday_10_berlin).action == Reject(403)
    assert decide(plan, "555", "+4930555", tuesday_10_berlin).action == Reject(404)


def test_pbx_trunk_only_answers_the_pbx() -> None:
    plan = load_config("dialplans/pbx-trunk.yaml", environ=ENV).dialplan
    now = datetime(2025, 6, 3, 15, 0, tzinfo=UTC)
    assert decide(plan, "201", "+15551234", now, "192.0.2.11").route_name == "reception"
    assert decide(plan, "291", "+15551234", now, "192.0.2.10").route_name == "ivr-test"
    assert decide(plan, "600", "+15551234", now, "192.0.2.10").route_name == "echo-test"
    assert decide(plan, "777", "+15551234", now, "192.0.2.10").action == Reject(
        404, "No Such Extension"
    )
    stranger = decide(plan, "201", "+15551234", now, "198.51.100.7")
    assert (stranger.route_name, stranger.action) == ("not-from-pbx", Reject(403))
    registration = plan.trunks["pbx"].registration
    assert registration is not None
    assert (registration.aor, registration.expires_s) == ("sip:sipbot@192.0.2.10", 300)


def test_outbound_places_reminders_through_the_limited_carrier_trunk() -> None:
    config = load_config("dialplans/outbound.yaml", environ=ENV)
    plan = config.dialplan
    carrier = plan.trunks["carrier"]
    out = carrier.dial_settings
    assert (out.caller_id, out.ring_timeout_s) == ("+4930123456", 30.0)
    assert (out.limits.max_calls, out.limits.cps, out.limits.queue) == (10, 2.0, 50)
    assert carrier.dial_credentials is not None
    assert carrier.dial_target == "sip:sip.carrier.example"
    assert config.server.http.token == "http-token"  # POST /calls needs one
    call = CallInfo(
        "c1",
        did="+4930555123",
        direction="outbound",
        variables={"name": "Ada", "when": "Tuesday at 10:00"},
    )
    now = datetime(2025, 6, 3, 8, 0, tzinfo=UTC)
    prompt = plan.agents["reminder"].session_config(call, now).instructions
    assert prompt.startswith("You placed this phone call to +4930555123")
    assert "calling Ada to remind them of\ntheir appointment on Tuesday at 10:00." in prompt


def test_default_is_the_local_echo() -> None:
    config = load_config("dialplans/default.yaml")
    decision = decide(config.dialplan, "anything", "", datetime(2025, 1, 1, tzinfo=UTC))
    assert isinstance(decision.action, Answer)
    assert (decision.action.agent.provider, decision.action.agent.local_mode) == ("local", "echo")


async def test_example_tools_run() -> None:
    from examples.tools import lookup_order, schedule_callback

    runner = ToolRunner(ToolContext(Control()), [lookup_order, schedule_callback])
    found = await runner.start(ToolCall("1", "lookup_order", {"order_id": "a 1001"}))
    assert found.output == {
        "order_id": "A 1001", "status": "shipped", "carrier": "DHL", "eta": "tomorrow",
        "caller": "+4930555",
    }  # fmt: skip
    missing = await runner.start(ToolCall("2", "lookup_order", {"order_id": "Z9"}))
    assert missing.output == {"error": "there is no order Z9"}
    booked = await runner.start(
        ToolCall("3", "schedule_callback", {"when": "morning", "topic": "a refund"})
    )
    assert (
        booked.output == "A callback to +4930555 about 'a refund' is booked for tomorrow morning."
    )
    assert schedule_callback.spec.parameters["properties"]["when"] == {
        "type": "string",
        "enum": ["morning", "afternoon", "evening"],
        "description": "the part of the day the caller prefers.",
    }


def test_dialplan_in_python_code() -> None:
    from examples.serve_in_code import build_dialplan

    plan = build_dialplan()
    now = datetime(2025, 6, 3, 8, 0, tzinfo=UTC)
    shop = decide(plan, "100", "+4930555", now)
    assert shop.route_name == "shop"
    assert isinstance(shop.action, Answer)
    assert [t.spec.name for t in shop.action.agent.resolved_tools] == [
        "lookup_order", "opening_hours", "transfer_call", "hang_up",
    ]  # fmt: skip
    assert decide(plan, "600", "+4930555", now).route_name == "echo-test"
    assert decide(plan, "1", "+19005550100", now).action == Reject(403)
    assert decide(plan, "1", "+4930555", now).route_name == "default"
