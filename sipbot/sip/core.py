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
  not within ``answer_timeout`` the core answers 480. Re-INVITE, UPDATE, INFO, NOTIFY and REFER
  are answered at once through the call's ``on_reoffer`` / ``on_request`` hooks.
* Rule 6: a call ends exactly once for the application (:class:`CallTerminated` or
  :class:`CallFailed`), whoever ends it and however.
* Rule 7: outgoing calls: the core builds the ACK for a 2xx (and re-sends it for a
  retransmitted 2xx), answers one digest challenge when credentials are given, and CANCELs an
  abandoned INVITE as soon as a provisional response allows it (§9.1).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Sequence

from sipbot.errors import LocalSipError, SipParseError
from sipbot.sip.address import Via, format_host, parse_name_addr, parse_uri, parse_via
from sipbot.sip.dialog import DialogState, dialog_response
from sipbot.sip.headers import Headers
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
    Entry,
    Event,
    IncomingCall,
    Outgoing,
    Peer,
    RequestCompleted,
)
from sipbot.sip.message import (
    SipMessage,
    SipRequest,
    SipResponse,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    parse_message,
)
from sipbot.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    SendMessage,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    Terminated,
    TimedOut,
    TransportFailed,
    build_cancel,
    client_key,
    invite_key_for_cancel,
    is_reliable,
    server_key,
)

log = logging.getLogger(__name__)

ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "NOTIFY", "REFER")
ALLOW_VALUE = ", ".join(ALLOW)
KNOWN_NOT_ALLOWED = frozenset({"REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH", "PRACK"})
SUPPORTED: frozenset[str] = frozenset()  # option tags we implement (no 100rel, no timer yet)
URI_SCHEMES = frozenset({"sip", "sips", "tel"})
SDP_TYPE = "application/sdp"
DEFAULT_REQUEST_STATUS = {"INFO": 200, "NOTIFY": 200, "MESSAGE": 200, "REFER": 603}
CONTACT_METHODS = frozenset({"INVITE", "UPDATE", "REFER", "SUBSCRIBE", "NOTIFY"})
SDP_RANGES = frozenset({SDP_TYPE, "application/*", "*/*"})

Timed = CallLeg | Entry


def _tag(value: str | None) -> str | None:
    try:
        return parse_name_addr(value or "", "address").tag
    except SipParseError:
        return None


