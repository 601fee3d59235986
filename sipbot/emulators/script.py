"""What an emulated provider does: one script model shared by the Gemini and OpenAI emulators.

A script is plain data (loadable from JSON/YAML with :func:`load_script`, settable from
``sipbot emulate`` flags), so a test, or a developer on a plane, can make either emulator behave
like the real service in the situation they care about. Field names mean the same for both
protocols; fields that only one protocol has say so.

Turns:

* Rule 1: the emulator detects the caller's utterances with server-side VAD
  (:class:`sipbot.media.vad.EnergyVad`) — or takes an explicit end of turn (Gemini
  ``activityEnd`` with automatic activity detection off, OpenAI ``input_audio_buffer.commit``)
  — and answers each caller turn with a reply, or with a tool call when a
  :class:`ToolCallRule` is due. Caller turns are numbered from 1 for the whole conversation (a
  resumed Gemini session continues the count).
* Rule 2: a text turn or a bare ``response.create`` (a greeting) is answered when ``greet`` is
  true but is not a caller turn: it does not advance the count, and ``{turn}`` in its texts is
  the number of caller turns so far.
* Rule 3: the ``*_after_turns`` events count the replies to caller turns completed on one
  connection, as the real services' limits are per connection; the event fires right after
  that reply ends.
* Rule 4: ``stall_after_turns: N`` makes the next reply to a caller turn after N completed ones
  on a connection stop ``stall_mid_reply_ms`` into its audio: nothing more is sent on that
  connection (it stays open, silent). A reply stalls at most once: resumed (Gemini), it goes on.
* Rule 5: ``turns_per_call`` (OpenAI only; the real service starts every session afresh) counts
  caller turns for the whole call across its reconnections, as a resumed Gemini session does: a
  session whose ``instructions`` equal an earlier session's continues that session's count (put
  ``{call_id}`` in the agent's prompt so that concurrent calls differ). ``tool_calls`` and
  ``reply_faults`` then each fire once per call, however often the call reconnects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from sipbot.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ToolCallRule:
    """On caller turn ``on_turn``, call tool ``name`` with ``arguments`` before replying.

    The reply to that turn comes after the client sends the tool result; its transcript then
    includes the result's JSON so tests can see it reached the model.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    on_turn: int = 1


REPLY_FAULTS = ("stall", "drop", "malformed", "oversized")


@dataclass(frozen=True, slots=True)
class ReplyFault:
    """On caller turn ``on_turn``, misbehave in the middle of the reply (after its first chunk).

    ``kind``: ``stall`` sends nothing for ``stall_ms`` and then goes on; ``drop`` closes the
    socket abruptly (no close frame); ``malformed`` sends a text frame that is not JSON, then
    goes on; ``oversized`` sends one well-formed but unknown event of ``size_kb`` kilobytes,
    then goes on. OpenAI emulator only.
    """

    kind: Literal["stall", "drop", "malformed", "oversized"]
    on_turn: int = 1
    stall_ms: int = 3000
    size_kb: int = 2048


