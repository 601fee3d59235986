"""GeminiProvider (real google-genai SDK) against the Gemini Live emulator over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import NoReturn

import pytest

from sipbot.domain import (
    AudioOut,
    CallInfo,
    Interrupted,
    ProviderFailed,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    ToolSpec,
    Transcript,
    TurnComplete,
    TurnDetection,
)
from sipbot.emulators.common import ResumptionHandles
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.script import EmulatorScript, ToolCallRule
from sipbot.errors import ConfigError, ProviderConnectError, ProviderProtocolError
from sipbot.providers import gemini
from sipbot.providers.gemini import GeminiProvider, GeminiSession
from tests.integration.conftest import EventLog, dominant_hz, eventually, feed, silence, sine

RATE_IN = 16_000
RATE_OUT = 24_000
FRAME_IN = 640  # 20 ms at 16 kHz
KEY = "test-key"
CALL = CallInfo(call_id="call-1", caller="sip:alice@example.com")
FAST = EmulatorScript(speed=0, playback_wait=False, vad_silence_ms=200, api_keys=frozenset({KEY}))
TURNS = TurnDetection(silence_ms=200, prefix_ms=100)
LOOKUP = ToolSpec(
    "lookup_order",
    "Find an order.",
    {"type": "object", "properties": {"order_id": {"type": "string"}}},
)


def utterance(hz: float = 440.0, ms: int = 600) -> bytes:
    """A caller turn: a tone, then enough silence for the emulator's VAD to end the turn."""
    return sine(hz, ms, RATE_IN) + silence(300, RATE_IN)


def provider(emulator: GeminiEmulator, **kwargs: object) -> GeminiProvider:
    return GeminiProvider(
        KEY,
        base_url=emulator.base_url,
        ca_file=emulator.ca_file,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def emulator() -> AsyncIterator[GeminiEmulator]:
    async with GeminiEmulator(FAST, port=0) as emu:
        yield emu


async def opened(
    emulator: GeminiEmulator, config: SessionConfig | None = None, **kwargs: object
) -> tuple[GeminiSession, EventLog]:
    session = await provider(emulator, **kwargs).open(
        CALL, config or SessionConfig(turn_detection=TURNS)
    )
    return session, EventLog(session)


def reply_audio(log: EventLog, item_id: str) -> bytes:
    return b"".join(e.audio for e in log.of_type(AudioOut) if e.item_id == item_id)  # type: ignore[attr-defined]


async def test_conversation_echo_and_transcripts(emulator: GeminiEmulator) -> None:
    config = SessionConfig(
        instructions="You answer the phone.", voice="Puck", tools=(LOOKUP,), turn_detection=TURNS
    )
    session, log = await opened(emulator, config)
    assert session.input_format.rate_hz == RATE_IN
    assert session.output_format.rate_hz == RATE_OUT
    sent = utterance(440.0)
    feed(session, sent, FRAME_IN)
    await log.wait_for(lambda e: isinstance(e, TurnComplete))
    record = emulator.sessions[0]
    await eventually(lambda: len(record.audio_in) >= len(sent))  # last batches in flight
    await session.close()
    await asyncio.wait_for(log.ended.wait(), 2.0)

    audio = reply_audio(log, "gemini-turn-1")
    assert abs(dominant_hz(audio, RATE_OUT) - 440.0) < 5.0
    assert len(audio) >= 600 * RATE_OUT * 2 // 1000  # the whole tone came back, at 24 kHz
    assert Transcript("caller", "caller turn 1") in log.events
    assert Transcript("agent", "reply 1") in log.events
    assert log.of_type(TurnComplete) == [TurnComplete("gemini-turn-1")]
    assert record.audio_in == sent  # every byte, in order, through URL-safe base64
    setup = record.received[0]["setup"]
    assert setup["model"] == "models/gemini-3.8-live"
    assert setup["systemInstruction"]["parts"] == [{"text": "You answer the phone."}]
    voice = setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]
    assert voice == {"voiceName": "Puck"}
    declaration = setup["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"] == dict(LOOKUP.parameters)
    detection = setup["realtimeInputConfig"]["automaticActivityDetection"]
    assert detection["silenceDurationMs"] == 200
    assert setup["sessionResumption"] == {}
    # Audio goes in batches of at most 40 ms (1280 bytes at 16 kHz).
    sizes = [len(m["realtimeInput"]["audio"]["data"]) for m in record.received[1:]]
    assert max(sizes) <= (1280 + 2) * 4 // 3 + 4


