"""pjsua2 as either end of a warm transfer: a caller that follows REFERs (with Replaces), or a
target that answers and lets an INVITE with Replaces take over its call (RFC 3891).

Run as a script, one process per role (tests never import pjsua2)::

    python tests/e2e/peers/pjsua2_warm.py --answer --port 5090 --play t.wav --record r.wav \\
        --duration 20
    python tests/e2e/peers/pjsua2_warm.py --call sip:bot@127.0.0.1:5070 --play c.wav \\
        --record r.wav --duration 20

Each process plays its WAV in a loop to whatever call it has (one audio port shared by all of
its calls) and records everything it hears, for ``--duration`` seconds from start; then it hangs
up what is left, prints one JSON summary line (the calls it had, transfers and replacements, who
ended each call) and exits 0. pjsip's own Replaces support does the work: the caller's REFER
handler dials the Refer-To URI with its headers; the target answers the replacing INVITE and
ends the replaced call. The rules of ``pjsua2_caller.py`` (one thread, null device, shutdown
order) apply; its audio port and endpoint setup are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pjsua2 as pj
from pjsua2_caller import (  # type: ignore[import-not-found]  # run from this directory
    FRAME_MS,
    SHUTDOWN_PUMP_S,
    _account,
    _AudioPort,
    _endpoint,
    _never,
    _pump_until,
    _read_pcm,
    _StderrLog,
    _write_wav,
)
from pjsua2_caller import (
    _Call as _CallerCall,
)

EVENTS: list[dict[str, Any]] = []  # what happened, in order (the JSON summary's "events")


def _event(kind: str, **fields: Any) -> None:
    EVENTS.append({"at": round(time.monotonic(), 3), "event": kind, **fields})


class _Call(_CallerCall):  # type: ignore[misc]
    """A call whose audio joins the process's one port; follows REFERs and replacements."""

    calls: ClassVar[list[_Call]] = []  # every call object, kept alive until shutdown

    def __init__(self, account: Any, port: _AudioPort, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, port, call_id)
        self.account = account
        _Call.calls.append(self)

    def onCallState(self, prm: Any) -> None:
        super().onCallState(prm)
        info = self.getInfo()
        _event(
            "state",
            call=info.callIdString,
            state=str(info.stateText),
            status=int(info.lastStatusCode),
            remote=str(info.remoteUri),
        )

    def onCallTransferRequest(self, prm: Any) -> None:
        _event("transfer-request", target=str(prm.dstUri))
        prm.newCall = _Call(self.account, self.port)

    def onCallTransferStatus(self, prm: Any) -> None:
        _event("transfer-status", status=int(prm.statusCode), final=bool(prm.finalNotify))

    def onCallReplaceRequest(self, prm: Any) -> None:
        _event("replace-request")
        prm.newCall = _Call(self.account, self.port)

    def onCallReplaced(self, prm: Any) -> None:
        _event("replaced", new_call=int(prm.newCallId))
        if prm.newCall is None:
            prm.newCall = _Call(self.account, self.port, prm.newCallId)


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, port: _AudioPort):
        super().__init__()
        self.port = port

    def onIncomingCall(self, prm: Any) -> None:
        call = _Call(self, self.port, prm.callId)
        _event("incoming", call=call.getInfo().callIdString)
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)


class _LoopingPort(_AudioPort):  # type: ignore[misc]
    """Plays its PCM in a loop (the warm transfer's parties talk until the end)."""

    def onFrameRequested(self, frame: Any) -> None:
        if self._pos >= len(self._pcm):
            self._pos: int = 0
        super().onFrameRequested(frame)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="pjsua2 as a warm transfer's caller or target.")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--call", help="the URI to call (the caller)")
    role.add_argument("--answer", action="store_true", help="answer calls (the target)")
    parser.add_argument("--port", type=int, default=0, help="SIP port (the target's)")
    parser.add_argument("--play", type=Path, required=True, help="mono PCM16 WAV, looped")
    parser.add_argument("--record", type=Path, required=True, help="WAV of all it hears")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds from start")
    parser.add_argument("--rtp-port", type=int, default=0)
    parser.add_argument("--user", default="pjsua")
    parser.add_argument("--log-level", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    args.codec, args.transport = "PCMU", "udp"
    pcm, rate = _read_pcm(args.play)
    log = _StderrLog()  # referenced until the end: pjsip calls it until libDestroy
    ep = _endpoint(args, rate, log, port=args.port)
    port = _LoopingPort(pcm, rate * FRAME_MS // 1000 * 2)
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, rate, 1, FRAME_MS * 1000, 16)
    port.createPort("warm-e2e", fmt)
    acc = _Account(port)
    _account(args, acc)
    _event("ready")
    if args.call:
        _Call(acc, port).makeCall(args.call, pj.CallOpParam(True))
    _pump_until(ep, _never, args.duration)
    ep.hangupAllCalls()
    _pump_until(ep, _never, SHUTDOWN_PUMP_S)
    ep.audDevManager().setNoDev()
    with port.lock:
        received = list(port.received)
    _Call.calls.clear()
    del port, acc  # pj objects go before the library
    ep.libDestroy()
    _write_wav(args.record, received, rate)
    print(json.dumps({"events": EVENTS, "frames_received": len(received)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
