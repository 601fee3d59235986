"""SIPp against a real ``python -m sipbot run`` process: signalling end to end.

Every test starts its own server on a free loopback port and drives it with a SIPp UAC
scenario from ``tests/e2e/scenarios/sip/`` (SIPp exit code 0 = every call succeeded).
The Kamailio test puts a record-routing proxy (``tests/e2e/kamailio_rr.cfg``) in between.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.peers.kamailio import start_proxy
from tests.e2e.peers.ports import E2E_RTP_PORTS, free_port, free_port_block
from tests.e2e.peers.process import ManagedProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.requires_peers("sipp"),
]

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SCENARIOS = HERE / "scenarios" / "sip"
NR = ("-nr",)  # SIPp's retransmission heuristics off: the scenarios match repeats explicitly


def calls_logged(server: ManagedProcess) -> int:
    return len(re.findall(r"INFO sipbot\.server: call ", server.read_log("stderr")))


def start_sipbot(tmp_path: Path, *extra: str) -> tuple[ManagedProcess, int]:
    """A ``sipbot run`` on 127.0.0.1:<free port> (UDP + TCP), ready."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "sipbot",
        "run",
        "--listen",
        f"127.0.0.1:{port}",
        *E2E_RTP_PORTS,
        *extra,
    ]
    server = ManagedProcess.start(f"sipbot-{port}", args, tmp_path, cwd=ROOT)
    ready = rf"sipbot ready udp:127\.0\.0\.1:{port} tcp:127\.0\.0\.1:{port}"
    server.wait_for_line(ready, 15, stream="stderr")
    return server, port


@contextlib.contextmanager
def sipbot(tmp_path: Path, *extra: str) -> Iterator[tuple[ManagedProcess, int]]:
    """A running ``sipbot run``; on exit it gets SIGTERM and must exit 0."""
    server, port = start_sipbot(tmp_path, *extra)
    try:
        yield server, port
    finally:
        code = server.stop(timeout=10.0)
    assert code == 0, f"sipbot exit code {code}:\n{server.read_log('stderr')[-3000:]}"


def run_sipp(
    tmp_path: Path,
    scenario: str,
    target: str,
    *,
    calls: int = 1,
    rate: float = 10,
    transport: str = "u1",
    limit: int = 100,
    extra: tuple[str, ...] = (),
    timeout: int = 60,
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run one SIPp UAC scenario; return the completed process and SIPp's SIP port."""
    port = free_port()
    media = free_port_block()
    args = [
        "sipp", target, "-sf", str(SCENARIOS / scenario), "-s", "bot",
        "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media),
        "-t", transport, "-m", str(calls), "-r", str(rate), "-l", str(limit),
        "-nostdin", "-timeout", f"{timeout}s", "-timeout_error", "-trace_err",
        *extra,
    ]  # fmt: skip
    result = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout + 30, check=False
    )
    return result, port


def explain(
    result: subprocess.CompletedProcess[str], tmp_path: Path, *procs: ManagedProcess
) -> str:
    errors = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*_errors.log"))
    logs = "\n".join(p.read_log("stderr")[-4000:] for p in procs)
    return f"SIPp exit {result.returncode}\n{result.stdout[-2500:]}\n{errors}\n{logs}"


def test_plain_call(tmp_path: Path):
    with sipbot(tmp_path) as (server, port):
        result, _ = run_sipp(tmp_path, "uac_call.xml", f"127.0.0.1:{port}", extra=("-d", "200"))
        assert result.returncode == 0, explain(result, tmp_path, server)


def test_ack_withheld_200_retransmitted_then_stopped(tmp_path: Path):
    with sipbot(tmp_path) as (server, port):
        result, _ = run_sipp(tmp_path, "uac_ack_withheld.xml", f"127.0.0.1:{port}", extra=NR)
        assert result.returncode == 0, explain(result, tmp_path, server)


def test_invite_retransmission_is_one_call(tmp_path: Path):
    with sipbot(tmp_path, "--answer-after", "1") as (server, port):
        result, _ = run_sipp(tmp_path, "uac_invite_retrans.xml", f"127.0.0.1:{port}", extra=NR)
        assert result.returncode == 0, explain(result, tmp_path, server)
    assert calls_logged(server) == 1, server.read_log("stderr")


