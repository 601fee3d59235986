"""Calls per host: W ``sipbot run`` workers behind Kamailio's dispatcher (issue 13, item 4).

    python bench/bench_workers.py [--workers W] [--calls 100,200,400] [--hold 25] [--rate 40]
                                  [--dispatch rr|load] [--worker-nice N] [--no-baseline]
                                  [--find-max [--start N] [--steps K] [--resolution C]]
                                  [--workdir DIR] [--json FILE]

The harness of ``bench_calls.py`` (``bench/_calls.py``: one SIPp process, looping test speech,
staggered starts, dumpcap on SIPp's media port, the steady window, CPU from ``/proc``, probe
threads), with the calls placed on W workers (default: one per core) behind
``deploy/kamailio-dispatcher.cfg`` (``bench/_workers.py``; ``--dispatch rr`` round robin as
shipped, ``load`` call-load distribution). Every worker runs ``--local-mode loopback``, PCMU only,
on its own SIP port, RTP range and HTTP port. Then, as the reference, the same on ONE worker
without Kamailio (unless ``--no-baseline``; what ``bench_calls.py`` measures) with N/W calls.

A run **holds the pacing target** when every call succeeded and OUR outbound gaps over whole
calls (all streams together) have p99 ≤ 22 ms and max ≤ 30 ms. Printed per run: the
``bench_calls.py`` block (workers' CPU summed as "server"; RSS = the largest worker's), then the
calls, call-seconds and CPU per call-second of each worker, the workers' total, and Kamailio's
CPU: cores in the steady window (only OPTIONS probes: no calls start or end in it) and ms per
call over the whole run (INVITE, ACK, BYE through it). At the end:

* calls per host = the largest N that held the target with W workers, and for one worker;
* **ratio** = calls per host / (W × calls of one worker), both at the target. With a list of N
  these are lower bounds unless some larger N failed; ``--find-max`` searches both by stepping N
  (× 1.5 up until a run fails, ÷ 1.5 down until one holds, then halving the interval) for at most
  ``--steps`` runs each, stopping when the interval is within ``--resolution`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench._calls import (
    BenchServer,
    CallTarget,
    LoadResult,
    _call_seconds,
    run_calls,
    write_config,
)
from bench._workers import DISPATCH, WorkerPool
from bench.bench_calls import analyse, format_run, hold_for
from tests.e2e.peers import audio

TARGET_P99_MS = 22.0
TARGET_MAX_MS = 30.0
GROWTH = 1.5  # --find-max: the step factor before a failing (or a passing) N is known


def meets_target(f: dict[str, Any]) -> bool:
    """Every call succeeded and whole-call gaps p99 ≤ 22 ms, max ≤ 30 ms."""
    g = f["gaps"]
    return bool(
        f["ok"] == f["n"]
        and f["failed"] == 0
        and g.get("streams", 0) >= f["n"]
        and g["p99"] <= TARGET_P99_MS
        and g["max"] <= TARGET_MAX_MS
    )


def _worker_figures(result: LoadResult, cdrs: list[dict[str, Any]], cpu_s: float) -> dict[str, Any]:
    call_s = _call_seconds(cdrs, result.window)
    return {
        "calls": len(cdrs),
        "calls_in_window": call_s / result.window_s,
        "cores": cpu_s / result.window_s,
        "cpu_ms_per_call_s": 1000.0 * cpu_s / call_s if call_s else 0.0,
    }


class Bench:
    """Runs one N on W workers (or one worker direct) and keeps the figures."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.speech = audio.make_speech(workdir / "speech")
        self.config = write_config(
            workdir / "sipbot.yaml",
            {"bench": {"provider": "local", "local": {"mode": "loopback"}}},
            [{"name": "all", "answer": "bench"}],
            prebuffer_ms=args.prebuffer_ms,
        )
        self.runs: list[dict[str, Any]] = []

    def run(self, workers: int, n: int) -> dict[str, Any]:
        """``n`` calls on ``workers`` workers behind Kamailio, or on one worker direct (0)."""
        hold = hold_for(n, self.args.rate, self.args.hold)
        name = f"w{workers}-n{n}-{len(self.runs)}"
        extra = ["--local-mode", "loopback"]
        if workers == 0:
            server = BenchServer(
                self.workdir, self.config, f"sipbot-{name}", extra, self.args.worker_nice
            )
            try:
                result = self._calls(server, n, hold, name, {})
                per_worker = [
                    _worker_figures(result, result.cdrs, result.cpu_s["server"])
                    | {"peak_rss_mb": result.peak_rss_mb}
                ]
            finally:
                server.stop()
            figures = analyse(result, echo=True)
            figures["kamailio"] = None
        else:
            pool = WorkerPool(
                self.workdir,
                self.config,
                f"sipbot-{name}",
                workers,
                extra,
                self.args.dispatch,
                nice=self.args.worker_nice,
            )
            try:
                kam_before, t0 = pool.kamailio_cpu_s(), time.time()
                result = self._calls(pool, n, hold, name, pool.other_pids())
                kam_s = pool.kamailio_cpu_s() - kam_before
                run_s = time.time() - t0
                peaks = pool.peak_rss_mb()
                worker_cpu = [result.cpu_s.pop("server")]
                worker_cpu += [result.cpu_s.pop(f"worker{i}") for i in range(1, workers)]
                kam_window = sum(
                    result.cpu_s.pop(k) for k in list(result.cpu_s) if k.startswith("kamailio-")
                )
                # "server" = every worker: LoadResult.cpu_ms_per_call_s becomes the workers' total
                result.cpu_s = {"server": sum(worker_cpu), "kamailio": kam_window, **result.cpu_s}
                result.peak_rss_mb = max(peaks)
                per_worker = [
                    _worker_figures(result, w.cdrs(), cpu) | {"peak_rss_mb": peak}
                    for w, cpu, peak in zip(pool.workers, worker_cpu, peaks, strict=True)
                ]
            finally:
                pool.stop()
            figures = analyse(result, echo=True)
            calls_s = kam_s - pool.kamailio_idle_cores * run_s  # what the calls added
            figures["kamailio"] = {
                "cores_window": kam_window / result.window_s,
                "idle_cores": pool.kamailio_idle_cores,
                "cpu_s_run": kam_s,
                "run_s": run_s,
                "ms_per_call": 1000.0 * max(0.0, calls_s) / n,
            }
        figures.update(
            workers=max(workers, 1),
            mode="direct" if workers == 0 else f"kamailio-{self.args.dispatch}",
            per_worker=per_worker,
        )
        figures["met"] = meets_target(figures)
        self.runs.append(figures)
        print(format_workers(figures), flush=True)
        return figures

    def _calls(
        self, target: CallTarget, n: int, hold: float, name: str, others: dict[str, int]
    ) -> LoadResult:
        """The calls; ``name`` (Request-URI user) keeps each run's SIPp files apart."""
        return run_calls(
            target, n, rate=self.args.rate, hold_s=hold, audio=self.speech.ulaw,
            workdir=self.workdir, service=f"bot-{name}", other_pids=others,
        )  # fmt: skip


