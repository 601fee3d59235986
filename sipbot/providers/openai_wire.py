"""OpenAI Realtime (GA), the wire schema: client events out, server events in (sans-I/O).

Pure and synchronous; never imports ``openai``. Client events are plain dicts shaped like the
SDK's ``RealtimeClientEventParam``; server events are the decoded JSON dicts.
:class:`OpenAIConversation` is the state the protocol needs on our side, websockets-style: feed
it server events with :meth:`~OpenAIConversation.receive`, ask it for things (a response, a tool
result, a truncation), and send what :meth:`~OpenAIConversation.data_to_send` returns.

Rules of :class:`OpenAIConversation`:

* Rule 1: at most one ``response.create`` is outstanding. A response asked for while one is
  being made (or already asked for) is sent after the current ``response.done``; a request the
  server refuses with ``conversation_already_has_active_response`` is retried the same way.
* Rule 2: the results of a response's tool calls go back together: ``response.create`` follows
  the last missing ``function_call_output``, also when a result came before the response that
  called the tools was done (the response asked for then waits for the others' results).
* Rule 3: a truncation is clamped to the audio received for the item, so the server never
  rejects it; one that would cut nothing (all received audio was heard) is not sent.
* Rule 4: ``input_audio_buffer.speech_started`` is a barge-in (:class:`Interrupted`) only while
  agent audio may still be playing: a response is producing audio, or the audio received so
  far, played back to back from when it arrived, has not run out (plus ``PLAYOUT_MARGIN_S``).
  Audio of the interrupted item still arriving afterwards is dropped (but counts for Rule 3).
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic_core import from_json

from sipbot.domain import (
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
    AudioOut,
    Interrupted,
    ProviderEvent,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    Transcript,
    TurnComplete,
)
from sipbot.errors import ProviderProtocolError
from sipbot.providers.continuity import greeting_prompt
from sipbot.providers.payload import b64decode

TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"
PLAYOUT_MARGIN_S = 0.5  # pacer pre-buffer and jitter: agent audio may play this long after
ITEMS_REMEMBERED = 16  # audio items whose received length is kept for truncation
KNOWN_OPTIONS = frozenset({"session", "transcription_model", "vad", "eagerness", "noise_reduction"})
ERROR_SESSION_EXPIRED = "session_expired"
ERROR_ACTIVE_RESPONSE = "conversation_already_has_active_response"


# --------------------------------------------------------------------------- what we receive


def decode_server_event(data: bytes | str) -> dict[str, Any]:
    """One server frame as the event object it must be.

    Raises:
        ProviderProtocolError: the frame is not JSON, or not a JSON object.
    """
    try:
        # pydantic-core's parser is ≈ 4x faster than json's on an audio delta; for a frame it
        # refuses, json parses again: the same result for valid JSON, json's wording otherwise.
        event = from_json(data)
    except ValueError:
        event = _json_loads(data)
    if not isinstance(event, dict):
        kind = type(event).__name__
        raise ProviderProtocolError(f"openai: a server frame is a JSON {kind}, not an object")
    return event


def _json_loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for bytes
        raise ProviderProtocolError(f"openai: a server frame is not JSON: {error}") from None
    except RecursionError:  # [[[[... a few thousand deep
        raise ProviderProtocolError("openai: a server frame is nested too deep") from None


# --------------------------------------------------------------------------- what we send


def audio_format_for(codec: str) -> AudioFormat:
    """The session audio format for a call's RTP codec: G.711 passes through, else PCM16 24 kHz."""
    upper = codec.upper()
    if upper == "PCMU":
        return PCMU_8K
    if upper == "PCMA":
        return PCMA_8K
    return PCM16_24K


def wire_format(audio_format: AudioFormat) -> dict[str, Any]:
    """``audio.input.format`` / ``audio.output.format`` for ``audio_format``."""
    if audio_format == PCMU_8K:
        return {"type": "audio/pcmu"}
    if audio_format == PCMA_8K:
        return {"type": "audio/pcma"}
    if audio_format == PCM16_24K:
        return {"type": "audio/pcm", "rate": 24_000}
    raise ValueError(f"OpenAI Realtime has no audio format {audio_format}")


