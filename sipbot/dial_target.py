"""Checking an outbound call request: where its INVITE goes and how (pure, no I/O).

:func:`check_request` turns a :class:`~sipbot.outbound.DialRequest` into a :class:`DialTarget`
against the current dialplan, or raises :class:`~sipbot.errors.DialError` (nothing is sent).

Rules:

* Rule 1: ``to`` is a ``sip:``/``sips:`` URI (sent as is: directly, or through the named trunk)
  or a number/user, which needs a trunk (the named one, or the only one) and is dialled in the
  trunk's domain (:class:`~sipbot.dialplan.trunks.TrunkOutbound`).
* Rule 2: the caller ID is the request's, else the trunk's ``outbound.caller_id``, else its
  registration user, else ``sipbot``; From and P-Asserted-Identity (when the trunk's ``pai``)
  carry it in the trunk's domain.
* Rule 3: codecs offered: the trunk's ``outbound.codecs``, else the agent's, else the server's.
* Rule 4: a call the server places for another reason (a warm transfer's consultation call) to a
  ``sip:`` URI goes through the trunk whose dial domain (or next hop) is the URI's host, if one
  is (:func:`trunk_of`), with that trunk's next hop, Route, credentials and caller ID
  (:func:`trunk_hop`) as a dialled call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipbot.dialplan import Agent
from sipbot.dialplan.trunks import USER_CHARS, Trunk
from sipbot.errors import DialError, SipbotError
from sipbot.outbound import DialRequest
from sipbot.sip.address import format_host, parse_uri
from sipbot.sip.auth import Credentials

DEFAULT_RING_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DialTarget:
    """Where and how one request's INVITE goes (checked; Rule 1)."""

    uri: str  # the Request-URI
    next_hop: str  # the URI whose address the INVITE is sent to
    route: str | None  # a Route header (an outbound proxy), or None
    trunk: Trunk | None
    agent: Agent
    from_user: str  # user or user@domain
    caller_id: str
    callee: str
    headers: tuple[tuple[str, str], ...]
    credentials: Credentials | None
    codecs: tuple[str, ...]
    ring_timeout_s: float


@dataclass(frozen=True, slots=True)
class TrunkHop:
    """How an INVITE to a URI goes: through a trunk, or directly (Rules 1, 2 and 4)."""

    next_hop: str  # the URI whose address the INVITE is sent to
    route: str | None  # a Route header (an outbound proxy), or None
    from_user: str  # user or user@domain
    headers: tuple[tuple[str, str], ...]  # Route, P-Asserted-Identity
    credentials: Credentials | None


def trunk_hop(uri: str, trunk: Trunk | None, caller_id: str) -> TrunkHop:
    """Where and how an INVITE to ``uri`` from ``caller_id`` goes through ``trunk`` (None:
    directly to ``uri``).

    Raises:
        DialError: ``trunk`` has nowhere to send to.
    """
    out = trunk.dial_settings if trunk is not None else None
    target = trunk.dial_target if trunk is not None else None
    if trunk is not None and target is None:
        raise DialError(f"trunk {trunk.name!r} has no outbound.proxy or registrar to send to")
    domain = trunk.dial_domain if trunk is not None else None
    from_user = f"{caller_id}@{domain}" if domain else caller_id
    headers: list[tuple[str, str]] = []
    if trunk is not None and out is not None and out.pai and domain:
        headers.append(("P-Asserted-Identity", f"<sip:{caller_id}@{domain}>"))
    proxy = out.proxy if out is not None else None
    reg_proxy = trunk.registration.outbound_proxy if trunk and trunk.registration else None
    route = proxy or reg_proxy
    if route is not None:
        headers.insert(0, ("Route", f"<{route};lr>"))
    transport = out.transport if out is not None else None
    next_hop = target or uri
    if transport and parse_uri(next_hop).param("transport") is None:
        next_hop = f"{next_hop};transport={transport}"
    return TrunkHop(
        next_hop=next_hop,
        route=route,
        from_user=from_user,
        headers=tuple(headers),
        credentials=trunk.dial_credentials if trunk is not None else None,
    )


