"""The asyncio user agent: the API the rest of sipbot uses for calls.

:class:`UserAgent` is a thin shell around :class:`~sipbot.sip.core.Core`: it owns the sockets
(:class:`~sipbot.sip.transport.Transports`), feeds the core with ``loop.time()`` as ``now``,
keeps one timer armed at ``core.next_deadline()`` and turns core events into futures on
:class:`ServerCall` / :class:`ClientCall` objects.

Rules:

* Rule 1: every entry into the core (a message, a timer, :meth:`UserAgent.enter`) is followed
  by the pump: send what the core produced, dispatch its events, re-arm the one timer.
* Rule 2: ``on_invite`` is called synchronously once per new INVITE (never for
  retransmissions); the application answers later with ``progress``/``accept``/``reject``.
* Rule 3: ``Dialog.terminated`` resolves exactly once with the reason the call ended; then the
  dialog drops its ``on_reoffer`` / ``on_request`` hooks (and keeps none set later), so an ended
  call's objects are freed without waiting for the cyclic garbage collector.
* Rule 4: ``Dialog.refer`` sends a REFER and returns a :class:`Referral` once the peer accepted
  it (2xx); the NOTIFYs of its subscription (``Event: refer``) are answered 200 here and the
  first final sipfrag status (≥ 200) resolves :meth:`Referral.final`.
* Rule 5: a re-offer (re-INVITE / UPDATE) is answered by ``Dialog.on_reoffer``: at once when it
  returns the answer, after the await when it returns an awaitable (a coroutine function); the
  core answers 500 if that takes longer than its ``request_answer_timeout``. INFO / NOTIFY /
  REFER get ``Dialog.on_request``'s status (Rule 4 for NOTIFYs of a REFER).
* Rule 6: a message from a source over its rate (:class:`~sipbot.sip.limiter.SourceLimiter`)
  never reaches the core; an exception the core raises on a message (a bug: malformed input is
  the core's own business) is counted and logged rate-limited, and the socket keeps serving.
* Rule 7: messages are queued as they are read and fed to the core by a drain that steps aside
  after :data:`DRAIN_BUDGET_S` (the loop runs its due timers, e.g. the media ticker, before the
  drain resumes): a burst of SIP work cannot delay the calls' RTP by more than the budget. The
  queue holds at most :data:`INBOX_MAX` messages; more are dropped and counted. A message that
  waited longer than :data:`INBOX_MAX_AGE_S` (a CPU-starved process) is dropped unprocessed and
  counted (``inbox_stale``), so the queue's delay stays bounded too and fresh messages (and the
  peers' retransmissions of the dropped ones) are answered instead of stale ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sipbot.errors import LocalSipError, RequestFailed, SipParseError
from sipbot.ratelimit import RateLimitedLog
from sipbot.sip.address import parse_name_addr, parse_uri
from sipbot.sip.auth import Credentials
from sipbot.sip.core import Core
from sipbot.sip.legs import (
    CallAnswered,
    CallConfirmed,
    CallFailed,
    CallLeg,
    CallProgress,
    CallTerminated,
    ClientRequest,
    CoreSettings,
    Event,
    IncomingCall,
    Peer,
    ReofferReceived,
    RequestCompleted,
    RequestReceived,
    ServerRequest,
)
from sipbot.sip.limiter import SourceLimiter
from sipbot.sip.message import SipRequest, SipResponse, parse_message
from sipbot.sip.sipfrag import refer_event, sipfrag_status
from sipbot.sip.transaction import TimerSettings
from sipbot.sip.transport import TlsSettings, Transports, is_ip

log = logging.getLogger(__name__)
T = TypeVar("T")

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
DRAIN_BUDGET_S = 0.002  # SIP work per loop turn before the timers get theirs (Rule 7)
INBOX_MAX = 1024  # messages read but not yet processed (Rule 7): ~0.3 s of work at most
INBOX_MAX_AGE_S = 1.0  # a message that waited longer is dropped unprocessed (Rule 7): T1 is 0.5 s


@dataclass(frozen=True)
class SipSettings:
    """Where to listen and how to behave.

    ``listen`` entries are (transport, host, port); port 0 picks a free port.
    ``public_address`` ("host" or "host:port") is advertised in Via/Contact/SDP when set.
    """

    listen: tuple[tuple[str, str, int], ...] = (("udp", "127.0.0.1", 5060),)
    public_address: str | None = None
    user_agent: str = "sipbot/0.1"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    answer_timeout: float = 60.0  # no accept/reject by then → 480
    tcp_idle_timeout: float = 300.0
    force_rport: bool = True  # UDP answers to the source port even without rport (NAT)
    tls: TlsSettings = field(default_factory=TlsSettings)  # certificates for TLS


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():  # nobody may await it: no "exception was never retrieved"
        future.exception()


class Referral:
    """A REFER the peer accepted (RFC 3515): :meth:`final` waits for the transfer's outcome.

    ``response`` is the peer's 2xx to the REFER; ``cseq`` its CSeq number (the subscription id).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, cseq: int) -> None:
        self.cseq = cseq
        self.response: SipResponse | None = None
        self._final: asyncio.Future[int] = loop.create_future()
        self._final.add_done_callback(_mark_retrieved)

    async def final(self) -> int:
        """The first final status (≥ 200) a NOTIFY of this REFER reported.

        Raises:
            RequestFailed: the dialog ended (or another REFER replaced this one) first.
        """
        return await asyncio.shield(self._final)

    @property
    def done(self) -> bool:
        return self._final.done()

    def _progress(self, status: int | None) -> None:
        if status is not None and status >= 200 and not self._final.done():
            self._final.set_result(status)

    def _fail(self, why: str) -> None:
        if not self._final.done():
            self._final.set_exception(RequestFailed(why))

    def __repr__(self) -> str:
        return f"<Referral cseq={self.cseq} done={self.done}>"


