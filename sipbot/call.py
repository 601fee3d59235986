"""One answered call: a SIP dialog, an RTP media session, a provider session and its tools.

:class:`Call` is the asyncio shell around the call's rules,
:class:`~sipbot.conversation.Conversation` (see its Rules 1-8): it feeds the core what happened,
with ``loop.time()`` as ``now``, and executes the actions it returns. It depends on its dialog
and media only through the Protocols of :mod:`sipbot.call_ports`, so a test drives a whole call
with recorders.

Rules:

* Rule 1: caller audio never passes through the core or a task: frames go from the media
  session's callback straight into ``session.send_audio`` (buffered, PENDING_AUDIO_FRAMES at
  most, until the provider session is open).
* Rule 2: actions run in the order the core returned them; an action that needs I/O (BYE,
  REFER, a tool, a provider call) runs as a task and reports its outcome back to the core.
* Rule 3: every timer, task, tool, the provider session and the media are closed when the call
  ends, whatever ended it.
* Rule 4 (barge-in guard, agent ``barge_in.mode: guard``): caller frames also go to the
  :class:`~sipbot.bargein.BargeInGuard` while the agent is audible (audio queued in the pacer,
  or within AUDIBLE_HOLD_S of it), caller transcripts too; its verdicts go to the core
  (Conversation Rule 10). The Silero model loads in a thread when the call starts; until it is
  loaded nothing interrupts the agent.
* Rule 5: while answering-machine detection runs (Conversation Rule 11), callee frames go to the
  detector (:mod:`sipbot.media.amd`), not to the provider; what it finds goes to the core.
* Rule 6 (integrator hooks, :mod:`sipbot.hooks`): the call hands its events to the hooks and
  never waits for them, except a transcript line while a Python transcript hook runs: the line
  takes its place in the record at once as REDACTION_FAILED and gets its text (and its log line)
  when the hooks return — in a task, never on the media path. After BYE the record waits for
  redactions still running at most REDACTION_WAIT_S; one still running then stays redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, cast

from sipbot import prompts
from sipbot.bargein import CLEAR, CONFIRM, SUSPECT, BargeInGuard, GuardInput, Verdict
from sipbot.call_ports import CallDialog, CallMedia, Consulter, ConsultLeg
from sipbot.conversation import (
    HANDOFF,
    Action,
    AmdPolicy,
    Brief,
    CancelTools,
    Consult,
    Conversation,
    DetectMachine,
    Duck,
    End,
    EndConsult,
    Flush,
    Hangup,
    OpenProvider,
    Play,
    PlayPrompt,
    Prompt,
    Refer,
    SendText,
    SendToolResult,
    SetTimer,
    StartTool,
    StopDetecting,
    SwitchProvider,
    TransferDone,
    Truncate,
    WatchDrain,
)
from sipbot.dialplan import Agent, AmdSettings, DtmfAction
from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    CallInfo,
    Heard,
    ProviderEvent,
    ProviderFailed,
    ProviderNotice,
    ProviderStalled,
    SessionConfig,
    ToolCall,
    Transcript,
    TurnComplete,
)
from sipbot.errors import ConfigError, ProviderError, RequestFailed, SipbotError, ToolError
from sipbot.hook_events import (
    REDACTION_FAILED,
    SPEECH_END,
    SPEECH_START,
    TRANSCRIPT_TIMEOUT_MS,
    BargeIn,
    HookEvent,
    ProviderSwitch,
    SpeechEnd,
    SpeechStart,
    ToolCalled,
)
from sipbot.hook_events import ToolResult as ToolResultEvent
from sipbot.hook_events import TranscriptLine as TranscriptEvent
from sipbot.hooks import CallerSpeech, Hooks
from sipbot.media.amd import AmdVerdict, AnsweringMachineDetection, Beep
from sipbot.media.session import MediaEngine
from sipbot.media_leg import MediaLeg
from sipbot.providers.base import Provider, ProviderSession
from sipbot.providers.continuity import RESUME_NOTE, failover_seed, handoff_note
from sipbot.sensitive import argument_names, dtmf_line, log_values, tool_outcome
from sipbot.sip.sipfrag import replacing
from sipbot.tools import CallControl, ToolContext, ToolRunner
from sipbot.tools.runner import ToolResult

log = logging.getLogger(__name__)

PROVIDER_OPEN_TIMEOUT_S = 15.0
PENDING_AUDIO_FRAMES = 100  # 2 s of caller audio kept while the provider connects
CLOSE_TIMEOUT_S = 3.0
TOOL_LOG_OUTPUT_CHARS = 2_000  # a tool's output as the call record keeps it
AUDIBLE_HOLD_S = 0.3  # Rule 4: the agent counts as audible this long after its queue ran dry
HOLD_CHUNK_S = 3  # hold audio is queued this much at a time (Conversation Rule 9)
AMD_RATE_HZ = 16_000  # callee audio before the provider session sets formats
REDACTION_WAIT_S = TRANSCRIPT_TIMEOUT_MS / 1000  # Rule 6: the record waits this long at most
# put before the prompt of a session that only leaves a message on a machine (Conversation Rule 12)
VOICEMAIL_NOTE = (
    "An answering machine took this call and is recording now. Say only the message you are "
    "given, once, then stop talking.\n\n"
)


@dataclass(frozen=True, slots=True)
class AmdPlan:
    """Answering-machine detection for one call (Conversation Rules 11-12).

    Attributes:
        settings: the agent's ``amd:`` setting.
        message_text: the message the agent says to a machine (filled in), or None.
        message_audio: the fixed message prompt, PCM16 16 kHz, or None.
    """

    settings: AmdSettings
    message_text: str | None = None
    message_audio: bytes | None = None

    @property
    def policy(self) -> AmdPolicy:
        """What the conversation core needs of it."""
        s = self.settings
        return AmdPolicy(s.on_machine, s.on_unknown, self.message_audio is None, s.max_wait_s)


def amd_plan(
    agent: Agent, info: CallInfo, now: datetime, requested: bool | None = None
) -> AmdPlan | None:
    """The detection an outbound call gets: the agent's ``amd:``, unless the dial request says
    otherwise (``requested``); None → no detection.

    Raises:
        MediaError: the message WAV file cannot be read.
    """
    settings = agent.amd
    if not (settings.enabled if requested is None else requested):
        return None
    audio = None
    if settings.message_audio is not None:
        audio = prompts.load_wav(settings.message_audio, AMD_RATE_HZ)
    return AmdPlan(settings, agent.amd_message(info, now), audio)


SWITCH_DRAIN_TIMEOUT_S = 3.0  # longest a provider switch waits for the filler to play out


@dataclass(frozen=True, slots=True)
class AgentSetup:
    """An agent ready to take a call over (a handoff): its provider and session settings, and
    its fallback's."""

    agent: Agent
    provider: Provider
    session_config: SessionConfig
    fallback: Provider | None = None
    fallback_config: SessionConfig | None = None


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
        log_transcripts: log what each side says at INFO (else DEBUG: transcripts stay in the
            call record, out of the log).
        log_sensitive: log DTMF digits and tool argument/result values at DEBUG
            (``server.log_sensitive``; else never: :mod:`sipbot.sensitive`).
        consulter: places a warm transfer's consultation call; None → no warm transfers.
        hold: what the caller hears during a warm transfer, PCM16 16 kHz.
        briefing: what the target hears before a warm transfer joins them, PCM16 16 kHz.
        amd: answering-machine detection (outbound calls), or None.
        fallback: the provider the call switches to when its own is lost (Conversation Rule 14).
        fallback_config: the fallback's session settings (its history is filled at the switch).
        handoff_to: an agent's name → that agent set up for this call, awaited (for the
            ``handoff`` tool; the server adds the caller's memory there); None → no handoffs.
        hooks: the integrator hooks that get this call's events (Rule 6), or None.
    """

    info: CallInfo
    agent: Agent
    provider: Provider
    session_config: SessionConfig
    dtmf: Mapping[str, DtmfAction] = field(default_factory=dict)
    recording_path: str | None = None
    apology: bytes = b""
    filler: bytes | None = None
    log_transcripts: bool = False
    log_sensitive: bool = False
    consulter: Consulter | None = None
    hold: bytes = b""
    briefing: bytes = b""
    amd: AmdPlan | None = None
    fallback: Provider | None = None
    fallback_config: SessionConfig | None = None
    handoff_to: Callable[[str], Awaitable[AgentSetup]] | None = None
    hooks: Hooks | None = None


@dataclass(frozen=True, slots=True)
class ToolLogEntry:
    """One tool call as the call record keeps it (times are wall clock, ``time.time()``)."""

    name: str
    arguments: Mapping[str, Any]
    output: str  # its JSON text, cut to TOOL_LOG_OUTPUT_CHARS
    started: float
    ended: float
    error: bool


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One final transcript line (``at`` is wall clock, ``time.time()``)."""

    at: float
    role: Literal["caller", "agent"]
    text: str


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
    tools: list[ToolLogEntry] = field(default_factory=list)
    lines: list[TranscriptLine] = field(default_factory=list)
    amd: dict[str, object] | None = None  # the detection's result and timings
    stalls: int = 0
    recovery_ms: int = 0  # from each stall or provider switch to the next agent audio
    switched_to: str | None = None  # the fallback provider the call switched to


