"""The plumbing under the SIP core: transaction tables, one timer heap, output queues.

:class:`Endpoint` owns the server and client transactions (keyed per §17.1.3 / §17.2.3), the
dialogs and calls, a heap of deadlines for transactions and calls (stale entries are skipped),
and the outgoing messages and events. It also builds the messages both sides need (responses,
Via, Contact, in-dialog requests, the ACK for a 2xx). :class:`sipbot.sip.uac.UacEndpoint` and
:class:`sipbot.sip.core.Core` add the behaviour.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter

from sipbot.errors import SipParseError
from sipbot.sip.address import Via, parse_uri
from sipbot.sip.compose import (
    ALLOW_VALUE,
    CONTACT_METHODS,
    SDP_TYPE,
    SUPPORTED,
    contact_value,
    count_key,
    via_value,
)
from sipbot.sip.dialog import dialog_response
from sipbot.sip.legs import (
    AddressFor,
    CallLeg,
    CallState,
    CallTerminated,
    ClientRequest,
    CoreSettings,
    Entry,
    Event,
    Outgoing,
    Peer,
)
from sipbot.sip.message import (
    SipMessage,
    SipRequest,
    SipResponse,
    generate_branch,
    generate_tag,
    make_response,
)
from sipbot.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    SendMessage,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimedOut,
    TransportFailed,
    is_reliable,
)

log = logging.getLogger(__name__)

Timed = CallLeg | Entry
LOG_BURST = 10  # per-packet log lines per window; the rest are counted
LOG_WINDOW_S = 10.0


class LogLimiter:
    """Rate-limits per-packet log lines (a flood of garbage must not flood the log)."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW_S) -> None:
        self.burst = burst
        self.window = window
        self._start = float("-inf")
        self._count = 0
        self._suppressed = 0

    def info(self, now: float, message: str, *args: object) -> None:
        if now - self._start >= self.window:
            if self._suppressed:
                log.info("%d similar messages suppressed", self._suppressed)
            self._start, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count <= self.burst:
            log.info(message, *args)
        else:
            self._suppressed += 1


class Endpoint:
    """Transactions, timers and queues shared by the UAC and UAS sides.

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
        self._packet_log = LogLimiter()
        # (direction "in"/"out", method, status or "") -> messages; read by the metrics
        self.message_counts: Counter[tuple[str, str, str]] = Counter()
        self.options_status = 200  # out-of-dialog OPTIONS answer (503 while draining)

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

    def _schedule(self, obj: Timed) -> None:
        deadline = obj.next_deadline()
        if deadline is None:
            obj.scheduled = None
        elif deadline != obj.scheduled:
            obj.scheduled = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), obj))

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

    def _send(self, message: SipMessage, peer: Peer, entry: Entry | None = None) -> None:
        if entry is not None and entry.data is not None and entry.data[0] is message:
            data = entry.data[1]  # a retransmission: serialize once
        else:
            data = bytes(message)
            self.message_counts[count_key("out", message)] += 1
            if entry is not None:
                entry.data = (message, data)
        self._out.append(Outgoing(data, peer))

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

    def _response(
        self, request: SipRequest, status: int, reason: str | None = None, *, tag: str | None = None
    ) -> SipResponse:
        response = make_response(request, status, reason, to_tag=tag)
        response.headers.add("Server", self.settings.user_agent)
        return response

    def _options_response(self, request: SipRequest, status: int = 200) -> SipResponse:
        response = self._response(request, status, tag=generate_tag())
        if status == 503:
            response.headers.add("Retry-After", "30")
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
        return contact_value(transport, host, port, user)

    def _new_via(self, destination: Peer) -> str:
        host, port = self._address_for(destination.transport, destination.host)
        return via_value(destination.transport, host, port, generate_branch())

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

    # ----------------------------------------------------------------- hooks

    def _client_event(self, entry: Entry, response: SipResponse | None, now: float) -> None:
        """A response (or None: timeout) for one of our client transactions."""
        raise NotImplementedError

    def _receive_ack(self, request: SipRequest, now: float) -> None:
        """An ACK for a 2xx (delivered by an INVITE server transaction, or on its own)."""
        raise NotImplementedError

    def _call_timer(self, call: CallLeg, now: float) -> None:
        """A call's own timer fired."""
        raise NotImplementedError

    def bye(
        self, call: CallLeg, *, now: float, why: str = "bye-sent", force: bool = False
    ) -> ClientRequest | None:
        """End a call (see :meth:`sipbot.sip.core.Core.bye`)."""
        raise NotImplementedError
