"""``sipbot.serve()``: a dialplan built in Python, served by a real process, answers a call."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.peers.audio import correlation, read_wav
from tests.e2e.peers.ports import E2E_RTP_PORTS, free_port
from tests.e2e.peers.process import ManagedProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
import sys
from sipbot import serve
from sipbot.dialplan import Agent, Answer, Dialplan, Match, Reject, Route

echo = Agent("echo", provider="local", local_mode="echo")
plan = Dialplan([Route("echo", Answer(echo), Match(did="600")), Route("rest", Reject(403))])
sys.exit(serve(plan, listen=[f"udp:127.0.0.1:{sys.argv[1]}"], rtp_ports=sys.argv[2]))
"""


def test_serve_answers_with_a_python_dialplan(peers_tmp: Path, speech):
    port = free_port()
    argv = [sys.executable, "-c", PROGRAM, str(port), E2E_RTP_PORTS[1]]
    server = ManagedProcess.start("serve", argv, peers_tmp, cwd=ROOT)
    server.wait_for_line(rf"^sipbot ready udp:127\.0\.0\.1:{port}$", 30, stream="stderr")
    out = peers_tmp / "heard.wav"
    call = [
        sys.executable,
        "-m",
        "sipbot",
        "call",
        f"sip:600@127.0.0.1:{port}",
        "--play",
        str(speech.wav_8k),
        "--record",
        str(out),
        "--duration",
        "10",
    ]
    result = subprocess.run(call, cwd=ROOT, capture_output=True, text=True, timeout=40)
    refused = subprocess.run(
        [sys.executable, "-m", "sipbot", "call", f"sip:700@127.0.0.1:{port}", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=40,
    )
    code = server.stop(signum=signal.SIGTERM)
    assert result.returncode == 0, result.stderr + server.read_log("stderr")
    assert refused.returncode == 1, refused.stderr
    assert "403" in refused.stderr, refused.stderr
    assert code == 0
    sent, rate = read_wav(speech.wav_8k)
    heard, heard_rate = read_wav(out)
    assert heard_rate == rate
    assert correlation(sent, heard, rate) >= 0.9
