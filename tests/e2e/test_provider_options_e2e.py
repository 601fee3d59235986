"""End to end: the typed ``gemini:`` / ``openai:`` agent options reach the (emulated) service.

A real ``sipbot run -c FILE`` takes one SIPp call per provider; the real google-genai and openai
SDKs inside sipbot send the setup / ``session.update``, which the emulators check the way the
services do and record. Then what the emulators refuse: a bad value sent by a raw client
(Gemini: close 1007 with the protobuf JSON error) and one passed through the free-form
``options.session`` by the real OpenAI adapter (an ``error`` event: the session does not open).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from sipbot.dialplan import Agent
from sipbot.domain import CallInfo
from sipbot.emulators.common import close_reason
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript
from sipbot.errors import ProviderConnectError
from sipbot.providers.openai import OpenAIProvider
from tests.e2e.calls import caller_turns
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import sipp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SCRIPT = EmulatorScript(reply="tone", reply_ms=300, vad_silence_ms=300)
CALL_TIMEOUT_S = 15.0
WAIT_S = 5.0
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def gemini() -> Iterator[EmulatorThread]:
    with EmulatorThread("gemini", SCRIPT) as emulator:
        yield emulator


@pytest.fixture
def openai() -> Iterator[EmulatorThread]:
    with EmulatorThread("openai", SCRIPT) as emulator:
        yield emulator


def call(server_address: str, did: str, tmp: Path) -> None:
    scenario = sipp.uac_scenario(tmp / f"{did}.xml", caller_turns(tmp / "t.ulaw"), hold_s=0.5)
    result = sipp.run_uac(
        server_address, scenario, tmp, service=did, name=f"did{did}", timeout_s=CALL_TIMEOUT_S
    )
    result.assert_ok(calls=1)


def first(emulator: EmulatorThread, predicate: Any) -> dict[str, Any]:
    """The first frame of the emulator's first session matching ``predicate`` (waits for it)."""

    def found() -> list[dict[str, Any]]:
        if not emulator.session_count:
            return []
        return [frame for frame in emulator.received(0) if predicate(frame)]

    frame: dict[str, Any] = wait_until(found, WAIT_S, "the setup frame")[0]
    return frame


@pytest.mark.requires_peers("sipp")
def test_typed_options_reach_each_service(
    sipbot_server: StartServer, peers_tmp: Path, gemini: EmulatorThread, openai: EmulatorThread
) -> None:
    plan = {
        "agents": {
            "g": gemini.agent(
                language="de-DE",
                gemini={
                    "proactive_audio": True,
                    "affective_dialog": True,
                    "thinking_budget": 256,
                    "activity_handling": "no_interruption",
                },
            ),
            "o": openai.agent(
                language="fr-FR",
                openai={
                    "turn_detection": "semantic_vad",
                    "eagerness": "high",
                    "noise_reduction": "near_field",
                },
                barge_in={"mode": "guard"},
            ),
        },
        "routes": [
            {"match": {"did": "100"}, "answer": "g"},
            {"match": {"did": "200"}, "answer": "o"},
        ],
    }
    server = sipbot_server("-c", str(write_dialplan(peers_tmp / "o.yaml", plan)), env=server_env())
    call(server.address, "100", peers_tmp)
    call(server.address, "200", peers_tmp)

    setup = first(gemini, lambda f: "setup" in f)["setup"]
    generation = setup["generationConfig"]
    assert setup["proactivity"] == {"proactiveAudio": True}
    assert generation["enableAffectiveDialog"] is True
    assert generation["thinkingConfig"] == {"thinkingBudget": 256}
    assert generation["speechConfig"]["languageCode"] == "de-DE"
    assert setup["realtimeInputConfig"]["activityHandling"] == "NO_INTERRUPTION"

    update = first(openai, lambda f: f.get("type") == "session.update")
    audio_in = update["session"]["audio"]["input"]
    assert audio_in["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": False,  # the guard runs: the provider's interruption is off
    }
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    assert audio_in["transcription"]["language"] == "fr"


async def _gemini_refusal(setup: dict[str, Any]) -> tuple[int | None, str | None]:
    async with GeminiEmulator(SCRIPT, port=0) as emulator:
        uri = emulator.base_url.replace("https", "wss") + (
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
        )
        context = ssl.create_default_context(cafile=emulator.ca_file)
        async with websockets.connect(
            uri, ssl=context, additional_headers={"x-goog-api-key": "k"}
        ) as ws:
            await ws.send(json.dumps({"setup": setup}))
            await asyncio.wait_for(ws.wait_closed(), WAIT_S)
            return ws.close_code, ws.close_reason


def test_gemini_emulator_closes_on_a_bad_value() -> None:
    setup = {"model": "models/m", "realtimeInputConfig": {"activityHandling": "NEVER"}}
    code, reason = asyncio.run(_gemini_refusal(setup))
    full = (
        "Invalid value at 'setup.realtime_input_config.activity_handling' "
        '(type.googleapis.com/google.ai.generativelanguage.v1beta.ActivityHandling), "NEVER"'
    )
    assert code == 1007
    assert reason == close_reason(full)  # cut to fit a close frame, as the service does
    assert reason.startswith("Invalid value at 'setup.realtime_input_config.activity_handling' ")


async def _openai_open(options: dict[str, Any]) -> str:
    """Open a session of an agent with ``options`` through the real adapter; its error."""
    async with OpenAIEmulator(SCRIPT, port=0) as emulator:
        call = CallInfo(call_id="c1", caller="alice", codec="PCMU")
        config = Agent("o", provider="openai", options=options).session_config(call, NOW)
        provider = OpenAIProvider("k", websocket_base_url=emulator.base_url, max_attempts=1)
        with pytest.raises(ProviderConnectError) as info:
            await provider.open(call, config)
        return str(info.value)


def test_openai_emulator_refuses_a_bad_value_through_the_real_adapter() -> None:
    bad = {"session": {"audio": {"input": {"noise_reduction": {"type": "close_talk"}}}}}
    assert asyncio.run(_openai_open(bad)) == (
        "openai: session.update refused: invalid_value: Invalid value: 'close_talk'. "
        "Supported values are: 'near_field' and 'far_field'."
    )
