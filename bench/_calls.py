"""Running a call benchmark: a real ``sipbot run``, SIPp callers, a capture, CPU, RSS (no test).

Shared by ``bench_calls.py`` (local provider, loopback) and ``bench_providers.py`` (emulated
Gemini / OpenAI). Every process is started with its logs in the work directory and stopped by
its PID (:mod:`tests.e2e.peers.process`); ports come from :mod:`tests.e2e.peers.ports`, and the
server's RTP ports (10000-19999) lie apart from SIPp's (20000-32000).

Figures and where they come from:

* Calls start ``1 / rate`` apart and each starts its audio after a random pause of up to 4 s
  (:func:`staggered`), so caller turns of different calls do not coincide.
* CPU: utime + stime of ``/proc/PID/stat`` over the *steady window* — from when the last call
  should be talking (``n / rate`` + 4 s + 2 s) to just before the first BYE — divided by the
  call-seconds inside that window, from the CDR lines (start, duration) of the calls.
* RSS: ``VmRSS`` of the fresh server 2 s after it is ready (idle), ``VmHWM`` after the calls.
* Machine load: all CPUs' busy time (``/proc/stat``) over the window minus that of the processes
  of the benchmark (server, SIPp, dumpcap, emulators): what other sessions used meanwhile.
* The machine: see :mod:`bench._probe` (per-CPU probe threads' stalls, CPU pressure).
* GC pauses: the server runs through ``bench/_gc_trace.py`` (``sipbot.cli.main`` with a
  ``gc.callbacks`` hook that logs generation-2 passes and passes over 5 ms).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from bench._probe import MachineProbe, cpu_pressure_us
from tests.e2e.peers import sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.peers.process import ManagedProcess

ROOT = Path(__file__).resolve().parent.parent

SERVER_RTP_PORTS = "10000-19999"  # apart from the peers' 20000-32000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 60.0
IDLE_SETTLE_S = 2.0
SETTLE_S = 2.0  # after the last call's audio started, before the steady window
# Each call starts its audio after a random pause up to this long (about one loop of the test
# speech), so that calls are independent: the caller turns of N calls do not all end together.
STAGGER_MS = 4000
END_MARGIN_S = 1.5  # the steady window ends this long before the first BYE
CDR_TIMEOUT_S = 20.0
CDR_MARK = " sipbot.cdr: "
GC_PAUSE = re.compile(r"^gc-pause gen=(\d) ms=([\d.]+) at=([\d.]+)$", re.M)
LATENCY_KEYS = ("inbound", "first_audio", "barge_in")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def status_mb(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` size (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (``/proc/stat``: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:8]) - values[3] - values[4]


def write_config(
    path: Path,
    agents: Mapping[str, Any],
    routes: Sequence[Mapping[str, Any]],
    *,
    prebuffer_ms: int,
    max_calls: int = 1000,
    limits: Mapping[str, Any] | None = None,
    ops: bool = True,
) -> Path:
    """A sipbot config for the benchmark (PCMU only, the server's RTP range, info logging).

    ``limits`` go under ``server.limits``; by default the per-source limits are raised out of
    the way, since one SIPp process places every call from one address. ``ops``: the HTTP side
    listener (metrics, page) on a free loopback port and the call records in SQLite beside the
    config, as shipped; False switches both off (what metrics + records cost is the difference).
    """
    if limits is None:
        limits = {"per_source_calls": max_calls, "per_source_rps": 1e6, "per_source_burst": 10**6}
    config = {
        "server": {
            "sip": {"listen": ["udp:127.0.0.1:0"]},
            "media": {
                "rtp_ports": SERVER_RTP_PORTS,
                "codecs": ["PCMU"],
                "prebuffer_ms": prebuffer_ms,
            },
            "limits": {"max_calls": max_calls, **limits},
            "log_level": "info",
            **(
                {
                    "http": {"listen": f"127.0.0.1:{free_port('tcp')}"},
                    "data_dir": str(path.parent / "data"),
                }
                if ops
                else {"http": "off", "records": {"enabled": False}}
            ),
        },
        "agents": dict(agents),
        "routes": list(routes),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class CallTarget(Protocol):
    """What :func:`run_calls` places calls on: one :class:`BenchServer`, or several workers behind
    a dispatcher (``bench/_workers.py``), whose ``pid`` is then the one counted as "server"."""

    @property
    def address(self) -> str: ...

    @property
    def pid(self) -> int: ...

    idle_rss_mb: float

    def cdrs(self) -> list[dict[str, Any]]: ...

    def gc_pauses(self, since: float) -> dict[str, Any]: ...


class BenchServer:
    """A fresh ``python -m sipbot run`` on a free port; its log holds the CDR lines."""

    def __init__(
        self, workdir: Path, config: Path, name: str, extra: Sequence[str] = (), nice: int = 0
    ):
        self.port = free_port("both")
        argv = ["nice", "-n", str(nice)] if nice else []
        argv += [sys.executable, str(ROOT / "bench" / "_gc_trace.py"), "run", "-c", str(config)]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--rtp-ports", SERVER_RTP_PORTS]
        # no OPENBLAS_NUM_THREADS here: the server sets its BLAS threads itself (media/blas.py),
        # and the figures are for the server as shipped (an old tree: set it in the environment)
        self.process = ManagedProcess.start(name, [*argv, *extra], workdir, cwd=ROOT)
        self.process.wait_for_line(r"^sipbot ready", READY_TIMEOUT_S, stream="stderr")
        time.sleep(IDLE_SETTLE_S)
        self.idle_rss_mb = status_mb(self.pid, "VmRSS")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cdrs(self) -> list[dict[str, Any]]:
        """The CDR lines logged so far, parsed."""
        log = self.process.read_log("stderr")
        return [
            json.loads(line.split(CDR_MARK, 1)[1]) for line in log.splitlines() if CDR_MARK in line
        ]

    def gc_pauses(self, since: float) -> dict[str, Any]:
        """Generation-2 passes and the longest pause (ms) logged after ``since`` (epoch s)."""
        pauses = [
            (int(gen), float(ms))
            for gen, ms, at in GC_PAUSE.findall(self.process.read_log("stderr"))
            if float(at) >= since
        ]
        return {
            "gen2": sum(1 for gen, _ in pauses if gen == 2),
            "max_ms": max((ms for _, ms in pauses), default=0.0),
            "over_10ms": sum(1 for _, ms in pauses if ms > 10.0),
        }

    def stop(self) -> int:
        """SIGTERM, bounded wait; the exit code."""
        return self.process.stop(timeout=15.0)


@dataclass
class LoadResult:
    """One load run: N calls of ``hold_s`` against one server."""

    n: int
    hold_s: float
    window: tuple[float, float]  # epoch seconds
    sipp: sipp.SippResult
    cdrs: list[dict[str, Any]]
    cpu_s: dict[str, float]  # CPU seconds over the window per process, "others" = the rest
    call_seconds: float  # call-seconds inside the window (from the CDRs)
    peak_rss_mb: float
    idle_rss_mb: float
    capture_drops: int | None
    media_port: int
    load_average: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window_s(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def cpu_ms_per_call_s(self) -> float:
        return 1000.0 * self.cpu_s["server"] / self.call_seconds if self.call_seconds else 0.0


def run_calls(
    server: CallTarget,
    n: int,
    *,
    rate: float,
    hold_s: float,
    audio: Path,
    workdir: Path,
    service: str = "bot",
    other_pids: Mapping[str, int] | None = None,
) -> LoadResult:
    """Place ``n`` concurrent SIPp calls (PCMU, ``audio`` looping) on ``server``; measure."""
    scenario = staggered(
        sipp.uac_scenario(
            workdir / f"uac-{service}-{n}.xml", audio, "PCMU", hold_s=hold_s, audio_loops=-1
        )
    )
    probe = MachineProbe()
    probe.start()
    started = time.time()
    uac = sipp.start_uac(
        server.address, scenario, workdir, service=service, calls=n, rate=rate, limit=n,
        timeout_s=hold_s + n / rate + 60.0, capture=True, name=f"sipp-{service}-{n}",
    )  # fmt: skip
    assert uac.capture is not None
    pids = {"server": server.pid, "sipp": uac.process.pid, "dumpcap": uac.capture.process.pid}
    pids.update(other_pids or {})
    window = (started + n / rate + STAGGER_MS / 1000 + SETTLE_S, started + hold_s - END_MARGIN_S)
    if window[1] - window[0] < 3.0:
        raise ValueError(
            f"no steady window: hold {hold_s} s is too short for {n} calls at {rate}/s"
        )
    time.sleep(max(0.0, window[0] - time.time()))
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    busy_before, load_average = busy_ticks(), os.getloadavg()[0]
    pressure_before = cpu_pressure_us()
    time.sleep(max(0.0, window[1] - time.time()))
    after = {name: cpu_ticks(pid) for name, pid in pids.items()}
    busy = busy_ticks() - busy_before
    pressure_after = cpu_pressure_us()
    cpu_s = {name: (after[name] - before[name]) / CLOCK_TICKS for name in pids}
    cpu_s["others"] = max(0.0, busy / CLOCK_TICKS - sum(cpu_s.values()))
    result = uac.wait(hold_s + n / rate + 70.0)
    probe.stop()
    cdrs = _wait_cdrs(server, result.successful)
    pressure = None
    if pressure_before is not None and pressure_after is not None:
        pressure = (pressure_after - pressure_before) / 1e6 / (window[1] - window[0])
    return LoadResult(
        n=n,
        hold_s=hold_s,
        window=window,
        sipp=result,
        cdrs=cdrs,
        cpu_s=cpu_s,
        call_seconds=_call_seconds(cdrs, window),
        peak_rss_mb=status_mb(server.pid, "VmHWM"),
        idle_rss_mb=server.idle_rss_mb,
        capture_drops=_capture_drops(uac.capture.process),
        media_port=uac.media_port,
        load_average=load_average,
        extra={
            "gc": server.gc_pauses(started),
            "probe_stalls": probe.stalls,
            "cpu_pressure": pressure,
        },
    )


def staggered(scenario: Path) -> Path:
    """Put a random pause (uniform, 0..STAGGER_MS) before the scenario's ``rtp_stream``."""
    text = scenario.read_text()
    anchor = "  <nop>\n    <action>\n      <exec rtp_stream="
    if text.count(anchor) != 1:
        raise ValueError(f"{scenario}: cannot find the rtp_stream action to stagger")
    pause = f'  <pause distribution="uniform" min="0" max="{STAGGER_MS}"/>\n'
    scenario.write_text(text.replace(anchor, pause + anchor))
    return scenario


def _wait_cdrs(server: CallTarget, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + CDR_TIMEOUT_S
    cdrs = server.cdrs()
    while len(cdrs) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        cdrs = server.cdrs()
    return cdrs


def _call_seconds(cdrs: Sequence[Mapping[str, Any]], window: tuple[float, float]) -> float:
    total = 0.0
    for cdr in cdrs:
        start, end = cdr["start"], cdr["start"] + cdr["duration_s"]
        total += max(0.0, min(end, window[1]) - max(start, window[0]))
    return total


def _capture_drops(process: ManagedProcess) -> int | None:
    match = re.search(r"dropped on interface '[^']+': \d+/(\d+)", process.read_log("stderr"))
    return int(match.group(1)) if match else None


def latency_figures(cdrs: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """One CDR latency measure over the calls that have samples of it.

    ``p50``/``p99`` are the medians over calls of the per-call p50/p99, ``p99_worst`` the worst
    call's p99 and ``max`` the largest value of any call.
    """
    rows = [c["latency_ms"][key] for c in cdrs if c.get("latency_ms", {}).get(key, {}).get("n")]
    if not rows:
        return {"calls": 0, "n": 0}
    return {
        "calls": len(rows),
        "n": sum(r["n"] for r in rows),
        "p50": float(np.median([r["p50"] for r in rows])),
        "p99": float(np.median([r["p99"] for r in rows])),
        "p99_worst": max(r["p99"] for r in rows),
        "max": max(r["max"] for r in rows),
    }


def reasons(cdrs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many calls ended for each reason."""
    counts: dict[str, int] = {}
    for cdr in cdrs:
        counts[cdr["reason"]] = counts.get(cdr["reason"], 0) + 1
    return counts
