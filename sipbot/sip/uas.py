"""The UAS side of the SIP core: new requests, incoming calls and in-dialog requests.

Rules:

* Rule 1: a new request is checked in RFC 3261 §8.2 order: method (405/501 + Allow),
  Request-URI scheme (416), merged or looped request (482), Require (420 + Unsupported), body
  type (415); then an in-dialog request needs its dialog (481) and an in-order CSeq (500).
* Rule 2: a 2xx to an INVITE is retransmitted (T1 doubling to T2) until the ACK; without one
  after 64·T1 the dialog is ended with a BYE ("ack-timeout").
* Rule 3: the application answers new INVITEs (``progress``/``accept``/``reject``); if it does
  not within ``answer_timeout`` the UAS answers 480.
* Rule 4: a re-INVITE / UPDATE with an offer becomes :class:`ReofferReceived` and INFO, NOTIFY
  and REFER become :class:`RequestReceived`; the application answers through
  :meth:`Uas.answer_reoffer` / :meth:`Uas.answer_request`, never from inside ``receive``.
  Unanswered after ``request_answer_timeout`` they get 500; a re-INVITE still unanswered after
  200 ms gets 100 Trying (§17.2.1); a second re-offer while one is unanswered gets 500 with
  Retry-After (§14.2); a BYE either way answers what is still pending with 487 (§15.1.2).

:class:`Uas` is the server-transaction user of the core; it shares one
:class:`~sipbot.sip.endpoint.TransactionLayer` with :class:`~sipbot.sip.uac.Uac`, whose BYE it
uses to end a dialog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sipbot.errors import LocalSipError
from sipbot.sip.compose import (
    ALLOW,
    ALLOW_VALUE,
    DEFAULT_REQUEST_STATUS,
    KNOWN_NOT_ALLOWED,
    SDP_TYPE,
    SUPPORTED,
    URI_SCHEMES,
    accepts_sdp,
    is_plain_sdp,
    tag_of,
)
from sipbot.sip.dialog import DialogState
from sipbot.sip.endpoint import TransactionLayer
from sipbot.sip.legs import (
    CallConfirmed,
    CallLeg,
    CallState,
    Entry,
    IncomingCall,
    Outgoing,
    Peer,
    ReofferReceived,
    RequestReceived,
    ServerRequest,
)
from sipbot.sip.message import SipRequest, SipResponse, generate_tag
from sipbot.sip.transaction import ServerInviteTransaction, invite_key_for_cancel

log = logging.getLogger(__name__)

TRYING_AFTER_S = 0.2  # §17.2.1: a TU that will not answer within 200 ms sends 100 Trying
RETRY_AFTER_S = "2"  # §14.2: a re-offer that crosses an unanswered one: 500 + Retry-After

SendBye = Callable[[CallLeg, str, float], None]


class Uas:
    """Answers new requests, runs incoming calls and the server side of every dialog.

    Args:
        layer: the transactions, timers and queues it shares with the UAC part.
        send_bye: the UAC part's BYE (an ACK timeout or a deferred BYE ends the dialog).
    """

    def __init__(self, layer: TransactionLayer, send_bye: SendBye) -> None:
        self._layer = layer
        self._send_bye = send_bye
        self.settings = layer.settings
        self.timers = layer.timers

    # ----------------------------------------------------------------- the app's entry points

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
        response = self._layer.dialog_response(call, call.invite, status, sdp)
        self._layer.respond_call(call, response, now)
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
        response = self._layer.dialog_response(call, call.invite, 200, sdp)
        self._layer.respond_call(call, response, now)
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
        response = self._layer.response(call.invite, status, reason, tag=call.local_tag)
        for name, value in headers:
            response.headers.add(name, value)
        self._layer.respond_call(call, response, now)
        self._layer.end_call(call, why)
        return True

    def answer_reoffer(
        self, pending: ServerRequest, answer: bytes | int | None, *, now: float
    ) -> bool:
        """Answer a :class:`ReofferReceived` (Rule 4).

        Args:
            answer: the answer SDP (a 200 with it); a 300-699 status (other values: 500); or
                None: our current SDP, unchanged.

        Returns:
            False when it was answered already (by the core's timeout, or the dialog ended).
        """
        if not self._layer.take_pending(pending):
            return False
        call, request = pending.call, pending.request
        if isinstance(answer, int):
            status = answer if 300 <= answer < 700 else 500
            self._layer.respond(pending.entry, self._layer.response(request, status), now)
            return True
        if answer is None:
            answer = call.local_sdp
        else:
            call.local_sdp = answer
        self._answer_offer(pending.entry, call, request, answer, now)
        return True

    def answer_request(self, pending: ServerRequest, status: int | None, *, now: float) -> bool:
        """Answer a :class:`RequestReceived` (Rule 4).

        Args:
            status: 200-699 (other values: 500); None: the default for the method (200,
                REFER 603).

        Returns:
            False when it was answered already (by the core's timeout, or the dialog ended).
        """
        if not self._layer.take_pending(pending):
            return False
        if status is None:
            status = DEFAULT_REQUEST_STATUS.get(pending.method, 200)
        status = status if 200 <= status < 700 else 500
        self._layer.respond(pending.entry, self._layer.response(pending.request, status), now)
        return True

    # ----------------------------------------------------------------- new requests

    def new_request(self, entry: Entry, request: SipRequest, source: Peer, now: float) -> None:
        """A request that started a server transaction (Rules 1, 3, 4)."""
        to_tag = tag_of(request.headers.get("To"))
        problem = self._check_request(entry, request, to_tag)
        if problem is not None:
            self._layer.respond(entry, problem, now)
            return
        method = request.method
        if method == "CANCEL":
            self._receive_cancel(entry, request, now)
        elif to_tag is not None:
            self._receive_in_dialog(entry, request, to_tag, now)
        elif method == "INVITE":
            self._receive_invite(entry, request, source, now)
        elif method == "OPTIONS":
            options = self._layer.options_response(request, self._layer.options_status)
            self._layer.respond(entry, options, now)
        else:
            self._layer.respond(entry, self._layer.response(request, 481, tag=generate_tag()), now)

    def _check_request(
        self, entry: Entry, request: SipRequest, to_tag: str | None
    ) -> SipResponse | None:
        method = request.method
        response = self._layer.response
        if method not in ALLOW:
            status = 405 if method in KNOWN_NOT_ALLOWED else 501
            refusal = response(request, status, tag=generate_tag())
            refusal.headers.add("Allow", ALLOW_VALUE)
            return refusal
        if request.uri.split(":", 1)[0].lower() not in URI_SCHEMES:
            return response(request, 416, tag=generate_tag())
        if to_tag is None and self._layer.is_merged(entry, request):
            return response(request, 482, tag=generate_tag())
        unsupported = [
            option
            for option in request.headers.get_all("Require")
            if option.lower() not in SUPPORTED
        ]
        if unsupported and method != "CANCEL":
            refusal = response(request, 420, tag=generate_tag())
            refusal.headers.add("Unsupported", ", ".join(unsupported))
            return refusal
        if method in ("INVITE", "UPDATE"):
            if request.body and not is_plain_sdp(request):
                refusal = response(request, 415, tag=generate_tag())
                refusal.headers.add("Accept", SDP_TYPE)
                return refusal
            if not accepts_sdp(request):
                return response(request, 406, tag=generate_tag())
        return None

    def _receive_invite(self, entry: Entry, request: SipRequest, source: Peer, now: float) -> None:
        call = CallLeg(self._layer.next_id(), "uas", request, entry.peer, generate_tag())
        call.source = source
        call.dialog = DialogState.as_uas(request, call.local_tag, source.transport)
        call.invite_entry = entry
        entry.call = call
        self._layer.add_call(call)
        self._layer.add_dialog(call)
        self._layer.respond(entry, self._layer.response(request, 100), now)
        call.answer_deadline = now + self.settings.answer_timeout
        self._layer.schedule(call)
        self._layer.emit(IncomingCall(call))

    def _receive_cancel(self, entry: Entry, request: SipRequest, now: float) -> None:
        target = self._layer.server_entry(invite_key_for_cancel(request))
        if target is None or not isinstance(target.txn, ServerInviteTransaction):
            self._layer.respond(entry, self._layer.response(request, 481, tag=generate_tag()), now)
            return
        call = target.call
        tag = call.local_tag if call is not None else generate_tag()
        self._layer.respond(entry, self._layer.response(request, 200, tag=tag), now)
        if call is not None and call.state is CallState.INCOMING:
            terminated = self._layer.response(call.invite, 487, tag=call.local_tag)
            self._layer.respond_call(call, terminated, now)
            self._layer.end_call(call, "cancelled")

    # ----------------------------------------------------------------- in dialog

    def _receive_in_dialog(
        self, entry: Entry, request: SipRequest, to_tag: str, now: float
    ) -> None:
        from_tag = tag_of(request.headers.get("From")) or ""
        call = self._layer.dialog_call(request.call_id, to_tag, from_tag)
        if call is None or call.dialog is None:
            self._layer.respond(entry, self._layer.response(request, 481), now)
            return
        if call.dialog.check_remote_cseq(request) is not None:
            self._layer.respond(entry, self._layer.response(request, 500, "CSeq out of order"), now)
            return
        method = request.method
        if method == "BYE":
            self._receive_bye(entry, call, request, now)
        elif method in ("INVITE", "UPDATE"):
            self._receive_reoffer(entry, call, request, now)
        elif method == "OPTIONS":
            self._layer.respond(entry, self._layer.options_response(request), now)
        else:
            pending = self._pend(entry, call, request, now)
            self._layer.emit(RequestReceived(pending))

    def _receive_bye(self, entry: Entry, call: CallLeg, request: SipRequest, now: float) -> None:
        self._layer.respond(entry, self._layer.response(request, 200), now)
        if call.state is CallState.INCOMING:  # the caller hung up an early dialog
            terminated = self._layer.response(call.invite, 487, tag=call.local_tag)
            self._layer.respond_call(call, terminated, now)
        if call.state is CallState.TERMINATING:
            return  # BYEs crossed: ours is still out and ends the call
        self._layer.abort_pending(call, now)
        self._layer.end_call(call, "bye-received")

    def _receive_reoffer(
        self, entry: Entry, call: CallLeg, request: SipRequest, now: float
    ) -> None:
        if call.state is CallState.TERMINATING:
            self._layer.respond(entry, self._layer.response(request, 481), now)
            return
        is_invite = request.method == "INVITE"
        if call.reoffer_in is not None and (is_invite or request.body):
            busy = self._layer.response(request, 500)
            busy.headers.add("Retry-After", RETRY_AFTER_S)
            self._layer.respond(entry, busy, now)
            return
        pending = call.reinvite_out is not None or call.ok_data is not None
        if call.state is not CallState.CONFIRMED or (is_invite and pending):
            self._layer.respond(entry, self._layer.response(request, 491), now)
            return
        assert call.dialog is not None
        call.dialog.refresh_target(request)
        if not request.body and not is_invite:
            self._answer_offer(entry, call, request, None, now)  # an UPDATE without an offer
            return
        waiting = self._pend(entry, call, request, now)
        if is_invite:
            waiting.trying_at = now + TRYING_AFTER_S
            self._layer.schedule(call)
        self._layer.emit(ReofferReceived(waiting))

    def _pend(self, entry: Entry, call: CallLeg, request: SipRequest, now: float) -> ServerRequest:
        deadline = now + self.settings.request_answer_timeout
        pending = ServerRequest(self._layer.next_id(), call, request, entry, deadline)
        call.pending_in[pending.id] = pending
        self._layer.schedule(call)
        return pending

    def _answer_offer(
        self, entry: Entry, call: CallLeg, request: SipRequest, answer: bytes | None, now: float
    ) -> None:
        if request.body:
            call.remote_sdp = request.body
        response = self._layer.dialog_response(call, request, 200, answer)
        self._layer.respond(entry, response, now)
        if request.method == "INVITE":
            self._start_2xx(call, response, now)

    def receive_ack(self, request: SipRequest, now: float) -> None:
        """An ACK for a 2xx (its own transaction, §17.1.1.1), matched to its dialog."""
        from_tag = tag_of(request.headers.get("From")) or ""
        to_tag = tag_of(request.headers.get("To")) or ""
        call = self._layer.dialog_call(request.call_id, to_tag, from_tag)
        if call is None or call.ok_data is None or request.cseq[0] != call.ok_cseq:
            return  # stray or retransmitted ACK
        call.ok_data = None
        call.ok_next = call.ok_give_up = None
        if request.body:
            call.remote_sdp = request.body  # the answer to our offer in a 2xx (late offer)
        if call.state is CallState.ACCEPTED:
            call.state = CallState.CONFIRMED
            self._layer.emit(CallConfirmed(call))
            if call.bye_pending:
                self._send_bye(call, call.bye_reason, now)
        self._layer.schedule(call)

    # ----------------------------------------------------------------- timers

    def call_timer(self, call: CallLeg, now: float) -> None:
        """The UAS deadlines of a call: 2xx retransmission and give-up (Rule 2), the answer
        timeout (Rule 3), unanswered in-dialog requests (Rule 4)."""
        if call.ok_give_up is not None and call.ok_give_up <= now:
            log.warning("no ACK for the 2xx of %r: ending the dialog", call)
            call.ok_data = None
            call.ok_next = call.ok_give_up = None
            self._send_bye(call, "ack-timeout", now)
        elif call.ok_next is not None and call.ok_next <= now and call.ok_data is not None:
            self._layer.send_data(Outgoing(call.ok_data, call.peer))
            call.ok_interval = min(2 * call.ok_interval, self.timers.t2)
            call.ok_next = now + call.ok_interval
        if call.answer_deadline is not None and call.answer_deadline <= now:
            call.answer_deadline = None
            self.reject(call, 480, now=now, why="timeout")
        for pending in list(call.pending_in.values()):
            if pending.deadline <= now:
                log.warning("no answer to the %s of %r: 500", pending.method, call)
                if pending.reoffer:
                    self.answer_reoffer(pending, 500, now=now)
                else:
                    self.answer_request(pending, 500, now=now)
            elif pending.trying_at is not None and pending.trying_at <= now:
                pending.trying_at = None
                self._layer.respond(pending.entry, self._layer.response(pending.request, 100), now)

    def _start_2xx(self, call: CallLeg, response: SipResponse, now: float) -> None:
        call.ok_data = bytes(response)
        call.ok_cseq = response.cseq[0]
        call.ok_interval = self.timers.t1
        call.ok_next = now + self.timers.t1
        call.ok_give_up = now + 64 * self.timers.t1
        self._layer.schedule(call)
