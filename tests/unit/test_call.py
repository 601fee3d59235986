"""The call shell driven whole: recorder dialog, media and provider on a virtual-time loop.

No sockets, no sleeps: :class:`VirtualLoop` is an asyncio loop whose clock jumps to the next
timer whenever nothing is ready, so a 15 s hang-up bound takes microseconds. The media recorder
plays queued audio out in that virtual time (24 kHz PCM16: 48 bytes a millisecond).
"""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from sipbot import prompts
from sipbot.bargein import BargeInGuard
from sipbot.call import VOICEMAIL_NOTE, AgentSetup, AmdPlan, Call, CallPlan, amd_plan
from sipbot.conversation import (
    APOLOGY_TIMEOUT_S,
    GUARD_DUCK_DB,
    HANGUP_GRACE_S,
    HANGUP_QUIET_S,
    HANGUP_WAIT_S,
    TRANSFER_NOTIFY_TIMEOUT_S,
    AmdPolicy,
)
from sipbot.dialplan import Agent, AmdSettings, HangUp, Transfer
from sipbot.dialplan.agent import BargeIn
from sipbot.errors import ProviderConnectError, RequestFailed
from sipbot.media.formats import PCM16_16K, PCM16_24K, AudioFormat
from sipbot.media.latency import MediaLatency
from sipbot.media.session import MediaStats
from sipbot.providers.base import (
    AudioOut,
    CallInfo,
    Interrupted,
    ProviderEvent,
    ProviderFailed,
    SessionConfig,
    ToolCall,
    Transcript,
    TurnComplete,
)
from sipbot.sip.message import SipResponse
from sipbot.tools import ToolContext, tool
from sipbot.tools.builtin import TRANSFER_TOOL_TIMEOUT_S
from tests.unit.test_bargein import ToneModel, tone

T = TypeVar("T")
BYTES_PER_MS = 48  # PCM16 24 kHz
FILLER = b"\x01\x00" * 16 * 300  # 300 ms at 16 kHz
APOLOGY = b"\x02\x00" * 16 * 1000  # 1 s at 16 kHz


# --------------------------------------------------------------------------- virtual time


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for a timer moves the loop's clock to it instead."""

    loop: VirtualLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: nothing ready and no timer armed")
        self.loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main())
    finally:  # a failed test leaves its call running: end it before closing the loop
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.close()


