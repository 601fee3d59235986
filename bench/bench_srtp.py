"""The cost of SRTP on the media hot path: CPU per call-second with and without it, in process.

    python bench/bench_srtp.py [--calls 200] [--seconds 10] [--repeat 3]

For each call, every 20 ms slot does what the media session does on the hot path, without the
sockets: :meth:`RtpSender.next_packet` (pacer → G.711 encode → RTP, provider audio queued so
the frames are audio, not silence) and :meth:`RtpReceiver.receive` of one inbound packet (the
caller's, prepared beforehand; parse → jitter buffer → payload). With ``srtp`` each call has
its own :class:`~sipbot.media.srtp.SrtpContext` (AES_CM_128_HMAC_SHA1_80 or _32): the sender
protects, the receiver unprotects packets a peer context protected (that protection is done
before the clock starts: it is the caller's work, not ours).

Printed: CPU seconds (process time) per call-second for plain RTP and both suites, the SRTP
increment in µs per packet and in % of one core at ``--calls`` calls, and the load average of
the machine while it ran (the machine is shared: read the figures as an indication).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from sipbot.domain import PCM16_8K, SrtpKeys
from sipbot.media.codecs import PCMU
from sipbot.media.receiver import RtpReceiver
from sipbot.media.rtp import RtpPacket
from sipbot.media.sender import RtpSender
from sipbot.media.srtp import SrtpContext
from sipbot.ratelimit import RateLimitedLog
from sipbot.sip.sdp_crypto import new_key

SLOTS_PER_S = 50
PEER = ("127.0.0.1", 40000)


def one_run(calls: int, seconds: int, suite: str | None) -> float:
    """CPU seconds per call-second of ``calls`` calls for ``seconds`` (``suite`` None: plain)."""
    slots = seconds * SLOTS_PER_S
    log = RateLimitedLog(logging.getLogger("bench"))
    audio = (b"\x10\x20" * 80) * SLOTS_PER_S  # 1 s of 8 kHz PCM16 (quiet, not silence)
    legs = []
    for _ in range(calls):
        tx = RtpSender(prebuffer_ms=0, source=PCM16_8K)
        tx.configure(PCMU, 0, 101)
        rx = RtpReceiver(log=log)
        rx.configure(0, 101, PEER)
        inbound = [
            RtpPacket(0, n & 0xFFFF, n * 160, 0x1234, b"\x55" * 160).serialize()
            for n in range(slots)
        ]
        if suite is not None:
            ours, theirs = new_key(), new_key()
            context = SrtpContext(SrtpKeys(suite, local=ours, remote=theirs))
            tx.srtp = rx.srtp = context
            peer = SrtpContext(SrtpKeys(suite, local=theirs, remote=ours))
            inbound = [peer.protect(p) for p in inbound]
        legs.append((tx, rx, inbound))
    started = time.process_time()
    for second in range(seconds):
        for tx, _, _ in legs:
            tx.play(audio, f"s{second}")
        base = second * SLOTS_PER_S
        for slot in range(base, base + SLOTS_PER_S):
            now = slot * 0.02
            for tx, rx, inbound in legs:
                tx.next_packet(False, now)
                rx.receive(inbound[slot], PEER, now)
    spent = time.process_time() - started
    for _, rx, _ in legs:  # every packet got through (a bench of dropped packets proves nothing)
        assert rx.stats.packets_in == slots, rx.stats
        assert rx.stats.srtp_failures == 0, rx.stats
    return spent / (calls * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    modes: dict[str, str | None] = {
        "plain RTP": None,
        "SRTP AES_CM_128_HMAC_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
        "SRTP AES_CM_128_HMAC_SHA1_32": "AES_CM_128_HMAC_SHA1_32",
    }
    best: dict[str, float] = {}
    for _ in range(args.repeat):  # interleaved, best of N: the machine is shared
        for name, suite in modes.items():
            cost = one_run(args.calls, args.seconds, suite)
            best[name] = min(best.get(name, cost), cost)
    load_after = os.getloadavg()
    plain = best["plain RTP"]
    print(
        f"{args.calls} calls x {args.seconds} s, send + receive of one packet per 20 ms slot "
        f"and call, best of {args.repeat} (process CPU time, one core)"
    )
    print(f"{'mode':<32}{'CPU ms / call-s':>16}{'% core @ N':>12}{'+µs / packet':>14}")
    for name, cost in best.items():
        extra_us = (cost - plain) / (2 * SLOTS_PER_S) * 1e6  # two packets per slot
        print(f"{name:<32}{cost * 1000:>16.3f}{cost * args.calls * 100:>11.1f}%{extra_us:>14.2f}")
    print(
        f"machine load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f}; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
