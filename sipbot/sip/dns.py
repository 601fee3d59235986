"""Locating SIP servers (RFC 3263): NAPTR → SRV → A/AAAA, in the order to try them.

The only module that imports ``dnspython``. :func:`order_srv` is the pure part (RFC 2782
priority/weight order with an injected random source); :class:`SipResolver` runs the queries
on asyncio.

Rules:

* Rule 1: a numeric host is used as is (port: the URI's, else 5060 — 5061 for TLS; transport:
  the URI's ``transport`` parameter, else TLS for a ``sips:`` URI, else UDP).
* Rule 2: a host with a port: its A/AAAA records (no NAPTR, no SRV; RFC 3263 §4.2).
* Rule 3: a host with a ``transport`` parameter (or ``sips:``): the SRV records of that
  transport (``_sips._tcp`` for TLS), else A/AAAA.
* Rule 4: otherwise NAPTR records with services ``SIP+D2U``/``SIP+D2T`` (by order, then
  preference) name the SRV records; without NAPTR records, ``_sip._udp`` then ``_sip._tcp``
  SRV; without those, A/AAAA on port 5060 over UDP.
* Rule 5: SRV targets are tried by priority, within a priority by weighted random order
  (RFC 2782); every address of a target comes before the next target. Failover is the
  caller's: it tries the returned list in order.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from sipbot.errors import DnsError
from sipbot.sip.address import parse_uri

DEFAULT_PORT = 5060
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp"}
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp."}
TLS_PORT = 5061
TLS_SRV_PREFIX = "_sips._tcp."
LIFETIME_S = 4.0  # the longest one lookup may take


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """One address to try: transport (udp/tcp), IP address, port."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: lowest priority first; within one, weighted random selection."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        pool = [r for r in records if r.priority == priority]
        pool.sort(key=lambda r: r.weight)  # zero weights first, as RFC 2782 asks
        while pool:
            total = sum(r.weight for r in pool)
            pick = rng.uniform(0, total) if total else 0.0
            running = 0
            chosen = pool[0]
            for r in pool:
                running += r.weight
                if running >= pick:
                    chosen = r
                    break
            ordered.append(chosen)
            pool.remove(chosen)
    return ordered


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


class SipResolver:
    """RFC 3263 lookups over asyncio (see the module rules).

    Args:
        nameservers: resolver addresses; empty: the system's (``/etc/resolv.conf``).
        port: the DNS port of ``nameservers``.
        rng: the SRV weight randomness (seed it in tests).
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        port: int = 53,
        rng: random.Random | None = None,
    ) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:  # no /etc/resolv.conf: names fail
                self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.lifetime = LIFETIME_S
        self._rng = rng or random.Random()

    async def resolve(self, uri: str) -> list[ServerAddress]:
        """Where to send requests for ``uri`` (a SIP URI), in the order to try them.

        Raises:
            DnsError: no address (every lookup failed or returned nothing).
        """
        parsed = parse_uri(uri)
        transport = parsed.param("transport")
        transport = transport.lower() if transport else None
        if parsed.scheme == "sips" and transport in (None, "tcp"):
            transport = "tls"
        default_port = TLS_PORT if transport == "tls" else DEFAULT_PORT
        host = parsed.host
        ip = _ip(host)
        if ip is not None:  # Rule 1
            return [ServerAddress(transport or "udp", ip, parsed.port or default_port)]
        if parsed.port is not None:  # Rule 2
            return await self._addresses(transport or "udp", host, parsed.port)
        if transport is not None:  # Rule 3
            prefix = (
                TLS_SRV_PREFIX if transport == "tls" else SRV_PREFIX.get(transport, "_sip._udp.")
            )
            found = await self._srv(transport, prefix + host)
            return found or await self._addresses(transport, host, default_port)
        found = []  # Rule 4
        for service, name in await self._naptr(host):
            found += await self._srv(service, name)
        if not found:
            for proto, prefix in SRV_PREFIX.items():
                found += await self._srv(proto, prefix + host)
        return found or await self._addresses("udp", host, DEFAULT_PORT)

    async def _query(self, name: str, rdtype: str) -> list[object]:
        try:
            answer = await self._resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.DNSException:  # timeouts, no nameservers configured, ...
            return []
        return list(answer)

    async def _naptr(self, host: str) -> list[tuple[str, str]]:
        records = await self._query(host, "NAPTR")
        usable = []
        for r in records:
            service = r.service.decode("ascii", "replace").upper()  # type: ignore[attr-defined]
            flags = r.flags.decode("ascii", "replace").lower()  # type: ignore[attr-defined]
            if service in NAPTR_SERVICES and flags == "s":
                usable.append((r.order, r.preference, service, str(r.replacement)))  # type: ignore[attr-defined]
        usable.sort()
        return [(NAPTR_SERVICES[s], name.rstrip(".")) for _o, _p, s, name in usable]

    async def _srv(self, transport: str, name: str) -> list[ServerAddress]:
        records = [
            SrvRecord(r.priority, r.weight, r.port, str(r.target).rstrip("."))  # type: ignore[attr-defined]
            for r in await self._query(name, "SRV")
        ]
        out: list[ServerAddress] = []
        for record in order_srv(records, self._rng):
            if record.target in ("", "."):
                continue  # "service decidedly not available" (RFC 2782)
            out += await self._addresses(transport, record.target, record.port, strict=False)
        return out

    async def _addresses(
        self, transport: str, host: str, port: int, *, strict: bool = True
    ) -> list[ServerAddress]:
        ips = [str(r) for r in await self._query(host, "A")]
        ips += [str(r) for r in await self._query(host, "AAAA")]
        if not ips and strict:
            raise DnsError(f"cannot resolve {host!r}: no A/AAAA records")
        return [ServerAddress(transport, ip, port) for ip in ips]
