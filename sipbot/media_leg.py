"""The media side of an incoming call: its RTP session and its SDP offer/answer exchanges.

:class:`MediaLeg` answers an INVITE (offer in the INVITE, or a late offer answered in the ACK),
opens and configures the call's :class:`~sipbot.media.session.MediaSession`, and answers the
re-offers that follow (hold, resume, codec or address change).

Rules:

* Rule 1: an INVITE that cannot be answered is rejected here — 488 when nothing in the offer is
  acceptable or it cannot be parsed or resolved, 503 + Retry-After when no RTP port is free —
  and the RTP port is released.
* Rule 2: media is configured before the 200 OK leaves, and starts sending (an early silence
  packet, for trunks that wait for media) as the 200 leaves; with a late offer, once the ACK's
  answer is in.
* Rule 3: a re-offer (hold, resume, codec or address change) is answered after its connection
  address is known: a host name is resolved first (bounded by ``REOFFER_RESOLVE_TIMEOUT_S``,
  then 488), and media is reconfigured before the answer leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

from sipbot.domain import AudioFormat
from sipbot.errors import PortRangeExhausted, SdpError, SipbotError
from sipbot.media.session import MediaEngine, MediaSession
from sipbot.sip.sdp import Negotiated, SdpAnswerer
from sipbot.sip.ua import ServerCall

log = logging.getLogger(__name__)

REOFFER_RESOLVE_TIMEOUT_S = 4.0  # below the SIP core's request_answer_timeout (then 500)


class MediaLeg:
    """One incoming call's media and offer/answer state.

    Args:
        dialog: the incoming call, not answered yet.
        sdp: our side of the call's offer/answer exchanges.
        label: how log lines name the call (its Call-ID).
    """

    def __init__(self, dialog: ServerCall, sdp: SdpAnswerer, label: str) -> None:
        self.dialog = dialog
        self.sdp = sdp
        self.label = label
        self.media: MediaSession | None = None

    async def open(
        self,
        engine: MediaEngine,
        *,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_timeout: Callable[[], None],
        formats: tuple[AudioFormat, AudioFormat],
        ring_s: float = 0.0,
    ) -> Negotiated | None:
        """Answer the INVITE (Rules 1-2); the negotiated media, or None if not answered."""
        try:
            media = await engine.open_session(
                on_audio=on_audio, on_dtmf=on_dtmf, on_timeout=on_timeout
            )
        except PortRangeExhausted:
            log.error("call %s: 503: no free RTP port", self.label)
            self.dialog.reject(503, "Service Unavailable", [("Retry-After", "5")])
            return None
        self.media = media
        self.sdp.port = media.local_port
        media.set_formats(*formats)
        if not self.dialog.offer:
            return await self._late_offer(media, ring_s)
        try:
            negotiated = self.sdp.answer(self.dialog.offer)
            host = await _resolve(negotiated.remote_host, self.sdp.address)
        except (SdpError, OSError) as exc:
            # An offer that cannot be parsed (or whose address does not resolve) is 488 like one
            # with nothing acceptable, not 400: the SIP message itself is well formed (400 is
            # about SIP syntax), re-offers already get 488 here, and it is what Asterisk and
            # Kamailio-fronted PBXs answer, so callers written against them expect it.
            await self._refuse(488, "Not Acceptable Here", exc)
            return None
        self._apply(negotiated, host)
        if not await self._ring(ring_s):
            return None
        assert negotiated.answer is not None
        self.dialog.accept(bytes(negotiated.answer))
        media.start()
        log.info(
            "call %s: RTP %s:%d%s", self.label, host, negotiated.remote_port, _srtp(negotiated)
        )
        return negotiated

    async def _late_offer(self, media: MediaSession, ring_s: float) -> Negotiated | None:
        """An INVITE without SDP: our offer goes in the 200, the answer comes in the ACK."""
        if not await self._ring(ring_s):
            return None
        self.dialog.accept(self.sdp.offer())
        try:
            await self.dialog.confirmed
            negotiated = self.sdp.take_answer(self.dialog.remote_sdp)
            host = await _resolve(negotiated.remote_host, self.sdp.address)
        except (SipbotError, OSError) as exc:
            log.info("call %s: late offer failed: %s", self.label, exc)
            if not self.dialog.terminated.done():
                with contextlib.suppress(SipbotError):
                    await self.dialog.bye()
            await media.close()
            return None
        self._apply(negotiated, host)
        media.start()
        log.info(
            "call %s: answered (late offer), RTP %s:%d%s",
            self.label,
            host,
            negotiated.remote_port,
            _srtp(negotiated),
        )
        return negotiated

    async def _refuse(self, status: int, reason: str, exc: Exception) -> None:
        log.info("call %s: %d: %s", self.label, status, exc)
        self.dialog.reject(status, reason)
        assert self.media is not None
        await self.media.close()

    async def _ring(self, ring_s: float) -> bool:
        """Ring (180) for ``ring_s`` first; False when the caller gave up meanwhile."""
        if ring_s <= 0:
            return True
        self.dialog.progress(180)
        done, _ = await asyncio.wait([self.dialog.terminated], timeout=ring_s)
        if done:
            assert self.media is not None
            await self.media.close()
            return False
        return True

    def _apply(self, negotiated: Negotiated, host: str) -> None:
        assert self.media is not None
        self.media.configure(
            codec=negotiated.codec.name,
            payload_type=negotiated.codec.payload_type,
            dtmf_payload_type=negotiated.dtmf_payload_type,
            remote=(host, negotiated.remote_port),
            direction=negotiated.direction,
            ptime_ms=negotiated.ptime_ms,
            srtp=negotiated.srtp,
        )
        self.dialog.on_reoffer = self.on_reoffer

    async def on_reoffer(self, offer: bytes) -> bytes | int:
        """A re-INVITE/UPDATE offer (hold, resume, codec change): answer it, reconfigure media
        (Rule 3)."""
        try:
            negotiated = self.sdp.answer(offer)
        except SdpError as exc:
            log.info("call %s: re-offer refused: %s", self.label, exc)
            return 488
        try:
            host = await asyncio.wait_for(
                _resolve(negotiated.remote_host, self.sdp.address), REOFFER_RESOLVE_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            log.info(
                "call %s: re-offer refused: cannot resolve %s: %r",
                self.label,
                negotiated.remote_host,
                exc,
            )
            return 488
        if self.dialog.terminated.done():
            return 487  # the call ended meanwhile; the core has answered already
        self._apply(negotiated, host)
        log.info(
            "call %s: re-offer: %s %s", self.label, negotiated.codec.name, negotiated.direction
        )
        assert negotiated.answer is not None
        return bytes(negotiated.answer)


def _srtp(negotiated: Negotiated) -> str:
    """The log's note on SRTP: the suite only, never a key."""
    return f" (SRTP {negotiated.srtp.suite})" if negotiated.srtp is not None else ""


async def resolve_media_host(host: str, ours: str) -> str:
    """An IP literal for an SDP connection address (see :func:`_resolve`; outbound calls)."""
    return await _resolve(host, ours)


async def _resolve(host: str, ours: str) -> str:
    """An IP literal for an SDP connection address (resolving a name if a peer sent one) in
    the family of ``ours``, our own media address (the RTP socket's family)."""
    if _is_ip(host):
        return host
    family = socket.AF_INET6 if ":" in ours else socket.AF_INET
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
