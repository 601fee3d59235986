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


BUSY_CODES = frozenset({486, 600})
FINAL_STATES: frozenset[DialState] = frozenset(
    {"answered", "busy", "no-answer", "rejected", "failed"}
)
_ORDER: dict[DialState, int] = {"queued": 0, "trying": 1, "ringing": 2}


def reason_text(
    status: int, phrase: str, reason_header: str | None, retry_after: str | None
) -> str:
    """The ``reason`` of a status: the Reason header (RFC 3326) when there is one, else the
    response's phrase; a Retry-After is appended (``"Service Unavailable; retry after 30 s"``)."""
    text = reason_header.strip() if reason_header else (phrase or str(status))
    if retry_after:
        seconds = retry_after.split(";", 1)[0].split("(", 1)[0].strip()
        text += f"; retry after {seconds} s"
    return text


class DialCore:
    """The state of one outbound call, from the request to its end (sans-I/O).

    The shell feeds it what happened with ``now`` (epoch seconds) and publishes the
    :class:`DialStatus` list each method returns.

    Rules:

    * Rule 1: states only move forward: queued → trying → ringing → (answered → ended) or
      (busy | no-answer | rejected | failed → ended). A repeated or late input (a second 180,
      a 487 after our CANCEL, a 200 after we gave up) returns nothing.
    * Rule 2: a 2xx is ``answered`` at the moment it arrived; 486/600 are ``busy``; any other
      final response is ``rejected`` with its code and Reason header (else its phrase).
    * Rule 3: at ``ring_deadline`` without a final response the shell CANCELs
      (:attr:`cancel` turns True): ``no-answer`` when the callee's side responded at all
      (100 included), else ``failed`` ("no response").
    * Rule 4: a failure before any final response (transport, DNS, the INVITE's own timeout,
      a queue refusal) is ``failed`` with why; every final state but ``answered`` is followed
      at once by ``ended``; ``answered`` by ``ended`` when the call ends.

    Args:
        call_id: the Call-ID.
        ring_timeout_s: how long to wait for a final response once the INVITE is sent.
    """

    def __init__(self, call_id: str, ring_timeout_s: float) -> None:
        self.call_id = call_id
        self.ring_timeout_s = ring_timeout_s
        self.state: DialState | None = None
        self.ring_deadline: float | None = None
        self.responded = False
        self.cancel = False
        self.sent_at: float | None = None
        self.ringing_at: float | None = None
        self.answered_at: float | None = None
        self.early_media = False
        self.final: DialStatus | None = None

    def _to(
        self, state: DialState, now: float, code: int | None = None, reason: str | None = None
    ) -> list[DialStatus]:
        status = DialStatus(self.call_id, state, now, code, reason)
        self.state = state
        out = [status]
        if state in FINAL_STATES:
            self.final = status
            self.ring_deadline = None
            if state != "answered":  # Rule 4
                self.state = "ended"
                out.append(DialStatus(self.call_id, "ended", now, code, reason))
        return out

    @property
    def done(self) -> bool:
        """A final state was reached (no more SIP input matters)."""
        return self.final is not None

    def queued(self, now: float) -> list[DialStatus]:
        """The request was accepted (it may wait for the trunk's limits)."""
        return self._to("queued", now) if self.state is None else []

    def invite_sent(self, now: float) -> list[DialStatus]:
        """The INVITE left: ``trying``; the ring deadline starts."""
        if self.done or self.state not in (None, "queued"):
            return []
        self.sent_at = now
        self.ring_deadline = now + self.ring_timeout_s
        return self._to("trying", now)

    def provisional(self, status: int, now: float, *, sdp: bool = False) -> list[DialStatus]:
        """A 1xx: 100 only says the far side is there; 180/183 are ``ringing`` (Rule 1)."""
        if self.done:
            return []
        self.responded = True
        if status == 183 and sdp:
            self.early_media = True
        if status <= 100 or self.state == "ringing":
            return []
        self.ringing_at = now
        return self._to("ringing", now, status)

    def final_response(
        self,
        status: int,
        now: float,
        *,
        phrase: str = "",
        reason_header: str | None = None,
        retry_after: str | None = None,
    ) -> list[DialStatus]:
        """A final response to the INVITE (Rule 2)."""
        self.responded = True
        if self.done:
            return []
        if 200 <= status < 300:
            self.answered_at = now
            return self._to("answered", now, status, reason_header or phrase or None)
        state: DialState = "busy" if status in BUSY_CODES else "rejected"
        return self._to(state, now, status, reason_text(status, phrase, reason_header, retry_after))

    def timer(self, now: float) -> list[DialStatus]:
        """Time passed: at the ring deadline, give up (Rule 3)."""
        if self.done or self.ring_deadline is None or now < self.ring_deadline:
            return []
        self.cancel = True
        if self.responded:
            return self._to("no-answer", now, None, f"no answer in {self.ring_timeout_s:g} s")
        return self._to("failed", now, None, f"no response in {self.ring_timeout_s:g} s")

    def failed(self, why: str, now: float, code: int | None = None) -> list[DialStatus]:
        """The call could not be placed or the INVITE got no final response (Rule 4)."""
        return [] if self.done else self._to("failed", now, code, why)

    def ended(self, reason: str, now: float) -> list[DialStatus]:
        """An answered call ended (BYE either way, the agent hung up, ...)."""
        if self.state != "answered":
            return []
        self.state = "ended"
        code = self.final.sip_code if self.final is not None else None
        return [DialStatus(self.call_id, "ended", now, code, reason)]
