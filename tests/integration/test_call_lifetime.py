"""An ended call is freed by reference counting alone (issue 12, the soak's RSS growth).

Every object of an ended call used to be cyclic garbage (the call ↔ its media session's
callbacks, the call ↔ its tools' context, the SIP dialog ↔ its media leg's re-offer hook, the
dialog ↔ its record attempt's ``reject`` wrapper): ~60 kB a call that only a full (generation 2)
GC pass frees, and sipbot freezes its start-up heap so that pass comes after hundreds of calls.
Here a real ``Server`` (recording and SQLite records on) takes a real call on loopback UDP —
INVITE, ACK, a second of RTP, BYE — with the cyclic collector disabled; once the call has ended,
the call, its dialog, media session, tool runner, conversation and provider session are gone.
The agent is the local echo, or a Gemini Live / OpenAI Realtime agent on the project's emulator
in the same process (the real SDKs; the model greets with a tone before the call ends, so the
session's receive path, playback and turn bookkeeping all ran). An outbound call too: sipbot
dials through a trunk to this test's callee socket, which answers, streams RTP and gets the
agent's BYE. Real time, bounded: every wait has a timeout.
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

import numpy as np
import pytest
import uvloop

from sipbot.config import load_config
from sipbot.emulators.common import EmulatorServer
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript
from sipbot.media.codecs import make_encoder
from sipbot.outbound import DialRequest
from sipbot.server import Server

pytestmark = pytest.mark.timeout(60)
CALL_ID = "lifetime-1@127.0.0.1"
RTP_PACKETS = 50  # one second of PCMU from the caller: 400 ms of a tone, then silence
TONE_PACKETS = 20
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")  # OpenAI's reply audio
KEY_ENV, KEY = "SIPBOT_LIFETIME_KEY", "lifetime-key"
SCRIPT = EmulatorScript(
    reply="tone",
    reply_ms=400,
    speed=0,
    playback_wait=False,
    vad_silence_ms=300,
    api_keys=frozenset({KEY}),
)


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

    async def request(self, method: bytes, within_s: float = 5.0) -> bytes:
        """The first ``method`` request that arrived (waits for it)."""
        async with asyncio.timeout(within_s):
            while True:
                for data in self.received:
                    if data.startswith(method + b" "):
                        return data
                await asyncio.sleep(0.01)

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


def _tone() -> bytes:
    t = np.arange(160 * TONE_PACKETS) / 8000
    pcm = np.rint(12_000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    return make_encoder("PCMU").encode(pcm)


TONE = _tone()


def rtp(seq: int) -> bytes:
    header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
    if seq < TONE_PACKETS:
        return header + TONE[160 * seq : 160 * (seq + 1)]
    return header + b"\x11\x22\x33\x44" + b"\xff" * 156


def agent_keys(emulator: EmulatorServer | None) -> dict[str, Any]:
    """The dialplan keys of the call's agent: local echo, or the emulator's provider."""
    if emulator is None:
        return {"provider": "local", "local": {"mode": "echo"}}
    keys: dict[str, Any] = {"api_key": "${" + KEY_ENV + "}", "base_url": emulator.base_url}
    if isinstance(emulator, GeminiEmulator):
        return {"provider": "gemini", **keys, "ca_file": emulator.ca_file, "greeting": "Hello."}
    return {"provider": "openai", **keys, "greeting": "Hello."}


def config(
    tmp_path: Path,
    emulator: EmulatorServer | None = None,
    agent: dict[str, Any] | None = None,
    trunks: dict[str, Any] | None = None,
) -> Path:
    agent = {**agent_keys(emulator), "recording": True, **(agent or {})}
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
                **({"trunks": trunks} if trunks else {}),
            }
        )
    )
    return path


async def a_call_then_its_objects(
    tmp_path: Path, emulator: EmulatorServer | None = None
) -> tuple[list[weakref.ref[Any]], Server]:
    """One call from INVITE to BYE; weak references to its objects, taken while it was up."""
    server = Server(load_config(str(config(tmp_path, emulator))))
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
        sip_rtp = ("127.0.0.1", int(remote.group(1)))
        seq = 0
        # a second of RTP; a model greets (its audio reaches the call) while the caller talks
        async with asyncio.timeout(8.0):
            while seq < RTP_PACKETS or (emulator is not None and not _answered(emulator)):
                media.sendto(rtp(seq), sip_rtp)
                seq += 1
                await asyncio.sleep(0.02)
        if emulator is not None:
            await asyncio.sleep(0.3)  # the reply reaches the call and its pacer
        call = server.calls[CALL_ID]
        assert call.media is not None
        assert call._session is not None
        objects = [call, call.dialog, call.media, call.runner, call.core, *_sessions(call._session)]
        refs: list[weakref.ref[Any]] = [weakref.ref(o) for o in objects]
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


def _sessions(observed: Any) -> list[Any]:
    """The call's provider session: the observed wrapper, the provider's (resilient) session
    and, for a cloud model, the SDK's live session and websocket while it is connected."""
    inner = observed._inner
    sdk = [getattr(inner, name, None) for name in ("_session", "_frames", "_connection")]
    return [observed, inner, *(obj for obj in sdk if obj is not None)]


