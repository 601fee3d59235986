"""End to end: an emulated model calls tools on a live call — Python, HTTP and telephony tools.

A real ``sipbot run -c FILE`` process answers SIPp or baresip callers; its agents talk to the
Gemini / OpenAI emulators through the real SDK adapters. The emulated model calls a tool on the
caller's first turn (:class:`~sipbot.emulators.script.ToolCallRule`) and replies once the result
is in, its transcript carrying the result's JSON; ``received`` shows what the model got.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sipbot.emulators.script import EmulatorScript, ToolCallRule
from tests.e2e.calls import (
    audible,
    caller_turns,
    caller_wav,
    sip_request_times,
    transferee_scenario,
)
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import (
    EmulatorThread,
    Kind,
    ToolService,
    server_env,
    wait_until,
    write_dialplan,
)
from tests.e2e.peers import baresip, sipp
from tests.e2e.peers.capture import RtpCapture, select, stream_stats

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CALL_TIMEOUT_S = 25.0
TOOLS_MODULE = '''\
"""Tools of the e2e dialplan (a user's own module, next to the dialplan)."""

import asyncio
import json
import time

from sipbot.tools import ToolContext, tool

LOG = {log!r}


@tool
async def lookup_order(order_id: str, context: ToolContext) -> dict[str, str]:
    """Look up an order.

    Args:
        order_id: the order number.
    """
    tier = next((v for k, v in context.headers.items() if k.lower() == "x-customer-id"), "")
    return {{"order_id": order_id, "status": "shipped", "caller": context.caller,
            "did": context.did, "customer": tier}}


@tool
async def slow_lookup(order_id: str) -> str:
    """Look up an order in the slow archive.

    Args:
        order_id: the order number.
    """
    started = time.time()
    await asyncio.sleep(2.0)
    with open(LOG, "a") as log:
        log.write(json.dumps({{"tool": "slow_lookup", "start": started, "end": time.time()}}))
        log.write("\\n")
    return f"order {{order_id}} is archived"
'''


def script(*rules: ToolCallRule, **fields: Any) -> EmulatorScript:
    """A model that replies with a 1 s tone after calling ``rules`` on the caller's turn."""
    values: dict[str, Any] = {"reply": "tone", "reply_ms": 1000, "vad_silence_ms": 300}
    values.update(fields)
    return EmulatorScript(tool_calls=rules, **values)


def write_tools(directory: Path) -> Path:
    """The user's tool module ``shop_tools.py`` in ``directory``; returns its timing log."""
    log = directory / "tool-times.jsonl"
    (directory / "shop_tools.py").write_text(TOOLS_MODULE.format(log=str(log)))
    return log


def call_id_of(result: sipp.SippResult) -> str:
    match = re.search(r"^Call-ID: (\S+)", result.messages(), re.M)
    assert match, result.describe()
    return match.group(1)


@pytest.mark.requires_peers("sipp")
@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_python_and_http_tools_reach_the_model(
    sipbot_server: StartServer, peers_tmp: Path, kind: Kind
) -> None:
    write_tools(peers_tmp)
    rules = (
        ToolCallRule("lookup_order", {"order_id": "A1001"}),
        ToolCallRule("crm_note", {"summary": "parcel is late"}),
    )
    with (
        EmulatorThread(kind, script(*rules)) as model,
        ToolService(response={"ticket": "T-42", "status": "noted"}) as crm,
    ):
        config = {
            "server": {"log_transcripts": True},  # the assertions read the agent's words
            "agents": {
                "shop": model.agent(
                    prompt="You help with orders.", tools=["lookup_order", "crm_note"]
                )
            },
            "tools": {
                "lookup_order": {"python": "shop_tools:lookup_order"},
                "crm_note": {
                    "http": {
                        "url": crm.url("/crm/note"),
                        "timeout_s": 3,
                        "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
                    },
                    "description": "Save a note about the caller's concern.",
                    "parameters": {
                        "type": "object",
                        "properties": {"summary": {"type": "string"}},
                        "required": ["summary"],
                    },
                },
            },
            "routes": [{"match": {"did": "100"}, "answer": "shop"}],
        }
        path = write_dialplan(peers_tmp / "shop.yaml", config)
        server = sipbot_server("-c", str(path), env={**server_env(), "CRM_TOKEN": "s3cret-token"})
        turns = caller_turns(peers_tmp / "turn.ulaw")
        scenario = sipp.uac_scenario(
            peers_tmp / "uac.xml", turns, hold_s=4.0, extra_headers=["X-Customer-Id: 42"]
        )
        result = sipp.run_uac(server.address, scenario, peers_tmp, service="100", timeout_s=20)
        result.assert_ok(calls=1)
        call_id = call_id_of(result)
        results = {r["id"]: r["output"] for r in model.tool_results()}
        requests = list(crm.requests)

    # the HTTP service got the model's arguments and the call's metadata, with the secret header
    [request] = requests
    assert request.path == "/crm/note"
    assert request.headers["Authorization"] == "Bearer s3cret-token"
    body = request.body
    assert body["tool"] == "crm_note"
    assert body["arguments"] == {"summary": "parcel is late"}
    call = body["call"]
    assert (call["call_id"], call["caller"], call["did"]) == (call_id, "sipp", "100")
    assert call["display_name"] == "sipp"
    assert call["headers"]["X-Customer-Id"] == "42"
    # both results reached the model: exactly what the tools returned
    lookup = {
        "order_id": "A1001",
        "status": "shipped",
        "caller": "sipp",
        "did": "100",
        "customer": "42",
    }
    assert sorted(results.values(), key=json.dumps) == sorted(
        [lookup, {"ticket": "T-42", "status": "noted"}], key=json.dumps
    )
    # ...and the model spoke about them (its transcript quotes each result)
    log = server.log()
    spoken = re.search(r"agent: reply 1 (.*)$", log, re.M)
    assert spoken, log[-3000:]
    assert '"ticket":"T-42"' in spoken.group(1)
    assert '"customer":"42"' in spoken.group(1)
    assert "s3cret-token" not in log
    assert '"tool_calls": 2' in log


def desk_agent(model: EmulatorThread, allow: str) -> dict[str, Any]:
    return model.agent(
        prompt="Transfer callers who ask for a human.",
        tools=["transfer_call", "hang_up"],
        transfer_allow=[allow],
    )


@pytest.mark.requires_peers("baresip", "sipp")
def test_transfer_call_to_an_allowed_uri_moves_the_caller(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    operator = sipp.start_uas(peers_tmp, name="operator", calls=1, lifetime_s=40)
    target = operator.uri("operator")
    rule = ToolCallRule("transfer_call", {"destination": target})
    with EmulatorThread("gemini", script(rule)) as model:
        allow = f"sip:*@127.0.0.1:{operator.port}"
        config = {
            "agents": {"desk": desk_agent(model, allow)},
            "routes": [{"match": {"did": "500"}, "answer": "desk"}],
        }
        path = write_dialplan(peers_tmp / "desk.yaml", config)
        server = sipbot_server("-c", str(path), env=server_env())
        caller = baresip.start(
            peers_tmp, caller_wav(peers_tmp / "turn.wav"), dial=server.uri("500"), duration_s=30
        )
        try:
            # baresip follows the REFER: it calls the operator, and sipbot hangs up on it
            wait_until(caller.transfers, 15, "baresip to follow a REFER")
            wait_until(lambda: "transferred" in server.log(), 15, "sipbot to end the call")
            wait_until(lambda: len(caller.terminated()) >= 1, 10, "the call with sipbot to end")
            received = model.tool_results()
        finally:
            caller.stop()
        operator_result = operator.wait(15)
    assert caller.transfers() == [target]
    ended_peer, _ = caller.terminated()[0]
    assert ended_peer.startswith("sip:500@127.0.0.1")  # sipbot's BYE ended its call first
    operator_result.assert_ok(calls=1)  # the transferred caller reached the operator and hung up
    invite = re.search(r"^INVITE (\S+) SIP/2.0$(.*?)^\r?$", operator_result.messages(), re.M | re.S)
    assert invite is not None
    assert invite.group(1) == target
    assert re.search(r"^From: .*sip:caller@127.0.0.1", invite.group(2), re.M)
    log = server.log()
    assert f"transfer to {target} accepted (202)" in log
    assert "transfer target answered 200" in log
    assert "transfer outcome: transferred" in log
    assert '"reason": "transferred"' in log
    # the tool waited for the outcome; by then the agent's leg was gone: no result to send
    assert received == []


@pytest.mark.requires_peers("sipp")
def test_transfer_call_to_a_forbidden_uri_is_refused(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    premium = "sip:+19005550100@premium.example.com"
    rule = ToolCallRule("transfer_call", {"destination": premium})
    with EmulatorThread("openai", script(rule)) as model:
        allow = "sip:*@pbx.example.com"
        config = {
            "server": {"log_transcripts": True},  # the assertions read the agent's words
            "agents": {"desk": desk_agent(model, allow)},
            "routes": [{"match": {"did": "500"}, "answer": "desk"}],
        }
        path = write_dialplan(peers_tmp / "desk.yaml", config)
        server = sipbot_server("-c", str(path), env=server_env())
        turns = caller_turns(peers_tmp / "turn.ulaw")
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", turns, hold_s=3.5)
        result = sipp.run_uac(server.address, scenario, peers_tmp, service="500", timeout_s=20)
        received = model.tool_results()
    result.assert_ok(calls=1)  # a REFER would have been an unexpected message: the call fails
    assert not re.search(r"^REFER ", result.messages(), re.M)
    error = f"transfer to '{premium}' is not allowed (allowed: {allow})"
    assert [r["output"] for r in received] == [{"error": error}]
    assert re.search(r"agent: reply 1 \{\"error\":\"transfer to", server.log())
    assert '"reason": "bye-received"' in server.log()


@pytest.mark.requires_peers("sipp", "capture", "tshark")
@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_hang_up_byes_after_the_goodbye_has_played(
    sipbot_server: StartServer, peers_tmp: Path, kind: Kind
) -> None:
    goodbye_ms = 1000
    with EmulatorThread(kind, script(ToolCallRule("hang_up"), reply_ms=goodbye_ms)) as model:
        config = {
            "agents": {"bye": model.agent(prompt="Say goodbye and hang up.", tools=["hang_up"])},
            "routes": [{"answer": "bye"}],
        }
        path = write_dialplan(peers_tmp / "bye.yaml", config)
        server = sipbot_server("-c", str(path), env=server_env())
        signalling = RtpCapture.start(peers_tmp, [server.port], name="sip")
        turns = caller_turns(peers_tmp / "turn.ulaw", tail_ms=8000)
        scenario = sipp.uac_scenario(
            peers_tmp / "uac.xml", turns, hangup="callee", bye_timeout_s=15, linger_s=1.0
        )  # the linger keeps both captures running until the BYE is surely in them
        uac = sipp.start_uac(server.address, scenario, peers_tmp, service="7", capture=True)
        result = uac.wait(CALL_TIMEOUT_S)
        signalling.stop()
    result.assert_ok(calls=1)  # sipbot sent the BYE
    assert result.capture is not None
    goodbye = audible(result.capture.packets(), uac.media_port)
    [bye_at] = sip_request_times(signalling.pcap_path, server.port, "BYE")
    # the whole goodbye was played (one 20 ms packet per 20 ms of tone), then came the BYE
    assert len(goodbye) >= goodbye_ms // 20 - 2, len(goodbye)
    assert goodbye[-1].time < bye_at
    assert bye_at - goodbye[-1].time < 1.5
    assert '"reason": "agent-hangup"' in server.log()
    print(f"goodbye: {len(goodbye)} packets, BYE {1000 * (bye_at - goodbye[-1].time):.1f} ms after")


@pytest.mark.requires_peers("sipp", "dtmf_pcap")
@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_caller_dtmf_reaches_the_model_as_text(
    sipbot_server: StartServer, peers_tmp: Path, kind: Kind
) -> None:
    with EmulatorThread(kind, script()) as model:
        config = {
            "agents": {"ivr": model.agent(prompt="Callers press keys.")},
            "routes": [{"answer": "ivr", "dtmf": {"0": "hang_up"}}],
        }
        path = write_dialplan(peers_tmp / "ivr.yaml", config)
        server = sipbot_server("-c", str(path), env=server_env())
        quiet = caller_turns(peers_tmp / "quiet.ulaw", turns=0, tail_ms=4000)
        scenario = sipp.uac_scenario(
            peers_tmp / "uac.xml", quiet, dtmf_pcap=sipp.dtmf_pcap("5"), hold_s=2.0
        )
        result = sipp.run_uac(server.address, scenario, peers_tmp, service="1", timeout_s=20)
        texts = model.texts()
    result.assert_ok(calls=1)
    assert texts == ["The caller pressed the key 5."]
    # the log counts the keypress and does not say which key (sipbot.sensitive Rule 1)
    assert len(re.findall(r"call \S+: DTMF \* \(1 so far\)$", server.log(), re.M)) == 1
    assert "DTMF 5" not in server.log()


@pytest.mark.requires_peers("sipp", "dtmf_pcap")
def test_route_dtmf_actions_transfer_and_hang_up(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    operator = "sip:operator@pbx.example.com"
    with EmulatorThread("gemini", script()) as model:
        config = {
            "agents": {"ivr": model.agent(prompt="Callers press keys.")},
            "routes": [
                {"answer": "ivr", "dtmf": {"0": {"transfer": operator}, "#": "hang_up"}},
            ],
        }
        path = write_dialplan(peers_tmp / "ivr.yaml", config)
        server = sipbot_server("-c", str(path), env=server_env())
        quiet = caller_turns(peers_tmp / "quiet.ulaw", turns=0, tail_ms=6000)
        # 0: sipbot sends REFER to the operator, and BYE once the NOTIFY says it answered
        transferee = transferee_scenario(
            peers_tmp / "transferee.xml", quiet, dtmf_pcap=sipp.dtmf_pcap("0")
        )
        moved = sipp.run_uac(
            server.address, transferee, peers_tmp, service="1", timeout_s=20, name="zero"
        )
        # #: sipbot hangs up at once
        scenario = sipp.uac_scenario(
            peers_tmp / "pound.xml",
            quiet,
            dtmf_pcap=sipp.dtmf_pcap("#"),
            hangup="callee",
            bye_timeout_s=10,
        )
        hung_up = sipp.run_uac(
            server.address, scenario, peers_tmp, service="1", timeout_s=20, name="pound"
        )
        texts = [model.texts(i) for i in range(model.session_count)]
    moved.assert_ok(calls=1)
    refer = re.search(r"^REFER .*?^\r?$", moved.messages(), re.M | re.S)
    assert refer is not None
    assert re.search(rf"^Refer-To: <{re.escape(operator)}>\r?$", refer.group(0), re.M)
    hung_up.assert_ok(calls=1)
    assert texts == [[], []]  # route-level digits never reach the model
    log = server.log()
    assert '"reason": "transferred"' in log
    assert '"reason": "dtmf-hangup"' in log


@pytest.mark.requires_peers("sipp", "capture")
def test_outbound_rtp_keeps_its_cadence_while_a_slow_tool_runs(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    times = write_tools(peers_tmp)
    rule = ToolCallRule("slow_lookup", {"order_id": "A1001"})
    with EmulatorThread("openai", script(rule)) as model:
        agent = model.agent(
            prompt="Orders.", tools=["slow_lookup"], filler_after_ms=300, tool_timeout_s=5
        )
        config = {
            "agents": {"archive": agent},
            "tools": {"slow_lookup": {"python": "shop_tools:slow_lookup"}},
            "routes": [{"answer": "archive"}],
        }
        path = write_dialplan(peers_tmp / "archive.yaml", config)
        server = sipbot_server("-c", str(path), env=server_env())
        turns = caller_turns(peers_tmp / "turn.ulaw", tail_ms=5000)
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", turns, hold_s=5.0)
        uac = sipp.start_uac(server.address, scenario, peers_tmp, service="1", capture=True)
        result = uac.wait(CALL_TIMEOUT_S)
        results = model.tool_results()
    result.assert_ok(calls=1)
    assert [r["output"] for r in results] == ["order A1001 is archived"]
    [run] = [json.loads(line) for line in times.read_text().splitlines()]
    assert result.capture is not None
    packets = result.capture.packets()
    during = [
        p
        for p in select(packets, dst_port=uac.media_port, audio_only=True)
        if run["start"] <= p.time <= run["end"]
    ]
    streams = stream_stats(during)
    assert len(streams) == 1, f"{len(during)} packets to the caller while the tool ran"
    [stats] = streams.values()
    print(
        f"during the tool: {stats.packets} packets, gap mean {stats.gap_mean_ms:.2f} ms, "
        f"stdev {stats.gap_stdev_ms:.2f}, p99 {stats.gap_p99_ms:.1f}, max {stats.gap_max_ms:.1f}"
    )
    # 2 s of a steady 20 ms stream, no packet skipped, no stall
    assert stats.packets >= 97
    assert stats.seq_missing == 0
    assert stats.gap_mean_ms == pytest.approx(20.0, abs=0.5)
    assert stats.gap_max_ms < 45.0
    # and it carried sound: the "one moment" filler played while the tool ran
    filler = [p for p in audible(packets, uac.media_port) if run["start"] <= p.time <= run["end"]]
    assert len(filler) >= 10
