"""Late offer (RFC 3261 §13.2.1) against a real ``sipbot run``: INVITE without SDP.

sipbot's 200 OK carries its offer (G722, PCMU, PCMA, telephone-event), SIPp's ACK the answer
(PCMU only); sipbot must then send PCMU RTP to the port of that answer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.peers.capture import RtpCapture, select, stream_stats
from tests.e2e.peers.ports import free_port, free_port_block

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.requires_peers("sipp"),
]

SCENARIO = Path(__file__).parent / "scenarios" / "sip" / "uac_late_offer.xml"
PT_PCMU = 0


@pytest.mark.requires_peers("capture")
def test_late_offer_answer_in_ack(sipbot_server, peers_tmp: Path):
    server = sipbot_server()
    sip_port, media_port = free_port(), free_port_block()
    capture = RtpCapture.start(peers_tmp, [media_port])
    args = [
        "sipp", f"127.0.0.1:{server.port}", "-sf", str(SCENARIO), "-s", "bot",
        "-i", "127.0.0.1", "-p", str(sip_port), "-mi", "127.0.0.1", "-mp", str(media_port),
        "-m", "1", "-d", "2000", "-nostdin", "-timeout", "30s", "-timeout_error",
    ]  # fmt: skip
    result = subprocess.run(args, cwd=peers_tmp, capture_output=True, text=True, timeout=60)
    capture.stop()
    assert result.returncode == 0, result.stdout[-2000:] + server.log()[-2000:]
    assert "answered (late offer)" in server.log()
    to_caller = select(capture.packets(), dst_port=media_port, audio_only=True)
    assert to_caller, "sipbot sent no RTP to the port of the answer in the ACK"
    assert {p.payload_type for p in to_caller} == {PT_PCMU}
    (stats,) = stream_stats(to_caller).values()
    assert stats.packets >= 60  # ~2 s of 20 ms packets
    assert stats.seq_missing == 0
