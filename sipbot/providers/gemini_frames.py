"""Gemini Live server frames read straight from the websocket into :class:`ServerFields`.

Pure and synchronous, no ``google.genai``: the JSON is parsed once (pydantic-core's parser),
each audio payload base64-decoded once (:func:`payload.b64decode`), and only the fields
:class:`~sipbot.providers.gemini_wire.GeminiReceiver` uses are read (gemini_wire Rule 6). The
SDK's own parse reads the same frames into ``LiveServerMessage`` objects (≈ 20 times the CPU);
tests/unit/test_gemini_parse.py holds the two to the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_core import from_json

from sipbot.domain import ToolCall
from sipbot.errors import ProviderProtocolError
from sipbot.providers.payload import b64decode

# Top-level fields of BidiGenerateContentServerMessage (google-genai's _LiveServerMessage_from_mldev
# reads these; a frame with none of them is an error there, and here).
SERVER_FIELDS = (
    "serverContent",
    "setupComplete",
    "toolCall",
    "toolCallCancellation",
    "usageMetadata",
    "goAway",
    "sessionResumptionUpdate",
    "voiceActivityDetectionSignal",
    "voiceActivity",
)
EXCERPT_CHARS = 200  # of a bad frame, in the error


class ServerFields:
    """What the receiver uses of one server message, however it was read (gemini_wire Rule 6).

    Class attributes are the defaults, so a reader sets only what the message has.
    """

    caller: str | None = None  # a piece of the caller's transcript
    caller_finished = False
    audio: Sequence[bytes] = ()  # the non-empty audio chunks of the model turn, in order
    agent: str | None = None  # a piece of the agent's transcript
    interrupted = False
    turn_complete = False
    generation_complete = False
    calls: Sequence[ToolCall] | None = None  # None: no toolCall
    cancelled: tuple[str, ...] | None = None  # None: no toolCallCancellation
    handle: str | None = None  # a new resumable handle
    go_away = False
    time_left: str | None = None


def read_frame(frame: str | bytes) -> ServerFields:
    """The fields of a raw server frame (gemini_wire Rule 6).

    Raises:
        ProviderProtocolError: not JSON, no server message field, or a field of the wrong type.
    """
    if not frame:
        return ServerFields()  # the SDK reads an empty frame as an empty message
    try:
        message = from_json(frame)
    except ValueError as error:
        raise ProviderProtocolError(
            f"gemini: server frame is not JSON ({error}): {_excerpt(frame)}"
        ) from error
    if not isinstance(message, dict) or (
        message.get("serverContent") is None
        and not any(message.get(name) is not None for name in SERVER_FIELDS)
    ):
        raise ProviderProtocolError(f"gemini: server frame is no server message: {_excerpt(frame)}")
    try:
        return _read_dict(message)
    except (AttributeError, TypeError, ValueError) as error:
        raise ProviderProtocolError(
            f"gemini: malformed server message ({error}): {_excerpt(frame)}"
        ) from error


def _read_dict(message: dict[str, Any]) -> ServerFields:
    fields = ServerFields()
    content = message.get("serverContent")
    if content is not None:
        _read_content(content, fields)
    tool = message.get("toolCall")
    if tool is not None:
        fields.calls = [
            ToolCall(
                _text(call.get("id")) or "",
                _text(call.get("name")) or "",
                dict(call.get("args") or {}),
            )
            for call in tool.get("functionCalls") or ()
        ]
    cancel = message.get("toolCallCancellation")
    if cancel is not None:
        ids = cancel.get("ids") or ()
        if not isinstance(ids, list | tuple):
            raise TypeError(f"expected a list of ids, got {type(ids).__name__}")
        fields.cancelled = tuple(_text(id_) or "" for id_ in ids)
    update = message.get("sessionResumptionUpdate")
    if update is not None and update.get("resumable") and update.get("newHandle"):
        fields.handle = _text(update["newHandle"])
    away = message.get("goAway")
    if away is not None:
        fields.go_away = True
        fields.time_left = _text(away.get("timeLeft"))
    return fields


def _read_content(content: dict[str, Any], fields: ServerFields) -> None:
    heard = content.get("inputTranscription")
    if heard is not None:
        fields.caller = _text(heard.get("text"))
        fields.caller_finished = bool(heard.get("finished"))
    turn = content.get("modelTurn")
    if turn is not None:
        fields.audio = [
            b64decode(blob["data"])
            for part in turn.get("parts") or ()
            if (blob := part.get("inlineData")) is not None and blob.get("data")
        ]
    said = content.get("outputTranscription")
    if said is not None:
        fields.agent = _text(said.get("text"))
    fields.interrupted = bool(content.get("interrupted"))
    fields.turn_complete = bool(content.get("turnComplete"))
    fields.generation_complete = bool(content.get("generationComplete"))


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _excerpt(frame: str | bytes) -> str:
    text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    return repr(text[:EXCERPT_CHARS]) + ("..." if len(text) > EXCERPT_CHARS else "")
