"""The conversation of one call as a sans-I/O core: facts in, actions out.

:class:`Conversation` never awaits and never reads a clock. The asyncio shell
(:class:`sipbot.call.Call`) feeds it what happened — provider events, media facts (what a flush
cut, the pacer drained), tool outcomes, SIP facts (the call ended, a REFER was accepted, its final
NOTIFY), caller keypresses and fired timers — each with ``now`` (the loop's clock), and executes
the frozen :data:`Action` objects it returns, in order. Caller audio never passes through here:
it goes from the media session straight into the provider session.

Rules:

* Rule 1: the first reason to end wins. Every way a call ends — BYE from the caller, a hang-up
  tool, RTP inactivity, the maximum duration, a provider failure, a transfer, shutdown — yields
  one :class:`End` with its reason, once; after it the core returns no more actions.
* Rule 2: a barge-in (``Interrupted``) flushes the pacer at once — the very next packet is
  silent — cancels the running tools, and then reports for each cut item how much the caller
  heard (:class:`Truncate`, from the ms the flush returned).
* Rule 3: a provider that cannot be reached or fails for good is never silence: agent audio is
  muted, the caller hears the apology, and BYE follows once it has played out (at most
  APOLOGY_TIMEOUT_S).
* Rule 4: nothing a tool does blocks audio: tools run in the shell; their results go back to the
  provider when they finish (unless cancelled or the call ended).
* Rule 5: a hang-up waits for the goodbye: BYE once a turn in which the agent spoke after the
  request is complete, or once the agent has been quiet for HANGUP_QUIET_S since the request and
  its last audio — and then the pacer has drained; never later than HANGUP_WAIT_S (plus
  HANGUP_GRACE_S for the drain).
* Rule 6: a tool still running ``filler_after_s`` after it started gets the filler prompt once,
  and only into silence (nothing queued in the pacer, agent not muted).
* Rule 7: an accepted transfer mutes the agent and flushes; only a 2xx final NOTIFY ends our leg
  (BYE). When the target fails — a final NOTIFY of 300 or more, no final NOTIFY within
  ``transfer_timeout_s`` (TRANSFER_NOTIFY_TIMEOUT_S by default) of the acceptance, or the REFER
  refused — the caller stays with the agent: it is unmuted and told the outcome in words
  (:func:`transfer_outcome`): the tool that asked gets it as its result (:class:`TransferDone`),
  a keypress transfer as text. One transfer at a time; a second request fails at once.
* Rule 8: the provider session opens once, on the first of: the call is confirmed (ACK), the
  caller's first audio arrived (an INVITE never ACKed costs no model session).
* Rule 9: a warm transfer first calls the target (:class:`Consult`) while the caller, the agent
  muted, hears hold audio (topped up every HOLD_TICK_S while less than HOLD_LOW_MS is queued,
  until the REFER is accepted); once the target answered and the briefing played to it
  (:class:`Brief`), the caller is REFERred to the target with Replaces (RFC 3891) and Rule 7
  applies. When the target does not answer, or the REFER fails, the consultation call is ended
  (:class:`EndConsult`), the hold audio stops and the caller is back with the agent.
* Rule 10 (barge-in guard, ``barge_in.mode: guard``; :mod:`sipbot.bargein` decides, the provider's
  own interruption is off): suspected caller speech over the agent ducks the agent's audio by
  GUARD_DUCK_DB, nothing is flushed; a confirmed barge-in restores the level and is handled as
  Rule 2 (flush, cancel tools, truncate), and the rest of every cut item's audio still arriving
  from the provider is dropped until its turn completes (at most GUARD_CUT_DROP_S: a provider
  that never completes a turn, such as the local loopback, keeps its voice); a false alarm
  restores the level and costs nothing else.
* Rule 11: with answering-machine detection (an :class:`AmdPolicy`), the callee's audio goes to
  the detector (:class:`DetectMachine`) and the provider waits: Rule 8 opens nothing until the
  verdict. No verdict ``max_wait_s`` + AMD_NO_AUDIO_GRACE_S after the start (no audio came) is
  unknown. A human, or a verdict whose action is ``talk``, stops the detector and opens the
  provider as usual; ``hangup`` ends the call (``amd-machine`` / ``amd-unknown``); ``message``
  follows Rule 12.
* Rule 12: a message for a machine waits for the beep, or for the end of a greeting without
  one, at most AMD_BEEP_WAIT_S after the verdict; then the detector stops and the message plays:
  the provider opens with it as its greeting, or the fixed prompt plays. BYE (``amd-message``)
  once it has played out (a complete turn after agent audio, then the drain; or the prompt
  drained), never later than AMD_MESSAGE_TIMEOUT_S after it began.
* Rule 13: a stall (``ProviderStalled``: the session resumes by itself) or a provider switch
  starts a recovery: the caller hears the filler once, into silence (after what the pacer still
  holds), never while muted; the recovery ends with the next agent audio. The record counts
  stalls and the recovery time (from its start to that audio).
* Rule 14: a provider that is lost for good (``ProviderFailed``, or unavailable, closed, broken)
  while a fallback is left is not Rule 3: running tools are cancelled and the call switches
  (:class:`SwitchProvider`) to the fallback, seeded with the conversation so far; Rule 3 applies
  once no fallback is left.
* Rule 15: a handoff (the ``handoff`` tool asked for it) switches the call to the other agent
  once that tool has finished: its result goes to no model; the other tools are cancelled; the
  fallbacks left (Rule 14) are from then on the other agent's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sipbot.dialplan import DtmfAction, HangUp, Transfer
from sipbot.dialplan.amd import AmdAction
from sipbot.domain import (
    AudioOut,
    Interrupted,
    ProviderEvent,
    ProviderFailed,
    ProviderStalled,
    ToolCall,
    ToolCallCancelled,
    TurnComplete,
)

APOLOGY_TIMEOUT_S = 10.0  # longest the apology may take to play out
HANGUP_QUIET_S = 2.0  # no agent audio this long after hang_up: it said goodbye before the tool
HANGUP_WAIT_S = 15.0  # longest hang_up waits for the agent to finish speaking
HANGUP_GRACE_S = 0.1  # after HANGUP_WAIT_S, this long more for the pacer to drain
GUARD_DUCK_DB = -12.0  # Rule 10: the agent's level while a barge-in is suspected
GUARD_CUT_DROP_S = 5.0  # Rule 10: longest a cut item's late audio is dropped
TRANSFER_NOTIFY_TIMEOUT_S = 10.0  # default longest wait for the REFER's final NOTIFY (Rule 7)

AMD_NO_AUDIO_GRACE_S = 3.0  # after max_wait_s: no verdict at all (no callee audio) is unknown
AMD_BEEP_WAIT_S = 20.0  # longest a message waits for the beep or the greeting's end
AMD_MESSAGE_TIMEOUT_S = 60.0  # longest a message may take to play out before BYE

Prompt = Literal["apology", "filler", "hold", "message"]
AmdResult = Literal["human", "machine", "unknown"]

# timer kinds (a filler timer is "filler:" + the tool call id)
MAX_DURATION = "max-duration"
HANGUP_QUIET = "hangup-quiet"
HANGUP_DEADLINE = "hangup-deadline"
HANGUP_GRACE = "hangup-grace"
APOLOGY = "apology"
TRANSFER = "transfer"
HOLD = "hold"
HOLD_TICK_S = 1.0  # Rule 9: how often the hold audio is topped up
HOLD_LOW_MS = 1_000  # top it up (one more PlayPrompt("hold")) when less than this is queued
FILLER = "filler:"
AMD_DEADLINE = "amd-deadline"
AMD_BEEP_WAIT = "amd-beep-wait"
AMD_MESSAGE = "amd-message"
RECOVERY_FILLER = "recovery-filler"
HANDOFF_TOOL = "handoff"
HANDOFF = "handoff"  # the SwitchProvider reason of Rule 15


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class OpenProvider:
    """Open the provider session (Rule 8); report with ``provider_opened`` / ``_unavailable``.

    ``message``: the session is for the message to a machine (Rule 12): it says the message.
    """

    message: bool = False


@dataclass(frozen=True, slots=True)
class DetectMachine:
    """Feed the callee's audio to a new answering-machine detector (Rule 11); report what it
    finds with ``amd_verdict``, ``amd_beep`` and ``amd_greeting_ended``."""

    max_wait_s: float


@dataclass(frozen=True, slots=True)
class StopDetecting:
    """Stop the detector: the callee's audio goes to the provider session again, or, when not
    ``forward`` (a message to a machine, Rule 12), nowhere: the model must not hear the machine."""

    forward: bool = True


@dataclass(frozen=True, slots=True)
class Play:
    """Queue agent audio (the session's output format) in the pacer."""

    audio: bytes
    item_id: str


@dataclass(frozen=True, slots=True)
class PlayPrompt:
    """Queue one of the call's prompts, rendered to what the pacer takes now."""

    prompt: Prompt


@dataclass(frozen=True, slots=True)
class Flush:
    """Drop the pacer's queue; when ``report``, pass what it returns to ``media_flushed``."""

    report: bool = False


@dataclass(frozen=True, slots=True)
class Duck:
    """Play the agent's audio at ``gain_db`` (0: its own level) from the next packet (Rule 10)."""

    gain_db: float


@dataclass(frozen=True, slots=True)
class WatchDrain:
    """Call ``media_drained`` once the pacer has sent everything queued."""


@dataclass(frozen=True, slots=True)
class Truncate:
    """Tell the provider the caller heard only ``played_ms`` of ``item_id``."""

    item_id: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class StartTool:
    """Run a tool call; report its outcome with ``tool_finished``."""

    call: ToolCall


@dataclass(frozen=True, slots=True)
class CancelTools:
    """Stop these running tool calls."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendToolResult:
    """Answer a tool call to the provider."""

    call_id: str
    name: str
    output: object


@dataclass(frozen=True, slots=True)
class SendText:
    """Tell the model something as caller text."""

    text: str


@dataclass(frozen=True, slots=True)
class Refer:
    """Blind-transfer the caller (REFER); report with ``refer_accepted`` / ``_refused``.

    ``replaces``: refer the caller to the consultation call's target with Replaces (Rule 9)."""

    uri: str
    replaces: bool = False


@dataclass(frozen=True, slots=True)
class Consult:
    """Call the warm transfer's target (Rule 9); report ``consult_answered`` / ``_failed``."""

    uri: str


@dataclass(frozen=True, slots=True)
class Brief:
    """Play the briefing to the consulted target; report ``consult_briefed`` once it played."""


@dataclass(frozen=True, slots=True)
class EndConsult:
    """Hang up the consultation call (the warm transfer failed, Rule 9)."""


@dataclass(frozen=True, slots=True)
class TransferDone:
    """A transfer is over (Rule 7): answer the tool that asked (``request``, from
    ``transfer_requested``; None for a keypress transfer).

    ``outcome`` in words for the model ("transferred", "busy (486)", "no answer (480)",
    "refused (403)", "no final NOTIFY within 10 s"...); ``transferred`` only for a 2xx.
    """

    request: str | None
    outcome: str
    transferred: bool


@dataclass(frozen=True, slots=True)
class Hangup:
    """Send BYE (the :class:`End` that goes with it carries the reason)."""


@dataclass(frozen=True, slots=True)
class End:
    """The call is over for ``reason`` (Rule 1: exactly once)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``timer_fired(kind, ...)`` at ``at`` (loop time); replaces a timer of that kind."""

    at: float
    kind: str


@dataclass(frozen=True, slots=True)
class SwitchProvider:
    """Close the provider session and open the next one, seeded: the fallback (Rule 14), or
    the handoff's agent when ``reason`` is HANDOFF (Rule 15); report with ``provider_opened``
    / ``provider_lost``."""

    reason: str


Action = (
    OpenProvider
    | DetectMachine
    | StopDetecting
    | Play
    | PlayPrompt
    | Flush
    | Duck
    | WatchDrain
    | Truncate
    | StartTool
    | CancelTools
    | SendToolResult
    | SendText
    | Refer
    | Consult
    | Brief
    | EndConsult
    | TransferDone
    | Hangup
    | End
    | SetTimer
    | SwitchProvider
)


@dataclass(slots=True)
class Counts:
    """What the call record counts."""

    turns: int = 0
    tool_calls: int = 0
    interruptions: int = 0
    stalls: int = 0
    recovery_ms: int = 0  # Rule 13: from each stall or switch to the next agent audio
    switches: int = 0


@dataclass(frozen=True, slots=True)
class AmdPolicy:
    """What a call does with the detector's verdict (Rules 11-12).

    Attributes:
        on_machine, on_unknown: ``hangup``, ``message`` or ``talk``.
        spoken_message: the agent says the message (else the fixed ``message`` prompt plays).
        max_wait_s: the detector's bound, from the callee's first audio.
    """

    on_machine: AmdAction = "hangup"
    on_unknown: AmdAction = "talk"
    spoken_message: bool = True
    max_wait_s: float = 5.0


@dataclass(slots=True)
class AmdReport:
    """What the detection found and did (for the call record; times in ms of callee audio
    from its first frame)."""

    result: AmdResult | None = None
    cause: str = ""
    decision_ms: int | None = None
    action: AmdAction | None = None
    beep_ms: int | None = None  # the beep's end
    greeting_end_ms: int | None = None
    message_ms: int | None = None  # the message started
    message_done: bool = False

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready fields (None fields left out)."""
        fields = {
            "result": self.result,
            "cause": self.cause or None,
            "decision_ms": self.decision_ms,
            "action": self.action,
            "beep_ms": self.beep_ms,
            "greeting_end_ms": self.greeting_end_ms,
            "message_ms": self.message_ms,
            "message_done": self.message_done if self.message_ms is not None else None,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(slots=True)
class _HangupWait:
    """A pending agent hang-up (Rule 5)."""

    requested: float
    draining: bool = False  # a WatchDrain is out
    overdue: bool = False  # HANGUP_WAIT_S passed: BYE on drain or at HANGUP_GRACE_S


@dataclass(slots=True)
class _Transfer:
    """A transfer under way (Rule 7)."""

    uri: str
    request: str | None  # the tool's request id; None: asked for by a keypress
    deadline: float | None = None  # set when the REFER was accepted
    warm: bool = False  # Rule 9: a consultation call comes first
    consulting: bool = False  # the consultation call is up (answered, not ended by us)


@dataclass(slots=True)
class _State:
    ended: str | None = None
    opening: bool = False
    session: bool = False  # the provider session is open
    muted: bool = False  # after a transfer or an apology, agent audio is dropped
    apologising: str | None = None  # the reason to end with once the apology played out
    transfer: _Transfer | None = None
    last_agent_audio: float = 0.0
    turn_done: bool = False
    hangup: _HangupWait | None = None
    tools: dict[str, ToolCall] = field(default_factory=dict)  # running, by call id
    filler_due: set[str] = field(default_factory=set)  # running tools whose filler timer is out
    ducked: bool = False  # Rule 10: a barge-in is suspected
    guard_cut: bool = False  # Rule 10: the next reported flush is the guard's
    cut_items: set[str] = field(default_factory=set)  # Rule 10: their late audio is dropped
    cut_at: float = 0.0  # Rule 10: when the guard cut them
    # Rules 11-12: detecting -> (awaiting-beep ->) leaving -> None; None: no detection now
    amd: Literal["detecting", "awaiting-beep", "leaving"] | None = None
    amd_origin: float | None = None  # ``now`` of the callee's first audio (from the verdict)
    message_started: float | None = None
    recovering: float | None = None  # when the current stall or switch began (Rule 13)
    recovery_filler: bool = False  # the recovery's filler is still to play
    handing_off: int | None = None  # a handoff is pending: the other agent's fallbacks (Rule 15)


class Conversation:
    """One call's conversation rules (see the module docstring).

    Args:
        dtmf: route-level keypress actions (other digits go to the model as text).
        max_duration_s: the call is ended this long after :meth:`start`.
        filler_after_s: a tool running this long gets the filler (Rule 6); None → no filler.
        transfer_timeout_s: longest wait for an accepted REFER's final NOTIFY (Rule 7).
        amd: answering-machine detection for this call (Rules 11-12); None → none.
        fallbacks: providers left to switch to when the provider is lost (Rule 14).
    """

    def __init__(
        self,
        *,
        dtmf: Mapping[str, DtmfAction] | None = None,
        max_duration_s: float | None = None,
        filler_after_s: float | None = None,
        transfer_timeout_s: float = TRANSFER_NOTIFY_TIMEOUT_S,
        amd: AmdPolicy | None = None,
        fallbacks: int = 0,
    ) -> None:
        self._fallbacks = fallbacks
        self._dtmf = dict(dtmf or {})
        self._transfer_timeout_s = transfer_timeout_s
        self._max_duration_s = max_duration_s
        self._filler_after_s = filler_after_s
        self._amd = amd
        self._s = _State()
        if amd is not None:
            self._s.amd = "detecting"  # Rule 11 holds from the start: no audio opens the provider
        self.counts = Counts()
        self.amd_report = AmdReport() if amd is not None else None

    # ------------------------------------------------------------------ properties

    @property
    def ended(self) -> str | None:
        """The reason the call ended, or None while it goes on."""
        return self._s.ended

    @property
    def listening(self) -> bool:
        """False once provider events no longer matter (ended, or the provider failed)."""
        return self._s.ended is None and self._s.apologising is None

    @property
    def running_tools(self) -> tuple[str, ...]:
        """Ids of the tool calls started and not finished."""
        return tuple(self._s.tools)

    # ------------------------------------------------------------------ call lifecycle

    def start(self, now: float) -> list[Action]:
        """The call is answered: arm the maximum duration; start detecting (Rule 11)."""
        if self._s.ended is not None:
            return []
        actions: list[Action] = []
        if self._max_duration_s is not None:
            actions.append(SetTimer(now + self._max_duration_s, MAX_DURATION))
        if self._amd is not None and self._s.amd == "detecting":
            deadline = now + self._amd.max_wait_s + AMD_NO_AUDIO_GRACE_S
            actions += [DetectMachine(self._amd.max_wait_s), SetTimer(deadline, AMD_DEADLINE)]
        return actions

    def confirmed(self, now: float) -> list[Action]:
        """The ACK arrived (Rule 8)."""
        return self._open()

    def caller_audio(self, now: float) -> list[Action]:
        """The caller's first audio arrived (Rule 8); later calls return nothing."""
        return self._open()

    def _open(self) -> list[Action]:
        if self._s.opening or self._s.ended is not None or self._s.amd is not None:  # Rule 11
            return []
        self._s.opening = True
        return [OpenProvider()]

    def hang_up_now(self, reason: str, now: float) -> list[Action]:
        """BYE at once (RTP timeout, shutdown...), Rule 1."""
        return self._bye(reason)

    def dialog_ended(self, reason: str, now: float) -> list[Action]:
        """The dialog ended by itself (BYE received, CANCEL, error), Rule 1."""
        if self._s.ended is not None:
            return []
        self._s.ended = reason
        return [End(reason)]

    # ------------------------------------------------------------------ provider

    def provider_opened(self, now: float) -> list[Action]:
        """The provider session is open: DTMF text can go to it now."""
        self._s.session = True
        return []

    def provider_lost(self, reason: str, now: float) -> list[Action]:
        """The provider is unavailable, closed or broke: switch (Rule 14), else apologise."""
        return self._switch(reason, now) or self._apologise(reason, now)

    def provider_event(self, event: ProviderEvent, now: float) -> list[Action]:
        """One provider event (transcripts and notices need no action here)."""
        s = self._s
        if s.ended is not None or s.apologising is not None:
            return []
        if isinstance(event, AudioOut):
            if s.cut_items and now - s.cut_at > GUARD_CUT_DROP_S:
                s.cut_items.clear()  # Rule 10: bounded
            if s.muted or event.item_id in s.cut_items:
                return []
            s.last_agent_audio = now
            s.turn_done = False
            if s.recovering is not None:  # Rule 13: recovered
                self.counts.recovery_ms += round((now - s.recovering) * 1000)
                s.recovering, s.recovery_filler = None, False
            return [Play(event.audio, event.item_id)]
        if isinstance(event, Interrupted):
            self.counts.interruptions += 1
            return [Flush(report=True), CancelTools(tuple(s.tools))]  # Rule 2
        if isinstance(event, ToolCall):
            return self._start_tool(event, now)
        if isinstance(event, ToolCallCancelled):
            return [CancelTools(event.ids)]
        if isinstance(event, TurnComplete):
            s.cut_items.clear()  # Rule 10
            self.counts.turns += 1
            s.turn_done = True
            if s.amd == "leaving":
                return self._message_check()
            return self._hangup_check(now)
        if isinstance(event, ProviderFailed):
            return self._switch("provider-failed", now) or self._apologise("provider-failed", now)
        if isinstance(event, ProviderStalled):
            self.counts.stalls += 1
            return self._recover(now)
        return []

    def _recover(self, now: float) -> list[Action]:
        """Rule 13: a recovery begins (or goes on): the filler once, into silence."""
        s = self._s
        if s.recovering is not None:
            return []
        s.recovering, s.recovery_filler = now, True
        return [SetTimer(now, RECOVERY_FILLER)]

    def _switch(self, reason: str, now: float) -> list[Action]:
        """Rule 14: on to the fallback, if one is left (else nothing: Rule 3 applies)."""
        s = self._s
        if self._fallbacks <= 0 or s.ended is not None or s.apologising is not None:
            return []
        self._fallbacks -= 1
        self.counts.switches += 1
        s.session = False
        return [CancelTools(tuple(s.tools)), SwitchProvider(reason), *self._recover(now)]

    # ------------------------------------------------------------------ media facts

    def media_flushed(self, heard: Mapping[str, int], now: float) -> list[Action]:
        """What a reporting :class:`Flush` cut: ``{item_id: ms heard}`` (Rule 2)."""
        if self._s.ended is not None:
            return []
        if self._s.guard_cut:
            self._s.guard_cut = False
            self._s.cut_items.update(heard)  # Rule 10
            self._s.cut_at = now
        return [Truncate(item_id, ms) for item_id, ms in heard.items()]

    # ------------------------------------------------------------------ barge-in guard (Rule 10)

    def barge_in_suspected(self, now: float) -> list[Action]:
        """The guard heard caller speech over the agent: duck, do not flush yet."""
        s = self._s
        if s.ended is not None or s.muted or s.ducked:
            return []
        s.ducked = True
        return [Duck(GUARD_DUCK_DB)]

    def barge_in_cleared(self, now: float) -> list[Action]:
        """A false alarm (a backchannel, a cough, echo): the agent's level comes back."""
        s = self._s
        if not s.ducked:
            return []
        s.ducked = False
        return [] if s.ended is not None else [Duck(0.0)]

    def barge_in_confirmed(self, now: float) -> list[Action]:
        """A real interruption: as Rule 2, and the cut items' late audio is dropped."""
        s = self._s
        if s.ended is not None or s.apologising is not None:
            return []
        restore: list[Action] = [Duck(0.0)] if s.ducked else []
        s.ducked = False
        if s.muted:
            return restore
        self.counts.interruptions += 1
        s.guard_cut = True
        return [*restore, Flush(report=True), CancelTools(tuple(s.tools))]

    def media_drained(self, now: float) -> list[Action]:
        """The pacer has sent everything queued (after a :class:`WatchDrain`)."""
        s = self._s
        if s.ended is not None:
            return []
        if s.apologising is not None:
            return self._bye(s.apologising)
        if s.amd == "leaving":  # Rule 12
            if self.amd_report is not None:
                self.amd_report.message_done = True
            return self._bye("amd-message")
        wait = s.hangup
        if wait is None or not wait.draining:
            return []
        wait.draining = False
        if wait.overdue or self._goodbye_said(wait, now):
            return self._bye("agent-hangup")
        # the agent spoke again meanwhile: wait for that turn, or for quiet after it
        return [SetTimer(max(s.last_agent_audio, wait.requested) + HANGUP_QUIET_S, HANGUP_QUIET)]

    def rtp_timeout(self, now: float) -> list[Action]:
        """No RTP from the caller for the inactivity timeout."""
        return self._bye("rtp-timeout")

    # ------------------------------------------------------------------ tools

    def _start_tool(self, call: ToolCall, now: float) -> list[Action]:
        self.counts.tool_calls += 1
        self._s.tools[call.id] = call
        actions: list[Action] = [StartTool(call)]
        if self._filler_after_s is not None:
            self._s.filler_due.add(call.id)
            actions.append(SetTimer(now + self._filler_after_s, FILLER + call.id))
        return actions

    def tool_finished(
        self, call_id: str, output: object, now: float, *, cancelled: bool = False
    ) -> list[Action]:
        """A tool call's outcome (Rule 4): its result goes to the provider."""
        s = self._s
        call = s.tools.pop(call_id, None)
        s.filler_due.discard(call_id)
        if call is None or cancelled or s.ended is not None:
            return []
        if call.name == HANDOFF_TOOL and s.handing_off is not None:  # Rule 15
            self._fallbacks, s.handing_off, s.session = s.handing_off, None, False
            return [CancelTools(tuple(s.tools)), SwitchProvider(HANDOFF)]
        return [SendToolResult(call_id, call.name, output)]

    def handoff_requested(self, now: float, *, fallbacks: int = 0) -> list[Action]:
        """The ``handoff`` tool asked for the call to go to another agent, who has
        ``fallbacks`` (Rule 15)."""
        if self._s.ended is None and self._s.apologising is None:
            self._s.handing_off = fallbacks
        return []

    def hang_up_requested(self, now: float) -> list[Action]:
        """The agent's hang-up tool ran: BYE after the goodbye (Rule 5)."""
        s = self._s
        if s.ended is not None or s.hangup is not None:
            return []
        s.hangup = _HangupWait(requested=now)
        return [
            SetTimer(now + HANGUP_WAIT_S, HANGUP_DEADLINE),
            SetTimer(max(s.last_agent_audio, now) + HANGUP_QUIET_S, HANGUP_QUIET),
            *self._hangup_check(now),
        ]

    # ------------------------------------------------------------------ SIP facts, DTMF

    def dtmf(self, digit: str, now: float) -> list[Action]:
        """A caller keypress: a route-level action, or text for the model."""
        if self._s.ended is not None:
            return []
        action = self._dtmf.get(digit)
        if isinstance(action, Transfer):
            if self._s.transfer is not None:
                return []
            self._s.transfer = _Transfer(action.uri, None)
            return [Refer(action.uri)]
        if isinstance(action, HangUp):
            return self._bye("dtmf-hangup")
        if self._s.session:
            return [SendText(f"The caller pressed the key {digit}.")]
        return []

    def transfer_requested(
        self, uri: str, request: str, now: float, *, warm: bool = False
    ) -> list[Action]:
        """A tool asks to transfer the caller to ``uri`` (Rule 7; ``warm``: Rule 9);
        ``request`` names its :class:`TransferDone`."""
        s = self._s
        if s.ended is not None:
            return [TransferDone(request, "the call has ended", False)]
        if s.transfer is not None:
            return [TransferDone(request, "another transfer is in progress", False)]
        s.transfer = _Transfer(uri, request, warm=warm)
        if not warm:
            return [Refer(uri)]
        s.muted = True
        return [Flush(), PlayPrompt("hold"), SetTimer(now + HOLD_TICK_S, HOLD), Consult(uri)]

    def consult_answered(self, now: float) -> list[Action]:
        """The warm transfer's target answered (Rule 9): brief it."""
        t = self._s.transfer
        if self._s.ended is not None or t is None or not t.warm:
            return [EndConsult()]
        t.consulting = True
        return [Brief()]

    def consult_failed(self, status: int | None, now: float) -> list[Action]:
        """The warm transfer's target did not answer: ``status`` (None: no answer at all)."""
        t = self._s.transfer
        if self._s.ended is not None or t is None or not t.warm:
            return []
        outcome = "no answer" if status is None else transfer_outcome(status)
        return [Flush(), *self._transfer_failed(outcome)]

    def consult_briefed(self, now: float) -> list[Action]:
        """The briefing played to the target (Rule 9): hand the caller over (REFER + Replaces)."""
        t = self._s.transfer
        if self._s.ended is not None or t is None or not t.consulting:
            return []
        return [Refer(t.uri, replaces=True)]

    def consult_ended(self, now: float) -> list[Action]:
        """The consultation call ended by itself before the handover (the target hung up)."""
        t = self._s.transfer
        if self._s.ended is not None or t is None or not t.consulting or t.deadline is not None:
            return []
        t.consulting = False
        return [Flush(), *self._transfer_failed("the target hung up")]

    def refer_accepted(self, now: float) -> list[Action]:
        """The peer accepted our REFER (Rule 7): mute, flush, wait for the final NOTIFY."""
        s = self._s
        if s.ended is not None or s.transfer is None:
            return []
        s.muted = True
        s.transfer.deadline = now + self._transfer_timeout_s
        return [Flush(), SetTimer(s.transfer.deadline, TRANSFER)]  # (a warm one's hold audio too)

    def refer_refused(self, status: int | None, now: float) -> list[Action]:
        """The peer refused our REFER (``status``) or never answered it (None), Rule 7."""
        s = self._s
        if s.ended is not None or s.transfer is None or s.transfer.deadline is not None:
            return []
        return self._transfer_failed(
            "no answer to the REFER" if status is None else f"refused ({status})"
        )

    def refer_final(self, status: int, now: float) -> list[Action]:
        """The REFER's final NOTIFY (the transfer target's answer), Rule 7: a 2xx ends our leg
        (RFC 5589), anything else gives the caller back to the agent."""
        t = self._s.transfer
        if self._s.ended is not None or t is None or t.deadline is None:
            return []
        if status >= 300:
            return self._transfer_failed(transfer_outcome(status))
        return [TransferDone(t.request, "transferred", True), *self._bye("transferred")]

    def _transfer_failed(self, outcome: str) -> list[Action]:
        s = self._s
        t = s.transfer
        assert t is not None
        s.transfer = None
        s.muted = s.apologising is not None
        done: list[Action] = [TransferDone(t.request, outcome, False)]
        if t.consulting:
            done = [Flush(), EndConsult(), *done]
        if t.request is not None or not s.session:
            return done
        return [
            *done,
            SendText(
                f"The caller pressed a key to be transferred to {t.uri}, but the transfer did "
                f"not happen: {outcome}. The caller is still on the line with you; tell them."
            ),
        ]

    # ------------------------------------------------------------------ answering machines

    def amd_verdict(
        self, result: AmdResult, cause: str, after_ms: int | None, now: float
    ) -> list[Action]:
        """The detector's verdict, ``after_ms`` of callee audio (Rule 11)."""
        s, policy, report = self._s, self._amd, self.amd_report
        if s.ended is not None or s.amd != "detecting" or policy is None or report is None:
            return []
        action: AmdAction = "talk"
        if result == "machine":
            action = policy.on_machine
        elif result == "unknown":
            action = policy.on_unknown
        report.result, report.cause, report.decision_ms, report.action = (
            result,
            cause,
            after_ms,
            action,
        )
        if after_ms is not None:
            s.amd_origin = now - after_ms / 1000
        if action == "hangup":
            s.amd = None
            return [StopDetecting(), *self._bye(f"amd-{result}")]
        if action == "talk":
            s.amd = None
            return [StopDetecting(), *self._open()]
        s.amd = "awaiting-beep"
        return [SetTimer(now + AMD_BEEP_WAIT_S, AMD_BEEP_WAIT)]

    def amd_beep(self, end_ms: int, now: float) -> list[Action]:
        """The detector heard a beep end at ``end_ms`` (Rule 12)."""
        if self.amd_report is not None and self.amd_report.beep_ms is None:
            self.amd_report.beep_ms = end_ms
        if self._s.ended is not None or self._s.amd != "awaiting-beep":
            return []
        return self._leave_message(now)

    def amd_greeting_ended(self, after_ms: int, now: float) -> list[Action]:
        """A machine's greeting ended without a beep (Rule 12)."""
        if self.amd_report is not None:
            self.amd_report.greeting_end_ms = after_ms
        if self._s.ended is not None or self._s.amd != "awaiting-beep":
            return []
        return self._leave_message(now)

    def _leave_message(self, now: float) -> list[Action]:
        s, policy, report = self._s, self._amd, self.amd_report
        assert policy is not None
        assert report is not None
        s.amd, s.message_started = "leaving", now
        origin = s.amd_origin
        report.message_ms = None if origin is None else round((now - origin) * 1000)
        actions: list[Action] = [
            StopDetecting(forward=False),
            SetTimer(now + AMD_MESSAGE_TIMEOUT_S, AMD_MESSAGE),
        ]
        if policy.spoken_message:
            s.opening = True
            return [*actions, OpenProvider(message=True)]
        return [*actions, PlayPrompt("message"), WatchDrain()]

    def _message_check(self) -> list[Action]:
        """A turn completed while leaving a message: once the agent spoke, wait for the drain."""
        s = self._s
        started = s.message_started
        if started is None or s.last_agent_audio < started:
            return []
        return [WatchDrain()]

    # ------------------------------------------------------------------ timers

    def timer_fired(self, kind: str, now: float, queued_ms: int) -> list[Action]:
        """A :class:`SetTimer` came due; ``queued_ms`` is what the pacer holds now."""
        s = self._s
        if s.ended is not None:
            return []
        if kind == MAX_DURATION:
            return self._bye("max-duration")
        if kind == APOLOGY and s.apologising is not None:
            return self._bye(s.apologising)
        if kind == HOLD:
            t = s.transfer
            if t is None or not t.warm or t.deadline is not None:
                return []  # the hold is over (the caller is back, or being handed over)
            top_up: list[Action] = [PlayPrompt("hold")] if queued_ms < HOLD_LOW_MS else []
            return [*top_up, SetTimer(now + HOLD_TICK_S, HOLD)]
        if kind == TRANSFER:
            t = s.transfer
            if t is None or t.deadline is None:
                return []
            if now < t.deadline:  # the loop may fire a hair early: look again then
                return [SetTimer(t.deadline, TRANSFER)]
            return self._transfer_failed(f"no final NOTIFY within {self._transfer_timeout_s:g} s")
        if kind.startswith(FILLER):
            return self._filler(kind[len(FILLER) :], queued_ms)
        if kind == AMD_DEADLINE and s.amd == "detecting":
            return self.amd_verdict("unknown", "no-audio", None, now)
        if kind == AMD_BEEP_WAIT and s.amd == "awaiting-beep":
            return self._leave_message(now)
        if kind == AMD_MESSAGE and s.amd == "leaving":
            return self._bye("amd-message")
        if kind == RECOVERY_FILLER:
            return self._recovery_filler(now, queued_ms)
        wait = s.hangup
        if wait is None:
            return []
        if kind == HANGUP_QUIET:
            quiet_at = max(s.last_agent_audio, wait.requested) + HANGUP_QUIET_S
            if now < quiet_at:  # the agent spoke since: look again later
                return [SetTimer(quiet_at, HANGUP_QUIET)]
            return self._hangup_check(now)
        if kind == HANGUP_DEADLINE:
            wait.overdue = True
            return [*self._watch_drain(wait), SetTimer(now + HANGUP_GRACE_S, HANGUP_GRACE)]
        if kind == HANGUP_GRACE:
            return self._bye("agent-hangup")
        return []

    def _filler(self, call_id: str, queued_ms: int) -> list[Action]:
        s = self._s
        if call_id not in s.filler_due:
            return []
        s.filler_due.discard(call_id)  # Rule 6: once, whether it plays or not
        if s.muted or queued_ms > 0:  # only into silence
            return []
        return [PlayPrompt("filler")]

    def _recovery_filler(self, now: float, queued_ms: int) -> list[Action]:
        s = self._s
        if not s.recovery_filler or s.muted:
            return []
        if queued_ms > 0:  # the agent's last words still play: the filler comes after them
            return [SetTimer(now + queued_ms / 1000, RECOVERY_FILLER)]
        s.recovery_filler = False
        return [PlayPrompt("filler")]

    # ------------------------------------------------------------------ endings

    def _goodbye_said(self, wait: _HangupWait, now: float) -> bool:
        s = self._s
        spoke = s.last_agent_audio > wait.requested
        quiet = now - max(s.last_agent_audio, wait.requested) >= HANGUP_QUIET_S
        return (spoke and s.turn_done) or quiet

    def _hangup_check(self, now: float) -> list[Action]:
        wait = self._s.hangup
        if wait is None or wait.draining or not self._goodbye_said(wait, now):
            return []
        return self._watch_drain(wait)

    def _watch_drain(self, wait: _HangupWait) -> list[Action]:
        if wait.draining:
            return []
        wait.draining = True
        return [WatchDrain()]

    def _apologise(self, reason: str, now: float) -> list[Action]:
        s = self._s
        if s.ended is not None or s.apologising is not None:
            return []
        s.apologising = reason
        s.muted = True
        return [
            Flush(),
            PlayPrompt("apology"),
            WatchDrain(),
            SetTimer(now + APOLOGY_TIMEOUT_S, APOLOGY),
        ]

    def _bye(self, reason: str) -> list[Action]:
        if self._s.ended is not None:
            return []
        self._s.ended = reason
        return [Hangup(), End(reason)]


def transfer_outcome(status: int) -> str:
    """A transfer target's final status in words (Rule 7): "transferred", "busy (486)"..."""
    if 200 <= status < 300:
        return "transferred"
    if status in (486, 600):
        return f"busy ({status})"
    if status in (408, 480, 487):
        return f"no answer ({status})"
    if status in (403, 603):
        return f"refused ({status})"
    return f"failed ({status})"
