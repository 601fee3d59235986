"""The UAC side of the SIP core: outgoing calls, in-dialog requests, responses.

Rules:

* Rule 1: the core builds the ACK for a 2xx (§13.2.2.4) and sends it again for every
  retransmitted 2xx, also after the INVITE transaction ended (matched by dialog).
* Rule 2: an abandoned INVITE (app gave up, timeout, shutdown) is reported once and CANCELled
  as soon as a provisional response allows it (§9.1); a 2xx that still arrives is ACKed and
  BYEd; without a final response 64·T1 after the CANCEL the INVITE is given up.
* Rule 3: a 401/407 is answered with the call's credentials (same Call-ID and From tag, next
  CSeq, new branch): once per realm, and once more only when the challenge says
  ``stale=true``.
* Rule 4: a 408/481 (or no answer) to an in-dialog request ends the dialog (§12.2.1.2).

:class:`Uac` is the client-transaction user of the core: it starts client transactions on the
shared :class:`~sipbot.sip.endpoint.TransactionLayer` and gets their responses back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sipbot.errors import AuthError, LocalSipError, SipParseError
from sipbot.sip.address import format_host, parse_uri
from sipbot.sip.auth import Credentials, authorization_header, select_challenge
from sipbot.sip.compose import ALLOW_VALUE, SDP_TYPE, tag_of
from sipbot.sip.dialog import DialogState
from sipbot.sip.endpoint import TransactionLayer
from sipbot.sip.headers import Headers
from sipbot.sip.legs import (
    CallAnswered,
    CallFailed,
    CallLeg,
    CallProgress,
    CallState,
    ClientRequest,
    Entry,
    Peer,
    RequestCompleted,
)
from sipbot.sip.message import SipRequest, SipResponse, generate_call_id, generate_tag
from sipbot.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    State,
    build_cancel,
    client_key,
)

log = logging.getLogger(__name__)


class Uac:
    """Places calls and sends in-dialog requests (BYE included); handles every response.

    Args:
        layer: the transactions, timers and queues it shares with the UAS part.
    """

    def __init__(self, layer: TransactionLayer) -> None:
        self._layer = layer
        self.timers = layer.timers

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
        """Start an outgoing call: send an INVITE with ``sdp`` to ``destination``.

        The outcome arrives as :class:`CallAnswered` or :class:`CallFailed` (after ``timeout``
        seconds without a final response the INVITE is abandoned: reason "timeout"); each
        provisional response above 100 as :class:`CallProgress`. ``call_id``: the Call-ID to
        use (None: a new one).

        Raises:
            LocalSipError: ``uri`` is not a URI.
        """
        try:
            parse_uri(uri)
        except SipParseError:
            raise LocalSipError(f"not a URI: {uri!r}") from None
        tag = generate_tag()
        request = self._initial_invite(uri, sdp, destination, from_user, tag, headers, call_id)
        call = CallLeg(self._layer.next_id(), "uac", request, destination, tag)
        call.local_sdp = sdp
        call.credentials = credentials
        call.timeout_deadline = now + timeout
        self._layer.add_call(call)
        call.invite_entry = self._layer.start_client(
            request, destination, "invite", now, self.response_received, call
        )
        self._layer.schedule(call)
        return call

    def _initial_invite(
        self,
        uri: str,
        sdp: bytes,
        destination: Peer,
        from_user: str,
        tag: str,
        headers: Sequence[tuple[str, str]],
        call_id: str | None = None,
    ) -> SipRequest:
        host, _port = self._layer.advertised(destination.transport, destination.host)
        user = from_user if "@" in from_user else f"{from_user}@{format_host(host)}"
        h = Headers()
        h.add("Via", self._layer.new_via(destination))
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{user}>;tag={tag}")
        h.add("To", f"<{uri}>")
        h.add("Call-ID", call_id or generate_call_id(host))
        h.add("CSeq", "1 INVITE")
        contact_user = from_user.split("@", 1)[0]  # From may name another domain; Contact is us
        h.add("Contact", self._layer.contact(destination.transport, destination.host, contact_user))
        h.add("Allow", ALLOW_VALUE)
        h.add("User-Agent", self._layer.settings.user_agent)
        for name, value in headers:
            h.add(name, value)
        if sdp:
            h.add("Content-Type", SDP_TYPE)
        return SipRequest("INVITE", uri, h, sdp)

    def cancel(self, call: CallLeg, *, now: float, why: str = "cancelled") -> None:
        """Abandon an outgoing call that has no final response yet (CANCEL per §9.1)."""
        if call.role == "uac" and call.state is CallState.CALLING and not call.abandoned:
            self._abandon(call, why, now)

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
        if method == "INVITE" and (
            call.reinvite_out is not None or call.ok_data is not None or call.reoffer_in is not None
        ):
            raise LocalSipError("an INVITE transaction is already in progress")
        handle = ClientRequest(self._layer.next_id(), call, method)
        request, destination = self._layer.dialog_request(call, method)
        for name, value in headers:
            request.headers.add(name, value)
        if body:
            request.headers.add("Content-Type", content_type or SDP_TYPE)
            request.body = body
        handle.request = request
        if method == "INVITE":
            call.reinvite_out = handle
        self._layer.start_client(
            request, destination, "request", now, self.response_received, call, handle
        )
        return handle

    def receive_response(self, response: SipResponse, source: Peer, now: float) -> None:
        """A response from the wire: to its client transaction, or a stray 2xx to re-ACK."""
        try:
            if len(response.headers.get_all("Via")) != 1:
                return  # §8.1.3.3: not for us
            key = client_key(response)
        except SipParseError:
            return
        entry = self._layer.client_entry(key)
        if entry is None:
            self._stray_response(response)
            return
        if source.connection is not None and entry.peer.transport == source.transport:
            entry.peer = source  # keep using the connection the answer came on
        txn = entry.txn
        assert isinstance(txn, (ClientInviteTransaction, ClientNonInviteTransaction))
        txn.receive(response, now)
        self._layer.run(entry, now)

    def _stray_response(self, response: SipResponse) -> None:
        """A 2xx retransmitted after the INVITE transaction ended: ACK it again."""
        if not 200 <= response.status < 300 or response.cseq[1] != "INVITE":
            return
        from_tag = tag_of(response.headers.get("From")) or ""
        to_tag = tag_of(response.headers.get("To")) or ""
        call = self._layer.dialog_call(response.call_id, from_tag, to_tag)
        if call is not None and call.ack is not None:
            self._layer.send_data(call.ack)

    def response_received(self, entry: Entry, response: SipResponse | None, now: float) -> None:
        """A final/provisional response (or None: timeout) for one of our requests."""
        if entry.kind == "invite":
            assert entry.call is not None
            self._invite_response(entry.call, response, now)
        elif entry.kind == "request" and entry.handle is not None:
            self._request_response(entry.handle, response, now)

    def _invite_response(self, call: CallLeg, response: SipResponse | None, now: float) -> None:
        if response is None:
            self.fail_call(call, "timeout", None)
            return
        status = response.status
        if status < 200:
            if call.abandoned and not call.cancel_sent:
                self._send_cancel(call, now)
            elif call.state is CallState.CALLING and status > 100 and not call.abandoned:
                self._layer.emit(CallProgress(call, response))
        elif status < 300:
            self._invite_answered(call, response, now)
        elif status in (401, 407) and self._retry_with_auth(call, response, now):
            return
        else:
            reason = "cancelled" if status == 487 and call.cancel_sent else "rejected"
            self.fail_call(call, reason, response)

    def _invite_answered(self, call: CallLeg, response: SipResponse, now: float) -> None:
        if call.dialog is not None:
            if call.ack is not None:
                self._layer.send_data(call.ack)  # a retransmitted 2xx
            return
        assert call.invite_entry is not None
        call.peer = call.invite_entry.peer
        call.invite = call.invite_entry.txn.request
        call.dialog = DialogState.as_uac(call.invite, response, call.peer.transport)
        call.remote_sdp = response.body
        call.timeout_deadline = call.cancel_deadline = None
        self._layer.add_dialog(call)
        call.ack = self._layer.build_ack(call, call.invite)
        self._layer.send_data(call.ack)
        call.state = CallState.CONFIRMED
        if call.abandoned:  # answered after we gave up: hang up right away
            call.bye_request = ClientRequest(self._layer.next_id(), call, "BYE")
            self.send_bye(call, "cancelled", now)
        else:
            self._layer.emit(CallAnswered(call, response))
        self._layer.schedule(call)

    def _request_response(
        self, handle: ClientRequest, response: SipResponse | None, now: float
    ) -> None:
        call = handle.call
        if response is not None and response.status < 200:
            return
        if handle.done:
            if response is not None and response.status < 300 and handle.ack is not None:
                self._layer.send_data(handle.ack)  # retransmitted 2xx to our re-INVITE
            return
        handle.done = True
        handle.response = response
        ok = response is not None and response.status < 300
        if handle.method == "INVITE":
            call.reinvite_out = None
            if ok and handle.request is not None:
                handle.ack = self._layer.build_ack(call, handle.request)
                self._layer.send_data(handle.ack)
        if ok and response is not None and handle.method in ("INVITE", "UPDATE"):
            assert call.dialog is not None
            call.dialog.refresh_target(response)
            if response.body:
                call.remote_sdp = response.body
            if handle.request is not None and handle.request.body:
                call.local_sdp = handle.request.body
        self._layer.emit(RequestCompleted(handle, response))
        if handle.method == "BYE":
            self._layer.forget_call(call)
            call.bye_request = None  # done; kept, it and the call held each other (issue 12)
        elif response is None or response.status in (408, 481):
            # §12.2.1.2: the dialog is gone on the other side
            self.end_dialog(call, "timeout", now)

    def _retry_with_auth(self, call: CallLeg, response: SipResponse, now: float) -> bool:
        """Answer a 401/407 to our INVITE (RFC 3261 §22.2); False when we cannot."""
        entry = call.invite_entry
        if call.credentials is None or entry is None or call.abandoned:
            return False
        proxy = response.status == 407
        challenges = response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        try:
            challenge = select_challenge(challenges)
        except AuthError as exc:
            log.info("cannot answer the challenge to %r: %s", call, exc)
            return False
        tries = call.auth_attempts.get(challenge.realm, 0)
        if tries >= (2 if challenge.stale else 1):
            return False  # our answer for this realm was refused: wrong credentials
        old = entry.txn.request
        try:
            answer = authorization_header(challenge, call.credentials, "INVITE", old.uri)
        except AuthError as exc:
            log.info("cannot answer the challenge to %r: %s", call, exc)
            return False
        call.auth_attempts[challenge.realm] = tries + 1
        headers = old.headers.copy()
        headers.set("Via", self._layer.new_via(entry.peer))
        headers.set("CSeq", f"{old.cseq[0] + 1} INVITE")
        headers.set("Proxy-Authorization" if proxy else "Authorization", answer)
        request = SipRequest("INVITE", old.uri, headers, old.body)
        call.invite = request
        call.invite_entry = self._layer.start_client(
            request, entry.peer, "invite", now, self.response_received, call
        )
        return True

    def _abandon(self, call: CallLeg, why: str, now: float) -> None:
        call.abandoned = True
        call.timeout_deadline = None
        self._report_failure(call, why, None)
        entry = call.invite_entry
        if entry is not None and entry.txn.state is State.PROCEEDING:
            self._send_cancel(call, now)
        self._layer.schedule(call)

    def _send_cancel(self, call: CallLeg, now: float) -> None:
        entry = call.invite_entry
        assert entry is not None
        call.cancel_sent = True
        call.cancel_deadline = now + 64 * self.timers.t1  # §9.1: then give the INVITE up
        cancel = build_cancel(entry.txn.request)
        self._layer.start_client(cancel, entry.peer, "cancel", now, self.response_received, call)
        self._layer.schedule(call)

    def fail_call(self, call: CallLeg, reason: str, response: SipResponse | None) -> None:
        if call.state is CallState.CALLING:
            self._report_failure(call, reason, response)
            self._layer.forget_call(call)

    def _report_failure(self, call: CallLeg, reason: str, response: SipResponse | None) -> None:
        if not call.reported:
            call.reported = True
            call.reason = reason
            self._layer.emit(CallFailed(call, reason, response))

    def end_dialog(self, call: CallLeg, why: str, now: float) -> None:
        """BYE a confirmed dialog now (unless a BYE is already out)."""
        if call.state not in (CallState.TERMINATING, CallState.TERMINATED):
            call.bye_request = ClientRequest(self._layer.next_id(), call, "BYE")
            self.send_bye(call, why, now)

    def send_bye(self, call: CallLeg, why: str, now: float) -> None:
        """Send the call's BYE (its :class:`ClientRequest` is ``call.bye_request``)."""
        handle = call.bye_request or ClientRequest(self._layer.next_id(), call, "BYE")
        call.bye_request = handle
        call.bye_pending = False
        call.ok_data = None
        call.ok_next = call.ok_give_up = call.answer_deadline = None
        self._layer.abort_pending(call, now)
        request, destination = self._layer.dialog_request(call, "BYE")
        handle.request = request
        call.state = CallState.TERMINATING
        self._layer.report_end(call, why)
        self._layer.start_client(
            request, destination, "request", now, self.response_received, call, handle
        )
        self._layer.schedule(call)

    def call_timer(self, call: CallLeg, now: float) -> None:
        """The UAC deadlines of a call: the INVITE's timeout, the CANCEL's give-up (Rule 2)."""
        if call.timeout_deadline is not None and call.timeout_deadline <= now:
            call.timeout_deadline = None
            self.cancel(call, now=now, why="timeout")
        if call.cancel_deadline is not None and call.cancel_deadline <= now:
            call.cancel_deadline = None
            if call.invite_entry is not None:
                self._layer.drop_client(call.invite_entry)
            self.fail_call(call, "cancelled", None)
