"""Inbound trust: which INVITEs may reach an agent, decided before anything is allocated.

Pure: :meth:`TrustPolicy.check_invite` reads the INVITE, its source address and ``now`` and
returns a verdict; the server answers it (or not) and only an :class:`Admit` opens a call.

Rules:

* Rule 1: a source inside a trunk's allow-list (CIDR) is admitted as that trunk. When several
  trunks hold the source, the one whose registrar sends from exactly that address and port
  wins, then the one whose contact user is the Request-URI user, then the first.
* Rule 2: with digest users configured, any other INVITE is challenged (401); a correct answer
  is admitted (no trunk), a stale nonce is challenged again, anything else gets 403. The
  challenge and the 403 are the same whether the user exists or not (no user enumeration).
* Rule 3: otherwise the server-wide policy for unknown sources decides: ``allow`` (admitted,
  no trunk), ``reject`` (403) or ``drop`` (no answer at all).
* Rule 4: the policy ``auto`` is ``reject`` once any trunk allow-list or user exists, else
  ``allow`` (a development box on loopback answers everyone, as before).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sipbot.errors import AuthError, SipParseError
from sipbot.sip.address import parse_uri
from sipbot.sip.auth import DigestVerifier, parse_auth_params
from sipbot.sip.message import SipRequest

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UnknownPolicy = Literal["auto", "allow", "reject", "drop"]


@dataclass(frozen=True, slots=True)
class TrustedSource:
    """A trunk as trust sees it: its name, networks, the user of our Contact there and the
    (ip, port) its registrars send from."""

    name: str
    networks: tuple[IpNetwork, ...]
    contact_user: str | None = None
    endpoints: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True, slots=True)
class Admit:
    """Let the call in. ``trunk``: the trunk it came through; ``user``: the digest user."""

    trunk: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer 401 with this ``WWW-Authenticate`` value."""

    www_authenticate: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer ``status`` (403); ``why`` is for the log only, never for the peer."""

    why: str
    status: int = 403


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing at all."""

    why: str


Verdict = Admit | Challenge | Refuse | Drop


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


@dataclass(slots=True)
class TrustPolicy:
    """The trust rules of one server (see the module rules).

    Args:
        sources: trunks with allow-lists (registrar addresses included).
        unknown: the policy for other sources (Rule 3/4).
        users: digest user → password, for direct callers (empty: no digest).
        verifier: the digest verifier (realm, nonce secret); needed when ``users`` is set.
    """

    sources: Sequence[TrustedSource] = ()
    unknown: UnknownPolicy = "auto"
    users: Mapping[str, str] = field(default_factory=dict)
    verifier: DigestVerifier | None = None

    @property
    def effective_unknown(self) -> Literal["allow", "reject", "drop"]:
        """Rule 4."""
        if self.unknown != "auto":
            return self.unknown
        guarded = self.users or any(s.networks for s in self.sources)
        return "reject" if guarded else "allow"

    def trunk_for(
        self, source_ip: str, request_user: str | None = None, source_port: int | None = None
    ) -> str | None:
        """Rule 1: the trunk whose allow-list holds ``source_ip`` (None: none)."""
        address = _address(source_ip)
        if address is None:
            return None
        matching = [s for s in self.sources if any(address in n for n in s.networks)]
        for source in matching:
            if (str(address), source_port) in source.endpoints:
                return source.name
        for source in matching:
            if request_user and source.contact_user == request_user:
                return source.name
        return matching[0].name if matching else None

    def drops_source(self, source_ip: str) -> bool:
        """True when every request from ``source_ip`` may be dropped unseen (policy ``drop``
        and no trunk holds it; digest users need to see a challenge, so never then)."""
        if self.effective_unknown != "drop" or self.users:
            return False
        return self.trunk_for(source_ip) is None

    def check_invite(
        self, request: SipRequest, source_ip: str, now: float, source_port: int | None = None
    ) -> Verdict:
        """The verdict for a new INVITE from ``source_ip`` (Rules 1-3)."""
        user = _request_user(request)
        trunk = self.trunk_for(source_ip, user, source_port)
        if trunk is not None:
            return Admit(trunk=trunk)
        if self.users and self.verifier is not None:
            return self._digest(request, now)
        policy = self.effective_unknown
        if policy == "allow":
            return Admit()
        if policy == "drop":
            return Drop(f"unknown source {source_ip}")
        return Refuse(f"unknown source {source_ip}")

    def _digest(self, request: SipRequest, now: float) -> Verdict:
        assert self.verifier is not None
        answer = request.headers.get("Authorization")
        if answer is None:
            return Challenge(self.verifier.challenge(now))
        password_for: Callable[[str], str | None] = self.users.get
        result = self.verifier.verify(answer, request.method, password_for, now)
        if result == "ok":
            return Admit(user=_auth_user(answer))
        if result == "stale":
            return Challenge(self.verifier.challenge(now, stale=True))
        return Refuse("digest authentication failed")


def _request_user(request: SipRequest) -> str | None:
    try:
        return parse_uri(request.uri).user
    except SipParseError:
        return None


def _auth_user(authorization: str) -> str | None:
    try:
        return parse_auth_params(authorization).get("username")
    except AuthError:  # verify() accepted it, so this does not happen
        return None
