"""Graceful drain behind Kamailio's dispatcher with two workers (issue 10).

SIGTERM one worker while it has calls: it answers OPTIONS 503 at once, so the dispatcher marks
it inactive and sends new calls to the other worker; its own calls go on until the callers hang
up (within ``--drain-timeout``), then it exits 0. No call fails. Then: a call still up when the
drain timeout passes hears the goodbye and gets BYE; ``POST /drain`` and ``sipbot drain`` start
the same drain.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, SipbotServer, StartServer
from tests.e2e.emulated import wait_until
from tests.e2e.ops_helpers import get_json, start_with_http
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.kamailio import start_dispatcher
from tests.e2e.test_call_path import cdr_lines

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

DRAIN_TIMEOUT_S = 30.0
HOLD_S = 8.0
INACTIVE_WITHIN_S = 10.0


def options_status(port: int) -> int:
    """Send one out-of-dialog OPTIONS over UDP to 127.0.0.1:``port``; the final status."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        me = sock.getsockname()[1]
        request = (
            f"OPTIONS sip:bot@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-ops-{me};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@127.0.0.1:{me}>;tag=probe\r\n"
            f"To: <sip:bot@127.0.0.1:{port}>\r\n"
            f"Call-ID: ops-probe-{me}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(request.encode(), ("127.0.0.1", port))
        while True:
            data = sock.recv(65535).decode(errors="replace")
            status = int(data.split(" ", 2)[1])
            if status >= 200:
                return status


def answered(server: SipbotServer) -> int:
    return len(re.findall(r"answered by agent", server.log()))


@pytest.mark.requires_peers("sipp", "kamailio", "kamcmd")
def test_sigterm_drains_a_worker_behind_the_dispatcher_without_failing_a_call(
    sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:
    drain = ("--drain-timeout", str(DRAIN_TIMEOUT_S))
    workers = [sipbot_server(*drain), sipbot_server(*drain)]
    draining, other = workers
    kamailio = start_dispatcher(peers_tmp, [f"sip:{w.address}" for w in workers])
    long = sipp.uac_scenario(peers_tmp / "long.xml", speech.ulaw, "PCMU", hold_s=HOLD_S)
    first = sipp.start_uac(
        kamailio.address, long, peers_tmp, calls=4, rate=20, timeout_s=60, name="sipp-first"
    )
    wait_until(lambda: [answered(w) for w in workers] == [2, 2], 10, "two calls on each worker")

    signalled = time.monotonic()
    os.kill(draining.pid, signal.SIGTERM)
    deadline = time.monotonic() + INACTIVE_WITHIN_S
    uri = f"sip:{draining.address}"
    while not kamailio.dispatcher_states().get(uri, "").startswith("I"):
        assert time.monotonic() < deadline, kamailio.dispatcher_states()
        time.sleep(0.25)
    short = sipp.uac_scenario(peers_tmp / "short.xml", speech.ulaw, "PCMU", hold_s=1.0)
    second = sipp.run_uac(
        kamailio.address, short, peers_tmp, calls=4, rate=10, timeout_s=40, name="sipp-second"
    )
    second.assert_ok(4)
    assert answered(draining) == 2  # nothing new reached the draining worker
    assert answered(other) == 6

    first.wait(40).assert_ok(4)  # the calls on the draining worker ended normally
    code = draining.process.wait(DRAIN_TIMEOUT_S)
    assert code == 0, draining.log()[-2000:]
    assert time.monotonic() - signalled < DRAIN_TIMEOUT_S  # it left when its calls ended
    assert [c["reason"] for c in cdr_lines(draining)] == ["bye-received"] * 2
    assert "drain timeout" not in draining.log()


@pytest.mark.requires_peers("sipp")
def test_a_call_outliving_the_drain_timeout_hears_the_goodbye_then_bye(
    sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:
    server, url = start_with_http(sipbot_server, "--drain-timeout", "1")
    scenario = sipp.uac_scenario(
        peers_tmp / "uac.xml", speech.ulaw, "PCMU", hangup="callee", bye_timeout_s=30
    )
    caller = sipp.start_uac(server.address, scenario, peers_tmp, calls=1, timeout_s=40)
    wait_until(lambda: answered(server) == 1, 10, "the call answered")
    request = urllib.request.Request(f"{url}/drain", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
        assert json.loads(response.read())["started"] is True
    assert get_json(f"{url}/api/status")["draining"] is True
    result = caller.wait(30)
    result.assert_ok(1)  # the BYE came from sipbot (the scenario waits for it)
    assert server.process.wait(15) == 0
    [cdr] = cdr_lines(server)
    assert cdr["reason"] == "drain", cdr
    # the goodbye prompt (2.7 s) played before the BYE: ~1 s drain timeout + the prompt
    assert float(cdr["duration_s"]) >= 3.5, cdr  # type: ignore[arg-type]


@pytest.mark.requires_peers("sipp")
def test_sipbot_drain_makes_the_server_refuse_invites_and_options(
    sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:
    server, url = start_with_http(sipbot_server, "--drain-timeout", "20")
    scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, "PCMU", hold_s=4)
    caller = sipp.start_uac(server.address, scenario, peers_tmp, calls=1, timeout_s=40)
    wait_until(lambda: answered(server) == 1, 10, "the call answered")
    out = subprocess.run(
        [sys.executable, "-m", "sipbot", "drain", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    assert out.startswith("draining started; 1 call(s) up"), out
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        assert response.status == 200  # alive, only not ready
    with pytest.raises(urllib.error.HTTPError) as ready:
        urllib.request.urlopen(f"{url}/readyz", timeout=5)
    assert ready.value.code == 503
    refused = sipp.run_uac(
        server.address,
        sipp.reject_scenario(peers_tmp / "reject.xml", 503),
        peers_tmp,
        calls=1,
        name="sipp-refused",
    )
    refused.assert_ok(1)
    assert options_status(server.port) == 503
    caller.wait(30).assert_ok(1)
    assert server.process.wait(15) == 0


@pytest.mark.requires_peers("sipp")
def test_a_second_sigterm_ends_the_calls_at_once(
    sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:
    server = sipbot_server("--drain-timeout", str(DRAIN_TIMEOUT_S))
    scenario = sipp.uac_scenario(
        peers_tmp / "uac.xml", speech.ulaw, "PCMU", hangup="callee", bye_timeout_s=40
    )
    caller = sipp.start_uac(server.address, scenario, peers_tmp, calls=1, timeout_s=50)
    wait_until(lambda: answered(server) == 1, 10, "the call answered")
    os.kill(server.pid, signal.SIGTERM)
    wait_until(lambda: "draining: 1 call(s) up" in server.log(), 5, "the drain to start")
    signalled = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    assert server.process.wait(10) == 0
    assert time.monotonic() - signalled < 6.0
    caller.wait(20).assert_ok(1)  # it got its BYE
    [cdr] = cdr_lines(server)
    assert cdr["reason"] == "shutdown", cdr
