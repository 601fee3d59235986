"""The neutral types every layer shares: audio formats, what a call is, and provider events.

Providers, tools, the dialplan and the call all speak these frozen dataclasses, so none of them
has to import another to name a :class:`CallInfo` or a :class:`ToolCall`. This module imports
nothing from sipbot (``tests/unit/test_architecture.py`` keeps it so); :mod:`sipbot.providers.base`
and :mod:`sipbot.media.formats` re-export what they used to define.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------- audio

Encoding = Literal["pcm16", "pcmu", "pcma"]

FRAME_MS = 20  # every frame on the media path is 20 ms


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Raw audio as a provider sends or takes it: mono, little-endian for pcm16."""

    encoding: Encoding
    rate_hz: int

    @property
    def bytes_per_ms(self) -> int:
        """Bytes per millisecond (pcm16: 2 bytes a sample; G.711: 1)."""
        width = 2 if self.encoding == "pcm16" else 1
        return width * self.rate_hz // 1000

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame."""
        return self.bytes_per_ms * FRAME_MS


# --------------------------------------------------------------------------- SRTP

SrtpMode = Literal["off", "optional", "required"]  # a trunk's or agent's ``srtp:`` setting
SRTP_MODES: tuple[SrtpMode, ...] = ("off", "optional", "required")
SRTP_KEY_SALT_BYTES = 30  # AES-128 master key (16) + salt (14), both SDES suites


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """The SRTP keys of one negotiated stream (SDES, RFC 4568): ``local`` protects what we
    send, ``remote`` unprotects what we receive (master key + salt each). The repr hides them."""

    suite: str
    local: bytes = field(repr=False)
    remote: bytes = field(repr=False)


PCM16_8K = AudioFormat("pcm16", 8_000)
PCM16_16K = AudioFormat("pcm16", 16_000)
PCM16_24K = AudioFormat("pcm16", 24_000)
PCMU_8K = AudioFormat("pcmu", 8_000)
PCMA_8K = AudioFormat("pcma", 8_000)

# --------------------------------------------------------------------------- what a call is


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a provider (and a prompt template, and a tool) may know about a call."""

    call_id: str
    caller: str = ""
    did: str = ""
    display_name: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    codec: str = "PCMU"
    remote_address: str = ""
    direction: Literal["inbound", "outbound"] = "inbound"  # outbound: sipbot placed the call
    variables: Mapping[str, str] = field(default_factory=dict)  # a dial request's {var.NAME}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as a model sees it: name, description and a JSON schema (type object)."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Voice activity / barge-in settings, mapped by each provider to its own knobs."""

    threshold: float = 0.5
    silence_ms: int = 500
    prefix_ms: int = 300
    barge_in: bool = True


@dataclass(frozen=True, slots=True)
class Transcript:
    """A piece of the conversation's text. ``final`` is False for partial (delta) text."""

    role: Literal["caller", "agent"]
    text: str
    final: bool = True


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-call settings of a session. ``options`` holds provider-specific extras."""

    instructions: str = ""
    model: str | None = None
    voice: str | None = None
    language: str | None = None
    temperature: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    greeting: str | None = None
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    history: tuple[Transcript, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    stall_timeout_s: float | None = None  # no output this long while one is due: a stall


# --------------------------------------------------------------------------- provider events


@dataclass(frozen=True, slots=True)
class AudioOut:
    """Agent audio in the session's ``output_format``, belonging to response ``item_id``."""

    audio: bytes
    item_id: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for a tool to run; answer with ``send_tool_result(id, ...)``."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallCancelled:
    """The model no longer wants the results of these tool calls."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The caller spoke over the agent: stop playing now (flush the pacer)."""

    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class TurnComplete:
    """The agent finished its turn (all its audio for the turn has been sent as AudioOut)."""

    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderNotice:
    """Something worth a log line that needs no action (reconnecting, resumed, goAway)."""

    message: str


@dataclass(frozen=True, slots=True)
class ProviderFailed:
    """The session failed for good; the call should apologise and hang up."""

    message: str


@dataclass(frozen=True, slots=True)
class ProviderStalled:
    """The session stopped producing while output was due; it is resuming (filler meanwhile)."""

    message: str


@dataclass(frozen=True, slots=True)
class Heard:
    """After a barge-in: the words of ``item_id`` the caller actually heard (``played_ms``)."""

    item_id: str
    played_ms: int
    text: str


ProviderEvent = (
    AudioOut
    | Transcript
    | ToolCall
    | ToolCallCancelled
    | Interrupted
    | TurnComplete
    | ProviderNotice
    | ProviderFailed
    | ProviderStalled
    | Heard
)
