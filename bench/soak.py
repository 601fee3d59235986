"""Soak: N calls up at all times for M minutes, with churn, against ONE real ``sipbot run``.

    python bench/soak.py [--calls 20] [--minutes 30] [--hold 20] [--sample 10]
                         [--workdir DIR] [--json FILE]

One SIPp process keeps ``--calls`` calls up (``-l N``), each streaming test speech (looping)
for ``--hold`` seconds before its BYE, and starts new ones as old ones end (``-r N/hold``), so
about ``N * 60 / hold`` calls a minute come and go. The server is ``sipbot run`` with the local
echo agent, recordings and call records on (SQLite), its HTTP listener for the metrics.

Every ``--sample`` seconds: the server's RSS (``VmRSS``), open file descriptors
(``/proc/PID/fd``), asyncio tasks (``sipbot_asyncio_tasks``), UDP ports it holds, and calls up
(``sipbot_calls_active``). After warm-up (the first 20 % of the run, at least one minute) the
figures must stay within bounds: RSS growth <= ``--rss-growth-mb`` from the warm-up's maximum,
fds, tasks and ports <= their warm-up maximum + the slack for the calls' variation
(``--warm-up`` sets another warm-up). RSS must also level off: its growth over the second half
of the time after warm-up (the maximum there against the first half's maximum, see
:func:`rss_plateau`) must stay <= ``--rss-late-growth-mb``: memory an allocator keeps or a
cache fills grows early and stops, a leak goes on growing with the calls. Once SIPp
has ended every call, the server must be back where it was idle: no RTP port, fds and tasks
equal to the idle figures. Printed as a table and a verdict line; exit code 1 on a violation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench._calls import BenchServer, busy_ticks, cpu_ticks, status_mb
from bench._plateau import rss_plateau
from tests.e2e.faults import metric
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.ports import udp_ports_of

RTP_RANGE = (10000, 19999)  # bench._calls.SERVER_RTP_PORTS
SETTLE_AFTER_S = 5.0  # after the last call ended, before the "after" sample
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One reading of the server's resources."""

    t_s: float
    rss_mb: float
    fds: int
    tasks: int
    udp_ports: int
    rtp_ports: int
    calls_up: int
    calls_total: int
    cpu_s: float


class Soak:
    def __init__(self, workdir: Path, recordings: bool) -> None:
        self.workdir = workdir
        self.http_port = 0
        config = self._config(recordings)
        self.server = BenchServer(workdir, config, "sipbot-soak")
        self.started = time.monotonic()

    def _config(self, recordings: bool) -> Path:
        from tests.e2e.peers.ports import free_port

        self.http_port = free_port("tcp")
        rec = self.workdir / "recordings"
        rec.mkdir(exist_ok=True)
        agent = {"provider": "local", "local": {"mode": "echo"}, "recording": recordings}
        config = {
            "server": {
                "sip": {"listen": ["udp:127.0.0.1:0"]},
                "media": {"rtp_ports": "10000-19999", "codecs": ["PCMU"]},
                "limits": {
                    "max_calls": 1000,
                    "per_source_calls": 1000,
                    "per_source_rps": 1e6,
                    "per_source_burst": 10**6,
                },
                "http": {"listen": f"127.0.0.1:{self.http_port}"},
                "data_dir": str(self.workdir / "data"),
                "recordings_dir": str(rec),
                "log_level": "info",
            },
            "agents": {"echo": agent},
            "routes": [{"name": "default", "answer": "echo"}],
        }
        path = self.workdir / "soak.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5.0) as response:
            return str(response.read().decode())

    def sample(self) -> Sample:
        pid = self.server.pid
        # the process's own figures before the HTTP request: while the server still holds the
        # metrics request's socket it has one fd more (an "after" of idle + 1 now and then)
        rss_mb = round(status_mb(pid, "VmRSS"), 1)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        ports = list(udp_ports_of(pid))
        text = self.metrics()
        calls_up = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("sipbot_calls_active{")
        )
        calls_total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("sipbot_calls_total{")
        )
        return Sample(
            t_s=round(time.monotonic() - self.started, 1),
            rss_mb=rss_mb,
            fds=fds,
            tasks=int(metric(text, "sipbot_asyncio_tasks")),
            udp_ports=len(ports),
            rtp_ports=sum(1 for p in ports if RTP_RANGE[0] <= p <= RTP_RANGE[1]),
            calls_up=int(calls_up),
            calls_total=int(calls_total),
            cpu_s=round(cpu_ticks(pid) / CLOCK_TICKS, 1),
        )


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    speech = audio.make_speech(workdir / "speech")
    soak = Soak(workdir, recordings=not args.no_recordings)
    idle = soak.sample()
    duration_s = args.minutes * 60.0
    scenario = sipp.uac_scenario(
        workdir / "uac.xml", speech.ulaw, "PCMU", hold_s=args.hold, audio_loops=-1
    )
    rate = args.calls / args.hold
    total = int(duration_s * rate)
    busy0, t0 = busy_ticks(), time.monotonic()
    uac = sipp.start_uac(
        soak.server.address, scenario, workdir, calls=total, rate=rate, limit=args.calls,
        timeout_s=duration_s + args.hold + 120, name="sipp-soak",
    )  # fmt: skip
    samples = [idle]
    while uac.process.running():
        time.sleep(args.sample)
        samples.append(soak.sample())
        print(" ".join(f"{k}={v}" for k, v in asdict(samples[-1]).items()), flush=True)
    result = uac.wait(30.0)
    machine_cores = (busy_ticks() - busy0) / CLOCK_TICKS / (time.monotonic() - t0)
    time.sleep(SETTLE_AFTER_S)
    after = soak.sample()
    cdrs = soak.server.cdrs()
    code = soak.server.stop()
    records = len(list((workdir / "recordings").glob("*.wav")))
    return judge(args, idle, samples, after, result, cdrs, code, records, machine_cores)


