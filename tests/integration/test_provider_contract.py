"""The provider contract (``sipbot/providers/base.py``, Rules 1-4), checked for every provider.

``local`` runs as is; ``gemini`` and ``openai`` run their real SDKs against the project's
emulators on 127.0.0.1, in this event loop, through a TCP proxy that can freeze (a peer that
stops answering without closing). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from sipbot.domain import (
    AudioOut,
    CallInfo,
    ProviderEvent,
    ProviderFailed,
    SessionConfig,
    TurnComplete,
    TurnDetection,
)
from sipbot.emulators.audio import encode
from sipbot.emulators.common import EmulatorServer
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript
from sipbot.providers.base import Provider, ProviderSession
from sipbot.providers.gemini import GeminiProvider
from sipbot.providers.local import LocalProvider
from sipbot.providers.openai import OpenAIProvider
from sipbot.providers.resilience import CLOSE_TIMEOUT_S
from tests.integration.conftest import EventLog, FreezingProxy, silence, sine

pytestmark = pytest.mark.timeout(60)

KEY = "contract-key"
CALL = CallInfo(call_id="contract-1", caller="sip:alice@example.com", codec="G722")
CONFIG = SessionConfig(turn_detection=TurnDetection(silence_ms=200, prefix_ms=100))
SCRIPT = EmulatorScript(
    reply="tone", reply_ms=400, speed=0, playback_wait=False, vad_silence_ms=200
)
FRAMES = 500  # 10 s of 20 ms frames
SEND_BUDGET_S = 0.5  # for all of them: queuing only, never waiting on the network
EVENT_WAIT_S = 5.0
CLOSE_BOUND_S = CLOSE_TIMEOUT_S + 1.0  # "bounded": the adapters' own close timeout, and slack


class Proxy(FreezingProxy):
    """A FreezingProxy that also passes on the end of each stream (a clean close stays quick)."""

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        await super()._pump(source, sink)
        with contextlib.suppress(OSError):
            sink.write_eof()


@dataclass
class Subject:
    """A provider under test and how to make it misbehave.

    Attributes:
        name: local, gemini or openai.
        provider: opens sessions (through the freezable proxy, for the cloud ones).
        proxy: between provider and emulator (None for local).
        emulator: the emulated service (None for local).
        direct: makes a provider connecting to the emulator itself, giving up after that many
            failed reconnections (None for local: it has nothing to connect to).
    """

    name: str
    provider: Provider
    proxy: Proxy | None
    emulator: EmulatorServer | None
    direct: Callable[[int], Provider] | None = None

    async def open(self, provider: Provider | None = None) -> ProviderSession:
        return await (provider or self.provider).open(CALL, CONFIG)


def turn(session: ProviderSession) -> bytes:
    """A caller utterance in the session's input format: a tone, then enough silence."""
    fmt = session.input_format
    return encode(sine(440.0, 600, fmt.rate_hz) + silence(400, fmt.rate_hz), fmt)


def feed(session: ProviderSession, audio: bytes) -> float:
    """Hand ``audio`` over in 20 ms frames; returns the seconds it took."""
    frame = session.input_format.frame_bytes
    started = time.perf_counter()
    for offset in range(0, len(audio), frame):
        session.send_audio(audio[offset : offset + frame])
    return time.perf_counter() - started


def gemini(emulator: GeminiEmulator, port: int, attempts: int = 5) -> Provider:
    url = f"https://127.0.0.1:{port}"
    return GeminiProvider(
        KEY, base_url=url, ca_file=emulator.ca_file, max_attempts=attempts, connect_timeout_s=2.0
    )


def openai(port: int, attempts: int = 5) -> Provider:
    url = f"ws://127.0.0.1:{port}/v1"
    return OpenAIProvider(KEY, websocket_base_url=url, max_attempts=attempts, connect_timeout_s=2.0)


@contextlib.asynccontextmanager
async def make_subject(name: str) -> AsyncIterator[Subject]:
    if name == "local":
        yield Subject(name, LocalProvider("echo", speed=50.0), None, None)
        return
    emulator = GeminiEmulator(SCRIPT) if name == "gemini" else OpenAIEmulator(SCRIPT)
    async with emulator:
        proxy = Proxy(emulator.port)
        async with proxy:
            make: Callable[..., Provider] = openai
            if isinstance(emulator, GeminiEmulator):
                make = functools.partial(gemini, emulator)
            direct = functools.partial(make, emulator.port)
            yield Subject(name, make(proxy.port), proxy, emulator, direct)


