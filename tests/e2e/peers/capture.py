"""Capture RTP on loopback with dumpcap, then read it back: packets, per-SSRC pacing, audio.

Privileges: capturing needs root, or ``dumpcap`` with CAP_NET_RAW + CAP_NET_ADMIN (Debian's
``wireshark-common`` can grant those to the ``wireshark`` group). CI runs as root.
:func:`capture_unavailable` says why capture cannot work, for a skip reason.

The pcap is parsed here (classic pcap, Ethernet/Linux-cooked link types, IPv4/UDP, RTP v2), not by
tshark's RTP heuristics, so every UDP packet to/from the given ports counts, exactly.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.e2e.peers.audio import (
    PT_G722,
    PT_PCMA,
    PT_PCMU,
    PT_TELEPHONE_EVENT,
    Pcm,
    decode_payloads,
    rms_dbfs,
)
from tests.e2e.peers.process import ManagedProcess, PeerError

DUMPCAP = "dumpcap"
READY_TIMEOUT_S = 10.0
PERMISSION_CHECK_S = 0.05
MAX_CAPTURE_S = 600  # dumpcap stops by itself after this, whatever happens to us
BUFFER_MIB = 64  # kernel capture buffer: 200 calls x 100 packets/s must not drop
SILENCE_DBFS = -50.0

_LINKTYPE_ETHERNET = 1
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_LINUX_SLL2 = 276
_LINK_HEADER = {_LINKTYPE_ETHERNET: 14, _LINKTYPE_LINUX_SLL: 16, _LINKTYPE_LINUX_SLL2: 20}


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet as captured. ``time`` is the capture timestamp (epoch seconds)."""

    time: float
    src_port: int
    dst_port: int
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Pacing and continuity of one SSRC's audio packets (telephone-event packets excluded)."""

    ssrc: int
    payload_type: int  # of the first audio packet
    first_time: float  # capture time of the first audio packet (epoch seconds)
    packets: int
    gap_mean_ms: float
    gap_stdev_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    seq_missing: int  # sequence numbers skipped (forward jumps), wrap-aware
    seq_out_of_order: int  # packets whose sequence number went backwards
    timestamp_steps: dict[int, int]  # timestamp increment -> how many times it was seen
    duration_s: float


@functools.cache
def capture_unavailable() -> str | None:
    """Why loopback capture cannot work here, or None if it can (tried once per process)."""
    if shutil.which(DUMPCAP) is None:
        return "dumpcap is not installed (Debian package tshark / wireshark-common)"
    with tempfile.TemporaryDirectory() as tmp:
        # Listing interfaces works unprivileged: only a real (1 s) capture proves permission.
        argv = [DUMPCAP, "-q", "-i", "lo", "-a", "duration:1", "-w", f"{tmp}/probe.pcapng"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"dumpcap failed: {exc}"
    if out.returncode != 0:
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("dumpcap:")]
        reason = errors[0] if errors else f"exit {out.returncode}"
        return f"dumpcap cannot capture on lo (needs root or CAP_NET_RAW+CAP_NET_ADMIN): {reason}"
    return None


class RtpCapture:
    """A running dumpcap on ``lo`` for UDP packets from or to some ports."""

    def __init__(self, process: ManagedProcess, pcap_path: Path, ports: Sequence[int]):
        self.process = process
        self.pcap_path = pcap_path
        self.ports = tuple(ports)

    @classmethod
    def start(
        cls, log_dir: Path, ports: Sequence[int], name: str = "rtp", max_s: float = MAX_CAPTURE_S
    ) -> RtpCapture:
        """Start capturing UDP to or from ``ports``; returns once dumpcap captures.

        Raises:
            PeerError: dumpcap did not start capturing within 10 s.
        """
        pcap = log_dir / f"{name}.pcap"
        bpf = "udp and (" + " or ".join(f"port {p}" for p in ports) + ")"
        argv = [DUMPCAP, "-q", "-i", "lo", "-P", "-B", str(BUFFER_MIB), "-f", bpf, "-w", str(pcap)]
        argv += ["-a", f"duration:{int(max_s)}"]
        proc = ManagedProcess.start(name, argv, log_dir)
        # dumpcap prints this once the interface is open and the filter is installed, but also
        # just before failing for lack of permission: check that it is still alive after it.
        proc.wait_for_line(r"^Capturing on ", READY_TIMEOUT_S, stream="stderr")
        time.sleep(PERMISSION_CHECK_S)
        if not proc.running():
            raise PeerError(f"dumpcap stopped at once: {proc.read_log('stderr').strip()}")
        return cls(proc, pcap, ports)

    def stop(self) -> Path:
        """Stop dumpcap (it flushes the file on SIGTERM) and return the pcap path (idempotent)."""
        self.process.stop()
        return self.pcap_path

    def packets(self) -> list[RtpPacket]:
        """All RTP packets in the (stopped) capture."""
        if self.process.running():
            raise PeerError(f"{self.process.name}: stop the capture before reading it")
        return read_rtp(self.pcap_path)


