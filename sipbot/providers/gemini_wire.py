"""Gemini Live, the wire schema: what sipbot sends and how server messages become events.

Pure and synchronous. :func:`connect_config` builds the ``LiveConnectConfig`` (a plain dict, in
the SDK's snake_case field names) for a :class:`SessionConfig`; :class:`GeminiReceiver` turns
server messages into sipbot's neutral events and remembers what the shell needs to reconnect
(the latest session resumption handle, whether ``goAway`` came, whether a model turn is open).
This module never imports ``google.genai``: server messages are read through the structural
types below, which the SDK's ``LiveServerMessage`` satisfies.

Rules of :class:`GeminiReceiver`:

* Rule 1: Gemini has no item ids; each model turn that carries audio gets one
  (``gemini-turn-N``, N counting from 1 for the whole call, across reconnections).
* Rule 2: one server message may carry several fields at once; they are handled in the order
  caller transcript, agent audio, agent transcript, interruption, end of turn.
* Rule 3: transcripts come as pieces: each piece is a partial :class:`Transcript` and the
  concatenation is emitted once as final — the caller's when the model starts answering (audio
  or a tool call) or at the end of the turn, the agent's at the end of its turn or when
  interrupted.
* Rule 4: ``interrupted`` closes the open turn, so the turnComplete that follows it (like one
  of a turn without audio, e.g. a tool call) gives ``TurnComplete(None)``.
* Rule 5: Gemini cannot truncate a reply, so what the caller heard of a cut one is told in-band
  (:func:`heard_note`): a text turn marked ``[system note]`` that does not complete the turn.
* Rule 6: :meth:`GeminiReceiver.receive_frame` reads a server frame as it came off the websocket
  (camelCase JSON) with no SDK model in between: the JSON parsed once, each audio payload
  base64-decoded once (standard or URL-safe, padded or not, as the SDK accepts), fields the
  receiver does not use never touched (:mod:`gemini_frames`). Both entry points read a message
  into one flat record (:class:`ServerFields`), so they cannot disagree on the Rules;
  tests/unit/test_gemini_parse.py pins
  the frame path against the SDK's own parse. A frame that is not JSON, has none of the
  server message fields, or has one of the wrong type raises :class:`ProviderProtocolError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sipbot.domain import (
    AudioOut,
    Interrupted,
    ProviderEvent,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    ToolCallCancelled,
    Transcript,
    TurnComplete,
)
from sipbot.providers.continuity import SYSTEM_NOTE, greeting_prompt
from sipbot.providers.gemini_frames import ServerFields, read_frame

INPUT_MIME_TYPE = "audio/pcm;rate=16000"


def realtime_audio_message(audio: bytes) -> str:
    """The text frame the SDK's ``send_realtime_input(audio=Blob(audio, INPUT_MIME_TYPE))`` sends.

    Built directly: the SDK validates and converts the blob through pydantic models on every
    call (≈ 26 µs against ≈ 6 µs here, for each 40 ms of caller audio). The data is URL-safe
    base64, as the SDK encodes it. tests/unit/test_gemini_wire.py pins this to the SDK's output.
    """
    data = base64.urlsafe_b64encode(audio).decode("ascii")
    return json.dumps({"realtime_input": {"audio": {"data": data, "mime_type": INPUT_MIME_TYPE}}})


ITEM_PREFIX = "gemini-turn-"
LOW_THRESHOLD = 0.4  # TurnDetection.threshold at or below: start-of-speech sensitivity HIGH
HIGH_THRESHOLD = 0.6  # at or above: sensitivity LOW (needs clearer speech to start a turn)
KNOWN_OPTIONS = frozenset(
    {
        "config",
        "context_window_compression",
        "proactive_audio",  # the typed gemini: block (sipbot/dialplan/options.py)
        "affective_dialog",
        "thinking_budget",
    }
)


# --------------------------------------------------------------------------- what we send


def connect_config(config: SessionConfig, *, resumption_handle: str | None) -> dict[str, Any]:
    """The ``LiveConnectConfig`` for ``config`` (SDK field names, JSON-able values).

    Session resumption is always on (an empty handle asks for handles); sliding-window context
    compression is on unless ``options["context_window_compression"]`` is False, since audio
    sessions otherwise end after 15 minutes. The typed ``gemini:`` options arrive as
    ``options["proactive_audio"]`` (``proactivity.proactive_audio``), ``["affective_dialog"]``
    (``enable_affective_dialog``) and ``["thinking_budget"]`` (``thinking_config``); activity
    handling comes from ``turn_detection.barge_in``. ``options["config"]`` (a mapping of
    ``LiveConnectConfig`` fields) is merged in last, recursively, for anything not mapped here.
    """
    built: dict[str, Any] = {"response_modalities": ["AUDIO"]}
    if config.instructions:
        built["system_instruction"] = config.instructions
    speech: dict[str, Any] = {}
    if config.voice:
        speech["voice_config"] = {"prebuilt_voice_config": {"voice_name": config.voice}}
    if config.language:
        speech["language_code"] = config.language
    if speech:
        built["speech_config"] = speech
    if config.temperature is not None:
        built["temperature"] = config.temperature
    if config.tools:
        declarations = [
            {
                "name": tool.name,
                "description": tool.description,
                "parameters_json_schema": dict(tool.parameters),
            }
            for tool in config.tools
        ]
        built["tools"] = [{"function_declarations": declarations}]
    built["session_resumption"] = {"handle": resumption_handle} if resumption_handle else {}
    if config.options.get("context_window_compression", True):
        built["context_window_compression"] = {"sliding_window": {}}
    built["input_audio_transcription"] = {}
    built["output_audio_transcription"] = {}
    built["realtime_input_config"] = _realtime_input_config(config)
    built.update(_native_audio_options(config.options))
    extra = config.options.get("config")
    if isinstance(extra, Mapping):
        _merge(built, extra)
    return built


def _realtime_input_config(config: SessionConfig) -> dict[str, Any]:
    turn = config.turn_detection
    detection: dict[str, Any] = {
        "disabled": False,
        "prefix_padding_ms": turn.prefix_ms,
        "silence_duration_ms": turn.silence_ms,
    }
    if turn.threshold <= LOW_THRESHOLD:
        detection["start_of_speech_sensitivity"] = "START_SENSITIVITY_HIGH"
    elif turn.threshold >= HIGH_THRESHOLD:
        detection["start_of_speech_sensitivity"] = "START_SENSITIVITY_LOW"
    handling = "START_OF_ACTIVITY_INTERRUPTS" if turn.barge_in else "NO_INTERRUPTION"
    return {"automatic_activity_detection": detection, "activity_handling": handling}


def _native_audio_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``LiveConnectConfig`` fields of the typed ``gemini:`` options that are set."""
    out: dict[str, Any] = {}
    if options.get("proactive_audio") is not None:
        out["proactivity"] = {"proactive_audio": bool(options["proactive_audio"])}
    if options.get("affective_dialog") is not None:
        out["enable_affective_dialog"] = bool(options["affective_dialog"])
    if options.get("thinking_budget") is not None:
        out["thinking_config"] = {"thinking_budget": int(options["thinking_budget"])}
    return out


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