@dataclass(frozen=True, slots=True)
class EmulatorScript:
    """Behaviour of an emulated speech-to-speech session.

    Attributes:
        reply: ``"echo"`` replies with the caller's own last utterance (at 24 kHz, or G.711 when
            the session asked for it); ``"tone"`` with a sine of ``tone_hz`` lasting ``reply_ms``.
        reply_ms: length of a tone reply.
        tone_hz: frequency of a tone reply.
        reply_text: the agent transcript sent with every reply (``{turn}`` is the turn number).
        caller_text: the transcript of each caller turn the emulator reports (Gemini
            ``inputTranscription``, OpenAI input audio transcription), ``{turn}`` as above.
        chunk_ms: audio per server message (at most 5000: the SDKs cap incoming frames).
        speed: pacing of reply audio: 0 sends it all at once, 1.0 in real time, 4.0 four times
            faster than real time (the real services send faster than real time).
        first_audio_delay_ms: delay between the end of a caller turn and the first reply audio.
        interrupt_on_speech: caller speech during a reply cancels it (Gemini ``interrupted``,
            OpenAI ``input_audio_buffer.speech_started`` + ``response.done`` cancelled).
        greet: answer a text turn / ``response.create`` with no audio before it (greetings).
        tool_calls: tool calls to make, by caller turn.
        playback_wait: Gemini only: after generating a reply, wait as long as its audio lasts
            (from the first chunk) before ``turnComplete``, and stay interruptible meanwhile —
            the real service assumes the client plays the audio in real time.
        go_away_after_turns: Gemini only: send ``goAway`` and close after this many replies.
        go_away_time_left_ms: Gemini only: the ``timeLeft`` announced by ``goAway``; the
            connection keeps serving meanwhile and is closed when it runs out.
        expire_after_turns: OpenAI only: send error ``session_expired`` and close after this many.
        drop_after_turns: close the socket abruptly (no close frame) after this many replies.
        error_after_turns: send a protocol error event after this many replies.
        stall_after_turns: stall the reply that follows this many replies (Rule 4).
        stall_mid_reply_ms: where in that reply's audio it stalls (0: before any audio).
        reply_faults: mid-reply misbehaviour by caller turn (:class:`ReplyFault`).
        turns_per_call: OpenAI only: count caller turns across a call's reconnections (Rule 5).
        api_keys: keys accepted; any other key is refused at connect (HTTP 401 / close 1008).
            Empty means every key is accepted.
        vad_threshold_dbfs: server VAD level threshold.
        vad_silence_ms: silence that ends a caller turn.
    """

    reply: Literal["echo", "tone"] = "echo"
    reply_ms: int = 1000
    tone_hz: float = 440.0
    reply_text: str = "reply {turn}"
    caller_text: str = "caller turn {turn}"
    chunk_ms: int = 100
    speed: float = 4.0
    first_audio_delay_ms: int = 0
    interrupt_on_speech: bool = True
    greet: bool = True
    tool_calls: tuple[ToolCallRule, ...] = ()
    playback_wait: bool = True
    go_away_after_turns: int | None = None
    go_away_time_left_ms: int = 1000
    expire_after_turns: int | None = None
    drop_after_turns: int | None = None
    error_after_turns: int | None = None
    stall_after_turns: int | None = None
    stall_mid_reply_ms: int = 0
    reply_faults: tuple[ReplyFault, ...] = ()
    turns_per_call: bool = False
    api_keys: frozenset[str] = frozenset()
    vad_threshold_dbfs: float = -40.0
    vad_silence_ms: int = 500

    def tool_calls_for(self, turn: int) -> tuple[ToolCallRule, ...]:
        """The tool calls due on caller turn ``turn``."""
        return tuple(rule for rule in self.tool_calls if rule.on_turn == turn)

    def stalls(self, replies_here: int, position_ms: int) -> bool:
        """Whether a caller-turn reply, ``position_ms`` into its audio, stalls now (Rule 4)."""
        return self.stall_after_turns == replies_here and position_ms >= self.stall_mid_reply_ms

    def reply_faults_for(self, turn: int) -> tuple[ReplyFault, ...]:
        """The mid-reply faults due on caller turn ``turn``."""
        return tuple(fault for fault in self.reply_faults if fault.on_turn == turn)


# --------------------------------------------------------------------------- loading

MAX_CHUNK_MS = 5000  # 240 kB of 24 kHz PCM16, 320 kB once in base64
_COUNTS = frozenset(
    {
        "reply_ms",
        "chunk_ms",
        "first_audio_delay_ms",
        "go_away_time_left_ms",
        "vad_silence_ms",
        "stall_mid_reply_ms",
    }
)
_OPTIONAL_COUNTS = frozenset(
    {
        "go_away_after_turns",
        "expire_after_turns",
        "drop_after_turns",
        "error_after_turns",
        "stall_after_turns",
    }
)
_NUMBERS = frozenset({"tone_hz", "speed", "vad_threshold_dbfs"})
_FLAGS = frozenset({"interrupt_on_speech", "greet", "playback_wait", "turns_per_call"})
_TEXTS = frozenset({"reply_text", "caller_text"})
_FIELDS = tuple(f.name for f in fields(EmulatorScript))


