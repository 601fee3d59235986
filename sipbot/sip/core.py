"""The sans-I/O SIP endpoint: every uniform SIP behaviour of sipbot's user agent.

The shell feeds datagrams / framed stream messages to :meth:`Core.receive`, sends what
:meth:`Core.data_to_send` returns, hands :meth:`Core.events` to the application and calls
:meth:`Core.handle_timers` at :meth:`Core.next_deadline`. The core never reads a clock.

Rules:

* Rule 1: incoming requests get RFC 3581 ``received``/``rport`` on their top Via; responses go
  back per §18.2.2 + RFC 3581 (UDP: received:rport; TCP: the same connection, else sent-by).
* Rule 2: requests that match a server transaction are retransmissions and never reach the
  application (§17.2.3): a retransmitted INVITE is never a second call, a retransmitted BYE
  gets its 200 again.
* Rule 3: a new request is checked in RFC 3261 §8.2 order: method (405/501 + Allow),
  Request-URI scheme (416), merged or looped request (482), Require (420 + Unsupported), body
  type (415); then an in-dialog request needs its dialog (481) and an in-order CSeq (500).
* Rule 4: a 2xx to an INVITE is retransmitted by the core (T1 doubling to T2) until the ACK;
  without one after 64·T1 the dialog is ended with a BYE ("ack-timeout").
* Rule 5: the application answers new INVITEs (``progress``/``accept``/``reject``); if it does
  not within ``answer_timeout`` the core answers 480. Re-offers (re-INVITE, UPDATE) and INFO,
  NOTIFY, REFER in a dialog are events too (:class:`ReofferReceived`, :class:`RequestReceived`),
  answered through :meth:`Core.answer_reoffer` / :meth:`Core.answer_request` (else 500 after
  ``request_answer_timeout``). No application code runs inside :meth:`Core.receive`.
* Rule 6: a call ends exactly once for the application (:class:`CallTerminated` or
  :class:`CallFailed`), whoever ends it and however.
* Rule 7: outgoing calls: the core builds the ACK for a 2xx (and re-sends it for a
  retransmitted 2xx), answers one digest challenge when credentials are given, and CANCELs an
  abandoned INVITE as soon as a provisional response allows it (§9.1).

Parts, composed here: :mod:`sipbot.sip.legs` (values and events), :mod:`sipbot.sip.compose`
(pure helpers), :mod:`sipbot.sip.endpoint` (the one transaction/timer layer: transactions,
timers, queues, message building), :mod:`sipbot.sip.uas` (server transactions' user: incoming
calls, in-dialog requests) and :mod:`sipbot.sip.uac` (client transactions' user: outgoing calls,
in-dialog requests and BYE). This module parses, routes and holds the public entry points.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

from sipbot.errors import SipParseError
from sipbot.sip.auth import Credentials
from sipbot.sip.compose import ALLOW, count_key, stamp_via
from sipbot.sip.endpoint import TransactionLayer
from sipbot.sip.legs import (
    AddressFor,
    CallAnswered,
    CallConfirmed,
    CallFailed,
    CallLeg,
    CallProgress,
    CallState,
    CallTerminated,
    ClientRequest,
    CoreSettings,
    Event,
    IncomingCall,
    Outgoing,
    Peer,
    ReofferReceived,
    RequestCompleted,
    RequestReceived,
    ServerRequest,
)
from sipbot.sip.message import SipRequest, SipResponse, generate_tag, parse_message
from sipbot.sip.transaction import server_key
from sipbot.sip.uac import Uac
from sipbot.sip.uas import Uas

log = logging.getLogger(__name__)

# The start of a Via element a response can be sent back along: "SIP/2.0/UDP host" (any
# version: a SIP/7.0 request still gets its 505 along its own Via).
_SENT_BY_RE = re.compile(
    r"SIP[ \t]*/[ \t]*[0-9]+\.[0-9]+[ \t]*/[ \t]*[A-Za-z0-9\-.!%*_+`'~]+[ \t]+[\w\[]",
    re.IGNORECASE,
)

__all__ = [
    "ALLOW",
    "CallAnswered",
    "CallConfirmed",
    "CallFailed",
    "CallLeg",
    "CallProgress",
    "CallState",
    "CallTerminated",
    "ClientRequest",
    "Core",
    "CoreSettings",
    "Event",
    "IncomingCall",
    "Outgoing",
    "Peer",
    "ReofferReceived",
    "RequestCompleted",
    "RequestReceived",
    "ServerRequest",
]


class Core:
    """A SIP user agent endpoint without I/O (see the module rules).

    One :class:`~sipbot.sip.endpoint.TransactionLayer` shared by a
    :class:`~sipbot.sip.uas.Uas` and a :class:`~sipbot.sip.uac.Uac` part.

    Args:
        settings: behaviour and timers.
        address_for: ``(transport, peer_host) -> (host, port)`` to advertise in Via and Contact
            for messages to that peer (the shell knows the bound ports and public address).

    Attributes:
        dropped: malformed messages dropped unanswered since start (see
            :meth:`_answer_parse_error`), logged rate-limited.
    """

    def __init__(self, settings: CoreSettings, address_for: AddressFor) -> None:
        self.settings = settings
        self._layer = TransactionLayer(settings, address_for, self._call_timer)
        self._uac = Uac(self._layer)
        self._uas = Uas(self._layer, self._uac.send_bye)
        self._packet_log = self._layer.packet_log
        self.dropped = 0

    # ----------------------------------------------------------------- I/O

    def receive(self, data: bytes, source: Peer, now: float) -> None:
        """Process one datagram or one framed stream message from ``source``."""
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._answer_parse_error(exc, source, now)
            return
        self._layer.message_counts[count_key("in", message)] += 1
        if isinstance(message, SipResponse):
            self._uac.receive_response(message, source, now)
        else:
            self._receive_request(message, source, now)

    @property
    def message_counts(self) -> Counter[tuple[str, str, str]]:
        """Messages received and sent: ``(direction, method, status or "") -> count``."""
        return self._layer.message_counts

    @property
    def options_status(self) -> int:
        """The answer to out-of-dialog OPTIONS (503 while draining)."""
        return self._layer.options_status

    @options_status.setter
    def options_status(self, status: int) -> None:
        self._layer.options_status = status

    def data_to_send(self) -> list[Outgoing]:
        """Return and clear the messages to put on the wire."""
        return self._layer.data_to_send()

    def events(self) -> list[Event]:
        """Return and clear the events for the application."""
        return self._layer.events()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timers` must run next (monotonic seconds), or None."""
        return self._layer.next_deadline()

    def handle_timers(self, now: float) -> None:
        """Fire every transaction and call timer due at ``now``."""
        self._layer.handle_timers(now)

    def transport_error(self, destination: Peer, now: float) -> None:
        """The shell could not deliver to ``destination``: fail client transactions to it."""
        self._layer.transport_error(destination, now)

    @property
    def calls(self) -> list[CallLeg]:
        """Calls that have not ended yet (including ones whose BYE is still out)."""
        return self._layer.calls

    def connections_in_use(self) -> set[int]:
        """TCP connection ids that live calls or transactions still use (not to idle-close)."""
        return self._layer.connections_in_use()

    # ----------------------------------------------------------------- incoming calls (UAS)

    def progress(
        self, call: CallLeg, status: int = 180, sdp: bytes | None = None, *, now: float
    ) -> bool:
        """Send a provisional response (see :meth:`sipbot.sip.uas.Uas.progress`)."""
        return self._uas.progress(call, status, sdp, now=now)

    def accept(self, call: CallLeg, sdp: bytes, *, now: float) -> bool:
        """Answer an incoming call with 200 OK + SDP (see :meth:`sipbot.sip.uas.Uas.accept`)."""
        return self._uas.accept(call, sdp, now=now)

    def reject(
        self,
        call: CallLeg,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        *,
        now: float,
        why: str = "rejected",
    ) -> bool:
        """Answer an incoming call with a final 3xx-6xx (see :meth:`sipbot.sip.uas.Uas.reject`)."""
        return self._uas.reject(call, status, reason, headers, now=now, why=why)

    def answer_reoffer(
        self, pending: ServerRequest, answer: bytes | int | None, *, now: float
    ) -> bool:
        """Answer a :class:`ReofferReceived`: SDP, a 300-699 status, or None (our current SDP).

        Returns:
            False when it was answered already (timeout, or the dialog ended).
        """
        return self._uas.answer_reoffer(pending, answer, now=now)

    def answer_request(self, pending: ServerRequest, status: int | None, *, now: float) -> bool:
        """Answer a :class:`RequestReceived` with a 200-699 status (None: the default).

        Returns:
            False when it was answered already (timeout, or the dialog ended).
        """
        return self._uas.answer_request(pending, status, now=now)

    # ----------------------------------------------------------------- outgoing (UAC)

    def invite(
        self,
        uri: str,
        sdp: bytes,
        *,
        destination: Peer,
        now: float,
        from_user: str = "sipbot",
        headers: Sequence[tuple[str, str]] = (),
        credentials: Credentials | None = None,
        timeout: float = 32.0,
        call_id: str | None = None,
    ) -> CallLeg:
        """Start an outgoing call (see :meth:`sipbot.sip.uac.Uac.invite`).

        Raises:
            LocalSipError: ``uri`` is not a URI.
        """
        return self._uac.invite(
            uri,
            sdp,
            destination=destination,
            now=now,
            from_user=from_user,
            headers=headers,
            credentials=credentials,
            timeout=timeout,
            call_id=call_id,
        )

    def cancel(self, call: CallLeg, *, now: float, why: str = "cancelled") -> None:
        """Abandon an outgoing call that has no final response yet (CANCEL per §9.1)."""
        self._uac.cancel(call, now=now, why=why)

    def request(
        self,
        call: CallLeg,
        method: str,
        *,
        now: float,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> ClientRequest:
        """Send an in-dialog request (see :meth:`sipbot.sip.uac.Uac.request`).

        Raises:
            LocalSipError: no confirmed dialog, ACK/CANCEL/BYE (use :meth:`bye`), or an
                INVITE while another INVITE transaction is in progress (§14.1).
        """
        return self._uac.request(
            call, method, now=now, body=body, content_type=content_type, headers=headers
        )

    # ----------------------------------------------------------------- ending calls

    def bye(
        self, call: CallLeg, *, now: float, why: str = "bye-sent", force: bool = False
    ) -> ClientRequest | None:
        """End a call: BYE a dialog, CANCEL an outgoing INVITE, 480 an unanswered one.

        A UAS waits for the ACK before its BYE (§15) unless ``force`` (shutdown).

        Returns:
            The BYE's :class:`ClientRequest` (completes on the final response or timeout),
            or None when no BYE is needed.
        """
        if call.state is CallState.INCOMING:
            self._uas.reject(call, 503 if why == "shutdown" else 480, now=now, why=why)
            return None
        if call.state is CallState.CALLING:
            self._uac.cancel(call, now=now, why=why)
            return None
        if call.state in (CallState.TERMINATING, CallState.TERMINATED):
            return call.bye_request
        handle = ClientRequest(self._layer.next_id(), call, "BYE")
        call.bye_request = handle
        if call.state is CallState.ACCEPTED and not force:
            call.bye_pending = True
            call.bye_reason = why
            return handle
        self._uac.send_bye(call, why, now)
        return handle

    def shutdown(self, *, now: float) -> None:
        """End every call: 503 unanswered ones, CANCEL outgoing ones, BYE the rest at once."""
        for call in self._layer.calls:
            self.bye(call, now=now, why="shutdown", force=True)

    def _call_timer(self, call: CallLeg, now: float) -> None:
        self._uas.call_timer(call, now)
        self._uac.call_timer(call, now)

    # ----------------------------------------------------------------- receiving

    def _answer_parse_error(self, exc: SipParseError, source: Peer, now: float) -> None:
        """Answer a malformed request with the parser's status and reason (RFC 4475 §3.1.2).

        Only a request whose top Via names a sent-protocol and a host can be answered (the
        response carries its Vias, §8.2.6.2); a malformed one beyond that is echoed and the
        answer goes to the source. Anything else — a response, an ACK, no start line, no Via,
        an empty or unreadable top Via — is dropped: counted in ``dropped``, logged rate-limited.
        """
        request = exc.request
        # the first Via line's start: no list splitting for a datagram we may just drop
        vias = request.headers.get_lines("Via") if request is not None else []
        top = next((v.lstrip(" ,\t") for v in vias if v.strip(" ,\t")), "")
        if request is None or request.method == "ACK" or not _SENT_BY_RE.match(top):
            self.dropped += 1
            self._packet_log.info(now, "dropped a malformed message from %s: %s", source, exc)
            return
        self._packet_log.info(now, "answering a malformed request from %s: %s", source, exc)
        try:
            peer = self._layer.response_peer(stamp_via(request, source), source)
        except SipParseError:
            peer = source
        response = self._layer.response(request, exc.status, exc.reason, tag=generate_tag())
        self._layer.send(response, peer)

    def _receive_request(self, request: SipRequest, source: Peer, now: float) -> None:
        try:
            via = stamp_via(request, source)
            key = server_key(request)
        except SipParseError as exc:  # the parser validated these: only odd corner cases
            self.dropped += 1
            self._packet_log.info(now, "dropped a request from %s: %s", source, exc)
            return
        if self._layer.match_server(key, request, now):
            return
        if request.method == "ACK":
            self._uas.receive_ack(request, now)
            return
        peer = self._layer.response_peer(via, source)
        entry = self._layer.new_server(request, key, peer, now, self._uas.receive_ack)
        self._uas.new_request(entry, request, source, now)
        self._layer.schedule(entry)
