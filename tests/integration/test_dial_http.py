"""``POST /calls`` and ``GET /calls/{id}`` on the HTTP listener of a real in-process server on
127.0.0.1, and ``sipbot dial`` (its client) against it: tokens, bad bodies (400 with the field
and nothing dialled), draining (503 + Retry-After), unknown calls (404).

The clients are blocking (urllib, as the CLI): they run in threads so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sipbot.ops.client import dial_command, fetch
from sipbot.server import Server
from tests.integration.test_http_listener import TOKEN, serving

CONFIG = """\
agents:
  reminder:
    provider: local
    prompt: "You call to remind someone of an appointment."
trunks:
  slow:   # one new call per 5 s and no queue: a second request at once is refused
    source: [127.0.0.1]
    outbound: {proxy: "sip:127.0.0.1:9", cps: 0.2}
routes:
  - answer: reminder
"""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "bot.yaml"
    path.write_text(CONFIG)
    async with serving(str(path), TOKEN) as server:
        yield server


def url_of(server: Server) -> str:
    assert server.http is not None
    return str(server.http.url).rstrip("/")


def post_raw(
    url: str, data: bytes, token: str | None = TOKEN, content_type: str = "application/json"
) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, method="POST", data=data)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


async def post(
    url: str, body: object, token: str | None = TOKEN
) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await asyncio.to_thread(post_raw, url + "/calls", data, token)


async def test_placing_a_call_needs_the_token(server: Server) -> None:
    body = {"to": "sip:alice@127.0.0.1:9", "agent": "reminder"}
    for token in (None, "wrong"):
        status, headers, answer = await post(url_of(server), body, token)
        assert (status, answer) == (401, {"error": "unauthorized"})
        assert headers["WWW-Authenticate"] == 'Bearer realm="sipbot"'


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "bad JSON: Expecting property name enclosed in double quotes: line 1"),
        (b"", "the body must be a JSON object"),
        (b"{\"to\": \"\xc3(\"}", "the body must be UTF-8 JSON"),
        ([1, 2], "the body must be a JSON object"),
        ({"agent": "reminder"}, "'to' is required"),
        ({"to": 5551234, "agent": "reminder"}, "'to' must be a string, not a number"),
        ({"to": "sip:a@127.0.0.1", "agent": "reminder", "amd": 1}, "'amd' must be true, false"),
        ({"to": "sip:a@127.0.0.1", "agent": "reminder", "variables": {"name": ["Ada"]}},
         "'variables.name' must be a string or a number, not an array"),
        ({"to": "sip:a@127.0.0.1", "agent": "reminder", "ringtimeout": 5},
         "unknown field 'ringtimeout'"),
    ],
)  # fmt: skip
async def test_a_bad_body_is_400_with_the_reason_and_nothing_is_dialled(
    server: Server, body: object, error: str
) -> None:
    status, headers, answer = await post(url_of(server), body)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert answer["error"].startswith(error)
    assert server.calls == {}


async def test_placing_a_call_needs_a_json_content_type(server: Server) -> None:
    # a web page may POST text/plain to a loopback listener without a CORS preflight
    data = json.dumps({"to": "sip:alice@127.0.0.1:9", "agent": "reminder"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        url = url_of(server) + "/calls"
        status, _, answer = await asyncio.to_thread(post_raw, url, data, TOKEN, content_type)
        assert (status, answer) == (
            415,
            {"error": "the body must be JSON with Content-Type: application/json"},
        )
    assert server.calls == {}


async def test_without_a_configured_token_no_call_is_placed(tmp_path: Path) -> None:
    async with serving(None, token=None) as server:
        body = {"to": "sip:alice@127.0.0.1:9", "agent": "echo"}
        status, _, answer = await post(url_of(server), body, token=None)
        assert (status, answer) == (
            403,
            {"error": "placing calls over HTTP needs a token: set server.http.token"},
        )
        assert server.calls == {}


async def test_a_trunk_limit_refuses_with_429_and_retry_after_and_the_call_shows_its_states(
    server: Server,
) -> None:
    body = {"to": "100", "agent": "reminder", "trunk": "slow", "ring_timeout_s": 0.5}
    status, headers, placed = await post(url_of(server), body)
    assert status == 202, placed
    call_id = placed["call_id"]
    assert headers["Location"] == f"/calls/{call_id}"
    status, headers, refused = await post(url_of(server), body)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert refused["retry_after_s"] == 1
    assert "slow" in refused["error"], refused
    # nobody answers at 127.0.0.1:9: the first call gives up after its ring timeout
    view: dict[str, Any] = {}
    async with asyncio.timeout(10):
        while not view.get("final"):
            await asyncio.sleep(0.1)
            view = await asyncio.to_thread(fetch, f"{url_of(server)}/calls/{call_id}", TOKEN)
    states = [h["state"] for h in view["history"]]
    assert states[:2] == ["queued", "trying"], view
    assert view["outcome"] == "failed"
    assert states[-2:] == ["failed", "ended"]
    assert view["request"] == {
        "to": "100",
        "agent": "reminder",
        "trunk": "slow",
        "ring_timeout_s": 0.5,
        "variables": [],
        "status_callback": False,
    }


async def test_an_unknown_call_is_404(server: Server) -> None:
    def get() -> int:
        try:
            fetch(url_of(server) + "/calls/no-such-call", TOKEN)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    assert await asyncio.to_thread(get) == 404


async def test_no_calls_are_placed_while_draining(server: Server) -> None:
    server.drain()
    body = {"to": "sip:alice@127.0.0.1:9", "agent": "reminder"}
    status, headers, answer = await post(url_of(server), body)
    assert status == 503
    assert headers["Retry-After"] == str(server.admission.drain_retry_after_s)
    assert answer == {
        "error": "the server is draining",
        "retry_after_s": server.admission.drain_retry_after_s,
    }
    await asyncio.wait_for(server.drained.wait(), 5)


async def test_sipbot_dial_exits_2_on_a_bad_request_and_1_on_a_wrong_token(
    server: Server,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    fields = {"to": "sip:alice@127.0.0.1:9", "agent": "reminder", "ring_timeout_s": -1}
    code = await asyncio.to_thread(dial_command, url_of(server), TOKEN, fields, out, err)
    assert code == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        "sipbot dial: HTTP 400 Bad Request: 'ring_timeout_s' must be > 0 and <= 3600, not -1\n"
    )
    err = io.StringIO()
    fields = {"to": "sip:alice@127.0.0.1:9", "agent": "reminder"}
    code = await asyncio.to_thread(dial_command, url_of(server), "wrong", fields, out, err)
    assert code == 1
    assert err.getvalue() == (
        "sipbot dial: HTTP 401 Unauthorized (check the token): unauthorized\n"
    )


async def test_sipbot_dial_wait_prints_each_state_and_exits_1_when_the_call_fails(
    server: Server,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    fields = {"to": "100", "agent": "reminder", "trunk": "slow", "ring_timeout_s": 0.5}
    code = await asyncio.wait_for(
        asyncio.to_thread(dial_command, url_of(server), TOKEN, fields, out, err, wait=True), 15
    )
    assert code == 1, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[1:3] == ["queued", "trying"]
    assert lines[-2].startswith("failed "), lines
    assert lines[-1].startswith("ended "), lines
    assert err.getvalue() == ""


def test_sipbot_dial_to_a_server_that_is_not_there_exits_1() -> None:
    port = free_tcp_port()  # bound then closed: nothing listens
    out, err = io.StringIO(), io.StringIO()
    fields = {"to": "sip:alice@127.0.0.1:9", "agent": "reminder"}
    code = dial_command(f"http://127.0.0.1:{port}", TOKEN, fields, out, err, wait=True)
    assert code == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith("sipbot dial: cannot connect: "), err.getvalue()


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
