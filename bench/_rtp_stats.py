"""RTP figures of a benchmark run, read from a loopback capture (not a test).

One SIPp process uses one media port for all its calls, and sipbot gives each call its own RTP
port, so in a capture of UDP to and from SIPp's port a call is the sipbot port of its packets:

* **our outbound stream** of a call: packets from that port to SIPp (telephone-events, PT 101,
  are left out); its inter-packet gaps are the pacing figures;
* **the echo delay** (loopback mode): SIPp's audio to that port against our audio back from it,
  both decoded and laid out on the capture's clock by RTP timestamp (each stream anchored at the
  median of capture time − timestamp, so send jitter does not smear the samples); the lag of
  the peak of their cross-correlation is the mean delay a caller hears (socket queue, jitter
  buffer, DSP, pacer queue and slot wait).

* **machine-wide stalls**: times when SIPp sent nothing at all for :data:`STALL_S` although
  every call sends every 20 ms, and the stalls of the benchmark's per-CPU probe threads
  (:mod:`bench._probe`). An outbound gap over 30 ms that overlaps one happened while another
  process was frozen too (the shared machine, not sipbot); both counts are printed.

The pcap is parsed here (classic pcap, Ethernet/cooked link types, IPv4/UDP) with no per-packet
objects beyond what each figure needs, because a 300-call run holds ~750,000 packets.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.e2e.peers.audio import decode_ulaw

PT_PCMU = 0
PT_TELEPHONE_EVENT = 101
RATE_HZ = 8000
ECHO_WINDOW_S = 6.0  # longer than one loop of the test speech (~4 s)
ECHO_MAX_LAG_S = 0.5
ECHO_MIN_SCORE = 0.3  # below this, no echo was found
STALL_S = 0.030  # SIPp silent this long (all calls together): the machine stalled
LONG_GAP_MS = 30.0
_LINK_HEADER = {1: 14, 113: 16, 276: 20}
_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}


@dataclass
class Capture:
    """What a capture holds, by sipbot RTP port (one per call).

    Attributes:
        out_times: capture times (epoch s) of our outbound audio packets.
        out_missing: sequence numbers skipped in our outbound streams.
        in_times: capture times of every packet SIPp sent (all calls).
        echo: for the echo window, ``(direction, port) -> [(time, timestamp, payload)]``; direction
            ``"in"`` is SIPp → sipbot, ``"out"`` sipbot → SIPp (PCMU only).
    """

    out_times: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    out_missing: int = 0
    in_times: list[float] = field(default_factory=list)
    packets: int = 0
    echo: dict[tuple[str, int], list[tuple[float, int, bytes]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def read_capture(path: Path, media_port: int, echo_window: tuple[float, float]) -> Capture:
    """Parse the pcap of SIPp's media port ``media_port``.

    Raises:
        ValueError: not a classic pcap or an unsupported link type.
    """
    data = path.read_bytes()
    if len(data) < 24:
        return Capture()
    if data[:4] not in _MAGIC:
        raise ValueError(f"{path}: not a classic pcap file")
    order, divisor = _MAGIC[data[:4]]
    link = _LINK_HEADER.get(struct.unpack(order + "I", data[20:24])[0])
    if link is None:
        raise ValueError(f"{path}: unsupported link type")
    record = struct.Struct(order + "IIII")
    udp = struct.Struct("!HHH")
    rtp = struct.Struct("!BBHI")
    capture = Capture()
    last_seq: dict[int, int] = {}
    w0, w1 = echo_window
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _ = record.unpack_from(data, offset)
        start = offset + 16 + link
        offset += 16 + incl
        if data[start] >> 4 != 4 or data[start + 9] != 17:
            continue
        udp_at = start + (data[start] & 0x0F) * 4
        src, dst, udp_length = udp.unpack_from(data, udp_at)
        rtp_at = udp_at + 8
        first, second, seq, timestamp = rtp.unpack_from(data, rtp_at)
        payload_type = second & 0x7F
        if first >> 6 != 2 or payload_type == PT_TELEPHONE_EVENT:
            continue
        when = sec + frac / divisor
        capture.packets += 1
        outbound = src != media_port
        port = src if outbound else dst
        if outbound:
            capture.out_times[port].append(when)
            previous = last_seq.get(port)
            if previous is not None:
                step = (seq - previous) & 0xFFFF
                if 1 < step < 0x8000:
                    capture.out_missing += step - 1
            last_seq[port] = seq
        else:
            capture.in_times.append(when)
        if w0 <= when < w1 and payload_type == PT_PCMU and not first & 0x3F:
            payload = data[rtp_at + 12 : udp_at + udp_length]
            capture.echo["out" if outbound else "in", port].append((when, timestamp, payload))
    return capture


def _pct(values: npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def gap_figures(
    capture: Capture,
    window: tuple[float, float] | None = None,
    other_stalls: Sequence[tuple[float, float]] = (),
) -> dict[str, Any]:
    """Outbound gaps (ms): aggregated over every stream, and the spread of per-stream figures.

    ``window`` (epoch s) keeps only gaps that end inside it (the steady state);
    ``other_stalls`` are more machine stalls (start, end) than SIPp's silences.
    """
    per_stream = []
    all_gaps = []
    long_gaps: list[tuple[float, float]] = []  # (start, end) epoch s
    for times in capture.out_times.values():
        t = np.asarray(times)
        gaps = np.diff(t) * 1000.0
        ends = t[1:]
        if window is not None:
            keep = (ends >= window[0]) & (ends < window[1])
            gaps, ends = gaps[keep], ends[keep]
        if gaps.size < 2:
            continue
        long = gaps > LONG_GAP_MS
        starts = ends[long] - gaps[long] / 1000.0
        long_gaps += zip(starts.tolist(), ends[long].tolist(), strict=True)
        all_gaps.append(gaps)
        per_stream.append((float(gaps.mean()), float(gaps.std()), _pct(gaps, 99), gaps.max()))
    if not all_gaps:
        return {"streams": 0}
    gaps = np.concatenate(all_gaps)
    p99s = np.array([s[2] for s in per_stream])
    maxes = np.array([s[3] for s in per_stream])
    return {
        "streams": len(per_stream),
        "gaps": int(gaps.size),
        "mean": float(gaps.mean()),
        "stdev": float(gaps.std()),
        "p99": _pct(gaps, 99),
        "p999": _pct(gaps, 99.9),
        "max": float(gaps.max()),
        "stream_p99_median": _pct(p99s, 50),
        "stream_p99_worst": float(p99s.max()),
        "stream_max_median": _pct(maxes, 50),
        "streams_max_over_30": int(np.sum(maxes > 30.0)),
        "stream_stdev_worst": max(s[1] for s in per_stream),
        **_stall_figures(capture, long_gaps, gaps[gaps <= LONG_GAP_MS], other_stalls),
    }


def sipp_silences(capture: Capture) -> list[tuple[float, float]]:
    """(start, end) in epoch s of the spans in which SIPp sent nothing for STALL_S or more."""
    sent = np.sort(np.asarray(capture.in_times))
    if sent.size < 2:
        return []
    silent = np.diff(sent) >= STALL_S
    return list(zip(sent[:-1][silent].tolist(), sent[1:][silent].tolist(), strict=True))


def _stall_figures(
    capture: Capture,
    long_gaps: list[tuple[float, float]],
    short_gaps: npt.NDArray[np.float64],
    other_stalls: Sequence[tuple[float, float]],
) -> dict[str, Any]:
    """Long outbound gaps that overlap a machine-wide stall, and the max gap of all others."""
    silences = sipp_silences(capture)
    stalls = sorted([*silences, *other_stalls])
    during = 0
    outside = float(short_gaps.max()) if short_gaps.size else 0.0
    for gap_start, gap_end in long_gaps:
        if any(start < gap_end and end > gap_start for start, end in stalls):
            during += 1
        else:
            outside = max(outside, (gap_end - gap_start) * 1000.0)
    return {
        "long_gaps": len(long_gaps),
        "long_gaps_in_stalls": during,
        "max_outside_stalls": outside,
        "sipp_silences": len(silences),
        "probe_stalls": len(other_stalls),
        "machine_stall_max_ms": max((e - s for s, e in stalls), default=0.0) * 1000.0,
    }


def _timeline(packets: list[tuple[float, int, bytes]], t0: float, length: int) -> npt.NDArray[Any]:
    out = np.zeros(length, dtype=np.float64)
    if not packets:
        return out
    first_ts = packets[0][1]
    offsets = [when - ((ts - first_ts) & 0xFFFFFFFF) / RATE_HZ for when, ts, _ in packets]
    anchor = float(np.median(offsets)) - t0
    for _, ts, payload in packets:
        at = round((anchor + ((ts - first_ts) & 0xFFFFFFFF) / RATE_HZ) * RATE_HZ)
        pcm = decode_ulaw(payload).astype(np.float64)
        end = min(length, at + pcm.size)
        if 0 <= at < end:
            out[at:end] = pcm[: end - at]
    return out


def echo_delay_ms(
    sent: list[tuple[float, int, bytes]], heard: list[tuple[float, int, bytes]], t0: float
) -> tuple[float, float] | None:
    """(delay in ms, correlation score) of ``heard`` against ``sent``, or None if no echo."""
    length = int((ECHO_WINDOW_S + 1.0) * RATE_HZ)
    x, y = _timeline(sent, t0, length), _timeline(heard, t0, length)
    energy = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    if energy == 0.0:
        return None
    n = 1 << (2 * length - 1).bit_length()
    xcorr = np.fft.irfft(np.conj(np.fft.rfft(x, n)) * np.fft.rfft(y, n), n)
    lags = xcorr[: int(ECHO_MAX_LAG_S * RATE_HZ)]
    best = int(np.argmax(lags))
    score = float(lags[best]) / energy
    if score < ECHO_MIN_SCORE:
        return None
    return best * 1000.0 / RATE_HZ, score


def echo_figures(capture: Capture, t0: float) -> dict[str, Any]:
    """Per-call echo delay over the capture's echo window: spread across calls (ms)."""
    delays = []
    missing = 0
    for (direction, port), sent in capture.echo.items():
        if direction != "in":
            continue
        found = echo_delay_ms(sent, capture.echo.get(("out", port), []), t0)
        if found is None:
            missing += 1
        else:
            delays.append(found[0])
    values = np.array(delays)
    return {
        "calls": len(delays),
        "no_echo": missing,
        "p50": _pct(values, 50),
        "p99": _pct(values, 99),
        "max": float(values.max()) if values.size else 0.0,
    }