def session_update(config: SessionConfig, audio_format: AudioFormat) -> dict[str, Any]:
    """The ``session.update`` event for ``config`` with audio in ``audio_format`` both ways.

    ``config.temperature`` has no GA equivalent and is not sent. ``options``: ``vad``
    (``"server_vad"`` default, or ``"semantic_vad"`` with ``eagerness``), ``transcription_model``,
    ``noise_reduction`` (``"near_field"``/``"far_field"``), and ``session`` (a mapping merged into
    the session object last, recursively).
    """
    session: dict[str, Any] = {"type": "realtime", "output_modalities": ["audio"]}
    if config.instructions:
        session["instructions"] = config.instructions
    session["audio"] = _audio(config, audio_format)
    if config.tools:
        session["tools"] = [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            }
            for tool in config.tools
        ]
        session["tool_choice"] = "auto"
    extra = config.options.get("session")
    if isinstance(extra, Mapping):
        _merge(session, extra)
    return {"type": "session.update", "session": session}


def _audio(config: SessionConfig, audio_format: AudioFormat) -> dict[str, Any]:
    options = config.options
    transcription: dict[str, Any] = {
        "model": options.get("transcription_model", TRANSCRIPTION_MODEL)
    }
    if config.language:
        transcription["language"] = config.language.split("-")[0].lower()
    audio_input: dict[str, Any] = {
        "format": wire_format(audio_format),
        "transcription": transcription,
        "turn_detection": _turn_detection(config),
    }
    if options.get("noise_reduction"):
        audio_input["noise_reduction"] = {"type": options["noise_reduction"]}
    audio_output: dict[str, Any] = {"format": wire_format(audio_format)}
    if config.voice:
        audio_output["voice"] = config.voice
    return {"input": audio_input, "output": audio_output}


def _turn_detection(config: SessionConfig) -> dict[str, Any]:
    turn = config.turn_detection
    if config.options.get("vad") == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": config.options.get("eagerness", "auto"),
            "create_response": True,
            "interrupt_response": turn.barge_in,
        }
    return {
        "type": "server_vad",
        "threshold": turn.threshold,
        "prefix_padding_ms": turn.prefix_ms,
        "silence_duration_ms": turn.silence_ms,
        "create_response": True,
        "interrupt_response": turn.barge_in,
    }


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        current = into.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge(current, value)
        else:
            into[key] = value


def unknown_options(options: Mapping[str, Any]) -> list[str]:
    """Keys of ``options`` this adapter does not understand (for a warning)."""
    return sorted(key for key in options if key not in KNOWN_OPTIONS)


def append_audio(audio: bytes) -> str:
    """The ``input_audio_buffer.append`` event, serialised (the hot path: no dict, no dumps)."""
    data = base64.b64encode(audio).decode("ascii")
    return '{"type":"input_audio_buffer.append","audio":"' + data + '"}'


def message_item(role: str, text: str) -> dict[str, Any]:
    """``conversation.item.create`` of a text message (``role`` ``caller`` or ``agent``)."""
    if role == "caller":
        item_role, content_type = "user", "input_text"
    else:
        item_role, content_type = "assistant", "output_text"
    item = {"type": "message", "role": item_role, "content": [{"type": content_type, "text": text}]}
    return {"type": "conversation.item.create", "item": item}


def history_items(history: Sequence[Transcript]) -> list[dict[str, Any]]:
    """``conversation.item.create`` events replaying ``history`` into a new session."""
    return [message_item(entry.role, entry.text) for entry in history]


# --------------------------------------------------------------------------- the conversation


