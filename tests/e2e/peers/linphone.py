"""linphonec 5.1 (liblinphone, Belledonne's stack) as an optional second client, driven on stdin.

Headless recipe (verified): ``soundcard use files`` then ``play in.wav`` / ``record out.wav``
make WAV files the microphone and speaker; ``HOME`` must contain ``.local/share/linphone`` (its
databases live there); ``ipv6 disable`` or its SDP offers IPv6. Quirks seen here: it logs
"Could not find a suitable soundcard" and a ``fast_header_address parser error for
[sip:user@:-1]`` at start (harmless); the recording file is created mode 0600.

Log lines parsed (stdout): ``Call N with <uri> connected.``, ``Call N with <uri> ended (...)``,
``Receiving new incoming call from <uri>, assigned id N``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.peers.audio import Pcm, pad_wav, read_wav
from tests.e2e.peers.ports import Reservation, free_port, reserve, wait_bound
from tests.e2e.peers.process import ManagedProcess, PeerError

LINPHONEC = "linphonec"
READY_TIMEOUT_S = 15.0
QUIT_TIMEOUT_S = 5.0
RTP_PORT_COUNT = 20
# (mime, rate, channels) of every codec this build offers; all but the chosen ones get enabled=0.
KNOWN_CODECS = [
    ("opus", 48000, 2),
    ("speex", 32000, 1),
    ("speex", 16000, 1),
    ("speex", 8000, 1),
    ("PCMU", 8000, 1),
    ("PCMA", 8000, 1),
    ("G722", 8000, 1),
    ("GSM", 8000, 1),
    ("iLBC", 8000, 1),
    ("L16", 44100, 1),
    ("BV16", 8000, 1),
    ("G729", 8000, 1),
]
CODEC_KEYS = {"PCMU": ("PCMU", 8000, 1), "PCMA": ("PCMA", 8000, 1), "G722": ("G722", 8000, 1)}


class Linphone:
    """A running linphonec; ``port`` is its UDP SIP port on 127.0.0.1."""

    def __init__(
        self, process: ManagedProcess, port: int, user: str, record: Path, rtp: Reservation
    ):
        self.process = process
        self.port = port
        self.user = user
        self.record_path = record
        self._rtp = rtp

    @property
    def uri(self) -> str:
        """Where to call this instance."""
        return f"sip:{self.user}@127.0.0.1:{self.port}"

    def command(self, line: str) -> None:
        """Send one linphonec command (e.g. ``call sip:...``, ``terminate``, ``answer``)."""
        self.process.write_stdin(line.encode() + b"\n")

    def call(self, uri: str) -> None:
        self.command(f"call {uri}")

    def hangup(self) -> None:
        self.command("terminate")

    def wait_connected(self, timeout: float) -> str:
        """Wait until a call is connected; return the peer URI."""
        line = self.process.wait_for_line(r"Call \d+ with (.+) connected\.", timeout)
        return _uri(line.group(1))

    def wait_ended(self, timeout: float) -> str:
        """Wait until a call has ended; return the peer URI."""
        return _uri(self.process.wait_for_line(r"Call \d+ with (.+) ended", timeout).group(1))

    def incoming_from(self) -> list[str]:
        """Caller URIs of incoming calls, in order."""
        pattern = r"Receiving new incoming call from (.+), assigned id"
        return [_uri(addr) for addr in re.findall(pattern, self.process.read_log("stdout"))]

    def received_audio(self) -> tuple[Pcm, int]:
        """What it heard (the ``record`` file) as (samples, rate).

        Raises:
            PeerError: Nothing was recorded.
        """
        if not self.record_path.exists():
            raise PeerError(f"linphonec wrote no {self.record_path}; logs {self.process.log_dir}")
        return read_wav(self.record_path)

    def stop(self) -> int:
        """``quit`` on stdin, then SIGTERM/SIGKILL if it lingers; returns the exit code."""
        if self.process.running():
            try:
                self.command("quit")
                return self.process.wait(QUIT_TIMEOUT_S)
            except (OSError, PeerError):
                pass  # broken pipe or no exit: fall through to signals
            finally:
                self._rtp.release()
        return self.process.stop()


def start(
    log_dir: Path,
    audio: Path,
    *,
    name: str = "linphone",
    user: str = "linphone",
    codecs: Sequence[str] = ("PCMU",),
    answer: bool = False,
    lifetime_s: float = 120.0,
) -> Linphone:
    """Start linphonec with WAV files as sound card; returns once its SIP port is bound.

    Args:
        log_dir: Where its config, HOME, logs and the recording go.
        audio: PCM16 mono WAV it sends (padded with silence to ``lifetime_s``).
        name: Instance name (file prefix).
        user: User part of its Contact.
        codecs: Enabled codecs in preference order (``PCMU``, ``PCMA``, ``G722``).
        answer: Auto-answer incoming calls (``-a``).
        lifetime_s: Length of the padded source (linphonec itself has no lifetime bound:
            stop it, or let the test fixture do it).

    Raises:
        PeerError: It did not bind its port or switch to WAV files in time.
    """
    port = free_port("udp")
    rtp = reserve(RTP_PORT_COUNT, "udp", align=2)
    home = log_dir / f"{name}-home"
    (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
    config = log_dir / f"{name}.linphonerc"
    config.write_text(_config(port, user, rtp.ports[0], rtp.ports[-1], codecs))
    source = pad_wav(audio, log_dir / f"{name}-source.wav", lifetime_s)
    record = log_dir / f"{name}-received.wav"
    argv = [LINPHONEC, "-c", str(config), "-d", "0", *(["-a"] if answer else [])]
    script = f"soundcard use files\nipv6 disable\nplay {source}\nrecord {record}\n"
    proc = ManagedProcess.start(
        name, argv, log_dir, env={"HOME": str(home)}, stdin_data=script.encode()
    )
    peer = Linphone(proc, port, user, record, rtp)
    try:
        proc.wait_for_line(r"Using wav files instead of soundcard", READY_TIMEOUT_S)
        if not wait_bound(port, "udp", READY_TIMEOUT_S):
            raise PeerError(f"{name} did not bind udp/{port}; logs in {log_dir}")
    except PeerError:
        peer.stop()
        raise
    return peer


def _uri(name_addr: str) -> str:
    """``"Name" <sip:u@h>`` or ``sip:u@h`` → ``sip:u@h``."""
    match = re.search(r"<([^>]+)>", name_addr)
    return match.group(1) if match else name_addr.strip()


def _config(port: int, user: str, rtp_low: int, rtp_high: int, codecs: Sequence[str]) -> str:
    text = (
        "[sip]\n"
        f"sip_port={port}\nsip_tcp_port=-1\nsip_tls_port=-1\n"
        f"contact=sip:{user}@127.0.0.1\nguess_hostname=0\nipv6_enabled=0\n"
        "register_only_when_network_is_up=0\n"
        f"[rtp]\naudio_rtp_port={rtp_low}-{rtp_high}\n"
        "audio_adaptive_jitt_comp_enabled=0\naudio_jitt_comp=60\n"
        "[sound]\nechocancellation=0\n"
        "[net]\nfirewall_policy=0\n"
        "[video]\nautomatically_initiate=0\nautomatically_accept=0\n"
    )
    chosen = [CODEC_KEYS[c.upper()] for c in codecs]
    ordered = chosen + [c for c in KNOWN_CODECS if c not in chosen]
    for index, (mime, rate, channels) in enumerate(ordered):
        enabled = 1 if (mime, rate, channels) in chosen else 0
        text += f"[audio_codec_{index}]\nmime={mime}\nrate={rate}\nchannels={channels}\n"
        text += f"enabled={enabled}\n"
    return text