def trunk_of(uri: str, trunks: Mapping[str, Trunk]) -> Trunk | None:
    """The trunk a ``sip:`` URI is reached through (Rule 4): the first whose dial domain, or
    next hop's host, is the URI's host; None when none is (or ``uri`` is not a SIP URI)."""
    try:
        parsed = parse_uri(uri)
    except SipbotError:
        return None
    if not parsed.is_sip or not parsed.host:
        return None
    host = format_host(parsed.host).lower()
    for trunk in trunks.values():
        hosts = {trunk.dial_domain}
        target = trunk.dial_target
        if target is not None:
            with contextlib.suppress(SipbotError):
                hosts.add(format_host(parse_uri(target).host))
        if host in {h.lower() for h in hosts if h}:
            return trunk
    return None


def trunk_caller_id(trunk: Trunk | None) -> str:
    """The caller ID of a call through ``trunk`` that names none (Rule 2)."""
    out = trunk.dial_settings.caller_id if trunk is not None else None
    return out or _default_user(trunk)


def check_request(
    request: DialRequest,
    agents: dict[str, Agent] | Any,
    trunks: dict[str, Trunk] | Any,
    server_codecs: tuple[str, ...],
) -> DialTarget:
    """The target of ``request`` (Rule 1).

    Raises:
        DialError: an unknown agent or trunk, a bad URI or number, a bad ring timeout.
    """
    agent = agents.get(request.agent)
    if agent is None:
        known = ", ".join(sorted(agents)) or "none"
        raise DialError(f"unknown agent {request.agent!r} (agents: {known})")
    to = request.to.strip()
    is_uri = to.lower().startswith(("sip:", "sips:"))
    trunk = _pick_trunk(request.trunk, trunks, needed=not is_uri)
    if request.ring_timeout_s is not None and not request.ring_timeout_s > 0:
        raise DialError(f"ring_timeout_s must be > 0, not {request.ring_timeout_s}")
    out = trunk.dial_settings if trunk is not None else None
    if is_uri:
        try:
            parsed = parse_uri(to)
        except SipbotError:
            parsed = None
        if parsed is None or not parsed.is_sip or not parsed.host:
            raise DialError(f"invalid SIP URI {request.to!r}")
        uri, callee = to, parsed.user or format_host(parsed.host)
    else:
        if not to or not all(c in USER_CHARS for c in to):
            raise DialError(f"invalid number or user {request.to!r} (or give a sip: URI)")
        assert trunk is not None
        domain = trunk.dial_domain
        if domain is None:
            raise DialError(f"trunk {trunk.name!r} has no domain to dial {to!r} in")
        uri, callee = f"sip:{to}@{domain}", to
    caller_id = request.caller_id or trunk_caller_id(trunk)
    if not caller_id or not all(c in USER_CHARS for c in caller_id):
        raise DialError(f"invalid caller_id {caller_id!r}")
    hop = trunk_hop(uri, trunk, caller_id)
    return DialTarget(
        uri=uri,
        next_hop=hop.next_hop,
        route=hop.route,
        trunk=trunk,
        agent=agent,
        from_user=hop.from_user,
        caller_id=caller_id,
        callee=callee,
        headers=hop.headers,
        credentials=hop.credentials,
        codecs=(out.codecs if out and out.codecs else ()) or tuple(agent.codecs) or server_codecs,
        ring_timeout_s=request.ring_timeout_s
        or (out.ring_timeout_s if out is not None else DEFAULT_RING_TIMEOUT_S),
    )


def _pick_trunk(name: str | None, trunks: Any, *, needed: bool) -> Trunk | None:
    if name is not None:
        trunk: Trunk | None = trunks.get(name)
        if trunk is None:
            known = ", ".join(sorted(trunks)) or "none"
            raise DialError(f"unknown trunk {name!r} (trunks: {known})")
        return trunk
    if not needed:
        return None
    if len(trunks) != 1:
        raise DialError("a number needs a trunk: name one (or dial a sip: URI)")
    only: Trunk = next(iter(trunks.values()))
    return only


def _default_user(trunk: Trunk | None) -> str:
    if trunk is not None and trunk.registration is not None:
        return trunk.registration.user
    return "sipbot"
