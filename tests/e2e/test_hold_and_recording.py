"""Hold/resume by re-INVITE, and call recording, against a real ``sipbot run``."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.peers.audio import correlation, read_wav
from tests.e2e.peers.capture import RtpCapture, select, stream_stats
from tests.e2e.peers.ports import free_port, free_port_block

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.requires_peers("sipp"),
]

ROOT = Path(__file__).resolve().parents[2]
HOLD_SCENARIO = Path(__file__).parent / "scenarios" / "sip" / "uac_hold_resume.xml"
HOSTNAME_SCENARIO = Path(__file__).parent / "scenarios" / "sip" / "uac_hold_resume_hostname.xml"
HOLD_S = 1.5


def run_hold_scenario(
    server: Any, scenario: Path, peers_tmp: Path
) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """Run a one-call SIPp hold/resume scenario; its result and our RTP packets to it."""
    sip_port, media_port = free_port(), free_port_block()
    capture = RtpCapture.start(peers_tmp, [media_port])
    args = [
        "sipp", server.address, "-sf", str(scenario), "-s", "bot",
        "-i", "127.0.0.1", "-p", str(sip_port), "-mi", "127.0.0.1", "-mp", str(media_port),
        "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error",
    ]  # fmt: skip
    result = subprocess.run(args, cwd=peers_tmp, capture_output=True, text=True, timeout=60)
    capture.stop()
    return result, select(capture.packets(), dst_port=media_port, audio_only=True)


@pytest.mark.requires_peers("capture")
def test_hold_stops_our_rtp_and_resume_restarts_it(sipbot_server, peers_tmp: Path):
    server = sipbot_server()
    result, ours = run_hold_scenario(server, HOLD_SCENARIO, peers_tmp)
    assert result.returncode == 0, result.stdout[-2000:] + server.log()[-2000:]
    assert re.search(r"re-offer: PCMU recvonly", server.log())
    assert re.search(r"re-offer: PCMU sendrecv", server.log())
    times = np.array([p.time for p in ours])
    gaps = np.diff(times)
    assert gaps.max() >= HOLD_S - 0.2, "sipbot kept sending while the caller held the call"
    hold_at = int(gaps.argmax())
    assert hold_at >= 30, "too little RTP before the hold"  # ~1 s of 20 ms packets
    assert len(ours) - hold_at >= 30, "RTP did not resume"
    (stats,) = stream_stats(ours).values()  # one stream, its sequence numbers continuous
    assert stats.seq_missing == 0


@pytest.mark.requires_peers("capture")
def test_a_resume_naming_its_host_by_name_is_answered_after_resolving_it(
    sipbot_server, peers_tmp: Path
):
    server = sipbot_server()
    result, ours = run_hold_scenario(server, HOSTNAME_SCENARIO, peers_tmp)
    # the scenario needs a 200 with a=sendrecv to the resume (a 488 fails it)
    assert result.returncode == 0, result.stdout[-2000:] + server.log()[-2000:]
    assert re.search(r"re-offer: PCMU sendrecv", server.log())
    gaps = np.diff(np.array([p.time for p in ours]))
    assert gaps.max() >= HOLD_S - 0.2, "sipbot kept sending while the caller held the call"
    assert len(ours) - int(gaps.argmax()) >= 30, "RTP did not resume to the resolved host"


def test_a_recorded_call_has_the_caller_left_and_the_agent_right(sipbot_server, peers_tmp, speech):
    recordings = peers_tmp / "recordings"
    recordings.mkdir()
    config = peers_tmp / "recording.yaml"
    config.write_text(
        f"server:\n  recordings_dir: {recordings}\n"
        "agents:\n  echo: {provider: local, local: {mode: echo}, recording: true}\n"
        "routes:\n  - {name: default, answer: echo}\n"
    )
    server = sipbot_server("-c", str(config))
    call = [
        sys.executable,
        "-m",
        "sipbot",
        "call",
        server.uri("bot"),
        "--play",
        str(speech.wav_8k),
        "--duration",
        "10",
        "--codec",
        "pcmu",
    ]
    result = subprocess.run(call, cwd=ROOT, capture_output=True, text=True, timeout=40)
    assert result.returncode == 0, result.stderr
    (recording,) = recordings.glob("*.wav")
    with wave.open(str(recording), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert 9.0 <= len(frames) / 8000 <= 10.5
    sent, rate = read_wav(speech.wav_8k)
    assert correlation(sent, frames[:, 0], rate) >= 0.9  # the caller, as it arrived
    assert correlation(sent, frames[:, 1], rate) >= 0.9  # the agent's echo of it
    lag = np.argmax(np.abs(frames[:, 1])) - np.argmax(np.abs(frames[:, 0]))
    assert lag > 0, "the agent's echo must come after the caller's words"