def seed_turns(history: Sequence[Transcript], greeting: str | None) -> list[dict[str, Any]]:
    """``clientContent`` turns replaying ``history``, then the greeting request if any.

    Send with ``turn_complete`` True only when a greeting is included (the model then speaks);
    otherwise the model just takes the turns in as context and waits for the caller.
    """
    turns = [
        {"role": "user" if entry.role == "caller" else "model", "parts": [{"text": entry.text}]}
        for entry in history
    ]
    if greeting:
        turns.append({"role": "user", "parts": [{"text": greeting_prompt(greeting)}]})
    return turns


def heard_note(heard: str) -> list[dict[str, Any]]:
    """The ``clientContent`` turns telling the model what the caller heard of its cut reply.

    Send with ``turn_complete`` False: it is context, the caller is speaking (Rule 5).
    """
    if heard:
        text = (
            f"{SYSTEM_NOTE} The caller interrupted your last reply; they heard only: "
            f'"{heard}". They did not hear the rest.'
        )
    else:
        text = f"{SYSTEM_NOTE} The caller interrupted your last reply before hearing any of it."
    return [{"role": "user", "parts": [{"text": text}]}]


def tool_response(call_id: str, name: str, result: Any) -> dict[str, Any]:
    """One ``functionResponses`` entry; a result that is not an object goes under ``output``."""
    response = dict(result) if isinstance(result, Mapping) else {"output": result}
    return {"id": call_id, "name": name, "response": response}


# --------------------------------------------------------------------------- what we read
# Read-only views of the SDK's LiveServerMessage (snake_case attributes, None when absent).


class _Blob(Protocol):
    @property
    def data(self) -> bytes | None: ...


class _Part(Protocol):
    @property
    def inline_data(self) -> _Blob | None: ...


class _Content(Protocol):
    @property
    def parts(self) -> Sequence[_Part] | None: ...


class _Transcription(Protocol):
    @property
    def text(self) -> str | None: ...

    @property
    def finished(self) -> bool | None: ...


class _ServerContent(Protocol):
    @property
    def model_turn(self) -> _Content | None: ...

    @property
    def turn_complete(self) -> bool | None: ...

    @property
    def interrupted(self) -> bool | None: ...

    @property
    def generation_complete(self) -> bool | None: ...

    @property
    def input_transcription(self) -> _Transcription | None: ...

    @property
    def output_transcription(self) -> _Transcription | None: ...


class _FunctionCall(Protocol):
    @property
    def id(self) -> str | None: ...

    @property
    def name(self) -> str | None: ...

    @property
    def args(self) -> Mapping[str, Any] | None: ...


class _ToolCall(Protocol):
    @property
    def function_calls(self) -> Sequence[_FunctionCall] | None: ...


class _ToolCallCancellation(Protocol):
    @property
    def ids(self) -> Sequence[str] | None: ...


class _GoAway(Protocol):
    @property
    def time_left(self) -> str | None: ...


class _ResumptionUpdate(Protocol):
    @property
    def new_handle(self) -> str | None: ...

    @property
    def resumable(self) -> bool | None: ...


