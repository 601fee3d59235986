"""Two asyncio UserAgents on loopback sockets calling each other (UDP and TCP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from sipbot.errors import RequestFailed
from sipbot.sip.auth import Credentials, DigestVerifier
from sipbot.sip.message import SipRequest
from sipbot.sip.ua import ServerCall, SipSettings, UserAgent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

SDP = "v=0\r\no={o} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
SDP += "m=audio {p} RTP/AVP 0\r\n"
OFFER = SDP.format(o="a", p=4000).encode()
ANSWER = SDP.format(o="b", p=5000).encode()
LISTEN = (("udp", "127.0.0.1", 0), ("tcp", "127.0.0.1", 0))


@dataclass
class Callee:
    """The answering side: what to do with each INVITE, and the calls it saw."""

    behaviour: Callable[[ServerCall], None] = lambda call: call.accept(ANSWER)
    calls: list[ServerCall] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_invite(self, call: ServerCall) -> None:
        self.calls.append(call)
        self.arrived.set()
        self.behaviour(call)


def port_of(ua: UserAgent, transport: str) -> int:
    return next(p for t, _h, p in ua.bound if t == transport)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[UserAgent, UserAgent, Callee]]:
    callee = Callee()
    settings = SipSettings(listen=LISTEN, t1=0.05, t2=0.4, t4=0.5)
    a = UserAgent(settings, lambda call: call.reject(603))
    b = UserAgent(settings, callee.on_invite)
    await a.start()
    await b.start()
    yield a, b, callee
    await a.close(timeout=2.0)
    await b.close(timeout=2.0)


def uri(b: UserAgent, transport: str = "udp") -> str:
    suffix = ";transport=tcp" if transport == "tcp" else ""
    return f"sip:bot@127.0.0.1:{port_of(b, transport)}{suffix}"


async def test_bound_ports_and_advertised_host(pair):
    a, _b, _callee = pair
    assert [t for t, _h, _p in a.bound] == ["udp", "tcp"]
    assert all(p > 0 for _t, _h, p in a.bound)
    assert a.advertised_host("127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_call_answer_and_bye_from_caller(pair, transport):
    a, b, callee = pair
    client = await a.call(uri(b, transport), OFFER, from_user="alice", transport=transport)
    assert client.remote_sdp == ANSWER
    [server] = callee.calls
    assert server.offer == OFFER
    assert server.source[0] == transport
    await asyncio.wait_for(server.confirmed, 2)
    assert server.call_id == client.call_id
    assert server.local_tag == client.remote_tag
    assert client.local_tag == server.remote_tag
    assert "alice@" in (server.invite.headers.get("From") or "")
    await asyncio.wait_for(client.bye(), 5)
    assert await asyncio.wait_for(server.terminated, 2) == "bye-received"
    assert client.terminated.result() == "bye-sent"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_bye_from_callee(pair, transport):
    a, b, callee = pair
    client = await a.call(uri(b, transport), OFFER, transport=transport)
    [server] = callee.calls
    await asyncio.wait_for(server.confirmed, 2)
    await asyncio.wait_for(server.bye(), 5)
    assert server.terminated.result() == "bye-sent"
    assert await asyncio.wait_for(client.terminated, 2) == "bye-received"


async def test_reinvite_both_ways_and_info(pair):
    a, b, callee = pair
    client = await a.call(uri(b), OFFER)
    [server] = callee.calls
    await asyncio.wait_for(server.confirmed, 2)
    server.on_reoffer = lambda offer: ANSWER.replace(b"5000", b"5002")
    response = await asyncio.wait_for(
        client.request("INVITE", body=OFFER.replace(b"4000", b"4002")), 5
    )
    assert response.status == 200
    assert client.remote_sdp == ANSWER.replace(b"5000", b"5002")
    assert server.remote_sdp == OFFER.replace(b"4000", b"4002")
    # the other way; no hook on the caller: it answers with its current SDP
    response = await asyncio.wait_for(server.request("INVITE", body=ANSWER), 5)
    assert response.status == 200
    assert response.body == OFFER.replace(b"4000", b"4002")
    seen: list[SipRequest] = []
    server.on_request = lambda req: seen.append(req) or 200
    response = await asyncio.wait_for(
        client.request("INFO", body=b"Signal=5\r\n", content_type="application/dtmf-relay"), 5
    )
    assert response.status == 200
    assert [(r.method, r.body) for r in seen] == [("INFO", b"Signal=5\r\n")]
    server.on_reoffer = lambda offer: 488
    response = await asyncio.wait_for(client.request("UPDATE", body=OFFER), 5)
    assert response.status == 488
    await client.bye()


async def test_reoffer_answered_by_an_async_hook(pair):
    a, b, callee = pair
    client = await a.call(uri(b), OFFER)
    [server] = callee.calls
    await asyncio.wait_for(server.confirmed, 2)
    offers: list[bytes] = []

    async def reoffer(offer: bytes) -> bytes:
        offers.append(offer)
        await asyncio.sleep(0.3)  # longer than 200 ms: the core sends 100 Trying meanwhile
        return ANSWER.replace(b"5000", b"5004")

    server.on_reoffer = reoffer
    response = await asyncio.wait_for(
        client.request("INVITE", body=OFFER.replace(b"4000", b"4004")), 5
    )
    assert response.status == 200
    assert offers == [OFFER.replace(b"4000", b"4004")]
    assert client.remote_sdp == ANSWER.replace(b"5000", b"5004")
    assert server.local_sdp == ANSWER.replace(b"5000", b"5004")

    async def broken(offer: bytes) -> bytes:
        raise RuntimeError("boom")

    server.on_reoffer = broken
    response = await asyncio.wait_for(client.request("UPDATE", body=OFFER), 5)
    assert response.status == 500
    await client.bye()


async def test_refer_accepted_then_final_notify(pair):
    a, b, callee = pair
    client = await a.call(uri(b), OFFER)
    [server] = callee.calls
    await asyncio.wait_for(server.confirmed, 2)
    refers: list[SipRequest] = []
    client.on_request = lambda req: refers.append(req) or 202
    referral = await asyncio.wait_for(server.refer("sip:agent@example.com"), 5)
    [refer] = refers
    assert refer.headers.get("Refer-To") == "<sip:agent@example.com>"
    assert refer.headers.get("Referred-By") == f"<{server.invite.uri}>"
    assert referral.response is not None
    assert referral.response.status == 202
    assert referral.cseq == refer.cseq[0]
    seen: list[SipRequest] = []
    server.on_request = lambda req: seen.append(req) or 200  # the old hook still sees them
    for frag, done in ((b"SIP/2.0 100 Trying\r\n", False), (b"SIP/2.0 200 OK\r\n", True)):
        response = await asyncio.wait_for(
            client.request(
                "NOTIFY",
                body=frag,
                content_type="message/sipfrag",
                headers=[("Event", f"refer;id={referral.cseq}")],
            ),
            5,
        )
        assert response.status == 200
        assert referral.done is done
    assert await asyncio.wait_for(referral.final(), 1) == 200
    assert [r.method for r in seen] == ["NOTIFY", "NOTIFY"]
    await client.bye()


async def test_refer_refused_raises(pair):
    a, b, callee = pair
    client = await a.call(uri(b), OFFER)
    [server] = callee.calls
    await asyncio.wait_for(server.confirmed, 2)
    with pytest.raises(RequestFailed, match=r"the transfer was refused \(603 Decline\)") as info:
        await asyncio.wait_for(server.refer("sip:agent@example.com"), 5)
    assert info.value.response is not None
    assert info.value.response.status == 603
    await client.bye()


async def test_referral_fails_when_the_call_ends_first(pair):
    a, b, callee = pair
    client = await a.call(uri(b), OFFER)
    [server] = callee.calls
    await asyncio.wait_for(server.confirmed, 2)
    client.on_request = lambda req: 202
    referral = await asyncio.wait_for(server.refer("sip:agent@example.com"), 5)
    await client.bye()
    with pytest.raises(RequestFailed, match="call ended"):
        await asyncio.wait_for(referral.final(), 2)


async def test_reject(pair):
    a, b, callee = pair
    callee.behaviour = lambda call: call.reject(486, headers=[("Retry-After", "5")])
    with pytest.raises(RequestFailed, match=r"call rejected \(486\)") as info:
        await a.call(uri(b), OFFER)
    assert info.value.response is not None
    assert info.value.response.headers.get("Retry-After") == "5"
    assert await asyncio.wait_for(callee.calls[0].terminated, 2) == "rejected"


async def test_cancel_by_cancelling_the_call_task(pair):
    a, b, callee = pair
    callee.behaviour = lambda call: call.progress(180)
    task = asyncio.ensure_future(a.call(uri(b), OFFER))
    await asyncio.wait_for(callee.arrived.wait(), 2)
    await asyncio.sleep(0.1)  # the 180 reaches the caller: CANCEL is allowed now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [server] = callee.calls
    assert await asyncio.wait_for(server.terminated, 2) == "cancelled"
    server.accept(ANSWER)  # too late: ignored


async def test_call_timeout_when_nobody_answers(pair):
    a, b, callee = pair
    callee.behaviour = lambda call: None
    with pytest.raises(RequestFailed, match="call timeout"):
        await a.call(uri(b), OFFER, timeout=0.5)
    [server] = callee.calls
    assert await asyncio.wait_for(server.terminated, 2) == "cancelled"


async def test_call_to_nobody_times_out():
    ua = UserAgent(SipSettings(listen=(("udp", "127.0.0.1", 0),), t1=0.02), lambda c: None)
    await ua.start()
    try:
        with pytest.raises(RequestFailed, match="call timeout"):
            await ua.call("sip:x@127.0.0.1:9", OFFER, timeout=5.0)  # Timer B = 64*T1 = 1.28 s
    finally:
        await ua.close()


async def test_shutdown_byes_every_call(pair):
    a, b, callee = pair
    clients = [await a.call(uri(b), OFFER) for _ in range(3)]
    for server in callee.calls:
        await asyncio.wait_for(server.confirmed, 2)
    await b.close(timeout=2.0)
    for server in callee.calls:
        assert server.terminated.result() == "shutdown"
    reasons = [await asyncio.wait_for(c.terminated, 2) for c in clients]
    assert reasons == ["bye-received"] * 3


async def test_unanswered_call_gets_503_on_shutdown(pair):
    a, b, callee = pair
    callee.behaviour = lambda call: None
    task = asyncio.ensure_future(a.call(uri(b), OFFER))
    await asyncio.wait_for(callee.arrived.wait(), 2)
    await b.close(timeout=2.0)
    with pytest.raises(RequestFailed, match=r"\(503\)"):
        await asyncio.wait_for(task, 2)


async def test_wildcard_listen_never_advertises_0_0_0_0():
    callee = Callee()
    a = UserAgent(SipSettings(listen=(("udp", "0.0.0.0", 0),)), lambda call: None)
    b = UserAgent(SipSettings(listen=(("udp", "127.0.0.1", 0),)), callee.on_invite)
    await a.start()
    await b.start()
    try:
        assert a.advertised_host("127.0.0.1") == "127.0.0.1"  # the OS route to the peer
        client = await a.call(uri(b), OFFER)
        headers = callee.calls[0].invite.headers
        a_port = port_of(a, "udp")
        assert (headers.get("Via") or "").startswith(f"SIP/2.0/UDP 127.0.0.1:{a_port};")
        assert headers.get("Contact") == f"<sip:sipbot@127.0.0.1:{a_port}>"
        assert "0.0.0.0" not in (headers.get("From") or "")
        await client.bye()
    finally:
        await a.close()
        await b.close()


async def test_public_address_is_advertised():
    callee = Callee()
    settings = SipSettings(listen=(("udp", "127.0.0.1", 0),), public_address="203.0.113.9:5099")
    a = UserAgent(settings, lambda call: None)
    b = UserAgent(SipSettings(listen=(("udp", "127.0.0.1", 0),)), callee.on_invite)
    await a.start()
    await b.start()
    try:
        assert a.advertised_host() == "203.0.113.9"
        client = await a.call(uri(b), OFFER)  # answers still come back: received/rport
        headers = callee.calls[0].invite.headers
        assert (headers.get("Via") or "").startswith("SIP/2.0/UDP 203.0.113.9:5099;")
        assert headers.get("Contact") == "<sip:sipbot@203.0.113.9:5099>"
        await client.bye()
    finally:
        await a.close(timeout=0.5)
        await b.close(timeout=0.5)


async def test_digest_challenge(pair):
    a, b, callee = pair
    verifier = DigestVerifier("sipbot.test")
    passwords = {"alice": "secret"}.get
    verdicts: list[str] = []

    def challenge(call: ServerCall) -> None:
        answer = call.invite.headers.get("Authorization")
        if answer is None:
            call.reject(401, headers=[("WWW-Authenticate", verifier.challenge(time.monotonic()))])
            return
        verdicts.append(verifier.verify(answer, "INVITE", passwords, time.monotonic()))
        if verdicts[-1] == "ok":
            call.accept(ANSWER)
        else:
            call.reject(403)

    callee.behaviour = challenge
    client = await a.call(uri(b), OFFER, credentials=Credentials("alice", "secret"))
    assert verdicts == ["ok"]
    assert len(callee.calls) == 2  # the challenged INVITE, then the answered one
    await client.bye()
    with pytest.raises(RequestFailed, match=r"call rejected \(403\)"):
        await a.call(uri(b), OFFER, credentials=Credentials("alice", "wrong"))
    with pytest.raises(RequestFailed, match=r"call rejected \(401\)"):
        await a.call(uri(b), OFFER)  # no credentials
