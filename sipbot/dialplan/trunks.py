"""Trunks: where calls may come from, and the registrations that make them come.

A :class:`Trunk` is built from one ``trunks:`` entry of the dialplan (docs/CONFIG.md). It has
a source allow-list (IPs/CIDRs), optionally a :class:`TrunkRegistration` (sipbot registers as
a user at a PBX or carrier) and optionally the header that carries the called number (DID).

Rules:

* Rule 1: a password is a secret from the environment (``${VAR}``), never text in the file.
* Rule 2: a registration needs ``registrar`` and ``user``; ``auth_user`` defaults to ``user``,
  ``contact_user`` to ``user``, the AOR domain to the first registrar's host.
* Rule 3: ``transport`` is ``udp``, ``tcp`` or ``tls`` (certificates: ``server.sip.tls``).
* Rule 5 (outbound): calls placed through a trunk (``outbound:``) go to its ``proxy``, else
  its registration's outbound proxy, else its first registrar; the Request-URI and From are
  in its ``domain`` (default: the registration's domain, else the proxy's host); a 401/407 is
  answered with the registration's credentials.
* Rule 4 (SRTP): a call's ``srtp`` policy is its trunk's ``srtp`` when the trunk sets one (the
  trunk describes the link: a carrier that requires SRTP requires it whatever agent answers),
  else its agent's, else ``off`` (:func:`call_srtp`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sipbot.dial_limits import OutboundLimits
from sipbot.dialplan.agent import check_codecs
from sipbot.dialplan.fields import parse_srtp, with_field
from sipbot.dialplan.match import IpNetwork, parse_network
from sipbot.domain import SrtpMode
from sipbot.errors import ConfigError, SipParseError
from sipbot.secret import EnvString, Secret, to_secret
from sipbot.sip.address import format_host, parse_uri
from sipbot.sip.auth import Credentials
from sipbot.sip.register import RegistrationSettings

TRANSPORTS = ("udp", "tcp", "tls")
USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+*#!~")


@dataclass(frozen=True, slots=True)
class TrunkRegistration:
    """How sipbot registers at a trunk's registrar (see docs/CONFIG.md).

    Attributes:
        registrars: registrar SIP URIs, in failover order.
        user: the AOR user; ``domain`` its host (default: the first registrar's host).
        auth_user: the digest user name.
        password: the digest password (a :class:`~sipbot.secret.Secret`).
        expires_s: the expiry asked for.
        outbound_proxy: a SIP URI every REGISTER goes through (Route ``;lr``), or None.
        transport: ``udp``/``tcp``/``tls``/None (RFC 3263 chooses).
        contact_user: the user of our Contact: calls from the trunk are addressed to it.
        keepalive_s: CRLF keep-alive period while registered (0: none).
        retry_min_s, retry_max_s: the failure backoff bounds.
    """

    registrars: tuple[str, ...]
    user: str
    auth_user: str
    password: Secret
    domain: str
    expires_s: int = 600
    outbound_proxy: str | None = None
    transport: str | None = None
    contact_user: str = ""
    keepalive_s: float = 30.0
    retry_min_s: float = 5.0
    retry_max_s: float = 300.0

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def settings(self, user_agent: str) -> RegistrationSettings:
        """The registration client's settings (the one place the password is revealed)."""
        route = None
        if self.outbound_proxy:
            route = f"<{self.outbound_proxy};lr>"
        return RegistrationSettings(
            aor=self.aor,
            credentials=Credentials(self.auth_user, self.password.reveal()),
            contact_user=self.contact_user or self.user,
            expires_s=self.expires_s,
            route=route,
            keepalive_s=self.keepalive_s,
            retry_min_s=self.retry_min_s,
            retry_max_s=self.retry_max_s,
            user_agent=user_agent,
        )


@dataclass(frozen=True, slots=True)
class TrunkOutbound:
    """How calls are placed through a trunk (its ``outbound:`` keys; Rule 5).

    Attributes:
        proxy: the SIP URI every INVITE is sent to (the carrier's edge), or None.
        domain: the host of the Request-URI (a number dialled) and of From.
        transport: ``udp``/``tcp``/``tls`` to force, or None (the URI / RFC 3263 decides).
        caller_id: the default caller ID (From user and P-Asserted-Identity).
        pai: send P-Asserted-Identity.
        codecs: codecs offered, in preference order (): the agent's, else the server's).
        limits: concurrency, calls per second and the wait queue.
        ring_timeout_s: no final response after this long: CANCEL.
        auth_user, password: digest credentials for a 401/407 to an INVITE (a trunk that
            authenticates calls without a registration); None: the registration's.
    """

    proxy: str | None = None
    domain: str | None = None
    transport: str | None = None
    caller_id: str | None = None
    pai: bool = True
    codecs: tuple[str, ...] = ()
    limits: OutboundLimits = field(default_factory=OutboundLimits)
    ring_timeout_s: float = 30.0
    auth_user: str | None = None
    password: Secret | None = None


@dataclass(frozen=True, slots=True)
class Trunk:
    """One ``trunks:`` entry.

    Attributes:
        name: the trunk's name (routes match it with ``trunk: NAME``).
        source: IPs/CIDRs calls from this trunk come from.
        registration: the registration, or None (an IP-authenticated trunk).
        did_header: a header whose URI user is the called number (``P-Called-Party-ID``,
            ``Diversion``, ``X-...``); None: the Request-URI user, else the To user.
        description: free text.
        srtp: ``off``/``optional``/``required``, or None (the agent decides; Rule 4).
        outbound: how calls are placed through it, or None (defaults; Rule 5).
    """

    name: str
    source: tuple[str, ...] = ()
    registration: TrunkRegistration | None = None
    did_header: str | None = None
    description: str | None = None
    srtp: SrtpMode | None = None
    outbound: TrunkOutbound | None = None
    networks: tuple[IpNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = tuple(
            with_field(f"source[{i}]", parse_network, s) for i, s in enumerate(self.source)
        )
        object.__setattr__(self, "networks", networks)

    @property
    def contact_user(self) -> str | None:
        reg = self.registration
        return (reg.contact_user or reg.user) if reg is not None else None

    @property
    def dial_settings(self) -> TrunkOutbound:
        """Its ``outbound:`` settings (defaults when absent)."""
        return self.outbound or TrunkOutbound()

    @property
    def dial_target(self) -> str | None:
        """The SIP URI INVITEs through this trunk go to (Rule 5), or None (nowhere)."""
        reg = self.registration
        out = self.dial_settings
        return out.proxy or (reg.outbound_proxy or reg.registrars[0] if reg else None)

    @property
    def dial_domain(self) -> str | None:
        """The host of the Request-URI for a number dialled through this trunk (Rule 5)."""
        if self.dial_settings.domain:
            return self.dial_settings.domain
        if self.registration is not None:
            return self.registration.domain
        target = self.dial_target
        return format_host(parse_uri(target).host) if target else None

    @property
    def dial_credentials(self) -> Credentials | None:
        """The digest credentials for 401/407 on INVITE (``outbound``'s, else the
        registration's), or None."""
        out = self.dial_settings
        if out.auth_user and out.password is not None:
            return Credentials(out.auth_user, out.password.reveal())
        reg = self.registration
        return Credentials(reg.auth_user, reg.password.reveal()) if reg is not None else None


def build_trunk(name: str, spec: Any) -> Trunk:
    """A :class:`Trunk` from its schema model (``TrunkModel``).

    Raises:
        ConfigError: a bad address, URI, transport, secret or a missing key (``field`` set).
    """
    registration = None
    if spec.registrar is not None:
        registration = _registration(spec)
    else:
        for key in ("user", "auth_user", "password", "outbound_proxy", "contact_user"):
            if getattr(spec, key) is not None:
                raise ConfigError(f"{key} needs a registrar", field=key)
        if not spec.source and spec.outbound is None:
            raise ConfigError("a trunk needs a source (IP allow-list) or a registrar")
        if not spec.source and spec.outbound.proxy is None:
            message = "a trunk needs a source (IP allow-list), a registrar or outbound.proxy"
            raise ConfigError(message)
    if spec.did_header is not None and not _is_token(spec.did_header):
        raise ConfigError(f"bad header name {spec.did_header!r}", field="did_header")
    return Trunk(
        name=name,
        source=tuple(spec.source),
        registration=registration,
        did_header=spec.did_header,
        description=spec.description,
        srtp=with_field("srtp", parse_srtp, spec.srtp),
        outbound=None if spec.outbound is None else _outbound(spec.outbound),
    )


def _outbound(spec: Any) -> TrunkOutbound:
    """A trunk's ``outbound:`` keys (Rule 5)."""
    if spec.proxy is not None:
        with_field("outbound.proxy", _sip_uri, spec.proxy)
    transport = spec.transport.lower() if spec.transport else None
    if transport is not None and transport not in TRANSPORTS:
        message = f"unknown transport {spec.transport!r}: udp, tcp or tls"
        raise ConfigError(message, field="outbound.transport")
    if spec.caller_id is not None and not _user_ok(spec.caller_id):
        raise ConfigError(f"bad caller_id {spec.caller_id!r}", field="outbound.caller_id")
    codecs = with_field("outbound.codecs", check_codecs, spec.codecs)
    limits = OutboundLimits(spec.max_calls, spec.cps, spec.queue, spec.queue_timeout_s)
    if (spec.auth_user is None) != (spec.password is None):
        raise ConfigError("auth_user and password go together", field="outbound.auth_user")
    if spec.password is not None and not isinstance(spec.password, EnvString):
        message = "secrets come from the environment only: write password: ${VAR}"
        raise ConfigError(message, field="outbound.password")
    return TrunkOutbound(
        proxy=spec.proxy,
        domain=spec.domain,
        transport=transport,
        caller_id=spec.caller_id,
        pai=spec.pai,
        codecs=codecs,
        limits=limits,
        ring_timeout_s=spec.ring_timeout_s,
        auth_user=spec.auth_user,
        password=None if spec.password is None else to_secret(spec.password),
    )


def _registration(spec: Any) -> TrunkRegistration:
    registrars = [spec.registrar] if isinstance(spec.registrar, str) else list(spec.registrar)
    if not registrars:
        raise ConfigError("registrar needs at least one SIP URI", field="registrar")
    for index, uri in enumerate(registrars):
        with_field(f"registrar[{index}]" if len(registrars) > 1 else "registrar", _sip_uri, uri)
    if spec.outbound_proxy is not None:
        with_field("outbound_proxy", _sip_uri, spec.outbound_proxy)
    if not spec.user or not _user_ok(spec.user):
        raise ConfigError("a registration needs user (a SIP user name)", field="user")
    if spec.contact_user is not None and not _user_ok(spec.contact_user):
        raise ConfigError(f"bad contact_user {spec.contact_user!r}", field="contact_user")
    if not isinstance(spec.password, EnvString):
        message = "secrets come from the environment only: write password: ${VAR}"
        raise ConfigError(message, field="password")
    transport = spec.transport.lower() if spec.transport else None
    if transport is not None and transport not in TRANSPORTS:
        message = f"unknown transport {spec.transport!r}: udp, tcp or tls"
        raise ConfigError(message, field="transport")
    if not 0 < spec.expires <= 86_400:
        raise ConfigError("expires must be 1..86400 seconds", field="expires")
    domain = spec.domain or format_host(parse_uri(registrars[0]).host)
    return TrunkRegistration(
        registrars=tuple(registrars),
        user=spec.user,
        auth_user=spec.auth_user or spec.user,
        password=to_secret(spec.password),
        domain=domain,
        expires_s=spec.expires,
        outbound_proxy=spec.outbound_proxy,
        transport=transport,
        contact_user=spec.contact_user or spec.user,
        keepalive_s=spec.keepalive_s,
        retry_min_s=spec.retry_min_s,
        retry_max_s=max(spec.retry_max_s, spec.retry_min_s),
    )


def _sip_uri(text: str) -> str:
    try:
        uri = parse_uri(text)
    except SipParseError:
        uri = None
    if uri is None or not uri.is_sip or not uri.host:
        raise ConfigError(
            f"bad SIP URI {text!r}: expected sip:host[:port] such as sip:pbx.example.com"
        )
    return text


def _user_ok(text: str) -> bool:
    return bool(text) and all(c in USER_CHARS for c in text)


def _is_token(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "-_.!%*+`'~" for c in text)


def trunk_for_source(trunks: Sequence[Trunk], ip: str) -> Trunk | None:
    """The first trunk whose source allow-list holds ``ip``."""
    try:
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return None
    for trunk in trunks:
        if any(address in network for network in trunk.networks):
            return trunk
    return None


def call_srtp(trunk: Trunk | None, agent_srtp: SrtpMode | None) -> SrtpMode:
    """The SRTP policy of a call through ``trunk`` (None: not through a trunk) answered by an
    agent whose setting is ``agent_srtp`` (Rule 4)."""
    if trunk is not None and trunk.srtp is not None:
        return trunk.srtp
    return agent_srtp or "off"
