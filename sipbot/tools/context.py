"""What a tool may see and do during a call: :class:`ToolContext` and the :class:`CallControl` seam.

``call.py`` implements :class:`CallControl` for a live call; tests use a recorder. A tool function
receives the context when one of its parameters is annotated ``ToolContext``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sipbot.domain import CallInfo, Transcript


class CallControl(Protocol):
    """Actions on the live call, implemented by the call (``call.py``).

    Every method returns once the action is under way or done; failures raise
    :class:`~sipbot.errors.SipbotError` subclasses (e.g. ``RequestFailed`` for a refused REFER),
    which the tool runner turns into an error result the model can speak about.
    """

    @property
    def info(self) -> CallInfo:
        """The call's caller, DID, headers and ids."""
        ...

    async def hang_up(self) -> None:
        """End the call (BYE) after the sentence now playing has finished."""
        ...

    async def transfer(self, uri: str, *, warm: bool = False) -> str:
        """Transfer the caller to ``uri`` (SIP REFER; ``warm``: call and brief the target first,
        then join them with REFER + Replaces); the outcome in words once known
        ("transferred", "busy (486)", "refused (403)", ...). The URI was checked by the caller.
        A tool that awaits this needs a timeout longer than the agent's ``transfer_timeout_s``
        plus the REFER's own transaction (``TRANSFER_TOOL_TIMEOUT_S`` does)."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Send ``digits`` (``0-9*#A-D``, already validated) as RFC 4733 events."""
        ...


@runtime_checkable
class CallHandoff(Protocol):
    """A call that can hand itself over to another agent (the built-in ``handoff`` tool)."""

    async def handoff(self, agent: str, reason: str) -> None:
        """Continue the call with ``agent`` (already allowed) once the current tool has finished.

        Raises:
            ToolError: the agent cannot take the call.
        """
        ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    """The per-call context handed to tools.

    Attributes:
        control: actions on the call (hang up, transfer, DTMF) and its :class:`CallInfo`.
        transcript: the conversation so far; a live view owned by the call (it grows while the
            call goes on), so read it when the tool runs rather than keeping it.
    """

    control: CallControl
    transcript: Sequence[Transcript] = ()

    @property
    def call(self) -> CallInfo:
        """The call this tool runs for."""
        return self.control.info

    @property
    def caller(self) -> str:
        """The caller's number / user part (From user)."""
        return self.control.info.caller

    @property
    def did(self) -> str:
        """The number that was called (request-URI / To user)."""
        return self.control.info.did

    @property
    def call_id(self) -> str:
        """The SIP Call-ID."""
        return self.control.info.call_id

    @property
    def headers(self) -> Mapping[str, str]:
        """The INVITE's headers as the call recorded them."""
        return self.control.info.headers
