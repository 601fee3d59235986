"""The asyncio shell of the media path: one RTP socket per call, one shared ticker per process.

``MediaEngine`` (one per process) owns the port allocator and the :class:`~sipbot.media.ticker.
Ticker`; ``MediaSession`` (one per call) owns the socket and the sans-I/O cores::

    datagram → RtpReceiver (latch, parse, check, reorder, DTMF) → InboundChain → on_audio
    play(audio) → OutboundChain.convert → Pacer ─(tick, every 20 ms)→ DtmfSender | encode → RTP

Rules:

* Rule 1 (cadence): packets leave only from :meth:`MediaSession.tick`, exactly one per slot the
  ticker reports; nothing that arrives (garbage, floods, bursts, provider stalls) adds or removes
  a slot. Inbound work is done as it arrives and never waits for a tick.
* Rule 2 (symmetric RTP): we send to :attr:`RtpReceiver.peer`, the latched source of the
  caller's RTP; the latching policy is documented in :mod:`sipbot.media.receiver`.
* Rule 3 (direction): ``direction`` is OUR direction, as ``sip.sdp.Negotiated.direction`` gives
  it. We send while it is ``sendrecv``/``sendonly`` (and the address is not 0.0.0.0);
  otherwise slots pass silently (timestamps still advance, queued audio waits). The inactivity
  timeout runs only while it is ``sendrecv``: a peer that holds the call (our ``recvonly`` or
  ``inactive``) may well be silent.
* Rule 4 (bad input): each kind of problem is counted in :attr:`MediaSession.stats` and logged
  at most once per 10 s per call; callbacks that raise are logged the same way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

from sipbot.errors import MediaError
from sipbot.media._ratelimit import RateLimitedLog
from sipbot.media.chain import InboundChain, OutboundChain
from sipbot.media.codecs import CodecInfo, codec_info
from sipbot.media.dtmf import DtmfSender, check_digits, dtmf_tone
from sipbot.media.formats import PCM16_16K, PCM16_24K, AudioFormat
from sipbot.media.pacer import Pacer
from sipbot.media.ports import PortAllocator
from sipbot.media.receiver import Address, RtpReceiver
from sipbot.media.recorder import CallRecorder
from sipbot.media.rtp import OutboundStream
from sipbot.media.ticker import Ticker

log = logging.getLogger(__name__)

_PENDING_PLAY_MAX = 256  # chunks kept if play() comes before configure()


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


class MediaEngine:
    """One per process: the shared 20 ms ticker and the RTP port allocator."""

    def __init__(self, settings: MediaSettings) -> None:
        self.settings = settings
        self.ports = PortAllocator(settings.rtp_host, settings.port_min, settings.port_max)
        self._ticker: Ticker | None = None
        self._sessions: set[MediaSession] = set()

    @property
    def ticker(self) -> Ticker:
        """The shared ticker (made on first use, on the running loop)."""
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            self._ticker = Ticker(loop, groups=self.settings.phase_groups)
        return self._ticker

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

    def _forget(self, session: MediaSession) -> None:
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
        self._settings = engine.settings
        self._loop = asyncio.get_running_loop()
        self.local_port: int = sock.getsockname()[1]
        self._transport: asyncio.DatagramTransport | None = None
        self._on_audio, self._on_dtmf, self._on_timeout = on_audio, on_dtmf, on_timeout
        self._counters = MediaStats()
        self._log = RateLimitedLog(log)
        self._rx = RtpReceiver(
            on_payload=self._on_payload,
            on_dtmf=self._deliver_dtmf,
            on_restart=self._on_restart,
            log=self._log,
            name=f"rtp:{self.local_port}",
            jitter_max_s=self._settings.jitter_max_ms / 1000.0,
        )
        self._dtmf_tx = DtmfSender()
        self._inbound_format, self._outbound_format = PCM16_16K, PCM16_24K
        self._codec: CodecInfo | None = None
        self._payload_type = -1
        self._dtmf_pt: int | None = None
        self._sending = self._expect_rx = False
        self._inbound: InboundChain | None = None
        self._outbound: OutboundChain | None = None
        self._pacer: Pacer | None = None
        self._stream: OutboundStream | None = None
        self._pending_play: list[tuple[bytes, str]] = []
        self._recorder: CallRecorder | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._started = self._closed = self._timed_out = self._marker_next = False

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
    ) -> None:
        """Apply the negotiated SDP (again on a re-INVITE).

        ``remote`` is the SDP's connection address (an IP literal) and port; ``direction`` is
        OUR direction (Rule 3). We always send 20 ms packets: ``ptime_ms`` is the peer's
        preference, and inbound packets of any duration are accepted.

        Raises:
            CodecError: an unsupported codec.
        """
        del ptime_ms  # documented above: outbound is always 20 ms
        info = codec_info(codec)
        remote_addr = (remote[0], int(remote[1]))
        self._rx.configure(payload_type, dtmf_payload_type, remote_addr)
        self._payload_type, self._dtmf_pt = payload_type, dtmf_payload_type
        if dtmf_payload_type is None and self._dtmf_tx.active:
            self._dtmf_tx = DtmfSender()  # telephone-event was dropped: nothing can be sent
        null_address = remote_addr[0] in ("0.0.0.0", "::") or remote_addr[1] == 0
        self._sending = direction in ("sendrecv", "sendonly") and not null_address
        expect = direction == "sendrecv"
        if expect and not self._expect_rx:
            self._rx.last_rx = self._loop.time()
        self._expect_rx = expect
        if info is not self._codec:
            self._codec = info
            if self._stream is None:
                self._stream = OutboundStream(info.samples_per_frame)
            self._build_chains()

    def set_formats(self, inbound: AudioFormat, outbound: AudioFormat) -> None:
        """Set what ``on_audio`` delivers and what :meth:`play` takes (see the module docs).

        Raises:
            CodecError: a format the codec cannot be converted to or from.
        """
        self._inbound_format, self._outbound_format = inbound, outbound
        if self._codec is not None:
            self._build_chains()

    def _build_chains(self) -> None:
        codec = self._codec
        assert codec is not None
        self._inbound = InboundChain(codec, self._inbound_format, self._deliver_audio)
        outbound = OutboundChain(codec, self._outbound_format)
        old = self._pacer
        if old is not None and self._outbound is not None:
            if (outbound.frame_bytes, outbound.silence) == (old.frame_bytes, old.silence):
                self._outbound = outbound  # same pacer format: keep the queue
                return
            dropped = old.flush()
            log.info("%r: codec/format change dropped queued audio of %s", self, sorted(dropped))
        self._outbound = outbound
        settings = self._settings
        self._pacer = Pacer(
            outbound.frame_bytes,
            outbound.silence,
            outbound.bytes_per_ms,
            prebuffer_ms=settings.prebuffer_ms,
            max_hold_ms=settings.max_hold_ms,
        )
        if old is not None:
            self._pacer.inherit_accounting(old)
        pending, self._pending_play = self._pending_play, []
        for audio, item_id in pending:
            self.play(audio, item_id)

    def start(self) -> None:
        """Send one silence packet at once (for trunks that wait for media), then every 20 ms.

        Raises:
            MediaError: the session is not configured, or closed.
        """
        if self._closed or self._pacer is None:
            raise MediaError("configure() must be called before start(), and not after close()")
        if self._started:
            return
        self._started = True
        self._rx.last_rx = self._loop.time()
        self._marker_next = True
        if self._sending:
            self._send_slot()
        self._engine.ticker.add(self)

    def play(self, audio: bytes, item_id: str) -> None:
        """Queue provider audio (outbound format, any whole number of samples)."""
        if self._closed or not audio:
            return
        if self._outbound is None or self._pacer is None:
            if len(self._pending_play) < _PENDING_PLAY_MAX:
                self._pending_play.append((audio, item_id))
            return
        self._pacer.push(self._outbound.convert(audio), item_id)

    def flush(self) -> dict[str, int]:
        """Barge-in: drop queued audio so the next packet is silence.

        Returns:
            ``{item_id: ms played}`` for each item the caller may have heard only partly.
        """
        self._pending_play.clear()
        if self._pacer is None or self._outbound is None:
            return {}
        self._outbound.reset()
        return self._pacer.flush()

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` sent so far."""
        return 0 if self._pacer is None else self._pacer.played_ms(item_id)

    def queued_ms(self) -> int:
        """Milliseconds of audio waiting in the pacer."""
        return 0 if self._pacer is None else self._pacer.queued_ms

    async def drained(self) -> None:
        """Return once everything queued (audio and DTMF) has been sent, or the session closed."""
        if self._is_drained():
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _is_drained(self) -> bool:
        pacer = self._pacer
        return self._closed or (
            not self._pending_play
            and (pacer is None or pacer.queued_bytes == 0)
            and not self._dtmf_tx.active
        )

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """Send ``digits`` as RFC 4733 events, or as in-band tones if the peer offered none.

        Raises:
            ValueError: an invalid digit or duration.
            MediaError: the session is not configured.
        """
        digits = check_digits(digits)
        if self._codec is None or self._outbound is None:
            raise MediaError("configure() must be called before send_dtmf()")
        if self._dtmf_pt is not None:
            self._dtmf_tx.queue(digits, duration_ms)
            return
        assert self._pacer is not None
        tones = dtmf_tone(digits, self._codec.pcm_rate_hz, duration_ms)
        self._pacer.push(self._outbound.from_pcm(tones), "dtmf")

    def start_recording(self, path: str) -> None:
        """Record the call to a stereo WAV (caller left, bot right) until close.

        Raises:
            MediaError: the session is not configured.
            OSError: the file cannot be created.
        """
        if self._codec is None:
            raise MediaError("configure() must be called before start_recording()")
        if self._recorder is not None:
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
            relatches=rx.relatches,
        )

    async def close(self) -> None:
        """Stop sending, release the port, finish the recording (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._engine._forget(self)
        if self._transport is not None:
            self._transport.close()
        if self._recorder is not None:
            self._recorder.close()
        self._wake_drain_waiters()

    # ------------------------------------------------------------------ outbound (ticker)

    def tick(self, now: float, frames: int, skipped: int) -> None:
        """Called by the ticker: send ``frames`` packets (Rule 1), then housekeeping."""
        stream = self._stream
        if self._closed or stream is None:
            return
        if skipped:
            stream.skip(skipped)
            self._counters.skipped_frames += skipped
        if frames > 1:
            self._counters.late_ticks += frames - 1
        for _ in range(frames):
            self._send_slot()
        self._rx.poll(now)
        if self._drain_waiters and self._is_drained():
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

    def _send_slot(self) -> None:
        stream, pacer, outbound = self._stream, self._pacer, self._outbound
        assert stream is not None
        assert pacer is not None
        assert outbound is not None
        if not self._sending or self._transport is None:
            stream.skip(1)
            return
        if self._dtmf_tx.active and self._dtmf_pt is not None:
            event = self._dtmf_tx.next_packet(stream.timestamp)
            if event is not None:
                payload, timestamp, marker = event
                self._send(stream.event_packet(self._dtmf_pt, payload, timestamp, marker))
                self._counters.dtmf_out += marker
                return
        frame = pacer.pull()
        marker = pacer.talkspurt_start or self._marker_next
        self._marker_next = False
        self._send(stream.packet(self._payload_type, outbound.encode(frame), marker))
        if self._recorder is not None:
            self._recorder.bot(outbound.to_pcm(frame), outbound.pcm_rate_hz)

    def _send(self, packet: bytes) -> None:
        assert self._transport is not None
        try:
            self._transport.sendto(packet, self._rx.peer)
        except (OSError, ValueError) as error:  # e.g. an unroutable address from the SDP
            self._on_send_error(error)
            return
        self._counters.packets_out += 1

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
            self._rx.receive(data, addr, self._loop.time())

    def _on_payload(self, payload: bytes) -> None:
        inbound = self._inbound
        assert inbound is not None
        recorder = self._recorder
        inbound.feed(payload, want_pcm=recorder is not None)
        if recorder is not None:
            recorder.caller(inbound.last_pcm, inbound.codec.pcm_rate_hz)

    def _on_restart(self) -> None:
        if self._inbound is not None:
            self._inbound.restart()

    def _deliver_audio(self, frame: bytes) -> None:
        try:
            self._on_audio(frame)
        except Exception:
            self._log.exception("on_audio", self._loop.time(), "%r: on_audio failed", self)

    def _deliver_dtmf(self, digit: str) -> None:
        try:
            self._on_dtmf(digit)
        except Exception:
            self._log.exception("on_dtmf", self._loop.time(), "%r: on_dtmf failed", self)