class OpenAIConversation:
    """Our side of an OpenAI Realtime session (see the Rules in the module docstring).

    Args:
        audio_format: the session's audio format (sets bytes per ms of received audio).
        barge_in: whether caller speech over the agent interrupts it.

    Attributes:
        expired: the server ended the session (``session_expired``): open a new one.
        session_updated: the server accepted our ``session.update``.
        error: the last error event's ``(code, message)``, or None.
    """

    def __init__(self, audio_format: AudioFormat, *, barge_in: bool = True) -> None:
        self._bytes_per_ms = audio_format.bytes_per_ms
        self._barge_in = barge_in
        self.expired = False
        self.session_updated = False
        self.error: tuple[str, str] | None = None
        self._outbox: list[dict[str, Any]] = []
        self._active = False  # a response is being made (created, not done)
        self._requested = False  # we sent response.create, response.created not seen yet
        self._wanted = False  # a response is due after the current one
        self._pending_calls: set[str] = set()
        self._received: OrderedDict[str, int] = OrderedDict()  # item id -> audio bytes
        self._response_item: str | None = None  # audio item of the current response
        self._last_item: str | None = None  # audio item that may still be playing
        self._cut_item: str | None = None  # item interrupted by the caller
        self._cut_streaming = False  # ... while the server was still sending its audio
        self._playing_until = 0.0

    @property
    def waiting_for_results(self) -> bool:
        """Tool calls of the last response still await their results (Rule 2)."""
        return bool(self._pending_calls)

    # ----------------------------------------------------------------- requests

    def data_to_send(self) -> list[dict[str, Any]]:
        """Client events due now, in order (and forget them)."""
        out, self._outbox = self._outbox, []
        return out

    def send(self, event: dict[str, Any]) -> None:
        """Queue a client event that needs no bookkeeping (e.g. a history item)."""
        self._outbox.append(event)

    def request_response(self) -> None:
        """Ask the model to respond, now or after the current response (Rule 1)."""
        if self._active or self._requested:
            self._wanted = True
            return
        self._requested = True
        self._wanted = False
        self._outbox.append({"type": "response.create"})

    def caller_text(self, text: str) -> None:
        """Tell the model ``text`` as the caller, and have it respond."""
        self._outbox.append(message_item("caller", text))
        self.request_response()

    def greet(self, greeting: str) -> None:
        """Make the model open the call with ``greeting``."""
        self.caller_text(greeting_prompt(greeting))

    def tool_result(self, call_id: str, result: Any) -> bool:
        """Answer tool call ``call_id`` (Rule 2); False if no such call is waiting."""
        if call_id not in self._pending_calls:
            return False
        self._pending_calls.discard(call_id)
        output = result if isinstance(result, str) else json.dumps(result)
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        self._outbox.append({"type": "conversation.item.create", "item": item})
        if not self._pending_calls:
            self.request_response()
        return True

    def truncate(self, item_id: str, played_ms: int) -> None:
        """Report that the caller heard ``played_ms`` of ``item_id`` (Rule 3)."""
        received = self._received.get(item_id)
        if received is None:
            return
        received_ms = received // self._bytes_per_ms
        end_ms = max(0, min(played_ms, received_ms))
        # Everything received was heard: nothing to cut, unless the server was still making
        # the item (its conversation then holds audio that was in flight or never sent).
        still_made = item_id == self._cut_item and self._cut_streaming
        if end_ms >= received_ms and not still_made:
            return
        if item_id == self._cut_item:
            self._cut_streaming = False  # reported: a later report only cuts deeper
        self._outbox.append(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )

    # ----------------------------------------------------------------- server events

    def receive(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        """The events a server event means (``now``: monotonic seconds, for Rule 4)."""
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            return self._audio(event, now)
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        return handler(self, event, now) if handler is not None else []

    def connection_lost(self) -> list[ProviderEvent]:
        """Forget the lost session's state; returns the end of a response cut short."""
        events: list[ProviderEvent] = []
        if self._active:
            events.append(TurnComplete(self._response_item))
        self._active = self._requested = self._wanted = False
        self._pending_calls.clear()
        self._received.clear()
        self._response_item = None
        self.expired = False
        self.session_updated = False
        return events

    def _audio(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        delta = event.get("delta", "")
        try:
            audio = b64decode(delta) if isinstance(delta, str) else None
        except ValueError:  # pydantic-core's ValidationError, binascii.Error
            audio = None
        if audio is None:
            raise ProviderProtocolError(f"openai: audio delta is not base64: {delta!r:.80}")
        item_id = str(event.get("item_id", ""))
        received = self._received.pop(item_id, 0) + len(audio)
        self._received[item_id] = received
        while len(self._received) > ITEMS_REMEMBERED:
            self._received.popitem(last=False)
        if item_id == self._cut_item:
            return []  # in flight when the caller barged in: never to be heard
        self._response_item = self._last_item = item_id
        duration_s = len(audio) / self._bytes_per_ms / 1000.0
        self._playing_until = max(self._playing_until, now) + duration_s
        return [AudioOut(audio, item_id)]

    def _speech_started(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        item = self._last_item
        if not self._barge_in or item is None:
            return []
        streaming = self._active and self._response_item == item
        playing = streaming or now < self._playing_until + PLAYOUT_MARGIN_S
        self._last_item = None
        if not playing:
            return []
        self._cut_item, self._cut_streaming = item, streaming
        return [Interrupted(item)]

    def _response_created(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        self._active = True
        self._requested = False
        self._response_item = None
        return []

    def _response_done(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        response = _member(event, "response")
        status = response.get("status")
        events: list[ProviderEvent] = []
        if status == "failed":
            details = json.dumps(response.get("status_details"))
            events.append(ProviderNotice(f"openai: response failed: {details}"))
        item = self._response_item if status in ("completed", "incomplete") else None
        events.append(TurnComplete(item))
        self._active = False
        self._response_item = None
        if self._wanted and not self._requested and not self._pending_calls:  # Rule 2
            self.request_response()
        return events

    def _function_call(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        call_id = str(event.get("call_id", ""))
        raw = event.get("arguments") or "{}"
        try:
            arguments = json.loads(raw)
        except ValueError:
            arguments = None
        self._pending_calls.add(call_id)
        name = str(event.get("name", ""))
        if not isinstance(arguments, dict):
            notice = ProviderNotice(f"openai: tool call {name} has bad arguments: {raw!r}")
            return [notice, ToolCall(call_id, name, {})]
        return [ToolCall(call_id, name, arguments)]

    def _error(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        error = _member(event, "error")
        code = str(error.get("code") or error.get("type") or "error")
        message = str(error.get("message", ""))
        self.error = (code, message)
        if code == ERROR_SESSION_EXPIRED:
            self.expired = True
        elif code == ERROR_ACTIVE_RESPONSE:
            # Ours was refused (a VAD response may have taken its response.created for ours).
            self._requested = False
            self._wanted = True
            if not self._active:
                self.request_response()
        return [ProviderNotice(f"openai: error {code}: {message}")]

    def _session_updated(self, event: Mapping[str, Any], now: float) -> list[ProviderEvent]:
        self.session_updated = True
        return []


_Handler = Callable[[OpenAIConversation, Mapping[str, Any], float], list[ProviderEvent]]


def _member(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The object ``event[name]`` (empty when absent or null).

    Raises:
        ProviderProtocolError: it is there but not a JSON object.
    """
    value = event.get(name) or {}
    if not isinstance(value, dict):
        kind = event.get("type")
        raise ProviderProtocolError(f"openai: {kind}: {name!r} is not an object")
    return value


def _transcript(role: Literal["caller", "agent"], field: str, final: bool) -> _Handler:
    def handle(
        conv: OpenAIConversation, event: Mapping[str, Any], now: float
    ) -> list[ProviderEvent]:
        text = str(event.get(field) or "")
        if final:
            text = text.strip()
        return [Transcript(role, text, final=final)] if text else []

    return handle


_HANDLERS: dict[str, _Handler] = {
    "input_audio_buffer.speech_started": OpenAIConversation._speech_started,
    "response.created": OpenAIConversation._response_created,
    "response.done": OpenAIConversation._response_done,
    "response.function_call_arguments.done": OpenAIConversation._function_call,
    "error": OpenAIConversation._error,
    "session.updated": OpenAIConversation._session_updated,
    "conversation.item.input_audio_transcription.delta": _transcript("caller", "delta", False),
    "conversation.item.input_audio_transcription.completed": _transcript(
        "caller", "transcript", True
    ),
    "response.output_audio_transcript.delta": _transcript("agent", "delta", False),
    "response.output_audio_transcript.done": _transcript("agent", "transcript", True),
}