def format_workers(f: dict[str, Any]) -> str:
    """bench_calls' block for the run, then the per-worker and Kamailio lines and the verdict."""
    lines = [f"[{f['mode']}, {f['workers']} worker(s)] " + format_run(f)]
    for i, w in enumerate(f["per_worker"]):
        lines.append(
            f"  worker {i}: {w['calls']} calls ({w['calls_in_window']:.1f} in the window), "
            f"{w['cpu_ms_per_call_s']:.2f} ms CPU per call-second, {w['cores']:.2f} cores, "
            f"peak RSS {w['peak_rss_mb']:.0f} MB"
        )
    if f["kamailio"]:
        k = f["kamailio"]
        lines.append(
            f"  kamailio: {k['cores_window']:.3f} cores in the steady window, "
            f"{k['idle_cores']:.4f} idle; {k['ms_per_call']:.2f} ms CPU per call over the run "
            f"({k['cpu_s_run']:.3f} s in {k['run_s']:.0f} s, less the idle rate)"
        )
    g = f["gaps"]
    lines.append(
        f"  => target (all calls OK, gap p99 <= {TARGET_P99_MS:g}, max <= {TARGET_MAX_MS:g} ms):"
        f" {'HELD' if f['met'] else 'MISSED'} (p99 {g.get('p99', float('nan')):.1f}, max "
        f"{g.get('max', float('nan')):.1f}, max outside machine stalls "
        f"{g.get('max_outside_stalls', float('nan')):.1f})"
    )
    return "\n".join(lines)


def find_max(run: Callable[[int], dict[str, Any]], start: int, steps: int, resolution: int) -> None:
    """Step N (see the module docstring) for at most ``steps`` runs of ``run``."""
    held: int | None = None
    missed: int | None = None
    n = start
    for _ in range(steps):
        if run(n)["met"]:
            held = max(held or 0, n)
        else:
            missed = n if missed is None else min(missed, n)
        if missed is None:
            assert held is not None
            n = int(held * GROWTH) + 1
        elif held is None:
            n = int(missed / GROWTH)
            if n < 1:
                return
        elif missed - held <= resolution:
            return
        else:
            n = (held + missed) // 2


def best(runs: list[dict[str, Any]], mode_direct: bool) -> tuple[int | None, int | None]:
    """(largest N that held the target, smallest larger N that missed it) among the runs of one
    kind (direct or behind Kamailio); a smaller N that missed on a noisy machine is ignored."""
    mine = [f for f in runs if (f["mode"] == "direct") == mode_direct]
    held = max((f["n"] for f in mine if f["met"]), default=None)
    missed = [f["n"] for f in mine if not f["met"] and (held is None or f["n"] > held)]
    return held, min(missed, default=None)


