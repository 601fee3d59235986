"""Fixtures for end-to-end tests: log dirs, test speech, and a real ``sipbot run`` process.

Markers registered here:
- ``peers_selfcheck``: tests of the peer library itself; deselect: ``-m "not peers_selfcheck"``.
- ``requires_peers(*names)``: programs/capabilities the test needs. Names are executables on PATH,
  or ``capture`` (dumpcap on lo), ``dtmf_pcap`` (SIPp play_pcap_audio: root/CAP_NET_RAW),
  ``pjsua2`` (the Python module) and ``kamailio_tls`` (Kamailio's tls module). Missing → skipped
  with the reason, except under ``CI=true``
  where it fails: CI installs everything (scripts/install-system-deps), so a gap there is a defect.

Set ``SIPBOT_E2E_LOG_DIR`` to keep every test's peer logs under that directory (one sub-directory
per test) instead of pytest's tmp dir, e.g. for CI artifacts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.peers import audio
from tests.e2e.peers.capture import capture_unavailable
from tests.e2e.peers.ports import E2E_RTP_PORTS, free_port
from tests.e2e.peers.process import ManagedProcess, live_processes
from tests.e2e.peers.sipp import dtmf_unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_READY_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 15.0
SERVER_READY_LINE = r"^sipbot ready"
# What the sipbot_server fixture runs (before "--listen HOST:PORT [extra args]"); the peer
# self-check swaps in a stand-in server to prove the fixture before sipbot exists.
SERVER_COMMAND: list[str] = [sys.executable, "-m", "sipbot", "run"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "peers_selfcheck: tests of the e2e peer library itself")
    config.addinivalue_line(
        "markers", "requires_peers(*names): programs or capabilities an e2e test needs"
    )


def _missing(name: str) -> str | None:
    if name == "capture":
        return capture_unavailable()
    if name == "dtmf_pcap":
        return dtmf_unavailable()
    if name == "kamailio_tls":
        module = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so")
        return None if module.exists() else "kamailio-tls-modules is not installed"
    if name == "pjsua2":
        return None if importlib.util.find_spec("pjsua2") else "python module pjsua2 is missing"
    return None if shutil.which(name) else f"{name} is not installed (scripts/install-system-deps)"


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_peers"):
        reasons = [r for r in (_missing(str(n)) for n in marker.args) if r]
        if not reasons:
            continue
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI lacks what this test needs: " + "; ".join(reasons))
        pytest.skip("; ".join(reasons))


@pytest.fixture(autouse=True)
def _stop_leftover_peers() -> Iterator[None]:
    """Stop (by PID) every peer process a test started and left running, e.g. after a failure."""
    before = {p.pid for p in live_processes()}
    yield
    for proc in live_processes():
        if proc.pid not in before:
            proc.stop(timeout=2.0)


@pytest.fixture
def peers_tmp(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A per-test directory for peer configs, logs, captures and recordings."""
    root = os.environ.get("SIPBOT_E2E_LOG_DIR")
    if not root:
        path = tmp_path / "peers"
    else:
        path = Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> audio.Speech:
    """Test speech (8/16 kHz WAV, μ-law, A-law, G.722), made once per session."""
    return audio.make_speech(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def other_speech(tmp_path_factory: pytest.TempPathFactory) -> audio.Speech:
    """Different speech, for negative checks (correlates ~0 with ``speech``)."""
    return audio.make_speech(tmp_path_factory.mktemp("other_speech"), audio.OTHER_TEXT, "other")


@dataclass
class SipbotServer:
    """A running ``python -m sipbot run`` on 127.0.0.1:``port`` (UDP and TCP)."""

    host: str
    port: int
    process: ManagedProcess
    check_exit: bool = field(default=True)  # teardown asserts exit 0 and no Traceback

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """The server's log (it logs to stderr)."""
        return self.process.stderr_path

    @property
    def address(self) -> str:
        """``host:port``, e.g. as SIPp's target."""
        return f"{self.host}:{self.port}"

    def uri(self, user: str = "bot", transport: str = "udp") -> str:
        """SIP URI of ``user`` at this server (``transport="tcp"`` adds ``;transport=tcp``)."""
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"sip:{user}@{self.host}:{self.port}{suffix}"

    def log(self) -> str:
        return self.process.read_log("stderr") + self.process.read_log("stdout")


StartServer = Callable[..., SipbotServer]


@pytest.fixture
def sipbot_server(peers_tmp: Path) -> Iterator[StartServer]:
    """Factory: ``sipbot_server(*extra_args, env=None) -> SipbotServer``, ready to take calls.

    Starts ``python -m sipbot run --listen 127.0.0.1:<free port> [extra_args]`` from the
    repository root (``XDG_DATA_HOME`` in the test's directory, so the default call records
    file is the test's own) and waits for a stderr line starting with ``sipbot ready``. On
    teardown each server gets SIGTERM and a bounded wait; unless ``server.check_exit`` was set
    False, the test then fails if the exit code is not 0 or the log holds a Traceback.
    """
    servers: list[SipbotServer] = []

    def start(
        *extra_args: str,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = SERVER_READY_TIMEOUT_S,
    ) -> SipbotServer:
        port = free_port("both")
        argv = [*SERVER_COMMAND, "--listen", f"127.0.0.1:{port}", *E2E_RTP_PORTS, *extra_args]
        name = f"sipbot-{len(servers)}" if servers else "sipbot"
        # call records (SQLite by default) go to this test's directory, not the user's home
        env = {"XDG_DATA_HOME": str(peers_tmp / "data"), **(env or {})}
        proc = ManagedProcess.start(name, argv, peers_tmp, cwd=REPO_ROOT, env=env)
        server = SipbotServer("127.0.0.1", port, proc)
        servers.append(server)
        proc.wait_for_line(SERVER_READY_LINE, ready_timeout, stream="stderr")
        return server

    yield start
    problems = []
    for server in servers:
        code = server.process.stop(timeout=SERVER_STOP_TIMEOUT_S, signum=signal.SIGTERM)
        if not server.check_exit:
            continue
        if code != 0:
            problems.append(f"{server.process.name} exited with {code} after SIGTERM")
        if "Traceback" in server.log():
            problems.append(f"{server.process.name} logged a Traceback")
    if problems:
        logs = "\n".join(str(s.log_path) for s in servers)
        pytest.fail("; ".join(problems) + f"\nlogs:\n{logs}")