async def until(check: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Let virtual time pass (in 10 ms steps) until ``check()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not check():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- recorders


class RecorderReferral:
    def __init__(self) -> None:
        self.response = SipResponse(202, "Accepted")
        self.outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def final(self) -> Awaitable[int]:
        return self.outcome


class RecorderDialog:
    def __init__(self, refer: RecorderReferral | Exception | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.terminated: asyncio.Future[str] = loop.create_future()
        self.confirmed: asyncio.Future[None] = loop.create_future()
        self.byes: list[float] = []
        self.refers: list[str] = []
        self._refer = refer

    async def bye(self) -> None:
        self.byes.append(asyncio.get_running_loop().time())
        if not self.terminated.done():
            self.terminated.set_result("bye-sent")

    async def refer(self, uri: str) -> RecorderReferral:
        self.refers.append(uri)
        if isinstance(self._refer, Exception):
            raise self._refer
        assert self._refer is not None
        return self._refer


class RecorderMedia:
    """A pacer in virtual time: audio plays out at real speed from when it was queued."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.segments: list[tuple[str, float, float]] = []  # item, start, end (loop time)
        self.flushes: list[float] = []
        self.dtmf: list[str] = []
        self.formats: tuple[AudioFormat, AudioFormat] | None = None
        self.closed = False
        self.ducks: list[float] = []

    def set_formats(self, inbound: AudioFormat, outbound: AudioFormat) -> None:
        self.formats = (inbound, outbound)

    @property
    def _busy_until(self) -> float:
        return max([end for _, _, end in self.segments] + [self.loop.time()])

    def play(self, audio: bytes, item_id: str) -> None:
        start = self._busy_until
        self.segments.append((item_id, start, start + len(audio) / BYTES_PER_MS / 1000))

    def flush(self) -> dict[str, int]:
        now = self.loop.time()
        self.flushes.append(now)
        cut = {item for item, _, end in self.segments if end > now}
        heard = {
            item: round(
                sum(min(now, e) - s for i, s, e in self.segments if i == item and s < now) * 1000
            )
            for item in cut
        }
        self.segments = [(i, s, min(e, now)) for i, s, e in self.segments if s < now]
        return heard

    def queued_ms(self) -> int:
        return round((self._busy_until - self.loop.time()) * 1000)

    def audio_queued(self) -> bool:
        return self.queued_ms() > 0

    def duck(self, gain_db: float) -> None:
        self.ducks.append(gain_db)

    async def drained(self) -> None:
        # the recorder's pacer plays out by the (virtual) clock: nothing else to wait on
        while not self.closed and self._busy_until > self.loop.time():  # noqa: ASYNC110
            await asyncio.sleep(self._busy_until - self.loop.time())

    def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    def start_recording(self, path: str) -> None:
        raise OSError("no recording in unit tests")

    @property
    def stats(self) -> MediaStats:
        return MediaStats()

    @property
    def latency(self) -> MediaLatency:
        return MediaLatency()

    async def close(self) -> None:
        self.closed = True

    def items(self) -> list[str]:
        return [item for item, _, _ in self.segments]


class RecorderSession:
    input_format = PCM16_16K
    output_format = PCM16_24K

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ProviderEvent | None] = asyncio.Queue()
        self.audio: list[bytes] = []
        self.sent: list[tuple[Any, ...]] = []
        self.closed = False

    def send_audio(self, audio: bytes) -> None:
        self.audio.append(audio)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        self.sent.append(("result", call_id, name, result))

    async def send_text(self, text: str) -> None:
        self.sent.append(("text", text))

    async def truncate(self, item_id: str, played_ms: int) -> None:
        self.sent.append(("truncate", item_id, played_ms))

    async def close(self) -> None:
        self.closed = True
        self.queue.put_nowait(None)

    def emit(self, *events: ProviderEvent) -> None:
        for event in events:
            self.queue.put_nowait(event)


class RecorderProvider:
    name = "recorder"

    def __init__(self, session: RecorderSession | None, error: Exception | None = None) -> None:
        self.session = session
        self.error = error
        self.opened: list[float] = []
        self.configs: list[SessionConfig] = []

    async def open(self, call: CallInfo, config: SessionConfig) -> RecorderSession:
        self.opened.append(asyncio.get_running_loop().time())
        self.configs.append(config)
        if self.error is not None:
            raise self.error
        assert self.session is not None
        return self.session


# --------------------------------------------------------------------------- tools


slow_gate: dict[str, asyncio.Future[str]] = {}


@tool
async def slow_lookup(what: str) -> str:
    """Look something up, slowly.

    Args:
        what: what to look up.
    """
    return await slow_gate[what]


class RecorderConsultLeg:
    def __init__(self) -> None:
        self.terminated: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.briefed: list[bytes] = []
        self.closed = False

    @property
    def replaces(self) -> str:
        return "c2;to-tag=t;from-tag=f"

    async def brief(self, pcm16k: bytes) -> None:
        self.briefed.append(pcm16k)
        await asyncio.sleep(len(pcm16k) / 32_000)

    async def close(self) -> None:
        self.closed = True
        if not self.terminated.done():
            self.terminated.set_result("bye-sent")


class RecorderConsulter:
    def __init__(self, answer: RecorderConsultLeg | Exception) -> None:
        self.answer = answer
        self.placed: list[str] = []

    async def place(self, uri: str) -> RecorderConsultLeg:
        self.placed.append(uri)
        await asyncio.sleep(2)  # it rings
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


HOLD = b"\x01\x00" * 16_000 * 2  # loops
BRIEFING = b"\x02\x00" * 16_000 * 3


@tool(timeout_s=TRANSFER_TOOL_TIMEOUT_S)  # it waits for the transfer's outcome
async def ask_transfer(uri: str, context: ToolContext) -> str:
    """Transfer the caller.

    Args:
        uri: where to.
    """
    return await context.control.transfer(uri, warm=uri.startswith("warm:"))


class Rig:
    """One call on recorders; :meth:`start` runs it in the background."""

    def __init__(
        self,
        *,
        provider_error: Exception | None = None,
        refer: RecorderReferral | Exception | None = None,
        filler: bytes | None = None,
        dtmf: dict[str, HangUp | Transfer] | None = None,
        log_transcripts: bool = False,
        log_sensitive: bool = False,
        barge_in: BargeIn | None = None,
        consulter: RecorderConsulter | None = None,
        amd: AmdPlan | None = None,
        handoff_to: Callable[[str], Awaitable[AgentSetup]] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = RecorderSession()
        self.provider = RecorderProvider(None if provider_error else self.session, provider_error)
        agent = Agent(
            "a",
            tools=[slow_lookup, ask_transfer, "hang_up", *(["handoff"] if handoff_to else [])],
            filler_after_ms=1500,
            max_duration_s=600.0,
            barge_in=barge_in or BargeIn(),
            handoff_allow=["b"] if handoff_to else [],
        )
        plan = CallPlan(
            CallInfo("call-1"),
            agent,
            self.provider,
            SessionConfig(),
            dtmf=dtmf or {},
            recording_path=None,
            apology=APOLOGY,
            filler=filler,
            log_transcripts=log_transcripts,
            log_sensitive=log_sensitive,
            consulter=consulter,
            hold=HOLD,
            briefing=BRIEFING,
            amd=amd,
            handoff_to=handoff_to,
        )
        self.dialog = RecorderDialog(refer)
        self.media = RecorderMedia()
        self.call = Call(self.dialog, plan)
        self.call.attach(self.media, "PCMU")
        self.task: asyncio.Task[str] = self.loop.create_task(self.call.run())

    async def confirm(self) -> None:
        self.dialog.confirmed.set_result(None)
        await until(lambda: self.call._session is not None)

    async def reason(self) -> str:
        return await asyncio.wait_for(self.task, 120)

    def results(self) -> list[tuple[Any, ...]]:
        return [s for s in self.session.sent if s[0] == "result"]


def speech(ms: int) -> bytes:
    return b"\x10\x00" * 24 * ms


# --------------------------------------------------------------------------- the tests


def test_no_model_session_before_the_ack_or_the_first_caller_audio() -> None:
    async def main() -> None:
        rig = Rig()
        await asyncio.sleep(30)  # an INVITE never ACKed...
        assert rig.provider.opened == []  # ...costs no model session
        rig.call.on_audio(b"a" * 640)  # the caller's first audio opens it, and is not lost
        rig.call.on_audio(b"b" * 640)
        await until(lambda: rig.call._session is not None)
        assert len(rig.provider.opened) == 1
        rig.call.on_audio(b"c" * 640)  # straight to the session from now on
        assert rig.session.audio == [b"a" * 640, b"b" * 640, b"c" * 640]
        assert rig.media.formats == (PCM16_16K, PCM16_24K)
        rig.dialog.confirmed.set_result(None)
        await asyncio.sleep(1)
        assert len(rig.provider.opened) == 1
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"
        assert rig.dialog.byes == []
        assert rig.session.closed
        assert rig.media.closed

    run(main)


def test_barge_in_flushes_cancels_tools_and_truncates_at_the_heard_ms() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.confirm()
        slow_gate["x"] = rig.loop.create_future()
        rig.session.emit(
            AudioOut(speech(1000), "item-1"),
            AudioOut(speech(500), "item-2"),
            ToolCall("t1", "slow_lookup", {"what": "x"}),
        )
        await asyncio.sleep(0.3)
        rig.session.emit(Interrupted("item-1"))
        await until(lambda: len(rig.session.sent) >= 2)
        flushed_at = rig.media.flushes[0]
        heard = round((flushed_at - rig.media.segments[0][1]) * 1000)
        assert 290 <= heard <= 320
        assert sorted(s for s in rig.session.sent if s[0] == "truncate") == [
            ("truncate", "item-1", heard),
            ("truncate", "item-2", 0),
        ]
        await until(lambda: rig.call.runner.running == ())
        assert slow_gate["x"].cancelled()
        await asyncio.sleep(1)
        assert rig.results() == []  # a cancelled tool's result is not sent
        assert [(t.name, t.error) for t in rig.call.record.tools] == [("slow_lookup", True)]
        rig.dialog.terminated.set_result("bye-received")
        await rig.reason()
        assert rig.call.record.interruptions == 1
        assert rig.call.record.tool_calls == 1

    run(main)


def test_hang_up_waits_for_the_goodbye_and_its_playout() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.confirm()
        rig.session.emit(ToolCall("h", "hang_up", {}))
        await until(lambda: bool(rig.results()))
        requested = rig.loop.time()
        rig.session.emit(AudioOut(speech(1200), "goodbye"), TurnComplete())
        assert await rig.reason() == "agent-hangup"
        goodbye_end = rig.media.segments[-1][2]
        assert len(rig.dialog.byes) == 1
        assert goodbye_end <= rig.dialog.byes[0] <= goodbye_end + 0.05
        assert rig.dialog.byes[0] < requested + HANGUP_QUIET_S  # the turn ended it, not quiet
        assert rig.call.record.reason == "agent-hangup"
        assert rig.call.record.turns == 1

    run(main)


def test_hang_up_is_bounded_when_the_agent_keeps_talking() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.confirm()
        rig.session.emit(ToolCall("h", "hang_up", {}))
        await until(lambda: bool(rig.results()))
        requested = rig.loop.time()
        for _ in range(40):  # 40 s of speech, one second at a time, never a complete turn
            rig.session.emit(AudioOut(speech(1000), "endless"))
            await asyncio.sleep(0.5)
            if rig.task.done():
                break
        assert await rig.reason() == "agent-hangup"
        waited = rig.dialog.byes[0] - requested
        assert HANGUP_WAIT_S <= waited <= HANGUP_WAIT_S + HANGUP_GRACE_S + 0.02

    run(main)


def test_an_unreachable_provider_plays_the_apology_then_hangs_up() -> None:
    async def main() -> None:
        rig = Rig(provider_error=ProviderConnectError("refused"))
        rig.dialog.confirmed.set_result(None)
        assert await rig.reason() == "provider-unavailable"
        assert rig.media.items() == ["apology"]
        _, start, end = rig.media.segments[0]
        assert abs((end - start) - 1.0) < 0.01  # the whole prompt, 1 s, in the output format
        assert end <= rig.dialog.byes[0] <= end + 0.05

    run(main)


def test_a_provider_failure_mid_call_mutes_apologises_then_hangs_up() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.confirm()
        rig.session.emit(AudioOut(speech(3000), "long"))
        await asyncio.sleep(0.5)
        rig.session.emit(ProviderFailed("gone for good"), AudioOut(speech(500), "after"))
        assert await rig.reason() == "provider-failed"
        assert rig.media.items() == ["long", "apology"]  # cut, apology, nothing after it
        assert rig.media.segments[0][2] - rig.media.segments[0][1] < 0.6
        assert rig.media.segments[1][2] <= rig.dialog.byes[0] < rig.media.segments[1][2] + 0.05
        assert rig.dialog.byes[0] - rig.media.segments[1][1] <= APOLOGY_TIMEOUT_S

    run(main)


def test_a_slow_tool_plays_the_filler_once_and_only_into_silence() -> None:
    async def main() -> None:
        rig = Rig(filler=FILLER)
        await rig.confirm()
        for what in ("quiet", "busy"):
            slow_gate[what] = rig.loop.create_future()
        rig.session.emit(ToolCall("t1", "slow_lookup", {"what": "quiet"}))
        await asyncio.sleep(5)
        assert rig.media.items() == ["filler"]  # once, after 1.5 s of silence
        slow_gate["quiet"].set_result("sunny")
        await until(lambda: bool(rig.results()))
        assert rig.results() == [("result", "t1", "slow_lookup", "sunny")]
        rig.session.emit(
            AudioOut(speech(4000), "talking"), ToolCall("t2", "slow_lookup", {"what": "busy"})
        )
        await asyncio.sleep(6)
        assert rig.media.items() == ["filler", "talking"]  # no filler over the agent
        slow_gate["busy"].set_result("rain")
        rig.dialog.terminated.set_result("bye-received")
        await rig.reason()
        assert [t.output for t in rig.call.record.tools] == ["sunny", "rain"]

    run(main)


def test_dtmf_route_actions_and_digits_for_the_model() -> None:
    async def main() -> None:
        rig = Rig(dtmf={"0": HangUp()})
        await rig.confirm()
        rig.call.on_dtmf("5")
        await until(lambda: bool(rig.session.sent))
        assert rig.session.sent == [("text", "The caller pressed the key 5.")]
        rig.call.on_dtmf("0")
        assert await rig.reason() == "dtmf-hangup"
        assert len(rig.dialog.byes) == 1

        referral = RecorderReferral()
        rig = Rig(dtmf={"9": Transfer("sip:desk@example.com")}, refer=referral)
        await rig.confirm()
        rig.call.on_dtmf("9")
        await until(lambda: bool(rig.dialog.refers))
        assert rig.dialog.refers == ["sip:desk@example.com"]
        referral.outcome.set_result(200)
        assert await rig.reason() == "transferred"

    run(main)


def test_an_accepted_transfer_byes_after_a_2xx_final_notify() -> None:
    async def main() -> None:
        referral = RecorderReferral()
        rig = Rig(refer=referral)
        await rig.confirm()
        rig.session.emit(
            AudioOut(speech(2000), "talk"),
            ToolCall("t", "ask_transfer", {"uri": "sip:desk@example.com"}),
        )
        await until(lambda: bool(rig.media.flushes))  # accepted: the agent stops at once
        rig.session.emit(AudioOut(speech(500), "muted"))
        await asyncio.sleep(3)
        assert rig.dialog.byes == []  # the target has not answered yet
        assert rig.results() == []  # the tool waits for the outcome
        referral.outcome.set_result(200)
        notified = rig.loop.time()
        assert await rig.reason() == "transferred"
        assert notified <= rig.dialog.byes[0] < notified + 0.05
        assert "muted" not in rig.media.items()

    run(main)


def test_a_busy_target_gives_the_caller_back_to_the_agent_with_the_outcome() -> None:
    async def main() -> None:
        referral = RecorderReferral()
        rig = Rig(refer=referral)
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "sip:desk@example.com"}))
        await until(lambda: bool(rig.media.flushes))
        rig.session.emit(AudioOut(speech(300), "muted"))
        await asyncio.sleep(1)
        referral.outcome.set_result(486)
        await until(lambda: bool(rig.results()))
        assert rig.results() == [("result", "t", "ask_transfer", "busy (486)")]
        rig.session.emit(AudioOut(speech(300), "sorry"))  # the agent says so
        await asyncio.sleep(1)
        assert rig.media.items() == ["sorry"]
        assert rig.dialog.byes == []
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_a_transfer_without_a_final_notify_is_bounded() -> None:
    async def main() -> None:
        rig = Rig(refer=RecorderReferral())
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "sip:desk@example.com"}))
        await until(lambda: bool(rig.media.flushes))
        accepted = rig.loop.time()
        await until(lambda: bool(rig.results()))
        waited = rig.loop.time() - accepted
        assert TRANSFER_NOTIFY_TIMEOUT_S - 0.02 <= waited <= TRANSFER_NOTIFY_TIMEOUT_S + 0.02
        outcome = f"no final NOTIFY within {TRANSFER_NOTIFY_TIMEOUT_S:g} s"
        assert rig.results() == [("result", "t", "ask_transfer", outcome)]
        assert rig.dialog.byes == []  # the caller is still with the agent
        rig.session.emit(AudioOut(speech(300), "sorry"))
        await until(lambda: rig.media.items() == ["sorry"])
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_a_refused_transfer_gives_the_tool_the_status_and_the_call_goes_on() -> None:
    async def main() -> None:
        decline = SipResponse(603, "Decline")
        refused = RequestFailed("the transfer was refused (603 Decline)", decline)
        rig = Rig(refer=refused)
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "sip:desk@example.com"}))
        await until(lambda: bool(rig.results()))
        assert rig.results() == [("result", "t", "ask_transfer", "refused (603)")]
        rig.session.emit(AudioOut(speech(300), "sorry"))
        await asyncio.sleep(1)
        assert rig.media.items() == ["sorry"]
        assert rig.dialog.byes == []
        assert not rig.call.record.tools[0].error
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_a_keypress_transfer_to_a_busy_target_is_told_to_the_model() -> None:
    async def main() -> None:
        referral = RecorderReferral()
        rig = Rig(dtmf={"9": Transfer("sip:desk@example.com")}, refer=referral)
        await rig.confirm()
        rig.call.on_dtmf("9")
        await until(lambda: bool(rig.media.flushes))
        referral.outcome.set_result(486)
        await until(lambda: bool(rig.session.sent))
        assert rig.session.sent == [
            (
                "text",
                "The caller pressed a key to be transferred to sip:desk@example.com, but the "
                "transfer did not happen: busy (486). The caller is still on the line with you; "
                "tell them.",
            )
        ]
        assert rig.dialog.byes == []
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_the_first_end_reason_wins_and_transcripts_are_recorded() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.confirm()
        rig.session.emit(Transcript("caller", "hel", final=False), Transcript("caller", "hello"))
        await until(lambda: bool(rig.call.transcript))
        rig.call.on_timeout()
        rig.call.hang_up_now("shutdown")
        assert await rig.reason() == "rtp-timeout"
        rig.call.hang_up_now("max-duration")
        assert rig.call.record.reason == "rtp-timeout"
        assert len(rig.dialog.byes) == 1
        assert [(line.role, line.text) for line in rig.call.record.lines] == [("caller", "hello")]

    run(main)


@pytest.mark.parametrize("log_transcripts", [False, True])
def test_transcripts_reach_the_info_log_only_when_asked(
    log_transcripts: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        rig = Rig(log_transcripts=log_transcripts)
        await rig.confirm()
        rig.session.emit(Transcript("caller", "my card is 4111"))
        await until(lambda: bool(rig.call.transcript))
        rig.call.hang_up_now("shutdown")
        await rig.reason()

    with caplog.at_level(logging.INFO, logger="sipbot.call"):
        run(main)
    said = [r for r in caplog.records if "my card is 4111" in r.getMessage()]
    assert len(said) == (1 if log_transcripts else 0)


# --------------------------------------------------------------------------- Rule 4 (guard)


def caller_tone(ms: int) -> list[bytes]:
    return [tone(20) for _ in range(ms // 20)]


def test_the_guard_ducks_restores_and_cuts_only_a_real_interruption() -> None:
    async def main() -> None:
        rig = Rig(barge_in=BargeIn("guard", 400))
        rig.call.guard = BargeInGuard(ToneModel(), min_speech_ms=400)
        await rig.confirm()
        rig.session.emit(AudioOut(speech(5000), "item-1"))
        await until(lambda: rig.media.queued_ms() > 0)
        for frame in caller_tone(200):  # "mm-hm": suspected, then a false alarm
            rig.call.on_audio(frame)
        assert rig.media.ducks == [GUARD_DUCK_DB]
        for _ in range(25):
            rig.call.on_audio(bytes(640))
        assert rig.media.ducks == [GUARD_DUCK_DB, 0.0]
        assert rig.media.flushes == []
        for frame in caller_tone(600):  # a real interruption
            rig.call.on_audio(frame)
        assert rig.media.ducks == [GUARD_DUCK_DB, 0.0, GUARD_DUCK_DB, 0.0]
        assert len(rig.media.flushes) == 1
        await until(lambda: any(s[0] == "truncate" for s in rig.session.sent))
        rig.session.emit(AudioOut(speech(100), "item-1"))  # the cut item's late audio
        await asyncio.sleep(0.5)
        assert rig.media.items() == ["item-1"]  # only what was played before the cut
        rig.dialog.terminated.set_result("bye-received")
        await rig.reason()
        assert rig.call.record.interruptions == 1
        assert rig.session.audio  # the caller's audio still went to the model


# --------------------------------------------------------------------------- answering machines

RATE_16K = 16_000
CALLEE_FRAME = 2 * RATE_16K // 50  # bytes of one 20 ms frame at 16 kHz


def callee(*parts: tuple[str, int]) -> list[bytes]:
    """Callee audio in 20 ms frames: ("talk", ms) speech-like noise, ("beep", ms) 1 kHz,
    ("quiet", ms) silence."""
    rng = np.random.default_rng(7)
    chunks = []
    for kind, ms in parts:
        n = RATE_16K * ms // 1000
        t = np.arange(n) / RATE_16K
        if kind == "talk":
            chunks.append(rng.standard_normal(n) * 3000 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)))
        elif kind == "beep":
            chunks.append(6000 * np.sin(2 * np.pi * 1000 * t))
        else:
            chunks.append(np.zeros(n))
    data = np.round(np.concatenate(chunks)).astype("<i2").tobytes()
    return [data[i : i + CALLEE_FRAME] for i in range(0, len(data), CALLEE_FRAME)]


async def play_callee(rig: Rig, frames: list[bytes]) -> None:
    """The callee's RTP: one frame every 20 ms of virtual time, until the call ends."""
    for frame in frames:
        if rig.task.done():
            return
        rig.call.on_audio(frame)
        await asyncio.sleep(0.02)


def machine_greeting() -> list[bytes]:
    return callee(("quiet", 300), ("talk", 3000), ("quiet", 400), ("beep", 500), ("quiet", 8000))


def test_a_machine_gets_the_agents_message_after_the_beep_then_bye() -> None:
    async def main() -> None:
        settings = AmdSettings(enabled=True, on_machine="message", message="Your bike is ready.")
        rig = Rig(amd=AmdPlan(settings, "Your bike is ready."))
        start = rig.loop.time()
        rig.dialog.confirmed.set_result(None)
        feeder = rig.loop.create_task(play_callee(rig, machine_greeting()))
        await until(lambda: bool(rig.provider.opened))
        opened_after = rig.provider.opened[0] - start
        # the beep ended 4.2 s into the callee's audio (0.3 + 3.0 + 0.4 + 0.5 s); frame k
        # arrives at k * 20 ms in this rig, so the first frame after it arrives at 4.2 s
        assert opened_after == pytest.approx(4.2, abs=0.005)
        config = rig.provider.configs[0]
        assert config.greeting == "Your bike is ready."  # the agent says the message
        assert config.instructions.startswith(VOICEMAIL_NOTE)
        rig.session.emit(AudioOut(speech(2000), "message"), TurnComplete())
        assert await rig.reason() == "amd-message"
        message_end = rig.media.segments[-1][2]
        assert message_end <= rig.dialog.byes[0] <= message_end + 0.05
        assert rig.session.audio == []  # the machine's audio never reached the model
        report = rig.call.record.amd
        assert report is not None
        assert (report["result"], report["cause"], report["action"]) == (
            "machine",
            "long-greeting",
            "message",
        )
        assert report["decision_ms"] == 300 + 2000
        assert 4180 <= int(str(report["beep_ms"])) <= 4220
        assert report["message_done"] is True
        await feeder

    run(main)


def test_a_warm_transfer_holds_the_caller_briefs_the_target_and_refers_with_replaces() -> None:
    async def main() -> None:
        referral = RecorderReferral()
        leg = RecorderConsultLeg()
        consulter = RecorderConsulter(leg)
        rig = Rig(refer=referral, consulter=consulter)
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "warm:sip:desk@example.com"}))
        await until(lambda: bool(rig.dialog.refers))
        # the caller heard hold audio (2 s, looped) while the target rang and was briefed
        # (2 s + 3 s)
        assert set(rig.media.items()) == {"hold"}
        assert sum(end - start for _, start, end in rig.media.segments) >= 4.9
        assert consulter.placed == ["warm:sip:desk@example.com"]
        assert leg.briefed == [BRIEFING]
        assert rig.dialog.refers == [
            "warm:sip:desk@example.com?Replaces=c2%3Bto-tag%3Dt%3Bfrom-tag%3Df"
        ]
        referral.outcome.set_result(200)
        leg.terminated.set_result("bye-received")  # the target replaced our call with the caller's
        assert await rig.reason() == "transferred"
        assert len(rig.dialog.byes) == 1

    run(main)


