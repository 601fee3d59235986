"""MediaEngine/MediaSession on loopback UDP (uvloop) with an in-test RTP peer.

Real time, bounded: every wait has a timeout. Arrival times are taken in the test's own loop, so
the cadence figures include its scheduling noise; the bounds are loose enough for a shared
2-core machine and tight enough to catch a missing or doubled slot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
import wave
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import uvloop

from sipbot.domain import PCMU_8K
from sipbot.errors import MediaError, PortRangeExhausted
from sipbot.media.codecs import make_encoder
from sipbot.media.rtp import RtpPacket, parse_rtp
from sipbot.media.session import (
    DRAIN_MIN_BATCH,
    INBOX_MAX_AGE_S,
    SESSION_INBOX_MAX,
    MediaEngine,
    MediaSession,
    MediaSettings,
)

pytestmark = pytest.mark.timeout(60)
FRAME_24K = 960  # bytes of 20 ms PCM16 at 24 kHz


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro_fn(), 30))


def settings(**overrides: Any) -> MediaSettings:
    base = random.randrange(30_000, 60_000, 2)
    values: dict[str, Any] = {"port_min": base, "port_max": base + 200, "prebuffer_ms": 0}
    values.update(overrides)
    return MediaSettings(**values)


class Peer(asyncio.DatagramProtocol):
    """The far end: records what arrives, sends what the test says."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, RtpPacket]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.packets.append((asyncio.get_running_loop().time(), parse_rtp(data)))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))


async def open_peer() -> Peer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    return peer


async def wait_until(condition: Callable[[], bool], limit_s: float = 3.0) -> None:
    """Poll ``condition`` every 5 ms (packets arrive in callbacks, there is nothing to await)."""
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class Calls:
    """Callback recorder."""

    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.digits: list[str] = []
        self.timeouts = 0

    async def open(self, engine: MediaEngine) -> MediaSession:
        return await engine.open_session(
            on_audio=self.audio.append, on_dtmf=self.digits.append, on_timeout=self.timeout
        )

    def timeout(self) -> None:
        self.timeouts += 1


def configure(session: MediaSession, peer: Peer, codec: str = "PCMU", **kw: Any) -> None:
    pt = {"PCMU": 0, "PCMA": 8, "G722": 9}[codec]
    session.configure(
        codec=codec, payload_type=pt, dtmf_payload_type=101, remote=peer.address, **kw
    )


def gaps_ms(packets: list[tuple[float, RtpPacket]]) -> np.ndarray:
    times = np.array([t for t, _ in packets])
    return np.diff(times) * 1000.0


def rtp(seq: int, payload: bytes = b"\xff" * 160, pt: int = 0, ssrc: int = 77) -> bytes:
    return RtpPacket(pt, seq & 0xFFFF, seq * 160, ssrc, payload).serialize()


