"""ResilientSession Rule 4: a stall is resumed in place once; a second one, or a failed resume,
is a ProviderFailed at once (so the call can fail over).

The session under test is a minimal in-process subclass whose "connection" is a queue of
events the test feeds (no SDK, no socket); the bounds are a few hundred ms of real loop time.
"""

from __future__ import annotations

import asyncio

import pytest

from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    AudioOut,
    CallInfo,
    ProviderEvent,
    ProviderFailed,
    ProviderNotice,
    ProviderStalled,
    SessionConfig,
    Transcript,
    TurnComplete,
)
from sipbot.errors import ProviderConnectError
from sipbot.providers.resilience import ResilientSession

pytestmark = pytest.mark.timeout(30)
STALL_S = 0.2


class ScriptedSession(ResilientSession):
    """Each connection emits what the test puts in ``inbox``; a resume may be refused."""

    def __init__(self, refuse_resume: bool = False) -> None:
        config = SessionConfig(stall_timeout_s=STALL_S)
        super().__init__("fake", CallInfo("c1"), config, PCM16_16K, PCM16_24K, max_attempts=1)
        self.inbox: asyncio.Queue[ProviderEvent] = asyncio.Queue()
        self.connects: list[bool] = []  # stall_recovery of each connect after the first
        self.refuse_resume = refuse_resume

    async def connect(self, first: bool) -> str:
        if not first:
            self.connects.append(self.stall_recovery)
            if self.refuse_resume:
                raise ProviderConnectError("fake: refused")
        return "fresh"

    async def disconnect(self) -> None:
        pass

    async def send_batch(self, audio: bytes) -> None:
        pass

    async def receive(self) -> str:
        while True:
            self.emit(await self.inbox.get())

    def connection_lost(self) -> list[ProviderEvent]:
        return []

    async def send_tool_result(self, call_id: str, name: str, result: object) -> None:
        pass

    async def send_text(self, text: str) -> None:
        self.expect_output()

    async def truncate(self, item_id: str, played_ms: int) -> None:
        pass


async def next_of(session: ScriptedSession, *kinds: type) -> ProviderEvent:
    async with asyncio.timeout(5.0):
        async for event in session.events():
            if isinstance(event, kinds):
                return event
    raise AssertionError("the events ended")


async def test_a_stall_is_resumed_once_and_a_second_in_a_row_fails() -> None:
    session = ScriptedSession()
    await session.start()
    try:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await session.inbox.put(Transcript("caller", "hello?"))
        stalled = await next_of(session, ProviderStalled)
        assert loop.time() - asked >= STALL_S
        assert stalled == ProviderStalled(f"fake: no output for {STALL_S:g} s")
        notice = await next_of(session, ProviderNotice)
        assert notice == ProviderNotice("fake: resumed after a stall (fresh)")
        assert session.connects == [True]  # resumed in place, as a stall recovery
        # the answer is still owed on the resumed connection, and does not come either
        failed = await next_of(session, ProviderFailed, ProviderStalled)
        assert failed == ProviderFailed("fake: stalled twice")
    finally:
        await session.close()


async def test_a_completed_reply_ends_the_stall_streak() -> None:
    session = ScriptedSession()
    await session.start()
    try:
        await session.send_text("hello?")
        await next_of(session, ProviderStalled)
        await session.inbox.put(AudioOut(b"\x00\x00", "r1"))
        await session.inbox.put(TurnComplete("r1"))
        await next_of(session, TurnComplete)
        await session.send_text("and now?")
        assert await next_of(session, ProviderStalled, ProviderFailed) == ProviderStalled(
            f"fake: no output for {STALL_S:g} s"
        )
    finally:
        await session.close()


async def test_a_refused_resume_fails_at_once() -> None:
    session = ScriptedSession(refuse_resume=True)
    await session.start()
    try:
        await session.send_text("hello?")
        await next_of(session, ProviderStalled)
        failed = await next_of(session, ProviderFailed)
        assert failed == ProviderFailed("fake: stalled and cannot resume: fake: refused")
        assert session.connects == [True]  # one attempt, no backoff loop
    finally:
        await session.close()
