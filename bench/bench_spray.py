"""Malformed SIP datagrams sprayed at a real ``sipbot run`` during live calls (issue 14).

    python bench/bench_spray.py [--datagrams 10000] [--rate 800] [--calls 10]
                                [--modes none,limited,parse-all] [--seed 14]
                                [--server-nice N] [--workdir DIR] [--json FILE]

For each mode, a fresh ``python -m sipbot run --local-mode loopback`` (PCMU) takes ``--calls``
SIPp calls from 127.0.0.1 that stream test speech; once they are all talking, one UDP socket
on 127.0.0.2 sends ``--datagrams`` malformed datagrams at ``--rate`` per second: random bytes,
truncations, byte flips, wrong SIP versions, bad Content-Length, oversized headers (a seeded
mix, built from valid INVITE / OPTIONS / BYE / REGISTER requests and a 200 response).

Modes: ``none`` sends nothing for as long (the same calls' baseline on the same machine);
``limited`` runs with the default per-source limits (the spray is cut to ``per_source_rps``
before anything is parsed); ``parse-all`` raises the message rate out of the way, so every
datagram is parsed and answered where it deserves an answer (the per-datagram cost of junk
itself). ``per_source_calls`` is ``--calls`` in every mode: the callers' address needs that
many, and junk that still parses as INVITEs sets up no more than that.

Printed per mode: the live calls' outbound RTP gaps (ms) during the spray and over whole calls
(p99, max, and the max outside machine stalls, from ``bench._rtp_stats``), the server's CPU
during the spray, what the spray got back (answers by status) and how many of its INVITEs were
routed (mutated INVITEs that still parse; at most ``limits.per_source_calls`` at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench._calls import (
    CLOCK_TICKS,
    STAGGER_MS,
    BenchServer,
    cpu_ticks,
    staggered,
    write_config,
)
from bench._probe import MachineProbe
from bench._rtp_stats import gap_figures, read_capture
from tests.e2e.peers import audio, sipp

SPRAY_HOST = "127.0.0.2"  # another source address than the callers' 127.0.0.1
LEAD_S = 2.0  # after the last call's audio started, before the spray
TAIL_S = 2.0  # calls go on this long after the spray
CALL_RATE = 10.0  # SIPp calls per second
# parse-all: every datagram reaches the parser
PARSE_ALL = {"per_source_rps": 1e6, "per_source_burst": 10**6}
MODES = ("none", "limited", "parse-all")
KINDS = ("random", "truncated", "flipped", "version", "content-length", "oversized")


# --------------------------------------------------------------------------- the datagrams


def seeds(target: str, port: int, media_port: int) -> list[bytes]:
    """Valid messages from the spray socket: the material the mutations start from (the SDP
    offers ``media_port``, a socket that takes the RTP of the calls junk sets up)."""
    sdp = (
        f"v=0\r\no=- 1 1 IN IP4 {SPRAY_HOST}\r\ns=-\r\nc=IN IP4 {SPRAY_HOST}\r\nt=0 0\r\n"
        f"m=audio {media_port} RTP/AVP 0\r\n"
    )

    def request(method: str, body: str = "", to_tag: str = "") -> bytes:
        lines = [
            f"{method} sip:bot@{target} SIP/2.0",
            f"Via: SIP/2.0/UDP {SPRAY_HOST}:{port};branch=z9hG4bK-spray;rport",
            "Max-Forwards: 70",
            f"From: <sip:spray@{SPRAY_HOST}>;tag=s1",
            f"To: <sip:bot@{target}>{to_tag}",
            f"Call-ID: spray@{SPRAY_HOST}",
            f"CSeq: 1 {method}",
            f"Contact: <sip:spray@{SPRAY_HOST}:{port}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    ok = request("INVITE", sdp).replace(b"INVITE sip:bot@" + target.encode() + b" SIP/2.0", b"")
    return [
        request("INVITE", sdp),
        request("OPTIONS"),
        request("BYE", to_tag=";tag=x"),
        request("REGISTER"),
        b"SIP/2.0 200 OK" + ok,
    ]


def mutate(rng: random.Random, kind: str, seed: bytes, index: int) -> bytes:
    """One malformed datagram of ``kind``; ``index`` keeps transaction ids apart."""
    seed = seed.replace(b"z9hG4bK-spray", b"z9hG4bK-spray%d" % index)
    seed = seed.replace(
        b"spray@" + SPRAY_HOST.encode(), b"spray%d@%s" % (index, SPRAY_HOST.encode())
    )
    if kind == "random":
        return rng.randbytes(rng.randrange(1, 1400))
    if kind == "truncated":
        return seed[: rng.randrange(1, len(seed))]
    if kind == "flipped":
        out = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == "version":
        wrong = rng.choice([b"SIP/3.0", b"SIP/1.0", b"HTTP/1.1", b"SIP/2.0.1", b"SIP/20"])
        return seed.replace(b"SIP/2.0", wrong, 1)
    if kind == "content-length":
        value = rng.choice([b"-1", b"99999", b"abc", b"12, 13", b"0\r\nContent-Length: 5"])
        return re.sub(rb"Content-Length: \d+", b"Content-Length: " + value, seed, count=1)
    # oversized: a huge header value, thousands of header lines, or a datagram near 64 kB
    choice = rng.randrange(3)
    if choice == 0:
        return seed.replace(b"Max-Forwards: 70", b"X-Big: " + b"a" * rng.randrange(4000, 60000))
    if choice == 1:
        return seed.replace(b"Max-Forwards: 70", b"\r\n".join([b"X-H: 1"] * 3000))
    return seed + b"x" * rng.randrange(30000, 64000)


def datagrams(
    rng: random.Random, n: int, target: str, port: int, media_port: int
) -> tuple[list[bytes], Counter[str]]:
    material = seeds(target, port, media_port)
    out = []
    kinds: Counter[str] = Counter()
    for i in range(n):
        kind = rng.choice(KINDS)
        kinds[kind] += 1
        out.append(mutate(rng, kind, rng.choice(material), i)[:65507])
    return out, kinds


# --------------------------------------------------------------------------- the sprayer


class Sprayer:
    """Sends the datagrams from :data:`SPRAY_HOST` at a fixed rate (a thread); counts answers."""

    def __init__(self, server: BenchServer, data: list[bytes], rate: float, length_s: float):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SPRAY_HOST, 0))
        self.sock.setblocking(False)
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # RTP sink, never read
        self.media.bind((SPRAY_HOST, 0))
        self.server = server
        self.data = data
        self.rate = rate
        self.length_s = length_s  # at least this long, even with nothing to send
        self.answers: Counter[str] = Counter()
        self.started = self.ended = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(self.length_s + len(self.data) / self.rate + 30.0)

    @property
    def media_port(self) -> int:
        return int(self.media.getsockname()[1])

    def close(self) -> None:
        self.sock.close()
        self.media.close()

    def drain(self) -> None:
        while True:
            try:
                answer = self.sock.recv(65536)
            except BlockingIOError:
                return
            match = re.match(rb"SIP/2\.0 (\d{3})", answer)
            self.answers[match.group(1).decode() if match else answer[:8].decode("latin-1")] += 1

    def _run(self) -> None:
        target = ("127.0.0.1", self.server.port)
        start = time.monotonic()
        self.started = time.time()
        for i, datagram in enumerate(self.data):
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sock.sendto(datagram, target)
            if i % 16 == 0:
                self.drain()
        time.sleep(max(0.0, start + self.length_s - time.monotonic()))
        self.ended = time.time()
        time.sleep(0.5)
        self.drain()


# --------------------------------------------------------------------------- one run


def run(mode: str, args: argparse.Namespace, workdir: Path, speech: audio.Speech) -> dict[str, Any]:
    # per_source_calls = the live calls: the callers' address needs them all, and junk that
    # still parses as INVITEs may set up as many (more would be what the figures measure)
    limits: dict[str, Any] = {"per_source_calls": args.calls}
    if mode == "parse-all":
        limits.update(PARSE_ALL)
    config = write_config(
        workdir / f"sipbot-{mode}.yaml",
        {"bench": {"provider": "local", "local": {"mode": "loopback"}}},
        [{"name": "all", "answer": "bench"}],
        prebuffer_ms=60,
        limits=limits,
    )
    count = 0 if mode == "none" else args.datagrams
    spray_s = args.datagrams / args.rate  # "none": the same window, nothing sent
    lead_s = args.calls / CALL_RATE + STAGGER_MS / 1000 + LEAD_S
    hold_s = lead_s + spray_s + TAIL_S
    server = BenchServer(
        workdir, config, f"sipbot-{mode}", ["--local-mode", "loopback"], args.server_nice
    )
    try:
        scenario = staggered(
            sipp.uac_scenario(
                workdir / f"uac-{mode}.xml", speech.ulaw, "PCMU", hold_s=hold_s, audio_loops=-1
            )
        )
        probe = MachineProbe()
        probe.start()
        uac = sipp.start_uac(
            server.address, scenario, workdir, calls=args.calls, rate=CALL_RATE,
            timeout_s=hold_s + 60.0, capture=True, name=f"sipp-{mode}",
        )  # fmt: skip
        sprayer = Sprayer(server, [], args.rate, spray_s)
        sprayer.data, kinds = datagrams(
            random.Random(args.seed), count, server.address, sprayer.port, sprayer.media_port
        )
        time.sleep(lead_s)
        cpu_before = cpu_ticks(server.pid)
        sprayer.start()
        sprayer.join()
        cpu_spray = (cpu_ticks(server.pid) - cpu_before) / CLOCK_TICKS
        result = uac.wait(hold_s + 70.0)
        stalls = probe.stop()
        sprayer.close()
    finally:
        server.stop()
    assert result.capture is not None
    window = (sprayer.started, sprayer.ended)
    capture = read_capture(result.capture.pcap_path, uac.media_port, window)
    log = server.process.read_log("stderr")
    return {
        "mode": mode,
        "limits": limits,
        "datagrams": len(sprayer.data),
        "kinds": dict(kinds),
        "spray_s": sprayer.ended - sprayer.started,
        "rate": len(sprayer.data) / (sprayer.ended - sprayer.started),
        "server_nice": args.server_nice,
        "calls_ok": result.successful,
        "calls_failed": result.failed,
        "sipp_exit": result.returncode,
        "gaps_spray": gap_figures(capture, window, stalls),
        "gaps_whole": gap_figures(capture, None, stalls),
        "server_cpu_spray_cores": cpu_spray / (sprayer.ended - sprayer.started),
        "answers": dict(sprayer.answers),
        "spray_calls": len(re.findall(rf"sipbot\.server: call \S+ from .* via {SPRAY_HOST}:", log)),
        "core_failures_logged": log.count("SIP core failed"),
        "tracebacks": log.count("Traceback"),
        "log_lines": len(log.splitlines()),
    }


def format_run(f: dict[str, Any]) -> str:
    s, w = f["gaps_spray"], f["gaps_whole"]
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(f["answers"].items())) or "none"
    return "\n".join(
        [
            f"{f['mode']} (per-source limits: {f['limits']}; server nice {f['server_nice']}): "
            f"{f['datagrams']} datagrams in "
            f"{f['spray_s']:.1f} s ({f['rate']:.0f}/s) {f['kinds']}",
            f"  live calls: OK {f['calls_ok']}, failed {f['calls_failed']} (SIPp exit "
            f"{f['sipp_exit']})",
            f"  outbound gaps ms during the spray ({s.get('streams', 0)} streams): p99 "
            f"{s.get('p99', 0):.1f} max {s.get('max', 0):.1f} (max outside machine stalls "
            f"{s.get('max_outside_stalls', 0):.1f}; gaps > 30 ms: {s.get('long_gaps', 0)}, "
            f"{s.get('long_gaps_in_stalls', 0)} in stalls)",
            f"  whole calls: p99 {w.get('p99', 0):.1f} max {w.get('max', 0):.1f}",
            f"  server CPU during the spray: {f['server_cpu_spray_cores']:.2f} cores; answers to"
            f" the spray: {answers}; INVITEs it got routed: {f['spray_calls']}",
            f"  server log: {f['log_lines']} lines, {f['core_failures_logged']} core failures, "
            f"{f['tracebacks']} tracebacks",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=800.0, help="datagrams per second")
    parser.add_argument("--calls", type=int, default=10, help="live SIPp calls")
    parser.add_argument("--modes", default=",".join(MODES), help="none, limited, parse-all")
    parser.add_argument(
        "--server-nice", type=int, default=0, help="run the server under nice -n N (diagnosis)"
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--workdir", help="keep logs, captures and configs here")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-spray-"))
    workdir.mkdir(parents=True, exist_ok=True)
    speech = audio.make_speech(workdir / "speech")
    print(
        f"# bench_spray: {os.cpu_count()} CPUs (shared), load average "
        f"{os.getloadavg()[0]:.2f} at start; {args.calls} loopback calls; logs in {workdir}",
        flush=True,
    )
    runs = []
    for mode in args.modes.split(","):
        figures = run(mode, args, workdir, speech)
        runs.append(figures)
        print(format_run(figures), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