def loud_frame(ms: int = 20, rate: int = 24_000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return bytes(np.rint(12_000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


def is_silent_ulaw(payload: bytes) -> bool:
    return set(payload) <= {0xFF, 0x7F, 0xFE, 0x7E}


async def with_session(
    body: Callable[[MediaEngine, MediaSession, Peer, Calls], Awaitable[None]], **overrides: Any
) -> None:
    engine = MediaEngine(settings(**overrides))
    peer = await open_peer()
    calls = Calls()
    session = await calls.open(engine)
    try:
        await body(engine, session, peer, calls)
    finally:
        await engine.close()
        assert peer.transport is not None
        peer.transport.close()


# --------------------------------------------------------------------------- outbound


def test_early_silence_packet_then_steady_cadence() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        t0 = asyncio.get_running_loop().time()
        session.start()
        await wait_until(lambda: len(peer.packets) >= 1, 0.5)
        first_at, first = peer.packets[0]
        assert first_at - t0 < 0.01  # at once, before the first tick
        assert first.marker
        assert (first.payload_type, first.payload) == (0, b"\xff" * 160)
        await wait_until(lambda: len(peer.packets) >= 101)
        packets = peer.packets[1:101]  # skip the early packet (it precedes the grid)
        gaps = gaps_ms(packets)
        assert abs(gaps.mean() - 20.0) < 0.5
        assert np.percentile(gaps, 99) < 30.0
        seqs = [p.sequence for _, p in peer.packets[:101]]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(101)]
        stamps = [p.timestamp for _, p in peer.packets[:101]]
        assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
        assert len({p.ssrc for _, p in peer.packets}) == 1
        assert session.stats.packets_out >= 101

    run(lambda: with_session(body))


def test_play_paces_audio_and_drained_waits_for_it() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start()
        burst = loud_frame(200)  # 200 ms at once, like a provider
        session.play(burst[: len(burst) // 2], "item-1")
        session.play(burst[len(burst) // 2 :], "item-1")
        assert session.queued_ms() == 200
        await asyncio.wait_for(session.drained(), 1.0)
        assert session.played_ms("item-1") == 200
        assert session.queued_ms() == 0
        audio = [p for _, p in peer.packets if not is_silent_ulaw(p.payload)]
        assert len(audio) == 10
        assert audio[0].marker  # talkspurt start
        assert not any(p.marker for p in audio[1:])

    run(lambda: with_session(body))


def test_flush_makes_the_next_packet_silent() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start()
        session.play(loud_frame(2000), "long")
        await wait_until(lambda: sum(not is_silent_ulaw(p.payload) for _, p in peer.packets) >= 5)
        flushed_at = asyncio.get_running_loop().time()
        played = session.flush()
        count = len(peer.packets)
        await wait_until(lambda: len(peer.packets) >= count + 3)
        arrived_at, after = peer.packets[count]
        assert is_silent_ulaw(after.payload)
        assert arrived_at - flushed_at <= 0.025  # the very next slot
        assert 100 <= played["long"] <= 200
        assert played["long"] == session.played_ms("long")
        assert all(is_silent_ulaw(p.payload) for _, p in peer.packets[count:])

    run(lambda: with_session(body))


def test_g722_session_sends_g722_with_an_8khz_rtp_clock() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer, codec="G722")
        session.start()
        session.play(loud_frame(100), "g")
        await wait_until(lambda: len(peer.packets) >= 10)
        packets = [p for _, p in peer.packets[:10]]
        assert {p.payload_type for p in packets} == {9}
        assert {len(p.payload) for p in packets} == {160}
        assert (packets[5].timestamp - packets[4].timestamp) & 0xFFFFFFFF == 160

    run(lambda: with_session(body))


def test_hold_stops_sending_and_resume_keeps_the_clock() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start()
        await wait_until(lambda: len(peer.packets) >= 3)
        configure(session, peer, direction="recvonly")  # the peer holds the call (a=sendonly)
        await asyncio.sleep(0.03)
        held_count = len(peer.packets)
        await asyncio.sleep(0.2)
        assert len(peer.packets) == held_count
        configure(session, peer, direction="sendrecv")
        await wait_until(lambda: len(peer.packets) >= held_count + 2)
        before, after = peer.packets[held_count - 1][1], peer.packets[held_count][1]
        assert after.sequence == (before.sequence + 1) & 0xFFFF  # no sequence gap
        slots = ((after.timestamp - before.timestamp) & 0xFFFFFFFF) // 160
        assert 9 <= slots <= 16  # the timestamp kept running through the hold (~230 ms)

    run(lambda: with_session(body))


# --------------------------------------------------------------------------- inbound


def test_inbound_audio_reaches_on_audio_as_16k_frames() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start()
        encoder = make_encoder("PCMU")
        payload = encoder.encode(loud_frame(20, 8000))
        for seq in range(10):
            peer.send(rtp(seq, payload), session.local_port)
        await wait_until(lambda: len(calls.audio) == 10)
        assert {len(frame) for frame in calls.audio} == {640}
        assert session.stats.packets_in == 10

    run(lambda: with_session(body))


def test_passthrough_formats() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.set_formats(PCMU_8K, PCMU_8K)
        session.start()
        payload = bytes((i * 7) & 0xFF for i in range(160))
        peer.send(rtp(1, payload), session.local_port)
        session.play(b"\x11" * 160, "u")
        await wait_until(lambda: len(calls.audio) == 1)
        assert calls.audio == [payload]
        await wait_until(lambda: any(p.payload == b"\x11" * 160 for _, p in peer.packets))

    run(lambda: with_session(body))


def test_symmetric_rtp_answers_to_the_source() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        nat = await open_peer()
        try:
            configure(session, peer)  # the SDP names `peer`
            session.start()
            await wait_until(lambda: len(peer.packets) >= 2)
            nat.send(rtp(1), session.local_port)  # but the RTP comes from `nat`
            await wait_until(lambda: len(nat.packets) >= 3)
            count = len(peer.packets)
            await asyncio.sleep(0.1)
            assert len(peer.packets) <= count + 1  # at most one was already on its way
        finally:
            assert nat.transport is not None
            nat.transport.close()

    run(lambda: with_session(body))


def test_inactivity_timeout_fires_once_and_not_on_hold() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start()
        for seq in range(5):
            peer.send(rtp(seq), session.local_port)
            await asyncio.sleep(0.1)
        assert calls.timeouts == 0  # RTP keeps it alive
        await wait_until(lambda: calls.timeouts == 1, 1.0)
        await asyncio.sleep(0.4)
        assert calls.timeouts == 1

        held, sending = Calls(), Calls()
        listener, talker = await open_peer(), await open_peer()
        try:
            other = await held.open(engine)
            configure(other, listener, direction="recvonly")  # the peer holds us: a=sendonly
            other.start()
            third = await sending.open(engine)
            configure(third, talker, direction="sendonly")  # the peer only listens: a=recvonly
            third.start()
            await asyncio.sleep(0.6)
            assert (held.timeouts, sending.timeouts) == (0, 0)
            assert listener.packets == []  # we must not send while held
            assert len(talker.packets) > 20
        finally:
            for extra in (listener, talker):
                assert extra.transport is not None
                extra.transport.close()

    run(lambda: with_session(body, inactivity_timeout_s=0.25))


def test_bad_input_spray_never_disturbs_the_outbound_cadence() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        foreign = await open_peer()
        try:
            configure(session, peer)
            session.start()
            session.play(loud_frame(3000), "speech")
            rng = random.Random(7)
            seq = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5
            while loop.time() < end:
                peer.send(rtp(seq), session.local_port)
                seq += 1
                peer.send(
                    bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))),
                    session.local_port,
                )
                peer.send(rtp(seq, pt=18), session.local_port)  # a codec we did not negotiate
                foreign.send(rtp(seq, ssrc=999), session.local_port)
                if seq % 25 == 0:
                    for _ in range(50):  # a burst of 50 packets at once
                        peer.send(rtp(seq), session.local_port)
                        seq += 1
                if seq > 150:
                    peer.send(rtp(seq + 40_000, ssrc=4242), session.local_port)  # new SSRC
                await asyncio.sleep(0.02)
            stats = session.stats
            assert stats.bad_packets > 30
            assert stats.foreign_packets > 30
            assert stats.wrong_payload_type > 30
            assert stats.restarts >= 1
            packets = peer.packets[5:]
            gaps = gaps_ms(packets)
            assert abs(gaps.mean() - 20.0) < 1.0
            assert np.percentile(gaps, 99) < 30.0
            seqs = [p.sequence for _, p in packets]
            assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]  # no slot lost
            assert foreign.packets == []
            assert len(calls.audio) > 100
        finally:
            assert foreign.transport is not None
            foreign.transport.close()

    run(lambda: with_session(body))


# --------------------------------------------------------------------------- DTMF


def test_dtmf_both_ways() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start()
        session.send_dtmf("5#", duration_ms=60)
        await asyncio.wait_for(session.drained(), 2.0)
        events = [p for _, p in peer.packets if p.payload_type == 101]
        starts = [p for p in events if p.marker]
        assert [p.payload[0] for p in starts] == [5, 11]
        ends = [p for p in events if p.payload[1] & 0x80]
        assert len(ends) == 6
        assert session.stats.dtmf_out == 2

        def event(seq: int, ts: int, end: bool) -> bytes:
            payload = struct.pack("!BBH", 9, (0x80 if end else 0) | 10, 160)
            return RtpPacket(101, seq, ts, 5, payload, marker=not end).serialize()

        for seq, end in enumerate([False, False, True, True, True]):
            peer.send(event(seq, 4000, end), session.local_port)
        peer.send(event(5, 6000, False), session.local_port)
        await wait_until(lambda: len(calls.digits) == 2)
        await asyncio.sleep(0.05)
        assert calls.digits == ["9", "9"]

    run(lambda: with_session(body))


def test_inband_dtmf_when_the_peer_offered_no_telephone_event() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        session.configure(codec="PCMU", payload_type=0, dtmf_payload_type=None, remote=peer.address)
        session.start()
        session.send_dtmf("1", duration_ms=100)
        await asyncio.wait_for(session.drained(), 2.0)
        tones = [p for _, p in peer.packets if not is_silent_ulaw(p.payload)]
        assert len(tones) == 5
        assert {p.payload_type for _, p in peer.packets} == {0}

    run(lambda: with_session(body))


# --------------------------------------------------------------------------- misc


def test_recording(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"

    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        configure(session, peer)
        session.start_recording(str(path))
        session.start()
        payload = make_encoder("PCMU").encode(loud_frame(20, 8000))
        for seq in range(10):
            peer.send(rtp(seq, payload), session.local_port)
            await asyncio.sleep(0.02)
        session.play(loud_frame(100), "r")
        await asyncio.wait_for(session.drained(), 1.0)
        await session.close()

    run(lambda: with_session(body))
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.abs(frames[:, 0]).max() > 5000  # the caller, left
    assert np.abs(frames[:, 1]).max() > 5000  # the bot, right


def test_port_range_exhausted_and_ports_are_released() -> None:
    async def main() -> None:
        base = random.randrange(30_000, 60_000, 2)
        engine = MediaEngine(settings(port_min=base, port_max=base + 1))
        calls = Calls()
        try:
            first = await calls.open(engine)
            assert first.local_port == base
            with pytest.raises(PortRangeExhausted, match=f"no free RTP port in {base}-{base + 1}"):
                await calls.open(engine)
            await first.close()
            await first.close()  # idempotent
            await asyncio.sleep(0.01)  # the transport closes its socket on the next loop turn
            second = await calls.open(engine)
            assert second.local_port == base
        finally:
            await engine.close()
        assert engine.sessions == 0

    run(main)


def test_start_before_configure_is_an_error() -> None:
    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        with pytest.raises(MediaError, match="configure"):
            session.start()
        session.play(loud_frame(40), "early")  # kept until configured
        configure(session, peer)
        assert session.queued_ms() == 40

    run(lambda: with_session(body))


# --------------------------------------------------------------------------- the inbound drain


class _RecordingLoop:
    """A loop stand-in that records ``call_soon`` and reads a settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.soon: list[Callable[[], None]] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)


class _RecordingSession:
    def __init__(self, loop: _RecordingLoop) -> None:
        self.loop = loop
        self.processed: list[tuple[bytes, float]] = []
        self._queued = 0  # the engine's per-session count (Rule 8)

    def process(self, data: bytes, addr: tuple[str, int], arrived: float) -> None:
        self.processed.append((data, arrived))
        self.loop.now += 0.0005  # each datagram costs half a millisecond


class _Deadline:
    def __init__(self, at: float) -> None:
        self.at = at

    def next_deadline(self) -> float:
        return self.at


def test_the_drain_steps_aside_for_a_due_tick_and_resumes_in_order() -> None:
    loop = _RecordingLoop(now=10.0)
    engine = MediaEngine(MediaSettings(), loop=cast(Any, loop))
    session = _RecordingSession(loop)
    engine._ticker = cast(Any, _Deadline(10.020))  # the next tick is due in 20 ms
    for i in range(60):
        engine.enqueue(cast(Any, session), bytes([i]), ("127.0.0.1", 4000), 10.0)
    assert len(loop.soon) == 1  # one drain scheduled for the whole burst
    loop.soon.pop()()
    # 0.5 ms each: at 20 ms the tick is due; the drain stops at its next checkpoint (every 8,
    # after the first DRAIN_MIN_BATCH = 32)
    assert DRAIN_MIN_BATCH == 32
    assert [d for d, _ in session.processed] == [bytes([i]) for i in range(40)]
    assert len(loop.soon) == 1  # it resumes after the loop's timers (the tick) have run
    engine._ticker = cast(Any, _Deadline(10.040))
    loop.soon.pop()()
    assert [d for d, _ in session.processed] == [bytes([i]) for i in range(60)]
    assert all(arrived == 10.0 for _, arrived in session.processed)  # arrival times kept
    assert loop.soon == []
    assert not engine._draining


def test_a_full_session_queue_drops_the_newest_and_spares_other_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rule 8: a flood on one call's port fills only that call's share of the queue."""
    loop = _RecordingLoop(now=10.0)
    engine = MediaEngine(MediaSettings(), loop=cast(Any, loop))
    flooded, other = _RecordingSession(loop), _RecordingSession(loop)
    with caplog.at_level(logging.WARNING, logger="sipbot.media.session"):
        for i in range(SESSION_INBOX_MAX + 30):
            engine.enqueue(cast(Any, flooded), i.to_bytes(2, "big"), ("127.0.0.1", 4000), 10.0)
        engine.enqueue(cast(Any, other), b"other", ("127.0.0.1", 4002), 10.0)
    assert engine.inbox_dropped == 30
    assert [r.getMessage() for r in caplog.records] == [
        "RTP receive queue full: dropping datagrams (1 dropped in total)"
    ]
    loop.soon.pop()()
    assert [d for d, _ in flooded.processed] == [
        i.to_bytes(2, "big") for i in range(SESSION_INBOX_MAX)
    ]  # the oldest kept, in order
    assert other.processed == [(b"other", 10.0)]
    assert (flooded._queued, other._queued) == (0, 0)
    engine.enqueue(cast(Any, flooded), b"again", ("127.0.0.1", 4000), loop.now)
    assert engine.inbox_dropped == 30  # room again once drained


def test_the_engine_queue_is_bounded_across_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sipbot.media.session.INBOX_MAX", 5)
    loop = _RecordingLoop(now=10.0)
    engine = MediaEngine(MediaSettings(), loop=cast(Any, loop))
    sessions = [_RecordingSession(loop) for _ in range(8)]
    for session in sessions:
        engine.enqueue(cast(Any, session), b"x", ("127.0.0.1", 4000), 10.0)
    assert engine.inbox_dropped == 3
    loop.soon.pop()()
    assert [len(s.processed) for s in sessions] == [1, 1, 1, 1, 1, 0, 0, 0]


def test_datagrams_that_waited_too_long_are_dropped_unprocessed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rule 8: a starved process catches up by dropping what has waited past its slot."""
    loop = _RecordingLoop(now=10.0)
    engine = MediaEngine(MediaSettings(), loop=cast(Any, loop))
    session = _RecordingSession(loop)
    old = 10.0 - INBOX_MAX_AGE_S - 0.1
    with caplog.at_level(logging.WARNING, logger="sipbot.media.session"):
        for i in range(20):
            engine.enqueue(cast(Any, session), bytes([i]), ("127.0.0.1", 4000), old)
        engine.enqueue(cast(Any, session), b"fresh", ("127.0.0.1", 4000), 10.0)
        loop.soon.pop()()
    assert engine.inbox_stale == 20
    assert session.processed == [(b"fresh", 10.0)]
    assert session._queued == 0
    assert [r.getMessage() for r in caplog.records] == [
        "RTP receive queue 350 ms behind: dropping stale datagrams (1 dropped in total)"
    ]
    assert not engine._draining


def test_a_tick_due_at_every_turn_does_not_starve_the_drain() -> None:
    """Rule 1: on a busy loop a tick is already due whenever the drain starts (one every 5 ms
    with 4 groups); the drain still makes progress, a batch per turn, and empties the queue."""
    loop = _RecordingLoop(now=10.0)
    engine = MediaEngine(MediaSettings(), loop=cast(Any, loop))
    session = _RecordingSession(loop)
    engine._ticker = cast(Any, _Deadline(9.0))  # overdue, and stays so
    for i in range(100):
        engine.enqueue(cast(Any, session), bytes([i]), ("127.0.0.1", 4000), 10.0)
    turns = 0
    while loop.soon:
        loop.soon.pop()()
        turns += 1
    assert [d for d, _ in session.processed] == [bytes([i]) for i in range(100)]
    assert turns == 4  # 32 + 32 + 32 + 4


def test_a_foreign_flood_never_takes_the_peers_place_in_the_queue() -> None:
    """Receiver Rule 9: 200 foreign packets before each of the peer's (every 20 ms, 1.5 s): the peer
    stays latched, none of its packets is crowded out, the flood is never queued."""

    async def body(engine: MediaEngine, session: MediaSession, peer: Peer, calls: Calls) -> None:
        foreign = await open_peer()
        try:
            configure(session, peer)
            session.start()
            loop = asyncio.get_running_loop()
            peer.send(rtp(0), session.local_port)  # the peer latches first
            await wait_until(lambda: session.stats.packets_in == 1)
            end = loop.time() + 1.5
            seq = 1
            while loop.time() < end:
                for k in range(SESSION_INBOX_MAX + 100):  # more than the call's queue holds
                    foreign.send(rtp(k, ssrc=999), session.local_port)
                peer.send(rtp(seq), session.local_port)
                seq += 1
                await asyncio.sleep(0.02)
            await wait_until(lambda: session.stats.packets_in == seq)
            stats = session.stats
            assert stats.relatches == 0
            assert stats.foreign_packets > 150 * seq
            assert (engine.inbox_dropped, engine.inbox_stale) == (0, 0)
        finally:
            assert foreign.transport is not None
            foreign.transport.close()

    run(lambda: with_session(body))