def load_script(path: str | Path) -> EmulatorScript:
    """Read a script from a YAML or JSON file (JSON is YAML; the same loader reads both).

    Raises:
        ConfigError: the file cannot be read, is not a mapping, or a field is wrong; the
            message names the file, the line and the field.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read script: {exc.strerror}", file=name) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML/JSON: {exc}", file=name, line=line) from None
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    if data is None:
        data = {}
    return script_from_mapping(data, file=name, lines=lines)


def script_from_mapping(
    data: object, *, file: str | None = None, lines: Mapping[str, int] | None = None
) -> EmulatorScript:
    """Build a script from plain data (parsed JSON/YAML), checking every field.

    Args:
        data: a mapping of :class:`EmulatorScript` field names to values.
        file: where the data came from, for error messages.
        lines: line of each top-level key in ``file``, for error messages.

    Raises:
        ConfigError: ``data`` is not a mapping, has an unknown field, or a value of the wrong
            type or range.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("a script must be a mapping of field names to values", file=file)
    values: dict[str, Any] = {}
    for key, value in data.items():
        line = (lines or {}).get(str(key))
        try:
            if key not in _FIELDS:
                raise ValueError(f"unknown field (known: {', '.join(_FIELDS)})")
            values[key] = _check(str(key), value)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, line=line, field=str(key)) from None
    return EmulatorScript(**values)


def _check(key: str, value: object) -> Any:
    if key in _COUNTS or key in _OPTIONAL_COUNTS:
        if value is None and key in _OPTIONAL_COUNTS:
            return None
        count = _count(value, minimum=1 if key == "chunk_ms" else 0)
        if key == "chunk_ms" and count > MAX_CHUNK_MS:
            # A bigger message would pass the google-genai SDK's 1 MiB frame limit.
            raise ValueError(f"must be at most {MAX_CHUNK_MS}, got {count}")
        return count
    if key in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {json.dumps(value)}")
        if key != "vad_threshold_dbfs" and value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return float(value)
    if key in _FLAGS:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {json.dumps(value)}")
        return value
    if key in _TEXTS:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {json.dumps(value)}")
        return value
    if key == "reply":
        if value not in ("echo", "tone"):
            raise ValueError(f'expected "echo" or "tone", got {json.dumps(value)}')
        return value
    if key == "api_keys":
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise ValueError("expected a list of strings")
        return frozenset(value)
    if key == "reply_faults":
        return _reply_faults(value)
    return _tool_calls(value)


def _count(value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {json.dumps(value)}")
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def _tool_calls(value: object) -> tuple[ToolCallRule, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of {name, arguments, on_turn} mappings")
    rules = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ValueError(f"item {index}: expected a mapping with a string 'name'")
        unknown = sorted(set(item) - {"name", "arguments", "on_turn"})
        if unknown:
            raise ValueError(f"item {index}: unknown key {unknown[0]!r}")
        arguments = item.get("arguments", {})
        if not isinstance(arguments, Mapping):
            raise ValueError(f"item {index}: 'arguments' must be a mapping")
        try:
            on_turn = _count(item.get("on_turn", 1), minimum=1)
        except ValueError as exc:
            raise ValueError(f"item {index}: 'on_turn' {exc}") from None
        rules.append(ToolCallRule(item["name"], dict(arguments), on_turn))
    return tuple(rules)


def _reply_faults(value: object) -> tuple[ReplyFault, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of {kind, on_turn, stall_ms, size_kb} mappings")
    faults = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping) or item.get("kind") not in REPLY_FAULTS:
            raise ValueError(f"item {index}: expected a mapping with 'kind' one of {REPLY_FAULTS}")
        unknown = sorted(set(item) - {"kind", "on_turn", "stall_ms", "size_kb"})
        if unknown:
            raise ValueError(f"item {index}: unknown key {unknown[0]!r}")
        try:
            counts = {
                key: _count(item[key], minimum=1)
                for key in ("on_turn", "stall_ms", "size_kb")
                if key in item
            }
        except ValueError as exc:
            raise ValueError(f"item {index}: {exc}") from None
        faults.append(ReplyFault(item["kind"], **counts))
    return tuple(faults)