ReofferHook = Callable[[bytes], bytes | int | Awaitable[bytes | int]]


class Dialog:
    """One call (incoming or answered outgoing). Base of :class:`ServerCall`/:class:`ClientCall`."""

    def __init__(self, ua: UserAgent, leg: CallLeg) -> None:
        self._ua = ua
        self._leg = leg
        self.terminated: asyncio.Future[str] = ua.loop.create_future()
        self._reoffer_hook: ReofferHook | None = None
        self._request_hook: Callable[[SipRequest], int] | None = None
        self._referral: Referral | None = None

    @property
    def call_id(self) -> str:
        return self._leg.invite.call_id

    @property
    def local_tag(self) -> str:
        return self._leg.local_tag

    @property
    def remote_tag(self) -> str | None:
        if self._leg.dialog is not None:
            return self._leg.dialog.remote_tag
        return None

    @property
    def invite(self) -> SipRequest:
        return self._leg.invite

    @property
    def remote_sdp(self) -> bytes:
        return self._leg.remote_sdp

    @property
    def local_sdp(self) -> bytes:
        return self._leg.local_sdp

    @property
    def on_reoffer(self) -> ReofferHook | None:
        """Called with the SDP of a re-INVITE/UPDATE; returns (or, when it is a coroutine
        function, resolves to) the answer SDP or a 300-699 status (Rule 5). None: answer with
        our current SDP."""
        return self._reoffer_hook

    @on_reoffer.setter
    def on_reoffer(self, hook: ReofferHook | None) -> None:
        self._reoffer_hook = None if self.terminated.done() else hook  # Rule 3

    @property
    def on_request(self) -> Callable[[SipRequest], int] | None:
        """Called with INFO / NOTIFY / REFER in the dialog; returns a status.

        NOTIFYs of a :meth:`refer` reach the :class:`Referral` whether or not a hook is set.
        """
        return self._request_hook

    @on_request.setter
    def on_request(self, hook: Callable[[SipRequest], int] | None) -> None:
        self._request_hook = None if self.terminated.done() else hook  # Rule 3

    def _request_status(self, request: SipRequest) -> int | None:
        """Rule 4: the status for an in-dialog request (None: the core's default)."""
        is_refer, event_id = refer_event(request)
        referral = self._referral
        if is_refer and referral is not None and event_id in (None, referral.cseq):
            referral._progress(sipfrag_status(request.body))
        if self._request_hook is not None:
            return self._request_hook(request)
        return 200 if is_refer else None

    def _ended(self, reason: str) -> None:
        if not self.terminated.done():
            self.terminated.set_result(reason)
        # Rule 3: an ended dialog keeps no hooks. A hook is the media leg's bound method (or a
        # closure over the call's media), which holds this dialog: the cycle kept every ended
        # call's objects until a full GC pass, ~60 kB a call (the soak's RSS growth).
        self._reoffer_hook = self._request_hook = None
        if self._referral is not None:
            self._referral._fail(f"the call ended ({reason}) before the transfer completed")

    async def bye(self) -> None:
        """End the call: BYE (retransmitted, bounded by 64·T1); ``terminated`` → "bye-sent"."""
        leg = self._leg
        handle = self._ua.enter(lambda core, now: core.bye(leg, now=now))
        if handle is not None:
            with contextlib.suppress(RequestFailed):
                await self._ua.outcome(handle)

    async def request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> SipResponse:
        """Send an in-dialog request (REFER, INFO, re-INVITE, ...) and return its final response.

        Raises:
            LocalSipError: the dialog is not confirmed, or an INVITE is already in progress.
            RequestFailed: no final response (timeout / transport error).
        """
        return await self._ua.outcome(self._send(method, body, content_type, headers))

    def _send(
        self,
        method: str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> ClientRequest:
        leg = self._leg
        return self._ua.enter(
            lambda core, now: core.request(
                leg, method, now=now, body=body, content_type=content_type, headers=headers
            )
        )

    async def refer(self, uri: str) -> Referral:
        """Blind transfer (RFC 3515): REFER the peer to ``uri`` (Rule 4).

        Sends ``Refer-To: <uri>`` and ``Referred-By: <our INVITE's Request-URI>``; returns once
        the peer accepted the REFER (2xx). A new REFER replaces an earlier :class:`Referral`.

        Raises:
            LocalSipError: the dialog is not confirmed.
            RequestFailed: the peer refused the REFER or did not answer.
        """
        me = str(self.invite.uri)
        handle = self._send("REFER", headers=[("Refer-To", f"<{uri}>"), ("Referred-By", f"<{me}>")])
        assert handle.request is not None
        referral = Referral(self._ua.loop, handle.request.cseq[0])
        if self._referral is not None:
            self._referral._fail("replaced by a newer REFER")
        self._referral = referral  # before any await: a NOTIFY may overtake the 202
        try:
            response = await self._ua.outcome(handle)
        except BaseException:
            referral._fail("the REFER failed")
            raise
        if response.status >= 300:
            referral._fail("the REFER was refused")
            raise RequestFailed(
                f"the transfer was refused ({response.status} {response.reason})", response
            )
        referral.response = response
        return referral

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_id} {self._leg.state.value}>"


