"""What an emulated provider does: one script model shared by the Gemini and OpenAI emulators.

A script is plain data (loadable from JSON/YAML, settable from ``sipbot emulate`` flags), so a
test, or a developer on a plane, can make either emulator behave like the real service in the
situation they care about. Field names mean the same for both protocols; fields that only one
protocol has say so.

Turns: the emulator detects the caller's utterances with server-side VAD
(:class:`sipbot.media.vad.EnergyVad`) — or takes an explicit commit / text input — and answers each
caller turn, numbered from 1, with a reply (or a tool call, when a :class:`ToolCallRule` is due).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ToolCallRule:
    """On caller turn ``on_turn``, call tool ``name`` with ``arguments`` before replying.

    The reply to that turn comes after the client sends the tool result; its transcript then
    includes the result's JSON so tests can see it reached the model.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    on_turn: int = 1


@dataclass(frozen=True, slots=True)
class EmulatorScript:
    """Behaviour of an emulated speech-to-speech session.

    Attributes:
        reply: ``"echo"`` replies with the caller's own last utterance (at 24 kHz, or G.711 when
            the session asked for it); ``"tone"`` with a sine of ``tone_hz`` lasting ``reply_ms``.
        reply_ms: length of a tone reply.
        tone_hz: frequency of a tone reply.
        reply_text: the agent transcript sent with every reply (``{turn}`` is the turn number).
        chunk_ms: audio per server message.
        speed: pacing of reply audio: 0 sends it all at once, 1.0 in real time, 4.0 four times
            faster than real time (the real services send faster than real time).
        first_audio_delay_ms: delay between the end of a caller turn and the first reply audio.
        interrupt_on_speech: caller speech during a reply cancels it (Gemini ``interrupted``,
            OpenAI ``input_audio_buffer.speech_started`` + ``response.done`` cancelled).
        greet: answer a text turn / ``response.create`` with no audio before it (greetings).
        tool_calls: tool calls to make, by caller turn.
        go_away_after_turns: Gemini only: send ``goAway`` and close after this many replies.
        expire_after_turns: OpenAI only: send error ``session_expired`` and close after this many.
        drop_after_turns: close the socket abruptly (no close frame) after this many replies.
        error_after_turns: send a protocol error event after this many replies.
        api_keys: keys accepted; any other key is refused at connect (HTTP 401 / close 1008).
            Empty means every key is accepted.
        vad_threshold_dbfs: server VAD level threshold.
        vad_silence_ms: silence that ends a caller turn.
    """

    reply: Literal["echo", "tone"] = "echo"
    reply_ms: int = 1000
    tone_hz: float = 440.0
    reply_text: str = "reply {turn}"
    chunk_ms: int = 100
    speed: float = 4.0
    first_audio_delay_ms: int = 0
    interrupt_on_speech: bool = True
    greet: bool = True
    tool_calls: tuple[ToolCallRule, ...] = ()
    go_away_after_turns: int | None = None
    expire_after_turns: int | None = None
    drop_after_turns: int | None = None
    error_after_turns: int | None = None
    api_keys: frozenset[str] = frozenset()
    vad_threshold_dbfs: float = -40.0
    vad_silence_ms: int = 500

    def tool_calls_for(self, turn: int) -> tuple[ToolCallRule, ...]:
        """The tool calls due on caller turn ``turn``."""
        return tuple(rule for rule in self.tool_calls if rule.on_turn == turn)