async def test_tool_call_round_trip(emulator: GeminiEmulator) -> None:
    rule = ToolCallRule("lookup_order", {"order_id": "A-7"}, on_turn=1)
    emulator.script = replace(FAST, tool_calls=(rule,))
    session, log = await opened(emulator, SessionConfig(tools=(LOOKUP,), turn_detection=TURNS))
    feed(session, utterance(), FRAME_IN)
    call = await log.wait_for(lambda e: isinstance(e, ToolCall))
    assert isinstance(call, ToolCall)
    assert (call.name, dict(call.arguments)) == ("lookup_order", {"order_id": "A-7"})
    await session.send_tool_result(call.id, call.name, {"status": "shipped"})
    final = await log.wait_for(
        lambda e: isinstance(e, Transcript) and e.role == "agent" and e.final
    )
    assert final == Transcript("agent", 'reply 1 {"status":"shipped"}')
    responses = [m for m in emulator.sessions[0].received if "toolResponse" in m]
    assert responses == [
        {
            "toolResponse": {
                "functionResponses": [
                    {"id": call.id, "name": "lookup_order", "response": {"status": "shipped"}}
                ]
            }
        }
    ]
    await session.close()


async def test_caller_speech_interrupts_the_reply(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=3000, speed=1.0, playback_wait=True)
    session, log = await opened(emulator)
    feed(session, utterance(), FRAME_IN)
    await log.wait_for(lambda e: isinstance(e, AudioOut))
    feed(session, sine(300.0, 400, RATE_IN), FRAME_IN)
    event = await log.wait_for(lambda e: isinstance(e, Interrupted))
    assert event == Interrupted("gemini-turn-1")
    assert len(reply_audio(log, "gemini-turn-1")) < 3000 * 48  # cut short
    await session.truncate("gemini-turn-1", 120)  # a no-op for Gemini, must not fail
    await session.close()


async def test_go_away_reconnects_with_handle_and_caller_keeps_talking(
    emulator: GeminiEmulator,
) -> None:
    emulator.script = replace(FAST, go_away_after_turns=1, go_away_time_left_ms=300)
    session, log = await opened(emulator)
    feed(session, utterance(440.0), FRAME_IN)
    await log.wait_for(lambda e: isinstance(e, ProviderNotice) and "goAway" in e.message)
    # The caller keeps talking while the connection is replaced.
    second = utterance(660.0)
    feed(session, second, FRAME_IN)
    await log.wait_for(lambda e: e == Transcript("agent", "reply 2"), within_s=8.0)
    notices = [e.message for e in log.of_type(ProviderNotice)]
    assert notices[:3] == [  # (the resumed connection goes away after its own first reply)
        "gemini: goAway, time left 0.300s",
        "gemini: connection ended (goAway); reconnecting",
        "gemini: reconnected (resumed)",
    ]
    assert not log.of_type(ProviderFailed)
    assert abs(dominant_hz(reply_audio(log, "gemini-turn-2"), RATE_OUT) - 660.0) < 5.0
    first, resumed = emulator.sessions[0], emulator.sessions[1]
    handles = [
        m["sessionResumptionUpdate"]["newHandle"]
        for m in first.sent
        if "sessionResumptionUpdate" in m
    ]
    assert resumed.received[0]["setup"]["sessionResumption"] == {"handle": handles[-1]}
    # Every byte the caller said reaches the service exactly once, in order, across the
    # connections. Which connection carries a batch is timing: a last partial batch waits up to
    # 20 ms for a partner, so it may still be in flight after "reply 2", and, once the resumed
    # connection has gone away in its turn, it is carried by the next one.
    said = utterance(440.0) + second

    def heard() -> bytes:
        return b"".join(record.audio_in for record in emulator.sessions)

    await eventually(lambda: len(heard()) >= len(said))
    assert heard() == said  # nothing lost, nothing duplicated
    assert abs(dominant_hz(resumed.audio_in, RATE_IN) - 660.0) < 5.0  # heard after the resume
    await session.close()


async def test_dropped_socket_reconnects(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, drop_after_turns=1)
    session, log = await opened(emulator)
    feed(session, utterance(), FRAME_IN)
    await log.wait_for(lambda e: isinstance(e, ProviderNotice) and "reconnected" in e.message)
    feed(session, utterance(), FRAME_IN)
    await log.wait_for(lambda e: e == Transcript("agent", "reply 2"))
    assert "handle" in emulator.sessions[1].received[0]["setup"]["sessionResumption"]
    await session.close()


async def test_unknown_handle_falls_back_to_a_seeded_session(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, drop_after_turns=1)
    emulator.resumable = ResumptionHandles(ttl_s=0.0)  # every handle lapses at once
    session, log = await opened(emulator)
    feed(session, utterance(), FRAME_IN)
    await log.wait_for(lambda e: isinstance(e, ProviderNotice) and "reconnected" in e.message)
    assert log.of_type(ProviderNotice)[-1] == ProviderNotice(
        "gemini: reconnected (new session seeded with 2 turns)"
    )
    assert emulator.sessions[1].close_code == 1008  # resuming was refused
    seeded = emulator.sessions[2]
    await eventually(lambda: len(seeded.received) >= 2)
    assert seeded.received[0]["setup"]["sessionResumption"] == {}
    assert seeded.received[1] == {
        "clientContent": {
            "turns": [
                {"role": "user", "parts": [{"text": "caller turn 1"}]},
                {"role": "model", "parts": [{"text": "reply 1"}]},
            ],
            "turnComplete": False,
        }
    }
    await session.close()


