"""OpenAIProvider (real openai SDK) against the OpenAI Realtime emulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from sipbot.domain import (
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
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
from sipbot.emulators.audio import decode, encode
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript, ToolCallRule
from sipbot.errors import ConfigError, ProviderConnectError
from sipbot.providers.openai import OpenAIProvider, OpenAISession
from tests.integration.conftest import (
    EventLog,
    FreezingProxy,
    dominant_hz,
    eventually,
    feed,
    silence,
    sine,
)

KEY = "sk-test-key"
FAST = EmulatorScript(speed=0, vad_silence_ms=200, api_keys=frozenset({KEY}))
TURNS = TurnDetection(silence_ms=200, prefix_ms=100)
WIDEBAND = CallInfo(call_id="call-w", codec="G722")
ULAW = CallInfo(call_id="call-u", codec="PCMU")
LOOKUP = ToolSpec(
    "lookup_order",
    "Find an order.",
    {"type": "object", "properties": {"order_id": {"type": "string"}}},
)


def utterance(fmt: AudioFormat, hz: float = 440.0, ms: int = 600) -> bytes:
    """A caller turn in ``fmt``: a tone, then silence enough for the VAD to end the turn."""
    pcm = sine(hz, ms, fmt.rate_hz) + silence(300, fmt.rate_hz)
    return encode(pcm, fmt)


@pytest.fixture
async def emulator() -> AsyncIterator[OpenAIEmulator]:
    async with OpenAIEmulator(FAST, port=0) as emu:
        yield emu


async def opened(
    emulator: OpenAIEmulator,
    config: SessionConfig | None = None,
    call: CallInfo = WIDEBAND,
    **kwargs: Any,
) -> tuple[OpenAISession, EventLog]:
    provider = OpenAIProvider(KEY, websocket_base_url=emulator.base_url, **kwargs)
    session = await provider.open(call, config or SessionConfig(turn_detection=TURNS))
    return session, EventLog(session)


def audio_of(log: EventLog, item_id: str) -> bytes:
    return b"".join(e.audio for e in log.of_type(AudioOut) if e.item_id == item_id)  # type: ignore[attr-defined]


def client_events(emulator: OpenAIEmulator, index: int, kind: str) -> list[dict[str, Any]]:
    return [e for e in emulator.sessions[index].received if e.get("type") == kind]


def server_errors(emulator: OpenAIEmulator) -> list[dict[str, Any]]:
    return [e for s in emulator.sessions for e in s.sent if e.get("type") == "error"]


async def test_conversation_pcm_24k(emulator: OpenAIEmulator) -> None:
    config = SessionConfig(
        instructions="You answer the phone.", voice="marin", tools=(LOOKUP,), turn_detection=TURNS
    )
    session, log = await opened(emulator, config)
    assert session.input_format == PCM16_24K
    assert session.output_format == PCM16_24K
    sent = utterance(PCM16_24K)
    feed(session, sent, PCM16_24K.frame_bytes)
    done = await log.wait_for(lambda e: isinstance(e, TurnComplete))
    assert isinstance(done, TurnComplete)
    assert done.item_id is not None
    audio = audio_of(log, done.item_id)
    assert abs(dominant_hz(audio, 24_000) - 440.0) < 5.0
    assert Transcript("caller", "caller turn 1") in log.events
    assert Transcript("agent", "reply 1") in log.events
    record = emulator.sessions[0]
    await eventually(lambda: len(record.audio_in) >= len(sent))
    assert record.audio_in == sent
    update = client_events(emulator, 0, "session.update")[0]["session"]
    assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert update["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
    }
    assert update["tools"][0]["name"] == "lookup_order"
    appends = client_events(emulator, 0, "input_audio_buffer.append")
    assert max(len(a["audio"]) for a in appends) <= 4 * (40 * 48 + 2) // 3  # <= 40 ms each
    assert server_errors(emulator) == []
    await session.close()


@pytest.mark.parametrize(
    ("call", "fmt"), [(ULAW, PCMU_8K), (CallInfo("call-a", codec="PCMA"), PCMA_8K)]
)
async def test_g711_passes_through_both_ways(
    emulator: OpenAIEmulator, call: CallInfo, fmt: AudioFormat
) -> None:
    session, log = await opened(emulator, call=call)
    assert session.input_format == fmt
    assert session.output_format == fmt
    sent = utterance(fmt, 500.0)
    feed(session, sent, fmt.frame_bytes)
    done = await log.wait_for(lambda e: isinstance(e, TurnComplete))
    assert isinstance(done, TurnComplete)
    assert done.item_id is not None
    reply = audio_of(log, done.item_id)
    assert abs(dominant_hz(decode(reply, fmt), 8_000) - 500.0) < 10.0
    wire_type = {"type": f"audio/{fmt.encoding}"}
    update = client_events(emulator, 0, "session.update")[0]["session"]
    assert update["audio"]["input"]["format"] == wire_type
    assert update["audio"]["output"]["format"] == wire_type
    record = emulator.sessions[0]
    await eventually(lambda: len(record.audio_in) >= len(sent))
    assert record.audio_in == sent  # the G.711 bytes themselves, untouched
    await session.close()


async def test_tool_call_round_trip(emulator: OpenAIEmulator) -> None:
    rule = ToolCallRule("lookup_order", {"order_id": "A-7"}, on_turn=1)
    emulator.script = replace(FAST, tool_calls=(rule,))
    session, log = await opened(emulator, SessionConfig(tools=(LOOKUP,), turn_detection=TURNS))
    feed(session, utterance(PCM16_24K), PCM16_24K.frame_bytes)
    call = await log.wait_for(lambda e: isinstance(e, ToolCall))
    assert isinstance(call, ToolCall)
    assert (call.name, dict(call.arguments)) == ("lookup_order", {"order_id": "A-7"})
    await session.send_tool_result(call.id, call.name, {"status": "shipped"})
    final = await log.wait_for(
        lambda e: isinstance(e, Transcript) and e.role == "agent" and e.final
    )
    assert final == Transcript("agent", 'reply 1 {"status":"shipped"}')
    outputs = [e["item"] for e in client_events(emulator, 0, "conversation.item.create")]
    assert outputs == [
        {"type": "function_call_output", "call_id": call.id, "output": '{"status": "shipped"}'}
    ]
    assert len(client_events(emulator, 0, "response.create")) == 1
    assert server_errors(emulator) == []
    await session.close()


async def test_barge_in_truncates_at_what_the_caller_heard(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=3000, speed=1.0)
    session, log = await opened(emulator)
    feed(session, utterance(PCM16_24K), PCM16_24K.frame_bytes)
    first = await log.wait_for(lambda e: isinstance(e, AudioOut))
    assert isinstance(first, AudioOut)
    await asyncio.sleep(0.3)
    feed(session, sine(300.0, 400, 24_000), PCM16_24K.frame_bytes)
    event = await log.wait_for(lambda e: isinstance(e, Interrupted))
    assert event == Interrupted(first.item_id)
    played_ms = 250  # what the pacer reports it sent of the item
    await session.truncate(first.item_id, played_ms)
    await session.truncate(first.item_id, 60_000)  # more than received: clamped, not refused
    truncated = await _next_server_event(emulator, "conversation.item.truncated")
    assert abs(truncated["audio_end_ms"] - played_ms) <= 20
    sent = client_events(emulator, 0, "conversation.item.truncate")
    assert [e["audio_end_ms"] for e in sent] == [played_ms]
    assert sent[0]["item_id"] == first.item_id
    assert sent[0]["content_index"] == 0
    assert server_errors(emulator) == []
    await session.close()


async def _next_server_event(emulator: OpenAIEmulator, kind: str) -> dict[str, Any]:
    record = emulator.sessions[0]
    await eventually(lambda: any(e.get("type") == kind for e in record.sent))
    return next(e for e in record.sent if e.get("type") == kind)


async def test_session_expired_opens_a_seeded_session(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, expire_after_turns=1)
    session, log = await opened(emulator)
    feed(session, utterance(PCM16_24K), PCM16_24K.frame_bytes)
    await log.wait_for(lambda e: isinstance(e, ProviderNotice) and "reconnected" in e.message)
    notices = [e.message for e in log.of_type(ProviderNotice)]
    assert notices == [
        "openai: error session_expired: Your session hit the maximum duration of 60 minutes.",
        "openai: connection ended (session expired); reconnecting",
        "openai: reconnected (new session seeded with 2 turns)",
    ]
    await eventually(lambda: len(client_events(emulator, 1, "conversation.item.create")) >= 2)
    items = [e["item"] for e in client_events(emulator, 1, "conversation.item.create")]
    assert items == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "caller turn 1"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "reply 1"}],
        },
    ]
    emulator.script = FAST
    emulator.sessions[1].script = FAST
    feed(session, utterance(PCM16_24K, 660.0), PCM16_24K.frame_bytes)
    done = await log.wait_for(lambda e: isinstance(e, TurnComplete), after=len(log.events))
    assert isinstance(done, TurnComplete)
    assert done.item_id is not None
    assert abs(dominant_hz(audio_of(log, done.item_id), 24_000) - 660.0) < 5.0
    assert not log.of_type(ProviderFailed)
    await session.close()


async def test_dropped_socket_reconnects(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, drop_after_turns=1)
    session, log = await opened(emulator)
    feed(session, utterance(PCM16_24K), PCM16_24K.frame_bytes)
    await log.wait_for(lambda e: isinstance(e, ProviderNotice) and "reconnected" in e.message)
    assert len(emulator.sessions) == 2
    assert client_events(emulator, 1, "session.update")
    await session.close()


async def test_greeting_and_text(emulator: OpenAIEmulator) -> None:
    config = SessionConfig(greeting="Welcome to Acme.", turn_detection=TURNS)
    session, log = await opened(emulator, config)
    await log.wait_for(lambda e: isinstance(e, TurnComplete))
    assert log.of_type(AudioOut)
    greeting = client_events(emulator, 0, "conversation.item.create")[0]["item"]
    assert greeting["content"] == [
        {
            "type": "input_text",
            "text": "The phone call has just been answered. Greet the caller by saying: "
            '"Welcome to Acme."',
        }
    ]
    count = len(log.events)
    await session.send_text("DTMF digit 5")
    await log.wait_for(lambda e: isinstance(e, TurnComplete), after=count)
    texts = [
        e["item"]["content"][0]["text"]
        for e in client_events(emulator, 0, "conversation.item.create")
    ]
    assert texts[-1] == "DTMF digit 5"
    assert len(client_events(emulator, 0, "response.create")) == 2
    assert server_errors(emulator) == []
    await session.close()


async def test_gives_up_when_the_service_is_gone(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, drop_after_turns=1)
    session, log = await opened(emulator, max_attempts=2)
    await emulator.stop()
    failed = await log.wait_for(lambda e: isinstance(e, ProviderFailed), within_s=8.0)
    assert isinstance(failed, ProviderFailed)
    assert failed.message.startswith("openai: gave up reconnecting: openai: cannot connect: ")
    await asyncio.wait_for(log.ended.wait(), 2.0)
    await session.close()


async def test_bad_key_is_a_quick_connect_error(emulator: OpenAIEmulator) -> None:
    bad = OpenAIProvider("sk-wrong", websocket_base_url=emulator.base_url)
    started = time.monotonic()
    with pytest.raises(ProviderConnectError, match="401"):
        await bad.open(WIDEBAND, SessionConfig())
    assert time.monotonic() - started < 2.0


async def test_unreachable_port_is_a_quick_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = OpenAIProvider(
        KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1", connect_timeout_s=2.0
    )
    started = time.monotonic()
    with pytest.raises(ProviderConnectError, match="openai: cannot connect"):
        await dead.open(WIDEBAND, SessionConfig())
    assert time.monotonic() - started < 2.5


async def test_close_is_idempotent_and_ends_events(emulator: OpenAIEmulator) -> None:
    session, log = await opened(emulator)
    await session.close()
    await session.close()
    await asyncio.wait_for(log.ended.wait(), 1.0)
    session.send_audio(b"\x00" * 960)
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), 2.0)


def test_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^openai: no API key \(set OPENAI_API_KEY\)$"):
        OpenAIProvider("")


async def test_close_is_bounded_when_the_service_hangs(emulator: OpenAIEmulator) -> None:
    async with FreezingProxy(emulator.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/v1"
        session = await OpenAIProvider(KEY, websocket_base_url=url).open(WIDEBAND, SessionConfig())
        log = EventLog(session)
        proxy.frozen.set()
        feed(session, utterance(PCM16_24K), PCM16_24K.frame_bytes)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await session.close()
        assert time.monotonic() - started < 3.0
        await asyncio.wait_for(log.ended.wait(), 1.0)
