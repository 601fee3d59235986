"""A minimal composition root: answers every INVITE with 180 + 200 and an SDP answer.

No media yet: the SDP names a placeholder RTP port. The full composition root (calls, media,
providers, dialplan) replaces this module; until then it lets SIP peers and SIPp exercise the
signalling of a real ``sipbot run`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence

from sipbot.errors import SdpError
from sipbot.sip.sdp import negotiate, parse_sdp
from sipbot.sip.ua import ServerCall, SipSettings, UserAgent

log = logging.getLogger(__name__)

CODECS = ("G722", "PCMU", "PCMA")
PLACEHOLDER_RTP_PORT = 40_000  # nothing listens there yet: media comes with the media issue


class Server:
    """Answers calls (100, 180, 200 + SDP; 488 when no codec matches) and OPTIONS.

    Args:
        answer_after: seconds between the 180 and the 200 (0: at once).
        hangup_after: seconds after the ACK when sipbot sends BYE (None: never).
    """

    def __init__(
        self,
        settings: SipSettings,
        codecs: Sequence[str] = CODECS,
        rtp_port: int = PLACEHOLDER_RTP_PORT,
        *,
        answer_after: float = 0.0,
        hangup_after: float | None = None,
    ) -> None:
        self.ua = UserAgent(settings, self._on_invite)
        self.codecs = tuple(codecs)
        self.rtp_port = rtp_port
        self.answer_after = answer_after
        self.hangup_after = hangup_after
        self.calls_answered = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def bound(self) -> list[tuple[str, str, int]]:
        return self.ua.bound

    async def start(self) -> None:
        await self.ua.start()

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a SIP bound)
        """BYE every call and close the sockets."""
        for task in list(self._tasks):
            task.cancel()
        await self.ua.close(timeout)

    def _on_invite(self, call: ServerCall) -> None:
        host = self.ua.advertised_host(call.source[1])
        session_id = secrets.randbelow(2**31)
        versions = iter(range(1, 2**31))

        def answer(offer: bytes) -> bytes | int:
            try:
                negotiated = negotiate(
                    parse_sdp(offer),
                    self.codecs,
                    address=host,
                    port=self.rtp_port,
                    session_id=session_id,
                    session_version=next(versions),
                )
            except SdpError as exc:
                log.info("no acceptable offer in call %s: %s", call.call_id, exc)
                return 488
            assert negotiated.answer is not None
            return bytes(negotiated.answer)

        if not call.offer:
            call.reject(488, "Late offer not supported yet")
            return
        result = answer(call.offer)
        if isinstance(result, int):
            call.reject(result)
            return
        call.on_reoffer = answer
        call.progress(180)
        log.info("call %s from %s:%s", call.call_id, call.source[1], call.source[2])
        task = asyncio.get_running_loop().create_task(self._answer(call, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, call: ServerCall, sdp: bytes) -> None:
        if self.answer_after > 0:
            done, _ = await asyncio.wait([call.terminated], timeout=self.answer_after)
            if done:
                return  # cancelled while ringing
        call.accept(sdp)
        self.calls_answered += 1
        if self.hangup_after is None:
            return
        try:
            await call.confirmed
        except Exception:
            return  # never ACKed: the core already ended the call
        done, _ = await asyncio.wait([call.terminated], timeout=self.hangup_after)
        if not done:
            with contextlib.suppress(Exception):
                await call.bye()
