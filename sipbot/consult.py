"""A warm transfer's consultation call: sipbot calls the target itself (Conversation Rule 9).

:class:`Consulter` places the call on the server's user agent with a media session of the
server's engine; the :class:`ConsultLeg` plays the briefing to the target and gives the dialog's
Replaces value (RFC 3891) for the REFER that hands the caller over. The target's audio is not
used (nobody listens to it until the caller is joined, directly, without sipbot).

Rules:

* Rule 1: a target reached through a trunk (:func:`sipbot.dial_target.trunk_of`: the URI's
  host is the trunk's dial domain or next hop) is called as a dialled call through that trunk
  is (:func:`sipbot.dial_target.trunk_hop`): to its next hop (RFC 3263), with its Route, its
  caller ID in From and P-Asserted-Identity, its credentials for a 401/407. Any other target
  is called directly from the server's listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sipbot.dial_target import TrunkHop, trunk_caller_id, trunk_hop, trunk_of
from sipbot.dialplan.trunks import Trunk
from sipbot.domain import PCM16_16K, AudioFormat
from sipbot.errors import LocalSipError, SipbotError
from sipbot.media.session import MediaEngine, MediaSession
from sipbot.sip.address import parse_uri
from sipbot.sip.dns import SipResolver
from sipbot.sip.legs import Peer
from sipbot.sip.sdp import SessionDescription, accept_answer, build_offer, parse_sdp
from sipbot.sip.ua import ClientCall, UserAgent

log = logging.getLogger(__name__)

RING_TIMEOUT_S = 30.0  # the target has this long to answer (then CANCEL: "no answer")
CLOSE_TIMEOUT_S = 3.0
HOLD_NOTES_HZ = (660.0, 880.0)  # the built-in hold chime
HOLD_NOTE_S = 0.15
HOLD_PERIOD_S = 3.0
HOLD_AMPLITUDE = 0.2  # of full scale (-14 dBFS): soft


class ConsultLeg:
    """One answered consultation call (see :class:`sipbot.call_ports.ConsultLeg`)."""

    def __init__(self, dialog: ClientCall, media: MediaSession) -> None:
        self.dialog = dialog
        self.media = media

    @property
    def replaces(self) -> str:
        """``call-id;to-tag=<the target's tag>;from-tag=<ours>`` (the target's view)."""
        d = self.dialog
        return f"{d.call_id};to-tag={d.remote_tag or ''};from-tag={d.local_tag}"

    @property
    def terminated(self) -> asyncio.Future[str]:
        return self.dialog.terminated

    async def brief(self, pcm16k: bytes) -> None:
        """Play ``pcm16k`` to the target and wait until it has been sent."""
        if pcm16k and not self.dialog.terminated.done():
            self.media.play(pcm16k, "briefing")
            await self.media.drained()

    async def close(self) -> None:
        if not self.dialog.terminated.done():
            with contextlib.suppress(SipbotError):
                await self.dialog.bye()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.media.close(), CLOSE_TIMEOUT_S)


class Consulter:
    """Places consultation calls for the server's calls.

    Args:
        ua: the server's user agent (the INVITE goes out from its listeners).
        engine: the server's media engine (the call's RTP port).
        codecs: offered codecs, in preference order.
        address: the host for the SDP ``c=`` line; None → the agent's advertised host.
        from_user: the user part of From (a target not reached through a trunk).
        trunks: the current dialplan's trunks (Rule 1); None → every target directly.
        resolver: finds a trunk's next hop (RFC 3263); None → a resolver of the system's DNS.
    """

    def __init__(
        self,
        ua: UserAgent,
        engine: MediaEngine,
        codecs: Sequence[str],
        address: str | None = None,
        from_user: str = "sipbot",
        trunks: Callable[[], Mapping[str, Trunk]] | None = None,
        resolver: SipResolver | None = None,
    ) -> None:
        self._ua = ua
        self._engine = engine
        self._codecs = tuple(codecs)
        self._address = address
        self._from_user = from_user
        self._trunks = trunks
        self._resolver = resolver
        self._session_ids = itertools.count(1)

    def route(self, uri: str) -> tuple[Trunk, TrunkHop] | None:
        """The trunk ``uri`` is reached through and how the INVITE goes there (Rule 1), or
        None (directly).

        Raises:
            DialError: that trunk has nowhere to send to.
        """
        trunk = trunk_of(uri, self._trunks()) if self._trunks is not None else None
        if trunk is None:
            return None
        return trunk, trunk_hop(uri, trunk, trunk_caller_id(trunk))

    async def _next_hop(self, hop: TrunkHop) -> Peer:
        """Where a trunk's INVITE is sent (its next hop's first address, RFC 3263).

        Raises:
            DnsError: no address.
        """
        if self._resolver is None:
            self._resolver = SipResolver()
        return await next_hop_peer(self._resolver, self._ua, hop.next_hop)

    async def place(self, uri: str) -> ConsultLeg:
        """Call ``uri``; returns once it answered (its media running).

        Raises:
            RequestFailed: a final non-2xx response, or no answer within RING_TIMEOUT_S.
            SipbotError: no media port, ``uri`` is not a SIP URI, its trunk's next hop cannot
                be found.
        """
        try:
            host = parse_uri(uri).host
        except SipbotError:
            raise LocalSipError(f"not a SIP URI: {uri!r}") from None
        routed = self.route(uri)
        keys: dict[str, Any] = {"from_user": self._from_user}
        if routed is not None:  # Rule 1
            trunk, hop = routed
            peer = await self._next_hop(hop)
            host = peer.host
            keys = {
                "from_user": hop.from_user,
                "headers": hop.headers,
                "credentials": hop.credentials,
                "transport": peer.transport,
                "destination": peer,
            }
            log.info("warm transfer: calling %s through trunk %s", uri, trunk.name)
        media = await self._engine.open_session(
            on_audio=_ignore, on_dtmf=_ignore, on_timeout=lambda: None
        )
        try:
            offer = build_offer(
                self._codecs,
                address=self._address or self._ua.advertised_host(host),
                port=media.local_port,
                session_id=next(self._session_ids),
                session_version=1,
            )
            call = await self._ua.call(uri, bytes(offer), timeout=RING_TIMEOUT_S, **keys)
        except BaseException:
            await media.close()
            raise
        leg = ConsultLeg(call, media)
        try:
            start_answered(media, offer, call.remote_sdp, PCM16_16K)
        except BaseException:
            await leg.close()
            raise
        return leg


async def next_hop_peer(resolver: SipResolver, ua: UserAgent, next_hop: str) -> Peer:
    """The first address of ``next_hop`` (RFC 3263), its name remembered by ``ua`` (for TLS).

    Raises:
        DnsError: no address.
    """
    first = (await resolver.resolve(next_hop))[0]
    ua.remember_name(first.host, first.port, parse_uri(next_hop).host)
    return Peer(first.transport, first.host, first.port)


def start_answered(
    media: MediaSession, offer: SessionDescription, answer: bytes, fmt: AudioFormat
) -> str:
    """Configure ``media`` for the far end's ``answer`` (SDP) to our ``offer``, exchanging PCM16
    in ``fmt`` both ways, and start sending; returns the negotiated codec's name.

    Raises:
        SdpError: the answer does not fit the offer.
    """
    negotiated = accept_answer(offer, parse_sdp(answer))
    media.configure(
        codec=negotiated.codec.name,
        payload_type=negotiated.codec.payload_type,
        dtmf_payload_type=negotiated.dtmf_payload_type,
        remote=(negotiated.remote_host, negotiated.remote_port),
        direction=negotiated.direction,
    )
    media.set_formats(fmt, fmt)
    media.start()
    return negotiated.codec.name


def hold_pattern(seconds: float, rate_hz: int = 16_000) -> bytes:
    """The built-in hold audio (Rule 9), PCM16 mono: a soft two-note chime (660 Hz then
    880 Hz, 150 ms each with 10 ms fades) every HOLD_PERIOD_S, silence between, ``seconds``
    long (the call loops it). A pure function of its arguments."""
    total = round(seconds * rate_hz)
    note = round(HOLD_NOTE_S * rate_hz)
    fade = np.minimum(1.0, np.minimum(np.arange(note), np.arange(note)[::-1]) / (0.01 * rate_hz))
    t = np.arange(note) / rate_hz
    chime = np.concatenate(
        [np.sin(2 * np.pi * hz * t) * fade * HOLD_AMPLITUDE for hz in HOLD_NOTES_HZ]
    )
    period = np.zeros(round(HOLD_PERIOD_S * rate_hz))
    period[: len(chime)] = chime
    reps = -(-total // len(period))  # ceiling
    pcm = np.tile(period, reps)[:total]
    return (pcm * 32767).astype("<i2").tobytes()


def _ignore(_: object) -> None:
    pass
