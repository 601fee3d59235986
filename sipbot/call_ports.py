"""The seams of a call: what :class:`sipbot.call.Call` needs from its dialog and its media.

The live implementations are :class:`sipbot.sip.ua.ServerCall` and
:class:`sipbot.media.session.MediaSession`; unit tests drive a whole call with recorders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from sipbot.domain import AudioFormat
from sipbot.media.latency import MediaLatency
from sipbot.media.session import MediaStats
from sipbot.sip.message import SipResponse


class Referral(Protocol):
    """A REFER the peer accepted."""

    @property
    def response(self) -> SipResponse | None:
        """The peer's 2xx to the REFER."""
        ...

    def final(self) -> Awaitable[int]:
        """The transfer's outcome: the first final status a NOTIFY reported.

        Raises:
            RequestFailed: the dialog ended (or another REFER replaced this one) first.
        """
        ...


class CallDialog(Protocol):
    """The SIP side of an answered call."""

    @property
    def terminated(self) -> asyncio.Future[str]:
        """Resolves once, with the reason the dialog ended."""
        ...

    @property
    def confirmed(self) -> asyncio.Future[None]:
        """Resolves when the ACK arrived (fails if the call ended before it)."""
        ...

    async def bye(self) -> None:
        """End the call (idempotent)."""
        ...

    async def refer(self, uri: str) -> Referral:
        """Blind transfer: REFER the peer to ``uri``; returns once the peer accepted.

        Raises:
            RequestFailed: the peer refused the REFER or did not answer.
        """
        ...


class ConsultLeg(Protocol):
    """A warm transfer's consultation call to the target (answered), Conversation Rule 9."""

    @property
    def replaces(self) -> str:
        """Its dialog as the target sees it, for a Replaces header (RFC 3891):
        ``call-id;to-tag=<target's tag>;from-tag=<ours>``."""
        ...

    @property
    def terminated(self) -> asyncio.Future[str]:
        """Resolves once, with the reason the call ended."""
        ...

    async def brief(self, pcm16k: bytes) -> None:
        """Play ``pcm16k`` (PCM16 16 kHz) to the target; returns once it has played out."""
        ...

    async def close(self) -> None:
        """BYE if the call is still up, and release its media (idempotent)."""
        ...


class Consulter(Protocol):
    """Places consultation calls (the server's user agent and media engine)."""

    async def place(self, uri: str) -> ConsultLeg:
        """Call ``uri`` and wait for the answer.

        Raises:
            RequestFailed: a final non-2xx response (``response``), or no answer in time.
            SipbotError: the call could not be placed (no media port, bad URI...).
        """
        ...


class CallMedia(Protocol):
    """The RTP side of an answered call (the pacer and the inbound chain behind it)."""

    def set_formats(self, inbound: AudioFormat, outbound: AudioFormat) -> None:
        """What caller audio is delivered as, and what :meth:`play` takes."""
        ...

    def play(self, audio: bytes, item_id: str) -> None:
        """Queue agent audio."""
        ...

    def flush(self) -> dict[str, int]:
        """Drop the queue; ``{item_id: ms played}`` of the items cut."""
        ...

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting in the pacer."""
        ...

    def audio_queued(self) -> bool:
        """Agent audio is waiting to be sent: :meth:`queued_ms` > 0, asked per caller frame, so
        it must be cheap (the sender's deferred conversion is not forced)."""
        ...

    def duck(self, gain_db: float) -> None:
        """Play queued audio at ``gain_db`` (0: as it is), nothing dropped (barge-in guard)."""
        ...

    def drained(self) -> Awaitable[None]:
        """Resolves once everything queued has been sent (or the media closed)."""
        ...

    def send_dtmf(self, digits: str) -> None:
        """Send ``digits`` as RFC 4733 events."""
        ...

    def start_recording(self, path: str) -> None:
        """Record the call to a WAV file until close."""
        ...

    @property
    def stats(self) -> MediaStats:
        """RTP counters (for the call record)."""
        ...

    @property
    def latency(self) -> MediaLatency:
        """Latency summaries (for the call record)."""
        ...

    async def close(self) -> None:
        """Stop sending and release the port (idempotent)."""
        ...
