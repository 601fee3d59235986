"""gemini_wire Rule 6 and gemini Rule 5: our parse of raw server frames against the SDK's own.

Every server message shape the emulator sends and the public API reference shows goes through
both paths: ``GeminiReceiver.receive_frame`` (the frame as it came off the websocket) and
``GeminiReceiver.receive`` of the ``LiveServerMessage`` google-genai builds from the same frame
(exactly as ``AsyncSession._receive`` does). Both must give the same events and the same
reconnection state after every frame, so a change in the service's messages that the SDK
follows shows up here. The last tests pin what the shell assumes of the SDK's session.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from google import genai
from google.genai import _live_converters as converters
from google.genai import errors as genai_errors
from google.genai import types
from google.genai.live import AsyncSession
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.uri import parse_uri

from sipbot.domain import ProviderEvent
from sipbot.emulators import gemini_wire as emulator
from sipbot.emulators.common import PendingCall
from sipbot.errors import ProviderProtocolError
from sipbot.providers import payload
from sipbot.providers.gemini import _frame_socket, _raise_closed
from sipbot.providers.gemini_wire import GeminiReceiver
from sipbot.providers.payload import b64decode

PCM = bytes(range(256)) * 19  # 4864 bytes: base64 with padding, and '+' and '/' in it
CHUNK = PCM[:4800]  # the emulator's default chunk: 100 ms of 24 kHz PCM16


def sdk_message(frame: str) -> types.LiveServerMessage:
    """``AsyncSession._receive`` of google-genai (Gemini API, not Vertex) for one text frame."""
    response = json.loads(frame) if frame else {}
    converted = converters._LiveServerMessage_from_mldev(response)
    if not converted and response:
        genai_errors.APIError.raise_error(response.get("code"), response, None)  # type: ignore[arg-type]
    return types.LiveServerMessage._from_response(
        response=converted, kwargs=types.LiveServerMessage().model_dump()
    )


def wire(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))  # as the emulator writes frames


def audio(pcm: bytes, encode: Any = base64.b64encode) -> dict[str, Any]:
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": encode(pcm).decode()}}
    return {"serverContent": {"modelTurn": {"role": "model", "parts": [part]}}}


def urlsafe_unpadded(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# What the emulator sends (sipbot/emulators/gemini_session.py and gemini_wire.py), in call order.
EMULATOR = [
    wire({"setupComplete": {}}),
    wire({"sessionResumptionUpdate": {"newHandle": "h-1", "resumable": True}}),
    wire({"serverContent": {"inputTranscription": {"text": "What time is it?"}}}),
    wire(emulator.audio_content(CHUNK)),
    wire(emulator.output_transcription("It is ")),
    wire(emulator.audio_content(CHUNK[:1000])),
    wire(emulator.output_transcription("noon.")),
    wire(emulator.text_content("It is noon.")),
    wire({"serverContent": {"generationComplete": True}}),
    wire(emulator.turn_complete(1200, 2000)),
    wire({"sessionResumptionUpdate": {"newHandle": "h-2", "resumable": True}}),
    wire(emulator.tool_call([PendingCall("fc-1", "lookup_order", {"order_id": "A_12"}, 1)])),
    wire({"toolCallCancellation": {"ids": ["fc-1"]}}),
    wire(emulator.audio_content(CHUNK)),
    wire(emulator.output_transcription("Sure")),
    wire({"serverContent": {"interrupted": True}}),
    wire(emulator.turn_complete(0, 0)),
    wire(emulator.audio_content(CHUNK)),
    wire({"goAway": {"timeLeft": emulator.duration(250)}}),
]

# Shapes from the public reference (BidiGenerateContentServerMessage and what it contains) that
# the emulator does not send, each on its own receiver.
DOCS = {
    "setup-complete-with-session-id": [{"setupComplete": {"sessionId": "s-1"}}],
    "several-audio-parts-and-text": [
        {
            "serverContent": {
                "modelTurn": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking", "thought": True},
                        {"inlineData": {"mimeType": "audio/pcm", "data": "AAE="}},
                        {"inlineData": {"mimeType": "audio/pcm", "data": ""}},
                        {"inlineData": {"mimeType": "audio/pcm"}},
                        {"text": "hello"},
                        {"inlineData": {"mimeType": "audio/pcm", "data": "AgM="}},
                    ],
                }
            }
        }
    ],
    "url-safe-unpadded-audio": [audio(PCM, urlsafe_unpadded)],
    "all-content-fields-at-once": [
        {
            "serverContent": {
                "inputTranscription": {"text": "hi", "finished": True},
                "modelTurn": audio(PCM)["serverContent"]["modelTurn"],
                "outputTranscription": {"text": "Hello", "finished": True},
                "generationComplete": True,
                "turnComplete": True,
                "turnCompleteReason": "TURN_COMPLETE_REASON_UNSPECIFIED",
                "waitingForInput": True,
                "groundingMetadata": {"webSearchQueries": ["time now"]},
            },
            "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 5},
        }
    ],
    "caller-transcript-finished-then-tool-call": [
        {"serverContent": {"inputTranscription": {"text": "order "}}},
        {"serverContent": {"inputTranscription": {"text": "A12", "finished": True}}},
        {"serverContent": {"inputTranscription": {"text": "please"}}},
        {"toolCall": {"functionCalls": [{"id": "a", "name": "f"}, {"name": "g", "args": {}}]}},
        {"toolCall": {}},
    ],
    "interrupted-without-audio": [
        {"serverContent": {"outputTranscription": {"text": "Well"}}},
        {"serverContent": {"interrupted": True, "turnComplete": True}},
    ],
    "resumption-not-resumable-and-index": [
        {"sessionResumptionUpdate": {"resumable": False}},
        {"sessionResumptionUpdate": {"newHandle": "h", "resumable": False}},
        {"sessionResumptionUpdate": {"newHandle": "h9", "resumable": True}},
        {"sessionResumptionUpdate": {"lastConsumedClientMessageIndex": "12"}},
    ],
    "go-away-without-time": [{"goAway": {}}],
    "usage-metadata-alone": [
        {
            "usageMetadata": {
                "promptTokenCount": 10,
                "responseTokenCount": 4,
                "totalTokenCount": 14,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 10}],
            }
        }
    ],
    "voice-activity": [{"voiceActivity": {"type": "ACTIVITY_START"}}],
    "cancellation-of-several": [{"toolCallCancellation": {"ids": ["x", "y"]}}],
    "null-fields": [{"serverContent": {"modelTurn": None, "turnComplete": None}}],
}


def state(receiver: GeminiReceiver) -> tuple[Any, ...]:
    return (
        receiver.resumption_handle,
        receiver.go_away,
        receiver.generation_complete,
        receiver.in_turn,
    )


def assert_same(frames: list[str]) -> list[ProviderEvent]:
    """Feed ``frames`` to both paths; equal events and state after each; our events."""
    ours, sdks = GeminiReceiver(), GeminiReceiver()
    seen: list[ProviderEvent] = []
    for frame in frames:
        events = ours.receive_frame(frame.encode())
        assert events == sdks.receive(sdk_message(frame)), frame[:200]
        assert state(ours) == state(sdks), frame[:200]
        seen += events
    assert ours.connection_lost() == sdks.connection_lost()
    return seen


def test_every_emulator_frame_parses_as_the_sdk_does() -> None:
    events = assert_same(EMULATOR)
    kinds = {type(event).__name__ for event in events}
    assert kinds == {
        "Transcript",
        "AudioOut",
        "TurnComplete",
        "ToolCall",
        "ToolCallCancelled",
        "Interrupted",
        "ProviderNotice",
    }


@pytest.mark.parametrize("frames", list(DOCS.values()), ids=list(DOCS))
def test_every_documented_shape_parses_as_the_sdk_does(frames: list[dict[str, Any]]) -> None:
    assert_same([wire(frame) for frame in frames])


def test_audio_is_decoded_whole_and_text_frames_too() -> None:
    receiver = GeminiReceiver()
    (event,) = receiver.receive_frame(wire(audio(PCM, urlsafe_unpadded)))
    assert event.audio == PCM  # type: ignore[union-attr]
    assert receiver.receive_frame("") == []  # the SDK reads an empty frame as no message


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("{not json", "gemini: server frame is not JSON"),
        ('["serverContent"]', "gemini: server frame is no server message: "),
        ('{"error": {"code": 500}}', "gemini: server frame is no server message: "),
        ('{"serverContent": null}', "gemini: server frame is no server message: "),
        ('{"serverContent": {"modelTurn": {"parts": 5}}}', "gemini: malformed server message"),
        ('{"serverContent": {"outputTranscription": {"text": 5}}}', "expected a string, got int"),
        (
            wire({"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "A!"}}]}}}),
            "base64",
        ),
    ],
)
def test_what_the_sdk_refuses_raises_provider_protocol_error(frame: str, message: str) -> None:
    receiver = GeminiReceiver()
    with pytest.raises(ProviderProtocolError, match=message.replace("(", r"\(")[:40]):
        receiver.receive_frame(frame)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK raises a kind per case
        sdk_message(frame)
    assert receiver.receive_frame(wire(audio(b"\x01\x00"))) != []  # still usable


def test_base64_without_pydantic_core_decodes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [base64.b64encode(PCM), base64.urlsafe_b64encode(PCM), urlsafe_unpadded(PCM[:5])]
    fast = [b64decode(text.decode()) for text in texts]
    monkeypatch.setattr(payload, "_BYTES", None)
    assert [b64decode(text.decode()) for text in texts] == fast == [PCM, PCM, PCM[:5]]
    with pytest.raises(ValueError, match="base64"):
        b64decode("A!")


# --------------------------------------------------------------------------- the SDK's session


def sdk_session(websocket: Any) -> AsyncSession:
    client = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url="https://127.0.0.1:1", api_version="v1beta"),
    )
    return AsyncSession(api_client=client.aio._api_client, websocket=websocket)


def test_the_sdk_session_reads_a_websockets_connection_we_can_reach() -> None:
    async def connection() -> ClientConnection:  # it takes the running loop; no I/O here
        return ClientConnection(ClientProtocol(parse_uri("wss://127.0.0.1:1/")))

    websocket = asyncio.run(connection())
    assert _frame_socket(sdk_session(websocket)) is websocket
    with pytest.raises(ProviderProtocolError, match=r"AsyncSession\._ws is object, not a web"):
        _frame_socket(sdk_session(object()))


class _ClosedSocket:
    """A websocket whose peer has closed: what the SDK's ``_receive`` reads."""

    def __init__(self, closed: ConnectionClosed) -> None:
        self.closed = closed

    async def recv(self, decode: bool | None = None) -> bytes:
        raise self.closed


@pytest.mark.parametrize(
    "closed",
    [
        ConnectionClosed(Close(1009, "message too big"), Close(1009, "message too big"), True),
        ConnectionClosed(None, None),
        ConnectionClosed(Close(1011, "internal error"), None),
    ],
    ids=["1009", "no-close-frame", "1011"],
)
def test_a_closed_socket_raises_what_the_sdk_raises(closed: ConnectionClosed) -> None:
    with pytest.raises(genai_errors.APIError) as sdk:
        asyncio.run(sdk_session(_ClosedSocket(closed))._receive())
    with pytest.raises(genai_errors.APIError) as ours:
        _raise_closed(closed)
    assert (type(ours.value), str(ours.value)) == (type(sdk.value), str(sdk.value))
