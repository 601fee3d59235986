"""The Gemini Live (BidiGenerateContent) wire schema as the emulator reads and writes it.

Client frames are protobuf JSON: keys arrive in snake_case or lowerCamelCase (the google-genai
SDK mixes both in one frame), so :func:`parse_client_message` normalises them to camelCase —
except inside user data (function ``args``/``response``, JSON schemas), whose keys are the
user's. Server frames use camelCase only: the SDK maps known top-level keys and crashes on
unknown ones.

Anything malformed raises :class:`WireError`, which the emulator turns into a close with code
1007 and a reason worded like the real service's protobuf JSON errors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sipbot.emulators.common import PendingCall, b64decode_any, b64encode

INPUT_RATE_HZ = 16_000  # what the service expects unless the MIME type says otherwise
OUTPUT_RATE_HZ = 24_000  # always, whatever the input
OUTPUT_MIME = "audio/pcm;rate=24000"
AUDIO_TOKENS_PER_S = 32  # what the real service bills per second of audio

# Keys whose values are user data: never renamed.
USER_DATA_KEYS = frozenset(
    {"args", "response", "parameters", "parametersJsonSchema", "responseJsonSchema", "properties"}
)
CLIENT_KEYS = frozenset(
    {"setup", "clientContent", "realtimeInput", "toolResponse", "contextUpdate"}
)
SETUP_KEYS = frozenset(
    {
        "model",
        "generationConfig",
        "systemInstruction",
        "tools",
        "sessionResumption",
        "contextWindowCompression",
        "inputAudioTranscription",
        "outputAudioTranscription",
        "realtimeInputConfig",
        "proactivity",
        "explicitVadSignal",
        "historyConfig",
        "avatarConfig",
        "safetySettings",
        "labels",
    }
)
GENERATION_CONFIG_KEYS = frozenset(
    {
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "presencePenalty",
        "frequencyPenalty",
        "responseModalities",
        "speechConfig",
        "mediaResolution",
        "seed",
        "thinkingConfig",
        "enableAffectiveDialog",
        "stopSequences",
    }
)
THINKING_CONFIG_KEYS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
PROACTIVITY_KEYS = frozenset({"proactiveAudio", "proactiveVideo"})
REALTIME_INPUT_CONFIG_KEYS = frozenset(
    {"automaticActivityDetection", "activityHandling", "turnCoverage"}
)
ACTIVITY_HANDLING = (
    "ACTIVITY_HANDLING_UNSPECIFIED",
    "START_OF_ACTIVITY_INTERRUPTS",
    "NO_INTERRUPTION",
)
THINKING_LEVELS = ("THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH")
ENUM_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta."  # + the enum's name
REALTIME_INPUT_KEYS = frozenset(
    {"mediaChunks", "audio", "audioStreamEnd", "video", "text", "activityStart", "activityEnd"}
)
CLIENT_CONTENT_KEYS = frozenset({"turns", "turnComplete"})
TOOL_RESPONSE_KEYS = frozenset({"functionResponses"})
FUNCTION_RESPONSE_KEYS = frozenset({"id", "name", "response", "willContinue", "scheduling"})


class WireError(ValueError):
    """A client frame the real service would refuse (close 1007 with this message)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def normalize(value: Any) -> Any:
    """``value`` with every key in camelCase, except under :data:`USER_DATA_KEYS`."""
    if isinstance(value, list):
        return [normalize(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel(key)
        out[name] = item if name in USER_DATA_KEYS else normalize(item)
    return out


def _check_keys(message: Any, known: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise WireError(
            f"Invalid value at '{where}' ({type(message).__name__}), expected an object."
        )
    for key in message:
        if key not in known:
            raise WireError(
                f"Invalid JSON payload received. Unknown name \"{_snake(key)}\" at '{where}': "
                "Cannot find field."
            )
    return message


def parse_client_message(data: str | bytes) -> dict[str, Any]:
    """Parse and normalise one client frame; it must hold exactly one known message.

    Raises:
        WireError: not JSON, not an object, an unknown field, or not exactly one message.
    """
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise WireError("Invalid JSON payload received. Unexpected token.") from None
    message = _check_keys(normalize(message), CLIENT_KEYS, "")
    if len(message) != 1:
        raise WireError(
            "Invalid JSON payload received. Exactly one of setup, client_content, "
            "realtime_input, tool_response must be set."
        )
    return message


@dataclass(frozen=True, slots=True)
class SetupOptions:
    """What a ``setup`` frame asked for, as far as the emulator cares."""

    model: str
    text_only: bool
    input_transcription: bool
    output_transcription: bool
    resumption: bool
    resume_handle: str | None
    automatic_activity: bool
    activity_interrupts: bool
    silence_ms: int | None
    prefix_ms: int | None
    proactive_audio: bool = False
    affective_dialog: bool = False
    thinking_budget: int | None = None
    language_code: str | None = None


def parse_setup(setup: Any) -> SetupOptions:
    """Check a ``setup`` frame's body and extract its options.

    ``generationConfig`` (with ``thinkingConfig``), ``proactivity`` and ``realtimeInputConfig``
    are checked field by field, as the service's protobuf JSON parser does: unknown names,
    booleans and integers of the wrong type, and unknown enum values are refused.

    Raises:
        WireError: unknown field, a value of the wrong type, or no ``models/...`` model.
    """
    setup = _check_keys(setup, SETUP_KEYS, "setup")
    model = setup.get("model")
    if not isinstance(model, str) or not model.startswith("models/"):
        raise WireError(
            f"Invalid value at 'setup.model': {json.dumps(model)} is not of the form 'models/*'."
        )
    generation = _generation_config(setup.get("generationConfig") or {})
    modalities = generation.get("responseModalities") or ["AUDIO"]
    resumption = setup.get("sessionResumption")
    proactivity = _check_keys(setup.get("proactivity") or {}, PROACTIVITY_KEYS, "setup.proactivity")
    input_config = _check_keys(
        setup.get("realtimeInputConfig") or {},
        REALTIME_INPUT_CONFIG_KEYS,
        "setup.realtime_input_config",
    )
    handling = None
    if "activityHandling" in input_config:
        handling = _enum(
            input_config["activityHandling"],
            ACTIVITY_HANDLING,
            "ActivityHandling",
            "setup.realtime_input_config.activity_handling",
        )
    detection = input_config.get("automaticActivityDetection") or {}
    return SetupOptions(
        model=model,
        text_only="AUDIO" not in modalities,
        input_transcription="inputAudioTranscription" in setup,
        output_transcription="outputAudioTranscription" in setup,
        resumption=resumption is not None,
        resume_handle=(resumption or {}).get("handle") or None,
        automatic_activity=not detection.get("disabled", False),
        activity_interrupts=handling != "NO_INTERRUPTION",
        silence_ms=_optional_int(detection.get("silenceDurationMs")),
        prefix_ms=_optional_int(detection.get("prefixPaddingMs")),
        proactive_audio=_bool(
            proactivity.get("proactiveAudio"), "setup.proactivity.proactive_audio"
        ),
        affective_dialog=_bool(
            generation.get("enableAffectiveDialog"),
            "setup.generation_config.enable_affective_dialog",
        ),
        thinking_budget=_thinking_budget(generation),
        language_code=(generation.get("speechConfig") or {}).get("languageCode"),
    )


def _generation_config(body: Any) -> dict[str, Any]:
    where = "setup.generation_config"
    generation = _check_keys(body, GENERATION_CONFIG_KEYS, where)
    thinking = _check_keys(
        generation.get("thinkingConfig") or {}, THINKING_CONFIG_KEYS, where + ".thinking_config"
    )
    if "thinkingLevel" in thinking:
        _enum(
            thinking["thinkingLevel"],
            THINKING_LEVELS,
            "ThinkingLevel",
            where + ".thinking_config.thinking_level",
        )
    _bool(thinking.get("includeThoughts"), where + ".thinking_config.include_thoughts")
    return generation


def _thinking_budget(generation: dict[str, Any]) -> int | None:
    value = (generation.get("thinkingConfig") or {}).get("thinkingBudget")
    if value is None:
        return None
    return _int32(value, "setup.generation_config.thinking_config.thinking_budget")


def _invalid(where: str, kind: str, value: Any) -> WireError:
    """The protobuf JSON parser's error for a value of the wrong type or an unknown enum."""
    return WireError(f"Invalid value at '{where}' ({kind}), {json.dumps(value)}")


def _enum(value: Any, names: tuple[str, ...], enum: str, where: str) -> str:
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    raise _invalid(where, ENUM_TYPE + enum, value)


def _bool(value: Any, where: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise _invalid(where, "TYPE_BOOL", value)


def _int32(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,10}", value):
        return _int32(int(value), where)
    raise _invalid(where, "TYPE_INT32", value)


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float | str) and str(value).isdigit() else None


def check_realtime_input(body: Any) -> dict[str, Any]:
    """A ``realtimeInput`` body with only known fields.

    Raises:
        WireError: not an object, or an unknown field.
    """
    return _check_keys(body, REALTIME_INPUT_KEYS, "realtime_input")


def check_client_content(body: Any) -> dict[str, Any]:
    """A ``clientContent`` body with only known fields.

    Raises:
        WireError: not an object, or an unknown field.
    """
    return _check_keys(body, CLIENT_CONTENT_KEYS, "client_content")


def audio_blobs(realtime_input: dict[str, Any]) -> list[tuple[bytes, int]]:
    """The audio in a ``realtimeInput`` (``audio`` and deprecated ``mediaChunks``): (PCM, rate).

    Raises:
        WireError: bad base64, or a MIME type other than ``audio/pcm[;rate=N]``.
    """
    blobs = [realtime_input["audio"]] if "audio" in realtime_input else []
    blobs += realtime_input.get("mediaChunks") or []
    out = []
    for blob in blobs:
        if not isinstance(blob, dict):
            raise WireError("Invalid value at 'realtime_input.audio', expected a Blob object.")
        mime = str(blob.get("mimeType", ""))
        match = re.fullmatch(r"audio/pcm(?:;\s*rate=(\d+))?", mime)
        if match is None:
            if mime.startswith(("image/", "video/")):
                continue  # video frames: accepted and ignored
            raise WireError(f"Unsupported mime type {json.dumps(mime)} for realtime_input.audio.")
        data = blob.get("data", "")
        try:
            pcm = b64decode_any(data) if isinstance(data, str) else b""
        except ValueError:
            raise WireError(
                "Invalid value at 'realtime_input.audio.data' (TYPE_BYTES), "
                f"Base64 decoding failed for {json.dumps(data[:40])}"
            ) from None
        out.append((pcm, int(match.group(1) or INPUT_RATE_HZ)))
    return out


def parse_function_responses(tool_response: Any) -> list[dict[str, Any]]:
    """The ``functionResponses`` of a ``toolResponse``; each needs an ``id``.

    Raises:
        WireError: unknown field, or a response without an id.
    """
    body = _check_keys(tool_response, TOOL_RESPONSE_KEYS, "tool_response")
    responses = body.get("functionResponses") or []
    for index, response in enumerate(responses):
        where = f"tool_response.function_responses[{index}]"
        _check_keys(response, FUNCTION_RESPONSE_KEYS, where)
        if not response.get("id"):
            raise WireError(f"Invalid value at '{where}.id': a function response needs an id.")
    return list(responses)


def text_of_turns(turns: Any) -> str:
    """The text parts of ``clientContent.turns`` joined by spaces."""
    texts = []
    for turn in turns if isinstance(turns, list) else [turns]:
        for part in (turn or {}).get("parts") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return " ".join(texts)


# --------------------------------------------------------------------------- server messages


def duration(ms: int) -> str:
    """A protobuf JSON Duration: ``"1s"``, ``"0.250s"``."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000:.3f}s"


def audio_content(chunk: bytes) -> dict[str, Any]:
    """One ``serverContent`` with a chunk of reply audio."""
    part = {"inlineData": {"mimeType": OUTPUT_MIME, "data": b64encode(chunk)}}
    return {"serverContent": {"modelTurn": {"parts": [part]}}}


def output_transcription(text: str) -> dict[str, Any]:
    """One ``serverContent`` with a piece of the reply's transcript (sent on its own, as the
    real service does: transcription is not ordered with the model turn)."""
    return {"serverContent": {"outputTranscription": {"text": text}}}


def text_content(text: str) -> dict[str, Any]:
    """One ``serverContent`` with a text part (TEXT response modality)."""
    return {"serverContent": {"modelTurn": {"parts": [{"text": text}]}}}


def turn_complete(prompt_ms: int, response_ms: int) -> dict[str, Any]:
    """``turnComplete`` with ``usageMetadata`` counted from audio durations."""
    prompt = prompt_ms * AUDIO_TOKENS_PER_S // 1000
    response = response_ms * AUDIO_TOKENS_PER_S // 1000
    return {
        "serverContent": {"turnComplete": True},
        "usageMetadata": {
            "promptTokenCount": prompt,
            "responseTokenCount": response,
            "totalTokenCount": prompt + response,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": prompt}],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response}],
        },
    }


def tool_call(calls: list[PendingCall]) -> dict[str, Any]:
    """``toolCall`` asking for ``calls``."""
    return {
        "toolCall": {
            "functionCalls": [
                {"id": call.call_id, "name": call.name, "args": dict(call.arguments)}
                for call in calls
            ]
        }
    }