async def test_greeting_makes_the_bot_speak_first(emulator: GeminiEmulator) -> None:
    config = SessionConfig(greeting="Welcome to Acme.", turn_detection=TURNS)
    session, log = await opened(emulator, config)
    await log.wait_for(lambda e: isinstance(e, TurnComplete))
    assert log.of_type(AudioOut)
    assert emulator.sessions[0].received[1] == {
        "clientContent": {
            "turns": [
                {
                    "role": "user",
                    "parts": [
                        {
                            "text": "The phone call has just been answered. Greet the caller "
                            'by saying: "Welcome to Acme."'
                        }
                    ],
                }
            ],
            "turnComplete": True,
        }
    }
    await session.close()


async def test_send_text_reaches_the_model(emulator: GeminiEmulator) -> None:
    session, log = await opened(emulator)
    await session.send_text("DTMF digit 5")
    await log.wait_for(lambda e: isinstance(e, TurnComplete))
    assert {"realtimeInput": {"text": "DTMF digit 5"}} in emulator.sessions[0].received
    await session.close()


async def test_gives_up_when_the_service_is_gone(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, drop_after_turns=1)
    session, log = await opened(emulator, max_attempts=2)
    await emulator.stop()
    feed(session, utterance(), FRAME_IN)  # nobody hears it: the socket is gone
    failed = await log.wait_for(lambda e: isinstance(e, ProviderFailed), within_s=8.0)
    assert isinstance(failed, ProviderFailed)
    assert failed.message.startswith("gemini: gave up reconnecting: gemini: cannot connect: ")
    await asyncio.wait_for(log.ended.wait(), 2.0)
    await session.close()


async def test_bad_key_is_a_quick_connect_error(emulator: GeminiEmulator) -> None:
    bad = GeminiProvider("wrong", base_url=emulator.base_url, ca_file=emulator.ca_file)
    started = time.monotonic()
    with pytest.raises(ProviderConnectError, match="API key not valid"):
        await bad.open(CALL, SessionConfig())
    assert time.monotonic() - started < 2.0


async def test_unreachable_port_is_a_quick_connect_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = GeminiProvider(KEY, base_url=f"https://127.0.0.1:{port}", connect_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ProviderConnectError, match="gemini: cannot connect"):
        await dead.open(CALL, SessionConfig())
    assert time.monotonic() - started < 2.5


async def test_close_is_idempotent_and_ends_events(emulator: GeminiEmulator) -> None:
    session, log = await opened(emulator)
    await session.close()
    await session.close()
    await asyncio.wait_for(log.ended.wait(), 1.0)
    session.send_audio(b"\x00" * FRAME_IN)  # dropped, no error
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), 2.0)


def test_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^gemini: no API key \(set GEMINI_API_KEY\)$"):
        GeminiProvider("")


def test_socket_options_reach_websockets() -> None:
    """google-genai forwards websockets' connect() options from async_client_args (private)."""
    options = GeminiProvider(KEY, connect_timeout_s=3.0)._client._api_client._websocket_ssl_ctx
    assert options["open_timeout"] == 3.0
    assert options["close_timeout"] == 2.0
    assert options["max_size"] == 16 * 1024 * 1024  # the SDK default is 1 MiB


async def test_an_sdk_whose_websocket_we_cannot_reach_is_read_through_its_receive(
    emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """gemini Rule 5's fallback: the SDK's own receive(), through a goAway and a resume."""

    def laid_out_differently(session: object) -> NoReturn:
        raise ProviderProtocolError("gemini: google-genai 9.0: AsyncSession._ws is NoneType")

    monkeypatch.setattr(gemini, "_frame_socket", laid_out_differently)
    monkeypatch.setattr(gemini, "_warned_no_frames", False)
    emulator.script = replace(FAST, go_away_after_turns=1, go_away_time_left_ms=300)
    session, log = await opened(emulator)
    feed(session, utterance(440.0), FRAME_IN)
    await log.wait_for(lambda e: isinstance(e, ProviderNotice) and "resumed" in e.message)
    feed(session, utterance(660.0), FRAME_IN)
    await log.wait_for(lambda e: e == Transcript("agent", "reply 2"), within_s=8.0)
    assert log.of_type(TurnComplete)[0] == TurnComplete("gemini-turn-1")
    assert abs(dominant_hz(reply_audio(log, "gemini-turn-2"), RATE_OUT) - 660.0) < 5.0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [  # once, though two connections were made
        "gemini: google-genai 9.0: AsyncSession._ws is NoneType; "
        "reading through the SDK's receive() instead (slower)"
    ]
    await session.close()
