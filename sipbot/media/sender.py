"""The outbound side of one call's RTP, sans-I/O: provider audio in, one packet per slot out.

``play()`` converts provider audio into the pacer format at once (bursts are resampled as they
come); :meth:`RtpSender.next_packet` is called once per 20 ms slot by the shell and returns the
slot's packet: a telephone-event while DTMF is being sent, else the pacer's frame (audio or
silence), encoded. Encoding per slot keeps a stateful encoder (G.722) on one continuous signal.

Rules:

* Rule 1: one call of ``next_packet`` = one slot = one packet; ``skip`` lets slots pass unsent
  (hold, a stall) with the RTP timestamp running on.
* Rule 2: the first packet and the first audio after silence carry the marker bit.
* Rule 3: audio played before :meth:`configure` is kept (bounded) and queued once it is.
* Rule 4: a codec change keeps the queue when the pacer format is unchanged (PCMU ↔ PCMA),
  else drops it; the played-ms accounting always carries over.
* Rule 5 (latency, :mod:`sipbot.media.latency`): when the shell passes ``now`` to
  :meth:`RtpSender.play`, :meth:`RtpSender.flush` and :meth:`RtpSender.next_packet`,
  ``first_audio_latency`` gets play-into-an-empty-queue → the first audio packet after it, and
  ``barge_in_latency`` gets flush → the next packet. Without ``now`` nothing is measured.
* Rule 6 (underruns): ``underruns`` counts the times an item's audio resumed after silence was
  sent in its middle (the queue ran dry: the caller heard a gap). A flush starts afresh.
* Rule 7 (SRTP): with :attr:`RtpSender.srtp` set (:mod:`sipbot.media.srtp`), every packet
  :meth:`RtpSender.next_packet` returns is protected, telephone-events included.
* Rule 8 (ducking): with :attr:`RtpSender.gain` below 1, audio frames (not silence, not DTMF)
  are scaled by it before encoding: the barge-in guard's "duck, don't flush" (the queue and
  the played-ms accounting are untouched).
* Rule 9 (deferred conversion): :meth:`RtpSender.play` keeps provider audio as it came; it is
  converted into the pacer format just before anything reads the pacer (the next packet,
  ``queued_ms``, a DTMF tone, a codec change) or, for a whole phase group of calls at once,
  by :func:`convert_pending` (the media shell calls it at every tick, before the group's
  packets). The pacer gets the same bytes in the same order as if ``play()`` had converted
  them (resample Rules 1 and 7), so nothing a caller hears or a counter shows changes; only
  the CPU work moves to the tick, where it is batched. A flush drops unconverted audio
  unconverted (its items are reported as the pacer reports queued ones). Once more than
  ``DEFER_MAX_MS`` of audio waits (a provider's burst), ``play()`` converts it at once, as
  before: what a tick converts stays bounded, so a burst cannot make a group's packets late.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sipbot.errors import MediaError
from sipbot.media.chain import OutboundChain, convert_outbound
from sipbot.media.codecs import CodecInfo
from sipbot.media.dtmf import DtmfSender, check_digits, dtmf_tone
from sipbot.media.formats import PCM16_24K, AudioFormat
from sipbot.media.latency import LatencyHistogram
from sipbot.media.pacer import Pacer
from sipbot.media.resample import BATCH_MIN
from sipbot.media.rtp import OutboundStream

if TYPE_CHECKING:
    from sipbot.media.srtp import SrtpContext

log = logging.getLogger(__name__)

PENDING_PLAY_MAX = 256  # chunks kept if play() comes before configure()
DEFER_MAX_MS = 100  # unconverted audio beyond this is converted in play() (Rule 9)


class RtpSender:
    """Outbound RTP of one call.

    Args:
        prebuffer_ms, max_hold_ms: the pacer's pre-buffer (see :class:`Pacer`).
        source: the format :meth:`play` takes (the provider's output).
    """

    def __init__(
        self, *, prebuffer_ms: int = 60, max_hold_ms: int = 40, source: AudioFormat = PCM16_24K
    ) -> None:
        self.prebuffer_ms = prebuffer_ms
        self.max_hold_ms = max_hold_ms
        self.source = source
        self.codec: CodecInfo | None = None
        self.stream: OutboundStream | None = None
        self.chain: OutboundChain | None = None
        self.pacer: Pacer | None = None
        self.dtmf = DtmfSender()
        self.payload_type = -1
        self.dtmf_payload_type: int | None = None
        self.dtmf_sent = 0
        self.last_pcm = b""  # PCM16 at the codec's rate of the last audio slot (recording)
        self._pending: list[tuple[bytes, str]] = []
        self._unconverted: list[tuple[bytes, str]] = []  # Rule 9
        self._unconverted_bytes = 0
        self._marker_next = True
        self.first_audio_latency = LatencyHistogram()
        self.barge_in_latency = LatencyHistogram()
        self._audio_since: float | None = None  # play() into an empty queue, not yet sent
        self._flushed_at: float | None = None  # flush(), no packet sent since
        self.underruns = 0  # Rule 6
        self._spurt_item: str | None = None  # item of the last audio frame sent
        self.srtp: SrtpContext | None = None  # Rule 7
        self.gain = 1.0  # Rule 8

    def configure(self, codec: CodecInfo, payload_type: int, dtmf_payload_type: int | None) -> None:
        """Use ``codec`` from now on (the stream's SSRC, sequence and timestamp continue)."""
        self.payload_type, self.dtmf_payload_type = payload_type, dtmf_payload_type
        if dtmf_payload_type is None and self.dtmf.active:
            self.dtmf = DtmfSender()  # telephone-event was dropped: nothing can be sent
        if codec is not self.codec:
            self.codec = codec
            if self.stream is None:
                self.stream = OutboundStream(codec.samples_per_frame)
            self._build()

    def set_source(self, source: AudioFormat) -> None:
        """Take :meth:`play` audio in ``source`` format from now on."""
        self.source = source
        if self.codec is not None:
            self._build()

    def _build(self) -> None:
        assert self.codec is not None
        self.convert_pending()  # with the chain it was played to (Rule 9)
        chain = OutboundChain(self.codec, self.source)
        old = self.pacer
        if old is not None and (chain.frame_bytes, chain.silence) == (old.frame_bytes, old.silence):
            self.chain = chain  # same pacer format: keep the queue
            return
        if old is not None and old.queued_bytes:
            log.info("codec/format change dropped queued audio of %s", sorted(old.flush()))
            self._audio_since = None
        self.chain = chain
        self.pacer = Pacer(
            chain.frame_bytes,
            chain.silence,
            chain.bytes_per_ms,
            prebuffer_ms=self.prebuffer_ms,
            max_hold_ms=self.max_hold_ms,
        )
        if old is not None:
            self.pacer.inherit_accounting(old)
        pending, self._pending = self._pending, []
        for audio, item_id in pending:
            self.play(audio, item_id)

    # ------------------------------------------------------------------ audio in

    def play(self, audio: bytes, item_id: str, now: float | None = None) -> None:
        """Queue provider audio (``source`` format, any whole number of samples).

        ``now`` (monotonic seconds) times the first-audio latency (Rule 5).
        """
        if not audio:
            return
        if self.chain is None or self.pacer is None:
            if len(self._pending) < PENDING_PLAY_MAX:
                self._pending.append((audio, item_id))
            return
        if (
            now is not None
            and self._audio_since is None
            and not self.pacer.queued_bytes
            and not self._unconverted
        ):
            self._audio_since = now
        self._unconverted.append((audio, item_id))  # Rule 9
        self._unconverted_bytes += len(audio)
        if self._unconverted_bytes > DEFER_MAX_MS * self.source.bytes_per_ms:
            self.convert_pending()

    def convert_pending(self) -> None:
        """Convert what :meth:`play` kept into the pacer (Rule 9; :func:`convert_pending`)."""
        unconverted = self._unconverted
        if unconverted:
            self._unconverted = []
            self._unconverted_bytes = 0
            chain, pacer = self.chain, self.pacer
            assert chain is not None  # play() keeps nothing before configure()
            assert pacer is not None
            for audio, item_id in unconverted:
                pacer.push(chain.convert(audio), item_id)

    def flush(self, now: float | None = None) -> dict[str, int]:
        """Drop queued audio (barge-in); returns ``{item_id: ms played}`` (see Pacer.flush).

        ``now`` (monotonic seconds) times the barge-in latency (Rule 5).
        """
        self._pending.clear()
        self._audio_since = None  # that audio will never be sent
        self._spurt_item = None
        if now is not None:
            self._flushed_at = now
        if self.pacer is None or self.chain is None:
            return {}
        unconverted, self._unconverted = self._unconverted, []
        self._unconverted_bytes = 0
        self.chain.reset()
        played = self.pacer.flush()
        for _, item_id in unconverted:  # never pushed: as the pacer reports a queued item
            played.setdefault(item_id, self.pacer.played_ms(item_id))
        return played

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` sent so far."""
        return 0 if self.pacer is None else self.pacer.played_ms(item_id)

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting in the pacer."""
        self.convert_pending()
        return 0 if self.pacer is None else self.pacer.queued_ms

    def audio_queued(self) -> bool:
        """``queued_ms() > 0`` without converting what :meth:`play` kept (Rule 9): at least a
        millisecond of audio unconverted, or in the pacer."""
        if self.pacer is None:
            return False
        return self._unconverted_bytes >= self.source.bytes_per_ms or self.pacer.queued_ms > 0

    @property
    def idle(self) -> bool:
        """Nothing queued: no audio, no DTMF."""
        return (
            not self._pending
            and not self._unconverted
            and (self.pacer is None or self.pacer.queued_bytes == 0)
            and not self.dtmf.active
        )

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """Queue ``digits`` as RFC 4733 events, or as in-band tones without telephone-event.

        Raises:
            ValueError: an invalid digit or duration.
            MediaError: not configured yet.
        """
        digits = check_digits(digits)
        if self.codec is None or self.chain is None or self.pacer is None:
            raise MediaError("configure() must be called before send_dtmf()")
        if self.dtmf_payload_type is not None:
            self.dtmf.queue(digits, duration_ms)
            return
        tones = dtmf_tone(digits, self.codec.pcm_rate_hz, duration_ms)
        self.convert_pending()  # the tones follow the audio played before them
        self.pacer.push(self.chain.from_pcm(tones), "dtmf")

    # ------------------------------------------------------------------ packets out

    def next_packet(self, want_pcm: bool = False, now: float | None = None) -> bytes:
        """The packet for this slot. ``want_pcm`` fills ``last_pcm`` (for the recorder).

        ``now`` (monotonic seconds, when the packet is sent) closes latency measures (Rule 5);
        the packet is SRTP-protected when :attr:`srtp` is set (Rule 7).

        Raises:
            MediaError: not configured yet.
        """
        packet = self._next_rtp(want_pcm, now)
        srtp = self.srtp
        return packet if srtp is None else srtp.protect(packet)

    def _next_rtp(self, want_pcm: bool, now: float | None) -> bytes:
        stream, pacer, chain = self.stream, self.pacer, self.chain
        if stream is None or pacer is None or chain is None:
            raise MediaError("configure() must be called before sending")
        if now is not None and self._flushed_at is not None:
            self.barge_in_latency.record(now - self._flushed_at)
            self._flushed_at = None
        if self.dtmf.active and self.dtmf_payload_type is not None:
            event = self.dtmf.next_packet(stream.timestamp)
            if event is not None:
                payload, timestamp, marker = event
                self.dtmf_sent += marker
                return stream.event_packet(self.dtmf_payload_type, payload, timestamp, marker)
        if self._unconverted:
            self.convert_pending()
        frame = pacer.pull()
        if pacer.last_was_audio:
            if pacer.talkspurt_start and pacer.last_item == self._spurt_item:
                self.underruns += 1
            self._spurt_item = pacer.last_item
        if now is not None and self._audio_since is not None and pacer.last_was_audio:
            self.first_audio_latency.record(now - self._audio_since)
            self._audio_since = None
        marker = pacer.talkspurt_start or self._marker_next
        self._marker_next = False
        if self.gain < 1.0 and pacer.last_was_audio:  # Rule 8
            frame = chain.scale(frame, self.gain)
        if want_pcm:
            self.last_pcm = chain.to_pcm(frame)
        return stream.packet(self.payload_type, chain.encode(frame), marker)

    def skip(self, frames: int = 1) -> None:
        """Let ``frames`` slots pass without a packet."""
        if self.stream is not None:
            self.stream.skip(frames)


def convert_pending(senders: Sequence[RtpSender]) -> None:
    """:meth:`RtpSender.convert_pending` for many senders, resampling in batches (Rule 9).

    A sender with exactly one chunk waiting joins the batch of its rate pair
    (:func:`~sipbot.media.chain.convert_outbound`); one with several converts on its own, and
    so do all when fewer than ``BATCH_MIN`` wait.
    """
    waiting = [sender for sender in senders if sender._unconverted]
    if len(waiting) < BATCH_MIN:  # too few to lay out a batch
        for sender in waiting:
            sender.convert_pending()
        return
    chains: list[OutboundChain] = []
    batched: list[RtpSender] = []
    for sender in waiting:
        if len(sender._unconverted) > 1 or sender.chain is None:
            sender.convert_pending()
            continue
        chains.append(sender.chain)
        batched.append(sender)
    chunks = [sender._unconverted[0][0] for sender in batched]
    for sender, audio in zip(batched, convert_outbound(chains, chunks), strict=True):
        item_id = sender._unconverted[0][1]
        sender._unconverted = []
        sender._unconverted_bytes = 0
        assert sender.pacer is not None
        sender.pacer.push(audio, item_id)
