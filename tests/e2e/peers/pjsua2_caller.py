"""pjsua2 (the SIP stack inside Asterisk's chan_pjsip) as a caller: one call, one process.

Run as a script (tests use :func:`tests.e2e.peers.pjsua2_peer.run_call`, which never imports
pjsua2 into the test process)::

    python tests/e2e/peers/pjsua2_caller.py sip:bot@127.0.0.1:5070 --play in.wav \\
        --record out.wav --duration 5 --codec PCMU [--transport tcp] [--dtmf 123 --dtmf-at 1]

It places the call, plays the WAV (then silence) from the answer on, records what it receives at the
WAV's rate, hangs up ``--duration`` seconds after the answer (or when the far end hangs up), prints
one JSON summary line on stdout and exits 0 if the call was established and ended normally, 1 if it
failed, 3 if it got stuck.

Rules from /work/shared/PEERS.md, all applied here: one Endpoint in one thread
(``threadCnt=0``, ``mainThreadOnly``, pumping ``libHandleEvents``); null sound device; ``noVad``;
only the chosen codec enabled; audio in and out through ``AudioMediaPort`` subclasses (their
callbacks run on pjmedia's clock thread; frames of size 0 are skipped); shutdown order hangup →
pump → ``setNoDev`` → drop ports and calls → ``libDestroy``; the LogWriter stays referenced for the
life of the process.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import wave
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pjsua2 as pj

EXIT_OK = 0
EXIT_CALL_FAILED = 1
EXIT_STUCK = 3
FRAME_MS = 20
SETUP_TIMEOUT_S = 15.0  # INVITE to answer
BYE_TIMEOUT_S = 10.0  # our hangup to DISCONNECTED
SHUTDOWN_PUMP_S = 0.5
CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}


class _StderrLog(pj.LogWriter):  # type: ignore[misc]
    def write(self, entry: Any) -> None:
        sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")


class _AudioPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Plays ``pcm`` (then silence) and keeps every non-empty received frame."""

    def __init__(self, pcm: bytes, frame_bytes: int):
        super().__init__()
        self._pcm = pcm
        self._pos = 0
        self._frame_bytes = frame_bytes
        self._silence = bytes(frame_bytes)
        self.received: list[bytes] = []
        self.sent_frames = 0
        self.lock = threading.Lock()

    def onFrameRequested(self, frame: Any) -> None:
        chunk = self._pcm[self._pos : self._pos + self._frame_bytes]
        self._pos += self._frame_bytes
        chunk = chunk + self._silence[len(chunk) :]
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = pj.ByteVector(chunk)
        frame.size = len(chunk)
        self.sent_frames += 1

    def onFrameReceived(self, frame: Any) -> None:
        if frame.size <= 0:  # the bridge also delivers empty frames
            return
        data = bytes(frame.buf)[: frame.size]
        with self.lock:
            self.received.append(data)


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, account: Any, port: _AudioPort, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.port = port
        self.state = pj.PJSIP_INV_STATE_NULL
        self.confirmed_at: float | None = None
        self.last_status = 0
        self.reason = ""
        self.codec = ""
        self.remote_hangup = False
        self.hangup_sent = False

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        self.state = info.state
        self.last_status = int(info.lastStatusCode)
        self.reason = str(info.lastReason)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.hangup_sent:
            self.remote_hangup = True

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(index)
                self.port.startTransmit(audio)
                audio.startTransmit(self.port)
                self.codec = str(self.getStreamInfo(index).codecName)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Place one pjsua2 call.")
    parser.add_argument("uri")
    parser.add_argument("--play", type=Path, required=True, help="mono PCM16 WAV to send")
    parser.add_argument("--record", type=Path, help="WAV for the received audio")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds after the answer")
    parser.add_argument("--codec", choices=sorted(CODEC_IDS), default="PCMU")
    parser.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--rtp-port", type=int, default=0, help="first local RTP port (0: pjsip's)")
    parser.add_argument("--user", default="pjsua")
    parser.add_argument("--dtmf", default="", help="RFC 4733 digits to send")
    parser.add_argument("--dtmf-at", type=float, default=1.0, help="seconds after the answer")
    parser.add_argument("--log-level", type=int, default=4)
    return parser.parse_args(argv)


def _read_pcm(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise SystemExit(f"{path}: need a mono PCM16 WAV")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def _endpoint(args: argparse.Namespace, rate: int, log: _StderrLog, port: int = 0) -> Any:
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.userAgent = "pjsua2 sipbot-e2e"
    cfg.logConfig.writer = log
    cfg.logConfig.level = args.log_level
    cfg.logConfig.consoleLevel = args.log_level
    cfg.logConfig.decor = pj.PJ_LOG_HAS_TIME | pj.PJ_LOG_HAS_SENDER | pj.PJ_LOG_HAS_NEWLINE
    cfg.medConfig.clockRate = rate
    cfg.medConfig.sndClockRate = rate
    cfg.medConfig.audioFramePtime = FRAME_MS
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    tcfg.publicAddress = "127.0.0.1"
    tcfg.port = port  # 0: any
    kind = pj.PJSIP_TRANSPORT_TCP if args.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
    ep.transportCreate(kind, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    # pjsua2 prefers speex by default: leave only the chosen codec enabled.
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 0)
    ep.codecSetPriority(CODEC_IDS[args.codec], 255)
    return ep


def _account(args: argparse.Namespace, acc: Any = None) -> Any:
    """Create ``acc`` (default: a plain ``pj.Account``) as ``args.user`` on 127.0.0.1."""
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{args.user}@127.0.0.1"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    if args.rtp_port:
        acfg.mediaConfig.transportConfig.port = args.rtp_port
        acfg.mediaConfig.transportConfig.portRange = 4
    acc = acc if acc is not None else pj.Account()
    acc.create(acfg)
    return acc


def _pump_until(ep: Any, done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        ep.libHandleEvents(10)
    return True


def _run_call(ep: Any, call: _Call, args: argparse.Namespace) -> int:
    prm = pj.CallOpParam(True)
    call.makeCall(args.uri, prm)

    def disconnected() -> bool:
        return bool(call.state == pj.PJSIP_INV_STATE_DISCONNECTED)

    def answered_or_gone() -> bool:
        return call.confirmed_at is not None or disconnected()

    if not _pump_until(ep, answered_or_gone, SETUP_TIMEOUT_S):
        return EXIT_STUCK
    if call.confirmed_at is None:
        return EXIT_CALL_FAILED
    dtmf_pending = bool(args.dtmf)
    end = call.confirmed_at + args.duration
    while not disconnected() and time.monotonic() < end:
        ep.libHandleEvents(10)
        if dtmf_pending and time.monotonic() >= call.confirmed_at + args.dtmf_at:
            call.dialDtmf(args.dtmf)
            dtmf_pending = False
    if not disconnected():
        call.hangup_sent = True
        call.hangup(pj.CallOpParam(True))
        if not _pump_until(ep, disconnected, BYE_TIMEOUT_S):
            return EXIT_STUCK
    return EXIT_OK if call.last_status // 100 == 2 or call.remote_hangup else EXIT_CALL_FAILED


def _never() -> bool:
    return False


def _write_wav(path: Path, frames: list[bytes], rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"".join(frames))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one call as described in the module docstring; return the exit code."""
    args = _parse_args(argv)
    pcm, rate = _read_pcm(args.play)
    log = _StderrLog()  # referenced until the end: pjsip calls it until libDestroy
    ep = _endpoint(args, rate, log)
    acc = _account(args)
    port = _AudioPort(pcm, rate * FRAME_MS // 1000 * 2)
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, rate, 1, FRAME_MS * 1000, 16)
    port.createPort("sipbot-e2e", fmt)
    call = _Call(acc, port)
    code = _run_call(ep, call, args)
    if code == EXIT_STUCK:
        ep.hangupAllCalls()
    _pump_until(ep, _never, SHUTDOWN_PUMP_S)
    ep.audDevManager().setNoDev()
    with port.lock:
        received = list(port.received)
    summary = {
        "exit": code,
        "confirmed": call.confirmed_at is not None,
        "last_status": call.last_status,
        "reason": call.reason,
        "codec": call.codec,
        "remote_hangup": call.remote_hangup,
        "frames_sent": port.sent_frames,
        "frames_received": len(received),
    }
    del call, port, acc  # pj objects go before the library
    ep.libDestroy()
    if args.record is not None:
        _write_wav(args.record, received, rate)
    print(json.dumps(summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
