"""The provider interface: what a speech-to-speech model session looks like to a call.

A :class:`Provider` is made once per configured agent; :meth:`Provider.open` makes one
:class:`ProviderSession` per call. Sessions speak only sipbot's neutral types (defined in
:mod:`sipbot.domain`, re-exported here): raw audio bytes in a declared :class:`AudioFormat`, and
the frozen events. Nothing past a provider module sees an SDK object.

Contract of a session (every implementation keeps it;
``tests/integration/test_provider_contract.py`` checks it for each provider):

* Rule 1: ``send_audio`` never blocks and never raises: it queues (or drops, once closed).
  The media path calls it once per 20 ms frame.
* Rule 2: ``events()`` yields events until the session is closed, then ends. A failure the
  session cannot recover from is reported as one :class:`ProviderFailed` and then the iterator ends.
* Rule 3: every :class:`AudioOut` carries the ``item_id`` of the response it belongs to, so the
  call can report back (:meth:`ProviderSession.truncate`) how much of that item the caller heard.
* Rule 4: ``close()`` is idempotent and returns promptly (bounded), even if the peer is stuck.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

# The neutral types live in sipbot.domain; re-exported here for the provider modules.
from sipbot.domain import PCM16_16K as PCM16_16K
from sipbot.domain import PCM16_24K as PCM16_24K
from sipbot.domain import PCMA_8K as PCMA_8K
from sipbot.domain import PCMU_8K as PCMU_8K
from sipbot.domain import AudioFormat as AudioFormat
from sipbot.domain import AudioOut as AudioOut
from sipbot.domain import CallInfo as CallInfo
from sipbot.domain import Heard as Heard
from sipbot.domain import Interrupted as Interrupted
from sipbot.domain import ProviderEvent as ProviderEvent
from sipbot.domain import ProviderFailed as ProviderFailed
from sipbot.domain import ProviderNotice as ProviderNotice
from sipbot.domain import ProviderStalled as ProviderStalled
from sipbot.domain import SessionConfig as SessionConfig
from sipbot.domain import ToolCall as ToolCall
from sipbot.domain import ToolCallCancelled as ToolCallCancelled
from sipbot.domain import ToolSpec as ToolSpec
from sipbot.domain import Transcript as Transcript
from sipbot.domain import TurnComplete as TurnComplete
from sipbot.domain import TurnDetection as TurnDetection

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
