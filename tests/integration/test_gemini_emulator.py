"""The Gemini Live emulator driven by the real google-genai SDK (never mocked), on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import numpy as np
import pytest
import websockets
from google import genai
from google.genai import errors, types

from sipbot.emulators.audio import tone
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.script import EmulatorScript, ToolCallRule
from sipbot.prompts import convert_rate

pytestmark = pytest.mark.timeout(30)

FAST = EmulatorScript(speed=0.0, playback_wait=False)
RATE_IN = 16_000
RATE_OUT = 24_000
WAIT_S = 5.0


def chirp(ms: int, rate: int, f0: float = 200.0, f1: float = 2000.0) -> bytes:
    """A linear chirp: distinctive enough that correlation finds it exactly."""
    t = np.arange(rate * ms // 1000) / rate
    k = (f1 - f0) / (ms / 1000)
    return (np.sin(2 * np.pi * (f0 * t + k * t * t / 2)) * 0.3 * 32767).astype("<i2").tobytes()


def silence(ms: int, rate: int = RATE_IN) -> bytes:
    return bytes(2 * rate * ms // 1000)


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def peak_correlation(signal: bytes, reference: bytes) -> float:
    """Normalised cross-correlation peak of ``reference`` within ``signal`` (1.0: identical)."""
    a, b = samples(signal), samples(reference)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    xcorr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    return float(np.max(np.abs(xcorr)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def dominant_hz(pcm: bytes, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples(pcm)))
    return float(np.argmax(spectrum) * rate / (len(pcm) // 2))


@pytest.fixture
async def emulator() -> AsyncIterator[GeminiEmulator]:
    async with GeminiEmulator(FAST) as emulator:
        yield emulator
    # Every frame the emulator sent is one the SDK's own model accepts (unknown keys refused).
    for session in emulator.sessions:
        for message in session.sent:
            types.LiveServerMessage.model_validate(message)


def client_for(emulator: GeminiEmulator, key: str = "test-key") -> genai.Client:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    options = types.HttpOptions(
        base_url=emulator.base_url, api_version="v1beta", async_client_args={"ssl": context}
    )
    return genai.Client(api_key=key, http_options=options)


def config(**extra: object) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        **extra,  # type: ignore[arg-type]
    )


async def send_audio(session: genai.live.AsyncSession, pcm: bytes, chunk: int = 640) -> None:
    for i in range(0, len(pcm), chunk):
        blob = types.Blob(data=pcm[i : i + chunk], mime_type="audio/pcm;rate=16000")
        await session.send_realtime_input(audio=blob)


async def collect(
    session: genai.live.AsyncSession,
    until: Callable[[types.LiveServerMessage], bool],
    limit_s: float = WAIT_S,
) -> list[types.LiveServerMessage]:
    """Messages up to and including the first one ``until`` accepts."""
    messages: list[types.LiveServerMessage] = []

    async def run() -> None:
        while True:
            async for message in session.receive():
                messages.append(message)
                if until(message):
                    return

    await asyncio.wait_for(run(), limit_s)
    return messages


def turn_complete(message: types.LiveServerMessage) -> bool:
    return bool(message.server_content and message.server_content.turn_complete)


def audio_of(messages: list[types.LiveServerMessage]) -> bytes:
    return b"".join(m.data for m in messages if m.data)


def output_text(messages: list[types.LiveServerMessage]) -> str:
    return "".join(
        m.server_content.output_transcription.text or ""
        for m in messages
        if m.server_content and m.server_content.output_transcription
    )


# --------------------------------------------------------------------------- setup


async def test_setup_is_answered_and_recorded_in_camel_case(emulator: GeminiEmulator) -> None:
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather",
                description="weather",
                parameters_json_schema={
                    "type": "object",
                    "properties": {"city_name": {"type": "string"}},
                },
            )
        ]
    )
    voice = types.SpeechConfig(
        voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Puck")
        )
    )
    live = config(system_instruction="be brief", tools=[tool], speech_config=voice)
    async with client_for(emulator).aio.live.connect(model="gemini-live", config=live) as s:
        assert s._ws is not None
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), WAIT_S)
    setup = emulator.sessions[0].received[0]["setup"]
    assert setup["model"] == "models/gemini-live"
    assert setup["generationConfig"]["speechConfig"] == {
        "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}
    }
    declaration = setup["tools"][0]["functionDeclarations"][0]
    # User data keeps its own keys: the schema's property name stays snake_case.
    assert declaration["parametersJsonSchema"]["properties"] == {"city_name": {"type": "string"}}
    assert emulator.sessions[0].sent[0] == {"setupComplete": {}}


# --------------------------------------------------------------------------- turns


async def test_caller_turn_is_answered_with_the_callers_own_audio(
    emulator: GeminiEmulator,
) -> None:
    spoken = chirp(500, RATE_IN)
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, silence(200) + spoken + silence(700))
        messages = await collect(s, turn_complete)
    reply = audio_of(messages)
    assert peak_correlation(reply, convert_rate(spoken, RATE_IN, RATE_OUT)) > 0.95
    # 300 ms of prefix padding (200 ms of silence was available) + the 500 ms chirp.
    assert len(reply) == (200 + 500) * 48
    inputs = [
        m.server_content.input_transcription.text
        for m in messages
        if m.server_content and m.server_content.input_transcription
    ]
    assert inputs == ["caller turn 1"]
    assert output_text(messages) == "reply 1"
    assert messages[-1].usage_metadata is not None
    assert emulator.sessions[0].audio_in == silence(200) + spoken + silence(700)


async def test_tone_reply_has_the_scripted_frequency_and_length(
    emulator: GeminiEmulator,
) -> None:
    emulator.script = replace(FAST, reply="tone", tone_hz=1000.0, reply_ms=300)
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        reply = audio_of(await collect(s, turn_complete))
    assert len(reply) == 300 * 48
    assert dominant_hz(reply, RATE_OUT) == pytest.approx(1000.0, abs=5.0)


async def test_url_safe_base64_audio_is_decoded_exactly(emulator: GeminiEmulator) -> None:
    # 0xfb 0xff encodes to "-_" in URL-safe base64 ("+/" in standard base64).
    pcm = b"\xfb\xff" * 300
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, pcm, chunk=600)
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), WAIT_S)
    data = emulator.sessions[0].received[1]["realtimeInput"]["audio"]["data"]
    assert "-" in data
    assert "_" in data
    assert emulator.sessions[0].audio_in == pcm


async def test_text_turn_is_a_greeting_only_when_greet_is_set(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=200, reply_text="hello {turn}")
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await s.send_realtime_input(text="Greet the caller.")
        messages = await collect(s, turn_complete)
        assert len(audio_of(messages)) == 200 * 48
        assert output_text(messages) == "hello 0"
        emulator.sessions[0].script = replace(emulator.script, greet=False)
        await s.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="x")]))
        with pytest.raises(TimeoutError):
            await collect(s, turn_complete, limit_s=0.5)


async def test_text_modality_replies_with_text(emulator: GeminiEmulator) -> None:
    live = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with client_for(emulator).aio.live.connect(model="m", config=live) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        messages = await collect(s, turn_complete)
    assert [m.text for m in messages if m.text] == ["reply 1"]
    assert not audio_of(messages)


async def test_manual_activity_marks_the_turn(emulator: GeminiEmulator) -> None:
    manual = types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
    )
    spoken = chirp(400, RATE_IN)
    async with client_for(emulator).aio.live.connect(
        model="m", config=config(realtime_input_config=manual)
    ) as s:
        await s.send_realtime_input(activity_start=types.ActivityStart())
        await send_audio(s, spoken)
        await s.send_realtime_input(activity_end=types.ActivityEnd())
        reply = audio_of(await collect(s, turn_complete))
    assert reply == convert_rate(spoken, RATE_IN, RATE_OUT)


async def test_playback_wait_delays_turn_complete_by_the_audio_length(
    emulator: GeminiEmulator,
) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=400, playback_wait=True)
    loop = asyncio.get_running_loop()
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        first = await collect(s, lambda m: m.data is not None)
        first_at = loop.time()
        await collect(s, turn_complete)
        waited = loop.time() - first_at
    assert first
    assert 0.35 <= waited <= 1.0


# --------------------------------------------------------------------------- tools


async def test_tool_call_round_trip(emulator: GeminiEmulator) -> None:
    rule = ToolCallRule("get_weather", {"city": "Paris"}, on_turn=1)
    emulator.script = replace(FAST, reply="tone", reply_ms=200, tool_calls=(rule,))
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        messages = await collect(s, lambda m: m.tool_call is not None)
        assert not audio_of(messages)
        tool_call = messages[-1].tool_call
        assert tool_call is not None
        assert tool_call.function_calls is not None
        call = tool_call.function_calls[0]
        assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
        await s.send_tool_response(
            function_responses=[
                types.FunctionResponse(id=call.id, name=call.name, response={"temp_c": 21})
            ]
        )
        reply = await collect(s, turn_complete)
    assert output_text(reply) == 'reply 1 {"temp_c":21}'
    assert len(audio_of(reply)) == 200 * 48
    received = emulator.sessions[0].received[-1]["toolResponse"]["functionResponses"][0]
    assert received == {"id": call.id, "name": "get_weather", "response": {"temp_c": 21}}


async def test_speech_during_a_pending_tool_call_cancels_it(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, tool_calls=(ToolCallRule("slow_tool"),))
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        calls = await collect(s, lambda m: m.tool_call is not None)
        await send_audio(s, chirp(200, RATE_IN))
        cancelled = await collect(s, lambda m: m.tool_call_cancellation is not None)
    call = calls[-1].tool_call.function_calls[0]  # type: ignore[union-attr,index]
    assert cancelled[-1].tool_call_cancellation.ids == [call.id]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- barge-in


async def test_caller_speech_interrupts_a_reply(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=3000, speed=1.0, chunk_ms=100)
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        await collect(s, lambda m: m.data is not None)
        await send_audio(s, chirp(200, RATE_IN))
        messages = await collect(s, turn_complete)
    flags = [m.server_content.interrupted for m in messages if m.server_content]
    assert True in flags
    assert not any(m.server_content and m.server_content.generation_complete for m in messages)
    chunks = [m for m in emulator.sessions[0].sent if "modelTurn" in m.get("serverContent", {})]
    assert 1 <= len(chunks) < 10  # cut short: 30 chunks were planned


async def test_no_interruption_when_the_script_says_so(emulator: GeminiEmulator) -> None:
    emulator.script = replace(
        FAST, reply="tone", reply_ms=600, speed=2.0, interrupt_on_speech=False
    )
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        await collect(s, lambda m: m.data is not None)
        await send_audio(s, chirp(200, RATE_IN))
        messages = await collect(s, turn_complete)
    assert not any(m.server_content and m.server_content.interrupted for m in messages)


# --------------------------------------------------------------------------- continuity


async def test_go_away_then_resumption_continues_the_conversation(
    emulator: GeminiEmulator,
) -> None:
    emulator.script = replace(FAST, go_away_after_turns=1, go_away_time_left_ms=300)
    live = config(session_resumption=types.SessionResumptionConfig())
    client = client_for(emulator)
    async with client.aio.live.connect(model="m", config=live) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        messages = await collect(s, lambda m: m.go_away is not None)
        handles = [
            m.session_resumption_update.new_handle for m in messages if m.session_resumption_update
        ]
        assert messages[-1].go_away.time_left == "0.300s"  # type: ignore[union-attr]
        with pytest.raises(errors.APIError) as closed:
            await collect(s, lambda m: False)
    assert closed.value.code == 1011
    resumed = config(session_resumption=types.SessionResumptionConfig(handle=handles[-1]))
    async with client.aio.live.connect(model="m", config=resumed) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        messages = await collect(s, turn_complete)
    inputs = [
        m.server_content.input_transcription.text
        for m in messages
        if m.server_content and m.server_content.input_transcription
    ]
    assert inputs == ["caller turn 2"]
    assert output_text(messages) == "reply 2"
    setup = emulator.sessions[1].received[0]["setup"]
    assert setup["sessionResumption"] == {"handle": handles[-1]}


async def test_a_reply_cut_by_the_connection_end_continues_after_resumption(
    emulator: GeminiEmulator,
) -> None:
    emulator.script = replace(FAST, reply="tone", reply_ms=1000, speed=1.0, chunk_ms=100)
    live = config(session_resumption=types.SessionResumptionConfig())
    client = client_for(emulator)
    async with client.aio.live.connect(model="m", config=live) as s:
        first = await collect(s, lambda m: m.session_resumption_update is not None)
        handle = first[-1].session_resumption_update.new_handle  # type: ignore[union-attr]
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        await collect(s, lambda m: m.data is not None)
        # The client leaves in the middle of the reply.
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), WAIT_S)
    sent_before = audio_sent(emulator.sessions[0].sent)
    assert 0 < len(sent_before) < 1000 * 48
    emulator.script = replace(emulator.script, speed=0.0)
    resumed = config(session_resumption=types.SessionResumptionConfig(handle=handle))
    async with client.aio.live.connect(model="m", config=resumed) as s:
        rest = await collect(s, turn_complete)
    assert sent_before + audio_of(rest) == tone(440.0, 1000, RATE_OUT)


def audio_sent(sent: list[dict[str, object]]) -> bytes:
    """The reply audio in the server frames of a session, decoded."""
    out = b""
    for message in sent:
        content = message.get("serverContent")
        if isinstance(content, dict) and "modelTurn" in content:
            out += base64.b64decode(content["modelTurn"]["parts"][0]["inlineData"]["data"])
    return out


async def test_unknown_resumption_handle_is_refused(emulator: GeminiEmulator) -> None:
    resumed = config(session_resumption=types.SessionResumptionConfig(handle="nope"))
    with pytest.raises(errors.APIError) as refused:
        async with client_for(emulator).aio.live.connect(model="m", config=resumed):
            pass
    assert refused.value.code == 1008


async def test_drop_closes_without_a_close_frame(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, reply_ms=100, reply="tone", drop_after_turns=1)
    async with client_for(emulator).aio.live.connect(model="m", config=config()) as s:
        await send_audio(s, chirp(300, RATE_IN) + silence(600))
        await collect(s, turn_complete)
        with pytest.raises(errors.APIError) as dropped:
            await collect(s, lambda m: False)
    assert dropped.value.code == 1006


# --------------------------------------------------------------------------- errors


async def test_bad_key_is_refused_with_1008(emulator: GeminiEmulator) -> None:
    emulator.script = replace(FAST, api_keys=frozenset({"good"}))
    with pytest.raises(errors.APIError) as refused:
        async with client_for(emulator, key="bad").aio.live.connect(model="m", config=config()):
            pass
    assert refused.value.code == 1008
    assert "API key not valid" in str(refused.value)
    async with client_for(emulator, key="good").aio.live.connect(model="m", config=config()):
        pass


async def raw_connect(emulator: GeminiEmulator, frames: list[str]) -> websockets.ClientConnection:
    uri = emulator.base_url.replace("https", "wss") + (
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )
    context = ssl.create_default_context(cafile=emulator.ca_file)
    ws = await websockets.connect(uri, ssl=context, additional_headers={"x-goog-api-key": "k"})
    for frame in frames:
        await ws.send(frame)
    return ws


SETUP = json.dumps({"setup": {"model": "models/m"}})
MIME = "audio/pcm;rate=16000"


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (["{nope"], "Invalid JSON payload received. Unexpected token."),
        (
            [json.dumps({"realtime_input": {}})],
            "Invalid request: the first message must be a setup message.",
        ),
        (
            [json.dumps({"setup": {"model": "m"}})],
            "Invalid value at 'setup.model': \"m\" is not of the form 'models/*'.",
        ),
        (
            [SETUP, json.dumps({"realtimeInput": {"audioChunk": {}}})],
            "Invalid JSON payload received. Unknown name \"audio_chunk\" at 'realtime_input': "
            "Cannot find field.",
        ),
        (
            [
                SETUP,
                json.dumps({"realtimeInput": {"audio": {"data": "a*b", "mimeType": "audio/pcm"}}}),
            ],
            "Invalid value at 'realtime_input.audio.data' (TYPE_BYTES), Base64 decoding failed "
            'for "a*b"',
        ),
        (
            [SETUP, json.dumps({"toolResponse": {"functionResponses": [{"name": "f"}]}})],
            "Invalid value at 'tool_response.function_responses[0].id': a function response "
            "needs an id.",
        ),
        ([SETUP, SETUP], "Invalid request: setup must be sent only once, first."),
    ],
)
async def test_malformed_frames_close_with_1007(
    emulator: GeminiEmulator, frames: list[str], reason: str
) -> None:
    ws = await raw_connect(emulator, frames)
    await asyncio.wait_for(ws.wait_closed(), WAIT_S)
    assert (ws.close_code, ws.close_reason) == (1007, reason)


async def test_wrong_path_is_404(emulator: GeminiEmulator) -> None:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    uri = emulator.base_url.replace("https", "wss") + (
        "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
    )
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(uri, ssl=context)
    assert refused.value.response.status_code == 404


async def test_recording_summarises_audio() -> None:
    record = io.StringIO()
    async with GeminiEmulator(replace(FAST, reply_ms=100, reply="tone"), record=record) as emu:
        async with client_for(emu).aio.live.connect(model="m", config=config()) as s:
            await send_audio(s, chirp(300, RATE_IN) + silence(600), chunk=3200)
            await collect(s, turn_complete)
        await asyncio.wait_for(emu.sessions[0].closed.wait(), WAIT_S)
    lines = [json.loads(line) for line in record.getvalue().splitlines()]
    assert lines[0]["message"]["event"] == "connect"
    assert lines[-1]["message"] == {"event": "close", "code": 1000}
    audio_in = [
        line["message"]["realtimeInput"]["audio"]["data"]
        for line in lines
        if line["direction"] == "in" and "realtimeInput" in line["message"]
    ]
    assert audio_in[0] == {"audio_bytes": 3200}
    out = [line["message"] for line in lines if line["direction"] == "out"]
    parts = [
        m["serverContent"]["modelTurn"]["parts"][0]
        for m in out
        if "modelTurn" in m.get("serverContent", {})
    ]
    assert parts[0]["inlineData"] == {
        "mimeType": "audio/pcm;rate=24000",
        "data": {"audio_bytes": 4800},
    }


async def test_cli_announces_url_and_certificate() -> None:
    overrides = ["reply=tone", "reply_ms=100", "speed=0", "playback_wait=false"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipbot.emulators.cli",
        "gemini",
        "--port",
        "0",
        *[arg for override in overrides for arg in ("--set", override)],
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        _, _, url, ca = line.split()
        assert url.startswith("https://127.0.0.1:")
        assert ca.startswith("ca_file=")
        context = ssl.create_default_context(cafile=ca.removeprefix("ca_file="))
        options = types.HttpOptions(
            base_url=url, api_version="v1beta", async_client_args={"ssl": context}
        )
        client = genai.Client(api_key="k", http_options=options)
        async with client.aio.live.connect(model="m", config=config()) as s:
            await s.send_realtime_input(text="hello")
            reply = audio_of(await collect(s, turn_complete))
        assert len(reply) == 100 * 48
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)
    assert code == 0
    # The certificate directory (with the private key) is gone.
    assert not await asyncio.to_thread(os.path.exists, ca.removeprefix("ca_file="))
