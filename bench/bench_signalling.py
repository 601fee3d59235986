"""Signalling throughput of a real ``sipbot run``: calls/s and server CPU ms per call.

Starts ``python -m sipbot run`` on a free loopback port, drives it with SIPp
(``tests/e2e/scenarios/sip/uac_call.xml``: INVITE, 100/180/200, ACK, BYE, 200 — 7 messages a
call, no media) at increasing rates, and reads the server's CPU time from /proc/<pid>/stat
around each run.

Run: ``python bench/bench_signalling.py [--rates 50,100,200,400] [--seconds 5]``
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "e2e" / "scenarios" / "sip" / "uac_call.xml"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(span: int = 1) -> int:
    for _ in range(200):
        port = random.randrange(20_000, 32_000, 4)  # below the ephemeral range
        ok = True
        for i in range(span):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind(("127.0.0.1", port + i))
                    except OSError:
                        ok = False
        if ok:
            return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_rate(port: int, rate: int, calls: int, workdir: Path) -> dict[str, float]:
    stat = workdir / f"stat_{rate}.csv"
    args = [
        "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-s", "bot",
        "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_port(4)),
        "-m", str(calls), "-r", str(rate), "-l", str(max(100, rate * 2)), "-d", "0",
        "-nostdin", "-timeout", "120s", "-timeout_error",
        "-trace_stat", "-stf", str(stat), "-fd", "1",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    with stat.open() as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    last = rows[-1]
    return {
        "exit": result.returncode,
        "ok": int(last["SuccessfulCall(C)"]),
        "failed": int(last["FailedCall(C)"]),
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50,100,200,400", help="call rates (calls/s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of calls per rate")
    args = parser.parse_args()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_signalling_{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # the embedded default dialplan, with the per-source limits out of the way: one SIPp
    # process sends every call from one address, at up to 400 calls/s
    config = workdir / "sipbot.yaml"
    settings = yaml.safe_load((ROOT / "sipbot" / "data" / "default.yaml").read_text())
    settings["server"]["limits"] = {
        "per_source_calls": 500,
        "per_source_rps": 1e6,
        "per_source_burst": 10**6,
    }
    config.write_text(yaml.safe_dump(settings))
    command = ["-m", "sipbot", "run", "-c", str(config), "--listen", f"127.0.0.1:{port}"]
    command += ["--log-level", "WARNING"]
    server = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        if "sipbot ready" not in line:
            print(f"server did not start: {line}", file=sys.stderr)
            return 1
        print(f"sipbot on 127.0.0.1:{port} (pid {server.pid}); SIPp uac_call.xml, 7 messages/call")
        print(f"{'rate':>6} {'calls':>6} {'ok':>6} {'failed':>6} {'calls/s':>8} "
              f"{'CPU ms/call':>11} {'server CPU %':>12}")  # fmt: skip
        for rate in (int(r) for r in args.rates.split(",")):
            calls = max(50, int(rate * args.seconds))
            before = cpu_seconds(server.pid)
            r = run_rate(port, rate, calls, workdir)
            cpu = cpu_seconds(server.pid) - before
            print(
                f"{rate:>6} {calls:>6} {r['ok']:>6} {r['failed']:>6} "
                f"{r['ok'] / r['wall']:>8.1f} {1000 * cpu / max(1, r['ok']):>11.2f} "
                f"{100 * cpu / r['wall']:>12.1f}"
            )
    finally:
        server.terminate()
        server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