def test_a_warm_transfer_to_a_busy_target_gives_the_caller_back() -> None:
    async def main() -> None:
        busy = RequestFailed("486 Busy Here", SipResponse(486, "Busy Here"))
        rig = Rig(consulter=RecorderConsulter(busy))
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "warm:sip:desk@example.com"}))
        await until(lambda: bool(rig.results()))
        assert rig.results() == [("result", "t", "ask_transfer", "busy (486)")]
        assert rig.dialog.refers == []
        assert rig.media.flushes  # the hold audio stopped
        rig.session.emit(AudioOut(speech(300), "sorry"))
        await until(lambda: rig.media.items()[-1:] == ["sorry"])
        assert set(rig.media.items()) == {"hold", "sorry"}
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_a_human_gets_the_conversation_after_the_verdict() -> None:
    async def main() -> None:
        rig = Rig(amd=AmdPlan(AmdSettings(enabled=True)))
        rig.dialog.confirmed.set_result(None)
        frames = callee(("quiet", 400), ("talk", 600), ("quiet", 3000))
        feeder = rig.loop.create_task(play_callee(rig, frames))
        await until(lambda: rig.call._session is not None)
        # 0.4 + 0.6 + 0.8 s of pause = 1.8 s of audio: the frame that ends it arrives at 1.78 s
        assert rig.provider.opened[0] - 1000.0 == pytest.approx(1.78, abs=0.005)
        assert rig.provider.configs[0].greeting is None  # the agent's own session settings
        await feeder
        # the detector heard the "hello?"; the model hears the callee from its session on
        assert 0 < len(rig.session.audio) < len(frames)
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"
        assert rig.call.record.amd == {
            "result": "human",
            "cause": "silence-after-greeting",
            "decision_ms": 1800,
            "action": "talk",
        }

    run(main)


