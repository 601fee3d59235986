"""Helpers of the fault, overload and soak suites (issue 12): ten live SIPp calls, the checks
made after every fault (cadence, records, recordings, log lines), and the bad input sent.

The checks, for the calls admitted before a fault:

* cadence: each call's outbound stream is one SSRC with continuous sequence numbers, and during
  each fault the p99 of the calls' own gaps (those the stall witness does not excuse) is
  <= :data:`FAULT_P99_MS`, or, on a machine so loaded that the same calls without a fault do
  worse, no more than :data:`CONTROL_SLACK_MS` above that control (:func:`assert_cadence`);
* records: every call has its record (a CDR line and a row in the records database);
* recordings: every call's WAV file is closed (its header says as many frames as the file
  holds) and plays (stereo, 8 kHz, at least the call's length less a second).
"""

from __future__ import annotations

import itertools
import random
import re
import socket
import sqlite3
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sipbot.media.rtp import RtpPacket as WireRtp
from tests.e2e.conftest import SipbotServer
from tests.e2e.emulated import wait_until
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.capture import RtpPacket, select, stream_stats
from tests.e2e.test_hostile_input_e2e import rtp_ports
from tests.e2e.test_media_robustness import trace_entries

FAULT_CALLS = 10
FAULT_P99_MS = 22.0  # issue 12: p99 of an admitted call's outbound gaps during a fault
CONTROL_SLACK_MS = 3.0  # a fault may not add more than this to the machine's own p99
CALLS_UP_S = 15.0
SETTLE_S = 1.0  # after the calls are up, before the faults: setting up ten calls is not one


def live_calls(
    server: SipbotServer, speech: audio.Speech, log_dir: Path, *, hold_s: float, name: str
) -> sipp.Sipp:
    """:data:`FAULT_CALLS` SIPp calls that talk the whole time (the speech on a loop) and hang
    up after ``hold_s``; returns :data:`SETTLE_S` after all are up (each holds an RTP port of
    the server)."""
    scenario = sipp.uac_scenario(
        log_dir / f"{name}.xml", speech.ulaw, hold_s=hold_s, audio_loops=-1
    )
    uac = sipp.start_uac(
        server.address,
        scenario,
        log_dir,
        calls=FAULT_CALLS,
        rate=50.0,
        timeout_s=hold_s + 40,
        capture=True,
        name=name,
    )
    wait_until(
        lambda: len(rtp_ports(server.pid)) >= FAULT_CALLS or not uac.process.running(),
        CALLS_UP_S,
        f"{FAULT_CALLS} calls up",
    )
    assert uac.process.running(), "SIPp ended before its calls were up"
    time.sleep(SETTLE_S)
    return uac


def own_gaps(
    packets: list[RtpPacket], stalls: list[tuple[float, float]], window: tuple[float, float]
) -> list[float]:
    """Gaps (ms) between successive packets of one stream that end inside ``window`` (wall
    clock, as the capture's times) and that no witnessed machine stall overlaps."""
    ordered = sorted(packets, key=lambda p: p.time)
    return [
        (cur.time - prev.time) * 1000
        for prev, cur in itertools.pairwise(ordered)
        if window[0] <= cur.time < window[1]
        and not any(a < cur.time and prev.time < b for a, b in stalls)
    ]


def assert_cadence(
    packets: list[RtpPacket],
    phases: list[tuple[str, float, float]],
    stalls: list[tuple[float, float]],
) -> dict[str, float]:
    """Every call's outbound stream (one SSRC each) is continuous, and during each phase
    (name, start, end) the p99 of all calls' own gaps is <= :data:`FAULT_P99_MS`, or no more
    than :data:`CONTROL_SLACK_MS` above the first phase's, the control: the same calls with no
    fault, which says what the (shared) machine allows at that moment. Returns the p99 (ms)
    per phase."""
    streams = stream_stats(packets)
    for stats in streams.values():
        assert stats.payload_type == audio.PT_PCMU, stats
        assert (stats.seq_missing, stats.seq_out_of_order) == (0, 0), stats
    calls = [select(packets, ssrc=ssrc) for ssrc in streams]
    figures, means = {}, {}
    for name, start, end in phases:
        gaps = [g for call in calls for g in own_gaps(call, stalls, (start, end))]
        assert gaps, f"no packet during {name}"
        figures[name] = float(np.percentile(gaps, 99))
        means[name] = round(float(np.mean(gaps)), 2)
    control = figures[phases[0][0]]
    bound = max(FAULT_P99_MS, control + CONTROL_SLACK_MS)
    worse = {k: round(v, 1) for k, v in figures.items() if v > bound}
    rounded = {k: round(v, 1) for k, v in figures.items()}
    why = f"gap p99 over {bound:.1f} ms: {worse}; p99 {rounded}; mean {means}; stalls {stalls}"
    assert not worse, why
    return figures


