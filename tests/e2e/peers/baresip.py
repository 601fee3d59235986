"""baresip 1.0.0 as a headless caller or auto-answering callee, one config dir per instance.

Audio: the source is ``aufile`` (a PCM16 WAV at ``ausrc_srate``); the player is
``aubridge,nullsink``; received audio is written by the ``sndfile`` filter as
``<snd_dir>/dump-<YYYY-MM-DD-hh-mm-ss>-dec.wav`` (what baresip heard, after decoding) and ``-enc``
(what it sent). Verified quirks (beyond /work/shared/PEERS.md):
- baresip hangs up when the aufile source ends, so the source is padded with silence to the call
  length (:func:`audio.pad_wav`).
- No ``stdio`` module: with stdin on /dev/null it fails ("epoll_ctl ... Operation not permitted");
  ``-e`` commands work without it.
- sndfile names its dumps by the second: two calls of one instance within the same second share a
  file. Use one instance per call when the recording matters.
- ``-t N`` quits N seconds after *start* (not after the answer); SIGTERM ends it cleanly too.
  Either way it first waits for its open transactions (the BYE of a live call, the un-REGISTER):
  up to ~32 s when the far end or registrar is gone. :meth:`Baresip.stop` forces the exit with a
  second SIGTERM; a caller's far end must answer its BYE for :meth:`Baresip.wait` to be quick.
- No RFC 3891 Replaces (checked December, for warm transfer): an INVITE with ``Require:
  replaces`` gets ``420 Bad Extension`` / ``Unsupported: replaces`` (without the Require the
  Replaces header is ignored and the call answered as a new one); a REFER whose Refer-To carries
  ``?Replaces=...`` is followed by an INVITE to that URI verbatim (the escapes mangled into the
  Request-URI) with no Replaces header. A failed transfer (486 from the target) leaves the
  original call up and unheld; baresip sends the NOTIFYs (100, then the final status).
- Log lines parsed here: ``answering call on line N from <uri> with 200`` (callee),
  ``menu: transferring call <id> to '<uri>'`` (it followed a REFER),
  ``<aor>: Call established: <uri>``, ``Call with <uri> terminated (duration: N secs)``, and for
  registration ``<aor>: {0/UDP/v4} 200 OK (...) [1 binding]``.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.peers.audio import Pcm, pad_wav, read_wav
from tests.e2e.peers.ports import Reservation, free_port, reserve, wait_bound
from tests.e2e.peers.process import ManagedProcess, PeerError

BARESIP = "baresip"
MODULE_DIR = "/usr/lib/baresip/modules"
RTP_PORT_COUNT = 20
READY_TIMEOUT_S = 10.0
GRACEFUL_STOP_S = 2.0  # after this, a second SIGTERM forces the exit
DEFAULT_LIFETIME_S = 120.0  # a callee quits by itself after this, whatever happens to the test
# baresip's names for the codecs, as accepted by an account's audio_codecs parameter.
CODEC_NAMES = {"PCMU": "PCMU", "PCMA": "PCMA", "G722": "G722/16000/1"}


@dataclass(frozen=True, slots=True)
class Registration:
    """Digest registration of a baresip account at a registrar (e.g. Kamailio)."""

    registrar: str  # host:port the AOR's domain points to, e.g. "127.0.0.1:5060"
    password: str
    auth_user: str | None = None  # default: the account's user
    interval_s: int = 60  # 0: never register, only answer digest challenges to calls


class Baresip:
    """One baresip process with its own config dir, SIP port, RTP port range and recordings."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        process: ManagedProcess,
        port: int,
        aor: str,
        rtp_ports: Reservation,
    ):
        self.name = name
        self._rtp_ports = rtp_ports
        self.log_dir = log_dir
        self.process = process
        self.port = port
        self.aor = aor
        self.snd_dir = log_dir / f"{name}-snd"

    @property
    def uri(self) -> str:
        """Where to call this instance directly (bypassing any registrar)."""
        user = self.aor.split(":", 1)[1].split("@", 1)[0]
        return f"sip:{user}@127.0.0.1:{self.port}"

    @property
    def rtp_ports(self) -> tuple[int, ...]:
        """The UDP ports its RTP may come from (the reserved range)."""
        return tuple(self._rtp_ports.ports)

    def log(self) -> str:
        return self.process.read_log("stdout") + self.process.read_log("stderr")

    def answered_from(self) -> list[str]:
        """Caller URIs of the calls this (auto-answering) instance answered, in order."""
        return re.findall(r"answering call on line \d+ from (\S+) with", self.log())

    def established(self) -> list[str]:
        """Peer URIs of the calls that reached the established state, in order."""
        return re.findall(r"Call established: (\S+)", self.log())

    def transfers(self) -> list[str]:
        """Targets of the blind transfers (REFER) this instance followed, in order.

        baresip dials the Refer-To URI at once but keeps the original call until the transferor
        sends BYE (it does not hang up by itself).
        """
        return re.findall(r"transferring call \S+ to '<?([^'>]+)>?'", self.log())

    def terminated(self) -> list[tuple[str, int]]:
        """(peer URI, duration in s) of the calls that ended, in order."""
        pairs = re.findall(r"Call with (\S+) terminated \(duration: (\d+) secs?\)", self.log())
        return [(uri, int(secs)) for uri, secs in pairs]

    def wait_registered(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for a 2xx to REGISTER.

        Raises:
            PeerError: No successful registration in time (e.g. wrong password: 401 forever).
        """
        self.process.wait_for_line(r"\} 200 OK .*\[\d+ binding", timeout, stream="stdout")

    def wait_established(self, timeout: float) -> str:
        """Wait until a call is established; return the peer URI."""
        return self.process.wait_for_line(r"Call established: (\S+)", timeout).group(1)

    def recordings(self) -> list[Path]:
        """Received-audio dumps (``dump-*-dec.wav``), oldest first."""
        return sorted(self.snd_dir.glob("dump-*-dec.wav"))

    def received_audio(self) -> tuple[Pcm, int]:
        """The last call's received audio as (samples, rate).

        Raises:
            PeerError: No recording exists (no call got media).
        """
        files = self.recordings()
        if not files:
            raise PeerError(
                f"{self.name}: no dump-*-dec.wav in {self.snd_dir}; logs: {self.log_dir}"
            )
        return read_wav(files[-1])

    def wait(self, timeout: float) -> int:
        """Wait for baresip to quit by itself (``-t``); return its exit code."""
        try:
            return self.process.wait(timeout)
        finally:
            self._rtp_ports.release()

    def stop(self) -> int:
        """Stop baresip; return its exit code (0 when it obeyed a signal).

        The first SIGTERM hangs up and un-registers, which waits for the registrar (up to 32 s
        if it is gone); a second SIGTERM after :data:`GRACEFUL_STOP_S` forces the exit; SIGKILL
        is the last resort.
        """
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.popen.wait(GRACEFUL_STOP_S)
        except subprocess.TimeoutExpired:
            code = self.process.stop(timeout=3.0)
        self._rtp_ports.release()
        return code


def start(
    log_dir: Path,
    audio: Path,
    *,
    name: str = "baresip",
    user: str = "caller",
    codecs: Sequence[str] = ("PCMU",),
    answer: bool = False,
    dial: str | None = None,
    duration_s: float | None = None,
    registration: Registration | None = None,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    ready_timeout: float = READY_TIMEOUT_S,
    mediaenc: str | None = None,
    transport: str | None = None,
) -> Baresip:
    """Write a config dir and start baresip; returns once it is ready (and registered, if asked).

    Args:
        log_dir: Where the config dir, logs and recordings go.
        audio: PCM16 mono WAV to send (8 or 16 kHz); padded with silence to the process lifetime.
        name: Instance name (config dir and log file prefix).
        user: Account user. Without ``registration`` the AOR is ``sip:<user>@127.0.0.1``.
        codecs: ``PCMU``/``PCMA``/``G722`` in preference order.
        answer: Auto-answer incoming calls (a callee).
        dial: URI to call right after start (a caller).
        duration_s: Quit this many seconds after start (``-t``); the call is hung up then.
            Default: ``lifetime_s``.
        registration: Register the account with digest auth before returning.
        lifetime_s: Upper bound on the process's life when ``duration_s`` is None.
        ready_timeout: Bound on each readiness wait (start, port, registration).
        mediaenc: ``srtp`` (RTP/AVP offer with a=crypto: SRTP if the far end takes it) or
            ``srtp-mand`` (RTP/SAVP: SRTP or no call); loads ``srtp.so``. None: plain RTP.
        transport: ``tls`` (or ``tcp``) for the account's requests (``;transport=`` on its AOR;
            baresip does not verify a TLS server's certificate).

    Raises:
        PeerError: baresip did not become ready, bind its port, or register in time.
    """
    port = free_port("both")
    rtp = reserve(RTP_PORT_COUNT, "udp", align=2)  # held until stop(): baresip binds them per call
    config_dir = log_dir / f"{name}-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    snd_dir = log_dir / f"{name}-snd"
    snd_dir.mkdir(exist_ok=True)
    quit_after = duration_s if duration_s is not None else lifetime_s
    _, rate = read_wav(audio)
    source = pad_wav(audio, config_dir / "source.wav", quit_after + 5.0)
    # baresip cuts paths longer than ~127 characters (its audio source, its sndfile dumps: deep
    # log dirs such as SIPBOT_E2E_LOG_DIR's): it runs in log_dir, and these are relative to it.
    (config_dir / "config").write_text(
        _config(
            port,
            rtp.ports[0],
            rtp.ports[-1],
            source.relative_to(log_dir),
            rate,
            snd_dir.relative_to(log_dir),
            srtp=mediaenc is not None,
        )
    )
    aor = _aor(user, registration)
    if transport is not None:
        aor += f";transport={transport}"
    account = _account(aor, codecs, answer, registration)
    if mediaenc is not None:
        account += f";mediaenc={mediaenc}"
    (config_dir / "accounts").write_text(account + "\n")
    argv = [BARESIP, "-4", "-f", str(config_dir), "-t", str(max(1, round(quit_after)))]
    if dial is not None:
        argv += ["-e", f"/dial {dial}"]
    proc = ManagedProcess.start(name, argv, log_dir, cwd=log_dir)
    peer = Baresip(name, log_dir, proc, port, aor, rtp)
    try:
        proc.wait_for_line(r"^baresip is ready\.", ready_timeout)
        if not wait_bound(port, "udp", ready_timeout):
            raise PeerError(f"{name} did not bind udp/{port}; logs in {log_dir}")
        if registration is not None and registration.interval_s > 0:
            peer.wait_registered(ready_timeout)
    except PeerError:
        peer.stop()
        raise
    return peer


def _aor(user: str, registration: Registration | None) -> str:
    if registration is None:
        return f"sip:{user}@127.0.0.1"
    return f"sip:{user}@{registration.registrar}"


def _account(aor: str, codecs: Sequence[str], answer: bool, reg: Registration | None) -> str:
    params = [f"audio_codecs={','.join(CODEC_NAMES[c.upper()] for c in codecs)}"]
    if answer:
        params.append("answermode=auto")
    if reg is None:
        params.append("regint=0")
    else:
        params += [f"auth_pass={reg.password}", f"regint={reg.interval_s}"]
        if reg.auth_user:
            params.append(f"auth_user={reg.auth_user}")
    return f"<{aor}>;" + ";".join(params)


def _config(
    port: int,
    rtp_low: int,
    rtp_high: int,
    source: Path,
    rate: int,
    snd_dir: Path,
    *,
    srtp: bool = False,
) -> str:
    lines = {
        "poll_method": "epoll",
        "sip_listen": f"127.0.0.1:{port}",
        "net_interface": "127.0.0.1",  # not "lo": baresip wants an address here
        "audio_player": "aubridge,nullsink",  # alsa,null busy-loops at 90 % CPU
        "audio_alert": "aubridge,nullsink",
        "audio_source": f"aufile,{source}",
        "ausrc_srate": str(rate),
        "ausrc_channels": "1",
        "auplay_srate": str(rate),
        "auplay_channels": "1",
        "rtp_ports": f"{rtp_low}-{rtp_high}",
        "rtp_timeout": "0",
        "module_path": MODULE_DIR,
        "snd_path": str(snd_dir),
    }
    text = "".join(f"{key}\t{value}\n" for key, value in lines.items())
    modules = ["g711.so", "g722.so", "aufile.so", "aubridge.so", "sndfile.so"]
    if srtp:
        modules.append("srtp.so")
    text += "".join(f"module\t{m}\n" for m in modules)
    text += "module_app\taccount.so\nmodule_app\tmenu.so\n"
    return text
