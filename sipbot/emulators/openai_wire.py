"""The OpenAI Realtime (GA) wire schema as the emulator checks and writes it.

The openai SDK sends what it is given without validation, so the emulator checks client events
as the real server does and answers mistakes with an ``error`` event (the session stays open):
:class:`EventError` carries the error's ``code``, ``message`` and ``param``. Server event shapes
follow ``openai.types.realtime`` so the SDK parses every one.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Mapping
from typing import Any

from sipbot.domain import PCM16_24K, PCMA_8K, PCMU_8K, AudioFormat
from sipbot.emulators.script import EmulatorScript

FORMATS: dict[str, AudioFormat] = {
    "audio/pcm": PCM16_24K,
    "audio/pcmu": PCMU_8K,
    "audio/pcma": PCMA_8K,
}
SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "instructions",
        "audio",
        "include",
        "max_output_tokens",
        "output_modalities",
        "parallel_tool_calls",
        "prompt",
        "reasoning",
        "tool_choice",
        "tools",
        "tracing",
        "truncation",
    }
)
AUDIO_KEYS = frozenset({"input", "output"})
AUDIO_INPUT_KEYS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
AUDIO_OUTPUT_KEYS = frozenset({"format", "voice", "speed"})
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
EAGERNESS = ("low", "medium", "high", "auto")
NOISE_REDUCTION_TYPES = ("near_field", "far_field")
TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt", "delay", "keywords", "languages"})
CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)
MIN_COMMIT_MS = 100  # the real server refuses to commit less audio than this
TOKENS_PER_S = 10  # rough audio token rate, for usage figures


class EventError(Exception):
    """A client event the real server answers with an ``error`` event.

    Attributes:
        code: the error code (``missing_required_parameter``, ``invalid_value``, ...).
        message: the human-readable message.
        param: the parameter at fault, if any.
        type: the error type (``invalid_request_error`` unless a server fault).
    """

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.type = type


def new_id(prefix: str) -> str:
    """An id like the real ones: ``item_`` + 21 random characters."""
    return f"{prefix}_{secrets.token_urlsafe(16)[:21]}"


def missing(param: str) -> EventError:
    """The error for a missing required parameter."""
    return EventError(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    )


def invalid(param: str, value: Any, supported: tuple[str, ...] | None = None) -> EventError:
    """The error for a value the server does not accept."""
    message = f"Invalid value: '{value}'."
    if supported:
        quoted = [f"'{name}'" for name in supported]
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
        message += f" Supported values are: {listed}."
    return EventError("invalid_value", message, param)


def require(event: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    """``event[key]``, or the missing-parameter error."""
    if event.get(key) is None:
        raise missing(prefix + key)
    return event[key]


# --------------------------------------------------------------------------- sessions


def default_session(model: str, script: EmulatorScript) -> dict[str, Any]:
    """The session ``session.created`` announces: PCM 24 kHz both ways, server VAD."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": script.vad_silence_ms,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
    }


def _check_keys(value: Any, known: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError("invalid_type", f"Invalid type for '{where}': expected an object.", where)
    for key in value:
        if key not in known:
            raise EventError(
                "unknown_parameter", f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}"
            )
    return value


def check_format(value: Any, where: str) -> AudioFormat:
    """The :class:`AudioFormat` of a GA ``format`` object.

    Raises:
        EventError: not one of pcm (24 kHz), pcmu, pcma.
    """
    body = _check_keys(value, frozenset({"type", "rate"}), where)
    kind = require(body, "type", where + ".")
    if kind not in FORMATS:
        raise invalid(f"{where}.type", kind, tuple(FORMATS))
    if kind == "audio/pcm" and body.get("rate", 24000) != 24000:
        raise invalid(f"{where}.rate", body["rate"], ("24000",))
    return FORMATS[kind]


def _check_turn_detection(value: Any, where: str) -> None:
    if value is None:
        return
    body = _check_keys(
        value,
        frozenset(
            {
                "type",
                "threshold",
                "prefix_padding_ms",
                "silence_duration_ms",
                "idle_timeout_ms",
                "create_response",
                "interrupt_response",
                "eagerness",
            }
        ),
        where,
    )
    kind = require(body, "type", where + ".")
    if kind not in TURN_DETECTION_TYPES:
        raise invalid(f"{where}.type", kind, TURN_DETECTION_TYPES)
    if "eagerness" in body and body["eagerness"] not in EAGERNESS:
        raise invalid(f"{where}.eagerness", body["eagerness"], EAGERNESS)
    for flag in ("create_response", "interrupt_response"):
        if flag in body and not isinstance(body[flag], bool):
            raise EventError(
                "invalid_type",
                f"Invalid type for '{where}.{flag}': expected a boolean.",
                f"{where}.{flag}",
            )


