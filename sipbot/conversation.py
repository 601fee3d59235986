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
* Rule 7: an accepted transfer mutes the agent and flushes; BYE follows the REFER's final NOTIFY,
  or TRANSFER_NOTIFY_TIMEOUT_S after the acceptance if none came.
* Rule 8: the provider session opens once, on the first of: the call is confirmed (ACK), the
  caller's first audio arrived (an INVITE never ACKed costs no model session).
* Rule 9: a stall (``ProviderStalled``: the session resumes by itself) or a provider switch
  starts a recovery: the caller hears the filler once, into silence (after what the pacer still
  holds), never while muted; the recovery ends with the next agent audio. The record counts
  stalls and the recovery time (from its start to that audio).
* Rule 10: a provider that is lost for good (``ProviderFailed``, or unavailable, closed, broken)
  while a fallback is left is not Rule 3: running tools are cancelled and the call switches
  (:class:`SwitchProvider`) to the fallback, seeded with the conversation so far; Rule 3 applies
  once no fallback is left.
* Rule 11: a handoff (the ``handoff`` tool asked for it) switches the call to the other agent
  once that tool has finished: its result goes to no model; the other tools are cancelled; the
  fallbacks left (Rule 10) are from then on the other agent's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sipbot.dialplan import DtmfAction, HangUp, Transfer
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
TRANSFER_NOTIFY_TIMEOUT_S = 10.0  # longest we wait for the REFER's final NOTIFY before BYE

Prompt = Literal["apology", "filler"]

# timer kinds (a filler timer is "filler:" + the tool call id)
MAX_DURATION = "max-duration"
HANGUP_QUIET = "hangup-quiet"
HANGUP_DEADLINE = "hangup-deadline"
HANGUP_GRACE = "hangup-grace"
APOLOGY = "apology"
TRANSFER = "transfer"
FILLER = "filler:"
RECOVERY_FILLER = "recovery-filler"
HANDOFF_TOOL = "handoff"
HANDOFF = "handoff"  # the SwitchProvider reason of Rule 11


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class OpenProvider:
    """Open the provider session (Rule 8); report with ``provider_opened`` / ``_unavailable``."""


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
    """Blind-transfer the caller (REFER); report with ``refer_accepted`` / ``_refused``."""

    uri: str


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
    """Close the provider session and open the next one, seeded: the fallback (Rule 10), or
    the handoff's agent when ``reason`` is HANDOFF (Rule 11); report with ``provider_opened``
    / ``provider_lost``."""

    reason: str


