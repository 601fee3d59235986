"""N concurrent media sessions in one uvloop process, each a full loop through the local provider.

    python bench/bench_media_sessions.py [--calls 50,100,200,300] [--duration 20] [--repeat 1]
                                         [--prebuffer-ms 60]

Three processes per N:

* the **server** (what is measured): one MediaEngine, N MediaSessions (PCMU), each wired to a
  LocalProvider session in ``loopback`` mode, so every inbound 20 ms frame crosses the whole path
  both ways: RTP → parse → jitter → G.711 decode → 8→16 kHz → provider → 16→24 kHz → play →
  24→8 kHz → pacer → G.711 encode → RTP. It reports CPU time (getrusage) over the measured window,
  RSS (idle before any session, and peak), ticker lateness and session counters.
* the **caller**: N UDP sockets sending 20 ms PCMU packets on an absolute-deadline schedule,
  each stream with its own phase spread over the 20 ms like independent calls (quiet noise with
  a 20 ms loud burst once a second per stream), and receiving the server's packets. Arrival
  times are **kernel receive timestamps** (SO_TIMESTAMPNS), so the caller's own scheduling
  delays do not pollute the gap figures. The loud bursts coming back give the
  mouth-to-ear latency through the server (network + jitter + DSP + pacer pre-buffer).
* this script, which starts both, times the window and prints the table.

The machine is shared (2 cores, other sessions running): run it more than once and read the
figures as an indication, not a guarantee.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value
FRAME_S = 0.02
LOUD_THRESHOLD = 4000
PULSE_EVERY = 50  # frames: one loud 20 ms burst per second and stream


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- server


def _record_gc_pauses() -> list[float]:
    """Durations (ms) of the collector's passes over generation 2 (the long ones)."""
    import gc

    pauses: list[float] = []
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            pauses.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(callback)
    return pauses


def _record_tick_lateness() -> list[float]:
    """Wrap the ticker's group callback to record how late each tick ran (ms)."""
    from sipbot.media import ticker

    lateness: list[float] = []
    original = ticker.Ticker._run

    def run(self: ticker.Ticker, group: Any) -> None:
        if group.clock is not None:
            lateness.append((self._loop.time() - group.clock.next_deadline) * 1000)
        original(self, group)

    ticker.Ticker._run = run  # type: ignore[method-assign]
    return lateness


