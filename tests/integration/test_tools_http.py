"""HTTP tools against a small HTTP/1.1 server on asyncio streams (127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sipbot.domain import CallInfo, ToolCall
from sipbot.secret import Secret
from sipbot.tools import HttpTool, ToolContext, ToolRunner, aclose_http_clients
from tests.unit.test_tools_runner import Control


@dataclass
class Recorder:
    """A tiny HTTP server that records what it receives."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers = {
                k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((f"{method} {path}", headers, body))
            status, content_type, payload = await self.respond(path, body)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def respond(self, path: str, body: bytes) -> tuple[str, str, bytes]:
        if path == "/json":
            request = json.loads(body)
            answer = {"order": request["arguments"]["order_id"], "status": "shipped"}
            return "200 OK", "application/json; charset=utf-8", json.dumps(answer).encode()
        if path == "/text":
            return "200 OK", "text/plain", b"it is shipped"
        if path == "/fail":
            return "503 Service Unavailable", "text/plain", b"database down"
        if path == "/slow":
            await asyncio.sleep(5)
        return "404 Not Found", "text/plain", b""


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    srv = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    recorder.port = srv.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        await aclose_http_clients()
        srv.close()
        await srv.wait_closed()


def make_tool(port: int, path: str, **kwargs: Any) -> HttpTool:
    return HttpTool(
        "crm",
        f"http://127.0.0.1:{port}{path}",
        description="Look up an order in the CRM.",
        parameters={"type": "object", "properties": {"order_id": {"type": "string"}}},
        **kwargs,
    )


class InfoControl(Control):
    def __init__(self) -> None:
        super().__init__()
        self.info = CallInfo(
            "call-9", caller="+4930555", did="100", display_name="Ann", headers={"X-Id": "7"}
        )


async def test_json_result_and_request_shape(server: Recorder) -> None:
    tool = make_tool(server.port, "/json", headers={"Authorization": Secret("Bearer t0k", "${T}")})
    runner = ToolRunner(ToolContext(InfoControl()), [tool])
    result = await runner.start(ToolCall("t1", "crm", {"order_id": "A1"}))
    assert result.output == {"order": "A1", "status": "shipped"}
    [(request_line, headers, body)] = server.requests
    assert request_line == "POST /json"
    assert headers["authorization"] == "Bearer t0k"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "tool": "crm",
        "arguments": {"order_id": "A1"},
        "call": {
            "call_id": "call-9",
            "caller": "+4930555",
            "did": "100",
            "display_name": "Ann",
            "headers": {"X-Id": "7"},
        },
    }


async def test_text_result(server: Recorder) -> None:
    runner = ToolRunner(ToolContext(Control()), [make_tool(server.port, "/text")])
    result = await runner.start(ToolCall("t1", "crm", {}))
    assert result.output == "it is shipped"


async def test_http_error_status(server: Recorder) -> None:
    runner = ToolRunner(ToolContext(Control()), [make_tool(server.port, "/fail")])
    result = await runner.start(ToolCall("t1", "crm", {}))
    assert result.output == {"error": "the crm service answered HTTP 503: database down"}


async def test_http_timeout(server: Recorder) -> None:
    runner = ToolRunner(ToolContext(Control()), [make_tool(server.port, "/slow", timeout_s=0.2)])
    result = await asyncio.wait_for(runner.start(ToolCall("t1", "crm", {})), 3)
    assert result.output == {"error": "the crm service did not answer in time"}


async def test_connection_refused(server: Recorder) -> None:
    # a port that was free a moment ago: bind, note the port, close
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    runner = ToolRunner(ToolContext(Control()), [make_tool(port, "/json")])
    result = await runner.start(ToolCall("t1", "crm", {}))
    assert result.output == {"error": "the crm service cannot be reached (ConnectError)"}


def test_repr_masks_headers() -> None:
    tool = make_tool(1, "/x", headers={"Authorization": Secret("Bearer t0k", "${T}")})
    assert "t0k" not in repr(tool.headers)
    assert repr(tool.headers) == "{'Authorization': Secret('${T}')}"
    assert tool.timeout_s == 6.0  # 5 s HTTP timeout + 1 s margin for the runner
