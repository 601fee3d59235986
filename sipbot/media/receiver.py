"""The inbound side of one call's RTP, sans-I/O: source latching, parsing, reordering, DTMF.

``receive(data, addr, now)`` takes every datagram that reaches the call's port and hands
in-order audio payloads to ``on_payload`` and digits to ``on_dtmf``. It also decides where our
own packets go (:attr:`RtpReceiver.peer`), because symmetric RTP answers to where the caller's
packets come from.

Rules:

* Rule 1 (latching): until the first *valid* packet (it parses, and carries the negotiated
  payload type or telephone-event) the peer is the address from the SDP. The source of that
  packet becomes the peer (the caller's NAT mapping). From then on packets from any other
  source are foreign and dropped, unless the peer has been silent for ``relatch_after_s``: then
  the next valid packet from elsewhere takes over (a NAT rebinding, a relay moving). So a
  stream injected beside a live one is ignored. :meth:`RtpReceiver.configure` with a new remote
  address (re-INVITE) starts learning again.
* Rule 2: comfort noise (PT 13) is dropped quietly; other payload types that were not
  negotiated are dropped and counted (a codec switch without a re-INVITE).
* Rule 3: a new SSRC calls ``on_restart`` before its first payload (decoder state is per stream).
  Telephone-events under an SSRC other than the audio's (SIPp's DTMF pcaps, some gateways) are a
  stream beside the audio, not a new one: they go straight to the digit decoder, bypassing the
  jitter buffer, and restart nothing.
* Rule 4: ``last_rx`` is the time of the last valid packet (the inactivity timer's input).
* Rule 5: :attr:`RtpReceiver.latency` gets, per audio payload handed on, the time since its
  packet arrived (:mod:`sipbot.media.latency`: 0 in sequence, the jitter wait otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipbot.errors import RtpParseError
from sipbot.media._ratelimit import RateLimitedLog
from sipbot.media.dtmf import DtmfReceiver
from sipbot.media.jitter import JitterBuffer
from sipbot.media.latency import LatencyHistogram
from sipbot.media.rtp import RtpPacket, parse_rtp

Address = tuple[Any, ...]
COMFORT_NOISE_PT = 13  # RFC 3389
RELATCH_AFTER_S = 1.0
# Arrival times by sequence number modulo this (a power of two larger than the jitter buffer's
# max_packets): no per-packet allocation, and a held packet's slot is never reused before it
# is released.
ARRIVAL_SLOTS = 64


@dataclass(slots=True)
class ReceiveStats:
    """Inbound counters (the jitter buffer's are in ``JitterBuffer.stats``)."""

    packets_in: int = 0
    bad_packets: int = 0  # not RTP
    foreign_packets: int = 0  # from a source other than the latched peer
    wrong_payload_type: int = 0
    comfort_noise: int = 0
    dtmf_in: int = 0
    relatches: int = 0
    ssrc_changes: int = 0


class RtpReceiver:
    """Inbound RTP of one call.

    Args:
        on_payload: an in-order audio payload (negotiated payload type).
        on_dtmf: a digit, once per telephone-event.
        on_restart: the inbound stream changed SSRC (reset decoder state).
        log: where problems are logged (rate-limited by the caller's limiter).
        name: how log lines name this call.
        jitter_max_s: longest wait for a missing packet.
        relatch_after_s: peer silence after which another source may take over.
    """

    def __init__(
        self,
        *,
        on_payload: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_restart: Callable[[], None],
        log: RateLimitedLog,
        name: str = "rtp",
        jitter_max_s: float = 0.06,
        relatch_after_s: float = RELATCH_AFTER_S,
    ) -> None:
        self._on_payload, self._on_dtmf, self._on_restart = on_payload, on_dtmf, on_restart
        self._log = log
        self.name = name
        self.relatch_after_s = relatch_after_s
        self.jitter = JitterBuffer(jitter_max_s)
        self.stats = ReceiveStats()
        self._dtmf = DtmfReceiver()
        self._payload_type = -1
        self._dtmf_pt: int | None = None
        self.remote: Address | None = None  # from the SDP
        self.peer: Address | None = None  # where we send; the only source accepted once latched
        self.latched = False
        self.last_rx = float("-inf")
        self._ssrc: int | None = None
        self.latency = LatencyHistogram()  # arrival → on_payload (Rule 5)
        self._arrivals = [0.0] * ARRIVAL_SLOTS

    def configure(self, payload_type: int, dtmf_payload_type: int | None, remote: Address) -> None:
        """Accept ``payload_type`` (+ telephone-event); a new ``remote`` restarts latching."""
        self._payload_type, self._dtmf_pt = payload_type, dtmf_payload_type
        if remote != self.remote:
            self.remote = remote
            self.peer, self.latched = remote, False

    def receive(self, data: bytes, addr: Address, now: float, arrived: float | None = None) -> None:
        """Handle one datagram from ``addr`` at ``now`` (read from the socket at ``arrived``,
        when it waited in a queue before this; the wait counts as latency, Rule 5)."""
        new_source = addr != self.peer
        if new_source and self.latched and now - self.last_rx < self.relatch_after_s:
            self.stats.foreign_packets += 1
            self._log.warning("foreign", now, "%s: RTP from foreign source %s ignored", self, addr)
            return
        try:
            packet = parse_rtp(data)
        except RtpParseError as error:
            self.stats.bad_packets += 1
            self._log.warning("bad", now, "%s: bad packet from %s: %s", self, addr, error)
            return
        payload_type = packet.payload_type
        if payload_type != self._payload_type and payload_type != self._dtmf_pt:
            if payload_type == COMFORT_NOISE_PT:
                self.stats.comfort_noise += 1
                return
            self.stats.wrong_payload_type += 1
            self._log.warning(
                "pt", now, "%s: payload type %d not negotiated, ignored", self, payload_type
            )
            return
        if new_source or not self.latched:
            self._latch(addr, now)
        self.stats.packets_in += 1
        self.last_rx = now
        if payload_type == self._dtmf_pt and self._ssrc not in (None, packet.ssrc):
            self._digit(packet)  # Rule 3: events beside the audio stream
            return
        self._arrivals[packet.sequence & (ARRIVAL_SLOTS - 1)] = now if arrived is None else arrived
        for released in self.jitter.push(packet, now):
            self._deliver(released, now)

    def poll(self, now: float) -> None:
        """Release packets whose gap has waited long enough (call once per frame)."""
        if self.jitter.next_deadline() is not None:
            for packet in self.jitter.poll(now):
                self._deliver(packet, now)

    def __str__(self) -> str:
        return self.name

    def _latch(self, addr: Address, now: float) -> None:
        if self.latched:
            self.stats.relatches += 1
            self._log.info("relatch", now, "%s: RTP source moved to %s", self, addr)
        elif addr != self.remote:
            self._log.info("latch", now, "%s: RTP from %s (SDP said %s)", self, addr, self.remote)
        self.peer, self.latched = addr, True

    def _deliver(self, packet: RtpPacket, now: float) -> None:
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.stats.ssrc_changes += 1
                self._log.info("ssrc", now, "%s: inbound SSRC changed", self)
                self._dtmf.reset()
                self._on_restart()
            self._ssrc = packet.ssrc
        if packet.payload_type == self._dtmf_pt:
            self._digit(packet)
            return
        self.latency.record(now - self._arrivals[packet.sequence & (ARRIVAL_SLOTS - 1)])
        self._on_payload(packet.payload)

    def _digit(self, packet: RtpPacket) -> None:
        digit = self._dtmf.receive(packet)
        if digit is not None:
            self.stats.dtmf_in += 1
            self._on_dtmf(digit)
