"""The values the SIP core and its shell share: addresses, call legs, client requests, events.

:class:`CallLeg`, :class:`ClientRequest` and :class:`ServerRequest` are mutable objects owned by
:class:`sipbot.sip.core.Core`; the shell reads them and answers through the core's entry points.
Events are frozen.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from sipbot.sip.auth import Credentials
from sipbot.sip.dialog import DialogState
from sipbot.sip.message import SipRequest, SipResponse
from sipbot.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TimerSettings,
)

# --------------------------------------------------------------------------- I/O values


@dataclass(frozen=True, slots=True)
class Peer:
    """A transport address. ``connection`` names an open TCP connection (shell-assigned id);
    None means "connect to (or reuse a connection to) host:port"."""

    transport: str  # "udp" | "tcp"
    host: str
    port: int
    connection: int | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    data: bytes
    destination: Peer


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Endpoint behaviour.

    ``answer_timeout``: seconds the app has to answer an INVITE (then 480).
    ``request_answer_timeout``: seconds the app has to answer a re-offer or another in-dialog
    request (:class:`ReofferReceived`, :class:`RequestReceived`; then 500).
    ``force_rport``: answer UDP requests at their source port even without ``rport`` in the
    Via (NAT-friendly, Asterisk's default); False follows RFC 3261 §18.2.2 literally.
    """

    user_agent: str = "sipbot/0.1"
    timers: TimerSettings = field(default_factory=TimerSettings)
    answer_timeout: float = 60.0
    request_answer_timeout: float = 8.0
    contact_user: str = "sipbot"
    force_rport: bool = True


# (transport, peer host) → (host, port) to advertise in Via / Contact for that peer
AddressFor = Callable[[str, str], tuple[str, int]]


class CallState(enum.Enum):
    INCOMING = "incoming"  # UAS: INVITE received, no final response yet
    CALLING = "calling"  # UAC: INVITE sent, no final response yet
    ACCEPTED = "accepted"  # UAS: 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    TERMINATING = "terminating"  # our BYE is out
    TERMINATED = "terminated"


class CallLeg:
    """One INVITE dialog usage (incoming or outgoing), owned and mutated by the core.

    The application reads ``invite``, ``state``, ``remote_sdp``, ``local_sdp``, ``source`` and
    ``reason``. Other fields are the core's bookkeeping.
    """

    def __init__(self, id: int, role: str, invite: SipRequest, peer: Peer, tag: str) -> None:
        self.id = id
        self.role = role  # "uas" | "uac"
        self.invite = invite
        self.peer = peer  # where this call's messages go (with the TCP connection, if any)
        self.source = peer  # where the INVITE came from (UAS) / went to (UAC)
        self.local_tag = tag
        self.state = CallState.INCOMING if role == "uas" else CallState.CALLING
        self.dialog: DialogState | None = None
        self.local_sdp = b""
        self.remote_sdp = invite.body if role == "uas" else b""
        self.reason: str | None = None  # set once when the call ends for the app
        self.reported = False  # CallTerminated / CallFailed already emitted
        self.pending_in: dict[int, ServerRequest] = {}  # in-dialog requests the app must answer
        self.scheduled: float | None = None
        self.invite_entry: Entry | None = None
        # UAS: 2xx retransmission (§13.3.1.4) and answer timeout
        self.ok_data: bytes | None = None
        self.ok_cseq = 0
        self.ok_interval = 0.0
        self.ok_next: float | None = None
        self.ok_give_up: float | None = None
        self.answer_deadline: float | None = None
        self.bye_request: ClientRequest | None = None
        self.bye_pending = False
        self.bye_reason = "bye-sent"
        # UAC
        self.ack: Outgoing | None = None
        self.abandoned = False
        self.cancel_sent = False
        self.cancel_deadline: float | None = None
        self.timeout_deadline: float | None = None
        self.reinvite_out: ClientRequest | None = None
        self.credentials: Credentials | None = None
        self.auth_attempts: dict[str, int] = {}  # realm → answers sent

    def next_deadline(self) -> float | None:
        times = (
            self.ok_next,
            self.ok_give_up,
            self.answer_deadline,
            self.timeout_deadline,
            self.cancel_deadline,
            *(p.next_deadline() for p in self.pending_in.values()),
        )
        return min((t for t in times if t is not None), default=None)

    @property
    def reoffer_in(self) -> ServerRequest | None:
        """The re-INVITE/UPDATE offer the app has not answered yet, if any."""
        for pending in self.pending_in.values():
            if pending.reoffer:
                return pending
        return None

    def __repr__(self) -> str:
        return f"<CallLeg {self.id} {self.role} {self.state.value} {self.invite.call_id}>"


