"""The media path under real-world conditions, against a real ``sipbot run`` with SIPp callers.

- Early media and symmetric RTP: sipbot sends silence to the SDP's address at once on answer
  (trunks wait for media before they send any), then, as soon as the caller's RTP arrives from
  another port (NAT), sends there instead, on one continuous stream.
- RTP inactivity: a caller whose RTP stops gets a BYE after ``server.media.inactivity_timeout_s``.
- Bad input: garbage, truncated RTP, foreign sources, a codec and SSRC change and a burst of 50
  packets sprayed at a live call's RTP port leave its outbound cadence and its echo intact, and
  another call untouched; the server logs each kind of problem once (rate-limited).

Packets that must seem to come from the caller's own RTP port (a changed SSRC or codec, a burst)
are sent through a raw socket with that source port (root or CAP_NET_RAW, as for SIPp's
``play_pcap_audio``: the ``dtmf_pcap`` requirement).
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer
from tests.e2e.peers import audio, capture, sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.test_call_path import (
    ECHO_HOLD_S,
    ECHO_MIN_CORRELATION,
    StallWitness,
    assert_steady,
    bot_packets,
    caller_packets,
    cdr_lines,
    echo_score,
    paced_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ANSWER_WAIT_S = 10.0
# sipp -trace_msg writes "----...---- 2026-11-21 11:04:44.821581" (local time) before each message.
_STAMP = r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n"
_TRACE_ENTRY = re.compile(_STAMP + r"(.*?)(?=^-{20,} |\Z)", re.M | re.S)
ULAW_SILENCE = b"\xff"


def trace_entries(path: Path) -> Iterator[tuple[float, str]]:
    """(wall-clock time, text) of each message in a SIPp ``-trace_msg`` file."""
    text = path.read_text(errors="replace") if path.exists() else ""
    for match in _TRACE_ENTRY.finditer(text):
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        yield when, match.group(2)


def answer_of(path: Path) -> tuple[float, int]:
    """When SIPp received the 200 OK to its INVITE, and the RTP port in its SDP."""
    for when, text in trace_entries(path):
        if "message received" in text and "SIP/2.0 200 OK" in text and " INVITE\n" in text:
            port = re.search(r"^m=audio (\d+) ", text, re.M)
            assert port is not None, text
            return when, int(port.group(1))
    raise LookupError(f"no 200 OK to the INVITE in {path}")


def wait_answer(uac: sipp.Sipp, timeout: float = ANSWER_WAIT_S) -> tuple[float, int]:
    """:func:`answer_of` once SIPp has traced the 200 OK (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return answer_of(uac.messages_path)
        except LookupError:
            if time.monotonic() >= deadline or not uac.process.running():
                raise
            time.sleep(0.05)


def media_scenario(
    dest: Path,
    audio_file: Path,
    *,
    sdp_port: int | None = None,
    audio_delay_s: float = 0.0,
    hold_s: float | None = ECHO_HOLD_S,
    bye_timeout_s: float = 30.0,
) -> Path:
    """Render ``uac_media.xml`` (PCMU). ``hold_s=None``: wait for sipbot's BYE instead."""
    values = {
        "SDP_PORT": "[media_port]" if sdp_port is None else str(sdp_port),
        "AUDIO_DELAY_MS": str(round(audio_delay_s * 1000)),
        "AUDIO_FILE": str(audio_file),
        "AUDIO_LOOPS": "1",
        "AUDIO_PT": str(audio.PT_PCMU),
        "HOLD_MS": str(round((hold_s or 0) * 1000)),
        "BYE_TIMEOUT_MS": str(round(bye_timeout_s * 1000)),
        **sipp.sdp_media(["PCMU"]),
    }
    blocks = {"send_bye"} if hold_s is not None else {"recv_bye"}
    return sipp.render_scenario("uac_media.xml", dest, values, blocks)


# --- early silence, symmetric RTP, inactivity ----------------------------------------------------


@pytest.mark.requires_peers("sipp", "capture")
def test_early_silence_goes_to_the_sdp_port_then_replies_follow_the_rtp_source(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server = paced_server(sipbot_server)
    # The caller's SDP names a port SIPp does not send from (a NAT in between); a socket of
    # ours takes what arrives there. SIPp stays silent for 1.5 s after its ACK.
    sdp_port = free_port("udp")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", sdp_port))
    delay_s = 1.5
    scenario = media_scenario(
        peers_tmp / "uac.xml", speech.ulaw, sdp_port=sdp_port, audio_delay_s=delay_s
    )
    # Another call first: sipbot's shared ticker is running, so its next tick for a new call
    # may be up to 20 ms away; only the early packet leaves together with the 200 OK.
    hold = delay_s + ECHO_HOLD_S
    background = sipp.uac_scenario(peers_tmp / "background.xml", speech.ulaw, hold_s=hold)
    other = sipp.start_uac(server.address, background, peers_tmp, name="background")
    wait_answer(other)
    witness = StallWitness(peers_tmp)
    at_sdp_port = capture.RtpCapture.start(peers_tmp, [sdp_port], name="sdp-port")
    try:
        uac = sipp.start_uac(server.address, scenario, peers_tmp, timeout_s=40, capture=True)
        result = uac.wait(hold + 30)
    finally:
        at_sdp_port.stop()
        sink.close()
    stalls = witness.stalls()
    result.assert_ok(calls=1)
    other.wait(30).assert_ok(calls=1)
    answered_at, _ = answer_of(result.messages_path)
    early = capture.select(at_sdp_port.packets(), dst_port=sdp_port)
    later = bot_packets(result)
    sent = caller_packets(result)
    assert early, "no RTP at the SDP's port"
    assert later, "no RTP at the port the caller's RTP came from"
    # The first packet leaves with the 200 OK (in the same callback: SIPp, reading the 200
    # later, may even log it after the packet was captured), long before the caller's first
    # packet; without it the pacer's first tick would come 0-20 ms later.
    first = early[0]
    assert -0.1 <= first.time - answered_at <= 0.005, first.time - answered_at
    assert first.marker
    assert audio.rms(audio.decode_ulaw(first.payload)) == 0.0
    assert sent[0].time - first.time >= delay_s - 0.2
    # Silence to the SDP port until the caller's RTP arrives, then everything to its source.
    assert all(p.time <= sent[0].time + 0.005 for p in early), early[-1].time - sent[0].time
    assert len(early) >= (delay_s - 0.2) * 50
    assert all(audio.rms(audio.decode_ulaw(p.payload)) == 0.0 for p in early)
    assert later[0].time >= sent[0].time
    # One stream across the switch: same SSRC, continuous sequence, 20 ms cadence.
    assert_steady(early + later, audio.PT_PCMU, int((delay_s + ECHO_HOLD_S) * 50) - 10, stalls)
    assert echo_score(speech, later) >= ECHO_MIN_CORRELATION
    assert f"(SDP said ('127.0.0.1', {sdp_port}))" in server.log()


INACTIVITY_CONFIG = """\
server:
  media:
    inactivity_timeout_s: {timeout}
agents:
  echo:
    provider: local
    local: {{mode: echo}}
routes:
  - name: default
    answer: echo
"""


@pytest.mark.requires_peers("sipp")
def test_a_caller_whose_rtp_stops_gets_a_bye(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    timeout_s = 1.0
    config = peers_tmp / "inactivity.yaml"
    config.write_text(INACTIVITY_CONFIG.format(timeout=timeout_s))
    server = sipbot_server("-c", str(config))
    # SIPp plays the speech once, then sends nothing and waits for sipbot's BYE.
    scenario = media_scenario(
        peers_tmp / "uac.xml", speech.ulaw, hold_s=None, bye_timeout_s=speech.duration_s + 5
    )
    result = sipp.run_uac(server.address, scenario, peers_tmp, timeout_s=30)
    result.assert_ok(calls=1)
    [cdr] = cdr_lines(server)
    assert cdr["reason"] == "rtp-timeout", cdr
    duration = float(str(cdr["duration_s"]))
    expected = speech.duration_s + timeout_s
    assert expected - 0.1 <= duration <= expected + 0.6, (duration, expected)
    assert "no RTP from the caller, hanging up" in server.log()


# --- bad input -----------------------------------------------------------------------------------


def rtp(
    seq: int,
    *,
    pt: int = audio.PT_PCMU,
    ssrc: int = 0x5EED0001,
    payload: bytes = ULAW_SILENCE * 160,
    marker: bool = False,
) -> bytes:
    """One RTP v2 packet (timestamp = 160 x seq)."""
    second = (0x80 if marker else 0) | pt
    header = struct.pack("!BBHII", 0x80, second, seq & 0xFFFF, (160 * seq) & 0xFFFFFFFF, ssrc)
    return header + payload


def truncated_and_malformed() -> list[bytes]:
    """RTP that must fail to parse: cut headers, lying CSRC/extension/padding fields, versions."""
    good = rtp(7)
    packets = [good[:n] for n in range(1, 12)]
    packets.append(bytes([0x8F]) + good[1:12])  # 15 CSRCs announced, none present
    packets.append(bytes([0x90]) + good[1:12])  # extension bit, no extension header
    packets.append(bytes([0x90]) + good[1:12] + b"\xbe\xde\x00\xff")  # extension runs past end
    packets.append(bytes([0xA0]) + good[1:20] + b"\xff")  # padding count 255 in a 21-byte packet
    packets += [bytes([v << 6]) + good[1:] for v in (0, 1, 3)]  # RTP versions 0, 1, 3
    return packets


class Spoofer:
    """Sends UDP datagrams with any source port on 127.0.0.1 (a raw socket: root/CAP_NET_RAW)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)

    def send(self, src_port: int, dst_port: int, payload: bytes) -> None:
        header = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0)  # no checksum
        self.sock.sendto(header + payload, ("127.0.0.1", 0))

    def close(self) -> None:
        self.sock.close()


# Between groups of datagrams a pause: a flood faster than the server reads fills its socket
# buffer and the kernel drops the rest, so later kinds of bad input would never arrive.
GROUP = 25
PAUSE_S = 0.02


def spray(bot_port: int, caller_port: int) -> dict[str, int]:
    """Throw every kind of bad input at ``bot_port`` for ~1 s; returns what was sent, by kind.

    Audio-bearing packets from the caller's own port carry silence, so the echo of the caller's
    speech that follows is not disturbed by anything but the handling of the bad input itself.
    """
    rng = random.Random(4475)
    sent: dict[str, int] = {}
    spoofer = Spoofer()
    foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    foreign.bind(("127.0.0.1", 0))
    try:
        target = ("127.0.0.1", bot_port)
        garbage = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(200)]
        garbage += [rng.randbytes(8_000), rng.randbytes(60_000)]
        for i, datagram in enumerate(garbage):
            foreign.sendto(datagram, target)
            if i % GROUP == GROUP - 1:
                time.sleep(PAUSE_S)
        sent["garbage from a foreign port"] = len(garbage)
        noise = [rtp(100 + i, ssrc=0xBAD, payload=rng.randbytes(160)) for i in range(50)]
        for packet in noise:  # loud, valid RTP from elsewhere: must be ignored entirely
            foreign.sendto(packet, target)
        sent["loud RTP from a foreign port"] = len(noise)
        time.sleep(PAUSE_S)
        for packet in truncated_and_malformed():
            spoofer.send(caller_port, bot_port, packet)
        sent["truncated/malformed from the caller"] = len(truncated_and_malformed())
        time.sleep(PAUSE_S)
        codec_change = [rtp(200 + i, pt=8, payload=b"\xd5" * 160) for i in range(20)]
        codec_change += [rtp(220 + i, pt=pt) for i, pt in enumerate((9, 18, 96, 127, 13))]
        for packet in codec_change:
            spoofer.send(caller_port, bot_port, packet)
        sent["codec change from the caller"] = len(codec_change)
        time.sleep(PAUSE_S)
        for i in range(10):  # a sudden SSRC change, interleaved with the caller's own stream
            spoofer.send(caller_port, bot_port, rtp(30_000 + i, ssrc=0x55AA55AA, marker=i == 0))
            time.sleep(0.02)
        sent["SSRC change from the caller"] = 10
        burst = [rtp(40_000 + i, ssrc=0x0B0B0B0B) for i in range(50)]
        for packet in burst:  # one second of audio in one go
            spoofer.send(caller_port, bot_port, packet)
        sent["burst of 50 from the caller"] = len(burst)
    finally:
        spoofer.close()
        foreign.close()
    return sent


@pytest.mark.requires_peers("sipp", "capture", "dtmf_pcap")
def test_bad_input_at_a_live_call_disturbs_neither_its_cadence_nor_its_echo_nor_other_calls(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server = paced_server(sipbot_server)
    # Call A: 3 s of silence (the spray lands in it), then the speech; call B: just the speech.
    lead_s = 3.0
    padded = peers_tmp / "lead-in.ulaw"
    padded.write_bytes(ULAW_SILENCE * int(lead_s * 8000) + speech.ulaw.read_bytes())
    hold_a = lead_s + ECHO_HOLD_S
    witness = StallWitness(peers_tmp)
    scenario_b = sipp.uac_scenario(peers_tmp / "uac-b.xml", speech.ulaw, hold_s=hold_a)
    other = sipp.start_uac(server.address, scenario_b, peers_tmp, capture=True, name="uac-b")
    scenario_a = media_scenario(peers_tmp / "uac-a.xml", padded, hold_s=hold_a)
    uac = sipp.start_uac(server.address, scenario_a, peers_tmp, capture=True, name="uac-a")
    _, bot_port = wait_answer(uac)
    time.sleep(0.3)  # the caller's RTP is flowing: sipbot has latched onto its port
    sent = spray(bot_port, uac.media_port)
    result = uac.wait(hold_a + 30)
    result_b = other.wait(30)
    stalls = witness.stalls()
    result.assert_ok(calls=1)
    result_b.assert_ok(calls=1)
    for name, res in (("A (sprayed)", result), ("B (bystander)", result_b)):
        heard = bot_packets(res)
        assert_steady(heard, audio.PT_PCMU, int(hold_a * 50) - 10, stalls)
        score = echo_score(speech, heard)
        assert score >= ECHO_MIN_CORRELATION, (name, score, sent)
    log = server.log()
    assert "Traceback" not in log
    rtp_name = f"rtp:{bot_port}"
    for problem in ("bad packet from", "RTP from foreign source", "not negotiated"):
        lines = [ln for ln in log.splitlines() if rtp_name in ln and problem in ln]
        assert len(lines) == 1, (problem, lines)  # rate-limited: once per 10 s per call
        assert " WARNING " in lines[0], lines
    assert "inbound SSRC changed" in log
    records = {str(c["call_id"]): c for c in cdr_lines(server)}
    call_id = re.search(r"^Call-ID: (\S+)", result.messages_path.read_text(), re.M)
    assert call_id is not None
    record = records.pop(call_id.group(1))
    [record_b] = records.values()
    assert (record["reason"], record_b["reason"]) == ("bye-received", "bye-received")
    # What counted as the caller's audio: its own packets and the 60 spoofed PCMU packets with
    # new SSRCs; not the garbage, the malformed, the wrong payload types, the foreign noise (which
    # would also have been echoed: one more turn).
    spoofed_pcmu = sent["SSRC change from the caller"] + sent["burst of 50 from the caller"]
    own = [p for p in caller_packets(result) if p.ssrc >> 16 == sipp.SIPP_RTP_SSRC_BASE >> 16]
    assert record["rtp_in"] == len(own) + spoofed_pcmu, record
    assert (record["turns"], record["interruptions"]) == (1, 0), record
