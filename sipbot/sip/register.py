"""The sans-I/O registration client: one trunk's REGISTER bindings (RFC 3261 §10).

The shell feeds it responses (:meth:`RegistrationClient.receive`), transport errors and timer
wake-ups, all with ``now``; it sends what :meth:`RegistrationClient.data_to_send` returns and
logs/publishes what :meth:`RegistrationClient.events` returns. The client never reads a clock
and never resolves a name: it is given an ordered list of :class:`Target` (RFC 3263 order).

Rules:

* Rule 1: one REGISTER transaction at a time, retransmitted and timed out per §17.1.2 (a
  timeout counts as a local 408).
* Rule 2: a 401/407 is answered once per challenge (RFC 8760: the strongest algorithm we
  support, ``qop=auth``); a second challenge without ``stale=true`` is a failure (wrong
  credentials), and so is a fourth one of any kind: never a loop.
* Rule 3: a 423 is retried at once with the registrar's ``Min-Expires`` (when it is larger
  than what we asked; otherwise it is a failure), at most :data:`MAX_423_RETRIES` times in a
  row.
* Rule 4: a 2xx schedules the refresh at ``min(80 % of the granted expiry, expiry - 30 s)``
  but never before half of it.
* Rule 5: a failure (final error, timeout, transport error) tries the next target at once;
  once every target failed, the client waits ``min(max, min · 2^(n-1))`` scaled by a random
  factor in [0.5, 1] (RFC 5626 §4.5) before it starts again at the first target. It never
  retries without a wait after a whole round failed.
* Rule 6: while registered, a keep-alive (CRLF CRLF, RFC 5626 §3.5.1) goes to the registrar's
  address every ``keepalive_s``; a transport error on it re-registers at once.
* Rule 7: the state is a frozen :class:`RegistrationState`; each change is one
  :class:`StateChanged` event (the shell logs exactly one line for it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sipbot.errors import AuthError, SipParseError
from sipbot.sip.address import format_host, parse_name_addr, parse_uri
from sipbot.sip.auth import Credentials, authorization_header, select_challenge
from sipbot.sip.compose import contact_value, via_value
from sipbot.sip.headers import Headers
from sipbot.sip.legs import Outgoing, Peer
from sipbot.sip.message import (
    SipRequest,
    SipResponse,
    generate_branch,
    generate_call_id,
    generate_tag,
)
from sipbot.sip.transaction import (
    ClientNonInviteTransaction,
    Deliver,
    SendMessage,
    TimedOut,
    TimerSettings,
    TransportFailed,
    client_key,
    is_reliable,
)

KEEPALIVE = b"\r\n\r\n"  # RFC 5626 §3.5.1 "double CRLF" ping
REFRESH_FRACTION = 0.8
REFRESH_MARGIN_S = 30.0
MAX_423_RETRIES = 2
MAX_CHALLENGES = 3  # answers to one REGISTER's challenges (stale=true ones included)
LOCAL_TIMEOUT = 408  # "last code" when the registrar never answered
LOCAL_TRANSPORT_ERROR = 503  # "last code" when the transport failed (RFC 3261 §8.1.3.1)

Phase = Literal["idle", "registering", "registered", "failed", "unregistering", "stopped"]
AddressFor = Callable[[str, str], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a REGISTER goes: the Request-URI (registrar) and the resolved next hop."""

    registrar_uri: str
    peer: Peer


@dataclass(frozen=True, slots=True)
class RegistrationSettings:
    """One trunk's registration (see docs/CONFIG.md ``trunks:``).

    Attributes:
        aor: the address of record, ``sip:user@domain``.
        credentials: digest user (``auth_user``) and password.
        contact_user: the user part of our Contact (calls arrive addressed to it).
        expires_s: the expiry we ask for.
        route: a ``Route`` value (the outbound proxy, ``<sip:proxy;lr>``) or None.
        keepalive_s: seconds between keep-alives while registered (0: none).
        retry_min_s, retry_max_s: the backoff bounds of Rule 5.
        user_agent: the User-Agent header.
    """

    aor: str
    credentials: Credentials
    contact_user: str
    expires_s: int = 600
    route: str | None = None
    keepalive_s: float = 30.0
    retry_min_s: float = 5.0
    retry_max_s: float = 300.0
    user_agent: str = "sipbot/0.1"