def summary(runs: list[dict[str, Any]], workers: int) -> tuple[str, dict[str, Any]]:
    """The table of runs and the calls-per-host figures with the ratio."""
    rows = [
        "mode            W      N  ok/fail  gap p99    max  target  CPU ms/call-s: total"
        " (per worker)  kamailio ms/call  others cores"
    ]
    for f in runs:
        pw = [w["cpu_ms_per_call_s"] for w in f["per_worker"]]
        kam = f"{f['kamailio']['ms_per_call']:.2f}" if f["kamailio"] else "-"
        spread = f"({min(pw):.2f}-{max(pw):.2f})"
        rows.append(
            f"{f['mode']:14} {f['workers']:2} {f['n']:6}  {f['ok']:3}/{f['failed']:<3} "
            f"{f['gaps'].get('p99', 0):8.1f} {f['gaps'].get('max', 0):6.1f}  "
            f"{'held' if f['met'] else 'MISSED':6}  {f['cpu_ms_per_call_s']:13.2f} {spread:15}"
            f"  {kam:>16}  {f['machine_cores']['others']:12.2f}"
        )
    host, host_missed = best(runs, mode_direct=False)
    one, one_missed = best(runs, mode_direct=True)
    ratio = host / (workers * one) if host and one else None
    totals = {
        "calls_per_host": host,
        "calls_per_host_first_missed": host_missed,
        "calls_one_worker": one,
        "calls_one_worker_first_missed": one_missed,
        "ratio": ratio,
    }

    def bound(held: int | None, missed: int | None) -> str:
        if held is None:
            return "none held" + (f" (from N={missed} down)" if missed else "")
        return f"{held}" + (
            f" (N={missed} missed)" if missed else " (a lower bound: no larger N was run)"
        )

    rows += [
        f"calls per host at the target with {workers} workers: {bound(host, host_missed)}",
        f"calls of one worker (direct) at the target: {bound(one, one_missed)}",
        "ratio calls per host / (W x one worker): "
        + (f"{ratio:.2f} = {host} / ({workers} x {one})" if ratio is not None else "n/a"),
    ]
    return "\n".join(rows), totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="workers (default: cores)"
    )
    parser.add_argument(
        "--calls", default="100,200,400", help="comma-separated N (calls on the whole host)"
    )
    parser.add_argument("--hold", type=float, default=25.0, help="seconds per call")
    parser.add_argument("--rate", type=float, default=40.0, help="new calls per second")
    parser.add_argument("--prebuffer-ms", type=int, default=60, help="server.media.prebuffer_ms")
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="run every worker under nice -n N (sipbot@.service uses Nice=-10; default 0 as"
        " bench_calls.py)",
    )
    parser.add_argument("--dispatch", choices=DISPATCH, default="rr", help="rr or call-load")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the reference: ONE worker without Kamailio at N/W calls",
    )
    parser.add_argument(
        "--find-max", action="store_true", help="search the largest N holding the target"
    )
    parser.add_argument("--start", type=int, help="--find-max: first N (default: first --calls)")
    parser.add_argument("--steps", type=int, default=5, help="--find-max: runs per search")
    parser.add_argument(
        "--resolution", type=int, default=20, help="--find-max: stop within this many calls"
    )
    parser.add_argument("--workdir", help="keep logs, captures and configs here")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    if args.workers < 1 or args.steps < 1 or args.resolution < 1:
        parser.error("--workers, --steps and --resolution must be at least 1")
    calls = [int(x) for x in args.calls.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-workers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    print(
        f"# bench_workers: {os.cpu_count()} CPUs (shared), load average "
        f"{os.getloadavg()[0]:.2f} at start; {args.workers} workers behind Kamailio "
        f"(deploy/kamailio-dispatcher.cfg, dispatch {args.dispatch}), loopback, PCMU, "
        f"pre-buffer {args.prebuffer_ms} ms, {args.rate:g} calls/s; worker nice "
        f"{args.worker_nice}; baseline {'none' if args.no_baseline else 'direct'};"
        f" logs in {workdir}",
        flush=True,
    )
    direct = not args.no_baseline
    if args.find_max:
        start = args.start or calls[0]
        find_max(lambda n: bench.run(args.workers, n), start, args.steps, args.resolution)
        if direct:
            held, missed = best(bench.runs, mode_direct=False)
            one_start = max(1, round((held or missed or start) / args.workers))
            find_max(lambda n: bench.run(0, n), one_start, args.steps, args.resolution)
    else:
        for n in calls:
            bench.run(args.workers, n)
        if direct:
            for n in calls:
                bench.run(0, max(1, round(n / args.workers)))
    table, totals = summary(bench.runs, args.workers)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": bench.runs, **totals}, indent=1))


if __name__ == "__main__":
    main()
