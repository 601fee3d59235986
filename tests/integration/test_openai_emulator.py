"""The OpenAI Realtime (GA) emulator driven by the real openai SDK (never mocked), on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from sipbot.domain import PCMA_8K, PCMU_8K
from sipbot.emulators.audio import decode, encode, tone
from sipbot.emulators.cli import main
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript, ReplyFault, ToolCallRule

pytestmark = pytest.mark.timeout(30)

FAST = EmulatorScript(speed=0.0)
RATE = 24_000
WAIT_S = 5.0
SERVER_EVENT: TypeAdapter[RealtimeServerEvent] = TypeAdapter(RealtimeServerEvent)


def chirp(ms: int, rate: int, f0: float = 200.0, f1: float = 2000.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    k = (f1 - f0) / (ms / 1000)
    return (np.sin(2 * np.pi * (f0 * t + k * t * t / 2)) * 0.3 * 32767).astype("<i2").tobytes()


def silence(ms: int, rate: int = RATE) -> bytes:
    return bytes(2 * rate * ms // 1000)


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def peak_correlation(signal: bytes, reference: bytes) -> float:
    a, b = samples(signal), samples(reference)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    xcorr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    return float(np.max(np.abs(xcorr)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def dominant_hz(pcm: bytes, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(samples(pcm)))) * rate / (len(pcm) // 2))


@pytest.fixture
async def emulator() -> AsyncIterator[OpenAIEmulator]:
    async with OpenAIEmulator(FAST) as emulator:
        yield emulator
    # Every event the emulator sent is one the SDK's own models accept, with a unique id.
    ids = []
    for session in emulator.sessions:
        for event in session.sent:
            SERVER_EVENT.validate_python(event)
            ids.append(event["event_id"])
    assert len(ids) == len(set(ids))


def connect(emulator: OpenAIEmulator, key: str = "sk-test-key") -> Any:
    client = AsyncOpenAI(api_key=key, websocket_base_url=emulator.base_url)
    return client.realtime.connect(model="gpt-realtime")


async def events_until(
    connection: AsyncRealtimeConnection,
    until: Callable[[Any], bool],
    limit_s: float = WAIT_S,
) -> list[Any]:
    """Events up to and including the first one ``until`` accepts."""
    events: list[Any] = []

    async def run() -> None:
        async for event in connection:
            events.append(event)
            if until(event):
                return
        raise AssertionError("connection ended")

    await asyncio.wait_for(run(), limit_s)
    return events


def of_type(kind: str) -> Callable[[Any], bool]:
    return lambda event: event.type == kind


async def append(connection: AsyncRealtimeConnection, audio: bytes, chunk: int = 960) -> None:
    for i in range(0, len(audio), chunk):
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(audio[i : i + chunk]).decode()
        )


def audio_of(events: list[Any]) -> bytes:
    return b"".join(
        base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
    )


def types_of(events: list[Any]) -> list[str]:
    return [e.type for e in events if e.type != "response.output_audio.delta"]


# --------------------------------------------------------------------------- session


async def test_session_created_then_update_merges(emulator: OpenAIEmulator) -> None:
    async with connect(emulator) as connection:
        created = await events_until(connection, of_type("session.created"))
        assert created[0].session.model == "gpt-realtime"
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": "be brief",
                "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}},
            }
        )
        updated = (await events_until(connection, of_type("session.updated")))[-1].session
    assert updated.instructions == "be brief"
    assert updated.audio.output.format.type == "audio/pcmu"
    assert updated.audio.output.voice == "marin"
    assert updated.audio.input.format.type == "audio/pcm"  # untouched side kept
    assert updated.audio.input.turn_detection.type == "server_vad"


@pytest.mark.parametrize(
    ("session", "code", "param", "message"),
    [
        (
            {"instructions": "x"},
            "missing_required_parameter",
            "session.type",
            "Missing required parameter: 'session.type'.",
        ),
        (
            {"type": "chat"},
            "invalid_value",
            "session.type",
            "Invalid value: 'chat'. Supported values are: 'realtime' and 'transcription'.",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/g722"}}}},
            "invalid_value",
            "session.audio.input.format.type",
            "Invalid value: 'audio/g722'. Supported values are: 'audio/pcm', 'audio/pcmu' and "
            "'audio/pcma'.",
        ),
        (
            {
                "type": "realtime",
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}},
            },
            "invalid_value",
            "session.audio.output.format.rate",
            "Invalid value: '16000'. Supported values are: '24000'.",
        ),
        (
            {"type": "realtime", "voice": "alloy"},
            "unknown_parameter",
            "session.voice",
            "Unknown parameter: 'session.voice'.",
        ),
    ],
)
async def test_invalid_session_update_is_an_error_event(
    emulator: OpenAIEmulator, session: dict[str, Any], code: str, param: str, message: str
) -> None:
    async with connect(emulator) as connection:
        await connection.send({"type": "session.update", "event_id": "evt_1", "session": session})
        error = (await events_until(connection, of_type("error")))[-1].error
    assert (error.type, error.code, error.param, error.message, error.event_id) == (
        "invalid_request_error",
        code,
        param,
        message,
        "evt_1",
    )


# --------------------------------------------------------------------------- turns


async def test_vad_turn_is_answered_with_the_callers_own_audio(emulator: OpenAIEmulator) -> None:
    spoken = chirp(500, RATE)
    async with connect(emulator) as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
            }
        )
        await append(connection, silence(200) + spoken + silence(700))
        events = await events_until(connection, of_type("response.done"))
    assert types_of(events) == [
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    by_type = {e.type: e for e in events}
    started = by_type["input_audio_buffer.speech_started"]
    stopped = by_type["input_audio_buffer.speech_stopped"]
    assert started.item_id == stopped.item_id == by_type["input_audio_buffer.committed"].item_id
    assert started.audio_start_ms == 0  # 200 ms of silence < 300 ms prefix padding
    assert stopped.audio_end_ms == 200 + 500 + 500  # speech end + 500 ms of silence
    transcript = by_type["conversation.item.input_audio_transcription.completed"].transcript
    assert transcript == "caller turn 1"
    assert by_type["response.output_audio_transcript.done"].transcript == "reply 1"
    done = by_type["response.done"].response
    assert (done.status, done.output[0].status) == ("completed", "completed")
    reply = audio_of(events)
    assert len(reply) == (200 + 500) * 48
    assert peak_correlation(reply, spoken) > 0.99
    assert emulator.sessions[0].audio_in == silence(200) + spoken + silence(700)


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K])
async def test_g711_sessions_echo_in_g711_at_8_khz(emulator: OpenAIEmulator, fmt: Any) -> None:
    kind = {"pcmu": "audio/pcmu", "pcma": "audio/pcma"}[fmt.encoding]
    spoken = chirp(500, 8000, f1=3000.0)
    wire_audio = encode(silence(100, 8000) + spoken + silence(700, 8000), fmt)
    async with connect(emulator) as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": kind}},
                    "output": {"format": {"type": kind}},
                },
            }
        )
        await append(connection, wire_audio, chunk=160)
        events = await events_until(connection, of_type("response.done"))
    reply = audio_of(events)
    assert len(reply) == (100 + 500) * 8  # one byte a sample: no resampling on the way
    assert peak_correlation(decode(reply, fmt), spoken) > 0.99
    assert emulator.sessions[0].audio_in == wire_audio


async def test_tone_reply_has_the_scripted_frequency(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", tone_hz=800.0, reply_ms=250)
    async with connect(emulator) as connection:
        await append(connection, chirp(300, RATE) + silence(600))
        reply = audio_of(await events_until(connection, of_type("response.done")))
    assert reply == tone(800.0, 250, RATE)
    assert dominant_hz(reply, RATE) == pytest.approx(800.0, abs=5.0)


async def test_manual_commit_and_response_create(emulator: OpenAIEmulator) -> None:
    spoken = chirp(300, RATE)
    async with connect(emulator) as connection:
        await connection.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await connection.input_audio_buffer.commit(event_id="evt_early")
        error = (await events_until(connection, of_type("error")))[-1].error
        assert error.code == "input_audio_buffer_commit_empty"
        assert error.event_id == "evt_early"
        await append(connection, spoken)
        await connection.input_audio_buffer.commit()
        committed = await events_until(connection, of_type("conversation.item.done"))
        assert "input_audio_buffer.speech_started" not in types_of(committed)
        await connection.response.create()
        reply = audio_of(await events_until(connection, of_type("response.done")))
    assert reply == spoken


async def test_text_output_modality(emulator: OpenAIEmulator) -> None:
    async with connect(emulator) as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await append(connection, chirp(300, RATE) + silence(600))
        events = await events_until(connection, of_type("response.done"))
    assert not audio_of(events)
    assert [e.text for e in events if e.type == "response.output_text.done"] == ["reply 1"]
    assert events[-1].response.output[0].content[0].text == "reply 1"


async def test_greeting_and_no_greeting(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=100, reply_text="hi {turn}")
    async with connect(emulator) as connection:
        await connection.response.create()
        events = await events_until(connection, of_type("response.done"))
        assert len(audio_of(events)) == 100 * 48
        assert events[-1].response.output[0].content[0].transcript == "hi 0"
        emulator.sessions[0].script = replace(emulator.script, greet=False)
        await connection.response.create()
        done = (await events_until(connection, of_type("response.done")))[-1].response
    assert (done.status, done.output) == ("completed", [])


# --------------------------------------------------------------------------- tools


async def test_function_call_round_trip(emulator: OpenAIEmulator) -> None:
    rule = ToolCallRule("get_weather", {"city": "Paris"}, on_turn=1)
    emulator.script = replace(FAST, reply="tone", reply_ms=100, tool_calls=(rule,))
    async with connect(emulator) as connection:
        await append(connection, chirp(300, RATE) + silence(600))
        events = await events_until(connection, of_type("response.done"))
        assert not audio_of(events)
        args = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert (args.name, json.loads(args.arguments)) == ("get_weather", {"city": "Paris"})
        await connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": "call_unknown", "output": "{}"}
        )
        error = (await events_until(connection, of_type("error")))[-1].error
        assert error.message == "Tool call ID 'call_unknown' not found in conversation."
        await connection.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": args.call_id,
                "output": '{"temp_c": 21}',
            }
        )
        await connection.response.create()
        reply = await events_until(connection, of_type("response.done"))
    transcript = next(e for e in reply if e.type == "response.output_audio_transcript.done")
    assert transcript.transcript == 'reply 1 {"temp_c":21}'
    assert len(audio_of(reply)) == 100 * 48


# --------------------------------------------------------------------------- barge-in


async def test_speech_cancels_the_response_and_truncate_is_checked(
    emulator: OpenAIEmulator,
) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=3000, speed=1.0, chunk_ms=100)
    async with connect(emulator) as connection:
        await append(connection, chirp(300, RATE) + silence(600))
        first = await events_until(connection, of_type("response.output_audio.delta"))
        item_id = first[-1].item_id
        await append(connection, chirp(200, RATE))
        events = await events_until(connection, of_type("response.done"))
        done = events[-1].response
        assert (done.status, done.status_details.reason) == ("cancelled", "turn_detected")
        assert done.output[0].status == "incomplete"
        assert "input_audio_buffer.speech_started" in types_of(events)
        sent_ms = len(audio_of(first + events)) // 48
        assert 100 <= sent_ms < 1000
        await connection.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=sent_ms + 1, event_id="evt_t"
        )
        error = (await events_until(connection, of_type("error")))[-1].error
        assert (error.code, error.param, error.event_id) == (
            "invalid_value",
            "audio_end_ms",
            "evt_t",
        )
        assert (
            error.message == f"Audio content of {sent_ms}ms is already shorter than {sent_ms + 1}ms"
        )
        await connection.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=sent_ms - 20
        )
        truncated = (await events_until(connection, of_type("conversation.item.truncated")))[-1]
    assert (truncated.item_id, truncated.audio_end_ms) == (item_id, sent_ms - 20)


async def test_client_cancel_and_its_errors(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=3000, speed=1.0)
    async with connect(emulator) as connection:
        await connection.response.cancel(event_id="evt_c")
        error = (await events_until(connection, of_type("error")))[-1].error
        assert error.code == "response_cancel_not_active"
        await connection.response.create()
        created = (await events_until(connection, of_type("response.created")))[-1]
        await connection.response.create()
        error = (await events_until(connection, of_type("error")))[-1].error
        assert error.code == "conversation_already_has_active_response"
        assert created.response.id in error.message
        await connection.response.cancel()
        done = (await events_until(connection, of_type("response.done")))[-1].response
    assert (done.status, done.status_details.reason) == ("cancelled", "client_cancelled")


async def test_truncate_of_an_unknown_item_is_an_error(emulator: OpenAIEmulator) -> None:
    async with connect(emulator) as connection:
        await connection.conversation.item.truncate(item_id="nope", content_index=0, audio_end_ms=0)
        error = (await events_until(connection, of_type("error")))[-1].error
    assert error.message == "Item with item_id 'nope' not found."


# --------------------------------------------------------------------------- scripted ends


async def test_session_expires_after_the_scripted_turns(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=100, expire_after_turns=1)
    async with connect(emulator) as connection:
        await append(connection, chirp(300, RATE) + silence(600))
        events = await events_until(connection, of_type("error"))
        assert events[-1].error.code == "session_expired"
        rest = [event async for event in connection]
    assert rest == []
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), WAIT_S)
    assert emulator.sessions[0].close_code == 1000


async def test_error_after_turns_keeps_the_session(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=100, error_after_turns=1)
    async with connect(emulator) as connection:
        await append(connection, chirp(300, RATE) + silence(600))
        error = (await events_until(connection, of_type("error")))[-1].error
        assert (error.type, error.code) == ("server_error", "server_error")
        await append(connection, chirp(300, RATE) + silence(600))
        await events_until(connection, of_type("response.done"))


async def test_drop_closes_without_a_close_frame(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=100, drop_after_turns=1)
    async with connect(emulator) as connection:
        await append(connection, chirp(300, RATE) + silence(600))
        with pytest.raises(websockets.ConnectionClosedError):
            await events_until(connection, lambda event: False)


async def test_turns_per_call_continue_across_reconnections_so_a_later_fault_fires(
    emulator: OpenAIEmulator,
) -> None:
    emulator.script = replace(
        FAST,
        reply="tone",
        reply_ms=300,
        turns_per_call=True,
        reply_faults=(ReplyFault("drop", on_turn=2),),
    )
    turn = chirp(300, RATE) + silence(600)

    async def open_call(instructions: str) -> Any:
        manager = connect(emulator)
        connection = await manager.__aenter__()
        await connection.session.update(session={"type": "realtime", "instructions": instructions})
        await events_until(connection, of_type("session.updated"))
        return manager, connection

    def transcript(events: list[Any]) -> str:
        return str(by_kind(events, "response.output_audio_transcript.done").transcript)

    def by_kind(events: list[Any], kind: str) -> Any:
        return next(e for e in events if e.type == kind)

    manager, first = await open_call("call A")
    await append(first, turn)
    assert transcript(await events_until(first, of_type("response.done"))) == "reply 1"
    await append(first, turn)
    with pytest.raises(websockets.ConnectionClosedError):  # turn 2 drops mid-reply
        await events_until(first, lambda event: False)
    await manager.__aexit__(None, None, None)
    # the same call reconnects: its count goes on (turn 3, no second drop); another call's
    # count starts at 1
    for instructions, expected in (("call A", "reply 3"), ("call B", "reply 1")):
        manager, connection = await open_call(instructions)
        await append(connection, turn)
        events = await events_until(connection, of_type("response.done"))
        assert transcript(events) == expected
        await manager.__aexit__(None, None, None)
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), WAIT_S)
    assert emulator.sessions[0].close_code == 1006  # the drop: no close frame
    assert [s.close_code for s in emulator.sessions[1:]] == [1000, 1000]


# --------------------------------------------------------------------------- refusals


async def test_bad_key_is_refused_with_http_401(emulator: OpenAIEmulator) -> None:
    emulator.script = replace(FAST, api_keys=frozenset({"sk-good"}))
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(emulator, key="sk-bad-key-1234"):
            pass
    assert refused.value.response.status_code == 401
    body = json.loads(refused.value.response.body)
    assert body["error"]["code"] == "invalid_api_key"
    assert "sk-********1234" in body["error"]["message"]
    async with connect(emulator, key="sk-good") as connection:
        await events_until(connection, of_type("session.created"))


@pytest.mark.parametrize(("path", "status"), [("/v1/realtime", 400), ("/v1/chat?model=m", 404)])
async def test_bad_handshakes(emulator: OpenAIEmulator, path: str, status: int) -> None:
    uri = f"ws://{emulator.host}:{emulator.port}{path}"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(uri, additional_headers={"Authorization": "Bearer k"})
    assert refused.value.response.status_code == status


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("{nope", "invalid_json", None),
        ('{"event_id": "e1"}', "missing_required_parameter", "type"),
        ('{"type": "session.delete"}', "invalid_value", "type"),
        ('{"type": "input_audio_buffer.append", "audio": "a*b"}', "invalid_value", "audio"),
        (
            '{"type": "conversation.item.create", "item": {"type": "x"}}',
            "invalid_value",
            "item.type",
        ),
    ],
)
async def test_malformed_events_are_error_events(
    emulator: OpenAIEmulator, frame: str, code: str, param: str | None
) -> None:
    async with connect(emulator) as connection:
        await events_until(connection, of_type("session.created"))
        await connection.send_raw(frame)
        error = (await events_until(connection, of_type("error")))[-1].error
    assert (error.code, error.param) == (code, param)


async def test_url_safe_base64_is_accepted(emulator: OpenAIEmulator) -> None:
    pcm = b"\xfb\xff" * 480
    async with connect(emulator) as connection:
        await connection.send_raw(
            json.dumps(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.urlsafe_b64encode(pcm).decode(),
                }
            )
        )
        await connection.input_audio_buffer.clear()
        await events_until(connection, of_type("input_audio_buffer.cleared"))
    assert emulator.sessions[0].audio_in == pcm


# --------------------------------------------------------------------------- sipbot emulate


async def test_cli_serves_records_and_stops_on_sigterm(tmp_path: Path) -> None:
    record = tmp_path / "frames.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipbot.emulators.cli",
        "openai",
        "--port",
        "0",
        "--set",
        "reply=tone",
        "--set",
        "reply_ms=100",
        "--record",
        str(record),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        url = line.split()[2]
        assert line.startswith("emulator ready ws://127.0.0.1:")
        client = AsyncOpenAI(api_key="k", websocket_base_url=url)
        async with client.realtime.connect(model="gpt-realtime") as connection:
            await connection.response.create()
            reply = audio_of(await events_until(connection, of_type("response.done")))
        assert len(reply) == 100 * 48
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)
    assert code == 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    deltas = [
        line["message"]["delta"]
        for line in lines
        if line["message"].get("type") == "response.output_audio.delta"
    ]
    assert deltas == [{"audio_bytes": 4800}]


def test_cli_refuses_a_bad_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "bad.yaml"
    script.write_text("reply: echo\nspeed: fast\n")
    assert main(["openai", "--port", "0", "--script", str(script)]) == 1
    assert capsys.readouterr().err == (
        f'sipbot emulate: {script}:2: speed: expected a number, got "fast"\n'
    )
