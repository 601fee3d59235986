"""An ended call is freed by reference counting alone (issue 12, the soak's RSS growth).

Every object of an ended call used to be cyclic garbage (the call ↔ its media session's
callbacks, the call ↔ its tools' context, the SIP dialog ↔ its media leg's re-offer hook, the
dialog ↔ its record attempt's ``reject`` wrapper): ~60 kB a call that only a full (generation 2)
GC pass frees, and sipbot freezes its start-up heap so that pass comes after hundreds of calls.
Here a real ``Server`` (local echo agent, recording and SQLite records on) takes a real call on
loopback UDP — INVITE, ACK, a second of RTP, BYE — with the cyclic collector disabled; once the
call has ended, the call, its dialog, media session, tool runner and recorder are gone.
Real time, bounded: every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import socket
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from sipbot.config import load_config
from sipbot.server import Server

pytestmark = pytest.mark.timeout(60)
CALL_ID = "lifetime-1@127.0.0.1"
RTP_PACKETS = 50  # one second of PCMU from the caller


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector off for the test (and the server's start-up freeze undone)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()


class Client(asyncio.DatagramProtocol):
    """The caller's SIP socket: keeps what arrives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    async def response(self, status: bytes, method: bytes, within_s: float = 5.0) -> bytes:
        async with asyncio.timeout(within_s):
            while True:
                for data in self.received:
                    head = data.split(b"\r\n", 1)[0]
                    if head.startswith(b"SIP/2.0 " + status) and b" " + method in _cseq(data):
                        return data
                await asyncio.sleep(0.01)


def _cseq(data: bytes) -> bytes:
    match = re.search(rb"\r\nCSeq: *([^\r]*)", data)
    return b" " + match.group(1) if match else b""


def request(
    method: str, port: int, sip_port: int, cseq: int, to_tag: str = "", body: str = ""
) -> bytes:
    to = f"<sip:bot@127.0.0.1>{';tag=' + to_tag if to_tag else ''}"
    head = (
        f"{method} sip:bot@127.0.0.1:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{method}-{cseq}\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: {to}\r\nCall-ID: {CALL_ID}\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\n"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode()


def offer(rtp_port: int) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )


def rtp(seq: int) -> bytes:
    header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
    return header + b"\x11\x22\x33\x44" + b"\xff" * 156


def config(tmp_path: Path) -> Path:
    agent = {"provider": "local", "local": {"mode": "echo"}, "recording": True}
    (tmp_path / "recordings").mkdir()
    path = tmp_path / "lifetime.yaml"
    path.write_text(
        json.dumps(
            {
                "server": {
                    "sip": {"listen": ["udp:127.0.0.1:0"]},
                    "media": {"rtp_ports": "40000-40999", "codecs": ["PCMU"]},
                    "data_dir": str(tmp_path / "data"),
                    "recordings_dir": str(tmp_path / "recordings"),
                    "http": {"listen": None},
                },
                "agents": {"echo": agent},
                "routes": [{"name": "default", "answer": "echo"}],
            }
        )
    )
    return path


async def a_call_then_its_objects(tmp_path: Path) -> tuple[list[weakref.ref[Any]], Server]:
    """One call from INVITE to BYE; weak references to its objects, taken while it was up."""
    server = Server(load_config(str(config(tmp_path))))
    await server.start()
    loop = asyncio.get_running_loop()
    sip_port = server.ua.bound[0][2]
    transport, client = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.setblocking(False)
    port, rtp_port = transport.get_extra_info("sockname")[1], media.getsockname()[1]
    sip = ("127.0.0.1", sip_port)
    try:
        transport.sendto(request("INVITE", port, sip_port, 1, body=offer(rtp_port)), sip)
        ok = await client.response(b"200", b"INVITE")
        to_tag = re.search(rb"\r\nTo:[^\r]*;tag=([^;\r]+)", ok)
        assert to_tag is not None, ok
        tag = to_tag.group(1).decode()
        transport.sendto(request("ACK", port, sip_port, 1, tag), sip)
        remote = re.search(rb"\r\nm=audio (\d+)", ok)
        assert remote is not None, ok
        for seq in range(RTP_PACKETS):
            media.sendto(rtp(seq), ("127.0.0.1", int(remote.group(1))))
            await asyncio.sleep(0.02)
        call = server.calls[CALL_ID]
        assert call.media is not None
        refs: list[weakref.ref[Any]] = [
            weakref.ref(o) for o in (call, call.dialog, call.media, call.runner, call.core)
        ]
        del call
        transport.sendto(request("BYE", port, sip_port, 2, tag), sip)
        await client.response(b"200", b"BYE")
        async with asyncio.timeout(10.0):
            while server.calls or server._call_tasks():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the transports' connection_lost (uvloop: next iteration)
        return refs, server
    finally:
        transport.close()
        media.close()


def test_an_ended_call_is_freed_without_the_cyclic_collector(
    tmp_path: Path, no_cyclic_gc: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sipbot")  # kept log records would hold objects

    async def main() -> list[str]:
        refs, server = await a_call_then_its_objects(tmp_path)
        try:
            return [repr(type(obj)) for obj in (ref() for ref in refs) if obj is not None]
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        alive = runner.run(asyncio.wait_for(main(), 40))
    assert alive == []
    assert len(list((tmp_path / "recordings").glob("*.wav"))) == 1
