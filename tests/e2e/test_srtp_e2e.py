"""SRTP (SDES, RFC 4568) on a real ``sipbot run``: baresip callers with ``mediaenc=srtp``
(RTP/AVP + a=crypto) and ``srtp-mand`` (RTP/SAVP) hear their echo through libsrtp on both
sides; a capture shows that their media is not the plaintext codec stream (a plain caller in
the same run shows that the check sees plaintext when there is some); the keys from the
captured SDP decrypt the captured packets, and appear in no log line of sipbot; a server with
``srtp: required`` answers a plain SIPp offer with 488.
"""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import pytest

from sipbot.domain import SrtpKeys
from sipbot.errors import SrtpError
from sipbot.media.srtp import TAG_BYTES, SrtpContext
from tests.e2e.conftest import StartServer
from tests.e2e.peers import audio, baresip, sipp, sipp_scenarios
from tests.e2e.peers.capture import RtpCapture, RtpPacket, received_audio
from tests.e2e.peers.ports import free_port_block

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ECHO_MIN_CORRELATION = 0.9
PLAINTEXT_MAX_CORRELATION = 0.3  # ciphertext decoded as PCMU correlates ~0 with the speech
ECHO_HOLD_S = 9.5
CRYPTO_RE = re.compile(rb"a=crypto:(\d+) (AES_CM_128_HMAC_SHA1_(?:80|32)) inline:([A-Za-z0-9+/=]+)")
CALLERS = {"plain": None, "srtp": "srtp", "mand": "srtp-mand"}  # name → baresip mediaenc


def write_config(path: Path, srtp: str) -> Path:
    path.write_text(
        "agents:\n"
        f"  echo: {{provider: local, local: {{mode: echo}}, srtp: {srtp}}}\n"
        "routes:\n"
        "  - {match: {did: bot}, answer: echo}\n"
    )
    return path


def as_pcmu(packets: list[RtpPacket], tag: int) -> list[RtpPacket]:
    """The packets with the SRTP auth tag cut off (the rest decodes as PCMU, 160 bytes)."""
    return [replace(p, payload=p.payload[: len(p.payload) - tag]) for p in packets]


@pytest.mark.requires_peers("baresip", "capture")
def test_baresip_srtp_callers_hear_the_echo_and_the_wire_is_encrypted(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    block = free_port_block(8)  # sipbot's RTP ports: the capture watches these and its SIP port
    config = write_config(peers_tmp / "srtp.yaml", "optional")
    server = sipbot_server("--config", str(config), "--rtp-ports", f"{block}-{block + 7}")
    capture = RtpCapture.start(peers_tmp, [server.port, *range(block, block + 8)])
    peers = {
        name: baresip.start(
            peers_tmp,
            speech.wav_8k,
            name=f"baresip-{name}",
            user=f"caller-{name}",
            codecs=["PCMU"],
            dial=server.uri(),
            duration_s=ECHO_HOLD_S,
            mediaenc=mediaenc,
        )
        for name, mediaenc in CALLERS.items()
    }
    try:
        for peer in peers.values():
            assert peer.wait(40) == 0
    finally:
        for peer in peers.values():
            peer.stop()
        capture.stop()
    reference = speech.pcm(8000)
    for name, peer in peers.items():
        assert peer.established() == [server.uri()], peer.log()[-2000:]
        heard, rate = peer.received_audio()
        score = audio.correlation(reference, heard, rate)
        assert score >= ECHO_MIN_CORRELATION, (name, score)
        assert ("SRTP is Enabled" in peer.log()) == (name != "plain"), peer.log()[-2000:]
    log = server.log()
    suites = re.findall(r"RTP 127\.0\.0\.1:\d+ \(SRTP (AES_CM_128_HMAC_SHA1_\d\d)\)", log)
    assert len(suites) == 2, log[-3000:]

    # the wire: the keys are in the captured SDP (offers: baresip's, answers: sipbot's) and in
    # no line of sipbot's log
    raw = capture.pcap_path.read_bytes()
    crypto = CRYPTO_RE.findall(raw)
    keys = {key for _, _, key in crypto}
    assert len(keys) >= 4, crypto
    for key in keys:
        assert key.decode() not in log
    # each caller's audio to sipbot decoded as if it were PCMU: speech for the plain caller,
    # noise for the SRTP ones, and speech again once decrypted with the key their SDP carried
    packets = capture.packets()
    for name, peer in peers.items():
        ports = set(peer.rtp_ports)
        to_bot = [p for p in packets if p.src_port in ports and p.payload_type == 0]
        assert len(to_bot) > 300, (name, len(to_bot))
        if name == "plain":
            pcm, rate = received_audio(to_bot)
            assert audio.correlation(reference, pcm, rate) >= ECHO_MIN_CORRELATION
            continue
        pcm, rate = received_audio(as_pcmu(to_bot, TAG_BYTES[suites[0]]))
        score = audio.correlation(reference, pcm, rate)
        assert score < PLAINTEXT_MAX_CORRELATION, (name, score)
        opened = decrypted(to_bot, crypto)
        assert opened is not None, name
        pcm, rate = received_audio(opened)
        assert audio.correlation(reference, pcm, rate) >= ECHO_MIN_CORRELATION, name


def decrypted(
    packets: list[RtpPacket], crypto: list[tuple[bytes, bytes, bytes]]
) -> list[RtpPacket] | None:
    """``packets`` (one caller's SRTP, in capture order) opened with the captured key that
    authenticates them, or None if none does."""
    for _, suite, key in crypto:
        context = SrtpContext(
            SrtpKeys(suite.decode(), local=bytes(30), remote=base64.b64decode(key))
        )
        try:
            opened = [context.unprotect(rebuild(p)) for p in packets]
        except SrtpError:
            continue
        return [replace(p, payload=o[12:]) for p, o in zip(packets, opened, strict=True)]
    return None


def rebuild(p: RtpPacket) -> bytes:
    """The datagram of a captured packet (no CSRC, no extension: as baresip sends them)."""
    second = (0x80 if p.marker else 0) | p.payload_type
    header = bytes([0x80, second]) + p.seq.to_bytes(2, "big")
    header += p.timestamp.to_bytes(4, "big") + p.ssrc.to_bytes(4, "big")
    return header + p.payload


@pytest.mark.requires_peers("sipp")
def test_srtp_required_refuses_a_plain_offer_with_488(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    config = write_config(peers_tmp / "required.yaml", "required")
    server = sipbot_server("--config", str(config))
    scenario = sipp_scenarios.reject_scenario(peers_tmp / "r488.xml", 488)
    result = sipp.run_uac(server.address, scenario, peers_tmp, name="plain-offer", timeout_s=10)
    result.assert_ok(calls=1)
    assert "488: SRTP is required and the offer has no usable a=crypto" in server.log()


@pytest.mark.requires_peers("sipp")
def test_the_trunks_srtp_setting_wins_over_the_agents(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    path = peers_tmp / "trunk.yaml"
    path.write_text(
        "agents:\n"
        "  echo: {provider: local, local: {mode: echo}, srtp: optional}\n"
        "trunks:\n"
        "  pbx: {source: [127.0.0.1/32], srtp: required}\n"
        "routes:\n"
        "  - {match: {trunk: pbx}, answer: echo}\n"
    )
    server = sipbot_server("--config", str(path))
    scenario = sipp_scenarios.reject_scenario(peers_tmp / "t488.xml", 488)
    result = sipp.run_uac(server.address, scenario, peers_tmp, name="via-trunk", timeout_s=10)
    result.assert_ok(calls=1)
    assert "488: SRTP is required" in server.log()
