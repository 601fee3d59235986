"""RFC 3263 against a real DNS server (dnsmasq on loopback): NAPTR → SRV → A, SRV order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbot.errors import DnsError
from sipbot.sip.dns import ServerAddress, SipResolver
from tests.e2e.peers import dnsmasq

pytestmark = pytest.mark.requires_peers("dnsmasq")


@pytest.fixture
def dns_server(peers_tmp: Path) -> Iterator[SipResolver]:
    server = dnsmasq.start(
        peers_tmp,
        hosts={
            "sip1.trunk.test": "127.0.0.1",
            "sip2.trunk.test": "127.0.0.2",
            "plain.test": "127.0.0.3",
            "tcponly-a.test": "127.0.0.4",
        },
        srv=[
            ("_sip._udp.trunk.test", "sip1.trunk.test", 5071, 10, 50),
            ("_sip._udp.trunk.test", "sip2.trunk.test", 5072, 20, 50),
            ("_sip._tcp.trunk.test", "sip2.trunk.test", 5073, 10, 50),
            ("_sip._tcp.tcponly.test", "tcponly-a.test", 5090, 10, 50),
        ],
        naptr=[
            ("trunk.test", 20, 50, "SIP+D2U", "_sip._udp.trunk.test"),
            ("trunk.test", 10, 50, "SIP+D2T", "_sip._tcp.trunk.test"),
        ],
    )
    yield SipResolver(["127.0.0.1"], server.port, random.Random(1))
    server.stop()


def resolve(resolver: SipResolver, uri: str) -> list[ServerAddress]:
    return asyncio.run(resolver.resolve(uri))


def test_naptr_orders_transports_then_srv_orders_targets(dns_server: SipResolver) -> None:
    assert resolve(dns_server, "sip:trunk.test") == [
        ServerAddress("tcp", "127.0.0.2", 5073),  # NAPTR order 10: SIP+D2T
        ServerAddress("udp", "127.0.0.1", 5071),  # order 20: UDP, SRV priority 10
        ServerAddress("udp", "127.0.0.2", 5072),  # then priority 20
    ]


def test_transport_parameter_skips_naptr(dns_server: SipResolver) -> None:
    assert resolve(dns_server, "sip:trunk.test;transport=udp") == [
        ServerAddress("udp", "127.0.0.1", 5071),
        ServerAddress("udp", "127.0.0.2", 5072),
    ]


def test_srv_without_naptr_and_plain_a_records(dns_server: SipResolver) -> None:
    assert resolve(dns_server, "sip:tcponly.test") == [ServerAddress("tcp", "127.0.0.4", 5090)]
    assert resolve(dns_server, "sip:plain.test") == [ServerAddress("udp", "127.0.0.3", 5060)]
    assert resolve(dns_server, "sip:sip1.trunk.test:5099") == [
        ServerAddress("udp", "127.0.0.1", 5099)
    ]
    assert resolve(dns_server, "sip:127.0.0.9:5070;transport=tcp") == [
        ServerAddress("tcp", "127.0.0.9", 5070)
    ]


def test_an_unknown_name_is_a_clear_error(dns_server: SipResolver) -> None:
    with pytest.raises(DnsError) as info:
        resolve(dns_server, "sip:nope.test")
    assert str(info.value) == "cannot resolve 'nope.test': no A/AAAA records"
