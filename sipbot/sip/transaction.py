"""The four RFC 3261 §17 transaction state machines (+ RFC 6026 "Accepted"), sans-I/O.

A transaction never touches a socket or a clock. Inputs carry ``now`` (monotonic seconds);
outputs are queued as frozen :data:`Action` values that the owner drains with
:meth:`Transaction.take_actions` after every call:

* :class:`SendMessage` — put this message on the wire (to the transaction's peer);
* :class:`Deliver` — hand this message to the transaction user (TU);
* :class:`TimedOut` — Timer B, F or H fired (the TU treats it like a 408);
* :class:`TransportFailed` — the transport reported an error;
* :class:`Terminated` — the transaction is over; forget it.

Rules the machines keep:

* Rule 1: timers are absolute deadlines; :meth:`Transaction.next_deadline` is the earliest one
  and :meth:`Transaction.handle_timer` fires every timer due at ``now``, earliest first.
* Rule 2: on a reliable transport Timers A, E and G are never started and D, I, J and K are
  zero (the transaction terminates at once); B, F, H, L and M run on every transport.
* Rule 3: retransmission intervals start at T1 and double; INVITE requests (Timer A) double
  without a cap, everything else (Timers E and G) is capped at T2; in "Proceeding" a
  non-INVITE request is retransmitted every T2.
* Rule 4: the INVITE client transaction builds and sends the ACK for 300-699 itself; a 2xx
  moves it to "Accepted" (RFC 6026) where further 2xx are passed to the TU, which sends the
  ACK. The INVITE server transaction passes the ACK for a 2xx to the TU and absorbs
  retransmitted INVITEs in "Accepted" (RFC 6026 §8.5).
* Rule 5: requests the server transaction receives after the one that created it are
  retransmissions: never delivered again; the last response is resent where §17.2 says so.

Matching (§17.1.3, §17.2.3): :func:`server_key` and :func:`client_key` compute the keys; an ACK
maps to its INVITE, a CANCEL has its own key (:func:`invite_key_for_cancel` finds the INVITE it
cancels). Requests whose branch lacks the magic cookie fall back to RFC 2543 matching.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sipbot.errors import LocalSipError
from sipbot.sip.address import parse_name_addr, parse_via
from sipbot.sip.headers import Headers
from sipbot.sip.message import BRANCH_MAGIC, SipMessage, SipRequest, SipResponse

RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 timer values in seconds (Table 4). ``d`` is Timer D on unreliable transports."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class SendMessage:
    message: SipMessage


@dataclass(frozen=True, slots=True)
class Deliver:
    message: SipMessage


@dataclass(frozen=True, slots=True)
class TimedOut:
    timer: str  # "B", "F" or "H"


@dataclass(frozen=True, slots=True)
class TransportFailed:
    pass


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Action = SendMessage | Deliver | TimedOut | TransportFailed | Terminated
TransactionKey = tuple[str, ...]


# --------------------------------------------------------------------------- matching


def _from_tag(message: SipMessage) -> str:
    return parse_name_addr(message.headers.get("From") or "", "From").tag or ""


def server_key(request: SipRequest, method: str | None = None) -> TransactionKey:
    """The server transaction a request belongs to (§17.2.3; ACK → its INVITE).

    ``method`` overrides the request's method (used to find the INVITE a CANCEL targets).

    Raises:
        SipParseError: the top Via or From is malformed.
    """
    via = parse_via(request.headers.get("Via") or "")
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    port = str(via.port or "")
    branch = via.branch
    if branch and branch.startswith(BRANCH_MAGIC):
        return (branch, via.host.lower(), port, method)
    # RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number and the top Via identify
    # the transaction (the To tag is left out so that the ACK matches its INVITE).
    tag = _from_tag(request)
    number = str(request.cseq[0])
    return ("2543", request.call_id, tag, number, method, request.uri, via.host.lower(), port)


def invite_key_for_cancel(cancel: SipRequest) -> TransactionKey:
    """The key of the INVITE server transaction a CANCEL targets (§9.2)."""
    return server_key(cancel, "INVITE")


def client_key(message: SipMessage) -> TransactionKey:
    """The client transaction a response belongs to (§17.1.3): top branch + CSeq method.

    Also the key under which a client transaction created for ``message`` (a request) is kept.

    Raises:
        SipParseError: the top Via or CSeq is malformed.
    """
    via = parse_via(message.headers.get("Via") or "")
    return (via.branch or "", message.cseq[1])


def is_reliable(transport: str) -> bool:
    return transport.lower() in RELIABLE_TRANSPORTS


# --------------------------------------------------------------------------- builders


def build_ack_for_error(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK the INVITE client transaction sends for a 300-699 response (§17.1.1.3)."""
    h = invite.headers
    out = Headers()
    out.add("Via", h.get("Via") or "")
    for route in h.get_all("Route"):
        out.add("Route", route)
    out.add("Max-Forwards", "70")
    out.add("From", h.get("From") or "")
    out.add("To", response.headers.get("To") or "")
    out.add("Call-ID", invite.call_id)
    out.add("CSeq", f"{invite.cseq[0]} ACK")
    return SipRequest("ACK", invite.uri, out)


