"""What an incoming INVITE tells the dialplan, prompts and tools (server.call_info), and the
server's admission of INVITEs (Rule 1: per-source call limit)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sipbot.config import load_config
from sipbot.server import Server, call_info
from sipbot.sip.legs import Peer
from sipbot.sip.message import parse_message

INVITE = (
    b"INVITE sip:+4930123456100@pbx.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1\r\n"
    b'From: "Alice Example" <sip:+4917012345@trunk.example.net>;tag=a1\r\n'
    b"To: <sip:100@pbx.example.com>\r\n"
    b"Call-ID: c1@192.0.2.7\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"X-Customer-Id: 4711\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_call_info_reads_caller_did_display_name_and_headers() -> None:
    invite = parse_message(INVITE)
    info = call_info(invite, ("udp", "192.0.2.7", 5060))  # type: ignore[arg-type]
    assert info.call_id == "c1@192.0.2.7"
    assert info.caller == "+4917012345"
    assert info.display_name == "Alice Example"
    assert info.did == "+4930123456100"  # the Request-URI user wins over To
    assert info.headers["X-Customer-Id"] == "4711"
    assert info.remote_address == "192.0.2.7:5060"
    assert info.codec == ""  # known only once the offer is answered


def test_call_info_falls_back_to_the_to_user_when_the_request_uri_has_none() -> None:
    invite = parse_message(INVITE.replace(b"sip:+4930123456100@pbx", b"sip:pbx"))
    info = call_info(invite, ("tcp", "192.0.2.7", 40000))  # type: ignore[arg-type]
    assert info.did == "100"


def test_a_trunk_did_header_carries_the_dialled_number() -> None:
    with_header = INVITE.replace(
        b"X-Customer-Id", b"P-Called-Party-ID: <sip:+4930999@carrier.example>\r\nX-Customer-Id"
    )
    source = ("udp", "192.0.2.7", 5060)
    info = call_info(parse_message(with_header), source, "P-Called-Party-ID")  # type: ignore[arg-type]
    assert info.did == "+4930999"
    # absent header: the usual Request-URI user; "To" as the header: the To user
    assert call_info(parse_message(INVITE), source, "P-Called-Party-ID").did == "+4930123456100"  # type: ignore[arg-type]
    assert call_info(parse_message(INVITE), source, "To").did == "100"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- admission


class SentRecorder:
    """Stands in for the UA's sockets: keeps what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, destination: Peer) -> None:
        self.sent.append(data)


def invite_from(host: str, n: int) -> bytes:
    sdp = f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    sdp += "m=audio 4000 RTP/AVP 0\r\n"
    return (
        "INVITE sip:bot@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-{n}\r\n"
        f"From: <sip:c@{host}>;tag=f{n}\r\nTo: <sip:bot@127.0.0.1>\r\n"
        f"Call-ID: c{n}@{host}\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{host}:5060>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


async def test_an_invite_over_the_per_source_call_limit_gets_503_and_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule 1: the source's second call is refused before routing: 503 + Retry-After, no
    task, no RTP port, no log line of its own; another source is still admitted."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "server:\n  limits: {per_source_calls: 1}\nagents:\n  e: {provider: local}\n"
        "routes:\n  - {answer: e}\n"
    )
    server = Server(load_config(str(path)))
    ua = server.ua
    wire = SentRecorder()
    ua._transports = wire  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.INFO):
            for n, host in enumerate(["192.0.2.7", "192.0.2.7", "192.0.2.7", "192.0.2.8"]):
                ua._receive(invite_from(host, n), Peer("udp", host, 5060))
        finals = [d.split(b"\r\n", 1)[0] for d in wire.sent if not d.startswith(b"SIP/2.0 1")]
        assert finals == [b"SIP/2.0 503 Service Unavailable"] * 2
        assert all(b"\r\nRetry-After: 5\r\n" in d for d in wire.sent if b" 503 " in d)
        assert len(server._tasks) == 2  # the first call of each source
        assert (server.limiter.open_calls("192.0.2.7"), server.limiter.refused_calls) == (1, 2)
        assert server.engine.ports.in_use == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "sipbot.server"]
        assert lines == [
            "calls from 192.0.2.7 rejected: 1 in progress (limits.per_source_calls); 1 refused"
        ]
    finally:
        tasks = list(server._tasks)
        for task in tasks:
            task.cancel()  # before they ever ran
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the tasks' done callbacks
    assert server.limiter.open_calls("192.0.2.7") == 0  # given back however the call ended


async def test_a_trunk_address_is_exempt_from_the_per_source_limits(tmp_path: Path) -> None:
    """Rule 1: a PBX or carrier sends every call from one address: its allow-listed address
    passes the per-source message rate and call count; any other address does not."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "server:\n  limits: {per_source_calls: 1}\n"
        "trunks:\n  pbx: {source: [192.0.2.0/24]}\n"
        "agents:\n  e: {provider: local}\nroutes:\n  - {answer: e}\n"
    )
    server = Server(load_config(str(path)))
    server.ua.rate_exempt = server._is_trunk_source
    assert server._is_trunk_source("192.0.2.9")
    assert not server._is_trunk_source("198.51.100.1")