def sipp_call_ids(result: sipp.SippResult) -> set[str]:
    """The Call-IDs of the INVITEs SIPp sent."""
    text = result.messages()
    return set(re.findall(r"^INVITE .*?^Call-ID: *(\S+)", text, re.M | re.S))


def records_of(data_dir: Path) -> dict[str, tuple[str, str | None]]:
    """call_id -> (outcome, end_reason) from the default SQLite records file."""
    path = data_dir / "sipbot" / "records.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT call_id, outcome, end_reason FROM calls").fetchall()
    return {call_id: (outcome, reason) for call_id, outcome, reason in rows}


def assert_recordings(directory: Path, call_ids: set[str], min_s: float) -> list[float]:
    """One closed, playable stereo WAV of at least ``min_s`` per call; their lengths (s)."""
    safe = {"".join(c if c.isalnum() or c in "-_." else "_" for c in i)[:64] for i in call_ids}
    files = sorted(p for p in directory.glob("*.wav") if p.stem.split("-", 2)[-1] in safe)
    assert len(files) == len(call_ids), sorted(f.name for f in directory.glob("*.wav"))
    lengths = []
    for path in files:
        with wave.open(str(path)) as wav:
            channels, width, rate, frames = (
                wav.getnchannels(),
                wav.getsampwidth(),
                wav.getframerate(),
                wav.getnframes(),
            )
            data = wav.readframes(frames)
        # closed: the header's frame count covers the whole file (an unclosed WAV says 0)
        assert (channels, width) == (2, 2), path
        assert len(data) == frames * 4 == path.stat().st_size - 44, path
        lengths.append(frames / rate)
    assert min(lengths) >= min_s, lengths
    return lengths


def count_lines(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log, re.M))


# --- bad input ------------------------------------------------------------------------------

MALFORMED_SOURCES = 100  # 127.0.1.x: each under the per-source burst, so all reach the parser