class ServerCall(Dialog):
    """An incoming call. Answer it with :meth:`accept` or :meth:`reject`."""

    def __init__(self, ua: UserAgent, leg: CallLeg) -> None:
        super().__init__(ua, leg)
        self.confirmed: asyncio.Future[None] = ua.loop.create_future()

    @property
    def source(self) -> tuple[str, str, int]:
        s = self._leg.source
        return (s.transport, s.host, s.port)

    @property
    def offer(self) -> bytes:
        """The SDP offer of the INVITE (b"" for a late offer: ours goes in the 200)."""
        return self._leg.invite.body

    def progress(self, status: int = 180, sdp: bytes | None = None) -> None:
        """Send a provisional response (18x); no-op once the call is answered or gone."""
        leg = self._leg
        self._ua.enter(lambda core, now: core.progress(leg, status, sdp, now=now))

    def accept(self, sdp: bytes) -> None:
        """Answer 200 OK with ``sdp`` (retransmitted until ACK; ``confirmed`` resolves then)."""
        leg = self._leg
        self._ua.enter(lambda core, now: core.accept(leg, sdp, now=now))

    def reject(
        self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer with a final 3xx-6xx; ``terminated`` resolves "rejected"."""
        leg = self._leg
        self._ua.enter(lambda core, now: core.reject(leg, status, reason, headers, now=now))


class ClientCall(Dialog):
    """An outgoing call that was answered; ``remote_sdp`` holds the answer.

    ``confirmed`` is resolved at once: our ACK confirmed the dialog (the same attribute as
    :class:`ServerCall`'s, so a call runs on either).
    """

    def __init__(self, ua: UserAgent, leg: CallLeg) -> None:
        super().__init__(ua, leg)
        self.confirmed: asyncio.Future[None] = ua.loop.create_future()
        self.confirmed.set_result(None)


class UserAgent:
    """A SIP user agent on asyncio: listens, answers and places calls.

    Args:
        settings: listen addresses, public address, timers.
        on_invite: called synchronously for each new incoming INVITE.
        limiter: when given, a message from a source over its rate is dropped unparsed.
    """

    def __init__(
        self,
        settings: SipSettings,
        on_invite: Callable[[ServerCall], None],
        limiter: SourceLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.on_invite = on_invite
        self.limiter = limiter  # per-source message rate, checked before the core parses
        self.core_failures = 0  # messages on which the core raised (a bug; logged rate-limited)
        self.inbox_dropped = 0  # messages dropped because the receive queue was full (Rule 7)
        self.inbox_stale = 0  # messages dropped unprocessed after waiting too long (Rule 7)
        self._drop_log = RateLimitedLog(log)
        self._inbox: deque[tuple[bytes, Peer, float]] = deque()
        self._draining = False
        self.bound: list[tuple[str, str, int]] = []
        timers = TimerSettings(t1=settings.t1, t2=settings.t2, t4=settings.t4)
        core_settings = CoreSettings(
            user_agent=settings.user_agent,
            timers=timers,
            answer_timeout=settings.answer_timeout,
            force_rport=settings.force_rport,
        )
        self._core = Core(core_settings, self._address_for)
        self._transports: Transports | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._calls: dict[int, Dialog] = {}
        self._pending: dict[int, asyncio.Future[ClientCall]] = {}
        self._progress: dict[int, Callable[[SipResponse], None]] = {}
        self._requests: dict[int, asyncio.Future[SipResponse]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_cache: dict[str, str] = {}
        self._idle = asyncio.Event()
        self._public_host, self._public_port = _split_public(settings.public_address)
        self._response_hooks: list[Callable[[SipResponse, Peer], bool]] = []
        self._error_hooks: list[Callable[[Peer], None]] = []
        self.request_filter: Callable[[Peer], bool] | None = None
        # True for a source the per-source rate does not apply to (a trusted trunk's address:
        # a PBX or carrier sends every call from one address)
        self.rate_exempt: Callable[[str], bool] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # set by start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the agent runs on (known once started)."""
        if self._loop is None:
            raise LocalSipError("the UserAgent is not started")
        return self._loop

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind every listen address; ``bound`` then lists what was actually bound.

        Raises:
            OSError: an address cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        self._transports = Transports(
            self._on_message,
            self._on_transport_error,
            self._core.connections_in_use,
            self.settings.tcp_idle_timeout,
            self.settings.tls,
        )
        self._transports.on_closed = self._on_connection_closed
        for transport, host, port in self.settings.listen:
            await self.listen(transport, host, port)

    async def listen(self, transport: str, host: str, port: int) -> tuple[str, str, int]:
        """Bind one more listener (after :meth:`start`); return what was bound.

        Raises:
            OSError: the address cannot be bound.
            ValueError: an unknown transport.
        """
        if self._transports is None:
            raise LocalSipError("listen() before start()")
        bound = await self._transports.listen(transport, host, port)
        self.bound.append(bound)
        return bound

    @property
    def message_counts(self) -> Mapping[tuple[str, str, str], int]:
        """Messages received and sent: ``(direction, method, status or "") -> count``."""
        return self._core.message_counts

    def refuse_options(self, refuse: bool) -> None:
        """Answer out-of-dialog OPTIONS with 503 (draining: a dispatcher moves traffic away)."""
        self._core.options_status = 503 if refuse else 200

    @property
    def calls(self) -> list[Dialog]:
        """Calls that have not ended yet."""
        return list(self._calls.values())

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the agreed API)
        """BYE every confirmed call, 503 every unanswered one, wait (bounded), close sockets."""
        self.enter(lambda core, now: core.shutdown(now=now))
        if self._core.calls:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        for dialog in list(self._calls.values()):
            dialog._ended("shutdown")
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inbox.clear()  # what arrives while closing is not answered (Rule 7's queue)
        if self._transports is not None:
            await self._transports.close()

    # ----------------------------------------------------------------- outgoing calls

    async def call(
        self,
        uri: str,
        sdp_offer: bytes,
        *,
        from_user: str = "sipbot",
        headers: Sequence[tuple[str, str]] = (),
        credentials: Credentials | None = None,
        transport: str = "udp",
        timeout: float = 32.0,  # noqa: ASYNC109 (a SIP timer: CANCEL is sent when it expires)
        call_id: str | None = None,
        destination: Peer | None = None,
        on_progress: Callable[[SipResponse], None] | None = None,
    ) -> ClientCall:
        """Place a call and wait for the answer.

        The INVITE goes to ``destination`` when given, else to the first ``Route`` in
        ``headers`` if any, else to ``uri``. ``call_id``: the Call-ID to use (None: a new one).
        ``on_progress`` is called with each provisional response above 100. Cancelling
        the awaiting task CANCELs the INVITE.

        Raises:
            LocalSipError: ``uri`` is not a SIP URI, or the agent is not started.
            RequestFailed: a final non-2xx response, or no answer within ``timeout``.
        """
        if self._transports is None:
            raise LocalSipError("call() before start()")
        if destination is None:
            destination = await self._destination(uri, headers, transport)
        leg = self._core.invite(
            uri,
            sdp_offer,
            destination=destination,
            now=self.loop.time(),
            from_user=from_user,
            headers=headers,
            credentials=credentials,
            timeout=timeout,
            call_id=call_id,
        )
        future: asyncio.Future[ClientCall] = self.loop.create_future()
        self._pending[leg.id] = future
        if on_progress is not None:
            self._progress[leg.id] = on_progress
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            self._core.cancel(leg, now=self.loop.time())
            self._pump()
            raise
        finally:
            self._pending.pop(leg.id, None)
            self._progress.pop(leg.id, None)

    async def _destination(
        self, uri: str, headers: Sequence[tuple[str, str]], transport: str
    ) -> Peer:
        target = uri
        for name, value in headers:
            if name.lower() == "route":
                target = parse_name_addr(value.split(",")[0], "Route").uri
                break
        try:
            hop = parse_uri(target)
        except SipParseError:
            raise LocalSipError(f"not a SIP URI: {target!r}") from None
        if not hop.is_sip:
            raise LocalSipError(f"not a SIP URI: {target!r}")
        chosen = select_transport(hop.scheme, hop.param("transport"), transport)
        port = hop.port or (5061 if chosen == "tls" else 5060)
        host = hop.host
        if not is_ip(host):
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            host = str(infos[0][4][0])
            self.remember_name(host, port, hop.host)
        return Peer(chosen, host, port)

    # ----------------------------------------------------------------- addresses

    def advertised_host(self, for_peer: str | None = None) -> str:
        """The host to put in Via, Contact and SDP ``c=`` for ``for_peer`` — never a wildcard.

        The public address when configured; else the listen address when it is specific;
        else the local address the OS would use to reach ``for_peer`` (a UDP connect probe).
        """
        if self._public_host:
            return self._public_host
        listen = self.bound or [(t, h, p) for t, h, p in self.settings.listen]
        for _transport, host, _port in listen:
            if host not in WILDCARDS:
                return host
        return self._probe(for_peer or "192.0.2.1")

    def _probe(self, peer: str) -> str:
        cached = self._probe_cache.get(peer)
        if cached is not None:
            return cached
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((peer, 9))  # no packet is sent: this only picks a route
                host = str(probe.getsockname()[0])
        except OSError:
            host = "127.0.0.1" if family == socket.AF_INET else "::1"
        if len(self._probe_cache) > 1024:
            self._probe_cache.clear()
        self._probe_cache[peer] = host
        return host

    def _address_for(self, transport: str, peer_host: str) -> tuple[str, int]:
        host = self.advertised_host(peer_host if is_ip(peer_host) else None)
        if self._public_port is not None:
            return host, self._public_port
        ports = [p for t, _h, p in self.bound if t == transport] or [p for _t, _h, p in self.bound]
        return host, ports[0] if ports else 5060

    # ----------------------------------------------------------------- out of dialog

    @property
    def timers(self) -> TimerSettings:
        """The RFC 3261 timers of this agent (for transactions run beside the core)."""
        s = self.settings
        return TimerSettings(t1=s.t1, t2=s.t2, t4=s.t4)

    def address_for(self, transport: str, peer_host: str) -> tuple[str, int]:
        """(host, port) to advertise in Via and Contact of a message to ``peer_host``."""
        return self._address_for(transport, peer_host)

    def send_raw(self, data: bytes, peer: Peer) -> None:
        """Send bytes built outside the core (a REGISTER, a keep-alive) to ``peer``."""
        if self._transports is None:
            raise LocalSipError("send_raw() before start()")
        self._transports.send(data, peer)

    def remember_name(self, ip: str, port: int, name: str) -> None:
        """``name`` resolved to ip:port: a TLS connection there verifies ``name`` (and SNI)."""
        if self._transports is not None:
            self._transports.remember_name(ip, port, name)

    def transport_error_reason(self, peer: Peer) -> str | None:
        """Why the last connection to ``peer`` failed (e.g. an untrusted TLS certificate)."""
        return self._transports.last_error(peer) if self._transports is not None else None

    def add_response_hook(self, hook: Callable[[SipResponse, Peer], bool]) -> None:
        """``hook(response, source)`` sees every response before the core; True consumes it
        (used by clients that run their own transactions, e.g. registrations)."""
        self._response_hooks.append(hook)

    def add_transport_error_hook(self, hook: Callable[[Peer], None]) -> None:
        """``hook(peer)`` is called when sending to ``peer`` failed or its connection broke."""
        self._error_hooks.append(hook)

    def _hooked_response(self, data: bytes, peer: Peer) -> bool:
        try:
            message = parse_message(data)
        except SipParseError:
            return False
        if not isinstance(message, SipResponse):
            return False
        return any(hook(message, peer) for hook in self._response_hooks)

    # ----------------------------------------------------------------- the pump

    def _on_message(self, data: bytes, peer: Peer) -> None:
        """A message read from a socket: admitted by the source's rate, queued (Rule 7)."""
        is_response = data.startswith(b"SIP/2.0 ")
        if not is_response and self.request_filter is not None and not self.request_filter(peer):
            return  # a silent drop: the core never sees it
        now = self.loop.time()
        limiter = self.limiter
        exempt = self.rate_exempt is not None and self.rate_exempt(peer.host)
        if limiter is not None and not exempt and not limiter.allow_message(peer.host, now):
            # over the source's rate: dropped before any parsing, unanswered (a 503 would feed
            # the flood), counted by the limiter, one log line per interval
            self._drop_log.warning(
                "over-rate",
                now,
                "dropping SIP messages over the per-source rate from %s (%d dropped in total)",
                peer.host,
                limiter.refused_messages,
            )
            return
        if len(self._inbox) >= INBOX_MAX:
            self.inbox_dropped += 1
            self._drop_log.warning(
                "inbox-full",
                now,
                "SIP receive queue full: dropping messages (%d dropped in total)",
                self.inbox_dropped,
            )
            return
        self._inbox.append((data, peer, now))
        if not self._draining:
            self._draining = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Feed queued messages to the core; step aside once the budget is spent (Rule 7)."""
        inbox = self._inbox
        deadline = time.perf_counter() + DRAIN_BUDGET_S
        now = self.loop.time()
        while inbox:
            data, peer, arrived = inbox.popleft()
            if now - arrived > INBOX_MAX_AGE_S:
                self._stale(now, now - arrived)
                continue
            self._receive(data, peer)
            if inbox and time.perf_counter() >= deadline:
                self.loop.call_soon(self._drain)  # after the loop's due timers
                return
        self._draining = False

    def _stale(self, now: float, waited: float) -> None:
        self.inbox_stale += 1
        self._drop_log.warning(
            "inbox-stale",
            now,
            "SIP receive queue %.1f s behind: dropping stale messages (%d dropped in total)",
            waited,
            self.inbox_stale,
        )

    def _receive(self, data: bytes, peer: Peer) -> None:
        if (
            self._response_hooks
            and data.startswith(b"SIP/2.0 ")
            and self._hooked_response(data, peer)
        ):
            self._pump()
            return
        now = self.loop.time()
        try:
            self._core.receive(data, peer, now)
        except Exception:  # last resort: a bug in the core must not kill the socket
            self.core_failures += 1
            self._drop_log.exception(
                "core-failure", now, "SIP core failed on a message from %s:%s", peer.host, peer.port
            )
        self._pump()

    def _on_transport_error(self, peer: Peer) -> None:
        self._core.transport_error(peer, self.loop.time())
        for hook in self._error_hooks:
            try:
                hook(peer)
            except Exception:
                log.exception("transport error hook failed")
        self._pump()

    def _on_connection_closed(self, peer: Peer) -> None:
        """A TCP connection ended: only the hooks care (a registration re-registers)."""
        for hook in self._error_hooks:
            try:
                hook(peer)
            except Exception:
                log.exception("transport error hook failed")
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._core.handle_timers(self.loop.time())
        except Exception:
            log.exception("SIP core failed in a timer")
        self._pump()

    def _pump(self) -> None:
        transports = self._transports
        for out in self._core.data_to_send():
            if transports is not None:
                transports.send(out.data, out.destination)
        for event in self._core.events():
            try:
                self._dispatch(event)
            except Exception:
                log.exception("failed to dispatch %r", event)
        self._arm()
        if not self._core.calls:
            self._idle.set()
        else:
            self._idle.clear()

    def _arm(self) -> None:
        deadline = self._core.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return  # an earlier wake-up is armed; it re-arms for this one
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    # ----------------------------------------------------------------- entry points

    def enter(self, step: Callable[[Core, float], T]) -> T:
        """Rule 1: run ``step(core, now)`` at ``loop.time()``, then pump; return its result.

        The one way into the core for :class:`Dialog` and its subclasses.
        """
        result = step(self._core, self.loop.time())
        self._pump()
        return result

    def outcome(self, handle: ClientRequest) -> asyncio.Future[SipResponse]:
        """The final response of a request sent through :meth:`enter` (a future).

        It fails with :class:`RequestFailed` when the request got no final response.
        """
        future: asyncio.Future[SipResponse] = self.loop.create_future()
        if handle.done:  # completed while the step was pumped
            self._complete(future, handle)
        else:
            self._requests[handle.id] = future
        return future

    def _complete(self, future: asyncio.Future[SipResponse], handle: ClientRequest) -> None:
        if future.done():
            return
        if handle.response is None:
            future.set_exception(RequestFailed(f"{handle.method} timed out"))
        else:
            future.set_result(handle.response)

    def _answer_reoffer(self, pending: ServerRequest, answer: bytes | int | None) -> None:
        self.enter(lambda core, now: core.answer_reoffer(pending, answer, now=now))

    def _reoffer(self, dialog: Dialog | None, pending: ServerRequest) -> None:
        """Rule 5: the dialog's hook answers; an awaitable answer is awaited in a task."""
        hook = dialog.on_reoffer if dialog is not None else None
        if hook is None:
            self._answer_reoffer(pending, None)
            return
        try:
            answer = hook(pending.request.body)
        except Exception:
            log.exception("on_reoffer failed for %r", dialog)
            self._answer_reoffer(pending, 500)
            return
        if not inspect.isawaitable(answer):
            self._answer_reoffer(pending, answer)
            return
        task = self.loop.create_task(self._await_reoffer(dialog, pending, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_reoffer(
        self, dialog: Dialog | None, pending: ServerRequest, answer: Awaitable[bytes | int]
    ) -> None:
        try:
            result: bytes | int = await answer
        except Exception:
            log.exception("on_reoffer failed for %r", dialog)
            result = 500
        self._answer_reoffer(pending, result)

    def _request(self, dialog: Dialog | None, pending: ServerRequest) -> None:
        status: int | None = None
        if dialog is not None:
            try:
                status = dialog._request_status(pending.request)
            except Exception:
                log.exception("on_request failed for %r", dialog)
                status = 500
        self.enter(lambda core, now: core.answer_request(pending, status, now=now))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, IncomingCall):
            call = ServerCall(self, event.call)
            self._calls[event.call.id] = call
            try:
                self.on_invite(call)
            except Exception:
                log.exception("on_invite failed")
                call.reject(500)
        elif isinstance(event, CallConfirmed):
            dialog = self._calls.get(event.call.id)
            if isinstance(dialog, ServerCall) and not dialog.confirmed.done():
                dialog.confirmed.set_result(None)
        elif isinstance(event, CallTerminated):
            self._terminated(event.call, event.reason)
        elif isinstance(event, CallAnswered):
            client = ClientCall(self, event.call)
            self._calls[event.call.id] = client
            pending = self._pending.get(event.call.id)
            if pending is not None and not pending.done():
                pending.set_result(client)
            else:  # the caller stopped waiting: hang up
                self._core.bye(event.call, now=self.loop.time())
        elif isinstance(event, CallProgress):
            hook = self._progress.get(event.call.id)
            if hook is not None:
                try:
                    hook(event.response)
                except Exception:
                    log.exception("on_progress failed")
        elif isinstance(event, CallFailed):
            pending = self._pending.get(event.call.id)
            if pending is not None and not pending.done():
                status = f" ({event.response.status})" if event.response is not None else ""
                pending.set_exception(RequestFailed(f"call {event.reason}{status}", event.response))
        elif isinstance(event, RequestCompleted):
            future = self._requests.pop(event.request.id, None)
            if future is not None:
                self._complete(future, event.request)
        elif isinstance(event, ReofferReceived):
            self._reoffer(self._calls.get(event.call.id), event.pending)
        elif isinstance(event, RequestReceived):
            self._request(self._calls.get(event.call.id), event.pending)

    def _terminated(self, leg: CallLeg, reason: str) -> None:
        dialog = self._calls.get(leg.id)
        if dialog is None:
            return
        dialog._ended(reason)
        if isinstance(dialog, ServerCall) and not dialog.confirmed.done():
            dialog.confirmed.set_exception(RequestFailed(f"call ended before the ACK: {reason}"))
            _mark_retrieved(dialog.confirmed)
        self._calls.pop(leg.id, None)


def select_transport(scheme: str, param: str | None, default: str = "udp") -> str:
    """The transport to reach a URI: its ``;transport=`` parameter, else ``tls`` for a
    ``sips:`` URI (RFC 3261 §26.2), else ``default``. ``sips:`` over TCP means TLS."""
    chosen = (param or default).lower()
    if scheme.lower() == "sips" and chosen in ("udp", "tcp"):
        return "tls"
    return chosen


def _split_public(address: str | None) -> tuple[str | None, int | None]:
    if not address:
        return None, None
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, None
