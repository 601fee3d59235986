"""The HTTP side listener of a real in-process server on 127.0.0.1: tokens, limits, and that a
slow or huge request does not stall the event loop the media shares (issue 10).

Clients run in threads with blocking sockets, so the loop under test serves only the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from sipbot.config import HttpSettings, ListenAddress, load_config
from sipbot.server import Server

TOKEN = "t0ken-for-tests"
LAG_LIMIT_MS = 50.0  # what a stalled loop would blow through (a 20 ms RTP slot and more)


@contextlib.asynccontextmanager
async def serving(path: str | None = None, token: str | None = TOKEN) -> AsyncIterator[Server]:
    """A started server of the config file at ``path`` (None: the embedded default), SIP and
    HTTP on free loopback ports, the listener's token ``token``."""
    config = load_config(path)
    sip = config.server.sip.model_copy(update={"listen": (ListenAddress("udp", "127.0.0.1", 0),)})
    http = HttpSettings.model_validate({"listen": "127.0.0.1:0", "token": token})
    settings = config.server.model_copy(update={"sip": sip, "http": http})
    server = Server(replace(config, server=settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving() as server:
        yield server


def http(port: int, raw: bytes, *, pause_s: float = 0.0, chunk: int = 0) -> bytes:
    """Send ``raw`` (in ``chunk``-byte pieces ``pause_s`` apart), return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if chunk:
            for i in range(0, len(raw), chunk):
                sock.sendall(raw[i : i + chunk])
                time.sleep(pause_s)
        else:
            # the server may answer and close before a huge body is all sent
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(raw)
        out = b""
        try:
            while data := sock.recv(65536):
                out += data
                if b"\r\n\r\n" in out and b"Connection: close" not in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = _content_length(head)
                    if length is not None and len(body) >= length:
                        break
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return None


def get(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking client in a thread while this loop keeps serving; its max lag too."""
    loop = asyncio.get_running_loop()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args, **kwargs)))
    worst = 0.0
    thread.start()
    while thread.is_alive():
        before = loop.time()
        await asyncio.sleep(0.005)
        worst = max(worst, (loop.time() - before - 0.005) * 1000)
    thread.join()
    return result[0], worst


def port_of(server: Server) -> int:
    assert server.http is not None
    return int(server.http.address[1])


async def test_healthz_is_open_everything_else_needs_the_token(server: Server) -> None:
    port = port_of(server)
    answer, _ = await in_thread(http, port, get("/healthz"))
    assert status_of(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == "ok"
    for path in ("/metrics", "/api/status", "/readyz", "/", "/api/events"):
        answer, _ = await in_thread(http, port, get(path, "wrong"))
        assert status_of(answer) == 401, path
        assert b"WWW-Authenticate: Bearer" in answer
        answer, _ = await in_thread(http, port, get(path))
        assert status_of(answer) == 401, path
    answer, _ = await in_thread(http, port, get("/api/status", TOKEN))
    assert status_of(answer) == 200
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["version"] == "0.1.0"
    assert body["calls"] == []
    answer, _ = await in_thread(http, port, get(f"/?token={TOKEN}"))
    assert status_of(answer) == 200
    assert b"<title>sipbot" in answer


async def test_readyz_says_503_once_draining(server: Server) -> None:
    port = port_of(server)
    answer, _ = await in_thread(http, port, get("/readyz", TOKEN))
    assert status_of(answer) == 200
    post = f"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    post += "Content-Length: 0\r\nConnection: close\r\n\r\n"
    answer, _ = await in_thread(http, port, post.encode())
    assert status_of(answer) == 202
    answer, _ = await in_thread(http, port, get("/readyz", TOKEN))
    assert status_of(answer) == 503
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["reason"] == "draining"
    await asyncio.wait_for(server.drained.wait(), 5)


async def test_a_huge_body_is_refused_and_the_loop_keeps_its_pace(server: Server) -> None:
    port = port_of(server)
    body = b"x" * (20 * 1024 * 1024)
    head = f"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
    answer, worst_ms = await in_thread(http, port, head.encode() + body)
    assert status_of(answer) == 413
    assert not server.admission.draining  # the handler never ran
    assert worst_ms < LAG_LIMIT_MS


async def test_a_slow_request_does_not_stall_the_loop(server: Server) -> None:
    port = port_of(server)
    raw = get("/api/status", TOKEN)
    answer, worst_ms = await in_thread(http, port, raw, pause_s=0.02, chunk=1)  # ~2 s of bytes
    assert status_of(answer) == 200
    assert worst_ms < LAG_LIMIT_MS