def _answered(emulator: EmulatorServer) -> bool:
    """The emulated model sent reply audio (its greeting) in the call's session."""
    sent = emulator.sessions[-1].sent if emulator.sessions else []
    return any(
        frame.get("type") in AUDIO_DELTAS or "modelTurn" in frame.get("serverContent", {})
        for frame in sent
    )


@pytest.mark.parametrize("provider", ["local", "openai", "gemini"])
def test_an_ended_call_is_freed_without_the_cyclic_collector(
    tmp_path: Path,
    no_cyclic_gc: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="sipbot")  # kept log records would hold objects
    monkeypatch.setenv(KEY_ENV, KEY)

    async def main() -> list[str]:
        emulator: EmulatorServer | None = None
        if provider == "openai":
            emulator = OpenAIEmulator(SCRIPT, port=0)
        elif provider == "gemini":
            emulator = GeminiEmulator(SCRIPT, port=0)
        if emulator is not None:
            await emulator.start()
        try:
            refs, server = await a_call_then_its_objects(tmp_path, emulator)
            try:
                return [repr(type(obj)) for obj in (ref() for ref in refs) if obj is not None]
            finally:
                await server.stop()
        finally:
            if emulator is not None:
                await emulator.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        alive = runner.run(asyncio.wait_for(main(), 40))
    assert alive == [], alive
    assert len(list((tmp_path / "recordings").glob("*.wav"))) == 1


def response(invite: bytes, status: str, to_tag: str, port: int, body: str = "") -> bytes:
    """The callee's ``status`` answer to ``invite`` (or to the BYE it got), from ``port``."""
    head, _, _ = invite.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    copied = [h for h in lines if h.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")]
    to = next(h for h in lines if h.split(":", 1)[0].lower() == "to")
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    text = f"SIP/2.0 {status}\r\n" + "\r\n".join([*copied, to])
    text += f"\r\nContact: <sip:callee@127.0.0.1:{port}>\r\n"
    if body:
        text += "Content-Type: application/sdp\r\n"
    return f"{text}Content-Length: {len(body)}\r\n\r\n{body}".encode()


async def an_outbound_call_then_its_objects(
    tmp_path: Path,
) -> tuple[list[weakref.ref[Any]], Server]:
    """sipbot calls out through a trunk to this test's callee, which answers, streams a second
    of RTP and waits for the agent to hang up (``max_duration_s``); weak references taken while
    the call was up."""
    loop = asyncio.get_running_loop()
    transport, callee = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.setblocking(False)
    trunks = {"carrier": {"outbound": {"proxy": f"sip:127.0.0.1:{port}"}}}
    agent = {"max_duration_s": 2}
    server = Server(load_config(str(config(tmp_path, agent=agent, trunks=trunks))))
    await server.start()
    try:
        call_id = await server.dial(DialRequest(to="100", agent="echo"))
        invite = await callee.request(b"INVITE")
        sip = ("127.0.0.1", server.ua.bound[0][2])
        answer = response(invite, "200 OK", "callee1", port, offer(media.getsockname()[1]))
        transport.sendto(answer, sip)
        await callee.request(b"ACK")
        remote = re.search(rb"\r\nm=audio (\d+)", invite)
        assert remote is not None, invite
        for seq in range(RTP_PACKETS):
            media.sendto(rtp(seq), ("127.0.0.1", int(remote.group(1))))
            await asyncio.sleep(0.02)
        call = server.calls[call_id]
        assert call.media is not None
        assert call._session is not None
        objects = [call, call.dialog, call.media, call.runner, call.core, *_sessions(call._session)]
        refs: list[weakref.ref[Any]] = [weakref.ref(o) for o in objects]
        del call, objects
        bye = await callee.request(b"BYE", within_s=5.0)  # the agent's max_duration_s
        transport.sendto(response(bye, "200 OK", "callee1", port), sip)
        async with asyncio.timeout(10.0):
            while server.calls or server._call_tasks():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the transports' connection_lost (uvloop: next iteration)
        return refs, server
    except BaseException:
        await server.stop()
        raise
    finally:
        transport.close()
        media.close()


def test_an_ended_outbound_call_is_freed_without_the_cyclic_collector(
    tmp_path: Path, no_cyclic_gc: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sipbot")  # kept log records would hold objects

    async def main() -> list[str]:
        refs, server = await an_outbound_call_then_its_objects(tmp_path)
        try:
            return [repr(type(obj)) for obj in (ref() for ref in refs) if obj is not None]
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        alive = runner.run(asyncio.wait_for(main(), 40))
    assert alive == [], alive
    assert len(list((tmp_path / "recordings").glob("*.wav"))) == 1
