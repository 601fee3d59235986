"""A warm transfer's consultation call to a target behind a trunk goes through that trunk
(consult Rule 1): to its proxy, with its Route, its caller ID in From and P-Asserted-Identity,
and its credentials for a 407. The carrier is a raw UDP socket on loopback; the caller's side
is the real user agent and media engine."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from sipbot.config import load_config
from sipbot.consult import Consulter
from sipbot.media.session import MediaEngine, MediaSettings
from sipbot.sip.auth import DigestVerifier
from sipbot.sip.message import SipRequest, SipResponse, make_response, parse_message
from sipbot.sip.ua import SipSettings, UserAgent
from tests.e2e.peers.ports import free_port

BOUND_S = 5.0
ANSWER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class Carrier(asyncio.DatagramProtocol):
    """Receives requests into a queue; the test answers them."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[SipRequest, tuple[str, int]]] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, SipRequest):
            self.requests.put_nowait((message, addr))

    async def next(self, method: str) -> tuple[SipRequest, tuple[str, int]]:
        """The next request of ``method`` (others are skipped), bounded."""
        while True:
            request, addr = await asyncio.wait_for(self.requests.get(), BOUND_S)
            if request.method == method:
                return request, addr

    def send(self, response: SipResponse, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


def dialplan(tmp_path: Path, proxy_port: int) -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            agents:
              bot: {{provider: local}}
            trunks:
              carrier:
                outbound:
                  proxy: "sip:127.0.0.1:{proxy_port}"
                  domain: carrier.example.org
                  caller_id: "+4930999"
                  auth_user: out7
                  password: ${{OUT_PW}}
            routes:
              - {{name: all, answer: bot}}
            """
        )
    )
    return path


def trunks_of(tmp_path: Path, proxy_port: int) -> Any:
    """The trunks of :func:`dialplan`."""
    return load_config(
        str(dialplan(tmp_path, proxy_port)), environ={"OUT_PW": "s3cret"}
    ).dialplan.trunks


async def test_the_consultation_call_goes_through_the_target_s_trunk(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    carrier = Carrier()
    transport, _ = await loop.create_datagram_endpoint(lambda: carrier, ("127.0.0.1", 0))
    proxy_port = transport.get_extra_info("sockname")[1]
    trunks = load_config(
        str(dialplan(tmp_path, proxy_port)), environ={"OUT_PW": "s3cret"}
    ).dialplan.trunks
    ua = UserAgent(SipSettings(listen=(("udp", "127.0.0.1", free_port("udp")),)), lambda c: None)
    engine = MediaEngine(MediaSettings(port_min=30000, port_max=39999))
    await ua.start()
    consulter = Consulter(ua, engine, ("PCMU",), trunks=lambda: trunks)
    verifier = DigestVerifier("carrier.example.org")
    placing = asyncio.ensure_future(consulter.place("sip:+4930555@carrier.example.org"))
    try:
        first, addr = await carrier.next("INVITE")  # sent to the proxy, not to the domain
        # the trunk's Route, caller ID in From and P-Asserted-Identity
        assert first.uri == "sip:+4930555@carrier.example.org"
        assert first.headers.get("Route") == f"<sip:127.0.0.1:{proxy_port};lr>"
        assert "<sip:+4930999@carrier.example.org>" in (first.headers.get("From") or "")
        assert first.headers.get("P-Asserted-Identity") == "<sip:+4930999@carrier.example.org>"
        assert first.headers.get("Proxy-Authorization") is None
        challenge = make_response(first, 407, to_tag="c1")
        challenge.headers.add("Proxy-Authenticate", verifier.challenge(loop.time()))
        carrier.send(challenge, addr)
        # answered with the trunk's credentials
        second, addr = await carrier.next("INVITE")
        answer = second.headers.get("Proxy-Authorization") or ""
        assert verifier.verify(answer, "INVITE", {"out7": "s3cret"}.get, loop.time()) == "ok"
        assert second.headers.get("P-Asserted-Identity") == first.headers.get("P-Asserted-Identity")
        ok = make_response(second, 200, to_tag="target-tag", copy_record_route=True)
        ok.headers.add("Contact", f"<sip:target@127.0.0.1:{proxy_port}>")
        ok.headers.add("Content-Type", "application/sdp")
        ok = SipResponse(ok.status, ok.reason, ok.headers, ANSWER)
        carrier.send(ok, addr)
        leg = await asyncio.wait_for(placing, BOUND_S)
        assert leg.replaces.startswith(f"{second.call_id};to-tag=target-tag;from-tag=")
        await carrier.next("ACK")
        closing = asyncio.ensure_future(leg.close())
        bye, addr = await carrier.next("BYE")
        carrier.send(make_response(bye, 200), addr)
        await asyncio.wait_for(closing, BOUND_S)
    finally:
        placing.cancel()
        await ua.close(timeout=0.5)
        transport.close()


async def test_a_target_on_no_trunk_is_called_directly(tmp_path: Path) -> None:
    trunks = load_config(
        str(dialplan(tmp_path, 5070)), environ={"OUT_PW": "s3cret"}
    ).dialplan.trunks
    ua = UserAgent(SipSettings(listen=(("udp", "127.0.0.1", 0),)), lambda c: None)
    consulter = Consulter(ua, MediaEngine(MediaSettings()), ("PCMU",), trunks=lambda: trunks)
    assert consulter.route("sip:200@pbx.example.com") is None
    routed = consulter.route("sip:200@CARRIER.example.org")
    assert routed is not None
    assert routed[0].name == "carrier"
    assert routed[1].next_hop == "sip:127.0.0.1:5070"
    assert Consulter(ua, MediaEngine(MediaSettings()), ("PCMU",)).route("sip:1@x.org") is None