def _media_type(message: SipMessage) -> str:
    return (message.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


class Core:
    """A SIP user agent endpoint without I/O.

    Args:
        settings: behaviour and timers.
        address_for: ``(transport, peer_host) -> (host, port)`` to advertise in Via and Contact
            for messages to that peer (the shell knows the bound ports and public address).
    """

    def __init__(self, settings: CoreSettings, address_for: AddressFor) -> None:
        self.settings = settings
        self.timers = settings.timers
        self._address_for = address_for
        self._server: dict[tuple[str, ...], Entry] = {}
        self._client: dict[tuple[str, ...], Entry] = {}
        self._merge: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self._dialogs: dict[tuple[str, str, str], CallLeg] = {}
        self._calls: dict[int, CallLeg] = {}
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._out: list[Outgoing] = []
        self._events: list[Event] = []

    # ----------------------------------------------------------------- the I/O boundary

    def receive(self, data: bytes, source: Peer, now: float) -> None:
        """Process one datagram or one framed stream message from ``source``."""
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._answer_parse_error(exc, source)
            return
        if isinstance(message, SipResponse):
            self._receive_response(message, source, now)
        else:
            self._receive_request(message, source, now)

    def data_to_send(self) -> list[Outgoing]:
        """Return and clear the messages to put on the wire."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """Return and clear the events for the application."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timers` must run next (monotonic seconds), or None."""
        heap = self._heap
        while heap and heap[0][2].scheduled != heap[0][0]:
            heapq.heappop(heap)  # stale: the owner was rescheduled
        return heap[0][0] if heap else None

    def handle_timers(self, now: float) -> None:
        """Fire every transaction and call timer due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, obj = heapq.heappop(heap)
            if obj.scheduled != deadline:
                continue
            obj.scheduled = None
            if isinstance(obj, Entry):
                obj.txn.handle_timer(now)
                self._run(obj, now)
            else:
                self._call_timer(obj, now)

    def transport_error(self, destination: Peer, now: float) -> None:
        """The shell could not deliver to ``destination``: fail client transactions to it."""
        for entry in list(self._client.values()):
            p = entry.peer
            same = (p.transport, p.host, p.port) == (
                destination.transport,
                destination.host,
                destination.port,
            )
            if same or (p.connection is not None and p.connection == destination.connection):
                entry.txn.transport_error(now)
                self._run(entry, now)

    @property
    def calls(self) -> list[CallLeg]:
        """Calls that have not ended yet (including ones whose BYE is still out)."""
        return list(self._calls.values())

    def connections_in_use(self) -> set[int]:
        """TCP connection ids that live calls or transactions still use (not to idle-close)."""
        peers = [c.peer for c in self._calls.values()]
        peers += [e.peer for e in self._server.values()]
        peers += [e.peer for e in self._client.values()]
        return {p.connection for p in peers if p.connection is not None}

    # ----------------------------------------------------------------- UAS API

    def progress(
        self, call: CallLeg, status: int = 180, sdp: bytes | None = None, *, now: float
    ) -> bool:
        """Send a provisional response (18x, with Record-Route, Contact and optional SDP).

        Returns:
            False when the call is no longer waiting for an answer (e.g. CANCELled).
        """
        if not 100 < status < 200:
            raise LocalSipError(f"progress() needs a 101-199 status, not {status}")
        if call.role != "uas" or call.state is not CallState.INCOMING:
            return False
        self._respond_call(call, self._dialog_response(call, call.invite, status, sdp), now)
        return True

    def accept(self, call: CallLeg, sdp: bytes, *, now: float) -> bool:
        """Answer an incoming call with 200 OK + SDP, retransmitted until the ACK.

        Returns:
            False when the call is no longer waiting for an answer.
        """
        if call.role != "uas" or call.state is not CallState.INCOMING:
            return False
        call.local_sdp = sdp
        call.state = CallState.ACCEPTED
        call.answer_deadline = None
        response = self._dialog_response(call, call.invite, 200, sdp)
        self._respond_call(call, response, now)
        self._start_2xx(call, response, now)
        return True

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
        """Answer an incoming call with a final 3xx-6xx (retransmitted until the ACK).

        Returns:
            False when the call is no longer waiting for an answer.
        """
        if not 300 <= status < 700:
            raise LocalSipError(f"reject() needs a 300-699 status, not {status}")
        if call.role != "uas" or call.state is not CallState.INCOMING:
            return False
        response = self._response(call.invite, status, reason, tag=call.local_tag)
        for name, value in headers:
            response.headers.add(name, value)
        self._respond_call(call, response, now)
        self._end_call(call, why)
        return True

    # ----------------------------------------------------------------- UAC API

    def invite(
        self,
        uri: str,
        sdp: bytes,
        *,
        destination: Peer,
        now: float,
        from_user: str = "sipbot",
        headers: Sequence[tuple[str, str]] = (),
        credentials: object | None = None,
        timeout: float = 32.0,
    ) -> CallLeg:
        """Start an outgoing call: send an INVITE with ``sdp`` to ``destination``.

        The outcome arrives as :class:`CallAnswered` or :class:`CallFailed` (after ``timeout``
        seconds without a final response the INVITE is abandoned: reason "timeout").

        Raises:
            LocalSipError: ``uri`` is not a URI.
        """
        try:
            parse_uri(uri)
        except SipParseError:
            raise LocalSipError(f"not a URI: {uri!r}") from None
        host, _port = self._address_for(destination.transport, destination.host)
        tag = generate_tag()
        user = from_user if "@" in from_user else f"{from_user}@{format_host(host)}"
        h = Headers()
        h.add("Via", self._new_via(destination))
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{user}>;tag={tag}")
        h.add("To", f"<{uri}>")
        h.add("Call-ID", generate_call_id(host))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self._contact(destination.transport, destination.host, from_user))
        h.add("Allow", ALLOW_VALUE)
        h.add("User-Agent", self.settings.user_agent)
        for name, value in headers:
            h.add(name, value)
        if sdp:
            h.add("Content-Type", SDP_TYPE)
        request = SipRequest("INVITE", uri, h, sdp)
        call = CallLeg(next(self._ids), "uac", request, destination, tag)
        call.local_sdp = sdp
        call.credentials = credentials
        call.timeout_deadline = now + timeout
        self._calls[call.id] = call
        call.invite_entry = self._start_client(request, destination, "invite", now, call)
        self._schedule(call)
        return call

    def cancel(self, call: CallLeg, *, now: float, why: str = "cancelled") -> None:
        """Abandon an outgoing call that has no final response yet (CANCEL per §9.1)."""
        if call.role == "uac" and call.state is CallState.CALLING and not call.abandoned:
            self._abandon(call, why, now)

    # ----------------------------------------------------------------- both

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
            self.reject(call, 503 if why == "shutdown" else 480, now=now, why=why)
            return None
        if call.state is CallState.CALLING:
            self.cancel(call, now=now, why=why)
            return None
        if call.state in (CallState.TERMINATING, CallState.TERMINATED):
            return call.bye_request
        handle = ClientRequest(next(self._ids), call, "BYE")
        call.bye_request = handle
        if call.state is CallState.ACCEPTED and not force:
            call.bye_pending = True
            call.bye_reason = why
            return handle
        self._send_bye(call, why, now)
        return handle

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
        """Send an in-dialog request (re-INVITE, UPDATE, INFO, REFER, ...).

        Raises:
            LocalSipError: no confirmed dialog, ACK/CANCEL/BYE (use :meth:`bye`), or an
                INVITE while another INVITE transaction is in progress (§14.1).
        """
        if call.dialog is None or call.state is not CallState.CONFIRMED:
            raise LocalSipError(f"no confirmed dialog for {method}")
        if method in ("ACK", "CANCEL", "BYE"):
            raise LocalSipError(f"{method} cannot be sent with request()")
        if method == "INVITE" and (call.reinvite_out is not None or call.ok_data is not None):
            raise LocalSipError("an INVITE transaction is already in progress")
        handle = ClientRequest(next(self._ids), call, method)
        request, destination = self._dialog_request(call, method)
        for name, value in headers:
            request.headers.add(name, value)
        if body:
            request.headers.add("Content-Type", content_type or SDP_TYPE)
            request.body = body
        handle.request = request
        if method == "INVITE":
            call.reinvite_out = handle
        self._start_client(request, destination, "request", now, call, handle)
        return handle

    def shutdown(self, *, now: float) -> None:
        """End every call: 503 unanswered ones, CANCEL outgoing ones, BYE the rest at once."""
        for call in list(self._calls.values()):
            self.bye(call, now=now, why="shutdown", force=True)

    # ----------------------------------------------------------------- receiving

    def _answer_parse_error(self, exc: SipParseError, source: Peer) -> None:
        """Answer a malformed request with the parser's status and reason when it has a Via
        (RFC 4475 §3.1.2); an unusable Via is echoed and the answer goes to the source."""
        request = exc.request
        if request is None or request.method == "ACK" or "Via" not in request.headers:
            log.info("dropped a malformed message from %s: %s", source, exc)
            return
        log.info("answering a malformed request from %s: %s", source, exc)
        try:
            peer = self._response_peer(self._stamp_via(request, source), source)
        except SipParseError:
            peer = source
        response = self._response(request, exc.status, exc.reason, tag=generate_tag())
        self._send(response, peer)

    def _receive_request(self, request: SipRequest, source: Peer, now: float) -> None:
        try:
            via = self._stamp_via(request, source)
            key = server_key(request)
        except SipParseError as exc:  # the parser validated these: only odd corner cases
            log.info("dropped a request from %s: %s", source, exc)
            return
        entry = self._server.get(key)
        if entry is not None:
            txn = entry.txn
            assert isinstance(txn, (ServerInviteTransaction, ServerNonInviteTransaction))
            txn.receive(request, now)
            self._run(entry, now)
            return
        if request.method == "ACK":
            self._receive_ack(request, now)
            return
        peer = self._response_peer(via, source)
        reliable = is_reliable(source.transport)
        server: ServerInviteTransaction | ServerNonInviteTransaction
        if request.method == "INVITE":
            server = ServerInviteTransaction(request, reliable, self.timers, now)
        else:
            server = ServerNonInviteTransaction(request, reliable, self.timers, now)
        entry = Entry(server, peer, "server")
        self._server[key] = entry
        self._new_request(entry, request, source, now)
        self._schedule(entry)

    def _new_request(self, entry: Entry, request: SipRequest, source: Peer, now: float) -> None:
        to_tag = _tag(request.headers.get("To"))
        problem = self._check_request(entry, request, to_tag)
        if problem is not None:
            self._respond(entry, problem, now)
            return
        method = request.method
        if method == "CANCEL":
            self._receive_cancel(entry, request, now)
        elif to_tag is not None:
            self._receive_in_dialog(entry, request, to_tag, now)
        elif method == "INVITE":
            self._receive_invite(entry, request, source, now)
        elif method == "OPTIONS":
            self._respond(entry, self._options_response(request), now)
        else:
            self._respond(entry, self._response(request, 481, tag=generate_tag()), now)

    def _check_request(
        self, entry: Entry, request: SipRequest, to_tag: str | None
    ) -> SipResponse | None:
        method = request.method
        if method not in ALLOW:
            status = 405 if method in KNOWN_NOT_ALLOWED else 501
            response = self._response(request, status, tag=generate_tag())
            response.headers.add("Allow", ALLOW_VALUE)
            return response
        if request.uri.split(":", 1)[0].lower() not in URI_SCHEMES:
            return self._response(request, 416, tag=generate_tag())
        if to_tag is None and self._is_merged(entry, request):
            return self._response(request, 482, tag=generate_tag())
        unsupported = [
            option
            for option in request.headers.get_all("Require")
            if option.lower() not in SUPPORTED
        ]
        if unsupported and method != "CANCEL":
            response = self._response(request, 420, tag=generate_tag())
            response.headers.add("Unsupported", ", ".join(unsupported))
            return response
        if method in ("INVITE", "UPDATE"):
            if request.body and not self._is_plain_sdp(request):
                response = self._response(request, 415, tag=generate_tag())
                response.headers.add("Accept", SDP_TYPE)
                return response
            if not self._accepts_sdp(request):
                return self._response(request, 406, tag=generate_tag())
        return None

    @staticmethod
    def _accepts_sdp(request: SipRequest) -> bool:
        """§8.2.3 / §20.1: our answer is SDP; an Accept without it (or empty) rules it out."""
        if "Accept" not in request.headers:
            return True
        ranges = (r.split(";", 1)[0].strip().lower() for r in request.headers.get_all("Accept"))
        return any(r in SDP_RANGES for r in ranges)

    @staticmethod
    def _is_plain_sdp(request: SipRequest) -> bool:
        encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
        return _media_type(request) == SDP_TYPE and encoding == "identity"

    def _is_merged(self, entry: Entry, request: SipRequest) -> bool:
        """§8.2.2.2: same From tag, Call-ID and CSeq as a live transaction but not a match."""
        merge_key = (
            _tag(request.headers.get("From")) or "",
            request.call_id,
            request.headers.get("CSeq") or "",
        )
        other = self._merge.get(merge_key)
        if other is not None and other != entry.txn.key:
            return True
        self._merge[merge_key] = entry.txn.key
        entry.merge_key = merge_key
        return False

    def _receive_invite(self, entry: Entry, request: SipRequest, source: Peer, now: float) -> None:
        call = CallLeg(next(self._ids), "uas", request, entry.peer, generate_tag())
        call.source = source
        call.dialog = DialogState.as_uas(request, call.local_tag, source.transport)
        call.invite_entry = entry
        entry.call = call
        self._calls[call.id] = call
        self._dialogs[call.dialog.id] = call
        self._respond(entry, self._response(request, 100), now)
        call.answer_deadline = now + self.settings.answer_timeout
        self._schedule(call)
        self._events.append(IncomingCall(call))

    def _receive_cancel(self, entry: Entry, request: SipRequest, now: float) -> None:
        target = self._server.get(invite_key_for_cancel(request))
        if target is None or not isinstance(target.txn, ServerInviteTransaction):
            self._respond(entry, self._response(request, 481, tag=generate_tag()), now)
            return
        call = target.call
        tag = call.local_tag if call is not None else generate_tag()
        self._respond(entry, self._response(request, 200, tag=tag), now)
        if call is not None and call.state is CallState.INCOMING:
            self._respond_call(call, self._response(call.invite, 487, tag=call.local_tag), now)
            self._end_call(call, "cancelled")

    def _receive_in_dialog(
        self, entry: Entry, request: SipRequest, to_tag: str, now: float
    ) -> None:
        from_tag = _tag(request.headers.get("From")) or ""
        call = self._dialogs.get((request.call_id, to_tag, from_tag))
        if call is None or call.dialog is None:
            self._respond(entry, self._response(request, 481), now)
            return
        if call.dialog.check_remote_cseq(request) is not None:
            self._respond(entry, self._response(request, 500, "CSeq out of order"), now)
            return
        method = request.method
        if method == "BYE":
            self._receive_bye(entry, call, request, now)
        elif method in ("INVITE", "UPDATE"):
            self._receive_reoffer(entry, call, request, now)
        elif method == "OPTIONS":
            self._respond(entry, self._options_response(request), now)
        else:
            self._respond(entry, self._response(request, self._ask_request(call, request)), now)

    def _receive_bye(self, entry: Entry, call: CallLeg, request: SipRequest, now: float) -> None:
        self._respond(entry, self._response(request, 200), now)
        if call.state is CallState.INCOMING:  # the caller hung up an early dialog
            self._respond_call(call, self._response(call.invite, 487, tag=call.local_tag), now)
        if call.state is CallState.TERMINATING:
            return  # BYEs crossed: ours is still out and ends the call
        self._end_call(call, "bye-received")

    def _receive_reoffer(
        self, entry: Entry, call: CallLeg, request: SipRequest, now: float
    ) -> None:
        if call.state is CallState.TERMINATING:
            self._respond(entry, self._response(request, 481), now)
            return
        is_invite = request.method == "INVITE"
        pending = call.reinvite_out is not None or call.ok_data is not None
        if call.state is not CallState.CONFIRMED or (is_invite and pending):
            self._respond(entry, self._response(request, 491), now)
            return
        assert call.dialog is not None
        call.dialog.refresh_target(request)
        answer = self._ask_reoffer(call, request.body) if request.body or is_invite else None
        if isinstance(answer, int):
            self._respond(entry, self._response(request, answer), now)
            return
        if request.body:
            call.remote_sdp = request.body
        response = self._dialog_response(call, request, 200, answer)
        self._respond(entry, response, now)
        if is_invite:
            self._start_2xx(call, response, now)

    def _ask_reoffer(self, call: CallLeg, offer: bytes) -> bytes | int:
        """The app's answer to a re-offer: SDP, or a 300-699 status; default: our SDP."""
        if call.on_reoffer is None:
            return call.local_sdp
        try:
            result = call.on_reoffer(offer)
        except Exception:
            log.exception("on_reoffer failed for %r", call)
            return 500
        if isinstance(result, int):
            return result if 300 <= result < 700 else 500
        call.local_sdp = result
        return result

    def _ask_request(self, call: CallLeg, request: SipRequest) -> int:
        status = DEFAULT_REQUEST_STATUS.get(request.method, 200)
        if call.on_request is not None:
            try:
                status = call.on_request(request)
            except Exception:
                log.exception("on_request failed for %r", call)
                status = 500
        return status if 200 <= status < 700 else 500

    def _receive_ack(self, request: SipRequest, now: float) -> None:
        """An ACK for a 2xx (its own transaction, §17.1.1.1), matched to its dialog."""
        from_tag = _tag(request.headers.get("From")) or ""
        to_tag = _tag(request.headers.get("To")) or ""
        call = self._dialogs.get((request.call_id, to_tag, from_tag))
        if call is None or call.ok_data is None or request.cseq[0] != call.ok_cseq:
            return  # stray or retransmitted ACK
        call.ok_data = None
        call.ok_next = call.ok_give_up = None
        if request.body:
            call.remote_sdp = request.body  # the answer to our offer in a 2xx (late offer)
        if call.state is CallState.ACCEPTED:
            call.state = CallState.CONFIRMED
            self._events.append(CallConfirmed(call))
            if call.bye_pending:
                self._send_bye(call, call.bye_reason, now)
        self._schedule(call)

    def _receive_response(self, response: SipResponse, source: Peer, now: float) -> None:
        try:
            if len(response.headers.get_all("Via")) != 1:
                return  # §8.1.3.3: not for us
            key = client_key(response)
        except SipParseError:
            return
        entry = self._client.get(key)
        if entry is None:
            self._stray_response(response)
            return
        if source.connection is not None and entry.peer.transport == source.transport:
            entry.peer = source  # keep using the connection the answer came on
        txn = entry.txn
        assert isinstance(txn, (ClientInviteTransaction, ClientNonInviteTransaction))
        txn.receive(response, now)
        self._run(entry, now)

    def _stray_response(self, response: SipResponse) -> None:
        """A 2xx retransmitted after the INVITE transaction ended: ACK it again."""
        if not 200 <= response.status < 300 or response.cseq[1] != "INVITE":
            return
        from_tag = _tag(response.headers.get("From")) or ""
        to_tag = _tag(response.headers.get("To")) or ""
        call = self._dialogs.get((response.call_id, from_tag, to_tag))
        if call is not None and call.ack is not None:
            self._out.append(call.ack)

    # ----------------------------------------------------------------- client side

    def _client_event(self, entry: Entry, response: SipResponse | None, now: float) -> None:
        """A final/provisional response (or None: timeout) for one of our requests."""
        if entry.kind == "invite":
            assert entry.call is not None
            self._invite_response(entry.call, response, now)
        elif entry.kind == "request" and entry.handle is not None:
            self._request_response(entry.handle, response, now)

    def _invite_response(self, call: CallLeg, response: SipResponse | None, now: float) -> None:
        if response is None:
            self._fail_call(call, "timeout", None)
            return
        status = response.status
        if status < 200:
            if call.abandoned and not call.cancel_sent:
                self._send_cancel(call, now)
            elif call.state is CallState.CALLING and status > 100 and not call.abandoned:
                self._events.append(CallProgress(call, response))
        elif status < 300:
            self._invite_answered(call, response, now)
        elif status in (401, 407) and self._retry_with_auth(call, response, now):
            return
        else:
            reason = "cancelled" if status == 487 and call.cancel_sent else "rejected"
            self._fail_call(call, reason, response)

    def _invite_answered(self, call: CallLeg, response: SipResponse, now: float) -> None:
        if call.dialog is not None:
            if call.ack is not None:
                self._out.append(call.ack)  # a retransmitted 2xx
            return
        assert call.invite_entry is not None
        call.peer = call.invite_entry.peer
        call.invite = call.invite_entry.txn.request
        call.dialog = DialogState.as_uac(call.invite, response, call.peer.transport)
        call.remote_sdp = response.body
        call.timeout_deadline = call.cancel_deadline = None
        self._dialogs[call.dialog.id] = call
        call.ack = self._build_ack(call, call.invite)
        self._out.append(call.ack)
        call.state = CallState.CONFIRMED
        if call.abandoned:  # answered after we gave up: hang up right away
            call.bye_request = ClientRequest(next(self._ids), call, "BYE")
            self._send_bye(call, "cancelled", now)
        else:
            self._events.append(CallAnswered(call, response))
        self._schedule(call)

    def _request_response(
        self, handle: ClientRequest, response: SipResponse | None, now: float
    ) -> None:
        call = handle.call
        if response is not None and response.status < 200:
            return
        if handle.done:
            if response is not None and response.status < 300 and handle.ack is not None:
                self._out.append(handle.ack)  # retransmitted 2xx to our re-INVITE
            return
        handle.done = True
        handle.response = response
        ok = response is not None and response.status < 300
        if handle.method == "INVITE":
            call.reinvite_out = None
            if ok and handle.request is not None:
                handle.ack = self._build_ack(call, handle.request)
                self._out.append(handle.ack)
        if ok and response is not None and handle.method in ("INVITE", "UPDATE"):
            assert call.dialog is not None
            call.dialog.refresh_target(response)
            if response.body:
                call.remote_sdp = response.body
            if handle.request is not None and handle.request.body:
                call.local_sdp = handle.request.body
        self._events.append(RequestCompleted(handle, response))
        if handle.method == "BYE":
            self._forget_call(call)
        elif response is None or response.status in (408, 481):
            # §12.2.1.2: the dialog is gone on the other side
            self.bye(call, now=now, why="timeout")

    def _retry_with_auth(self, call: CallLeg, response: SipResponse, now: float) -> bool:
        """Answer a 401/407 once with credentials (filled in with sipbot.sip.auth)."""
        return False

    def _abandon(self, call: CallLeg, why: str, now: float) -> None:
        call.abandoned = True
        call.timeout_deadline = None
        self._report_failure(call, why, None)
        entry = call.invite_entry
        if entry is not None and entry.txn.state is State.PROCEEDING:
            self._send_cancel(call, now)
        self._schedule(call)

    def _send_cancel(self, call: CallLeg, now: float) -> None:
        entry = call.invite_entry
        assert entry is not None
        call.cancel_sent = True
        call.cancel_deadline = now + 64 * self.timers.t1  # §9.1: then give the INVITE up
        self._start_client(build_cancel(entry.txn.request), entry.peer, "cancel", now, call)
        self._schedule(call)

    def _fail_call(self, call: CallLeg, reason: str, response: SipResponse | None) -> None:
        if call.state is CallState.CALLING:
            self._report_failure(call, reason, response)
            self._forget_call(call)

    def _report_failure(self, call: CallLeg, reason: str, response: SipResponse | None) -> None:
        if not call.reported:
            call.reported = True
            call.reason = reason
            self._events.append(CallFailed(call, reason, response))

    def _send_bye(self, call: CallLeg, why: str, now: float) -> None:
        handle = call.bye_request or ClientRequest(next(self._ids), call, "BYE")
        call.bye_request = handle
        call.bye_pending = False
        call.ok_data = None
        call.ok_next = call.ok_give_up = call.answer_deadline = None
        request, destination = self._dialog_request(call, "BYE")
        handle.request = request
        call.state = CallState.TERMINATING
        self._report_end(call, why)
        self._start_client(request, destination, "request", now, call, handle)
        self._schedule(call)

    # ----------------------------------------------------------------- timers

    def _schedule(self, obj: Timed) -> None:
        deadline = obj.next_deadline()
        if deadline is None:
            obj.scheduled = None
        elif deadline != obj.scheduled:
            obj.scheduled = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), obj))

    def _call_timer(self, call: CallLeg, now: float) -> None:
        if call.ok_give_up is not None and call.ok_give_up <= now:
            log.warning("no ACK for the 2xx of %r: ending the dialog", call)
            call.ok_data = None
            call.ok_next = call.ok_give_up = None
            self._send_bye(call, "ack-timeout", now)
        elif call.ok_next is not None and call.ok_next <= now and call.ok_data is not None:
            self._out.append(Outgoing(call.ok_data, call.peer))
            call.ok_interval = min(2 * call.ok_interval, self.timers.t2)
            call.ok_next = now + call.ok_interval
        if call.answer_deadline is not None and call.answer_deadline <= now:
            call.answer_deadline = None
            self.reject(call, 480, now=now, why="timeout")
        if call.timeout_deadline is not None and call.timeout_deadline <= now:
            call.timeout_deadline = None
            self.cancel(call, now=now, why="timeout")
        if call.cancel_deadline is not None and call.cancel_deadline <= now:
            call.cancel_deadline = None
            entry = call.invite_entry
            if entry is not None and not entry.txn.terminated:
                self._client.pop(entry.txn.key, None)
            self._fail_call(call, "cancelled", None)
        self._schedule(call)

    def _start_2xx(self, call: CallLeg, response: SipResponse, now: float) -> None:
        call.ok_data = bytes(response)
        call.ok_cseq = response.cseq[0]
        call.ok_interval = self.timers.t1
        call.ok_next = now + self.timers.t1
        call.ok_give_up = now + 64 * self.timers.t1
        self._schedule(call)

    # ----------------------------------------------------------------- transactions

    def _start_client(
        self,
        request: SipRequest,
        destination: Peer,
        kind: str,
        now: float,
        call: CallLeg | None = None,
        handle: ClientRequest | None = None,
    ) -> Entry:
        reliable = is_reliable(destination.transport)
        txn: ClientInviteTransaction | ClientNonInviteTransaction
        if request.method == "INVITE":
            txn = ClientInviteTransaction(request, reliable, self.timers, now)
        else:
            txn = ClientNonInviteTransaction(request, reliable, self.timers, now)
        entry = Entry(txn, destination, kind, call, handle)
        self._client[txn.key] = entry
        self._run(entry, now)
        return entry

    def _run(self, entry: Entry, now: float) -> None:
        """Carry out a transaction's queued actions."""
        for action in entry.txn.take_actions():
            if isinstance(action, SendMessage):
                self._send(action.message, entry.peer, entry)
            elif isinstance(action, Deliver):
                message = action.message
                if isinstance(message, SipResponse):
                    self._client_event(entry, message, now)
                else:
                    self._receive_ack(message, now)
            elif isinstance(action, (TimedOut, TransportFailed)):
                if entry.kind != "server":
                    self._client_event(entry, None, now)
            elif isinstance(action, Terminated):
                self._forget_entry(entry)
        self._schedule(entry)

    def _forget_entry(self, entry: Entry) -> None:
        table = self._server if entry.kind == "server" else self._client
        if table.get(entry.txn.key) is entry:
            del table[entry.txn.key]
        if entry.merge_key is not None and self._merge.get(entry.merge_key) == entry.txn.key:
            del self._merge[entry.merge_key]

    def _respond(self, entry: Entry, response: SipResponse, now: float) -> None:
        txn = entry.txn
        assert isinstance(txn, (ServerInviteTransaction, ServerNonInviteTransaction))
        txn.send_response(response, now)
        self._run(entry, now)

    def _respond_call(self, call: CallLeg, response: SipResponse, now: float) -> None:
        assert call.invite_entry is not None
        self._respond(call.invite_entry, response, now)

    # ----------------------------------------------------------------- calls

    def _end_call(self, call: CallLeg, why: str) -> None:
        self._report_end(call, why)
        self._forget_call(call)

    def _report_end(self, call: CallLeg, why: str) -> None:
        if not call.reported:
            call.reported = True
            call.reason = why
            self._events.append(CallTerminated(call, why))

    def _forget_call(self, call: CallLeg) -> None:
        call.state = CallState.TERMINATED
        call.ok_data = None
        call.ok_next = call.ok_give_up = call.answer_deadline = None
        call.timeout_deadline = call.cancel_deadline = None
        if call.dialog is not None and self._dialogs.get(call.dialog.id) is call:
            del self._dialogs[call.dialog.id]
        self._calls.pop(call.id, None)
        self._schedule(call)

    # ----------------------------------------------------------------- building messages

    def _send(self, message: SipMessage, peer: Peer, entry: Entry | None = None) -> None:
        if entry is not None and entry.data is not None and entry.data[0] is message:
            data = entry.data[1]  # a retransmission: serialize once
        else:
            data = bytes(message)
            if entry is not None:
                entry.data = (message, data)
        self._out.append(Outgoing(data, peer))

    def _response(
        self, request: SipRequest, status: int, reason: str | None = None, *, tag: str | None = None
    ) -> SipResponse:
        response = make_response(request, status, reason, to_tag=tag)
        response.headers.add("Server", self.settings.user_agent)
        return response

    def _options_response(self, request: SipRequest) -> SipResponse:
        response = self._response(request, 200, tag=generate_tag())
        response.headers.add("Allow", ALLOW_VALUE)
        response.headers.add("Accept", SDP_TYPE)
        response.headers.add("Supported", ", ".join(sorted(SUPPORTED)))
        return response

    def _dialog_response(
        self, call: CallLeg, request: SipRequest, status: int, sdp: bytes | None
    ) -> SipResponse:
        contact = self._contact(call.source.transport, call.source.host, self._contact_user(call))
        response = dialog_response(request, status, call.local_tag, contact)
        response.headers.add("Allow", ALLOW_VALUE)
        response.headers.add("Server", self.settings.user_agent)
        if sdp:
            response.headers.add("Content-Type", SDP_TYPE)
            response.body = sdp
        return response

    def _contact_user(self, call: CallLeg) -> str:
        if call.role == "uas":
            try:
                user = parse_uri(call.invite.uri).user
            except SipParseError:
                user = None
            if user and all(c.isalnum() or c in "-_.+*#" for c in user):
                return user
        return self.settings.contact_user

    def _contact(self, transport: str, peer_host: str, user: str) -> str:
        host, port = self._address_for(transport, peer_host)
        user = user.split("@", 1)[0]
        params = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:{user}@{format_host(host)}:{port}{params}>"

    def _new_via(self, destination: Peer) -> str:
        host, port = self._address_for(destination.transport, destination.host)
        transport = destination.transport.upper()
        return f"SIP/2.0/{transport} {format_host(host)}:{port};branch={generate_branch()};rport"

    def _dialog_request(self, call: CallLeg, method: str) -> tuple[SipRequest, Peer]:
        assert call.dialog is not None
        request = call.dialog.build_request(method)
        destination = self._next_hop(call)
        request.headers.prepend("Via", self._new_via(destination))
        if method in CONTACT_METHODS:
            user = self._contact_user(call)
            request.headers.add(
                "Contact", self._contact(destination.transport, call.peer.host, user)
            )
        request.headers.add("User-Agent", self.settings.user_agent)
        return request, destination

    def _build_ack(self, call: CallLeg, invite: SipRequest) -> Outgoing:
        """The ACK for a 2xx (§13.2.2.4): in the dialog, the INVITE's CSeq and credentials."""
        assert call.dialog is not None
        ack = call.dialog.build_request("ACK", cseq=invite.cseq[0])
        destination = self._next_hop(call)
        ack.headers.prepend("Via", self._new_via(destination))
        for name in ("Authorization", "Proxy-Authorization"):
            for value in invite.headers.get_all(name):
                ack.headers.add(name, value)
        return Outgoing(bytes(ack), destination)

    def _next_hop(self, call: CallLeg) -> Peer:
        """Where in-dialog requests go: the dialog's next hop; over TCP the call's connection.

        A next-hop URI without a transport parameter keeps the call's transport, so that a
        TCP-only peer is not suddenly addressed over UDP.
        """
        assert call.dialog is not None
        try:
            hop = call.dialog.next_hop()
        except SipParseError:
            return call.peer
        transport = hop.param("transport")
        transport = transport.lower() if transport else call.peer.transport
        port = hop.port or (5061 if hop.scheme == "sips" else 5060)
        same = transport == call.peer.transport and is_reliable(transport)
        return Peer(transport, hop.host, port, call.peer.connection if same else None)

    @staticmethod
    def _stamp_via(request: SipRequest, source: Peer) -> Via:
        """RFC 3581 / §18.2.1: add received (and rport) to the top Via; return it."""
        vias = request.headers.get_all("Via")
        via = parse_via(vias[0])
        stamped = via
        if via.has_param("rport"):
            stamped = via.with_param("rport", str(source.port))
            stamped = stamped.with_param("received", source.host)
        elif via.host != source.host:
            stamped = via.with_param("received", source.host)
        if stamped is not via:
            request.headers.replace_all("Via", [str(stamped), *vias[1:]])
        return stamped

    def _response_peer(self, via: Via, source: Peer) -> Peer:
        """§18.2.2 + RFC 3581: where responses to a request (with a stamped Via) go.

        Reliable: the connection it came on; if that is gone, received + sent-by port.
        Unreliable: maddr, else received (the source), at rport (the source port) if asked —
        or always at the source port with ``force_rport``.
        """
        received = via.param("received")
        if is_reliable(source.transport):
            port = via.port or 5060
            return Peer(source.transport, received or via.host, port, source.connection)
        maddr = via.param("maddr")
        if self.settings.force_rport and not maddr:
            return Peer(source.transport, source.host, source.port)
        rport = via.param("rport")
        port = int(rport) if rport else (via.port or 5060)
        return Peer(source.transport, maddr or received or via.host, port)