class ServerMessage(Protocol):
    """What :class:`GeminiReceiver` reads of a server message."""

    @property
    def server_content(self) -> _ServerContent | None: ...

    @property
    def tool_call(self) -> _ToolCall | None: ...

    @property
    def tool_call_cancellation(self) -> _ToolCallCancellation | None: ...

    @property
    def go_away(self) -> _GoAway | None: ...

    @property
    def session_resumption_update(self) -> _ResumptionUpdate | None: ...


def _read_model(message: ServerMessage) -> ServerFields:
    """The fields of a message the SDK parsed (its ``LiveServerMessage``)."""
    fields = ServerFields()
    content = message.server_content
    if content is not None:
        heard = content.input_transcription
        if heard is not None:
            fields.caller = heard.text
            fields.caller_finished = bool(heard.finished)
        if content.model_turn is not None:
            fields.audio = [
                blob.data
                for part in content.model_turn.parts or ()
                if (blob := part.inline_data) is not None and blob.data
            ]
        if content.output_transcription is not None:
            fields.agent = content.output_transcription.text
        fields.interrupted = bool(content.interrupted)
        fields.turn_complete = bool(content.turn_complete)
        fields.generation_complete = bool(content.generation_complete)
    if message.tool_call is not None:
        fields.calls = [
            ToolCall(call.id or "", call.name or "", dict(call.args or {}))
            for call in message.tool_call.function_calls or ()
        ]
    if message.tool_call_cancellation is not None:
        fields.cancelled = tuple(message.tool_call_cancellation.ids or ())
    update = message.session_resumption_update
    if update is not None and update.resumable and update.new_handle:
        fields.handle = update.new_handle
    if message.go_away is not None:
        fields.go_away = True
        fields.time_left = message.go_away.time_left
    return fields


class GeminiReceiver:
    """Turns Gemini server messages into events; keeps reconnection state (see the Rules).

    Attributes:
        resumption_handle: the latest resumable handle, or None before the first one.
        go_away: the server announced the end of the current connection.
        generation_complete: the last message said the model has generated all of its turn.
    """

    def __init__(self) -> None:
        self.resumption_handle: str | None = None
        self.go_away = False
        self.generation_complete = False
        self._turns = 0
        self._item: str | None = None
        self._caller_text: list[str] = []
        self._agent_text: list[str] = []

    @property
    def in_turn(self) -> bool:
        """Whether a model turn with audio is open (its audio is still arriving)."""
        return self._item is not None

    def receive(self, message: ServerMessage) -> list[ProviderEvent]:
        """The events ``message`` (as the SDK parsed it) means, in order."""
        return self._apply(_read_model(message))

    def receive_frame(self, frame: str | bytes) -> list[ProviderEvent]:
        """The events a raw server frame means, in order (Rule 6).

        Raises:
            ProviderProtocolError: the frame is not a server message (state is unchanged).
        """
        return self._apply(read_frame(frame))

    def connection_lost(self) -> list[ProviderEvent]:
        """Close what the lost connection left open; call before reconnecting."""
        events: list[ProviderEvent] = []
        self._finish_caller(events)
        self._finish_agent(events)
        if self._item is not None:
            events.append(TurnComplete(self._item))
            self._item = None
        self.go_away = False
        return events

    def _apply(self, fields: ServerFields) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        self._content(fields, events)
        if fields.calls is not None:
            self._finish_caller(events)
            events.extend(fields.calls)
        if fields.cancelled is not None:
            events.append(ToolCallCancelled(fields.cancelled))
        if fields.handle is not None:
            self.resumption_handle = fields.handle
        if fields.go_away:
            self.go_away = True
            events.append(ProviderNotice(f"gemini: goAway, time left {fields.time_left}"))
        self.generation_complete = fields.generation_complete
        return events

    def _content(self, fields: ServerFields, events: list[ProviderEvent]) -> None:
        piece = fields.caller
        if piece:
            self._caller_text.append(piece)
            events.append(Transcript("caller", piece, final=False))
        if fields.caller_finished:
            self._finish_caller(events)
        for chunk in fields.audio:
            if self._item is None:
                self._finish_caller(events)
                self._turns += 1
                self._item = f"{ITEM_PREFIX}{self._turns}"
            events.append(AudioOut(chunk, self._item))
        piece = fields.agent
        if piece:
            self._agent_text.append(piece)
            events.append(Transcript("agent", piece, final=False))
        if fields.interrupted:
            events.append(Interrupted(self._item))
            self._finish_agent(events)
            self._item = None
        if fields.turn_complete:
            self._finish_caller(events)
            self._finish_agent(events)
            events.append(TurnComplete(self._item))
            self._item = None

    def _finish_caller(self, events: list[ProviderEvent]) -> None:
        if self._caller_text:
            events.append(Transcript("caller", "".join(self._caller_text).strip()))
            self._caller_text.clear()

    def _finish_agent(self, events: list[ProviderEvent]) -> None:
        if self._agent_text:
            events.append(Transcript("agent", "".join(self._agent_text).strip()))
            self._agent_text.clear()