def build_cancel(invite: SipRequest) -> SipRequest:
    """The CANCEL for a pending INVITE (§9.1): same branch, URI, Call-ID, From, To, CSeq number."""
    h = invite.headers
    out = Headers()
    out.add("Via", h.get("Via") or "")
    for route in h.get_all("Route"):
        out.add("Route", route)
    out.add("Max-Forwards", "70")
    out.add("From", h.get("From") or "")
    out.add("To", h.get("To") or "")
    out.add("Call-ID", invite.call_id)
    out.add("CSeq", f"{invite.cseq[0]} CANCEL")
    return SipRequest("CANCEL", invite.uri, out)


# --------------------------------------------------------------------------- machines


class Transaction:
    """Common machinery: state, timers as deadlines, the action queue."""

    __slots__ = ("_actions", "_timers", "key", "reliable", "request", "settings", "state")

    def __init__(
        self, request: SipRequest, key: TransactionKey, reliable: bool, settings: TimerSettings
    ) -> None:
        self.request = request
        self.key = key
        self.reliable = reliable
        self.settings = settings
        self.state = State.TRYING
        self._timers: dict[str, float] = {}
        self._actions: list[Action] = []

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def take_actions(self) -> list[Action]:
        """Return and clear the queued actions."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """The earliest running timer's deadline, or None."""
        return min(self._timers.values()) if self._timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first."""
        while self._timers:
            name = min(self._timers, key=self._timers.__getitem__)
            if self._timers[name] > now:
                return
            del self._timers[name]
            self._fire(name, now)

    def transport_error(self, now: float) -> None:
        """The transport could not send our message (§17.1.4 / §17.2.4)."""
        if self.state is not State.TERMINATED:
            self._actions.append(TransportFailed())
            self._terminate()

    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _send(self, message: SipMessage) -> None:
        self._actions.append(SendMessage(message))

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._timers.clear()
        self._actions.append(Terminated())

    def _end_after(self, name: str, delay: float, now: float) -> None:
        """Start a wait timer (D, I, J, K), or terminate now if it is zero (reliable)."""
        if self.reliable:
            self._terminate()
        else:
            self._timers[name] = now + delay

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value}>"


class ClientInviteTransaction(Transaction):
    """INVITE client transaction (§17.1.1, RFC 6026 §7.2). Sends the INVITE on creation."""

    __slots__ = ("_ack", "_interval")

    def __init__(
        self, request: SipRequest, reliable: bool, settings: TimerSettings, now: float
    ) -> None:
        super().__init__(request, client_key(request), reliable, settings)
        self.state = State.CALLING
        self._interval = settings.t1
        self._ack: SipRequest | None = None
        self._send(request)
        if not reliable:
            self._timers["A"] = now + settings.t1
        self._timers["B"] = now + 64 * settings.t1

    def receive(self, response: SipResponse, now: float) -> None:
        """A response matched this transaction."""
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                self.state = State.PROCEEDING
                self._timers.pop("A", None)
                self._timers.pop("B", None)  # Timer B acts only in "Calling"
                self._actions.append(Deliver(response))
            elif status < 300:
                self.state = State.ACCEPTED
                self._timers.clear()
                self._timers["M"] = now + 64 * self.settings.t1
                self._actions.append(Deliver(response))
            else:
                self.state = State.COMPLETED
                self._timers.clear()
                self._ack = build_ack_for_error(self.request, response)
                self._send(self._ack)
                self._actions.append(Deliver(response))
                self._end_after("D", self.settings.d, now)
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            self._actions.append(Deliver(response))
        elif self.state is State.COMPLETED and status >= 300 and self._ack is not None:
            self._send(self._ack)

    def _fire(self, name: str, now: float) -> None:
        if name == "A":
            self._send(self.request)
            self._interval *= 2
            self._timers["A"] = now + self._interval
        elif name == "B":
            self._actions.append(TimedOut("B"))
            self._terminate()
        else:  # D, M
            self._terminate()


class ServerInviteTransaction(Transaction):
    """INVITE server transaction (§17.2.1, RFC 6026 §7.1). Starts in "Proceeding".

    The creating INVITE is not delivered (the owner has it); send 100 Trying with
    :meth:`send_response` right away.
    """

    __slots__ = ("_interval", "last_response")

    def __init__(
        self, request: SipRequest, reliable: bool, settings: TimerSettings, now: float
    ) -> None:
        super().__init__(request, server_key(request), reliable, settings)
        self.state = State.PROCEEDING
        self.last_response: SipResponse | None = None
        self._interval = settings.t1

    def receive(self, request: SipRequest, now: float) -> None:
        """A retransmitted INVITE, or an ACK, matched this transaction."""
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._timers.clear()
                self._end_after("I", self.settings.t4, now)
            elif self.state is State.ACCEPTED:
                self._actions.append(Deliver(request))
            return
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            self._send(self.last_response)

    def send_response(self, response: SipResponse, now: float) -> None:
        """Send a response from the TU.

        Raises:
            LocalSipError: a final response was already sent (a 2xx may be repeated in
                "Accepted": that is the TU's 2xx retransmission).
        """
        status = response.status
        if self.state is State.ACCEPTED and 200 <= status < 300:
            self._send(response)
            return
        if self.state is not State.PROCEEDING:
            raise LocalSipError(f"cannot send {status} in state {self.state.value}")
        self.last_response = response
        self._send(response)
        if status < 200:
            return
        if status < 300:
            self.state = State.ACCEPTED
            self._timers["L"] = now + 64 * self.settings.t1
            return
        self.state = State.COMPLETED
        if not self.reliable:
            self._timers["G"] = now + self.settings.t1
        self._timers["H"] = now + 64 * self.settings.t1

    def _fire(self, name: str, now: float) -> None:
        if name == "G":
            assert self.last_response is not None
            self._send(self.last_response)
            self._interval = min(2 * self._interval, self.settings.t2)
            self._timers["G"] = now + self._interval
        elif name == "H":
            self._actions.append(TimedOut("H"))
            self._terminate()
        else:  # I, L
            self._terminate()


class ClientNonInviteTransaction(Transaction):
    """Non-INVITE client transaction (§17.1.2). Sends the request on creation."""

    __slots__ = ("_interval",)

    def __init__(
        self, request: SipRequest, reliable: bool, settings: TimerSettings, now: float
    ) -> None:
        super().__init__(request, client_key(request), reliable, settings)
        self._interval = settings.t1
        self._send(request)
        if not reliable:
            self._timers["E"] = now + settings.t1
        self._timers["F"] = now + 64 * settings.t1

    def receive(self, response: SipResponse, now: float) -> None:
        """A response matched this transaction."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            return  # "Completed" absorbs retransmitted finals
        self._actions.append(Deliver(response))
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        self._timers.clear()
        self._end_after("K", self.settings.t4, now)

    def _fire(self, name: str, now: float) -> None:
        if name == "E":
            self._send(self.request)
            if self.state is State.PROCEEDING:
                self._interval = self.settings.t2
            else:
                self._interval = min(2 * self._interval, self.settings.t2)
            self._timers["E"] = now + self._interval
        elif name == "F":
            self._actions.append(TimedOut("F"))
            self._terminate()
        else:  # K
            self._terminate()


class ServerNonInviteTransaction(Transaction):
    """Non-INVITE server transaction (§17.2.2). Starts in "Trying"; the request is not delivered."""

    __slots__ = ("last_response",)

    def __init__(
        self, request: SipRequest, reliable: bool, settings: TimerSettings, now: float
    ) -> None:
        super().__init__(request, server_key(request), reliable, settings)
        self.last_response: SipResponse | None = None

    def receive(self, request: SipRequest, now: float) -> None:
        """A retransmission of the request matched this transaction."""
        if self.state is not State.TRYING and self.last_response is not None:
            self._send(self.last_response)

    def send_response(self, response: SipResponse, now: float) -> None:
        """Send a response from the TU.

        Raises:
            LocalSipError: a final response was already sent.
        """
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise LocalSipError(f"cannot send {response.status} in state {self.state.value}")
        self.last_response = response
        self._send(response)
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        self._end_after("J", 64 * self.settings.t1, now)

    def _fire(self, name: str, now: float) -> None:
        self._terminate()  # J


ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
