"""Placing calls from outside a running ``sipbot run``: ``sipbot dial`` (CLI) and ``POST /calls``
(HTTP) to auto-answering baresip callees, straight and through Kamailio acting as the carrier
(digest auth on the INVITE, a registered callee).

The agent is the local echo: the callee's own speech comes back to it (the callee hears the
agent). Each call ends by itself after :data:`CALL_S` (the agent's ``max_duration_s``); its call
record says outbound and answered.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO_ROOT, SipbotServer, StartServer
from tests.e2e.emulated import wait_until
from tests.e2e.peers import audio, baresip, kamailio
from tests.e2e.peers.ports import free_port

TOKEN = "dial-e2e-token"
CALL_S = 7.0  # the agent hangs up after this (its max_duration_s): the echo has played by then
ECHO_MIN_CORRELATION = 0.9
CLI_TIMEOUT_S = 40.0
HTTP_TIMEOUT_S = 5.0
ENV = {"SIPBOT_HTTP_TOKEN": TOKEN, "BOT_PW": "botpw"}


def dial_config(path: Path, trunks: dict[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {
        "server": {
            "sip": {"timers": {"t1_ms": 100}},
            "http": {"token": "${SIPBOT_HTTP_TOKEN}"},
        },
        "agents": {
            "echo": {
                "provider": "local",
                "local": {"mode": "echo"},
                "max_duration_s": CALL_S,
            }
        },
        "routes": [{"name": "default", "answer": "echo"}],
    }
    if trunks:
        config["trunks"] = trunks
        config["routes"] = [
            {"name": "carrier", "match": {"trunk": next(iter(trunks))}, "answer": "echo"}
        ]
    path.write_text(yaml.safe_dump(config))
    return path


def start(
    sipbot_server: StartServer, peers_tmp: Path, trunks: dict[str, Any] | None = None
) -> tuple[SipbotServer, str]:
    """sipbot with :func:`dial_config`; (server, HTTP listener URL)."""
    config = dial_config(peers_tmp / "bot.yaml", trunks)
    port = free_port("tcp")
    server = sipbot_server("--config", str(config), "--http", f"127.0.0.1:{port}", env=ENV)
    return server, f"http://127.0.0.1:{port}"


def sipbot_dial(url: str, *argv: str) -> subprocess.Popen[str]:
    """``python -m sipbot dial ... --url URL`` (the token from the environment)."""
    env = {**os.environ, "SIPBOT_HTTP_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "sipbot", "dial", *argv, "--url", url]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(proc: subprocess.Popen[str]) -> tuple[int, list[str], str]:
    """Wait for a ``sipbot dial``; (exit code, stdout lines, stderr)."""
    out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    return proc.returncode, out.splitlines(), err


def request(url: str, body: Any = None) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON) with the token; (status, parsed JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def final_view(url: str, call_id: str, timeout: float = CALL_S + 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status, view = request(f"{url}/calls/{call_id}")
        assert status == 200, view
        return view if view["final"] else None

    found = wait_until(check, timeout, f"call {call_id} to end")
    assert found is not None
    return found


def record_of(url: str, call_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        _, records = request(f"{url}/api/records")
        return next((r for r in records["calls"] if r["call_id"] == call_id), None)

    found = wait_until(check, 10, f"the record of {call_id}")
    assert found is not None
    return found


def assert_heard_the_agent(callee: baresip.Baresip, speech: audio.Speech) -> None:
    """The callee's one call ended, and it heard its own words echoed by the agent."""
    wait_until(callee.terminated, 10, f"{callee.name}'s call to end")
    heard, rate = callee.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION


@pytest.fixture
def callees(peers_tmp: Path) -> Iterator[list[baresip.Baresip]]:
    started: list[baresip.Baresip] = []
    yield started
    for callee in started:
        callee.stop()