def _check_noise_reduction(value: Any, where: str) -> None:
    if value is None:  # null turns it off
        return
    body = _check_keys(value, frozenset({"type"}), where)
    kind = require(body, "type", where + ".")
    if kind not in NOISE_REDUCTION_TYPES:
        raise invalid(f"{where}.type", kind, NOISE_REDUCTION_TYPES)


def _check_transcription(value: Any, where: str) -> None:
    if value is None:  # null turns it off
        return
    body = _check_keys(value, TRANSCRIPTION_KEYS, where)
    language = body.get("language")
    if language is not None and (
        not isinstance(language, str) or len(language) != 2 or not language.isalpha()
    ):
        raise EventError(
            "invalid_value",
            f"Invalid language '{language}'. Language parameter must be specified in "
            "ISO-639-1 format.",
            f"{where}.language",
        )


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise EventError(
            "invalid_type", "Invalid type for 'session.tools': expected an array.", "session.tools"
        )
    for index, tool in enumerate(tools):
        where = f"session.tools[{index}]"
        body = _check_keys(tool, frozenset({"type", "name", "description", "parameters"}), where)
        if body.get("type") not in ("function", None):
            raise invalid(f"{where}.type", body.get("type"), ("function",))
        require(body, "name", where + ".")


def merge_session(current: dict[str, Any], update: Any) -> dict[str, Any]:
    """Check a ``session.update``'s ``session`` and return the merged session.

    Top-level fields replace; ``audio.input`` and ``audio.output`` merge field by field.

    Raises:
        EventError: as the real server would answer it.
    """
    if update is None:
        raise missing("session")
    body = _check_keys(update, SESSION_KEYS, "session")
    kind = require(body, "type", "session.")
    if kind == "transcription":
        raise EventError(
            "invalid_value", "The emulator supports 'realtime' sessions only.", "session.type"
        )
    if kind != "realtime":
        raise invalid("session.type", kind, ("realtime", "transcription"))
    merged = copy.deepcopy(current)
    for key, value in body.items():
        if key != "audio":
            merged[key] = copy.deepcopy(value)
    if "tools" in body:
        _check_tools(body["tools"])
    audio = _check_keys(body.get("audio") or {}, AUDIO_KEYS, "session.audio")
    for side, known in (("input", AUDIO_INPUT_KEYS), ("output", AUDIO_OUTPUT_KEYS)):
        where = f"session.audio.{side}"
        part = _check_keys(audio.get(side) or {}, known, where)
        if "format" in part:
            check_format(part["format"], where + ".format")
        if side == "input" and "turn_detection" in part:
            _check_turn_detection(part["turn_detection"], where + ".turn_detection")
        if side == "input" and "noise_reduction" in part:
            _check_noise_reduction(part["noise_reduction"], where + ".noise_reduction")
        if side == "input" and "transcription" in part:
            _check_transcription(part["transcription"], where + ".transcription")
        merged["audio"][side].update(copy.deepcopy(part))
    return merged


def input_format(session: Mapping[str, Any]) -> AudioFormat:
    """The caller audio format of a (checked) session."""
    return FORMATS[session["audio"]["input"]["format"]["type"]]


def output_format(session: Mapping[str, Any]) -> AudioFormat:
    """The reply audio format of a (checked) session."""
    return FORMATS[session["audio"]["output"]["format"]["type"]]


# --------------------------------------------------------------------------- items and responses


def user_audio_item(item_id: str) -> dict[str, Any]:
    """The user message a committed audio buffer becomes."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def assistant_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant message item."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    """A function call item."""
    return {
        "id": item_id,
        "type": "function_call",
        "object": "realtime.item",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    }


def response_object(
    response_id: str,
    session: Mapping[str, Any],
    *,
    status: str = "in_progress",
    status_details: dict[str, Any] | None = None,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """A ``realtime.response`` object."""
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output or [],
        "conversation_id": "conv_emulator",
        "output_modalities": modalities or session.get("output_modalities") or ["audio"],
        "max_output_tokens": session.get("max_output_tokens", "inf"),
        "audio": {
            "output": {
                "format": session["audio"]["output"]["format"],
                "voice": session["audio"]["output"].get("voice"),
            }
        },
        "usage": usage,
        "metadata": None,
    }


def usage(input_ms: int, output_ms: int) -> dict[str, Any]:
    """Token usage estimated from audio durations."""
    input_tokens = input_ms * TOKENS_PER_S // 1000
    output_tokens = output_ms * TOKENS_PER_S // 1000
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": 0,
            "audio_tokens": input_tokens,
            "image_tokens": 0,
            "cached_tokens": 0,
        },
        "output_token_details": {"text_tokens": 0, "audio_tokens": output_tokens},
    }


def error_body(error: EventError, client_event_id: str | None) -> dict[str, Any]:
    """The ``error`` object of an ``error`` event."""
    return {
        "type": error.type,
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "event_id": client_event_id,
    }
