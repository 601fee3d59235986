"""Test-side wrapper for ``pjsua2_caller.py``: one pjsua2 call in its own subprocess.

The test process never imports pjsua2 (its threads and C asserts stay out of pytest); each call
gets a fresh process, so the 4-calls-per-process limit of the wheel never bites.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.peers.audio import Pcm, read_wav
from tests.e2e.peers.ports import free_port_block
from tests.e2e.peers.process import ManagedProcess, PeerError

CALLER_SCRIPT = Path(__file__).resolve().parent / "pjsua2_caller.py"
EXIT_OK = 0
EXIT_CALL_FAILED = 1
EXIT_STUCK = 3
EXIT_TIMEOUT = 124  # our own: the subprocess outlived its bound and was killed
STARTUP_ALLOWANCE_S = 30.0  # pjsua2 import + call setup + BYE, on a loaded 2-core machine


@dataclass
class Pjsua2Result:
    """Outcome of one pjsua2 call.

    ``summary`` is the subprocess's JSON line (empty if it died first): exit, confirmed,
    last_status, reason, codec (negotiated, e.g. ``PCMU``), remote_hangup, frames_sent,
    frames_received.
    """

    returncode: int
    summary: dict[str, Any]
    record_path: Path | None
    process: ManagedProcess

    @property
    def ok(self) -> bool:
        return self.returncode == EXIT_OK

    def describe(self) -> str:
        tail = self.process.read_log("stderr")[-3000:]
        return f"pjsua2 exit {self.returncode}, summary {self.summary}; log tail:\n{tail}"

    def received_audio(self) -> tuple[Pcm, int]:
        """The recorded audio as (samples, rate).

        Raises:
            PeerError: The call was made without ``record``, or nothing was written.
        """
        if self.record_path is None or not self.record_path.exists():
            raise PeerError(f"no pjsua2 recording: {self.describe()}")
        return read_wav(self.record_path)


def run_call(
    log_dir: Path,
    uri: str,
    play: Path,
    *,
    record: bool = True,
    duration_s: float = 5.0,
    codec: str = "PCMU",
    transport: str = "udp",
    dtmf: str = "",
    dtmf_at_s: float = 1.0,
    user: str = "pjsua",
    name: str = "pjsua2",
    timeout_s: float | None = None,
) -> Pjsua2Result:
    """Place one pjsua2 call and wait for it (bounded).

    Args:
        log_dir: Where the logs (pjsip's log is the stderr file) and the recording go.
        uri: Whom to call, e.g. ``sip:bot@127.0.0.1:5070`` (``;transport=tcp`` for TCP).
        play: Mono PCM16 WAV to send; its rate becomes pjmedia's clock rate (use the 16 kHz
            speech for G.722).
        record: Record the received audio to ``<log_dir>/<name>-received.wav``.
        duration_s: Hang up this long after the answer (unless the far end hangs up first).
        codec: ``PCMU``, ``PCMA`` or ``G722``: the only codec offered.
        transport: ``udp`` or ``tcp`` for the local SIP transport.
        dtmf: RFC 4733 digits to send ``dtmf_at_s`` seconds after the answer (empty: none).
        dtmf_at_s: When to send them.
        user: From user.
        name: Log file prefix.
        timeout_s: Bound on the subprocess (default ``duration_s`` + 30 s); on expiry it is
            killed and the result's returncode is :data:`EXIT_TIMEOUT`.
    """
    record_path = log_dir / f"{name}-received.wav" if record else None
    argv = [sys.executable, str(CALLER_SCRIPT), uri, "--play", str(play)]
    argv += ["--duration", f"{duration_s:g}", "--codec", codec.upper(), "--transport", transport]
    argv += ["--rtp-port", str(free_port_block()), "--user", user]
    if record_path is not None:
        argv += ["--record", str(record_path)]
    if dtmf:
        argv += ["--dtmf", dtmf, "--dtmf-at", f"{dtmf_at_s:g}"]
    proc = ManagedProcess.start(name, argv, log_dir)
    try:
        code = proc.wait(timeout_s if timeout_s is not None else duration_s + STARTUP_ALLOWANCE_S)
    except PeerError:
        code = EXIT_TIMEOUT
    lines = [ln for ln in proc.read_log("stdout").splitlines() if ln.startswith("{")]
    summary: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return Pjsua2Result(code, summary, record_path, proc)