@pytest.mark.requires_peers("baresip")
def test_sipbot_dial_and_post_calls_reach_callees_and_bad_requests_dial_nobody(
    sipbot_server: StartServer,
    peers_tmp: Path,
    speech: audio.Speech,
    callees: list[baresip.Baresip],
) -> None:
    server, url = start(sipbot_server, peers_tmp)
    for name in ("alice", "bob"):
        callees.append(baresip.start(peers_tmp, speech.wav_8k, name=name, user=name, answer=True))
    alice, bob = callees

    # bad requests: a clear error at once, and no INVITE (the callees answer one call each below)
    status, answer = request(f"{url}/calls", {"to": alice.uri, "agent": "nobody"})
    assert status == 400
    assert "nobody" in answer["error"]
    code, out, err = finished(sipbot_dial(url, "sip:", "--agent", "echo"))
    assert (code, out) == (2, [])
    assert err.startswith("sipbot dial: HTTP 400 Bad Request: "), err
    code, out, err = finished(sipbot_dial(url, alice.uri, "--agent", "echo", "--trunk", "nope"))
    assert (code, out) == (2, [])
    assert "nope" in err

    # the CLI and the HTTP API at once; the HTTP call's status webhook points at a closed port
    began = time.monotonic()
    cli = sipbot_dial(url, alice.uri, "--agent", "echo", "--var", "name=Alice", "--wait")
    down = f"http://127.0.0.1:{free_port('tcp')}/hook"
    body = {"to": bob.uri, "agent": "echo", "variables": {"name": "Bob"}, "status_callback": down}
    status, placed = request(f"{url}/calls", body)
    assert status == 202, placed
    assert placed["url"] == f"/calls/{placed['call_id']}"

    def live() -> dict[str, Any] | None:
        _, view = request(f"{url}{placed['url']}")
        return view if view["state"] == "answered" and view["call"] else None

    up = wait_until(live, 10, "the answered call's live view")  # while it is up
    assert up is not None
    assert (up["call"]["agent"], up["call"]["state"], up["final"]) == ("echo", "up", False), up

    code, out, err = finished(cli)
    assert code == 0, err + server.log()[-3000:]
    cli_id, states = out[0], out[1:]
    assert re.fullmatch(r"\S+", cli_id)
    assert states[:4] == ["queued", "trying", "ringing 180", "answered 200 OK"], states
    assert states[4:] == ["ended 200 max-duration"], states  # the agent hung up after CALL_S
    view = final_view(url, placed["call_id"])
    assert (view["outcome"], view["state"]) == ("answered", "ended"), view
    assert view["request"]["variables"] == ["name"]
    assert view["request"]["status_callback"] is True
    answered = next(h for h in view["history"] if h["state"] == "answered")
    ended = view["history"][-1]
    # the webhook target being down cost the call nothing: it lasted the agent's full time
    assert CALL_S - 1.0 <= ended["at"] - answered["at"] <= CALL_S + 1.5, view["history"]
    assert time.monotonic() - began < CALL_S + 15

    for callee in (alice, bob):
        assert_heard_the_agent(callee, speech)
        assert len(callee.answered_from()) == 1, callee.log()[-2000:]
    for call_id in (cli_id, placed["call_id"]):
        record = record_of(url, call_id)
        assert (record["outcome"], record["sip_status"]) == ("answered", 200), record
        assert record["direction"] == "outbound"
        assert record["dial_state"] == "answered"
    # the record's answer time is the 2xx's, as the status said
    assert abs(record["answered"] - answered["at"]) < 0.05, (record, answered)

    # the webhook: each status given up after a bounded number of attempts, logged, no crash
    wait_until(lambda: "not delivered" in server.log(), 10, "a webhook given up")
    given_up = re.findall(
        rf"status webhook {re.escape(down)}: (\S+) for call {re.escape(placed['call_id'])} "
        r"not delivered after (\d+) attempts",
        server.log(),
    )
    assert given_up, server.log()[-3000:]
    assert {int(n) for _, n in given_up} == {5}
    assert cli_id not in "".join(line for line in server.log().splitlines() if "webhook" in line)


USERS = {"bot": "botpw", "bob": "bobpw"}


@pytest.mark.requires_peers("kamailio", "kamcmd", "baresip")
def test_through_kamailio_as_the_carrier_with_digest_auth_to_a_registered_callee(
    sipbot_server: StartServer,
    peers_tmp: Path,
    speech: audio.Speech,
    callees: list[baresip.Baresip],
) -> None:
    kam_dir = peers_tmp / "kamailio"
    kam_dir.mkdir()
    kam = kamailio.start_registrar(kam_dir, USERS, auth_invites=True)
    try:
        bob = baresip.start(
            peers_tmp,
            speech.wav_8k,
            name="bob",
            user="bob",
            answer=True,
            registration=baresip.Registration(kam.address, "bobpw"),
        )
        callees.append(bob)
        trunk = {
            "registrar": f"sip:{kam.address}",
            "user": "bot",
            "password": "${BOT_PW}",
            "retry_min_s": 1,
            "retry_max_s": 4,
            "outbound": {"max_calls": 2, "cps": 2},
        }
        server, url = start(sipbot_server, peers_tmp, {"carrier": trunk})

        code, out, err = finished(
            sipbot_dial(url, "bob", "--agent", "echo", "--trunk", "carrier", "--wait")
        )
        assert code == 0, err + server.log()[-3000:] + kam.log()[-3000:]
        call_id, states = out[0], out[1:]
        assert states[-2:] == ["answered 200 OK", "ended 200 max-duration"], states
        log = kam.log()
        # the carrier challenged our INVITE (407), we answered with the trunk's credentials,
        # and it relayed the call to bob's registered contact
        assert "challenging INVITE from bot" in log
        assert "authenticated INVITE from bot" in log
        relayed = re.search(r"initial INVITE to registered sip:bob\S*@127\.0\.0\.1:(\d+)", log)
        assert relayed is not None, log[-3000:]
        assert int(relayed.group(1)) == bob.port
        assert_heard_the_agent(bob, speech)
        assert len(bob.answered_from()) == 1
        record = record_of(url, call_id)
        assert (record["outcome"], record["direction"], record["dial_state"]) == (
            "answered", "outbound", "answered",
        )  # fmt: skip
    finally:
        for callee in callees:  # before Kamailio: baresip un-registers when it stops
            callee.stop()
        kam.stop()
