"""End to end: SIPp calls a real ``sipbot run`` whose agents use the emulated cloud providers.

Every call goes SIPp → sipbot (SIP, RTP) → sipbot's Gemini / OpenAI adapter → the real
google-genai / openai SDK → the emulator, which runs in this process
(:mod:`tests.e2e.provider_calls`). What the caller heard is the RTP captured at SIPp's media port;
what the model got is the emulator's record. Each test runs for both providers. This module:
conversation, tools, greeting; ``test_providers_resilience_e2e`` has barge-in, reconnection
and failures.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbot.emulators.script import EmulatorScript, ToolCallRule
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import Kind
from tests.e2e.peers import audio
from tests.e2e.provider_calls import (
    FRAME_MS,
    RecordedEmulator,
    Rigs,
    dominant_hz,
    in_frames,
    loud_runs,
    out_frames,
    pcm_of,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.requires_peers("sipp", "capture"),
]

KINDS = ["gemini", "openai"]
SHORT_TEXT = "Hello, what is the weather like today?"


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> audio.Speech:
    return audio.make_speech(tmp_path_factory.mktemp("short"), SHORT_TEXT, "short")


@pytest.fixture
def rig(sipbot_server: StartServer, peers_tmp: Path) -> Iterator[Rigs]:
    """``rig(kind, script, agents=None, tools=None, env=None) -> Rig`` (see ``Rigs``)."""
    with Rigs(sipbot_server, peers_tmp) as rigs:
        yield rigs


# --------------------------------------------------------------------------- conversation


@pytest.mark.parametrize(("kind", "codec"), [("gemini", "G722"), ("openai", "PCMU")])
def test_converse_hears_its_echo(
    rig: Rigs, short_speech: audio.Speech, kind: Kind, codec: str
) -> None:
    r = rig(kind, EmulatorScript(reply="echo", speed=4.0))
    rate = 16000 if codec == "G722" else 8000
    sent = short_speech.pcm(rate)
    caller = r.dial("bot", [(short_speech.duration_s, sent), (3.5, None)], hold_s=6.5, codec=codec)
    heard = r.finish(caller)

    pcm, heard_rate = heard.pcm()
    assert audio.correlation(sent, pcm, rate, heard_rate) >= 0.9
    lines = r.call_log("bot")
    assert any(line.endswith("caller: caller turn 1") for line in lines), lines
    assert any(line.endswith("agent: reply 1") for line in lines), lines
    [session] = r.emu.sessions
    if kind == "openai":
        # G.711 pass-through: μ-law both ways, the caller's bytes reach the model unchanged
        [update] = in_frames(r.emu, "session.update")
        formats = update.message["session"]["audio"]
        assert formats["input"]["format"] == {"type": "audio/pcmu"}
        assert formats["output"]["format"] == {"type": "audio/pcmu"}
        raw = (r.tmp / "bot-0.raw").read_bytes()
        assert raw[8000:16000] in session.audio_in  # seconds 1 to 2 of the speech, bit-exact
    else:
        [setup] = [f.message["setup"] for f in in_frames(r.emu, "setup")]
        assert setup["model"].startswith("models/")
        audio_in = np.frombuffer(session.audio_in, dtype="<i2")
        assert audio.correlation(short_speech.pcm(16000), audio_in, 16000) >= 0.9


# --------------------------------------------------------------------------- tools

TOOL_MODULE = '''
def lookup_order(order_id: str) -> dict:
    """Find an order by its number.

    Args:
        order_id: the order number.
    """
    return {{"order_id": order_id, "status": "shipped", "token": "{token}"}}
'''


def tool_exchange(emu: RecordedEmulator, kind: str) -> tuple[dict[str, str], dict[str, Any], float]:
    """(call id → tool name asked by the emulator, call id → result it got, time of the last)."""
    if kind == "gemini":
        asked = {
            c["id"]: c["name"]
            for f in out_frames(emu, "toolCall")
            for c in f.message["toolCall"]["functionCalls"]
        }
        answers = in_frames(emu, "toolResponse")
        got = {
            r["id"]: r["response"]
            for f in answers
            for r in f.message["toolResponse"]["functionResponses"]
        }
    else:
        asked = {
            f.message["call_id"]: f.message["name"]
            for f in out_frames(emu, "response.function_call_arguments.done")
        }
        answers = [
            f
            for f in in_frames(emu, "conversation.item.create")
            if f.message["item"]["type"] == "function_call_output"
        ]
        got = {
            f.message["item"]["call_id"]: json.loads(f.message["item"]["output"]) for f in answers
        }
    return asked, got, max((f.time for f in answers), default=0.0)


@pytest.mark.parametrize(("kind", "codec"), [("gemini", "PCMU"), ("openai", "G722")])
def test_tool_call_result_reaches_the_model_and_the_reply_follows(
    rig: Rigs, short_speech: audio.Speech, peers_tmp: Path, kind: Kind, codec: str
) -> None:
    token = secrets.token_hex(4)
    (peers_tmp / "e2e_tools.py").write_text(TOOL_MODULE.format(token=token))
    script = EmulatorScript(
        reply="tone",
        tone_hz=1000.0,
        reply_ms=800,
        tool_calls=(
            ToolCallRule("lookup_order", {"order_id": "A42"}, on_turn=1),
            ToolCallRule("get_caller_info", {}, on_turn=1),
        ),
    )
    r = rig(
        kind,
        script,
        agents={"bot": {"tools": ["lookup_order", "get_caller_info"]}},
        tools={"lookup_order": {"python": "e2e_tools:lookup_order"}},
    )
    rate = 16000 if codec == "G722" else 8000
    parts = [(short_speech.duration_s, short_speech.pcm(rate)), (2.5, None)]
    heard = r.finish(r.dial("bot", parts, hold_s=5.5, codec=codec))

    asked, got, answered_at = tool_exchange(r.emu, kind)
    assert sorted(asked.values()) == ["get_caller_info", "lookup_order"]
    assert got.keys() == asked.keys()
    by_name = {asked[call_id]: result for call_id, result in got.items()}
    assert by_name["lookup_order"] == {"order_id": "A42", "status": "shipped", "token": token}
    assert by_name["get_caller_info"] == {"caller": "sipp", "display_name": "sipp", "did": "bot"}
    # the reply follows the results: its transcript carries them, and the caller hears its tone
    lines = r.call_log("bot")
    # logged by name and argument names (sipbot.sensitive Rule 2); A42 is in the result above
    assert sum(line.endswith(") called with order_id") for line in lines) == 1, lines
    reply = [line for line in lines if "agent: reply 1 " in line]
    assert len(reply) == 1, lines
    assert token in reply[0]
    after = [p for p in heard.inbound if p.time > answered_at]
    pcm, heard_rate = pcm_of(after)
    assert audio.rms_dbfs(pcm) > -30.0
    assert abs(dominant_hz(pcm, heard_rate) - 1000.0) < 10.0
    before = [p for p in heard.inbound if p.time <= answered_at]
    assert audio.rms_dbfs(pcm_of(before)[0]) < -50.0  # nothing before the results
    if kind == "openai":
        [update] = in_frames(r.emu, "session.update")
        fmt = update.message["session"]["audio"]["input"]["format"]
        assert fmt == {"type": "audio/pcm", "rate": 24000}


# --------------------------------------------------------------------------- greeting

GREETING = "Thanks for calling the test line."


def greeting_request(emu: RecordedEmulator, kind: str) -> str:
    """The text turn sipbot sent to make the model speak first."""
    if kind == "gemini":
        [content] = [f.message["clientContent"] for f in in_frames(emu, "clientContent")]
        assert content["turnComplete"] is True
        return str(content["turns"][-1]["parts"][0]["text"])
    [item] = [f.message["item"] for f in in_frames(emu, "conversation.item.create")]
    assert len(in_frames(emu, "response.create")) == 1
    return str(item["content"][0]["text"])


@pytest.mark.parametrize("kind", KINDS)
def test_greeting_is_spoken_first(rig: Rigs, kind: Kind) -> None:
    r = rig(
        kind,
        EmulatorScript(reply="tone", tone_hz=600.0, reply_ms=800),
        agents={"bot": {"greeting": GREETING}},
    )
    heard = r.finish(r.dial("bot", [(2.5, None)], hold_s=2.5))  # the caller says nothing

    assert GREETING in greeting_request(r.emu, kind)
    runs = loud_runs(heard.inbound)
    assert len(runs) == 1, "expected one greeting"
    [greeting] = runs
    assert greeting[0].time - heard.start < 1.5  # promptly after the answer
    assert abs(len(greeting) * FRAME_MS - 800) <= 40
    assert abs(dominant_hz(pcm_of(greeting)[0], 8000) - 600.0) < 10.0
    lines = r.call_log("bot")
    assert any(line.endswith("agent: reply 0") for line in lines), lines
