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

Layers: :mod:`sipbot.sip.legs` (values and events), :mod:`sipbot.sip.compose` (pure helpers),
:mod:`sipbot.sip.endpoint` (transactions, timers, queues, message building),
:mod:`sipbot.sip.uac` (outgoing side), this module (receiving and the UAS side).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sipbot.errors import LocalSipError, SipParseError
from sipbot.sip.compose import (
    ALLOW,
    ALLOW_VALUE,
    DEFAULT_REQUEST_STATUS,
    KNOWN_NOT_ALLOWED,
    SDP_TYPE,
    SUPPORTED,
    URI_SCHEMES,
    accepts_sdp,
    count_key,
    is_plain_sdp,
    stamp_via,
    tag_of,
)
from sipbot.sip.dialog import DialogState
from sipbot.sip.legs import (
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
from sipbot.sip.message import SipRequest, SipResponse, generate_tag, parse_message
from sipbot.sip.transaction import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    invite_key_for_cancel,
    is_reliable,
    server_key,
)
from sipbot.sip.uac import UacEndpoint

log = logging.getLogger(__name__)

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
    "RequestCompleted",
]


class Core(UacEndpoint):
    """A SIP user agent endpoint without I/O (see the module rules).

    Args:
        settings: behaviour and timers.
        address_for: ``(transport, peer_host) -> (host, port)`` to advertise in Via and Contact
            for messages to that peer (the shell knows the bound ports and public address).
    """

    def receive(self, data: bytes, source: Peer, now: float) -> None:
        """Process one datagram or one framed stream message from ``source``."""
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._answer_parse_error(exc, source, now)
            return
        self.message_counts[count_key("in", message)] += 1
        if isinstance(message, SipResponse):
            self._receive_response(message, source, now)
        else:
            self._receive_request(message, source, now)

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

    def shutdown(self, *, now: float) -> None:
        """End every call: 503 unanswered ones, CANCEL outgoing ones, BYE the rest at once."""
        for call in list(self._calls.values()):
            self.bye(call, now=now, why="shutdown", force=True)

    def _answer_parse_error(self, exc: SipParseError, source: Peer, now: float) -> None:
        """Answer a malformed request with the parser's status and reason when it has a Via
        (RFC 4475 §3.1.2); an unusable Via is echoed and the answer goes to the source."""
        request = exc.request
        if request is None or request.method == "ACK" or "Via" not in request.headers:
            self._packet_log.info(now, "dropped a malformed message from %s: %s", source, exc)
            return
        self._packet_log.info(now, "answering a malformed request from %s: %s", source, exc)
        try:
            peer = self._response_peer(stamp_via(request, source), source)
        except SipParseError:
            peer = source
        response = self._response(request, exc.status, exc.reason, tag=generate_tag())
        self._send(response, peer)

    def _receive_request(self, request: SipRequest, source: Peer, now: float) -> None:
        try:
            via = stamp_via(request, source)
            key = server_key(request)
        except SipParseError as exc:  # the parser validated these: only odd corner cases
            self._packet_log.info(now, "dropped a request from %s: %s", source, exc)
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
        to_tag = tag_of(request.headers.get("To"))
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
            self._respond(entry, self._options_response(request, self.options_status), now)
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
            if request.body and not is_plain_sdp(request):
                response = self._response(request, 415, tag=generate_tag())
                response.headers.add("Accept", SDP_TYPE)
                return response
            if not accepts_sdp(request):
                return self._response(request, 406, tag=generate_tag())
        return None

    def _is_merged(self, entry: Entry, request: SipRequest) -> bool:
        """§8.2.2.2: same From tag, Call-ID and CSeq as a live transaction but not a match."""
        merge_key = (
            tag_of(request.headers.get("From")) or "",
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
        from_tag = tag_of(request.headers.get("From")) or ""
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
        from_tag = tag_of(request.headers.get("From")) or ""
        to_tag = tag_of(request.headers.get("To")) or ""
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
