"""The layer under the SIP core's parts: transaction tables, one timer heap, output queues.

:class:`TransactionLayer` owns the server and client transactions (keyed per §17.1.3 /
§17.2.3), the dialogs and calls, a heap of deadlines for transactions and calls (stale entries
are skipped), and the outgoing messages and events. It also builds the messages both parts need
(responses, Via, Contact, in-dialog requests, the ACK for a 2xx).

It has no behaviour of its own: a transaction's results go to the callbacks of the part that
started it (``Entry.on_response`` for the UAC part, ``Entry.on_ack`` for the UAS part) and a
call's own timer to the ``on_call_timer`` the core gives it. :class:`sipbot.sip.uas.Uas` and
:class:`sipbot.sip.uac.Uac` use one layer; :class:`sipbot.sip.core.Core` composes the three.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Callable

from sipbot.errors import SipParseError
from sipbot.sip.address import Via, parse_uri
from sipbot.sip.compose import (
    ALLOW_VALUE,
    CONTACT_METHODS,
    SDP_TYPE,
    SUPPORTED,
    contact_value,
    count_key,
    tag_of,
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
    ServerRequest,
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
CallTimer = Callable[[CallLeg, float], None]
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


class TransactionLayer:
    """Transactions, timers, queues, calls and message building shared by the UAS and UAC parts.

    Args:
        settings: behaviour and timers.
        address_for: ``(transport, peer_host) -> (host, port)`` to advertise in Via and Contact
            for messages to that peer (the shell knows the bound ports and public address).
        on_call_timer: runs when a call's own deadline (``CallLeg.next_deadline``) is due.
    """

    def __init__(
        self, settings: CoreSettings, address_for: AddressFor, on_call_timer: CallTimer
    ) -> None:
        self.settings = settings
        self.timers = settings.timers
        self.packet_log = LogLimiter()
        self._address_for = address_for
        self._on_call_timer = on_call_timer
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
        # (direction "in"/"out", method, status or "") -> messages; read by the metrics
        self.message_counts: Counter[tuple[str, str, str]] = Counter()
        self.options_status = 200  # out-of-dialog OPTIONS answer (503 while draining)

    # ----------------------------------------------------------------- the core's outputs

    def data_to_send(self) -> list[Outgoing]:
        """Return and clear the messages to put on the wire."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """Return and clear the events for the application."""
        events, self._events = self._events, []
        return events

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def send(self, message: SipMessage, peer: Peer, entry: Entry | None = None) -> None:
        """Queue ``message`` (serialized once per transaction when it is retransmitted)."""
        if entry is not None and entry.data is not None and entry.data[0] is message:
            data = entry.data[1]  # a retransmission: serialize once
        else:
            data = bytes(message)
            self.message_counts[count_key("out", message)] += 1
            if entry is not None:
                entry.data = (message, data)
        self._out.append(Outgoing(data, peer))

    def send_data(self, out: Outgoing) -> None:
        """Queue bytes built earlier (an ACK for a 2xx, a retransmitted 2xx)."""
        self._out.append(out)

    def next_id(self) -> int:
        return next(self._ids)

    # ----------------------------------------------------------------- timers

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
                self.run(obj, now)
            else:
                self._on_call_timer(obj, now)
                self.schedule(obj)

    def schedule(self, obj: Timed) -> None:
        """(Re)arm ``obj`` at its ``next_deadline()`` (older heap entries become stale)."""
        deadline = obj.next_deadline()
        if deadline is None:
            obj.scheduled = None
        elif deadline != obj.scheduled:
            obj.scheduled = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), obj))

    # ----------------------------------------------------------------- transactions

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
                self.run(entry, now)

    def connections_in_use(self) -> set[int]:
        """TCP connection ids that live calls or transactions still use (not to idle-close)."""
        peers = [c.peer for c in self._calls.values()]
        peers += [e.peer for e in self._server.values()]
        peers += [e.peer for e in self._client.values()]
        return {p.connection for p in peers if p.connection is not None}

    def start_client(
        self,
        request: SipRequest,
        destination: Peer,
        kind: str,
        now: float,
        on_response: Callable[[Entry, SipResponse | None, float], None],
        call: CallLeg | None = None,
        handle: ClientRequest | None = None,
    ) -> Entry:
        """Send ``request`` in a new client transaction; its responses go to ``on_response``."""
        reliable = is_reliable(destination.transport)
        txn: ClientInviteTransaction | ClientNonInviteTransaction
        if request.method == "INVITE":
            txn = ClientInviteTransaction(request, reliable, self.timers, now)
        else:
            txn = ClientNonInviteTransaction(request, reliable, self.timers, now)
        entry = Entry(txn, destination, kind, call, handle)
        entry.on_response = on_response
        self._client[txn.key] = entry
        self.run(entry, now)
        return entry

    def client_entry(self, key: tuple[str, ...]) -> Entry | None:
        return self._client.get(key)

    def drop_client(self, entry: Entry) -> None:
        """Give up a client transaction that has not ended (a CANCELled INVITE, §9.1)."""
        if not entry.txn.terminated:
            self._client.pop(entry.txn.key, None)

    def match_server(self, key: tuple[str, ...], request: SipRequest, now: float) -> bool:
        """Rule 2 of the core: a request matching a server transaction goes to it (a
        retransmission, or an ACK for a non-2xx); True when it matched."""
        entry = self._server.get(key)
        if entry is None:
            return False
        txn = entry.txn
        assert isinstance(txn, (ServerInviteTransaction, ServerNonInviteTransaction))
        txn.receive(request, now)
        self.run(entry, now)
        return True

    def new_server(
        self,
        request: SipRequest,
        key: tuple[str, ...],
        peer: Peer,
        now: float,
        on_ack: Callable[[SipRequest, float], None],
    ) -> Entry:
        """A server transaction for a new request; responses go to ``peer``."""
        reliable = is_reliable(peer.transport)
        server: ServerInviteTransaction | ServerNonInviteTransaction
        if request.method == "INVITE":
            server = ServerInviteTransaction(request, reliable, self.timers, now)
        else:
            server = ServerNonInviteTransaction(request, reliable, self.timers, now)
        entry = Entry(server, peer, "server")
        entry.on_ack = on_ack
        self._server[key] = entry
        return entry

    def server_entry(self, key: tuple[str, ...]) -> Entry | None:
        return self._server.get(key)

    def is_merged(self, entry: Entry, request: SipRequest) -> bool:
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

    def run(self, entry: Entry, now: float) -> None:
        """Carry out a transaction's queued actions."""
        for action in entry.txn.take_actions():
            if isinstance(action, SendMessage):
                self.send(action.message, entry.peer, entry)
            elif isinstance(action, Deliver):
                message = action.message
                if isinstance(message, SipResponse):
                    if entry.on_response is not None:
                        entry.on_response(entry, message, now)
                elif entry.on_ack is not None:
                    entry.on_ack(message, now)
            elif isinstance(action, (TimedOut, TransportFailed)):
                if entry.kind != "server" and entry.on_response is not None:
                    entry.on_response(entry, None, now)
            elif isinstance(action, Terminated):
                self._forget_entry(entry)
        self.schedule(entry)

    def _forget_entry(self, entry: Entry) -> None:
        table = self._server if entry.kind == "server" else self._client
        if table.get(entry.txn.key) is entry:
            del table[entry.txn.key]
        # the transaction has ended: nothing reads its call any more, and the call keeps its
        # INVITE's entry (``invite_entry``), a cycle that left every ended call's leg, INVITE and
        # dialog state to a full GC pass (issue 12)
        entry.call = None
        if entry.merge_key is not None and self._merge.get(entry.merge_key) == entry.txn.key:
            del self._merge[entry.merge_key]

    def respond(self, entry: Entry, response: SipResponse, now: float) -> None:
        """Send a response in a server transaction."""
        txn = entry.txn
        assert isinstance(txn, (ServerInviteTransaction, ServerNonInviteTransaction))
        txn.send_response(response, now)
        self.run(entry, now)

    def respond_call(self, call: CallLeg, response: SipResponse, now: float) -> None:
        """Respond to the call's INVITE."""
        assert call.invite_entry is not None
        self.respond(call.invite_entry, response, now)

    # ----------------------------------------------------------------- calls

    @property
    def calls(self) -> list[CallLeg]:
        """Calls that have not ended yet (including ones whose BYE is still out)."""
        return list(self._calls.values())

    def add_call(self, call: CallLeg) -> None:
        self._calls[call.id] = call

    def add_dialog(self, call: CallLeg) -> None:
        assert call.dialog is not None
        self._dialogs[call.dialog.id] = call

    def dialog_call(self, call_id: str, local_tag: str, remote_tag: str) -> CallLeg | None:
        """The call whose dialog has these ids."""
        return self._dialogs.get((call_id, local_tag, remote_tag))

    def end_call(self, call: CallLeg, why: str) -> None:
        self.report_end(call, why)
        self.forget_call(call)

    def report_end(self, call: CallLeg, why: str) -> None:
        """Rule 6 of the core: :class:`CallTerminated` once."""
        if not call.reported:
            call.reported = True
            call.reason = why
            self._events.append(CallTerminated(call, why))

    def forget_call(self, call: CallLeg) -> None:
        call.state = CallState.TERMINATED
        call.ok_data = None
        call.ok_next = call.ok_give_up = call.answer_deadline = None
        call.timeout_deadline = call.cancel_deadline = None
        if call.dialog is not None and self._dialogs.get(call.dialog.id) is call:
            del self._dialogs[call.dialog.id]
        self._calls.pop(call.id, None)
        self.schedule(call)

    def take_pending(self, pending: ServerRequest) -> bool:
        """Mark an in-dialog request answered; False when it already was."""
        if pending.answered:
            return False
        pending.answered = True
        pending.call.pending_in.pop(pending.id, None)
        self.schedule(pending.call)
        return True

    def abort_pending(self, call: CallLeg, now: float) -> None:
        """§15.1.2: the dialog is ending (a BYE either way): answer what is unanswered 487."""
        for pending in list(call.pending_in.values()):
            self.take_pending(pending)
            self.respond(pending.entry, self.response(pending.request, 487), now)

    # ----------------------------------------------------------------- building messages

    def response(
        self, request: SipRequest, status: int, reason: str | None = None, *, tag: str | None = None
    ) -> SipResponse:
        response = make_response(request, status, reason, to_tag=tag)
        response.headers.add("Server", self.settings.user_agent)
        return response

    def options_response(self, request: SipRequest, status: int = 200) -> SipResponse:
        response = self.response(request, status, tag=generate_tag())
        if status == 503:
            response.headers.add("Retry-After", "30")
        response.headers.add("Allow", ALLOW_VALUE)
        response.headers.add("Accept", SDP_TYPE)
        response.headers.add("Supported", ", ".join(sorted(SUPPORTED)))
        return response

    def dialog_response(
        self, call: CallLeg, request: SipRequest, status: int, sdp: bytes | None
    ) -> SipResponse:
        contact = self.contact(call.source.transport, call.source.host, self._contact_user(call))
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

    def advertised(self, transport: str, peer_host: str) -> tuple[str, int]:
        """The (host, port) to advertise to ``peer_host`` (the shell's ``address_for``)."""
        return self._address_for(transport, peer_host)

    def contact(self, transport: str, peer_host: str, user: str) -> str:
        host, port = self._address_for(transport, peer_host)
        return contact_value(transport, host, port, user)

    def new_via(self, destination: Peer) -> str:
        host, port = self._address_for(destination.transport, destination.host)
        return via_value(destination.transport, host, port, generate_branch())

    def dialog_request(self, call: CallLeg, method: str) -> tuple[SipRequest, Peer]:
        """An in-dialog request with Via, Contact (where needed), User-Agent; its next hop."""
        assert call.dialog is not None
        request = call.dialog.build_request(method)
        destination = self._next_hop(call)
        request.headers.prepend("Via", self.new_via(destination))
        if method in CONTACT_METHODS:
            user = self._contact_user(call)
            request.headers.add(
                "Contact", self.contact(destination.transport, call.peer.host, user)
            )
        request.headers.add("User-Agent", self.settings.user_agent)
        return request, destination

    def build_ack(self, call: CallLeg, invite: SipRequest) -> Outgoing:
        """The ACK for a 2xx (§13.2.2.4): in the dialog, the INVITE's CSeq and credentials."""
        assert call.dialog is not None
        ack = call.dialog.build_request("ACK", cseq=invite.cseq[0])
        destination = self._next_hop(call)
        ack.headers.prepend("Via", self.new_via(destination))
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

    def response_peer(self, via: Via, source: Peer) -> Peer:
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