def test_a_failed_handover_hangs_up_the_consultation_call() -> None:
    async def main() -> None:
        referral = RecorderReferral()
        leg = RecorderConsultLeg()
        rig = Rig(refer=referral, consulter=RecorderConsulter(leg))
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "warm:sip:desk@example.com"}))
        await until(lambda: bool(rig.dialog.refers))
        referral.outcome.set_result(481)  # the caller's INVITE with Replaces failed
        await until(lambda: bool(rig.results()))
        assert rig.results() == [("result", "t", "ask_transfer", "failed (481)")]
        assert leg.closed
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_a_machine_is_hung_up_on_without_a_model_session() -> None:
    async def main() -> None:
        rig = Rig(amd=AmdPlan(AmdSettings(enabled=True, on_machine="hangup")))
        rig.dialog.confirmed.set_result(None)
        rig.loop.create_task(play_callee(rig, machine_greeting()))
        assert await rig.reason() == "amd-machine"
        assert rig.dialog.byes[0] - 1000.0 == pytest.approx(2.28, abs=0.005)  # greeting 2.0 s
        assert rig.provider.opened == []

    run(main)


def test_warm_transfers_need_a_consulter() -> None:
    async def main() -> None:
        rig = Rig()
        await rig.confirm()
        rig.session.emit(ToolCall("t", "ask_transfer", {"uri": "warm:sip:desk@example.com"}))
        await until(lambda: bool(rig.results()))
        outcome = "failed: warm transfers are not available on this call"
        assert rig.results() == [("result", "t", "ask_transfer", outcome)]
        rig.dialog.terminated.set_result("bye-received")
        assert await rig.reason() == "bye-received"

    run(main)


