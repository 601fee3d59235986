"""The inbound side of one call's RTP, sans-I/O: source latching, parsing, reordering, DTMF.

``receive(data, addr, now)`` takes every datagram that reaches the call's port and returns
what it produced, in order: in-order audio payloads (``bytes``), :class:`Digit` events,
:class:`Gap` notes (Rule 8) and :data:`RESTART` markers (a tuple, usually of one payload;
``()`` when the datagram produced nothing). ``poll(now)`` returns what the jitter buffer
releases after a wait, the same way.
The receiver also decides where our own packets go (:attr:`RtpReceiver.peer`), because
symmetric RTP answers to where the caller's packets come from.

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
* Rule 3: a new SSRC puts :data:`RESTART` before its first payload (decoder state is per stream).
  Telephone-events under an SSRC other than the audio's (SIPp's DTMF pcaps, some gateways) are a
  stream beside the audio, not a new one: they go straight to the digit decoder, bypassing the
  jitter buffer, and restart nothing.
* Rule 4: ``last_rx`` is the time of the last valid packet (the inactivity timer's input).
* Rule 5: :attr:`RtpReceiver.latency` gets, per audio payload returned, the time since its
  packet arrived (:mod:`sipbot.media.latency`: 0 in sequence, the jitter wait otherwise).
* Rule 6 (hot path): a packet in sequence costs one 1-tuple (the payload bytes are the
  parser's); digits and the restart marker are shared constants; nothing is kept between calls.
* Rule 7 (SRTP): with :attr:`RtpReceiver.srtp` set (:mod:`sipbot.media.srtp`), every datagram
  that passes the foreign-source check is unprotected before it is parsed (telephone-events
  too); one that fails authentication or the replay check (a duplicate) is counted in
  ``srtp_failures`` and dropped, and latches nothing.
* Rule 8 (gaps, for :mod:`sipbot.media.plc`): within one SSRC, an audio payload that does not
  follow the previous one in time is preceded by a :class:`Gap`: the timestamp units of the
  lost packets (a sequence gap: the jitter buffer skipped them, or they came too late) to
  conceal, and the rest of the timestamp jump (the sender's silence suppression, a DTMF
  event: no sequence gap) to fill with silence, at most ``MAX_SILENCE_UNITS``. A jump backwards
  or beyond the jitter buffer's ``MAX_JUMP`` is a discontinuity: no gap. Timestamp units are
  payload bytes for PCMU, PCMA and G.722 alike (8 kHz clock; G.722 is 2 samples at 16 kHz per
  byte and per unit), so a packet's duration is its payload length.
* Rule 9 (foreign floods): :meth:`RtpReceiver.foreign` is the check of Rule 1 on its own; the
  media shell applies it as a datagram is read, before the bounded inbound queue, so packets
  from a foreign source cannot crowd the peer's out of the queue, make the peer look silent and
  so take the stream over (found by the fault suite: a flood at a call's port did exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sipbot.errors import RtpParseError, SrtpError
from sipbot.media.dtmf import EVENT_CODES, DtmfReceiver
from sipbot.media.jitter import MAX_JUMP, JitterBuffer
from sipbot.media.latency import LatencyHistogram
from sipbot.media.rtp import RtpPacket, parse_rtp, seq_distance
from sipbot.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from sipbot.media.srtp import SrtpContext

Address = tuple[Any, ...]
COMFORT_NOISE_PT = 13  # RFC 3389
RELATCH_AFTER_S = 1.0
# Arrival times by sequence number modulo this (a power of two larger than the jitter buffer's
# max_packets): no per-packet allocation, and a held packet's slot is never reused before it
# is released.
ARRIVAL_SLOTS = 64
MAX_SILENCE_UNITS = 16_000  # Rule 8: 2 s at the 8 kHz RTP clock


@dataclass(frozen=True, slots=True)
class Digit:
    """A digit the caller pressed: one per RFC 4733 event (:mod:`sipbot.media.dtmf`, Rule 1)."""

    digit: str


@dataclass(frozen=True, slots=True)
class StreamRestart:
    """The inbound stream changed SSRC: the payloads after it are a new stream (Rule 3)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Audio missing before the next payload (Rule 8), in RTP timestamp units.

    Attributes:
        lost_units: what lost packets carried: conceal it.
        silence_units: what the sender did not send (silence suppression): fill with silence.
        lost_packets: how many packets were lost.
    """

    lost_units: int
    silence_units: int
    lost_packets: int


RESTART: Final = StreamRestart()
Received = bytes | Digit | StreamRestart | Gap  # one thing a datagram produced (module doc)
NOTHING: Final[tuple[Received, ...]] = ()
_DIGITS: Final = {code: (Digit(code),) for code in EVENT_CODES}  # Rule 6: no allocation per digit


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
    srtp_failures: int = 0  # SRTP authentication or replay failures (Rule 7)


class RtpReceiver:
    """Inbound RTP of one call.

    Args:
        log: where problems are logged (rate-limited by the caller's limiter).
        name: how log lines name this call.
        jitter_max_s: longest wait for a missing packet.
        relatch_after_s: peer silence after which another source may take over.
    """

    def __init__(
        self,
        *,
        log: RateLimitedLog,
        name: str = "rtp",
        jitter_max_s: float = 0.06,
        relatch_after_s: float = RELATCH_AFTER_S,
    ) -> None:
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
        self.latency = LatencyHistogram()  # arrival → payload returned (Rule 5)
        self._arrivals = [0.0] * ARRIVAL_SLOTS
        self.srtp: SrtpContext | None = None  # Rule 7
        self._next_seq: int | None = None  # Rule 8: what follows the last payload returned
        self._next_ts = 0
        self._last_units = 0

    def configure(self, payload_type: int, dtmf_payload_type: int | None, remote: Address) -> None:
        """Accept ``payload_type`` (+ telephone-event); a new ``remote`` restarts latching."""
        self._payload_type, self._dtmf_pt = payload_type, dtmf_payload_type
        if remote != self.remote:
            self.remote = remote
            self.peer, self.latched = remote, False

    def receive(
        self, data: bytes, addr: Address, now: float, arrived: float | None = None
    ) -> tuple[Received, ...]:
        """Handle one datagram from ``addr`` at ``now`` (read from the socket at ``arrived``,
        when it waited in a queue before this; the wait counts as latency, Rule 5).

        Returns:
            What it produced, in order: audio payloads, :class:`Digit` events and
            :data:`RESTART` (before the first payload of a new SSRC); :data:`NOTHING` when the
            packet was dropped, held for reordering, or a DTMF continuation.
        """
        new_source = addr != self.peer
        if new_source and self.foreign(addr, now):
            return NOTHING
        srtp = self.srtp
        if srtp is not None:  # Rule 7
            try:
                data = srtp.unprotect(data)
            except SrtpError as error:
                self.stats.srtp_failures += 1
                self._log.warning("srtp", now, "%s: SRTP from %s dropped: %s", self, addr, error)
                return NOTHING
        try:
            packet = parse_rtp(data)
        except RtpParseError as error:
            self.stats.bad_packets += 1
            self._log.warning("bad", now, "%s: bad packet from %s: %s", self, addr, error)
            return NOTHING
        payload_type = packet.payload_type
        if payload_type != self._payload_type and payload_type != self._dtmf_pt:
            if payload_type == COMFORT_NOISE_PT:
                self.stats.comfort_noise += 1
                return NOTHING
            self.stats.wrong_payload_type += 1
            self._log.warning(
                "pt", now, "%s: payload type %d not negotiated, ignored", self, payload_type
            )
            return NOTHING
        if new_source or not self.latched:
            self._latch(addr, now)
        self.stats.packets_in += 1
        self.last_rx = now
        if payload_type == self._dtmf_pt and self._ssrc not in (None, packet.ssrc):
            return self._digit(packet)  # Rule 3: events beside the audio stream
        self._arrivals[packet.sequence & (ARRIVAL_SLOTS - 1)] = now if arrived is None else arrived
        released = self.jitter.push(packet, now)
        if len(released) == 1:  # Rule 6: the common case, one audio packet in sequence
            first = released[0]
            if (
                first.ssrc == self._ssrc
                and first.payload_type != self._dtmf_pt
                and first.sequence == self._next_seq
                and first.timestamp == self._next_ts
            ):
                payload = first.payload
                self._next_seq = (first.sequence + 1) & 0xFFFF
                self._next_ts = (first.timestamp + len(payload)) & 0xFFFFFFFF
                self._last_units = len(payload)
                self.latency.record(now - self._arrivals[first.sequence & (ARRIVAL_SLOTS - 1)])
                return (payload,)
        return self._deliver(released, now) if released else NOTHING

    def poll(self, now: float) -> tuple[Received, ...]:
        """Release packets whose gap has waited long enough (call once per frame).

        Returns:
            What that produced, as :meth:`receive` does.
        """
        if self.jitter.next_deadline() is None:
            return NOTHING
        released = self.jitter.poll(now)
        return self._deliver(released, now) if released else NOTHING

    def foreign(self, addr: Address, now: float) -> bool:
        """Whether a datagram from ``addr`` at ``now`` is foreign (Rule 1): counted, logged
        rate-limited, to be dropped. The shell asks this before it queues a datagram, so a
        flood from elsewhere never takes the place of the peer's packets (Rule 9)."""
        if addr == self.peer or not self.latched or now - self.last_rx >= self.relatch_after_s:
            return False
        self.stats.foreign_packets += 1
        self._log.warning("foreign", now, "%s: RTP from foreign source %s ignored", self, addr)
        return True

    def __str__(self) -> str:
        return self.name

    def _latch(self, addr: Address, now: float) -> None:
        if self.latched:
            self.stats.relatches += 1
            self._log.info("relatch", now, "%s: RTP source moved to %s", self, addr)
        elif addr != self.remote:
            self._log.info("latch", now, "%s: RTP from %s (SDP said %s)", self, addr, self.remote)
        self.peer, self.latched = addr, True

    def _deliver(self, released: list[RtpPacket], now: float) -> tuple[Received, ...]:
        produced: list[Received] = []
        for packet in released:
            if packet.ssrc != self._ssrc:
                if self._ssrc is not None:
                    self.stats.ssrc_changes += 1
                    self._log.info("ssrc", now, "%s: inbound SSRC changed", self)
                    self._dtmf.reset()
                    produced.append(RESTART)
                self._ssrc = packet.ssrc
                self._next_seq = None
            if packet.payload_type == self._dtmf_pt:
                if self._next_seq is not None:
                    self._next_seq = (packet.sequence + 1) & 0xFFFF
                produced.extend(self._digit(packet))
                continue
            gap = self._gap(packet)
            if gap is not None:
                produced.append(gap)
            self.latency.record(now - self._arrivals[packet.sequence & (ARRIVAL_SLOTS - 1)])
            produced.append(packet.payload)
        return tuple(produced)

    def _gap(self, packet: RtpPacket) -> Gap | None:
        """What is missing before ``packet`` (Rule 8); moves the expectation past it."""
        expected_seq, expected_ts, last_units = self._next_seq, self._next_ts, self._last_units
        units = len(packet.payload)
        self._next_seq = (packet.sequence + 1) & 0xFFFF
        self._next_ts = (packet.timestamp + units) & 0xFFFFFFFF
        self._last_units = units
        if expected_seq is None:
            return None
        lost = seq_distance(packet.sequence, expected_seq)
        jump = (packet.timestamp - expected_ts) & 0xFFFFFFFF
        if jump >= 0x80000000 or lost < 0 or lost > MAX_JUMP or (jump == 0 and lost == 0):
            return None
        lost_units = min(jump, lost * (last_units or units))
        silence_units = min(jump - lost_units, MAX_SILENCE_UNITS)
        if lost_units == 0 and silence_units == 0:
            return None
        return Gap(lost_units, silence_units, lost)

    def _digit(self, packet: RtpPacket) -> tuple[Received, ...]:
        digit = self._dtmf.receive(packet)
        if digit is None:
            return NOTHING
        self.stats.dtmf_in += 1
        return _DIGITS[digit]
