"""Outbound calls: the request, its status events and the sans-I/O call-state core.

:class:`DialRequest` is what :meth:`sipbot.server.Server.dial` takes; every state transition of
the call it places is a :class:`DialStatus` (to the ``on_status`` callback, the status webhook,
the log and the call record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sipbot.errors import DialError, DialRefused

__all__ = ["DialError", "DialRefused", "DialRequest", "DialState", "DialStatus"]

DialState = Literal[
    "queued", "trying", "ringing", "answered", "busy", "no-answer", "rejected", "failed", "ended"
]


@dataclass(frozen=True)
class DialRequest:
    """A call to place.

    Attributes:
        to: a ``sip:``/``sips:`` URI, or a number/user sent through the trunk.
        agent: an agent of the dialplan.
        trunk: a trunk of the dialplan (None: direct, or the only trunk).
        caller_id: the user part/number for From and P-Asserted-Identity.
        variables: prompt template variables.
        status_callback: an http(s) URL that gets every :class:`DialStatus` as JSON (POST).
        amd: answering-machine detection; None = the agent's setting.
        ring_timeout_s: no answer after this -> CANCEL, state ``no-answer``.
    """

    to: str
    agent: str
    trunk: str | None = None
    caller_id: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    status_callback: str | None = None
    amd: bool | None = None
    ring_timeout_s: float | None = None


@dataclass(frozen=True)
class DialStatus:
    """One state transition of an outbound call.

    Attributes:
        call_id: the call's SIP Call-ID.
        state: the state entered.
        at: when (epoch seconds).
        sip_code: the SIP response code that caused it, if any.
        reason: the Reason header, cause text, or why it failed.
    """

    call_id: str
    state: DialState
    at: float
    sip_code: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON object the status webhook gets."""
        return {
            "call_id": self.call_id,
            "state": self.state,
            "at": self.at,
            "sip_code": self.sip_code,
            "reason": self.reason,
        }
