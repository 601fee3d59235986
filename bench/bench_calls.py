"""N concurrent SIPp calls against ONE real ``sipbot run`` in loopback mode (issue 3's benchmark).

    python bench/bench_calls.py [--calls 10,50,100,200,300] [--hold 25] [--rate 40]
                                [--prebuffer-ms 60] [--workdir DIR] [--json FILE]

For each N, a fresh ``python -m sipbot run --local-mode loopback`` (PCMU only) takes N calls
from one SIPp process, each streaming test speech (``rtp_stream``, looping) for ``--hold``
seconds, while dumpcap records SIPp's media port. Loopback returns every inbound 20 ms frame at
once as 24 kHz provider audio, so each frame crosses the whole path both ways: RTP → jitter →
G.711 decode → 8→16 kHz → provider → 16→24 kHz → play → 24→8 kHz → pacer → encode → RTP.

Printed per N (see bench/README.md for how to read them):

* calls OK/failed (SIPp's count; CDR end reasons), the steady window and the calls in it;
* server CPU ms per call-second over the steady window; idle and peak RSS;
* OUR outbound RTP gaps (ms), whole calls: aggregated mean/stdev/p99/p99.9/max, the per-stream
  p99 (median, worst) and max (median, worst, streams above 30 ms); and the steady window's;
* latencies from the CDR lines (ms): inbound (RTP arrival → provider), first audio (provider
  audio into an empty pacer → its first RTP packet), barge-in (flush → next packet; none in
  loopback); and the echo delay heard at the caller (cross-correlation, per call);
* the machine: CPU used by SIPp, dumpcap and everything else (other sessions) in the window.

SIPp's own sending is jittery under load; that is the caller's jitter. Our figure is OUR
outbound stream, whose cadence must not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench._calls import (
    END_MARGIN_S,
    LATENCY_KEYS,
    SETTLE_S,
    STAGGER_MS,
    BenchServer,
    LoadResult,
    latency_figures,
    reasons,
    run_calls,
    write_config,
)
from bench._rtp_stats import ECHO_WINDOW_S, echo_figures, gap_figures, read_capture
from tests.e2e.peers import audio

DEFAULT_CALLS = "10,50,100,200,300"
MIN_STEADY_S = 10.0


def hold_for(n: int, rate: float, hold_s: float) -> float:
    """``hold_s``, lengthened so that the steady window lasts at least MIN_STEADY_S."""
    return max(hold_s, n / rate + STAGGER_MS / 1000 + SETTLE_S + MIN_STEADY_S + END_MARGIN_S)


def analyse(result: LoadResult, *, echo: bool) -> dict[str, Any]:
    """Everything printed for one run, as plain data (also the --json output)."""
    w0 = result.window[0]
    assert result.sipp.capture is not None
    capture = read_capture(
        result.sipp.capture.pcap_path, result.media_port, (w0, w0 + ECHO_WINDOW_S)
    )
    figures: dict[str, Any] = {
        "n": result.n,
        "hold_s": result.hold_s,
        "ok": result.sipp.successful,
        "failed": result.sipp.failed,
        "sipp_exit": result.sipp.returncode,
        "reasons": reasons(result.cdrs),
        "window_s": result.window_s,
        "calls_in_window": result.call_seconds / result.window_s,
        "cpu_ms_per_call_s": result.cpu_ms_per_call_s,
        "server_cores": result.cpu_s["server"] / result.window_s,
        "idle_rss_mb": result.idle_rss_mb,
        "peak_rss_mb": result.peak_rss_mb,
        "gaps": gap_figures(capture, None, result.extra["probe_stalls"]),
        "gaps_steady": gap_figures(capture, result.window, result.extra["probe_stalls"]),
        "cpu_pressure": result.extra["cpu_pressure"],
        "out_missing": capture.out_missing,
        "capture_drops": result.capture_drops,
        "latency": {key: latency_figures(result.cdrs, key) for key in LATENCY_KEYS},
        "underruns_per_call_min": _per_call_minute(result.cdrs, "rtp_underruns"),
        "machine_cores": {k: v / result.window_s for k, v in result.cpu_s.items()},
        "load_average": result.load_average,
        "gc": result.extra["gc"],
    }
    if echo:
        figures["echo"] = echo_figures(capture, w0)
    return figures


def _per_call_minute(cdrs: list[dict[str, Any]], key: str) -> float:
    """A CDR counter per minute of call, over all calls."""
    minutes = sum(c["duration_s"] for c in cdrs) / 60.0
    return sum(c.get(key, 0) for c in cdrs) / minutes if minutes else 0.0


def format_run(f: dict[str, Any]) -> str:
    """The block printed for one N."""
    g, s, lat, m = f["gaps"], f["gaps_steady"], f["latency"], f["machine_cores"]
    lines = [
        f"N={f['n']}: calls OK {f['ok']}, failed {f['failed']} (SIPp exit {f['sipp_exit']}; "
        f"ended: {f['reasons']}); hold {f['hold_s']:.0f} s, steady window {f['window_s']:.1f} s "
        f"with {f['calls_in_window']:.1f} calls",
        f"  server CPU {f['cpu_ms_per_call_s']:.2f} ms per call-second "
        f"({f['server_cores']:.2f} cores); RSS idle {f['idle_rss_mb']:.1f} MB, "
        f"peak {f['peak_rss_mb']:.1f} MB",
    ]
    if g["streams"]:
        lines += [
            f"  outbound gaps ms, {g['streams']} streams, whole calls: mean {g['mean']:.2f} "
            f"stdev {g['stdev']:.2f} p99 {g['p99']:.1f} p99.9 {g['p999']:.1f} max {g['max']:.1f}"
            f" | per stream p99 median {g['stream_p99_median']:.1f} worst "
            f"{g['stream_p99_worst']:.1f}, max median {g['stream_max_median']:.1f}, streams "
            f"with max > 30 ms: {g['streams_max_over_30']}",
            f"  gaps > 30 ms: {g['long_gaps']}, {g['long_gaps_in_stalls']} of them during machine"
            f" stalls (SIPp silent {g['sipp_silences']}x, a probe thread frozen "
            f"{g['probe_stalls']}x, longest {g['machine_stall_max_ms']:.0f} ms); max gap outside"
            f" those {g['max_outside_stalls']:.1f}",
            f"  steady window: mean {s.get('mean', 0):.2f} stdev {s.get('stdev', 0):.2f} "
            f"p99 {s.get('p99', 0):.1f} max {s.get('max', 0):.1f}; seq gaps "
            f"{f['out_missing']}, capture drops {f['capture_drops']}",
        ]
    lines.append("  latency ms (CDR; p50/p99 = median over calls, worst = worst call's p99):")
    for key in LATENCY_KEYS:
        v = lat[key]
        if v["n"]:
            lines.append(
                f"    {key:11} p50 {v['p50']:5.1f}  p99 {v['p99']:5.1f}  worst p99 "
                f"{v['p99_worst']:5.1f}  max {v['max']:6.1f}   ({v['n']} samples, "
                f"{v['calls']} calls)"
            )
        else:
            lines.append(f"    {key:11} no samples")
    lines.append(
        f"  underruns (an item's audio resumed after a gap of silence): "
        f"{f['underruns_per_call_min']:.1f} per call-minute"
    )
    if "echo" in f:
        e = f["echo"]
        lines.append(
            f"  echo delay at the caller ms: p50 {e['p50']:.1f} p99 {e['p99']:.1f} max "
            f"{e['max']:.1f} ({e['calls']} calls, {e['no_echo']} without a clear echo)"
        )
    gc = f["gc"]
    lines.append(
        f"  server GC during the calls: {gc['gen2']} full passes, {gc['over_10ms']} pauses over"
        f" 10 ms, longest {gc['max_ms']:.1f} ms"
    )
    others = ", ".join(f"{k} {v:.2f}" for k, v in m.items() if k != "server")
    lines.append(
        f"  machine (cores used in the window): server {m['server']:.2f}, {others}; "
        f"load average {f['load_average']:.2f}; CPU pressure {_percent(f['cpu_pressure'])}"
    )
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f} %"


def summary_table(runs: list[dict[str, Any]]) -> str:
    """One line per N (whole-call gaps; latency p99 = median over calls)."""
    head = (
        "    N  ok/fail  CPU ms/call-s  RSS idle/peak  gap mean stdev   p99   max  "
        "in p99  1st-audio p99  barge-in p99  echo p50  others cores"
    )
    rows = [head]
    for f in runs:
        g, lat = f["gaps"], f["latency"]
        echo = f.get("echo", {}).get("p50", float("nan"))
        rows.append(
            f"{f['n']:5}  {f['ok']:3}/{f['failed']:<3}  {f['cpu_ms_per_call_s']:13.2f}  "
            f"{f['idle_rss_mb']:5.0f}/{f['peak_rss_mb']:<6.0f}   {g.get('mean', 0):8.2f} "
            f"{g.get('stdev', 0):5.2f} {g.get('p99', 0):5.1f} {g.get('max', 0):5.1f}  "
            f"{lat['inbound'].get('p99', 0):6.1f}  {lat['first_audio'].get('p99', 0):13.1f}  "
            f"{lat['barge_in'].get('p99', 0):12.1f}  {echo:8.1f}  "
            f"{f['machine_cores']['others']:12.2f}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default=DEFAULT_CALLS, help="comma-separated N values")
    parser.add_argument("--hold", type=float, default=25.0, help="seconds per call")
    parser.add_argument("--rate", type=float, default=40.0, help="new calls per second")
    parser.add_argument("--prebuffer-ms", type=int, default=60, help="server.media.prebuffer_ms")
    parser.add_argument(
        "--server-nice", type=int, default=0, help="run the server under nice -n N (diagnosis)"
    )
    parser.add_argument(
        "--ops",
        choices=("on", "off"),
        default="on",
        help="HTTP listener (metrics) and call records: on as shipped, off to measure their cost",
    )
    parser.add_argument(
        "--barge-in",
        choices=("provider", "guard"),
        default="provider",
        help="the agent's barge_in.mode (guard: the Silero barge-in guard runs on every call)",
    )
    parser.add_argument("--workdir", help="keep logs, captures and configs here")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-calls-"))
    workdir.mkdir(parents=True, exist_ok=True)
    speech = audio.make_speech(workdir / "speech")
    config = write_config(
        workdir / "sipbot.yaml",
        {
            "bench": {
                "provider": "local",
                "local": {"mode": "loopback"},
                "barge_in": {"mode": args.barge_in},
            }
        },
        [{"name": "all", "answer": "bench"}],
        prebuffer_ms=args.prebuffer_ms,
        ops=args.ops == "on",
    )
    print(
        f"# bench_calls: {os.cpu_count()} CPUs (shared), load average {os.getloadavg()[0]:.2f}"
        f" at start; loopback, PCMU, pre-buffer {args.prebuffer_ms} ms, {args.rate:g} calls/s;"
        f" server nice {args.server_nice}; metrics+records {args.ops};"
        f" barge-in {args.barge_in}; logs in {workdir}",
        flush=True,
    )
    runs = []
    for n in [int(x) for x in args.calls.split(",")]:
        server = BenchServer(
            workdir, config, f"sipbot-{n}", ["--local-mode", "loopback"], args.server_nice
        )
        try:
            hold = hold_for(n, args.rate, args.hold)
            result = run_calls(
                server, n, rate=args.rate, hold_s=hold, audio=speech.ulaw, workdir=workdir
            )
        finally:
            server.stop()
        figures = analyse(result, echo=True)
        runs.append(figures)
        print(format_run(figures), flush=True)
    print(summary_table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
