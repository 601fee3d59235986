"""Overload: twice the per-process capacity offered to ONE ``sipbot run``, then recovery.

    python bench/bench_overload.py --capacity C [--factor 2] [--hold 30] [--rate 40]
                                   [--workdir DIR] [--json FILE]

``C`` is the capacity measured with ``bench/bench_calls.py`` on the same machine (the most calls
whose outbound gap p99 stays <= 22 ms); the server is configured with ``limits.max_calls: C``,
as an operator would. Loopback agent, PCMU, as in ``bench_calls.py``.

1. Overload: one SIPp process offers ``factor * C`` calls at ``--rate`` per second, each
   streaming speech for ``--hold`` seconds once answered; a refused call ACKs its 503 and ends.
   Printed: calls answered and refused, the share of 503s that carry Retry-After, the time from
   INVITE to 503 (p50/p99/max, from SIPp's message trace), and the admitted calls' outbound
   gaps over the steady window (all admitted calls talking, the excess refused).
2. Recovery: once those calls have ended, ``C`` calls again: all must be answered, with the same
   gap figures.

Exit code 1 when a refusal lacked Retry-After, when fewer than ``C`` calls were answered under
overload or more than ``C`` were up at once, or when a recovery call failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench._calls import BenchServer, busy_ticks, write_config
from bench._rtp_stats import gap_figures, read_capture, sipp_silences
from tests.e2e.faults import admission, overload_scenario
from tests.e2e.peers import audio, sipp

SETTLE_S = 2.0
END_MARGIN_S = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def offer(
    server: BenchServer,
    workdir: Path,
    speech: Path,
    *,
    calls: int,
    rate: float,
    hold_s: float,
    name: str,
) -> dict[str, Any]:
    """Offer ``calls`` calls; the admission counts and the admitted calls' gap figures."""
    scenario = overload_scenario(
        sipp.uac_scenario(workdir / f"{name}.xml", speech, "PCMU", hold_s=hold_s, audio_loops=-1)
    )
    started = time.time()
    busy0, load0 = busy_ticks(), os.getloadavg()[0]
    uac = sipp.start_uac(
        server.address, scenario, workdir, calls=calls, rate=rate, limit=calls,
        timeout_s=hold_s + calls / rate + 60.0, capture=True, name=name,
    )  # fmt: skip
    result = uac.wait(hold_s + calls / rate + 70.0)
    elapsed = time.time() - started
    window = (started + calls / rate + SETTLE_S, started + hold_s - END_MARGIN_S)
    assert result.capture is not None
    capture = read_capture(result.capture.pcap_path, uac.media_port, (window[0], window[0] + 1))
    got = admission(uac.messages_path)
    return {
        "offered": calls,
        "answered": got.answered,
        "refused_503": got.refused,
        "with_retry_after": got.retry_after,
        "other_finals": got.other,
        "refusal_ms": {
            "p50": round(got.refusal_p(50), 1),
            "p99": round(got.refusal_p(99), 1),
            "max": round(max(got.refusal_ms, default=0.0), 1),
        },
        "sipp_failed": result.failed,
        "steady_window_s": round(window[1] - window[0], 1),
        "gaps_steady": gap_figures(capture, window, sipp_silences(capture)),
        "machine_cores_busy": round((busy_ticks() - busy0) / CLOCK_TICKS / elapsed, 2),
        "load_average": load0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--capacity", type=int, required=True, help="measured calls per process")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sipbot-overload-"))
    workdir.mkdir(parents=True, exist_ok=True)
    speech = audio.make_speech(workdir / "speech").ulaw
    config = write_config(
        workdir / "overload.yaml",
        {"bench": {"provider": "local", "local": {"mode": "loopback"}}},
        [{"name": "default", "answer": "bench"}],
        prebuffer_ms=60,
        max_calls=args.capacity,
    )
    offered = round(args.capacity * args.factor)
    hold_s = max(args.hold, offered / args.rate + SETTLE_S + END_MARGIN_S + 10.0)
    server = BenchServer(workdir, config, "sipbot-overload", ["--local-mode", "loopback"])
    try:
        overload = offer(
            server, workdir, speech, calls=offered, rate=args.rate, hold_s=hold_s, name="over"
        )
        time.sleep(2.0)
        recovery = offer(
            server,
            workdir,
            speech,
            calls=args.capacity,
            rate=args.rate,
            hold_s=hold_s,
            name="recovery",
        )
    finally:
        code = server.stop()
    problems = []
    if overload["answered"] != args.capacity:
        problems.append(f"{overload['answered']} answered under overload, not {args.capacity}")
    if overload["with_retry_after"] != overload["refused_503"]:
        problems.append("a 503 without Retry-After")
    if overload["answered"] + overload["refused_503"] != offered:
        problems.append(f"finals {overload['answered']} + {overload['refused_503']} != {offered}")
    if recovery["answered"] != args.capacity or recovery["refused_503"]:
        problems.append(f"recovery: {recovery['answered']} answered of {args.capacity}")
    if code != 0:
        problems.append(f"server exit code {code}")
    figures = {
        "capacity": args.capacity,
        "overload": overload,
        "recovery": recovery,
        "problems": problems,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"overload {offered} calls on {args.capacity}: {'; '.join(problems) or 'OK'}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