class Call:
    """One call (implements :class:`~sipbot.tools.CallControl` for its tools).

    Args:
        dialog: the incoming call, not answered yet (:meth:`answer` answers it).
        plan: what the server decided for this call.
    """

    def __init__(self, dialog: CallDialog, plan: CallPlan) -> None:
        self.dialog = dialog
        self.plan = plan
        self.media: CallMedia | None = None
        self.transcript: list[Transcript] = []
        self.record = CallRecord(
            plan.info.call_id, plan.info.caller, plan.info.did, plan.agent.name
        )
        filler_ms = plan.agent.filler_after_ms if plan.filler else None
        self.core = Conversation(
            dtmf=plan.dtmf,
            max_duration_s=plan.agent.max_duration_s,
            filler_after_s=None if filler_ms is None else filler_ms / 1000,
            transfer_timeout_s=plan.agent.transfer_timeout_s,
            amd=None if plan.amd is None else plan.amd.policy,
            fallbacks=1 if plan.fallback is not None else 0,
        )
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[str] = self._loop.create_future()
        self._session: ProviderSession | None = None
        self._pending: deque[bytes] = deque(maxlen=PENDING_AUDIO_FRAMES)
        self._heard_caller = False
        self._amd: AnsweringMachineDetection | None = None  # detecting (Rule 5)
        self._mute_callee = False  # leaving a message: the model must not hear the machine
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._outbound = PCM16_24K  # what media.play() takes now
        self._transfers: dict[str, asyncio.Future[str]] = {}  # tool transfers, by request id
        self._dtmf_count = 0  # the caller's keypresses, counted in the log (sipbot.sensitive)
        self._consult: ConsultLeg | None = None  # a warm transfer's call to the target
        self._hold_pos = 0  # where the hold audio goes on (bytes into plan.hold)
        self._heard: dict[int, str] = {}  # record line index -> what the caller heard of it
        self._handoff: tuple[AgentSetup, str] | None = None
        self.runner = ToolRunner(
            self._tool_context(),
            plan.agent.resolved_tools,
            timeout_s=plan.agent.tool_timeout_s,
        )
        self.guard: BargeInGuard | None = None  # Rule 4, once its model is loaded
        self._guard_in = GuardInput(PCM16_16K)
        self._guard_out = GuardInput(self._outbound)
        self._audible_at = float("-inf")
        hooks = plan.hooks
        self._hooks = hooks if hooks is not None and hooks.hooks else None  # Rule 6
        self._redactions: set[asyncio.Task[None]] = set()
        self._agent_speaking = False
        self._speech_hooks = self._hooks is not None and self._hooks.wants(SPEECH_START, SPEECH_END)
        self._caller_speech: CallerSpeech | None = None

    # ------------------------------------------------------------------ answering

    async def answer(self, leg: MediaLeg, engine: MediaEngine, *, ring_s: float = 0.0) -> bool:
        """Open the media session, negotiate the offer and answer 200 OK (see :class:`MediaLeg`).

        Returns False when the call could not be answered (the INVITE was rejected) or was
        cancelled while ringing.
        """
        negotiated = await leg.open(
            engine,
            on_audio=self.on_audio,
            on_dtmf=self.on_dtmf,
            on_timeout=self.on_timeout,
            formats=(PCM16_16K, self._outbound),
            ring_s=ring_s,
        )
        if negotiated is None or leg.media is None:
            return False
        self.attach(leg.media, negotiated.codec.name)
        log.info(
            "call %s: answered by agent %s, %s",
            self.info.call_id,
            self.plan.agent.name,
            negotiated.codec.name,
        )
        return True

    def attach(self, media: CallMedia, codec: str) -> None:
        """Use ``media`` (configured, delivering PCM16 16 kHz) for a call answered in ``codec``."""
        self.media = media
        # providers choose their audio format by codec (OpenAI takes G.711 as is)
        self.plan = replace(self.plan, info=replace(self.plan.info, codec=codec))

    @property
    def _media(self) -> CallMedia:
        assert self.media is not None, "the call is not answered"
        return self.media

    # ------------------------------------------------------------------ CallControl

    @property
    def info(self) -> CallInfo:
        """The call's caller, DID, headers and ids."""
        return self.plan.info

    async def hang_up(self) -> None:
        """End the call after the sentence now playing (Conversation Rule 5)."""
        log.info("call %s: hang-up requested by the agent", self.info.call_id)
        self._run(self.core.hang_up_requested(self._loop.time()))

    async def transfer(self, uri: str, *, warm: bool = False) -> str:
        """Blind transfer (RFC 3515 REFER), or with ``warm`` an attended one (Conversation
        Rule 9); returns the outcome in words once it is known (Rule 7): "transferred" (our leg
        then ends), "busy (486)", "refused (403)", "no final NOTIFY within 10 s"... In every
        outcome but the first the caller stays."""
        if warm and self.plan.consulter is None:
            return "failed: warm transfers are not available on this call"
        request = f"transfer-{len(self._transfers) + 1}"
        done: asyncio.Future[str] = self._loop.create_future()
        self._transfers[request] = done
        self._run(self.core.transfer_requested(uri, request, self._loop.time(), warm=warm))
        return await done

    async def send_dtmf(self, digits: str) -> None:
        """Send ``digits`` as RFC 4733 events."""
        self._media.send_dtmf(digits)

    async def handoff(self, agent: str, reason: str) -> None:
        """Continue with ``agent`` once the handoff tool has finished (Conversation Rule 15).

        Raises:
            ToolError: the agent cannot take the call.
        """
        if self.plan.handoff_to is None:
            raise ToolError("no agent can take this call")
        try:
            target = await self.plan.handoff_to(agent)
        except (KeyError, ConfigError, OSError) as exc:
            raise ToolError(f"agent {agent} cannot take the call: {exc}") from None
        self._handoff = (target, reason)
        fallbacks = 0 if target.fallback is None else 1
        self._run(self.core.handoff_requested(self._loop.time(), fallbacks=fallbacks))

    # ------------------------------------------------------------------ lifecycle

    def hang_up_now(self, reason: str) -> None:
        """BYE at once (RTP timeout, max duration, shutdown) and end the call."""
        self._run(self.core.hang_up_now(reason, self._loop.time()))

    async def run(self) -> str:
        """Converse until the call ends; returns the reason. Cleans everything up (Rule 3)."""
        self.dialog.terminated.add_done_callback(self._on_terminated)
        self.dialog.confirmed.add_done_callback(self._on_confirmed)
        if self.plan.recording_path:
            try:
                self._media.start_recording(self.plan.recording_path)
            except (OSError, SipbotError) as exc:
                log.warning("call %s: cannot record: %s", self.info.call_id, exc)
        self._run(self.core.start(self._loop.time()))
        if self.plan.agent.barge_in.mode == "guard":
            self._spawn(self._load_guard())
        try:
            reason = await self._ended
        finally:
            await self._teardown()
        await self._redacted()
        self.record.ended = time.time()
        self.record.reason = reason
        counts = self.core.counts
        self.record.turns = counts.turns
        self.record.tool_calls = counts.tool_calls
        self.record.interruptions = counts.interruptions
        if self.core.amd_report is not None:
            self.record.amd = self.core.amd_report.as_dict()
        self.record.stalls = counts.stalls
        self.record.recovery_ms = counts.recovery_ms
        return reason

    def _on_confirmed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._run(self.core.confirmed(self._loop.time()))

    def _on_terminated(self, future: asyncio.Future[str]) -> None:
        reason = "cancelled" if future.cancelled() else future.result()
        self._run(self.core.dialog_ended(reason, self._loop.time()))

    # ------------------------------------------------------------------ media callbacks

    def on_audio(self, frame: bytes) -> None:
        """Caller audio from the media session (one frame, the provider's input format)."""
        if self._amd is not None:
            self._detect(frame)  # Rule 5
            return
        if self._mute_callee:
            return
        session = self._session
        if session is not None:
            session.send_audio(frame)  # Rule 1
            if self.guard is not None:
                self._guard_caller(frame)
            if self._caller_speech is not None:
                self._caller_spoke(frame)
            return
        self._pending.append(frame)
        if not self._heard_caller:
            self._heard_caller = True
            self._run(self.core.caller_audio(self._loop.time()))

    def on_dtmf(self, digit: str) -> None:
        """A caller keypress: a route-level action, or text for the model."""
        self._dtmf_count += 1
        log.info("call %s: %s", self.info.call_id, dtmf_line(self._dtmf_count))  # sensitive R1
        if log_values(log, self.plan.log_sensitive):  # sipbot.sensitive Rule 3
            log.debug("call %s: DTMF %s", self.info.call_id, digit)
        self._run(self.core.dtmf(digit, self._loop.time()))

    def on_timeout(self) -> None:
        """No RTP from the caller for the inactivity timeout."""
        log.info("call %s: no RTP from the caller, hanging up", self.info.call_id)
        self._run(self.core.rtp_timeout(self._loop.time()))

    # ------------------------------------------------------------------ executing actions

    def _run(self, actions: list[Action]) -> None:
        """Execute the core's actions in order (Rule 2)."""
        for action in actions:
            match action:
                case Play(audio, item_id):
                    self._media.play(audio, item_id)
                    if self.guard is not None:
                        self.guard.agent_audio(self._guard_out.floats(audio))
                    if self._speech_hooks and not self._agent_speaking:
                        self._agent_speech(True)
                case Duck(gain_db):
                    self._media.duck(gain_db)
                case Flush(report):
                    heard = self._media.flush()
                    if report:
                        log.debug("call %s: barge-in, heard %s", self.info.call_id, heard)
                        self._barged_in(heard)
                        self._run(self.core.media_flushed(heard, self._loop.time()))
                case Truncate(item_id, played_ms):
                    self._to_session(lambda s: s.truncate(item_id, played_ms))
                case CancelTools(ids):
                    self.runner.cancel(ids)
                case StartTool(call):
                    self._start_tool(call)
                case SendToolResult(call_id, name, output):
                    self._to_session(lambda s: s.send_tool_result(call_id, name, output))
                case SendText(text):
                    self._to_session(lambda s: s.send_text(text))
                case PlayPrompt(prompt):
                    self._play_prompt(prompt)
                case WatchDrain():
                    self._spawn(self._watch_drain())
                case SetTimer(at, kind):
                    self._set_timer(at, kind)
                case Refer(uri, replaces):
                    self._spawn(self._refer(self._replacing(uri) if replaces else uri))
                case Consult(uri):
                    self._spawn(self._place_consult(uri))
                case Brief():
                    self._spawn(self._brief())
                case EndConsult():
                    self._spawn(self._end_consult())
                case TransferDone(request, outcome, _):
                    self._transfer_done(request, outcome)
                case OpenProvider(message):
                    self._spawn(self._converse(message=message))
                case DetectMachine(max_wait_s):
                    self._amd = AnsweringMachineDetection(AMD_RATE_HZ, max_wait_s=max_wait_s)
                case StopDetecting(forward):
                    self._amd = None
                    self._mute_callee = not forward
                    self._pending.clear()  # anything that came before the detector started
                case SwitchProvider(reason):
                    self._switch_provider(reason)
                case Hangup():
                    self._spawn(self._bye())
                case End(reason):
                    if not self._ended.done():
                        self._ended.set_result(reason)

    def _to_session(self, send: Callable[[ProviderSession], Coroutine[Any, Any, None]]) -> None:
        session = self._session
        if session is not None:
            self._spawn(send(session))

    def _set_timer(self, at: float, kind: str) -> None:
        old = self._timers.pop(kind, None)
        if old is not None:
            old.cancel()
        self._timers[kind] = self._loop.call_at(at, self._on_timer, kind)

    def _on_timer(self, kind: str) -> None:
        self._timers.pop(kind, None)
        queued = self.media.queued_ms() if self.media is not None else 0
        self._run(self.core.timer_fired(kind, self._loop.time(), queued))

    def _next_hold_chunk(self) -> bytes:
        """The next HOLD_CHUNK_S of the hold audio, from where the last one ended (it loops):
        rendering a few seconds at a time keeps a long hold file off the loop."""
        hold = self.plan.hold
        if not hold:
            return b""
        size = HOLD_CHUNK_S * 16_000 * 2
        start = self._hold_pos % len(hold)
        chunk = hold[start : start + size]
        self._hold_pos = start + len(chunk)
        return chunk

    async def _watch_drain(self) -> None:
        await self._media.drained()
        self._run(self.core.media_drained(self._loop.time()))

    def _play_prompt(self, prompt: Prompt) -> None:
        """Play a 16 kHz prompt in whatever format ``media.play`` takes now."""
        pcm16k: bytes | None = self.plan.apology if prompt == "apology" else self.plan.filler
        if prompt == "hold":
            pcm16k = self._next_hold_chunk()
        elif prompt == "message":
            pcm16k = self.plan.amd.message_audio if self.plan.amd is not None else None
        if pcm16k:
            self._media.play(prompts.render(pcm16k, 16_000, self._outbound), prompt)

    async def _bye(self) -> None:
        with contextlib.suppress(SipbotError):
            await self.dialog.bye()

    # ------------------------------------------------------------------ answering machines

    def _detect(self, frame: bytes) -> None:
        """One callee frame through the detector; its findings go to the core (Rule 5)."""
        assert self._amd is not None
        now = self._loop.time()
        for event in self._amd.feed(frame, now):
            if isinstance(event, AmdVerdict):
                log.info(
                    "call %s: answering-machine detection: %s (%s) after %d ms",
                    self.info.call_id,
                    event.result,
                    event.cause,
                    event.after_ms,
                )
                self._run(self.core.amd_verdict(event.result, event.cause, event.after_ms, now))
            elif isinstance(event, Beep):
                log.info(
                    "call %s: voicemail beep (%.0f Hz) ended at %d ms",
                    self.info.call_id,
                    event.frequency_hz,
                    event.end_ms,
                )
                self._run(self.core.amd_beep(event.end_ms, now))
            else:
                log.info(
                    "call %s: greeting ended at %d ms, no beep", self.info.call_id, event.after_ms
                )
                self._run(self.core.amd_greeting_ended(event.after_ms, now))
            if self._amd is None:
                return

    def _message_config(self) -> SessionConfig:
        """The session settings for leaving the message on a machine (Conversation Rule 12)."""
        config = self.plan.session_config
        message = self.plan.amd.message_text if self.plan.amd is not None else None
        return replace(config, instructions=VOICEMAIL_NOTE + config.instructions, greeting=message)

    # ------------------------------------------------------------------ the provider

    async def _converse(
        self,
        provider: Provider | None = None,
        config: SessionConfig | None = None,
        note: str = RESUME_NOTE,
        *,
        message: bool = False,
    ) -> None:
        provider = provider or self.plan.provider
        opening = config or (self._message_config() if message else self.plan.session_config)
        try:
            session = await asyncio.wait_for(
                provider.open(self.info, opening),
                PROVIDER_OPEN_TIMEOUT_S,
            )
        except (ProviderError, TimeoutError, OSError) as exc:
            log.warning(
                "call %s: provider %s unavailable: %s",
                self.info.call_id,
                provider.name,
                exc or type(exc).__name__,
            )
            self._run(self.core.provider_lost("provider-unavailable", self._loop.time()))
            return
        if config is not None and session.output_format != self._outbound:
            # a switch to another format would drop what the caller is hearing (the filler)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._media.drained(), SWITCH_DRAIN_TIMEOUT_S)
        if self.core.ended is not None:
            await _close_quietly(session)
            return
        self._start_session(session)
        self._run(self.core.provider_opened(self._loop.time()))
        if config is not None:  # after a switch: carry on (Conversation Rules 14-15)
            self._spawn(session.send_text(note))
        try:
            async for event in session.events():
                self._on_event(event)
                if not self.core.listening or self._session is not session:
                    return  # the call ended, or switched to its fallback
        except Exception:  # a provider bug must not leave the caller in silence
            log.exception("call %s: provider %s failed", self.info.call_id, provider.name)
            self._run(self.core.provider_lost("provider-error", self._loop.time()))
            return
        if self.core.listening and self._session is session:  # (not closed by a switch)
            log.warning("call %s: provider session ended unexpectedly", self.info.call_id)
            self._run(self.core.provider_lost("provider-closed", self._loop.time()))

    def _start_session(self, session: ProviderSession) -> None:
        inbound, outbound = session.input_format, session.output_format
        if inbound != PCM16_16K:
            self._pending.clear()  # buffered in another format: better lost than garbled
        self._media.set_formats(inbound, outbound)
        self._outbound = outbound
        self._guard_in, self._guard_out = GuardInput(inbound), GuardInput(outbound)
        if self._speech_hooks:
            self._caller_speech = CallerSpeech(inbound)
        self._session = session
        while self._pending:
            session.send_audio(self._pending.popleft())

    def _switch_provider(self, reason: str) -> None:
        """Conversation Rules 14-15: close the session, open the next one seeded with the call."""
        if reason == HANDOFF and self._handoff is not None:
            self._hand_off(*self._handoff)
            return
        fallback, config = self.plan.fallback, self.plan.fallback_config
        if fallback is None or config is None:  # nothing to switch to after all: Rule 3
            self._run(self.core.provider_lost(reason, self._loop.time()))
            return
        log.warning(
            "call %s: provider %s lost (%s): switching to %s",
            self.info.call_id,
            self.plan.provider.name,
            reason,
            fallback.name,
        )
        self.record.switched_to = fallback.name
        self._emit(
            ProviderSwitch(
                self.info.call_id,
                time.time(),
                reason,
                self.plan.provider.name,
                fallback.name,
                self.plan.agent.name,
            )
        )
        self._spawn(self._converse(fallback, self._seeded(config)))

    def _hand_off(self, target: AgentSetup, why: str) -> None:
        agent = target.agent
        log.info("call %s: handed off to agent %s", self.info.call_id, agent.name)
        if log_values(log, self.plan.log_sensitive):  # why: the model's words, a tool argument
            log.debug("call %s: handoff reason: %s", self.info.call_id, why)
        self._emit(
            ProviderSwitch(
                self.info.call_id,
                time.time(),
                HANDOFF,
                self.plan.provider.name,
                target.provider.name,
                agent.name,
            )
        )
        self._handoff = None
        seeded = self._seeded(target.session_config)
        self._spawn(self.runner.aclose())  # the handoff tool, its last, has finished
        context = self._tool_context()
        self.runner = ToolRunner(context, agent.resolved_tools, timeout_s=agent.tool_timeout_s)
        self.plan = replace(
            self.plan,
            agent=agent,
            provider=target.provider,
            session_config=target.session_config,
            fallback=target.fallback,
            fallback_config=target.fallback_config,
        )
        self._spawn(self._converse(target.provider, seeded, handoff_note(why)))

    def _seeded(self, config: SessionConfig) -> SessionConfig:
        """``config`` seeded with the call so far; the session in use is closed."""
        old, self._session = self._session, None
        if old is not None:
            self._spawn(_close_quietly(old))
        lines = [
            (line.at, Transcript(line.role, self._heard.get(index, line.text)))
            for index, line in enumerate(self.record.lines)
        ]
        tools = [
            (entry.ended, entry.name, json.dumps(dict(entry.arguments), default=str), entry.output)
            for entry in self.record.tools
        ]
        return replace(config, history=failover_seed(lines, tools), greeting=None)

    def _on_event(self, event: ProviderEvent) -> None:
        if isinstance(event, Heard):
            agent_lines = [i for i, ln in enumerate(self.record.lines) if ln.role == "agent"]
            if agent_lines:
                self._heard[agent_lines[-1]] = event.text
            if self._hooks is None or not self._hooks.redacting:  # Rule 6: unredacted text
                log.debug("call %s: caller heard %r", self.info.call_id, event.text)
            return
        if isinstance(event, ProviderStalled):
            log.warning("call %s: provider stalled: %s", self.info.call_id, event.message)
        if isinstance(event, Transcript):
            if event.role == "caller" and self.guard is not None:
                self._guard_verdict(self.guard.caller_words(event.text, self._agent_audible()))
            if event.final and self._hooks is not None and self._hooks.redacting:
                self._redact(event)  # Rule 6
            elif event.final:
                self.transcript.append(event)
                self.record.lines.append(TranscriptLine(time.time(), event.role, event.text))
                level = logging.INFO if self.plan.log_transcripts else logging.DEBUG
                log.log(level, "call %s: %s: %s", self.info.call_id, event.role, event.text)
                if self._hooks is not None:
                    self._emit(
                        TranscriptEvent(self.info.call_id, time.time(), event.role, event.text)
                    )
            return
        if isinstance(event, ProviderNotice):
            log.info("call %s: provider: %s", self.info.call_id, event.message)
            return
        if isinstance(event, ProviderFailed):
            log.warning("call %s: provider failed: %s", self.info.call_id, event.message)
        if isinstance(event, TurnComplete) and self._agent_speaking:
            self._agent_speech(False)
        self._run(self.core.provider_event(event, self._loop.time()))

    # ------------------------------------------------------------------ barge-in guard (Rule 4)

    async def _load_guard(self) -> None:
        from sipbot.media.silero import SileroModel  # the native model loads off the loop

        model = await asyncio.to_thread(SileroModel)
        if self.guard is None:  # a test may have put its own in place
            self.guard = BargeInGuard(model, min_speech_ms=self.plan.agent.barge_in.min_speech_ms)

    def _agent_audible(self) -> bool:
        now = self._loop.time()
        if self.media is not None and self.media.audio_queued():
            self._audible_at = now
            return True
        return now - self._audible_at < AUDIBLE_HOLD_S

    def _guard_caller(self, frame: bytes) -> None:
        guard = self.guard
        assert guard is not None
        audible = self._agent_audible()
        pcm = self._guard_in.pcm16k(frame) if audible else b""
        self._guard_verdict(guard.caller_audio(pcm, audible))

    def _guard_verdict(self, verdict: Verdict | None) -> None:
        now = self._loop.time()
        if verdict == SUSPECT:
            self._run(self.core.barge_in_suspected(now))
        elif verdict == CONFIRM:
            log.info("call %s: barge-in confirmed by the guard", self.info.call_id)
            self._run(self.core.barge_in_confirmed(now))
        elif verdict == CLEAR:
            self._run(self.core.barge_in_cleared(now))

    # ------------------------------------------------------------------ tools and transfers

    def _tool_context(self) -> ToolContext:
        # the call weakly: the call holds its runner, a strong reference back would keep every
        # ended call's objects until a full GC pass (issue 12; tools end with the call, Rule 3)
        return ToolContext(cast(CallControl, weakref.proxy(self)), self.transcript)

    def _start_tool(self, call: ToolCall) -> None:
        cid = self.info.call_id
        names = argument_names(call.arguments, self._parameters(call.name))  # sensitive Rule 2
        log.info("call %s: tool %s (%s) called with %s", cid, call.name, call.id, names)
        if log_values(log, self.plan.log_sensitive):  # sipbot.sensitive Rule 3
            log.debug("call %s: tool %s(%s)", cid, call.name, dict(call.arguments))
        started = time.time()
        self._emit(ToolCalled(self.info.call_id, started, call.id, call.name, call.arguments))
        task = self.runner.start(call)
        task.add_done_callback(lambda t: self._tool_done(call, started, t))

    def _tool_done(self, call: ToolCall, started: float, task: asyncio.Task[ToolResult]) -> None:
        if task.cancelled():
            return
        result = task.result()
        output = result.output if result.output is not None else result.error
        text = output if isinstance(output, str) else json.dumps(output, default=str)
        entry = ToolLogEntry(
            call.name,
            call.arguments,
            text[:TOOL_LOG_OUTPUT_CHARS],
            started,
            time.time(),
            result.error is not None,
        )
        self.record.tools.append(entry)
        self._log_tool_done(call, result, text)
        if self._hooks is not None:
            took_ms = round((entry.ended - started) * 1000)
            self._emit(
                ToolResultEvent(
                    self.info.call_id,
                    entry.ended,
                    call.id,
                    call.name,
                    entry.output,
                    entry.error,
                    took_ms,
                )
            )
        self._run(
            self.core.tool_finished(
                result.call_id, result.output, self._loop.time(), cancelled=result.cancelled
            )
        )

    def _parameters(self, tool: str) -> Collection[str]:
        """The parameter names ``tool`` declares (none for a tool the agent does not have)."""
        for spec in self.runner.specs:
            if spec.name == tool:
                properties: Mapping[str, Any] = spec.parameters.get("properties", {})
                return properties.keys()
        return ()

    def _log_tool_done(self, call: ToolCall, result: ToolResult, text: str) -> None:
        """Its outcome and duration at INFO; its result at DEBUG if opted in (sensitive R2-3)."""
        outcome = tool_outcome(result.error, result.cancelled)
        took_ms = round(result.elapsed_ms)
        cid = self.info.call_id
        log.info("call %s: tool %s (%s) %s in %d ms", cid, call.name, call.id, outcome, took_ms)
        if log_values(log, self.plan.log_sensitive):
            cut = text[:TOOL_LOG_OUTPUT_CHARS]
            log.debug("call %s: tool %s (%s) result: %s", cid, call.name, call.id, cut)

    async def _refer(self, uri: str) -> None:
        """Send the REFER, then wait for its final NOTIFY (the core bounds the wait, Rule 7)."""
        try:
            referral = await self.dialog.refer(uri)
        except SipbotError as exc:
            log.info("call %s: transfer to %s refused: %s", self.info.call_id, uri, exc)
            self._run(self.core.refer_refused(_status_of(exc), self._loop.time()))
            return
        accepted = referral.response.status if referral.response is not None else "2xx"
        log.info("call %s: transfer to %s accepted (%s)", self.info.call_id, uri, accepted)
        self._run(self.core.refer_accepted(self._loop.time()))
        try:
            final = await referral.final()
        except SipbotError as exc:
            log.info("call %s: transfer outcome unknown: %s", self.info.call_id, exc)
            return
        log.info("call %s: transfer target answered %d", self.info.call_id, final)
        self._run(self.core.refer_final(final, self._loop.time()))

    def _replacing(self, uri: str) -> str:
        leg = self._consult
        return uri if leg is None else replacing(uri, leg.replaces)

    async def _place_consult(self, uri: str) -> None:
        """Rule 9: call the warm transfer's target; the core hears how that went."""
        assert self.plan.consulter is not None
        try:
            leg = await self.plan.consulter.place(uri)
        except SipbotError as exc:
            log.info("call %s: warm transfer: %s did not answer: %s", self.info.call_id, uri, exc)
            self._run(self.core.consult_failed(_status_of(exc), self._loop.time()))
            return
        log.info("call %s: warm transfer: %s answered", self.info.call_id, uri)
        self._consult = leg
        leg.terminated.add_done_callback(
            lambda _: self._run(self.core.consult_ended(self._loop.time()))
        )
        self._run(self.core.consult_answered(self._loop.time()))

    async def _brief(self) -> None:
        leg = self._consult
        if leg is not None:
            await leg.brief(self.plan.briefing)
            self._run(self.core.consult_briefed(self._loop.time()))

    async def _end_consult(self) -> None:
        leg, self._consult = self._consult, None
        if leg is not None:
            await leg.close()
            reason = leg.terminated.result() if leg.terminated.done() else "?"
            log.info(
                "call %s: warm transfer: consultation call ended (%s)", self.info.call_id, reason
            )

    def _transfer_done(self, request: str | None, outcome: str) -> None:
        log.info("call %s: transfer outcome: %s", self.info.call_id, outcome)
        done = None if request is None else self._transfers.get(request)
        if done is not None and not done.done():
            done.set_result(outcome)

    # ------------------------------------------------------------------ hooks (Rule 6)

    def _emit(self, event: HookEvent) -> None:
        if self._hooks is not None:
            self._hooks.emit(event)

    def _agent_speech(self, started: bool, *, cut: bool = False) -> None:
        self._agent_speaking = started
        now = time.time()
        if started:
            self._emit(SpeechStart(self.info.call_id, now, "agent"))
        else:
            self._emit(SpeechEnd(self.info.call_id, now, "agent", cut))

    def _caller_spoke(self, frame: bytes) -> None:
        assert self._caller_speech is not None
        change = self._caller_speech.feed(frame)
        if change == "speech_start":
            self._emit(SpeechStart(self.info.call_id, time.time(), "caller"))
        elif change == "speech_end":
            self._emit(SpeechEnd(self.info.call_id, time.time(), "caller"))

    def _barged_in(self, heard: Mapping[str, int]) -> None:
        if self._hooks is None:
            return
        self._emit(BargeIn(self.info.call_id, time.time(), sum(heard.values())))
        if self._agent_speaking:
            self._agent_speech(False, cut=True)

    def _redact(self, event: Transcript) -> None:
        """Rule 6: the line takes its place now, redacted until the hooks give its text."""
        at = time.time()
        index, position = len(self.record.lines), len(self.transcript)
        self.record.lines.append(TranscriptLine(at, event.role, REDACTION_FAILED))
        self.transcript.append(Transcript(event.role, REDACTION_FAILED))
        line = TranscriptEvent(self.info.call_id, at, event.role, event.text)
        task = self._loop.create_task(self._store_redacted(line, index, position))
        self._redactions.add(task)
        task.add_done_callback(self._redactions.discard)

    async def _store_redacted(self, line: TranscriptEvent, index: int, position: int) -> None:
        assert self._hooks is not None
        text = await self._hooks.redact(line)
        self.record.lines[index] = TranscriptLine(line.at, line.role, text)
        self.transcript[position] = Transcript(line.role, text)
        level = logging.INFO if self.plan.log_transcripts else logging.DEBUG
        log.log(level, "call %s: %s: %s", self.info.call_id, line.role, text)

    async def _redacted(self) -> None:
        """Rule 6: wait (bounded) for the redactions still running; the rest stay redacted."""
        if not self._redactions:
            return
        pending = set(self._redactions)
        _, late = await asyncio.wait(pending, timeout=REDACTION_WAIT_S)
        for task in late:
            task.cancel()

    # ------------------------------------------------------------------ the end

    async def _teardown(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        session, self._session = self._session, None
        await self.runner.aclose()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if session is not None:
            await _close_quietly(session)
        if self._consult is not None and self.core.ended == "transferred":
            # the target ends the consultation call itself (Replaces): give it the time
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._consult.terminated), CLOSE_TIMEOUT_S)
            await self._end_consult()
        if self.media is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.media.close(), CLOSE_TIMEOUT_S)
        if not self.dialog.terminated.done():
            with contextlib.suppress(SipbotError):
                await self.dialog.bye()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: task failed", self.info.call_id, exc_info=task.exception())


def _status_of(exc: SipbotError) -> int | None:
    """The SIP status of a request that failed (None: no response at all)."""
    response = exc.response if isinstance(exc, RequestFailed) else None
    return None if response is None else response.status


async def _close_quietly(session: ProviderSession) -> None:
    try:
        await asyncio.wait_for(session.close(), CLOSE_TIMEOUT_S)
    except Exception as exc:
        log.debug("provider close failed: %r", exc)