Action = (
    OpenProvider
    | Play
    | PlayPrompt
    | Flush
    | WatchDrain
    | Truncate
    | StartTool
    | CancelTools
    | SendToolResult
    | SendText
    | Refer
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
    recovery_ms: int = 0  # Rule 9: from each stall or switch to the next agent audio
    switches: int = 0


@dataclass(slots=True)
class _HangupWait:
    """A pending agent hang-up (Rule 5)."""

    requested: float
    draining: bool = False  # a WatchDrain is out
    overdue: bool = False  # HANGUP_WAIT_S passed: BYE on drain or at HANGUP_GRACE_S


@dataclass(slots=True)
class _State:
    ended: str | None = None
    opening: bool = False
    session: bool = False  # the provider session is open
    muted: bool = False  # after a transfer or an apology, agent audio is dropped
    apologising: str | None = None  # the reason to end with once the apology played out
    transferring: bool = False
    last_agent_audio: float = 0.0
    turn_done: bool = False
    hangup: _HangupWait | None = None
    tools: dict[str, ToolCall] = field(default_factory=dict)  # running, by call id
    filler_due: set[str] = field(default_factory=set)  # running tools whose filler timer is out
    recovering: float | None = None  # when the current stall or switch began (Rule 9)
    recovery_filler: bool = False  # the recovery's filler is still to play
    handing_off: int | None = None  # a handoff is pending: the other agent's fallbacks (Rule 11)


class Conversation:
    """One call's conversation rules (see the module docstring).

    Args:
        dtmf: route-level keypress actions (other digits go to the model as text).
        max_duration_s: the call is ended this long after :meth:`start`.
        filler_after_s: a tool running this long gets the filler (Rule 6); None → no filler.
        fallbacks: providers left to switch to when the provider is lost (Rule 10).
    """

    def __init__(
        self,
        *,
        dtmf: Mapping[str, DtmfAction] | None = None,
        max_duration_s: float | None = None,
        filler_after_s: float | None = None,
        fallbacks: int = 0,
    ) -> None:
        self._fallbacks = fallbacks
        self._dtmf = dict(dtmf or {})
        self._max_duration_s = max_duration_s
        self._filler_after_s = filler_after_s
        self._s = _State()
        self.counts = Counts()

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
        """The call is answered: arm the maximum duration."""
        if self._max_duration_s is None or self._s.ended is not None:
            return []
        return [SetTimer(now + self._max_duration_s, MAX_DURATION)]

    def confirmed(self, now: float) -> list[Action]:
        """The ACK arrived (Rule 8)."""
        return self._open()

    def caller_audio(self, now: float) -> list[Action]:
        """The caller's first audio arrived (Rule 8); later calls return nothing."""
        return self._open()

    def _open(self) -> list[Action]:
        if self._s.opening or self._s.ended is not None:
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
        """The provider is unavailable, closed or broke: switch (Rule 10), else apologise."""
        return self._switch(reason, now) or self._apologise(reason, now)

    def provider_event(self, event: ProviderEvent, now: float) -> list[Action]:
        """One provider event (transcripts and notices need no action here)."""
        s = self._s
        if s.ended is not None or s.apologising is not None:
            return []
        if isinstance(event, AudioOut):
            if s.muted:
                return []
            s.last_agent_audio = now
            s.turn_done = False
            if s.recovering is not None:  # Rule 9: recovered
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
            self.counts.turns += 1
            s.turn_done = True
            return self._hangup_check(now)
        if isinstance(event, ProviderFailed):
            return self._switch("provider-failed", now) or self._apologise("provider-failed", now)
        if isinstance(event, ProviderStalled):
            self.counts.stalls += 1
            return self._recover(now)
        return []

    def _recover(self, now: float) -> list[Action]:
        """Rule 9: a recovery begins (or goes on): the filler once, into silence."""
        s = self._s
        if s.recovering is not None:
            return []
        s.recovering, s.recovery_filler = now, True
        return [SetTimer(now, RECOVERY_FILLER)]

    def _switch(self, reason: str, now: float) -> list[Action]:
        """Rule 10: on to the fallback, if one is left (else nothing: Rule 3 applies)."""
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
        return [Truncate(item_id, ms) for item_id, ms in heard.items()]

    def media_drained(self, now: float) -> list[Action]:
        """The pacer has sent everything queued (after a :class:`WatchDrain`)."""
        s = self._s
        if s.ended is not None:
            return []
        if s.apologising is not None:
            return self._bye(s.apologising)
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
        if call.name == HANDOFF_TOOL and s.handing_off is not None:  # Rule 11
            self._fallbacks, s.handing_off, s.session = s.handing_off, None, False
            return [CancelTools(tuple(s.tools)), SwitchProvider(HANDOFF)]
        return [SendToolResult(call_id, call.name, output)]

    def handoff_requested(self, now: float, *, fallbacks: int = 0) -> list[Action]:
        """The ``handoff`` tool asked for the call to go to another agent, who has
        ``fallbacks`` (Rule 11)."""
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
            return [Refer(action.uri)]
        if isinstance(action, HangUp):
            return self._bye("dtmf-hangup")
        if self._s.session:
            return [SendText(f"The caller pressed the key {digit}.")]
        return []

    def refer_accepted(self, now: float) -> list[Action]:
        """The peer accepted our REFER (Rule 7): mute, flush, wait for the final NOTIFY."""
        s = self._s
        if s.ended is not None:
            return []
        s.muted = s.transferring = True
        return [Flush(), SetTimer(now + TRANSFER_NOTIFY_TIMEOUT_S, TRANSFER)]

    def refer_final(self, status: int, now: float) -> list[Action]:
        """The REFER's final NOTIFY (the transfer target's answer): BYE (RFC 5589)."""
        if not self._s.transferring:
            return []
        return self._bye("transferred")

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
        if kind == TRANSFER and s.transferring:
            return self._bye("transferred")
        if kind.startswith(FILLER):
            return self._filler(kind[len(FILLER) :], queued_ms)
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
