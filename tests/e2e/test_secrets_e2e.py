"""End to end (issue 12, security review): configured secrets never leave the process.

A real ``sipbot run`` is configured with a trunk password (registers at Kamailio), a wrong
trunk password (refused, retried), a provider API key (a call talks), a refused API key (a
call fails: apology, BYE), a digest user's password and the HTTP token. After a call, a
failed call, registrations and refused HTTP requests, every byte the server wrote (its log,
the records database with its WAL, the recordings, ``sipbot check``/``calls export`` output) and
every HTTP API response is searched for each secret: none may appear.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from sipbot.commands import check_command
from sipbot.emulators.script import EmulatorScript
from sipbot.records import open_store
from sipbot.records.commands import export_command
from tests.e2e.calls import caller_turns, silence_ulaw
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import API_KEY, EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import kamailio, sipp
from tests.e2e.peers.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TAG = uuid.uuid4().hex[:10]
SECRETS = {
    "E2E_TRUNK_PW": f"trunkpw-{TAG}",
    "E2E_WRONG_PW": f"wrongpw-{TAG}",
    "E2E_BAD_KEY": f"sk-bad-{TAG}",
    "E2E_DIGEST_PW": f"digestpw-{TAG}",
    "E2E_HTTP_TOKEN": f"httptoken-{TAG}",
}
CALL_TIMEOUT_S = 30.0
API_PATHS = ("/api/status", "/api/calls", "/api/recent", "/metrics", "/readyz", "/")


def get(url: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def written_files(*roots: Path) -> dict[str, bytes]:
    return {
        str(path): path.read_bytes()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.requires_peers("sipp", "kamailio", "kamcmd")
def test_configured_secrets_never_appear_in_logs_records_errors_or_the_api(
    sipbot_server: StartServer, peers_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kam = kamailio.start_registrar(peers_tmp, {"bot": SECRETS["E2E_TRUNK_PW"]}, qop=True)
    http_port = free_port()
    data, recordings = peers_tmp / "data", peers_tmp / "recordings"
    recordings.mkdir()
    script = EmulatorScript(reply="tone", tone_hz=660.0, reply_ms=600, vad_silence_ms=300)
    try:
        with EmulatorThread("openai", script) as emu:
            registrar = f"sip:127.0.0.1:{kam.port}"
            trunk = {"registrar": registrar, "user": "bot", "retry_min_s": 1, "retry_max_s": 2}
            plan = {
                "server": {
                    "data_dir": str(data),
                    "recordings_dir": str(recordings),
                    "http": {"listen": f"127.0.0.1:{http_port}", "token": "${E2E_HTTP_TOKEN}"},
                    "trust": {"users": {"alice": "${E2E_DIGEST_PW}"}},
                },
                "agents": {
                    "bot": emu.agent(prompt="You answer the phone.", recording=True),
                    "broken": emu.agent(api_key="${E2E_BAD_KEY}"),
                },
                "trunks": {
                    "pbx": {**trunk, "password": "${E2E_TRUNK_PW}", "source": ["127.0.0.1"]},
                    "stale": {**trunk, "password": "${E2E_WRONG_PW}"},
                },
                "routes": [
                    {"name": "failing", "match": {"did": "500"}, "answer": "broken"},
                    {"name": "main", "answer": "bot"},
                ],
            }
            config = write_dialplan(peers_tmp / "secrets.yaml", plan)
            env = {**server_env(), **SECRETS}
            server = sipbot_server("-c", str(config), env=env)
            wait_until(
                lambda: "trunk pbx: registration registered" in server.log(), 20.0, "registered"
            )
            wait_until(lambda: "trunk stale: registration failed" in server.log(), 20.0, "401")

            talk = sipp.uac_scenario(peers_tmp / "talk.xml", caller_turns(peers_tmp / "t.ulaw"))
            sipp.run_uac(
                server.address, talk, peers_tmp, service="100", name="talk", timeout_s=20
            ).assert_ok(calls=1)
            listen = sipp.uac_scenario(
                peers_tmp / "fail.xml", silence_ulaw(peers_tmp / "q.ulaw", 20.0), hangup="callee"
            )
            sipp.run_uac(
                server.address, listen, peers_tmp, service="500", name="fail", timeout_s=30
            ).assert_ok(calls=1)

            base = f"http://127.0.0.1:{http_port}"
            responses: dict[str, bytes] = {}
            for path in API_PATHS:
                status, body = get(base + path, SECRETS["E2E_HTTP_TOKEN"])
                assert status == 200, (path, status)
                responses[f"GET {path}"] = body
                status, body = get(base + path, None)
                assert status == 401, (path, status)
                responses[f"GET {path} (no token)"] = body
                status, body = get(base + path, SECRETS["E2E_HTTP_TOKEN"][:-1])
                assert status == 401, (path, status)
                responses[f"GET {path} (wrong token)"] = body
    finally:
        kam.stop()

    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    check_out, export_out = io.StringIO(), io.StringIO()
    assert check_command(str(config), check_out, check_out) == 0, check_out.getvalue()
    store = open_store(None, str(data))
    try:
        assert export_command(store, export_out, "jsonl") == 0
    finally:
        store.close()
    assert "provider-unavailable" in export_out.getvalue()  # the failed call's record is there

    written = written_files(data, recordings)
    assert any(name.endswith(".wav") for name in written)
    written["server log"] = server.log().encode()
    written["sipbot check"] = check_out.getvalue().encode()
    written["sipbot calls export"] = export_out.getvalue().encode()
    written.update(responses)
    secrets = {**SECRETS, "SIPBOT_E2E_KEY": API_KEY}
    leaks = [
        f"{variable} in {where}"
        for where, content in written.items()
        for variable, secret in secrets.items()
        if secret.encode() in content
    ]
    assert leaks == []
    assert "Traceback" not in server.log()
