"""N concurrent SIPp calls on agents of the emulated Gemini Live and OpenAI Realtime (issue 4).

    python bench/bench_providers.py [--providers gemini,openai] [--calls 10,50,100,200]
                                    [--hold 25] [--rate 40] [--prebuffer-ms 60]
                                    [--speed 8] [--chunk-ms 100] [--workdir DIR] [--json FILE]

The same load as ``bench_calls.py`` (one fresh ``sipbot run`` per N, SIPp looping test speech,
PCMU, capture of SIPp's media port), but every call talks to a provider emulator running as its
own process (``sipbot emulate gemini|openai``): the real SDKs, TLS for Gemini, JSON and base64
both ways, share the server's event loop with the media path. The emulators answer each caller
turn with an echo of it, sent ``--speed`` times faster than real time in ``--chunk-ms`` chunks,
and stop when the caller talks over a reply. The test speech (~3.3 s) loops with 0.8 s pauses,
so a caller turn ends (500 ms of silence), the reply starts, and the next loop interrupts it:
every ~4.1 s each call has a reply (first-audio latency) and a barge-in (flush → silent
packet). Calls start their audio at random offsets, so their turns do not coincide.

Printed per provider and N: what ``bench_calls.py`` prints (without the echo delay: replies are
not loopback), plus turns and interruptions per call from the CDR lines, and the emulator's CPU.
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

from bench._calls import ROOT, BenchServer, run_calls, write_config
from bench.bench_calls import analyse, format_run, hold_for, summary_table
from tests.e2e.peers import audio
from tests.e2e.peers.process import ManagedProcess

EMULATOR_READY = r"emulator ready (\S+)(?: ca_file=(\S+))?"
KEY = "${SIPBOT_BENCH_KEY:-bench}"  # the emulators accept any key


def start_emulator(
    provider: str, workdir: Path, overrides: list[str]
) -> tuple[ManagedProcess, str, str | None]:
    """``sipbot emulate PROVIDER --port 0``; returns (process, base URL, CA file or None)."""
    argv = [sys.executable, "-m", "sipbot", "emulate", provider, "--port", "0"]
    for item in overrides:
        argv += ["--set", item]
    process = ManagedProcess.start(f"emulator-{provider}", argv, workdir, cwd=ROOT)
    match = process.wait_for_line(EMULATOR_READY, 30.0, stream="stderr")
    return process, match.group(1), match.group(2)


def agent(provider: str, url: str, ca_file: str | None) -> dict[str, Any]:
    """An agent on the emulator of ``provider``."""
    spec: dict[str, Any] = {"provider": provider, "api_key": KEY, "base_url": url}
    if ca_file:
        spec["ca_file"] = ca_file
    return spec


def conversation(cdrs: list[dict[str, Any]]) -> str:
    """Turns and interruptions per call, from the CDR lines."""
    if not cdrs:
        return "no CDR"
    turns = sum(c["turns"] for c in cdrs) / len(cdrs)
    interruptions = sum(c["interruptions"] for c in cdrs) / len(cdrs)
    return f"{turns:.1f} turns and {interruptions:.1f} interruptions per call"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default="gemini,openai")
    parser.add_argument("--calls", default="10,50,100,200", help="comma-separated N values")
    parser.add_argument("--hold", type=float, default=25.0, help="seconds per call")
    parser.add_argument("--rate", type=float, default=40.0, help="new calls per second")
    parser.add_argument("--prebuffer-ms", type=int, default=60, help="server.media.prebuffer_ms")
    parser.add_argument("--speed", type=float, default=8.0, help="emulator reply speed")
    parser.add_argument("--chunk-ms", type=int, default=100, help="emulator audio per message")
    parser.add_argument("--workdir", help="keep logs, captures and configs here")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-providers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    speech = audio.make_speech(workdir / "speech")
    providers = args.providers.split(",")
    overrides = [f"speed={args.speed:g}", f"chunk_ms={args.chunk_ms}", "reply=echo"]
    emulators = {p: start_emulator(p, workdir, overrides) for p in providers}
    try:
        config = write_config(
            workdir / "sipbot-providers.yaml",
            {p: agent(p, url, ca) for p, (_, url, ca) in emulators.items()},
            [{"name": p, "match": {"did": p}, "answer": p} for p in providers],
            prebuffer_ms=args.prebuffer_ms,
        )
        print(
            f"# bench_providers: {os.cpu_count()} CPUs (shared), load average "
            f"{os.getloadavg()[0]:.2f} at start; PCMU, pre-buffer {args.prebuffer_ms} ms, "
            f"emulator replies {args.speed:g}x real time in {args.chunk_ms} ms chunks, "
            f"{args.rate:g} calls/s; logs in {workdir}",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {}
        for provider in providers:
            emulator_pid = {f"emulator-{provider}": emulators[provider][0].pid}
            for n in [int(x) for x in args.calls.split(",")]:
                server = BenchServer(workdir, config, f"sipbot-{provider}-{n}")
                try:
                    result = run_calls(
                        server, n, rate=args.rate, hold_s=hold_for(n, args.rate, args.hold),
                        audio=speech.ulaw, workdir=workdir, service=provider,
                        other_pids=emulator_pid,
                    )  # fmt: skip
                finally:
                    server.stop()
                figures = analyse(result, echo=False)
                figures["provider"] = provider
                figures["conversation"] = conversation(result.cdrs)
                runs.setdefault(provider, []).append(figures)
                print(f"[{provider}] " + format_run(figures), flush=True)
                print(f"  conversation: {figures['conversation']}", flush=True)
        for provider, provider_runs in runs.items():
            print(f"\n{provider}:\n" + summary_table(provider_runs))
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
    finally:
        for process, _, _ in emulators.values():
            process.stop()


if __name__ == "__main__":
    main()