@pytest.fixture(params=["local", "gemini", "openai"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with make_subject(request.param) as made:
        yield made


@pytest.fixture(params=["gemini", "openai"])
async def connected_subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    """A provider that connects to something it can lose (the local provider connects nowhere)."""
    async with make_subject(request.param) as made:
        yield made


async def wait_for(
    log: EventLog, predicate: Callable[[ProviderEvent], bool], after: int = 0
) -> ProviderEvent:
    return await log.wait_for(predicate, after=after, within_s=EVENT_WAIT_S)


async def bounded(awaitable: Awaitable[None]) -> float:
    """Await it; returns how long it took (fails past the bound)."""
    started = time.monotonic()
    await asyncio.wait_for(awaitable, CLOSE_BOUND_S)
    return time.monotonic() - started


# --------------------------------------------------------------------------- Rule 1


async def test_rule1_send_audio_never_blocks_nor_raises(subject: Subject) -> None:
    session = await subject.open()
    log = EventLog(session)
    utterance = turn(session)
    frame = session.input_format.frame_bytes
    audio = utterance * (FRAMES * frame // len(utterance))
    assert feed(session, audio) < SEND_BUDGET_S
    for odd in (b"", b"\x00\x00", bytes(3 * frame), bytes(frame + 2)):  # whole samples, any count
        session.send_audio(odd)
    await wait_for(log, lambda e: isinstance(e, TurnComplete))  # the audio was taken, not lost
    if subject.proxy is not None:
        subject.proxy.frozen.set()  # a peer taking nothing more: the queue waits, not the call
        assert feed(session, audio) < SEND_BUDGET_S
    await bounded(session.close())
    assert feed(session, audio) < SEND_BUDGET_S  # after close: dropped, silently
    await log.stop()


# --------------------------------------------------------------------------- Rule 2


async def test_rule2_events_end_when_the_session_is_closed(subject: Subject) -> None:
    session = await subject.open()
    log = EventLog(session)
    feed(session, turn(session))
    await wait_for(log, lambda e: isinstance(e, TurnComplete))
    assert not log.ended.is_set()
    await bounded(session.close())
    await asyncio.wait_for(log.ended.wait(), CLOSE_BOUND_S)
    assert log.of_type(ProviderFailed) == []  # closing is not a failure


async def test_rule2_a_lost_provider_fails_once_then_the_events_end(
    connected_subject: Subject,
) -> None:
    subject = connected_subject
    assert subject.direct is not None
    assert subject.emulator is not None
    session = await subject.open(subject.direct(2))
    log = EventLog(session)
    feed(session, turn(session))
    await wait_for(log, lambda e: isinstance(e, TurnComplete))
    await subject.emulator.stop()  # the connection drops and no reconnection can succeed
    await asyncio.wait_for(log.ended.wait(), EVENT_WAIT_S)
    failures = log.of_type(ProviderFailed)
    assert len(failures) == 1
    assert log.events[-1] is failures[0]
    feed(session, turn(session))  # Rule 1 still holds for a failed session
    await bounded(session.close())


# --------------------------------------------------------------------------- Rule 3


async def test_rule3_audio_carries_the_item_of_its_response(subject: Subject) -> None:
    session = await subject.open()
    log = EventLog(session)
    items = []
    for _ in range(2):
        start = len(log.events)
        feed(session, turn(session))
        done = await wait_for(log, lambda e: isinstance(e, TurnComplete), after=start)
        assert isinstance(done, TurnComplete)
        audio = [e for e in log.events[start:] if isinstance(e, AudioOut)]
        assert audio, "no reply audio"
        assert {e.item_id for e in audio} == {done.item_id}
        assert isinstance(done.item_id, str)
        assert done.item_id
        items.append(done.item_id)
    assert items[0] != items[1]
    await session.truncate(items[1], 100)  # what the call does after a barge-in
    if isinstance(subject.emulator, OpenAIEmulator):
        received = subject.emulator.sessions[0].received

        def truncated() -> list[object]:
            return [e for e in received if e.get("type") == "conversation.item.truncate"]

        async with asyncio.timeout(EVENT_WAIT_S):
            while not truncated():  # noqa: ASYNC110 - the emulator's record has no event
                await asyncio.sleep(0.01)
        assert truncated() == [
            {
                "type": "conversation.item.truncate",
                "item_id": items[1],
                "content_index": 0,
                "audio_end_ms": 100,
            }
        ]
    elif subject.name == "local":
        assert session.truncated == {items[1]: 100}  # type: ignore[attr-defined]
    await bounded(session.close())
    await log.stop()


# --------------------------------------------------------------------------- Rule 4


async def test_rule4_close_is_idempotent_and_bounded_even_if_the_peer_is_stuck(
    subject: Subject,
) -> None:
    session = await subject.open()
    log = EventLog(session)
    feed(session, turn(session))
    await wait_for(log, lambda e: isinstance(e, TurnComplete))
    if subject.proxy is not None:
        subject.proxy.frozen.set()
        feed(session, turn(session))  # sent into a connection that no longer answers
        await asyncio.sleep(0.1)
    first = await bounded(session.close())
    second = await bounded(session.close())
    assert first < CLOSE_BOUND_S
    assert second < 0.05
    await asyncio.wait_for(log.ended.wait(), 1.0)
