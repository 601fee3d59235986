"""The asyncio shell of one trunk's registration (:class:`~sipbot.sip.register.RegistrationClient`).

It resolves the registrars (or the outbound proxy) with RFC 3263, sends what the client
produced through the :class:`~sipbot.sip.ua.UserAgent`'s sockets, feeds it the responses the
agent hands over (:meth:`UserAgent.add_response_hook`) and transport errors, keeps one timer
at the client's next deadline and logs one line per state change.

Rules:

* Rule 1: every entry into the client is followed by :meth:`Registration._pump` (send, log,
  re-arm), as in the user agent.
* Rule 2: names are resolved again before each retry after a failed round (the DNS may have
  moved the registrar), never in a tight loop: the client's backoff paces it.
* Rule 3: ``transport: tls`` (or a ``sips:`` registrar) registers over TLS; the registrar's
  certificate is verified against the host name of its URI. When a round fails because the
  transport did (code 503), the state's reason carries the transport's own reason (e.g.
  "TLS certificate not trusted: self-signed certificate"), in the log line and in
  :attr:`Registration.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

from sipbot.errors import DnsError, SipParseError
from sipbot.sip.address import parse_uri
from sipbot.sip.dns import SipResolver
from sipbot.sip.legs import Peer
from sipbot.sip.message import SipResponse
from sipbot.sip.register import (
    LOCAL_TRANSPORT_ERROR,
    RegistrationClient,
    RegistrationSettings,
    RegistrationState,
    StateChanged,
    Target,
)
from sipbot.sip.ua import UserAgent

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 2.0


class Registration:
    """Keeps one trunk registered while the server runs.

    Args:
        name: the trunk's name (for logs).
        ua: the started user agent whose sockets carry the REGISTERs.
        settings: what to register.
        registrars: registrar URIs, in failover order.
        outbound_proxy: when set, every REGISTER goes to this URI's addresses instead.
        transport: ``udp``/``tcp``/``tls`` to force; None lets RFC 3263 choose.
        resolver: the DNS resolver.
        on_change: called with each :class:`StateChanged` (after it is logged).
    """

    def __init__(
        self,
        name: str,
        ua: UserAgent,
        settings: RegistrationSettings,
        registrars: Sequence[str],
        *,
        outbound_proxy: str | None = None,
        transport: str | None = None,
        resolver: SipResolver | None = None,
        on_change: Callable[[StateChanged], None] | None = None,
    ) -> None:
        self.name = name
        self._ua = ua
        self._registrars = tuple(registrars)
        self._proxy = outbound_proxy
        self._transport = transport
        self._resolver = resolver or SipResolver()
        self._on_change = on_change
        self.client = RegistrationClient(settings, ua.address_for, ua.timers)
        self._timer: asyncio.TimerHandle | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._targets_cache: tuple[Target, ...] = ()
        self.history: list[StateChanged] = []
        self.last_transport_error: str | None = None  # Rule 3
        ua.add_response_hook(self._on_response)
        ua.add_transport_error_hook(self._on_transport_error)

    @property
    def state(self) -> RegistrationState:
        return self._explained(self.client.state)

    def _explained(self, state: RegistrationState) -> RegistrationState:
        """Rule 3: a transport failure's state with the transport's reason."""
        why = self.last_transport_error
        if state.phase not in ("registering", "failed") or state.code != LOCAL_TRANSPORT_ERROR:
            return state
        if not why or why in state.reason:
            return state
        return dataclasses.replace(state, reason=f"{state.reason}: {why}" if state.reason else why)

    @property
    def addresses(self) -> set[tuple[str, int]]:
        """(IP, port) of the registrars (or proxy) in use: calls may come from them."""
        return {(t.peer.host, t.peer.port) for t in self._targets_cache}

    async def start(self) -> None:
        """Resolve the registrars and send the first REGISTER (returns at once after that)."""
        await self._resolve()
        self.client.start(self._ua.loop.time())
        self._pump()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:  # noqa: ASYNC109
        """Remove the binding (bounded wait), then stop the timer."""
        if self._resolving is not None:
            self._resolving.cancel()
        self.client.stop(self._ua.loop.time())
        self._pump()
        if self.client.state.phase == "unregistering":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _resolve(self) -> None:
        targets: list[Target] = []
        for registrar in self._registrars:
            where = self._proxy or registrar
            try:
                found = await self._resolver.resolve(self._with_transport(where))
            except (DnsError, SipParseError) as exc:
                log.warning("trunk %s: cannot resolve %s: %s", self.name, where, exc)
                continue
            name = parse_uri(where).host
            for a in found:
                self._ua.remember_name(a.host, a.port, name)  # Rule 3: TLS verifies this name
                targets.append(Target(registrar, Peer(a.transport, a.host, a.port)))
            if self._proxy:
                break
        self._targets_cache = tuple(targets)
        self.client.set_targets(targets)

    def _with_transport(self, uri: str) -> str:
        if self._transport is None or parse_uri(uri).param("transport") is not None:
            return uri
        return f"{uri};transport={self._transport}"

    def _on_response(self, response: SipResponse, source: Peer) -> bool:
        if not self.client.owns(response):
            return False
        self.client.receive(response, self._ua.loop.time())
        self._pump()
        return True

    def _on_transport_error(self, peer: Peer) -> None:
        reason = self._ua.transport_error_reason(peer)
        if reason is not None and any(t.peer == peer for t in self._targets_cache):
            self.last_transport_error = reason
        self.client.transport_error(peer, self._ua.loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.client.handle_timers(self._ua.loop.time())
        self._pump()

    def _pump(self) -> None:
        for out in self.client.data_to_send():
            try:
                self._ua.send_raw(out.data, out.destination)
            except Exception:  # a dead socket must not kill the registration
                log.exception("trunk %s: sending to %s failed", self.name, out.destination)
        for event in self.client.events():
            self._report(event)
        self._arm()

    def _report(self, event: StateChanged) -> None:
        new = self._explained(event.new)
        if new is not event.new:
            event = dataclasses.replace(event, new=new)
        if new.phase == "registered":
            self.last_transport_error = None
        level = logging.WARNING if new.phase == "failed" else logging.INFO
        log.log(level, "trunk %s: registration %s", self.name, new)
        self.history.append(event)
        if len(self.history) > 100:
            del self.history[:50]
        if new.phase == "failed" and (self._resolving is None or self._resolving.done()):
            self._resolving = self._ua.loop.create_task(self._resolve())  # Rule 2
        if new.phase == "stopped":
            self._stopped.set()
        if self._on_change is not None:
            self._on_change(event)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.client.next_deadline()
        if deadline is not None:
            self._timer = self._ua.loop.call_at(deadline, self._on_timer)