@dataclass(frozen=True, slots=True)
class RegistrationState:
    """What a registration is doing, for logs, status and metrics.

    Attributes:
        phase: idle, registering, registered, failed (waiting to retry), unregistering,
            stopped.
        code: the last final status (408: we timed out; 503: the transport failed), or None.
        next_attempt: monotonic time of the next REGISTER (refresh or retry), or None.
        registrar: the registrar URI of the current/last attempt.
        expires_s: the expiry the registrar granted (registered only).
        failures: consecutive failed rounds (Rule 5).
        reason: a short human text for the last change.
    """

    phase: Phase = "idle"
    code: int | None = None
    next_attempt: float | None = None
    registrar: str | None = None
    expires_s: int | None = None
    failures: int = 0
    reason: str = ""

    def __str__(self) -> str:
        parts: list[str] = [self.phase]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.registrar:
            parts.append(f"registrar={self.registrar}")
        if self.expires_s is not None and self.phase == "registered":
            parts.append(f"expires={self.expires_s}s")
        if self.reason:
            parts.append(f"({self.reason})")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The registration moved from ``old`` to ``new`` at ``now``."""

    old: RegistrationState
    new: RegistrationState
    now: float


@dataclass(slots=True)
class _Attempt:
    txn: ClientNonInviteTransaction
    target: Target
    answered: set[str] = field(default_factory=set)  # nonces already answered (Rule 2)


class RegistrationClient:
    """Keeps one AOR registered (see the module rules).

    Args:
        settings: what to register.
        address_for: ``(transport, peer_host) -> (host, port)`` we advertise (Via, Contact).
        timers: RFC 3261 timers of the REGISTER transactions.
        rng: randomness of the backoff jitter (seed it in tests).
    """

    def __init__(
        self,
        settings: RegistrationSettings,
        address_for: AddressFor,
        timers: TimerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._address_for = address_for
        self._timers = timers or TimerSettings()
        self._rng = rng or random.Random()
        self._targets: tuple[Target, ...] = ()
        self._index = 0
        self._state = RegistrationState()
        self._out: list[Outgoing] = []
        self._events: list[StateChanged] = []
        self._attempt: _Attempt | None = None
        self._wake: float | None = None  # refresh or retry time
        self._keepalive_at: float | None = None
        self._expires = settings.expires_s
        self._brief_retries = 0  # consecutive 423 retries (Rule 3)
        self._call_id = ""
        self._from_tag = generate_tag()
        self._cseq = 0

    # ----------------------------------------------------------------- inputs

    @property
    def state(self) -> RegistrationState:
        return self._state

    @property
    def current_peer(self) -> Peer | None:
        """The next hop of the current or last attempt."""
        return self._targets[self._index].peer if self._targets else None

    def set_targets(self, targets: Sequence[Target]) -> None:
        """The registrars to use, in order (RFC 3263 results); used from the next attempt."""
        current = self._targets[self._index] if self._targets else None
        self._targets = tuple(targets)
        self._index = self._targets.index(current) if current in self._targets else 0

    def start(self, now: float) -> None:
        """Send the first REGISTER (or fail at once when there is no target)."""
        self._call_id = generate_call_id(self.settings.aor.rpartition("@")[2] or "sipbot")
        self._expires = self.settings.expires_s
        self._change(now, "registering", registrar=self._target_uri(), reason="starting")
        self._send_register(now, self._expires)

    def stop(self, now: float) -> None:
        """Remove the binding (REGISTER with Expires: 0) when registered; then ``stopped``."""
        self._wake = self._keepalive_at = None
        if self._state.phase == "registered" and self._targets:
            self._send_register(now, 0)
            self._change(now, "unregistering", next_attempt=None, reason="removing the binding")
        else:
            self._attempt = None
            self._change(now, "stopped", next_attempt=None, reason="stopped")

    def owns(self, response: SipResponse) -> bool:
        """True when ``response`` answers our REGISTER in progress."""
        if self._attempt is None:
            return False
        try:
            return client_key(response) == self._attempt.txn.key
        except SipParseError:
            return False

    def receive(self, response: SipResponse, now: float) -> None:
        """A response to our REGISTER (check :meth:`owns` first)."""
        if self.owns(response) and self._attempt is not None:
            self._attempt.txn.receive(response, now)
            self._run(now)

    def transport_error(self, peer: Peer, now: float) -> None:
        """Sending to ``peer`` failed or its connection broke (Rule 6)."""
        if self._attempt is not None and _same_hop(self._attempt.target.peer, peer):
            self._attempt.txn.transport_error(now)
            self._run(now)
        elif self._state.phase == "registered" and _same_hop(self.current_peer, peer):
            self._keepalive_at = None
            self._change(now, "registering", code=LOCAL_TRANSPORT_ERROR, reason="transport broke")
            self._send_register(now, self._expires)

    def handle_timers(self, now: float) -> None:
        """Fire what is due at ``now``."""
        if self._attempt is not None:
            self._attempt.txn.handle_timer(now)
            self._run(now)
        if self._keepalive_at is not None and now >= self._keepalive_at:
            peer = self.current_peer
            if peer is not None:
                self._out.append(Outgoing(KEEPALIVE, peer))
            self._keepalive_at = now + self.settings.keepalive_s
        if self._wake is not None and now >= self._wake and self._attempt is None:
            self._wake = None
            if self._state.phase == "failed":
                self._change(now, "registering", registrar=self._target_uri(), reason="retrying")
                self._send_register(now, self._expires)
            elif self._state.phase == "registered":
                self._send_register(now, self._expires)  # a refresh: no state change

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timers` has work, or None."""
        times = [self._wake, self._keepalive_at]
        if self._attempt is not None:
            times.append(self._attempt.txn.next_deadline())
        known = [t for t in times if t is not None]
        return min(known) if known else None

    # ----------------------------------------------------------------- outputs

    def data_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[StateChanged]:
        events, self._events = self._events, []
        return events

    # ----------------------------------------------------------------- internals

    def _change(self, now: float, phase: Phase, **values: object) -> None:
        old = self._state
        new = RegistrationState(
            phase=phase,
            code=values.get("code", old.code),  # type: ignore[arg-type]
            next_attempt=values.get("next_attempt", old.next_attempt),  # type: ignore[arg-type]
            registrar=values.get("registrar", old.registrar),  # type: ignore[arg-type]
            expires_s=values.get("expires_s", old.expires_s),  # type: ignore[arg-type]
            failures=values.get("failures", old.failures),  # type: ignore[arg-type]
            reason=str(values.get("reason", "")),
        )
        self._state = new
        if new.phase != old.phase or new.code != old.code or new.reason != old.reason:
            self._events.append(StateChanged(old, new, now))

    def _send_register(
        self,
        now: float,
        expires: int,
        authorization: tuple[str, str] | None = None,
        answered: set[str] | None = None,
    ) -> None:
        """Start a REGISTER transaction to the current target (state changes are the
        caller's)."""
        if not self._targets:
            self._round_failed(now, None, "no registrar address (DNS?)")
            return
        target = self._targets[self._index]
        request = self._build(target, expires, authorization)
        txn = ClientNonInviteTransaction(
            request, is_reliable(target.peer.transport), self._timers, now
        )
        self._attempt = _Attempt(txn, target, answered or set())
        self._run(now)

    def _target_uri(self) -> str | None:
        return self._targets[self._index].registrar_uri if self._targets else None

    def _build(
        self, target: Target, expires: int, authorization: tuple[str, str] | None
    ) -> SipRequest:
        s = self.settings
        peer = target.peer
        host, port = self._address_for(peer.transport, peer.host)
        self._cseq += 1
        h = Headers()
        h.add("Via", via_value(peer.transport, host, port, generate_branch()))
        h.add("Max-Forwards", "70")
        if s.route:
            h.add("Route", s.route)
        h.add("From", f"<{s.aor}>;tag={self._from_tag}")
        h.add("To", f"<{s.aor}>")
        h.add("Call-ID", self._call_id or generate_call_id(format_host(host)))
        h.add("CSeq", f"{self._cseq} REGISTER")
        h.add("Contact", contact_value(peer.transport, host, port, s.contact_user))
        h.add("Expires", str(expires))
        if authorization is not None:
            h.add(*authorization)
        h.add("User-Agent", s.user_agent)
        h.add("Content-Length", "0")
        return SipRequest("REGISTER", target.registrar_uri, h, b"")

    def _run(self, now: float) -> None:
        attempt = self._attempt
        if attempt is None:
            return
        for action in attempt.txn.take_actions():
            if isinstance(action, SendMessage):
                self._out.append(Outgoing(bytes(action.message), attempt.target.peer))
            elif isinstance(action, Deliver) and isinstance(action.message, SipResponse):
                if action.message.status >= 200:
                    self._final(action.message, now)
            elif isinstance(action, TimedOut):
                self._failed_target(now, LOCAL_TIMEOUT, "no answer from the registrar")
            elif isinstance(action, TransportFailed):
                self._failed_target(now, LOCAL_TRANSPORT_ERROR, "transport error")

    def _final(self, response: SipResponse, now: float) -> None:
        attempt = self._attempt
        assert attempt is not None
        self._attempt = None
        request = attempt.txn.request
        expires = int(request.headers.get("Expires") or "0")
        status = response.status
        if status in (401, 407):
            self._challenged(response, attempt, now)
        elif expires == 0:
            self._change(now, "stopped", code=status, next_attempt=None, reason="unregistered")
        elif 200 <= status < 300:
            self._registered(response, attempt.target, now)
        elif status == 423:
            self._too_brief(response, now)
        else:
            self._failed_target(now, status, response.reason)

    def _registered(self, response: SipResponse, target: Target, now: float) -> None:
        granted = _granted_expires(response, self.settings.contact_user, self._expires)
        self._brief_retries = 0
        if granted <= 0:
            self._failed_target(now, response.status, "the registrar kept no binding")
            return
        refresh = max(min(REFRESH_FRACTION * granted, granted - REFRESH_MARGIN_S), granted / 2)
        self._wake = now + refresh
        if self.settings.keepalive_s > 0:
            self._keepalive_at = now + self.settings.keepalive_s
        self._change(
            now,
            "registered",
            code=response.status,
            next_attempt=self._wake,
            registrar=target.registrar_uri,
            expires_s=granted,
            failures=0,
            reason=f"refresh in {refresh:.0f}s",
        )

    def _challenged(self, response: SipResponse, attempt: _Attempt, now: float) -> None:
        proxy = response.status == 407
        values = response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        try:
            challenge = select_challenge(values)
        except AuthError as exc:
            self._failed_target(now, response.status, str(exc))
            return
        if attempt.answered and not challenge.stale:
            self._failed_target(now, response.status, "credentials refused")
            return
        if challenge.nonce in attempt.answered or len(attempt.answered) >= MAX_CHALLENGES:
            self._failed_target(now, response.status, "credentials refused")
            return
        request = attempt.txn.request
        try:
            value = authorization_header(
                challenge, self.settings.credentials, "REGISTER", request.uri, nc=1
            )
        except AuthError as exc:
            self._failed_target(now, response.status, str(exc))
            return
        header = ("Proxy-Authorization" if proxy else "Authorization", value)
        answered = {*attempt.answered, challenge.nonce}
        self._send_register(now, int(request.headers.get("Expires") or 0), header, answered)

    def _too_brief(self, response: SipResponse, now: float) -> None:
        try:
            minimum = int((response.headers.get("Min-Expires") or "").strip())
        except ValueError:
            minimum = 0
        if minimum <= self._expires or self._brief_retries >= MAX_423_RETRIES:
            self._failed_target(now, 423, "423 without a larger Min-Expires")
            return
        self._brief_retries += 1
        self._expires = minimum
        self._change(now, "registering", code=423, reason=f"retrying with Min-Expires {minimum}")
        self._send_register(now, minimum)

    def _failed_target(self, now: float, code: int | None, reason: str) -> None:
        """Rule 5: the next target at once, or a backoff after a whole round."""
        self._attempt = None
        self._keepalive_at = None
        if self._state.phase == "unregistering":
            self._change(now, "stopped", code=code, next_attempt=None, reason=reason)
            return
        if self._index + 1 < len(self._targets):
            failed = self._targets[self._index].peer
            self._index += 1
            where = f"{failed.host}:{failed.port}"
            self._change(
                now,
                "registering",
                code=code,
                registrar=self._target_uri(),
                reason=f"{reason} at {where}: trying the next address",
            )
            self._send_register(now, self._expires)
            return
        self._round_failed(now, code, reason)

    def _round_failed(self, now: float, code: int | None, reason: str) -> None:
        self._index = 0
        self._brief_retries = 0
        failures = self._state.failures + 1
        s = self.settings
        wait = min(s.retry_max_s, s.retry_min_s * 2 ** (failures - 1))
        wait *= self._rng.uniform(0.5, 1.0)
        wait = max(wait, s.retry_min_s / 2)
        self._wake = now + wait
        self._expires = s.expires_s
        self._change(
            now,
            "failed",
            code=code,
            next_attempt=self._wake,
            failures=failures,
            reason=f"{reason}; retry in {wait:.1f}s",
        )


def _granted_expires(response: SipResponse, contact_user: str, asked: int) -> int:
    """The expiry of our binding in a 2xx: our Contact's ``expires``, else Expires, else asked."""
    for value in response.headers.get_all("Contact"):
        try:
            address = parse_name_addr(value, "Contact")
            user = parse_uri(address.uri).user
        except SipParseError:
            continue
        if user == contact_user and address.param("expires") is not None:
            try:
                return int(address.param("expires") or "0")
            except ValueError:
                continue
    try:
        return int(response.headers.get("Expires") or asked)
    except ValueError:
        return asked


def _same_hop(a: Peer | None, b: Peer | None) -> bool:
    if a is None or b is None:
        return False
    return (a.transport, a.host, a.port) == (b.transport, b.host, b.port)