def malformed_datagram(rng: random.Random, i: int, target: str) -> bytes:
    """One malformed SIP datagram of ten kinds (random, cut, bad lines, bad numbers, huge)."""
    via = f"Via: SIP/2.0/UDP 127.0.1.1:5999;branch=z9hG4bK-m{i}\r\n"
    head = f"OPTIONS sip:bot@{target} SIP/2.0\r\n"
    kind = i % 10
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 1500))
    if kind == 1:
        return (head + via + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()[
            : rng.randrange(1, 60)
        ]
    if kind == 2:
        return (head + via + "this line has no colon\r\n\r\n").encode()
    if kind == 3:
        return (head + via + "CSeq: 99999999999999999999 OPTIONS\r\n\r\n").encode()
    if kind == 4:
        return (head + via + "Content-Length: -5\r\n\r\n").encode()
    if kind == 5:
        return (head + via + "Content-Length: 4000\r\n\r\nshort").encode()
    if kind == 6:
        return b"INVITE \x00\xff\xfe sip:\x00@x SIP/2.0\r\n" + rng.randbytes(200)
    if kind == 7:
        return ("SIP/2.0 999999 Weird\r\n" + via + "\r\n").encode()
    if kind == 8:
        return (head + via + "From: " + "<" * 3000 + "\r\n\r\n").encode()
    if i % 5000 == 9:
        return (head + via + "X: " + "a" * 60_000 + "\r\n\r\n").encode()  # near the UDP maximum
    return (head + via + "X: " + "a" * rng.randrange(1_000, 8_000) + "\r\n\r\n").encode()


def send_malformed(server: SipbotServer, count: int, rate: float, seed: int = 12) -> int:
    """``count`` malformed datagrams from :data:`MALFORMED_SOURCES` addresses at ``rate``/s."""
    rng = random.Random(seed)
    socks = []
    for n in range(MALFORMED_SOURCES):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.1.{n + 1}", 0))
        socks.append(s)
    sent = 0
    try:
        start = time.monotonic()
        for i in range(count):
            data = malformed_datagram(rng, i, server.address)
            socks[i % MALFORMED_SOURCES].sendto(data, (server.host, server.port))
            sent += 1
            if i % 50 == 49:
                delay = start + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    finally:
        for s in socks:
            s.close()
    return sent


RTP_FLOOD_BURST = 50  # packets at once at each port (half a call's inbound queue)
RTP_FLOOD_PAUSE_S = 0.1


def rtp_attack(ports: set[int], rng: random.Random, flood_per_port: int = 1000) -> int:
    """Garbage, RTP with foreign SSRCs and payload types, then a flood of bursts at each port
    (10 calls: 5,000 packets a second for 2 s), from a source that is not the call's peer.
    Returns the datagrams sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.5", 0))
    sent = 0
    try:
        for port in sorted(ports):
            for k in range(50):
                s.sendto(rng.randbytes(rng.randrange(0, 300)), ("127.0.0.1", port))
                ssrc = rng.randrange(1 << 32)
                packet = WireRtp(rng.choice((0, 8, 18, 101, 127)), k, k * 160, ssrc, b"\xff" * 160)
                s.sendto(packet.serialize(), ("127.0.0.1", port))
                sent += 2
        rounds = flood_per_port // RTP_FLOOD_BURST
        for r in range(rounds):  # a burst at every port each RTP_FLOOD_PAUSE_S
            for port in sorted(ports):
                for k in range(RTP_FLOOD_BURST):
                    seq = r * RTP_FLOOD_BURST + k
                    packet = WireRtp(0, seq, seq * 160, 7, b"\x7f" * 160).serialize()
                    s.sendto(packet, ("127.0.0.1", port))
                    sent += 1
            time.sleep(RTP_FLOOD_PAUSE_S)
    finally:
        s.close()
    return sent


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name`` (with its labels) in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- overload ---------------------------------------------------------------------------------

_REFUSED = """  <nop next="done"/>

  <label id="refused"/>
  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <label id="done"/>

  <ResponseTimeRepartition"""


def overload_scenario(scenario: Path) -> Path:
    """Let a rendered ``uac.xml`` (answered, caller hangs up) also end well on 503: ACK it.

    SIPp then counts every call as successful; :func:`admission` tells the 503s apart.
    """
    text = scenario.read_text()
    answered = '  <recv response="200" rtd="true" rrs="true"/>'
    end = "  <ResponseTimeRepartition"
    if text.count(answered) != 1 or text.count(end) != 1:
        raise ValueError(f"{scenario}: not an answered uac.xml")
    text = text.replace(
        answered, '  <recv response="503" optional="true" next="refused"/>\n' + answered
    )
    scenario.write_text(text.replace(end, _REFUSED))
    return scenario


@dataclass
class Admission:
    """What each INVITE of a SIPp run got, from its message trace."""

    answered: int = 0
    refused: int = 0  # 503
    retry_after: int = 0  # 503s that carried Retry-After
    other: dict[int, int] = field(default_factory=dict)
    refusal_ms: list[float] = field(default_factory=list)  # INVITE sent -> 503 received

    def refusal_p(self, q: float) -> float:
        return float(np.percentile(self.refusal_ms, q)) if self.refusal_ms else 0.0


def admission(messages: Path) -> Admission:
    """Count the finals to INVITEs in a SIPp ``-trace_msg`` file (see :func:`trace_entries`)."""
    sent: dict[str, float] = {}
    result = Admission()
    for when, text in trace_entries(messages):
        call_id = re.search(r"^Call-ID: *(\S+)", text, re.M | re.I)
        if call_id is None:
            continue
        cid = call_id.group(1)
        if "message sent" in text and re.search(r"^INVITE ", text, re.M):
            sent.setdefault(cid, when)
            continue
        status = re.search(r"^SIP/2\.0 (\d{3}) ", text, re.M)
        if "message received" not in text or status is None or " INVITE" not in text:
            continue
        code = int(status.group(1))
        if code < 200 or not re.search(r"^CSeq: *1 INVITE", text, re.M | re.I):
            continue
        if code == 200:
            result.answered += 1
        elif code == 503:
            result.refused += 1
            result.retry_after += bool(re.search(r"^Retry-After: *\d+", text, re.M | re.I))
            if cid in sent:
                result.refusal_ms.append((when - sent.pop(cid)) * 1000)
        else:
            result.other[code] = result.other.get(code, 0) + 1
    return result
