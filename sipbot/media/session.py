"""The asyncio shell of the media path: one RTP socket per call, one shared ticker per process.

``MediaEngine`` (one per process) owns the port allocator, the :class:`~sipbot.media.ticker.
Ticker` and the inbound queue; ``MediaSession`` (one per call) owns the socket and the sans-I/O
cores. Both directions are pull-based: the shell calls a core and acts on what it returns::

    datagram → MediaEngine.enqueue ─(drain)→ MediaSession.process
        → RtpReceiver.receive() → (payload | Digit | RESTART, ...)
        → InboundChain.feed(payload) → (frame, ...) → on_audio;  Digit → on_dtmf
    play(audio) → RtpSender (kept) ─(tick, every 20 ms: convert, batched per phase group → Pacer)
        → next_packet() → sendto

The two meet only through public entry points: the engine calls :meth:`MediaSession.process`
(from its drain) and :meth:`MediaSession.tick` (through the ticker); a session calls
:meth:`MediaEngine.enqueue` (a datagram was read) and :meth:`MediaEngine.session_closed`.

Rules:

* Rule 1 (cadence): packets leave only from :meth:`MediaSession.tick`, exactly one per slot the
  ticker reports; nothing that arrives (garbage, floods, bursts, provider stalls) adds or removes
  a slot. Inbound work never waits for a tick, and a tick never waits for inbound work: datagrams
  are queued as they are read and processed by a drain that steps aside whenever a tick is due
  (the loop runs its timers before the drain resumes), so a burst of inbound packets cannot delay
  the outbound cadence by more than a few packets' processing. Each drain turn processes at
  least :data:`DRAIN_MIN_BATCH` datagrams first (well under a millisecond), so inbound work
  always progresses even when a tick is due at every turn of a busy loop.
* Rule 2 (symmetric RTP): we send to :attr:`RtpReceiver.peer`, the latched source of the
  caller's RTP; the latching policy is documented in :mod:`sipbot.media.receiver`.
* Rule 3 (direction): ``direction`` is OUR direction, as ``sip.sdp.Negotiated.direction`` gives
  it. We send while it is ``sendrecv``/``sendonly`` (and the address is not 0.0.0.0);
  otherwise slots pass silently (timestamps still advance, queued audio waits). The inactivity
  timeout runs only while it is ``sendrecv``: a peer that holds the call (our ``recvonly`` or
  ``inactive``) may well be silent.
* Rule 4 (bad input): each kind of problem is counted in :attr:`MediaSession.stats` and logged
  at most once per 10 s per call; callbacks that raise are logged the same way.
* Rule 5 (latency): :attr:`MediaSession.latency` summarises the call's inbound, first-audio and
  barge-in latencies (:mod:`sipbot.media.latency`), timed with the loop's clock readings.
* Rule 6 (SRTP): :meth:`MediaSession.configure` with ``srtp`` keys makes one
  :class:`~sipbot.media.srtp.SrtpContext` that the sender protects with and the receiver
  unprotects with; a re-offer with the same keys keeps it (its rollover counters and replay
  window), new keys replace it, None returns to plain RTP.
* Rule 7 (continuity): a :class:`~sipbot.media.receiver.Gap` in the caller's stream becomes
  audio (:meth:`~sipbot.media.chain.InboundChain.fill`: concealment for lost packets, silence
  for suppressed ones) before the next payload, so ``on_audio`` gets the caller's time without
  holes; ``concealed_frames`` and ``silence_filled_ms`` count it.
* Rule 8 (bounded inbound queue): the queue of Rule 1 is bounded in count and in age, so a
  CPU-starved process or a flood cannot grow it without limit. A datagram that arrives while its
  session already has :data:`SESSION_INBOX_MAX` waiting, or the engine :data:`INBOX_MAX`, is
  dropped (the newest: a flood on one port crowds out only its own call); a datagram that waited
  longer than :data:`INBOX_MAX_AGE_S` is dropped unprocessed by the drain (the oldest: its slot
  has passed, and dropping it is how a starved process catches up). Both are counted
  (:attr:`MediaEngine.inbox_dropped`, :attr:`MediaEngine.inbox_stale`) and logged at most once
  per 10 s.
* Rule 9 (batched outbound DSP): at each tick of a phase group, before its packets, the
  provider audio its sessions were given since the last tick is converted to the pacer format
  in one batch per rate pair (:func:`~sipbot.media.sender.convert_pending`, bit-identical
  to one session at a time); ``play()`` itself only queues.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

from sipbot.domain import SrtpKeys
from sipbot.errors import MediaError
from sipbot.media.chain import InboundChain
from sipbot.media.codecs import CodecInfo, codec_info
from sipbot.media.formats import PCM16_16K, AudioFormat
from sipbot.media.latency import MediaLatency
from sipbot.media.ports import PortAllocator
from sipbot.media.receiver import RESTART, Address, Digit, Gap, Received, RtpReceiver
from sipbot.media.recorder import CallRecorder
from sipbot.media.sender import RtpSender, convert_pending
from sipbot.media.srtp import SrtpContext
from sipbot.media.ticker import Ticker, TickTarget
from sipbot.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

DRAIN_CHECK_EVERY = 8  # datagrams processed between looks at the ticker's next deadline
# datagrams processed per drain turn before a due tick may interrupt it (Rule 1): with 4 phase
# groups a tick is due every 5 ms, so on a busy loop one is nearly always due when the drain
# starts; without this floor the drain would yield at once, every turn, and starve inbound audio
DRAIN_MIN_BATCH = 32
INBOX_MAX = 8192  # datagrams waiting in the engine (Rule 8): ~0.8 s of 200 calls' RTP
SESSION_INBOX_MAX = 100  # datagrams waiting per session (Rule 8): 2 s of 20 ms packets
INBOX_MAX_AGE_S = 0.25  # a datagram that waited longer is dropped unprocessed (Rule 8)


@dataclass(frozen=True)
class MediaSettings:
    """Process-wide media settings (from the config file's ``server:`` section)."""

    rtp_host: str = "127.0.0.1"
    port_min: int = 20000
    port_max: int = 29999
    inactivity_timeout_s: float = 30.0
    prebuffer_ms: int = 60
    jitter_max_ms: int = 60
    max_hold_ms: int = 40  # longest the pre-buffer holds a short reply back
    phase_groups: int = 4  # ticker groups the calls are spread over


@dataclass(slots=True)
class MediaStats:
    """Counters of one session (a snapshot from :attr:`MediaSession.stats`)."""

    packets_in: int = 0
    packets_out: int = 0
    lost: int = 0
    late: int = 0  # inbound packets that came after their slot was skipped
    duplicates: int = 0
    restarts: int = 0  # inbound stream restarts (SSRC change, sequence jump)
    bad_packets: int = 0  # not RTP
    foreign_packets: int = 0  # from a source other than the latched peer
    wrong_payload_type: int = 0
    comfort_noise: int = 0
    late_ticks: int = 0  # slots sent as a catch-up burst after a stall
    skipped_frames: int = 0  # slots skipped after a long stall
    send_errors: int = 0
    dtmf_in: int = 0
    dtmf_out: int = 0
    relatches: int = 0
    underruns: int = 0  # an item's audio resumed after a gap of silence (the queue ran dry)
    srtp_failures: int = 0  # inbound SRTP packets that failed authentication or replay checks
    concealed_frames: int = 0  # 20 ms of lost or late caller audio concealed (Rule 7)
    silence_filled_ms: int = 0  # the caller's silence suppression, filled with silence (Rule 7)


class MediaEngine:
    """One per process: the shared 20 ms ticker, the RTP port allocator, the inbound drain.

    Args:
        settings: the process-wide media settings.
        loop: the event loop that runs the drain (default: the running loop of the first
            :meth:`open_session`).
    """

    def __init__(
        self, settings: MediaSettings, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.settings = settings
        self.ports = PortAllocator(settings.rtp_host, settings.port_min, settings.port_max)
        self._loop = loop
        self._ticker: Ticker | None = None
        self._sessions: set[MediaSession] = set()
        # Rule 1: datagrams wait here (session, data, source, read at) for the drain
        self._inbox: deque[tuple[MediaSession, bytes, Address, float]] = deque()
        self._draining = False
        self.inbox_dropped = 0  # datagrams refused because a queue was full (Rule 8)
        self.inbox_stale = 0  # datagrams dropped unprocessed after waiting too long (Rule 8)
        self._drop_log = RateLimitedLog(log)

    @property
    def ticker(self) -> Ticker:
        """The shared ticker (made on first use, on the running loop)."""
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            self._ticker = Ticker(loop, groups=self.settings.phase_groups)
            self._ticker.before_tick = self._before_tick
        return self._ticker

    @staticmethod
    def _before_tick(targets: tuple[TickTarget, ...]) -> None:
        """Rule 9: the provider audio the group's sessions were given since the last tick,
        converted in one batch per rate pair (sender Rule 9)."""
        convert_pending([t._tx for t in targets if type(t) is MediaSession and not t._closed])

    @property
    def sessions(self) -> int:
        """Open sessions."""
        return len(self._sessions)

    async def open_session(
        self,
        *,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_timeout: Callable[[], None],
    ) -> MediaSession:
        """Bind a port and make a session (not sending until configured and started).

        Raises:
            PortRangeExhausted: no free port in the range.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        sock = self.ports.bind()
        session = MediaSession(self, sock, on_audio, on_dtmf, on_timeout)
        try:
            await loop.create_datagram_endpoint(lambda: _RtpProtocol(session), sock=sock)
        except BaseException:
            sock.close()
            self.ports.release(session.local_port)
            raise
        self._sessions.add(session)
        return session

    def enqueue(self, session: MediaSession, data: bytes, addr: Address, arrived: float) -> None:
        """Queue a datagram read from ``session``'s socket at ``arrived`` (loop time).

        The entry point of the inbound path: the drain hands it to
        :meth:`MediaSession.process` soon, in arrival order, stepping aside for due ticks
        (Rule 1). A full queue drops it (Rule 8).
        """
        inbox = self._inbox
        if len(inbox) >= INBOX_MAX or session._queued >= SESSION_INBOX_MAX:
            self.inbox_dropped += 1
            self._drop_log.warning(
                "inbox-full",
                arrived,
                "RTP receive queue full: dropping datagrams (%d dropped in total)",
                self.inbox_dropped,
            )
            return
        session._queued += 1
        inbox.append((session, data, addr, arrived))
        if not self._draining:
            loop = self._loop
            assert loop is not None  # set by open_session, the only maker of sessions
            self._draining = True
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Process queued datagrams; yield to a due tick (Rule 1); drop stale ones (Rule 8)."""
        inbox = self._inbox
        loop = self._loop
        assert loop is not None
        ticker = self._ticker
        due = ticker.next_deadline() if ticker is not None else None
        processed = 0
        now = 0.0
        while inbox:
            if processed % DRAIN_CHECK_EVERY == 0:
                now = loop.time()
                if processed >= DRAIN_MIN_BATCH and due is not None and now >= due:
                    loop.call_soon(self._drain)  # after the timers: the tick first
                    return
            session, data, addr, arrived = inbox.popleft()
            session._queued -= 1
            processed += 1
            if now - arrived > INBOX_MAX_AGE_S:
                self._stale(now, now - arrived)
                continue
            session.process(data, addr, arrived)
        self._draining = False

    def _stale(self, now: float, waited: float) -> None:
        self.inbox_stale += 1
        self._drop_log.warning(
            "inbox-stale",
            now,
            "RTP receive queue %.0f ms behind: dropping stale datagrams (%d dropped in total)",
            waited * 1000.0,
            self.inbox_stale,
        )

    def session_closed(self, session: MediaSession) -> None:
        """Release ``session``'s port and stop ticking it (:meth:`MediaSession.close` calls it)."""
        self._sessions.discard(session)
        self.ports.release(session.local_port)
        if self._ticker is not None:
            self._ticker.remove(session)

    async def close(self) -> None:
        """Close every session and stop the ticker."""
        for session in list(self._sessions):
            await session.close()
        if self._ticker is not None:
            self._ticker.close()


def _ignore(*_: object) -> None:
    """A closed session's callbacks."""


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, session: MediaSession) -> None:
        self._session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport does not subclass asyncio.DatagramTransport; it has sendto.
        self._session._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._session._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._session._on_send_error(exc)


class MediaSession:
    """One call's RTP media. Made by :meth:`MediaEngine.open_session`; see the module rules."""

    def __init__(
        self,
        engine: MediaEngine,
        sock: socket.socket,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_timeout: Callable[[], None],
    ) -> None:
        self._engine = engine
        settings = self._settings = engine.settings
        self._loop = asyncio.get_running_loop()
        self.local_port: int = sock.getsockname()[1]
        self._transport: asyncio.DatagramTransport | None = None
        self._on_audio, self._on_dtmf, self._on_timeout = on_audio, on_dtmf, on_timeout
        self._counters = MediaStats()
        self._log = RateLimitedLog(log)
        self._rx = RtpReceiver(
            log=self._log,
            name=f"rtp:{self.local_port}",
            jitter_max_s=settings.jitter_max_ms / 1000.0,
        )
        self._tx = RtpSender(prebuffer_ms=settings.prebuffer_ms, max_hold_ms=settings.max_hold_ms)
        self._inbound_format = PCM16_16K
        self._codec: CodecInfo | None = None
        self._inbound: InboundChain | None = None
        self._recorder: CallRecorder | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._sending = self._expect_rx = False
        self._started = self._closed = self._timed_out = False
        self._queued = 0  # datagrams of this session in the engine's queue (Rule 8)

    def __repr__(self) -> str:
        return f"<MediaSession port={self.local_port} peer={self._rx.peer}>"

    # ------------------------------------------------------------------ control (call.py)

    def configure(
        self,
        *,
        codec: str,
        payload_type: int,
        dtmf_payload_type: int | None,
        remote: tuple[str, int],
        direction: str = "sendrecv",
        ptime_ms: int = 20,
        srtp: SrtpKeys | None = None,
    ) -> None:
        """Apply the negotiated SDP (again on a re-INVITE).

        ``remote`` is the SDP's connection address (an IP literal) and port; ``direction`` is
        OUR direction (Rule 3). We always send 20 ms packets: ``ptime_ms`` is the peer's
        preference, and inbound packets of any duration are accepted. ``srtp``: the SRTP keys,
        None for plain RTP (Rule 6).

        Raises:
            CodecError: an unsupported codec.
            SrtpError: unusable SRTP keys.
        """
        current = self._rx.srtp
        if srtp != (current.keys if current is not None else None):
            context = SrtpContext(srtp) if srtp is not None else None
            self._rx.srtp = self._tx.srtp = context
        del ptime_ms  # documented above: outbound is always 20 ms
        info = codec_info(codec)
        remote_addr = (remote[0], int(remote[1]))
        self._rx.configure(payload_type, dtmf_payload_type, remote_addr)
        self._tx.configure(info, payload_type, dtmf_payload_type)
        null_address = remote_addr[0] in ("0.0.0.0", "::") or remote_addr[1] == 0
        self._sending = direction in ("sendrecv", "sendonly") and not null_address
        expect = direction == "sendrecv"
        if expect and not self._expect_rx:
            self._rx.last_rx = self._loop.time()
        self._expect_rx = expect
        if info is not self._codec:
            self._codec = info
            self._inbound = InboundChain(info, self._inbound_format)

    def set_formats(self, inbound: AudioFormat, outbound: AudioFormat) -> None:
        """Set what ``on_audio`` delivers and what :meth:`play` takes (see the module docs).

        Raises:
            CodecError: a format the codec cannot be converted to or from.
        """
        self._inbound_format = inbound
        if self._codec is not None:
            self._inbound = InboundChain(self._codec, inbound)
        self._tx.set_source(outbound)

    def start(self) -> None:
        """Send one silence packet at once (for trunks that wait for media), then every 20 ms.

        Raises:
            MediaError: the session is not configured, or closed.
        """
        if self._closed or self._codec is None:
            raise MediaError("configure() must be called before start(), and not after close()")
        if self._started:
            return
        self._started = True
        self._rx.last_rx = now = self._loop.time()
        self._send_slot(now)
        self._engine.ticker.add(self)

    def play(self, audio: bytes, item_id: str) -> None:
        """Queue provider audio (outbound format, any whole number of samples)."""
        if not self._closed:
            self._tx.play(audio, item_id, self._loop.time())

    def flush(self) -> dict[str, int]:
        """Barge-in: drop queued audio so the next packet is silence.

        Returns:
            ``{item_id: ms played}`` for each item the caller may have heard only partly.
        """
        return self._tx.flush(self._loop.time())

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` sent so far."""
        return self._tx.played_ms(item_id)

    def duck(self, gain_db: float) -> None:
        """Play queued audio at ``gain_db`` (0: as it is) from the next packet (barge-in guard)."""
        self._tx.gain = min(1.0, 10.0 ** (gain_db / 20.0))

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting in the pacer."""
        return self._tx.queued_ms()

    def audio_queued(self) -> bool:
        """Audio waiting to be sent, converted or not (sender Rule 9; nothing is converted)."""
        return self._tx.audio_queued()

    async def drained(self) -> None:
        """Return once everything queued (audio and DTMF) has been sent, or the session closed."""
        if self._closed or self._tx.idle:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """Send ``digits`` as RFC 4733 events, or as in-band tones if the peer offered none.

        Raises:
            ValueError: an invalid digit or duration.
            MediaError: the session is not configured.
        """
        self._tx.send_dtmf(digits, duration_ms)

    def start_recording(self, path: str) -> None:
        """Record the call to a stereo WAV (caller left, bot right) until close; a second
        call with the same path keeps the file (an outbound call records its early media).

        Raises:
            MediaError: the session is not configured.
            OSError: the file cannot be created.
        """
        if self._codec is None:
            raise MediaError("configure() must be called before start_recording()")
        if self._recorder is not None:
            if self._recorder.path == path and not self._recorder.closed:
                return  # already recording there (from the early media on): keep it
            self._recorder.close()
        self._recorder = CallRecorder(path, self._codec.pcm_rate_hz)

    @property
    def stats(self) -> MediaStats:
        """A snapshot of the counters."""
        jitter, rx = self._rx.jitter.stats, self._rx.stats
        return replace(
            self._counters,
            packets_in=rx.packets_in,
            lost=jitter.lost,
            late=jitter.late,
            duplicates=jitter.duplicates,
            restarts=jitter.restarts,
            bad_packets=rx.bad_packets,
            foreign_packets=rx.foreign_packets,
            wrong_payload_type=rx.wrong_payload_type,
            comfort_noise=rx.comfort_noise,
            dtmf_in=rx.dtmf_in,
            dtmf_out=self._tx.dtmf_sent,
            relatches=rx.relatches,
            underruns=self._tx.underruns,
            srtp_failures=rx.srtp_failures,
        )

    @property
    def latency(self) -> MediaLatency:
        """The call's latency summaries so far (Rule 5)."""
        return MediaLatency(
            inbound=self._rx.latency.summary(),
            first_audio=self._tx.first_audio_latency.summary(),
            barge_in=self._tx.barge_in_latency.summary(),
        )

    async def close(self) -> None:
        """Stop sending, release the port, finish the recording (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # a closed session calls back nothing; dropping the callbacks (bound methods of the
        # call, which holds this session) frees the call without the cyclic GC
        self._on_audio, self._on_dtmf, self._on_timeout = _ignore, _ignore, _ignore
        self._engine.session_closed(self)
        if self._transport is not None:
            self._transport.close()
        if self._recorder is not None:
            self._recorder.close()
        self._wake_drain_waiters()

    # ------------------------------------------------------------------ outbound (ticker)

    def tick(self, now: float, frames: int, skipped: int) -> None:
        """Called by the ticker: send ``frames`` packets (Rule 1), then housekeeping."""
        if self._closed:
            return
        if skipped:
            self._tx.skip(skipped)
            self._counters.skipped_frames += skipped
        if frames > 1:
            self._counters.late_ticks += frames - 1
        for _ in range(frames):
            self._send_slot(now)
        released = self._rx.poll(now)
        if released:
            self._take(released)
        if self._drain_waiters and self._tx.idle:
            self._wake_drain_waiters()
        if (
            self._expect_rx
            and not self._timed_out
            and now - self._rx.last_rx > self._settings.inactivity_timeout_s
        ):
            self._timed_out = True
            log.info("%r: no RTP for %.0f s", self, now - self._rx.last_rx)
            try:
                self._on_timeout()
            except Exception:
                self._log.exception("on_timeout", now, "%r: on_timeout failed", self)

    def _send_slot(self, now: float) -> None:
        transport = self._transport
        if not self._sending or transport is None:
            self._tx.skip(1)
            return
        recorder = self._recorder
        packet = self._tx.next_packet(recorder is not None, now)
        try:
            transport.sendto(packet, self._rx.peer)
        except (OSError, ValueError) as error:  # e.g. an unroutable address from the SDP
            self._on_send_error(error)
        else:
            self._counters.packets_out += 1
        if recorder is not None and self._codec is not None:
            recorder.bot(self._tx.last_pcm, self._codec.pcm_rate_hz)

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_send_error(self, exc: Exception) -> None:
        self._counters.send_errors += 1
        self._log.warning("send", self._loop.time(), "%r: RTP socket error: %s", self, exc)

    # ------------------------------------------------------------------ inbound (socket)

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        if not self._closed and self._codec is not None:
            arrived = self._loop.time()
            if addr != self._rx.peer and self._rx.foreign(addr, arrived):
                return  # before the queue (receiver Rule 9)
            self._engine.enqueue(self, data, addr, arrived)

    def process(self, data: bytes, addr: Address, arrived: float) -> None:
        """Handle one datagram read from this session's socket at ``arrived`` (loop time).

        :meth:`MediaEngine.enqueue` queues datagrams and its drain calls this (Rule 1); the
        receiver's and the chain's results go to ``on_audio`` and ``on_dtmf``.
        """
        if not self._closed:
            produced = self._rx.receive(data, addr, self._loop.time(), arrived)
            if produced:
                self._take(produced)

    def _take(self, produced: tuple[Received, ...]) -> None:
        """Act on what the receiver produced: payloads down the chain, digits, restarts."""
        inbound = self._inbound
        assert inbound is not None
        for item in produced:
            if type(item) is bytes:
                self._audio(inbound, inbound.feed(item, want_pcm=self._recorder is not None))
            elif type(item) is Gap:
                self._audio(inbound, self._fill(inbound, item))
            elif type(item) is Digit:
                try:
                    self._on_dtmf(item.digit)
                except Exception:
                    self._log.exception("on_dtmf", self._loop.time(), "%r: on_dtmf failed", self)
            elif item is RESTART:
                inbound.restart()

    def _audio(self, inbound: InboundChain, frames: tuple[bytes, ...]) -> None:
        """Frames the chain produced go to ``on_audio``; its PCM to the recorder."""
        recorder = self._recorder
        if recorder is not None:
            if self._started:
                recorder.caller(inbound.last_pcm, inbound.codec.pcm_rate_hz)
            else:  # early media: nothing sent, no bot clock yet (recorder Rule 4)
                recorder.caller_alone(inbound.last_pcm, inbound.codec.pcm_rate_hz)
        for frame in frames:
            try:
                self._on_audio(frame)
            except Exception:
                self._log.exception("on_audio", self._loop.time(), "%r: on_audio failed", self)

    def _fill(self, inbound: InboundChain, gap: Gap) -> tuple[bytes, ...]:
        """Audio for a gap in the caller's stream (Rule 7), counted."""
        frame_units = inbound.codec.samples_per_frame
        counters = self._counters
        counters.concealed_frames += -(-gap.lost_units // frame_units)
        counters.silence_filled_ms += gap.silence_units * 1000 // inbound.codec.clock_rate_hz
        return inbound.fill(gap.lost_units, gap.silence_units)