def test_a_fixed_message_plays_after_the_beep() -> None:
    async def main() -> None:
        recorded = b"\x03\x00" * 16 * 1500  # 1.5 s at 16 kHz
        settings = AmdSettings(enabled=True, on_machine="message", message_audio=__file__)
        rig = Rig(amd=AmdPlan(settings, None, recorded))
        rig.dialog.confirmed.set_result(None)
        rig.loop.create_task(play_callee(rig, machine_greeting()))
        assert await rig.reason() == "amd-message"
        assert rig.media.items() == ["message"]
        _, start, end = rig.media.segments[0]
        assert start - 1000.0 == pytest.approx(4.2, abs=0.005)
        assert abs((end - start) - 1.5) < 0.01
        assert end <= rig.dialog.byes[0] <= end + 0.05
        assert rig.provider.opened == []

    run(main)


def test_the_amd_plan_follows_the_agent_unless_the_dial_request_says_otherwise(
    tmp_path: Path,
) -> None:
    wav = tmp_path / "message.wav"
    prompts.write_wav(wav, b"\x05\x00" * 8000, 8000)  # 1 s at 8 kHz
    now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    info = CallInfo("c", did="alice", direction="outbound", variables={"name": "Alice"})
    off = Agent("a")
    assert amd_plan(off, info, now) is None
    forced = amd_plan(off, info, now, requested=True)
    assert forced is not None
    assert forced.policy == AmdPolicy("hangup", "talk", True, 5.0)
    spoken = Agent(
        "b", amd=AmdSettings(enabled=True, on_machine="message", message="Hi {var.name}")
    )
    plan = amd_plan(spoken, info, now)
    assert plan is not None
    assert plan.message_text == "Hi Alice"
    assert amd_plan(spoken, info, now, requested=False) is None
    fixed = Agent("c", amd=AmdSettings(enabled=True, on_machine="message", message_audio=str(wav)))
    plan = amd_plan(fixed, info, now)
    assert plan is not None
    assert plan.message_audio is not None
    assert len(plan.message_audio) == 2 * 16_000  # 1 s, as 16 kHz PCM16
    assert not plan.policy.spoken_message
