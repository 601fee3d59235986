"""The offline local provider: loopback and echo modes, barge-in, the base.py rules."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    AudioOut,
    CallInfo,
    Interrupted,
    ProviderEvent,
    SessionConfig,
    TurnComplete,
)
from sipbot.providers.local import LocalProvider, LocalSession

pytestmark = pytest.mark.timeout(30)
CALL = CallInfo(call_id="c1")
SILENCE = bytes(640)


def tone(ms: int, dbfs: float = -20.0) -> bytes:
    t = np.arange(16 * ms) / 16_000
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    return bytes(np.rint(amplitude * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes())


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + 640] for i in range(0, len(pcm), 640)]


async def collect(session: LocalSession, until: type, limit_s: float = 5.0) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    async with asyncio.timeout(limit_s):
        async for event in session.events():
            events.append(event)
            if isinstance(event, until):
                break
    return events


async def open_session(mode: str = "echo", **kwargs: float) -> LocalSession:
    provider = LocalProvider(mode, **kwargs)  # type: ignore[arg-type]
    assert provider.name == "local"
    return await provider.open(CALL, SessionConfig())


async def test_formats_and_unknown_mode() -> None:
    session = await open_session()
    assert (session.input_format, session.output_format) == (PCM16_16K, PCM16_24K)
    with pytest.raises(ValueError, match="unknown local provider mode 'parrot'"):
        LocalProvider("parrot")  # type: ignore[arg-type]
    await session.close()


async def test_loopback_returns_every_chunk_at_once_at_24k() -> None:
    session = await open_session("loopback")
    audio = tone(200)
    for frame in frames(audio):
        session.send_audio(frame)
    events: list[ProviderEvent] = []
    async with asyncio.timeout(2):
        async for event in session.events():
            events.append(event)
            if len(events) == 10:
                break
    assert all(isinstance(e, AudioOut) and len(e.audio) == 960 for e in events)
    assert len({e.item_id for e in events if isinstance(e, AudioOut)}) == 1
    await session.close()


async def test_echo_speaks_the_utterance_back_then_turn_complete() -> None:
    session = await open_session("echo", speed=50.0)
    for frame in frames(bytes(640 * 20) + tone(1000) + bytes(640 * 30)):
        session.send_audio(frame)
    events = await collect(session, TurnComplete)
    audio = [e for e in events if isinstance(e, AudioOut)]
    assert isinstance(events[-1], TurnComplete)
    item = events[-1].item_id
    assert item is not None
    assert item.startswith("echo-")
    assert {e.item_id for e in audio} == {item}
    assert {len(e.audio) for e in audio[:-1]} == {4800}  # 100 ms chunks
    # 300 ms pre-roll + 960 ms after the start + 500 ms hangover - 400 ms trimmed, plus padding
    reply = b"".join(e.audio for e in audio)
    assert len(reply) == 1360 * 48 + 192
    level = np.abs(np.frombuffer(reply, dtype="<i2").astype(float))
    loud = np.nonzero(level > 3000)[0]
    assert loud[0] / 24 == pytest.approx(300 - 40, abs=5)  # the speech starts after the pre-roll
    assert (loud[-1] - loud[0]) / 24 == pytest.approx(1000, abs=5)
    await session.close()


async def test_echo_is_interrupted_when_the_caller_talks_over_it() -> None:
    session = await open_session("echo", speed=1.0)  # real time: the reply takes a while
    for frame in frames(tone(1000) + bytes(640 * 30)):
        session.send_audio(frame)
    first = await collect(session, AudioOut)
    item = first[-1]
    assert isinstance(item, AudioOut)
    for frame in frames(tone(100)):  # barge-in
        session.send_audio(frame)
    events = await collect(session, Interrupted, limit_s=2.0)
    assert events[-1] == Interrupted(item.item_id)
    await asyncio.sleep(0.3)
    session.send_audio(SILENCE)  # no more chunks of the interrupted reply may follow
    await session.close()
    rest = [e async for e in session.events()]
    assert rest == []


async def test_silence_gets_no_reply() -> None:
    session = await open_session("echo", speed=50.0)
    for _ in range(100):
        session.send_audio(SILENCE)
    with pytest.raises(TimeoutError):
        await collect(session, AudioOut, limit_s=0.3)
    await session.close()


async def test_base_rules_send_audio_never_raises_close_is_idempotent() -> None:
    session = await open_session("loopback")
    session.send_audio(b"\x01")  # half a sample: tolerated
    session.send_audio(b"")
    await session.truncate("x", 120)
    assert session.truncated == {"x": 120}
    await session.send_text("DTMF digit 5")
    await session.send_tool_result("id", "name", {"ok": True})
    await session.close()
    await asyncio.wait_for(session.close(), 1.0)
    session.send_audio(tone(20))  # after close: dropped, no exception
    assert [e async for e in session.events()] == []