async def serve(args: argparse.Namespace) -> None:
    import uvloop  # noqa: F401 - the loop is made by the caller of serve()

    from sipbot.domain import AudioOut, CallInfo, SessionConfig
    from sipbot.media.session import MediaEngine, MediaSettings
    from sipbot.providers.local import LocalProvider, LocalSession

    loop = asyncio.get_running_loop()
    idle_rss = rss_mb()
    lateness_ms = _record_tick_lateness()
    gc_pauses = _record_gc_pauses()
    remotes = json.loads(sys.stdin.readline())
    base = args.port_base
    engine = MediaEngine(
        MediaSettings(
            port_min=base,
            port_max=base + 4 * len(remotes) + 100,
            prebuffer_ms=args.prebuffer_ms,
        )
    )
    provider = LocalProvider("loopback")
    sessions, pumps = [], []

    async def pump(provider_session: LocalSession, media: Any) -> None:
        async for event in provider_session.events():
            if isinstance(event, AudioOut):
                media.play(event.audio, event.item_id)

    for index, port in enumerate(remotes):
        provider_session = await provider.open(CallInfo(call_id=str(index)), SessionConfig())
        media = await engine.open_session(
            on_audio=provider_session.send_audio, on_dtmf=lambda d: None, on_timeout=lambda: None
        )
        media.configure(
            codec="PCMU", payload_type=0, dtmf_payload_type=101, remote=("127.0.0.1", port)
        )
        sessions.append((media, provider_session))
        pumps.append(loop.create_task(pump(provider_session, media)))
    for media, _ in sessions:
        media.start()
    print(json.dumps([m.local_port for m, _ in sessions]), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    marks: list[tuple[float, float]] = []
    while len(marks) < 2:
        await reader.readline()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        marks.append((time.monotonic(), usage.ru_utime + usage.ru_stime))
    ticker = engine.ticker.stats
    stats = [m.stats for m, _ in sessions]
    report = {
        "cpu_s": marks[1][1] - marks[0][1],
        "wall_s": marks[1][0] - marks[0][0],
        "idle_rss_mb": idle_rss,
        "rss_mb": rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "late_ticks": ticker.late_ticks,
        "ticks": ticker.ticks,
        "max_tick_lateness_ms": ticker.max_lateness_s * 1000,
        "tick_lateness_p50": float(np.percentile(lateness_ms, 50)) if lateness_ms else 0.0,
        "tick_lateness_p99": float(np.percentile(lateness_ms, 99)) if lateness_ms else 0.0,
        "skipped_frames": sum(s.skipped_frames for s in stats),
        "catchup_frames": sum(s.late_ticks for s in stats),
        "packets_in": sum(s.packets_in for s in stats),
        "packets_out": sum(s.packets_out for s in stats),
        "lost_in": sum(s.lost for s in stats),
        "gc_max_ms": max(gc_pauses, default=0.0),
        "gc_n": len(gc_pauses),
    }
    for task in pumps:
        task.cancel()
    for _, provider_session in sessions:
        await provider_session.close()
    await engine.close()
    print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------- caller


def ulaw_frames() -> tuple[list[bytes], bytes]:
    """(quiet frames to cycle through, one loud frame), and the μ-law loudness table."""
    from sipbot.media.codecs import make_decoder, make_encoder

    encoder, decoder = make_encoder("PCMU"), make_decoder("PCMU")
    rng = np.random.default_rng(3)
    quiet = [
        encoder.encode(np.rint(rng.standard_normal(160) * 300).astype("<i2").tobytes())
        for _ in range(PULSE_EVERY)
    ]
    t = np.arange(160) / 8000
    quiet[0] = encoder.encode(np.rint(16000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes())
    levels = np.abs(np.frombuffer(decoder.decode(bytes(range(256))), dtype="<i2").astype(int))
    loud_table = bytes(1 if level > LOUD_THRESHOLD else 0 for level in levels)
    return quiet, loud_table


def call(args: argparse.Namespace) -> None:
    n = args.calls
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        socks.append(sock)
    print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
    server_ports = json.loads(sys.stdin.readline())
    sys.stdin.readline()  # "go"
    frames, loud_table = ulaw_frames()
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    epoll = select.epoll()
    for sock in socks:
        epoll.register(sock.fileno(), select.EPOLLIN)
    arrivals: list[list[int]] = [[] for _ in range(n)]
    seqs: list[list[int]] = [[] for _ in range(n)]
    pending_pulse: list[float | None] = [None] * n
    latencies: list[float] = []
    t0 = time.monotonic()
    start_ns = time.time_ns() + int(args.warmup * 1e9)
    end = t0 + args.warmup + args.duration
    # Stream i sends at t0 + (k + i/n) * 20 ms: calls have independent phases, as real calls do
    # (a burst of all streams at one instant would be an artificial worst case).
    slot = 0  # global send index: stream slot % n, frame slot // n
    header = struct.Struct("!BBHII")
    cmsg_space = socket.CMSG_SPACE(16)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        deadline = t0 + slot * FRAME_S / n
        if now >= deadline:
            if now - deadline > 3 * FRAME_S:  # the caller itself stalled: resync, do not burst
                slot = int((now - t0) * n / FRAME_S)
            while t0 + slot * FRAME_S / n <= now:
                i, k = slot % n, slot // n
                frame_index = (k + i) % PULSE_EVERY
                packet = header.pack(0x80, 0, k & 0xFFFF, (k * 160) & 0xFFFFFFFF, i + 1)
                if frame_index == 0:
                    pending_pulse[i] = time.time()
                socks[i].sendto(packet + frames[frame_index], ("127.0.0.1", server_ports[i]))
                slot += 1
            continue
        for fd, _ in epoll.poll(max(0.0, deadline - now)):
            i = by_fd[fd]
            sock = socks[i]
            while True:
                try:
                    data, ancdata, _, _ = sock.recvmsg(2048, cmsg_space)
                except BlockingIOError:
                    break
                arrived_ns = 0
                for level, kind, cdata in ancdata:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", cdata[:16])
                        arrived_ns = sec * 1_000_000_000 + nsec
                if arrived_ns < start_ns or len(data) < 12:
                    continue
                arrivals[i].append(arrived_ns)
                seqs[i].append(struct.unpack_from("!H", data, 2)[0])
                sent = pending_pulse[i]
                if sent is not None and 1 in data[12:].translate(loud_table):
                    latencies.append(arrived_ns / 1e9 - sent)
                    pending_pulse[i] = None
    gaps, stream_p99, missing = [], [], 0
    for i in range(n):
        times = np.array(arrivals[i], dtype=np.int64)
        if len(times) < 2:
            continue
        stream_gaps = np.diff(times) / 1e6
        gaps.append(stream_gaps)
        stream_p99.append(float(np.percentile(stream_gaps, 99)))
        seq = np.array(seqs[i], dtype=np.int64)
        missing += int(np.sum((np.diff(seq) & 0xFFFF) - 1))
    all_gaps = np.concatenate(gaps) if gaps else np.zeros(1)
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    print(
        json.dumps(
            {
                "streams": len(gaps),
                "packets": int(sum(len(a) for a in arrivals)),
                "missing": missing,
                "gap_mean": float(all_gaps.mean()),
                "gap_std": float(all_gaps.std()),
                "gap_p99": float(np.percentile(all_gaps, 99)),
                "gap_max": float(all_gaps.max()),
                "worst_stream_p99": max(stream_p99) if stream_p99 else 0.0,
                "latency_p50": float(np.percentile(lat, 50)),
                "latency_p99": float(np.percentile(lat, 99)),
                "latency_n": len(latencies),
                "caller_cpu_s": _cpu_s(),
            }
        ),
        flush=True,
    )


# --------------------------------------------------------------------------- orchestration


def run_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    me = [sys.executable, __file__]
    common = ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    caller = subprocess.Popen(
        [*me, "--role", "caller", "--calls", str(n), *common],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = subprocess.Popen(
        [*me, "--role", "server", "--calls", str(n), "--prebuffer-ms", str(args.prebuffer_ms),
         "--port-base", str(args.port_base), *common],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert caller.stdin
    assert caller.stdout
    assert server.stdin
    assert server.stdout
    try:
        server.stdin.write(caller.stdout.readline())
        server.stdin.flush()
        caller.stdin.write(server.stdout.readline() + "go\n")
        caller.stdin.flush()
        time.sleep(args.warmup)
        server.stdin.write("mark\n")
        server.stdin.flush()
        time.sleep(args.duration)
        server.stdin.write("report\n")
        server.stdin.flush()
        server_report = json.loads(server.stdout.readline())
        caller_report = json.loads(caller.stdout.readline())
    finally:
        for process in (caller, server):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return {"calls": n, **server_report, **caller_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "server", "caller"], default="bench")
    parser.add_argument("--calls", default="50,100,200,300")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--prebuffer-ms", type=int, default=60)
    parser.add_argument("--port-base", type=int, default=42000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per N (the machine is noisy)")
    args = parser.parse_args()
    if args.role == "server":
        import uvloop

        args.calls = int(args.calls)
        if os.environ.get("BENCH_PROFILE"):  # a cProfile of the server, for development
            import cProfile

            cProfile.runctx(
                "uvloop.run(serve(args))", globals(), locals(), os.environ["BENCH_PROFILE"]
            )
            return
        uvloop.run(serve(args))
        return
    if args.role == "caller":
        args.calls = int(args.calls)
        call(args)
        return
    print(
        f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up; "
        f"pacer pre-buffer {args.prebuffer_ms} ms"
    )
    print(
        "calls  CPU ms/call-s  idle/peak RSS MB   gap mean  std   p99   max  worst-p99"
        "  missing  e2e latency p50/p99 ms  late ticks"
    )
    runs = [int(x) for x in args.calls.split(",") for _ in range(args.repeat)]
    for n in runs:
        r = run_one(n, args)
        cpu = r["cpu_s"] * 1000 / (n * r["wall_s"])
        print(
            f"{n:5}  {cpu:13.2f}  {r['idle_rss_mb']:6.1f}/{r['peak_rss_mb']:6.1f}     "
            f"{r['gap_mean']:6.2f} {r['gap_std']:5.2f} {r['gap_p99']:5.1f} {r['gap_max']:5.1f}"
            f"  {r['worst_stream_p99']:9.1f}  {r['missing']:7d}  "
            f"{r['latency_p50']:9.1f}/{r['latency_p99']:5.1f} (n={r['latency_n']})"
            f"  {r['late_ticks']}/{r['ticks']} (p50 {r['tick_lateness_p50']:.2f} p99 "
            f"{r['tick_lateness_p99']:.2f} max {r['max_tick_lateness_ms']:.1f} ms)"
            f"  caller CPU {100 * r['caller_cpu_s'] / (args.warmup + args.duration):.0f} %"
            f"  gen-2 GC {r['gc_n']}x max {r['gc_max_ms']:.1f} ms  load {os.getloadavg()[0]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