def judge(
    args: argparse.Namespace,
    idle: Sample,
    samples: list[Sample],
    after: Sample,
    result: sipp.SippResult,
    cdrs: list[dict[str, object]],
    exit_code: int,
    recordings: int,
    machine_cores: float,
) -> dict[str, object]:
    """The figures and the verdicts (see the module docstring)."""
    warm_s = args.warm_up if args.warm_up is not None else max(60.0, 0.2 * args.minutes * 60)
    warm = [s for s in samples[1:] if s.t_s <= warm_s] or samples[1:2]
    steady = [s for s in samples[1:] if s.t_s > warm_s]
    slack = max(4, args.calls // 5)  # calls up vary by a few as they churn
    bounds = {
        "rss_mb": max(s.rss_mb for s in warm) + args.rss_growth_mb,
        "fds": max(s.fds for s in warm) + 2 * slack,
        "tasks": max(s.tasks for s in warm) + 4 * slack,
        "udp_ports": max(s.udp_ports for s in warm) + slack,
    }
    worst = {k: max((getattr(s, k) for s in steady), default=0) for k in bounds}
    reasons: dict[str, int] = {}
    for cdr in cdrs:
        reasons[str(cdr["reason"])] = reasons.get(str(cdr["reason"]), 0) + 1
    problems = [f"{k} {worst[k]} > {bounds[k]}" for k in bounds if worst[k] > bounds[k]]
    plateau = rss_plateau([(s.t_s, s.rss_mb, s.calls_total) for s in steady])
    if plateau["late_growth_mb"] > args.rss_late_growth_mb:
        problems.append(
            f"RSS still growing after warm-up: +{plateau['late_growth_mb']} MB in the second "
            f"half ({plateau['late_kb_per_call']} kB per call) > {args.rss_late_growth_mb} MB"
        )
    if after.rtp_ports:
        problems.append(f"{after.rtp_ports} RTP ports still held after the calls")
    if after.fds > idle.fds or after.tasks > idle.tasks:
        problems.append(f"after the calls fds {after.fds} (idle {idle.fds}), tasks {after.tasks} "
                        f"(idle {idle.tasks})")  # fmt: skip
    if result.failed or len(cdrs) != result.successful:
        problems.append(f"{result.failed} calls failed, {len(cdrs)} records of {result.successful}")
    if exit_code != 0:
        problems.append(f"server exit code {exit_code}")
    rss_after_warm = [s.rss_mb for s in steady]
    return {
        "calls": args.calls,
        "minutes": args.minutes,
        "hold_s": args.hold,
        "calls_ok": result.successful,
        "calls_failed": result.failed,
        "records": len(cdrs),
        "recordings": recordings,
        "reasons": reasons,
        "idle": asdict(idle),
        "after": asdict(after),
        "warm_up_s": warm_s,
        "bounds": bounds,
        "worst_after_warm_up": worst,
        "rss_mb_after_warm_up": (
            [min(rss_after_warm), max(rss_after_warm)] if rss_after_warm else []
        ),
        "rss_plateau": plateau,
        "machine_cores_busy": round(machine_cores, 2),
        "load_average": os.getloadavg()[0],
        "problems": problems,
        "samples": [asdict(s) for s in samples],
    }


def parser() -> argparse.ArgumentParser:
    """The command line (also what the suite's short soak passes to :func:`run`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds per call")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    # defaults: the 30-minute run at 20 calls after the fix of 2026-12-02 grew 2.1 MB after
    # warm-up, 1.1 MB in the second half (before it: 20 MB and 10 MB, ~50 kB per call)
    parser.add_argument("--rss-growth-mb", type=float, default=5.0)
    parser.add_argument(
        "--rss-late-growth-mb",
        type=float,
        default=2.5,
        help="RSS growth allowed in the second half after warm-up (the plateau)",
    )
    parser.add_argument(
        "--warm-up", type=float, help="seconds (default: 20 %% of the run, at least 60)"
    )
    parser.add_argument("--no-recordings", action="store_true")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    return parser


def main() -> None:
    args = parser().parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sipbot-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    figures = run(args, workdir)
    summary = {k: v for k, v in figures.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    problems = [str(p) for p in figures["problems"]]  # type: ignore[attr-defined]
    verdict = "FAIL: " + "; ".join(problems) if problems else "OK"
    print(f"soak {args.calls} calls x {args.minutes:g} min: {verdict}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
