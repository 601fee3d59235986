"""SIPp against a real ``python -m sipbot run`` process: signalling end to end.

Every test starts its own server on a free loopback port and drives it with a SIPp UAC
scenario from ``tests/e2e/scenarios/sip/`` (SIPp exit code 0 = every call succeeded).
The Kamailio test puts a record-routing proxy (``tests/e2e/kamailio_rr.cfg``) in between.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SCENARIOS = HERE / "scenarios" / "sip"
KAMAILIO_CFG = HERE / "kamailio_rr.cfg"
NR = ("-nr",)  # SIPp's retransmission heuristics off: the scenarios match repeats explicitly


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(span: int = 1) -> int:
    """A random high port with ``span`` consecutive ports free for UDP and TCP."""
    for _ in range(200):
        port = random.randrange(20_000, 60_000, 4)
        if all(_bindable(port + i) for i in range(span)):
            return port
    raise RuntimeError("no free port")


class Process:
    """A child process whose stderr is collected by a thread (so the pipe never fills)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s; log:\n{self.log}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM our process group; return the exit code (kill after ``timeout``)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(5)
        self._reader.join(2)
        return code


@contextlib.contextmanager
def sipbot(tmp_path: Path, *extra: str) -> Iterator[tuple[Process, int]]:
    """A ``sipbot run`` on 127.0.0.1:<free port> (UDP + TCP); exits 0 on SIGTERM."""
    port = free_port()
    args = [sys.executable, "-m", "sipbot", "run", "--listen", f"127.0.0.1:{port}", *extra]
    server = Process(args, ROOT)
    try:
        server.wait_for(rf"sipbot ready udp:127\.0\.0\.1:{port} tcp:127\.0\.0\.1:{port}", 15)
        yield server, port
    finally:
        code = server.stop()
    assert code == 0, f"sipbot exit code {code}; log:\n{server.log}"


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
    media = free_port(span=4)
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


def explain(result: subprocess.CompletedProcess[str], tmp_path: Path, *procs: Process) -> str:
    errors = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*_errors.log"))
    logs = "\n".join(p.log[-4000:] for p in procs)
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
    assert len(re.findall(r"INFO sipbot\.server: call ", server.log)) == 1, server.log


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
    with sipbot(tmp_path, "--hangup-after", "0.3") as (server, port):
        result, _ = run_sipp(tmp_path, "uac_wait_bye.xml", f"127.0.0.1:{port}", transport="t1")
        assert result.returncode == 0, explain(result, tmp_path, server)


@pytest.mark.slow
def test_200_calls_at_50_per_second(tmp_path: Path):
    with sipbot(tmp_path, "--log-level", "WARNING") as (server, port):
        result, _ = run_sipp(
            tmp_path, "uac_call.xml", f"127.0.0.1:{port}", calls=200, rate=50, limit=200
        )
        assert result.returncode == 0, explain(result, tmp_path, server)


@contextlib.contextmanager
def kamailio(tmp_path: Path, bot_port: int) -> Iterator[tuple[Process, int]]:
    if shutil.which("kamailio") is None:
        pytest.skip("kamailio not installed")
    port = free_port()
    cfg = tmp_path / "kamailio.cfg"
    text = KAMAILIO_CFG.read_text()
    cfg.write_text(text.replace("@PROXY_PORT@", str(port)).replace("@BOT_PORT@", str(bot_port)))
    args = ["kamailio", "-f", str(cfg), "-Y", str(tmp_path), "-w", str(tmp_path), "-DD", "-E"]
    proxy = Process(args, tmp_path)
    try:
        deadline = time.monotonic() + 10
        while _bindable(port):
            assert proxy.proc.poll() is None, f"kamailio exited:\n{proxy.log}"
            assert time.monotonic() < deadline, f"kamailio did not bind:\n{proxy.log}"
            time.sleep(0.1)
        yield proxy, port
    finally:
        proxy.stop()


def relayed(proxy: Process, method: str, source_port: int) -> int:
    return len(re.findall(rf"relay {method} from 127\.0\.0\.1:{source_port} ", proxy.log))


def test_through_kamailio_record_route_both_directions(tmp_path: Path):
    with (
        sipbot(tmp_path, "--hangup-after", "0.3") as (server, bot_port),
        kamailio(tmp_path, bot_port) as (proxy, proxy_port),
    ):
        # the caller hangs up: its ACK and BYE follow the Record-Route back through the proxy
        result, sipp_port = run_sipp(tmp_path, "uac_call.xml", f"127.0.0.1:{proxy_port}")
        assert result.returncode == 0, explain(result, tmp_path, server, proxy)
        assert relayed(proxy, "ACK", sipp_port) == 1, proxy.log
        assert relayed(proxy, "BYE", sipp_port) == 1, proxy.log
        # sipbot hangs up: its BYE goes to the proxy (route set from Record-Route)
        result, sipp_port = run_sipp(tmp_path, "uac_wait_bye.xml", f"127.0.0.1:{proxy_port}")
        assert result.returncode == 0, explain(result, tmp_path, server, proxy)
        assert relayed(proxy, "ACK", sipp_port) == 1, proxy.log
        assert relayed(proxy, "BYE", bot_port) == 1, proxy.log


def test_sigterm_byes_every_call_and_exits_0(tmp_path: Path):
    port = free_port()
    args = [sys.executable, "-m", "sipbot", "run", "--listen", f"127.0.0.1:{port}"]
    server = Process(args, ROOT)
    sipp = None
    try:
        server.wait_for("sipbot ready", 15)
        sipp_port, media = free_port(), free_port(span=4)
        sipp_args = [
            "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "uac_wait_bye.xml"),
            "-s", "bot", "-i", "127.0.0.1", "-p", str(sipp_port), "-mi", "127.0.0.1",
            "-mp", str(media), "-m", "3", "-r", "10", "-l", "3", "-nostdin",
            "-timeout", "30s", "-timeout_error",
        ]  # fmt: skip
        sipp = subprocess.Popen(
            sipp_args,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 10
        while len(re.findall(r"sipbot\.server: call ", server.log)) < 3:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
        time.sleep(0.3)  # the ACKs arrive
    finally:
        code = server.stop()
    assert code == 0, server.log
    assert "shutting down: ending 3 call(s)" in server.log
    out, _ = sipp.communicate(timeout=30)
    assert sipp.returncode == 0, out[-3000:] + server.log