def test_bye_retransmission_is_absorbed(tmp_path: Path):
    with sipbot(tmp_path) as (server, port):
        result, _ = run_sipp(tmp_path, "uac_bye_retrans.xml", f"127.0.0.1:{port}", extra=NR)
        assert result.returncode == 0, explain(result, tmp_path, server)


def test_cancel_487_retransmitted_until_ack(tmp_path: Path):
    with sipbot(tmp_path, "--answer-after", "10") as (server, port):
        result, _ = run_sipp(tmp_path, "uac_cancel.xml", f"127.0.0.1:{port}", extra=NR)
        assert result.returncode == 0, explain(result, tmp_path, server)


def test_tcp(tmp_path: Path):
    with sipbot(tmp_path) as (server, port):
        result, _ = run_sipp(
            tmp_path, "uac_call.xml", f"127.0.0.1:{port}", transport="t1", calls=5, rate=5
        )
        assert result.returncode == 0, explain(result, tmp_path, server)


def test_bot_hangs_up_over_tcp(tmp_path: Path):
    with sipbot(tmp_path, "--max-duration", "0.3") as (server, port):
        result, _ = run_sipp(tmp_path, "uac_wait_bye.xml", f"127.0.0.1:{port}", transport="t1")
        assert result.returncode == 0, explain(result, tmp_path, server)


@pytest.mark.slow
def test_200_calls_at_50_per_second(tmp_path: Path):
    with sipbot(tmp_path, "--log-level", "WARNING") as (server, port):
        result, _ = run_sipp(
            tmp_path, "uac_call.xml", f"127.0.0.1:{port}", calls=200, rate=50, limit=200
        )
        assert result.returncode == 0, explain(result, tmp_path, server)


def in_dialog(proxy_log: str, method: str, target: str) -> int:
    """How many in-dialog ``method`` requests to ``target`` the proxy routed by Record-Route."""
    return len(
        re.findall(rf"in-dialog {method} sip:{re.escape(target)}\S* via loose_route", proxy_log)
    )


@pytest.mark.requires_peers("kamailio")
def test_through_kamailio_record_route_both_directions(tmp_path: Path):
    with sipbot(tmp_path, "--max-duration", "0.3") as (server, bot_port):
        proxy = start_proxy(tmp_path, bot_port)
        try:
            bot = f"bot@127.0.0.1:{bot_port}"
            # the caller hangs up: its ACK and BYE follow the Record-Route through the proxy
            result, _ = run_sipp(tmp_path, "uac_call.xml", proxy.address)
            assert result.returncode == 0, explain(result, tmp_path, server, proxy.process)
            assert in_dialog(proxy.log(), "ACK", bot) == 1, proxy.log()
            assert in_dialog(proxy.log(), "BYE", bot) == 1, proxy.log()
            # sipbot hangs up: its BYE goes to the proxy (route set from Record-Route)
            result, sipp_port = run_sipp(tmp_path, "uac_wait_bye.xml", proxy.address)
            assert result.returncode == 0, explain(result, tmp_path, server, proxy.process)
            assert in_dialog(proxy.log(), "ACK", bot) == 2, proxy.log()
            assert in_dialog(proxy.log(), "BYE", f"sipp@127.0.0.1:{sipp_port}") == 1, proxy.log()
        finally:
            proxy.stop()


def test_sigterm_byes_every_call_and_exits_0(tmp_path: Path):
    server, port = start_sipbot(tmp_path)
    try:
        sipp_args = [
            "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "uac_wait_bye.xml"),
            "-s", "bot", "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1",
            "-mp", str(free_port_block()), "-m", "3", "-r", "10", "-l", "3", "-nostdin",
            "-timeout", "30s", "-timeout_error",
        ]  # fmt: skip
        sipp = ManagedProcess.start("sipp-wait-bye", sipp_args, tmp_path, cwd=tmp_path)
        deadline = time.monotonic() + 10
        while calls_logged(server) < 3:
            assert time.monotonic() < deadline, server.read_log("stderr")
            time.sleep(0.05)
        time.sleep(0.3)  # the ACKs arrive
    finally:
        code = server.stop(timeout=10.0)
    log = server.read_log("stderr")
    assert code == 0, log
    assert "shutting down: ending 3 call(s)" in log
    assert sipp.wait(30) == 0, sipp.logs()[-3000:] + log
