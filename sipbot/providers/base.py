"""The provider interface: what a speech-to-speech model session looks like to a call.

A :class:`Provider` is made once per configured agent; :meth:`Provider.open` makes one
:class:`ProviderSession` per call. Sessions speak only sipbot's neutral types: raw audio bytes in
a declared :class:`AudioFormat`, and the frozen events below. Nothing past a provider module sees
an SDK object.

Contract of a session (every implementation keeps it; ``tests/unit/test_provider_contract.py``
checks it for each provider):

* Rule 1: ``send_audio`` never blocks and never raises: it queues (or drops, once closed).
  The media path calls it once per 20 ms frame.
* Rule 2: ``events()`` yields events until the session is closed, then ends. A failure the
  session cannot recover from is reported as one :class:`ProviderFailed` and then the iterator ends.
* Rule 3: every :class:`AudioOut` carries the ``item_id`` of the response it belongs to, so the
  call can report back (:meth:`ProviderSession.truncate`) how much of that item the caller heard.
* Rule 4: ``close()`` is idempotent and returns promptly (bounded), even if the peer is stuck.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sipbot.media.formats import PCM16_16K as PCM16_16K
from sipbot.media.formats import PCM16_24K as PCM16_24K
from sipbot.media.formats import PCMA_8K as PCMA_8K
from sipbot.media.formats import PCMU_8K as PCMU_8K
from sipbot.media.formats import AudioFormat as AudioFormat

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


# --------------------------------------------------------------------------- events out


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


ProviderEvent = (
    AudioOut
    | Transcript
    | ToolCall
    | ToolCallCancelled
    | Interrupted
    | TurnComplete
    | ProviderNotice
    | ProviderFailed
)


# --------------------------------------------------------------------------- the seams


class ProviderSession(Protocol):
    """One call's conversation with a model. See the module docstring for the rules."""

    @property
    def input_format(self) -> AudioFormat:
        """The format ``send_audio`` expects."""
        ...

    @property
    def output_format(self) -> AudioFormat:
        """The format of :class:`AudioOut` audio."""
        ...

    def send_audio(self, audio: bytes) -> None:
        """Queue caller audio (any whole number of samples). Never blocks, never raises."""
        ...

    def events(self) -> AsyncIterator[ProviderEvent]:
        """The session's events, until it is closed."""
        ...

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        """Answer a :class:`ToolCall` (``result`` is JSON-serialisable)."""
        ...

    async def send_text(self, text: str) -> None:
        """Tell the model something as caller text (e.g. ``DTMF digit 5``)."""
        ...

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Report that the caller heard only ``played_ms`` of ``item_id`` (after a barge-in)."""
        ...

    async def close(self) -> None:
        """End the session (idempotent, bounded in time)."""
        ...


class Provider(Protocol):
    """A configured provider (one per agent); opens one session per call."""

    name: str

    async def open(self, call: CallInfo, config: SessionConfig) -> ProviderSession:
        """Open a session for ``call``.

        Raises:
            ProviderConnectError: the provider cannot be reached or rejects the credentials.
        """
        ...
