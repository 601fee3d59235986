"""One answered call: a SIP dialog, an RTP media session, a provider session and its tools.

:class:`Call` is the asyncio shell that joins them. Audio never passes through a task here:
caller frames go from the media session's callback straight into ``session.send_audio`` and
provider audio straight into ``media.play``; this module only orchestrates.

Rules:

* Rule 1: the first reason to end wins (:meth:`Call.end`): BYE from the caller, a hang-up tool,
  RTP inactivity, the maximum duration, a provider failure, shutdown. Ending is idempotent.
* Rule 2: a barge-in (``Interrupted``) flushes the pacer at once — the very next packet is
  silent — then tells the provider how much of each cut item the caller heard.
* Rule 3: a provider that cannot be reached or fails for good is never silence: the caller hears
  a short apology, then BYE.
* Rule 4: nothing a tool does blocks audio: tools run as tasks; their results go back to the
  provider when they finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sipbot import prompts
from sipbot.dialplan import Agent, DtmfAction, HangUp, Transfer
from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    AudioOut,
    CallInfo,
    Interrupted,
    ProviderEvent,
    ProviderFailed,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    ToolCallCancelled,
    Transcript,
    TurnComplete,
)
from sipbot.errors import (
    ProviderError,
    RequestFailed,
    SipbotError,
)
from sipbot.media.session import MediaEngine, MediaSession
from sipbot.media_leg import MediaLeg
from sipbot.providers.base import Provider, ProviderSession
from sipbot.sip.message import SipRequest
from sipbot.sip.sdp import SdpAnswerer
from sipbot.sip.ua import ServerCall
from sipbot.tools import ToolContext, ToolRunner
from sipbot.tools.runner import ToolResult

log = logging.getLogger(__name__)

PROVIDER_OPEN_TIMEOUT_S = 15.0
PENDING_AUDIO_FRAMES = 100  # 2 s of caller audio kept while the provider connects
APOLOGY_TIMEOUT_S = 10.0  # longest the apology may take to play out
HANGUP_QUIET_S = 2.0  # no agent audio this long after hang_up: it said goodbye before the tool
HANGUP_WAIT_S = 15.0  # longest hang_up waits for the agent to finish speaking
TRANSFER_NOTIFY_TIMEOUT_S = 10.0  # longest we wait for the REFER's final NOTIFY before BYE
CLOSE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What the server decided for a call before answering it.

    Attributes:
        info: the call as providers, prompts and tools see it.
        agent: the agent answering it.
        provider: the agent's provider (one per agent, shared by its calls).
        session_config: the provider session settings (prompt filled in for this call).
        dtmf: digits the call handles itself (route-level actions).
        recording_path: where to record the call, or None.
        apology: the apology prompt, PCM16 16 kHz.
        filler: the "one moment" prompt for slow tools, PCM16 16 kHz, or None.
    """

    info: CallInfo
    agent: Agent
    provider: Provider
    session_config: SessionConfig
    dtmf: Mapping[str, DtmfAction] = field(default_factory=dict)
    recording_path: str | None = None
    apology: bytes = b""
    filler: bytes | None = None


@dataclass(slots=True)
class CallRecord:
    """What happened on a call (logged as the CDR line when it ends)."""

    call_id: str
    caller: str
    did: str
    agent: str
    started: float = field(default_factory=time.time)
    ended: float | None = None
    reason: str = ""
    turns: int = 0
    tool_calls: int = 0
    interruptions: int = 0