def read_rtp(pcap_path: Path) -> list[RtpPacket]:
    """Parse a classic pcap file into RTP packets (non-RTP UDP datagrams are skipped).

    Raises:
        ValueError: Not a classic pcap, or an unsupported link type.
    """
    data = pcap_path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(magic)
    nano = {b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    order = endian or nano
    if order is None:
        raise ValueError(f"{pcap_path}: not a classic pcap file (magic {magic.hex()})")
    linktype = struct.unpack(order + "I", data[20:24])[0]
    if linktype not in _LINK_HEADER:
        raise ValueError(f"{pcap_path}: unsupported link type {linktype}")
    divisor = 1e9 if nano else 1e6
    record = struct.Struct(order + "IIII")
    packets: list[RtpPacket] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _ = record.unpack_from(data, offset)
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        packet = _parse_frame(frame, linktype, sec + frac / divisor)
        if packet is not None:
            packets.append(packet)
    return packets


def _parse_frame(frame: bytes, linktype: int, when: float) -> RtpPacket | None:
    ip = frame[_LINK_HEADER[linktype] :]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:  # IPv4, UDP
        return None
    if struct.unpack("!H", ip[6:8])[0] & 0x3FFF:  # a fragment: not expected for RTP on lo
        return None
    ihl = (ip[0] & 0x0F) * 4
    src_port, dst_port, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
    return parse_rtp(ip[ihl + 8 : ihl + length], when, src_port, dst_port)


def parse_rtp(
    data: bytes, when: float = 0.0, src_port: int = 0, dst_port: int = 0
) -> RtpPacket | None:
    """Parse one RTP datagram (RFC 3550); None if it is not RTP version 2 or is truncated."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, timestamp, ssrc = struct.unpack("!BBHII", data[:12])
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(data) < start + 4:
            return None
        start += 4 + 4 * struct.unpack("!H", data[start + 2 : start + 4])[0]
    end = len(data) - (data[-1] if first & 0x20 else 0)
    if start > end:
        return None
    return RtpPacket(
        when,
        src_port,
        dst_port,
        second & 0x7F,
        bool(second & 0x80),
        seq,
        timestamp,
        ssrc,
        data[start:end],
    )


def select(
    packets: Iterable[RtpPacket],
    *,
    src_port: int | None = None,
    dst_port: int | None = None,
    ssrc: int | None = None,
    audio_only: bool = False,
) -> list[RtpPacket]:
    """Filter packets; ``audio_only`` drops telephone-event (PT 101) packets."""
    return [
        p
        for p in packets
        if (src_port is None or p.src_port == src_port)
        and (dst_port is None or p.dst_port == dst_port)
        and (ssrc is None or p.ssrc == ssrc)
        and not (audio_only and p.payload_type == PT_TELEPHONE_EVENT)
    ]


def stream_stats(packets: Iterable[RtpPacket]) -> dict[int, StreamStats]:
    """Per-SSRC pacing of the audio packets among ``packets`` (pass one direction only)."""
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for p in packets:
        if p.payload_type != PT_TELEPHONE_EVENT:
            by_ssrc.setdefault(p.ssrc, []).append(p)
    return {ssrc: _stats(ssrc, pkts) for ssrc, pkts in by_ssrc.items()}


def _stats(ssrc: int, pkts: list[RtpPacket]) -> StreamStats:
    gaps = np.diff([p.time for p in pkts]) * 1000.0
    missing = backwards = 0
    steps: dict[int, int] = {}
    for prev, cur in itertools.pairwise(pkts):
        delta = (cur.seq - prev.seq) & 0xFFFF
        if delta >= 0x8000:
            backwards += 1
        elif delta > 1:
            missing += delta - 1
        step = (cur.timestamp - prev.timestamp) & 0xFFFFFFFF
        steps[step] = steps.get(step, 0) + 1
    has_gaps = gaps.size > 0
    return StreamStats(
        ssrc=ssrc,
        payload_type=pkts[0].payload_type,
        first_time=pkts[0].time,
        packets=len(pkts),
        gap_mean_ms=float(np.mean(gaps)) if has_gaps else 0.0,
        gap_stdev_ms=float(statistics.pstdev(gaps.tolist())) if has_gaps else 0.0,
        gap_p99_ms=float(np.percentile(gaps, 99)) if has_gaps else 0.0,
        gap_max_ms=float(np.max(gaps)) if has_gaps else 0.0,
        seq_missing=missing,
        seq_out_of_order=backwards,
        timestamp_steps=steps,
        duration_s=pkts[-1].time - pkts[0].time,
    )


def received_audio(packets: Sequence[RtpPacket]) -> tuple[Pcm, int]:
    """Decode one direction's audio packets into PCM laid out in time.

    Within an SSRC, samples are placed by RTP timestamp (a silence gap stays a gap); a new SSRC
    starts where its first packet arrived. Telephone-event packets are skipped. All audio packets
    must share one payload type (0, 8 or 9).

    Returns:
        (pcm, rate); an empty array at 8 kHz when there is no audio packet.

    Raises:
        ValueError: Mixed or undecodable payload types.
    """
    audio = sorted((p for p in packets if p.payload_type != PT_TELEPHONE_EVENT), key=_by_time)
    if not audio:
        return np.zeros(0, dtype=np.int16), 8000
    types = {p.payload_type for p in audio}
    if len(types) != 1:
        raise ValueError(f"mixed payload types {sorted(types)}: select one stream first")
    pt = types.pop()
    rate = 16000 if pt == PT_G722 else 8000
    samples_per_tick = rate // 8000  # G.722: RTP clock 8 kHz, audio 16 kHz
    t0 = audio[0].time
    placed: list[tuple[int, Pcm]] = []
    decoders: dict[int, Callable[[bytes], Pcm]] = {}
    seg_ssrc, seg_start, seg_ts0 = -1, 0, 0
    for p in audio:
        if p.ssrc != seg_ssrc:
            seg_ssrc, seg_start, seg_ts0 = p.ssrc, round((p.time - t0) * rate), p.timestamp
        decode = decoders.setdefault(p.ssrc, _decoder(pt))
        offset = seg_start + ((p.timestamp - seg_ts0) & 0xFFFFFFFF) * samples_per_tick
        placed.append((offset, decode(p.payload)))
    length = max(off + len(pcm) for off, pcm in placed)
    out = np.zeros(length, dtype=np.int16)
    for off, pcm in placed:
        out[off : off + len(pcm)] = pcm
    return out, rate


def first_audible(
    packets: Iterable[RtpPacket], threshold_dbfs: float = SILENCE_DBFS
) -> RtpPacket | None:
    """The first audio packet (in capture order) whose decoded RMS exceeds ``threshold_dbfs``.

    For latency measurements: compare its ``time`` with when the audio was sent or expected.
    Pass one direction's packets (e.g. ``select(packets, dst_port=...)``).
    """
    decoders: dict[tuple[int, int], Callable[[bytes], Pcm]] = {}
    for p in sorted(packets, key=_by_time):
        if p.payload_type not in (PT_PCMU, PT_PCMA, PT_G722):
            continue
        decode = decoders.setdefault((p.ssrc, p.payload_type), _decoder(p.payload_type))
        if rms_dbfs(decode(p.payload)) > threshold_dbfs:
            return p
    return None


def _by_time(p: RtpPacket) -> float:
    return p.time


def _decoder(payload_type: int) -> Callable[[bytes], Pcm]:
    """A payload decoder for one stream (G.722 keeps state between packets)."""
    if payload_type == PT_G722:
        state = importlib.import_module("G722").G722(16000, 64000)  # PyPI package `g722`
        return lambda payload: np.asarray(state.decode(payload), dtype=np.int16)
    return lambda payload: decode_payloads(payload_type, [payload])[0]


def tshark_stream_summary(pcap_path: Path) -> str:
    """tshark's per-stream table (jitter, loss) for a capture, for logs and debugging."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap_path), "-q", "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout
