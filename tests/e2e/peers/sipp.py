"""SIPp as a caller (UAC) or a stand-in callee (UAS), with our own scenario templates.

Scenario templates are rendered by :mod:`tests.e2e.peers.sipp_scenarios` (re-exported here:
``sipp.uac_scenario``, ``sipp.uas_scenario``, ``sipp.reject_scenario``, ``sipp.dtmf_pcap``, ...).

Verified SIPp 3.6.1 behaviour (see also /work/shared/PEERS.md):
- Exit code 0 = every call succeeded, 1 = some failed, 99 = none processed, 255 = timeout/fatal.
- All calls of one SIPp process share its ``-mp`` media port; ``rtp_stream`` sends from that port
  with SSRC ``0xCA110000 + call index``; the DTMF pcaps carry their own fixed SSRC (0x0E05384E).
- A variable assigned by ``<ereg>`` but never used is a fatal scenario error: keep such actions
  inside the optional section that uses them.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.e2e.peers.capture import RtpCapture
from tests.e2e.peers.ports import free_port, free_port_block, wait_bound
from tests.e2e.peers.process import ManagedProcess, PeerError
from tests.e2e.peers.sipp_scenarios import (
    CODECS,
    SCENARIO_DIR,
    SIPP_RTP_SSRC_BASE,
    TELEPHONE_EVENT_PT,
    Codec,
    Hangup,
    dtmf_pcap,
    reject_scenario,
    render_scenario,
    sdp_media,
    uac_scenario,
    uas_scenario,
)

__all__ = [
    "CODECS",
    "SCENARIO_DIR",
    "SIPP_RTP_SSRC_BASE",
    "TELEPHONE_EVENT_PT",
    "Codec",
    "Hangup",
    "Sipp",
    "SippResult",
    "Transport",
    "dtmf_pcap",
    "dtmf_unavailable",
    "read_stat_counts",
    "reject_scenario",
    "render_scenario",
    "run_uac",
    "sdp_media",
    "start_uac",
    "start_uas",
    "uac_scenario",
    "uas_scenario",
]

Transport = Literal["udp", "tcp"]

SIPP = "sipp"
CAP_NET_RAW_BIT = 13
UAS_LIFETIME_S = 300  # a forgotten UAS exits by itself after this
READY_TIMEOUT_S = 10.0


def dtmf_unavailable() -> str | None:
    """Why ``play_pcap_audio`` cannot work here (it needs root or CAP_NET_RAW), or None."""
    if os.geteuid() == 0:
        return None
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)
    if match and int(match.group(1), 16) >> CAP_NET_RAW_BIT & 1:
        return None
    return "SIPp play_pcap_audio needs root or CAP_NET_RAW, which this process lacks"


@dataclass
class SippResult:
    """What one SIPp run did. ``successful``/``failed`` come from the last stat.csv row."""

    name: str
    returncode: int
    successful: int
    failed: int
    log_dir: Path
    stat_path: Path
    messages_path: Path
    errors_path: Path
    process: ManagedProcess
    capture: RtpCapture | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0

    def messages(self) -> str:
        """The SIP message trace (empty if none)."""
        return self.messages_path.read_text(errors="replace") if self.messages_path.exists() else ""

    def errors(self) -> str:
        return self.errors_path.read_text(errors="replace") if self.errors_path.exists() else ""

    def describe(self) -> str:
        """A one-paragraph summary for assertion messages."""
        return (
            f"{self.name}: exit {self.returncode}, successful {self.successful}, failed "
            f"{self.failed}; logs in {self.log_dir}\n{self.errors()[-2000:]}"
        )

    def assert_ok(self, calls: int | None = None) -> None:
        """Raise AssertionError unless every call succeeded (and ``calls`` calls did)."""
        assert self.ok, self.describe()
        if calls is not None:
            assert self.successful == calls, self.describe()


class Sipp:
    """One SIPp process (UAC or UAS) with its logs in ``log_dir``; stop it or wait for it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        *,
        port: int,
        media_port: int,
        transport: Transport,
        capture: RtpCapture | None,
    ) -> None:
        self.name = name
        self.log_dir = log_dir
        self.port = port
        self.media_port = media_port
        self.transport = transport
        self.capture = capture
        self.stat_path = log_dir / f"{name}.stat.csv"
        self.messages_path = log_dir / f"{name}.messages.log"
        self.errors_path = log_dir / f"{name}.errors.log"
        argv += ["-trace_stat", "-stf", str(self.stat_path), "-fd", "1"]
        argv += ["-trace_msg", "-message_file", str(self.messages_path)]
        argv += ["-trace_err", "-error_file", str(self.errors_path)]
        self.process = ManagedProcess.start(name, argv, log_dir)

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: this SIPp's SIP address (a UAS's, as a target)."""
        return f"127.0.0.1:{self.port}"

    def uri(self, user: str = "uas") -> str:
        """SIP URI of this SIPp (as a callee)."""
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{user}@127.0.0.1:{self.port}{suffix}"

    def wait(self, timeout: float) -> SippResult:
        """Wait for SIPp to finish on its own (bounded), stop the capture, return the result."""
        try:
            self.process.wait(timeout)
        finally:
            if self.capture is not None:
                self.capture.stop()
        return self._result()

    def stop(self) -> SippResult:
        """Stop SIPp now (SIGTERM, then SIGKILL) and return what it did so far."""
        self.process.stop()
        if self.capture is not None:
            self.capture.stop()
        return self._result()

    def _result(self) -> SippResult:
        successful, failed = read_stat_counts(self.stat_path)
        code = self.process.returncode
        return SippResult(
            name=self.name,
            returncode=code if code is not None else -1,
            successful=successful,
            failed=failed,
            log_dir=self.log_dir,
            stat_path=self.stat_path,
            messages_path=self.messages_path,
            errors_path=self.errors_path,
            process=self.process,
            capture=self.capture,
        )


def read_stat_counts(stat_path: Path) -> tuple[int, int]:
    """(SuccessfulCall(C), FailedCall(C)) from the last row of a SIPp ``-stf`` file, else (0, 0)."""
    if not stat_path.exists():
        return 0, 0
    rows = [r for r in csv.reader(stat_path.read_text().splitlines(), delimiter=";") if r]
    if len(rows) < 2:
        return 0, 0
    header, last = rows[0], rows[-1]
    return int(last[header.index("SuccessfulCall(C)")]), int(last[header.index("FailedCall(C)")])


def start_uac(
    target: str,
    scenario: Path,
    log_dir: Path,
    *,
    service: str = "bot",
    transport: Transport = "udp",
    calls: int = 1,
    rate: float = 10.0,
    limit: int | None = None,
    timeout_s: float = 60.0,
    capture: bool = False,
    extra_args: Sequence[str] = (),
    name: str = "sipp-uac",
) -> Sipp:
    """Start a SIPp UAC placing ``calls`` calls to ``target`` (``host:port``); returns at once.

    Args:
        target: Where INVITEs go (the server, or a proxy in front of it).
        scenario: Rendered scenario (:func:`uac_scenario`).
        log_dir: Where stat.csv, the message trace, errors and stdout/stderr go.
        service: Request-URI user (``-s``).
        transport: ``udp`` (``-t u1``) or ``tcp`` (``-t t1``).
        calls: Total calls (``-m``).
        rate: New calls per second (``-r``).
        limit: Concurrent calls (``-l``; default: ``calls``).
        timeout_s: SIPp's own global timeout; reaching it is an error (``-timeout_error``).
        capture: Record the RTP arriving at SIPp's media port (``result.capture``; needs dumpcap).
        extra_args: More SIPp arguments.
        name: Log file prefix (unique per ``log_dir``).
    """
    port = free_port(transport)
    media_port = free_port_block()
    rtp_capture = RtpCapture.start(log_dir, [media_port], name=f"{name}-rtp") if capture else None
    argv = [SIPP, target, "-sf", str(scenario), "-s", service]
    argv += _common_args(port, media_port, transport)
    argv += ["-m", str(calls), "-r", str(rate), "-l", str(limit or calls)]
    argv += ["-timeout", f"{timeout_s:g}s", "-timeout_error", *extra_args]
    return Sipp(
        name,
        argv,
        log_dir,
        port=port,
        media_port=media_port,
        transport=transport,
        capture=rtp_capture,
    )


def run_uac(
    target: str,
    scenario: Path,
    log_dir: Path,
    *,
    service: str = "bot",
    transport: Transport = "udp",
    calls: int = 1,
    rate: float = 10.0,
    limit: int | None = None,
    timeout_s: float = 60.0,
    capture: bool = False,
    extra_args: Sequence[str] = (),
    name: str = "sipp-uac",
) -> SippResult:
    """:func:`start_uac` (same arguments), then wait for SIPp to finish (``timeout_s`` + 10 s)."""
    sipp = start_uac(
        target,
        scenario,
        log_dir,
        service=service,
        transport=transport,
        calls=calls,
        rate=rate,
        limit=limit,
        timeout_s=timeout_s,
        capture=capture,
        extra_args=extra_args,
        name=name,
    )
    return sipp.wait(timeout_s + 10.0)


def start_uas(
    log_dir: Path,
    scenario: Path | None = None,
    *,
    transport: Transport = "udp",
    rtp_echo: bool = True,
    calls: int | None = None,
    lifetime_s: float = UAS_LIFETIME_S,
    capture: bool = False,
    extra_args: Sequence[str] = (),
    name: str = "sipp-uas",
) -> Sipp:
    """Start a SIPp UAS on a free port and wait until it listens.

    Args:
        log_dir: Log directory.
        scenario: Rendered :func:`uas_scenario`; None uses SIPp's built-in ``-sn uas`` (PCMU only,
            does not copy Record-Route).
        transport: ``udp`` or ``tcp``.
        rtp_echo: Echo received RTP back to its sender (``-rtp_echo``).
        calls: Exit after this many calls (``-m``); None: run until stopped or ``lifetime_s``.
        lifetime_s: Hard bound on the UAS's life (``-timeout``).
        capture: Record the RTP arriving at its media port.
        extra_args: More SIPp arguments.
        name: Log file prefix.

    Raises:
        PeerError: SIPp did not bind its port within 10 s.
    """
    port = free_port(transport)
    media_port = free_port_block()
    rtp_capture = RtpCapture.start(log_dir, [media_port], name=f"{name}-rtp") if capture else None
    argv = [SIPP, *(["-sf", str(scenario)] if scenario else ["-sn", "uas"])]
    argv += [*_common_args(port, media_port, transport), "-aa", "-timeout", f"{lifetime_s:g}s"]
    if rtp_echo:
        argv.append("-rtp_echo")
    if calls is not None:
        argv += ["-m", str(calls)]
    argv += list(extra_args)
    sipp = Sipp(
        name,
        argv,
        log_dir,
        port=port,
        media_port=media_port,
        transport=transport,
        capture=rtp_capture,
    )
    if not wait_bound(port, transport, READY_TIMEOUT_S):
        sipp.stop()
        raise PeerError(f"{name} did not bind {transport}/{port}; logs: {sipp.process.logs()}")
    return sipp


def _common_args(port: int, media_port: int, transport: Transport) -> list[str]:
    return [
        "-i", "127.0.0.1", "-p", str(port),
        "-mi", "127.0.0.1", "-mp", str(media_port),
        "-t", "t1" if transport == "tcp" else "u1",
        "-nostdin",
    ]  # fmt: skip