class Call:
    """One call (implements :class:`~sipbot.tools.CallControl` for its tools).

    Args:
        dialog: the incoming call, not answered yet (:meth:`answer` answers it).
        plan: what the server decided for this call.
    """

    def __init__(self, dialog: ServerCall, plan: CallPlan) -> None:
        self.dialog = dialog
        self.plan = plan
        self.media: MediaSession | None = None
        self.transcript: list[Transcript] = []
        self.record = CallRecord(
            plan.info.call_id, plan.info.caller, plan.info.did, plan.agent.name
        )
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[str] = self._loop.create_future()
        self._session: ProviderSession | None = None
        self._pending: deque[bytes] = deque(maxlen=PENDING_AUDIO_FRAMES)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._muted = False  # after a transfer or an apology, agent audio is dropped
        self._outbound = PCM16_24K  # what media.play() takes now
        self._last_agent_audio = 0.0
        self._turn_done = asyncio.Event()
        self._notify_final: asyncio.Future[int] | None = None
        self.runner = ToolRunner(
            ToolContext(self, self.transcript),
            plan.agent.resolved_tools,
            timeout_s=plan.agent.tool_timeout_s,
            filler_after_ms=plan.agent.filler_after_ms if plan.filler else None,
            on_slow=self._on_slow_tool,
        )

    # ------------------------------------------------------------------ answering

    async def answer(self, engine: MediaEngine, sdp: SdpAnswerer, *, ring_s: float = 0.0) -> bool:
        """Open the media session, negotiate the offer and answer 200 OK (see :class:`MediaLeg`).

        Returns False when the call could not be answered (the INVITE was rejected) or was
        cancelled while ringing.
        """
        leg = MediaLeg(self.dialog, sdp, self.info.call_id)
        negotiated = await leg.open(
            engine,
            on_audio=self.on_audio,
            on_dtmf=self.on_dtmf,
            on_timeout=self.on_timeout,
            formats=(PCM16_16K, self._outbound),
            ring_s=ring_s,
        )
        if negotiated is None:
            return False
        self.media = leg.media
        # providers choose their audio format by codec (OpenAI takes G.711 as is)
        self.plan = replace(self.plan, info=replace(self.plan.info, codec=negotiated.codec.name))
        log.info(
            "call %s: answered by agent %s, %s",
            self.info.call_id,
            self.plan.agent.name,
            negotiated.codec.name,
        )
        return True

    @property
    def _media(self) -> MediaSession:
        assert self.media is not None, "the call is not answered"
        return self.media

    # ------------------------------------------------------------------ CallControl

    @property
    def info(self) -> CallInfo:
        """The call's caller, DID, headers and ids."""
        return self.plan.info

    async def hang_up(self) -> None:
        """End the call after the sentence now playing (see :meth:`_hang_up_after_speech`)."""
        log.info("call %s: hang-up requested by the agent", self.info.call_id)
        self._spawn(self._hang_up_after_speech(self._loop.time()))

    async def transfer(self, uri: str) -> None:
        """Blind transfer (RFC 3515 REFER); returns once the peer accepted the REFER.

        Raises:
            RequestFailed: the peer refused the REFER or did not answer.
        """
        self._notify_final = self._loop.create_future()
        me = str(self.dialog.invite.uri)
        response = await self.dialog.request(
            "REFER", headers=[("Refer-To", f"<{uri}>"), ("Referred-By", f"<{me}>")]
        )
        if response.status >= 300:
            raise RequestFailed(
                f"the transfer was refused ({response.status} {response.reason})", response
            )
        log.info("call %s: transfer to %s accepted (%d)", self.info.call_id, uri, response.status)
        self._muted = True
        self._media.flush()
        self._spawn(self._finish_transfer())

    async def send_dtmf(self, digits: str) -> None:
        """Send ``digits`` as RFC 4733 events."""
        self._media.send_dtmf(digits)

    # ------------------------------------------------------------------ lifecycle

    def end(self, reason: str) -> None:
        """Mark the call ended for ``reason`` (the first reason wins, Rule 1)."""
        if not self._ended.done():
            self._ended.set_result(reason)

    def hang_up_now(self, reason: str) -> None:
        """BYE at once (RTP timeout, max duration, shutdown) and end the call."""
        self._spawn(self._bye(reason))

    async def run(self) -> str:
        """Converse until the call ends; returns the reason. Cleans everything up."""
        self.dialog.terminated.add_done_callback(self._on_terminated)
        self.dialog.on_request = self._on_request
        limit = self._loop.call_later(
            self.plan.agent.max_duration_s, self.hang_up_now, "max-duration"
        )
        if self.plan.recording_path:
            try:
                self._media.start_recording(self.plan.recording_path)
            except (OSError, SipbotError) as exc:
                log.warning("call %s: cannot record: %s", self.info.call_id, exc)
        self._spawn(self._converse())
        try:
            reason = await self._ended
        finally:
            limit.cancel()
            await self._teardown()
        self.record.ended = time.time()
        self.record.reason = reason
        return reason

    # ------------------------------------------------------------------ media callbacks

    def on_audio(self, frame: bytes) -> None:
        """Caller audio from the media session (one frame, the provider's input format)."""
        session = self._session
        if session is not None:
            session.send_audio(frame)
        else:
            self._pending.append(frame)

    def on_dtmf(self, digit: str) -> None:
        """A caller keypress: a route-level action, or text for the model."""
        log.info("call %s: DTMF %s", self.info.call_id, digit)
        action = self.plan.dtmf.get(digit)
        if isinstance(action, Transfer):
            self._spawn(self._transfer_by_dtmf(action.uri))
        elif isinstance(action, HangUp):
            self.hang_up_now("dtmf-hangup")
        elif self._session is not None:
            self._spawn(self._session.send_text(f"The caller pressed the key {digit}."))

    def on_timeout(self) -> None:
        """No RTP from the caller for the inactivity timeout."""
        log.info("call %s: no RTP from the caller, hanging up", self.info.call_id)
        self.hang_up_now("rtp-timeout")

    # ------------------------------------------------------------------ the conversation

    async def _converse(self) -> None:
        try:
            session = await asyncio.wait_for(
                self.plan.provider.open(self.info, self.plan.session_config),
                PROVIDER_OPEN_TIMEOUT_S,
            )
        except (ProviderError, TimeoutError, OSError) as exc:
            log.warning(
                "call %s: provider %s unavailable: %s",
                self.info.call_id,
                self.plan.provider.name,
                exc or type(exc).__name__,
            )
            await self._apologise("provider-unavailable")
            return
        if self._ended.done():
            await _close_quietly(session)
            return
        self._start_session(session)
        try:
            async for event in session.events():
                if self._handle(session, event):
                    return
        except Exception:  # a provider bug must not leave the caller in silence
            log.exception("call %s: provider %s failed", self.info.call_id, self.plan.provider.name)
            await self._apologise("provider-error")
            return
        if not self._ended.done():
            log.warning("call %s: provider session ended unexpectedly", self.info.call_id)
            await self._apologise("provider-closed")

    def _start_session(self, session: ProviderSession) -> None:
        inbound, outbound = session.input_format, session.output_format
        if inbound != PCM16_16K:
            self._pending.clear()  # buffered in another format: better lost than garbled
        self._media.set_formats(inbound, outbound)
        self._outbound = outbound
        self._session = session
        while self._pending:
            session.send_audio(self._pending.popleft())

    def _handle(self, session: ProviderSession, event: ProviderEvent) -> bool:
        """Act on one provider event; True when the conversation is over."""
        if isinstance(event, AudioOut):
            if not self._muted:
                self._media.play(event.audio, event.item_id)
                self._last_agent_audio = self._loop.time()
                self._turn_done.clear()
        elif isinstance(event, Interrupted):
            self._barge_in(session)
        elif isinstance(event, ToolCall):
            self._start_tool(session, event)
        elif isinstance(event, ToolCallCancelled):
            self.runner.cancel(event.ids)
        elif isinstance(event, Transcript):
            if event.final:
                self.transcript.append(event)
                log.info("call %s: %s: %s", self.info.call_id, event.role, event.text)
        elif isinstance(event, TurnComplete):
            self.record.turns += 1
            self._turn_done.set()
        elif isinstance(event, ProviderNotice):
            log.info("call %s: provider: %s", self.info.call_id, event.message)
        elif isinstance(event, ProviderFailed):
            log.warning("call %s: provider failed: %s", self.info.call_id, event.message)
            self._spawn(self._apologise("provider-failed"))
            return True
        return False

    def _barge_in(self, session: ProviderSession) -> None:
        heard = self._media.flush()  # Rule 2: the next packet is silent
        self.record.interruptions += 1
        self.runner.cancel_all()
        log.debug("call %s: barge-in, heard %s", self.info.call_id, heard)
        for item_id, played_ms in heard.items():
            self._spawn(session.truncate(item_id, played_ms))

    def _start_tool(self, session: ProviderSession, call: ToolCall) -> None:
        self.record.tool_calls += 1
        log.info("call %s: tool %s(%s)", self.info.call_id, call.name, dict(call.arguments))
        task = self.runner.start(call)
        task.add_done_callback(lambda t: self._tool_done(session, t))

    def _tool_done(self, session: ProviderSession, task: asyncio.Task[ToolResult]) -> None:
        if task.cancelled() or self._ended.done():
            return
        result = task.result()
        if result.cancelled:
            return
        self._spawn(session.send_tool_result(result.call_id, result.name, result.output))

    def _on_slow_tool(self, call: ToolCall) -> None:
        if self.plan.filler and not self._muted and self._media.queued_ms() == 0:
            self._play_prompt(self.plan.filler, "filler")

    # ------------------------------------------------------------------ endings

    async def _apologise(self, reason: str) -> None:
        """Rule 3: the apology prompt, then BYE."""
        if self._ended.done():
            return
        self._muted = True
        self._media.flush()
        self._play_prompt(self.plan.apology, "apology")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._media.drained(), APOLOGY_TIMEOUT_S)
        await self._bye(reason)

    def _play_prompt(self, pcm16k: bytes, item_id: str) -> None:
        """Play a 16 kHz prompt in whatever format ``media.play`` takes now."""
        if pcm16k:
            self._media.play(prompts.render(pcm16k, 16_000, self._outbound), item_id)

    async def _hang_up_after_speech(self, requested: float) -> None:
        """BYE once the agent has finished speaking and its audio has played out.

        The agent has finished when a turn in which it spoke after the request is complete
        (the goodbye a model says once the tool result is in), or when it has been quiet for
        HANGUP_QUIET_S since the request and since its last audio (it said goodbye first).
        """
        deadline = requested + HANGUP_WAIT_S
        while self._loop.time() < deadline and not self._ended.done():
            spoke = self._last_agent_audio > requested
            quiet = self._loop.time() - max(self._last_agent_audio, requested) >= HANGUP_QUIET_S
            if ((spoke and self._turn_done.is_set()) or quiet) and self._media.queued_ms() == 0:
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._media.drained(), max(0.1, deadline - self._loop.time()))
        await self._bye("agent-hangup")

    async def _transfer_by_dtmf(self, uri: str) -> None:
        try:
            await self.transfer(uri)
        except SipbotError as exc:
            log.warning("call %s: DTMF transfer to %s failed: %s", self.info.call_id, uri, exc)

    async def _finish_transfer(self) -> None:
        """After an accepted REFER: wait (bounded) for the final NOTIFY, then BYE (RFC 5589)."""
        assert self._notify_final is not None
        with contextlib.suppress(TimeoutError):
            status = await asyncio.wait_for(self._notify_final, TRANSFER_NOTIFY_TIMEOUT_S)
            log.info("call %s: transfer target answered %d", self.info.call_id, status)
        await self._bye("transferred")

    def _on_request(self, request: SipRequest) -> int:
        """In-dialog requests other than BYE/re-INVITE: NOTIFY of a REFER, INFO."""
        if request.method == "NOTIFY" and self._notify_final is not None:
            status = _sipfrag_status(request.body)
            if status is not None and status >= 200 and not self._notify_final.done():
                self._notify_final.set_result(status)
            return 200
        if request.method == "INFO":
            return 200
        return 501

    async def _bye(self, reason: str) -> None:
        if self._ended.done():
            return
        self.end(reason)
        with contextlib.suppress(SipbotError):
            await self.dialog.bye()

    def _on_terminated(self, future: asyncio.Future[str]) -> None:
        reason = "cancelled" if future.cancelled() else future.result()
        self.end(reason)

    async def _teardown(self) -> None:
        session, self._session = self._session, None
        await self.runner.aclose()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if session is not None:
            await _close_quietly(session)
        if self.media is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.media.close(), CLOSE_TIMEOUT_S)
        if not self.dialog.terminated.done():
            with contextlib.suppress(SipbotError):
                await self.dialog.bye()

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: task failed", self.info.call_id, exc_info=task.exception())


async def _close_quietly(session: ProviderSession) -> None:
    try:
        await asyncio.wait_for(session.close(), CLOSE_TIMEOUT_S)
    except Exception as exc:
        log.debug("provider close failed: %r", exc)


def _sipfrag_status(body: bytes) -> int | None:
    """The status of a ``message/sipfrag`` NOTIFY body (``SIP/2.0 200 OK``)."""
    first = body.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(first) >= 2 and first[0].upper().startswith(b"SIP/") and first[1].isdigit():
        return int(first[1])
    return None