class ClientRequest:
    """A request the application (or the core, for BYE) sent in a dialog; see
    :class:`RequestCompleted`. ``request`` is None while a BYE waits for the ACK."""

    def __init__(self, id: int, call: CallLeg, method: str) -> None:
        self.id = id
        self.call = call
        self.method = method
        self.request: SipRequest | None = None
        self.response: SipResponse | None = None
        self.done = False
        self.ack: Outgoing | None = None

    def __repr__(self) -> str:
        return f"<ClientRequest {self.id} {self.method} done={self.done}>"


class ServerRequest:
    """An in-dialog request waiting for the application's answer (:class:`ReofferReceived`,
    :class:`RequestReceived`); answered once, by the app or by the core after its deadline."""

    def __init__(
        self, id: int, call: CallLeg, request: SipRequest, entry: Entry, deadline: float
    ) -> None:
        self.id = id
        self.call = call
        self.request = request
        self.entry = entry
        self.reoffer = request.method in ("INVITE", "UPDATE")
        self.deadline = deadline
        self.trying_at: float | None = None  # a re-INVITE gets 100 Trying if still unanswered
        self.answered = False

    @property
    def method(self) -> str:
        return self.request.method

    def next_deadline(self) -> float | None:
        if self.answered:
            return None
        return self.deadline if self.trying_at is None else min(self.deadline, self.trying_at)

    def __repr__(self) -> str:
        return f"<ServerRequest {self.id} {self.method} answered={self.answered}>"


class Entry:
    """A transaction plus where its messages go and whom it serves."""

    __slots__ = (
        "call",
        "data",
        "handle",
        "kind",
        "merge_key",
        "on_ack",
        "on_response",
        "peer",
        "scheduled",
        "txn",
    )

    def __init__(
        self,
        txn: ClientInviteTransaction
        | ClientNonInviteTransaction
        | ServerInviteTransaction
        | ServerNonInviteTransaction,
        peer: Peer,
        kind: str,
        call: CallLeg | None = None,
        handle: ClientRequest | None = None,
    ) -> None:
        self.txn = txn
        self.peer = peer
        self.kind = kind  # "server" | "invite" | "cancel" | "request"
        self.call = call
        self.handle = handle
        self.merge_key: tuple[str, str, str] | None = None
        self.scheduled: float | None = None
        self.data: tuple[object, bytes] | None = None  # last serialized message (retransmits)
        # the part of the core that uses this transaction: a client transaction's responses
        # (None: timeout / transport error), an INVITE server transaction's ACK for a 2xx
        self.on_response: Callable[[Entry, SipResponse | None, float], None] | None = None
        self.on_ack: Callable[[SipRequest, float], None] | None = None

    def next_deadline(self) -> float | None:
        return self.txn.next_deadline()


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class IncomingCall:
    call: CallLeg


@dataclass(frozen=True, slots=True)
class CallProgress:
    call: CallLeg
    response: SipResponse


@dataclass(frozen=True, slots=True)
class CallAnswered:
    call: CallLeg
    response: SipResponse


@dataclass(frozen=True, slots=True)
class CallFailed:
    """An outgoing call did not get a 2xx: reason "rejected", "cancelled", "timeout",
    "shutdown"; ``response`` is the final response when there was one."""

    call: CallLeg
    reason: str
    response: SipResponse | None


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    call: CallLeg


@dataclass(frozen=True, slots=True)
class CallTerminated:
    """A dialog (or a pending incoming call) ended: "bye-received", "bye-sent", "cancelled",
    "ack-timeout", "timeout", "rejected", "shutdown"."""

    call: CallLeg
    reason: str


@dataclass(frozen=True, slots=True)
class ReofferReceived:
    """A re-INVITE or UPDATE with an offer (or a re-INVITE without one: the app's offer goes
    in the 2xx) in a confirmed dialog. Answer with ``Core.answer_reoffer``; unanswered after
    ``request_answer_timeout`` the core answers 500."""

    pending: ServerRequest

    @property
    def call(self) -> CallLeg:
        return self.pending.call

    @property
    def offer(self) -> bytes:
        return self.pending.request.body


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """An in-dialog INFO, NOTIFY or REFER. Answer with ``Core.answer_request``; unanswered
    after ``request_answer_timeout`` the core answers 500."""

    pending: ServerRequest

    @property
    def call(self) -> CallLeg:
        return self.pending.call

    @property
    def request(self) -> SipRequest:
        return self.pending.request


@dataclass(frozen=True, slots=True)
class RequestCompleted:
    request: ClientRequest
    response: SipResponse | None  # None: timed out or transport error


Event = (
    IncomingCall
    | CallProgress
    | CallAnswered
    | CallFailed
    | CallConfirmed
    | CallTerminated
    | ReofferReceived
    | RequestReceived
    | RequestCompleted
)
