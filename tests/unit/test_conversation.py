"""The conversation core: provider events, media and SIP facts, timers in; actions out (no I/O)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sipbot.conversation
from sipbot.conversation import (
    AMD_BEEP_WAIT,
    AMD_BEEP_WAIT_S,
    AMD_DEADLINE,
    AMD_MESSAGE,
    AMD_MESSAGE_TIMEOUT_S,
    AMD_NO_AUDIO_GRACE_S,
    APOLOGY,
    APOLOGY_TIMEOUT_S,
    FILLER,
    GUARD_CUT_DROP_S,
    GUARD_DUCK_DB,
    HANGUP_DEADLINE,
    HANGUP_GRACE,
    HANGUP_GRACE_S,
    HANGUP_QUIET,
    HANGUP_QUIET_S,
    HANGUP_WAIT_S,
    HOLD,
    HOLD_LOW_MS,
    HOLD_TICK_S,
    MAX_DURATION,
    RECOVERY_FILLER,
    TRANSFER,
    TRANSFER_NOTIFY_TIMEOUT_S,
    AmdPolicy,
    AmdResult,
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
    transfer_outcome,
)
from sipbot.dialplan import HangUp, Transfer
from sipbot.providers.base import (
    AudioOut,
    Interrupted,
    ProviderFailed,
    ProviderNotice,
    ProviderStalled,
    ToolCall,
    ToolCallCancelled,
    Transcript,
    TurnComplete,
)

LOOKUP = ToolCall("t1", "lookup", {"q": "x"})
HANG_UP = ToolCall("t2", "hang_up", {})


def opened(**kwargs: object) -> Conversation:
    """A conversation whose call is confirmed and whose provider session is open."""
    core = Conversation(**kwargs)  # type: ignore[arg-type]
    assert core.confirmed(0.0) == [OpenProvider()]
    assert core.provider_opened(0.0) == []
    return core


# --------------------------------------------------------------------------- Rule 8: opening


def test_the_provider_opens_once_on_the_ack_or_the_first_caller_audio() -> None:
    core = Conversation(max_duration_s=60.0)
    assert core.start(1.0) == [SetTimer(61.0, MAX_DURATION)]  # no model session yet
    assert core.caller_audio(1.2) == [OpenProvider()]
    assert core.confirmed(1.3) == []
    assert core.caller_audio(1.4) == []

    acked = Conversation()
    assert acked.start(0.0) == []
    assert acked.confirmed(0.1) == [OpenProvider()]
    assert acked.caller_audio(0.2) == []


def test_a_call_that_ends_before_the_ack_opens_no_provider() -> None:
    core = Conversation()
    assert core.dialog_ended("timeout", 32.0) == [End("timeout")]
    assert core.confirmed(32.0) == []
    assert core.caller_audio(32.0) == []


# --------------------------------------------------------------------------- Rule 1: endings


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (lambda c: c.dialog_ended("bye-received", 5.0), "bye-received"),
        (lambda c: c.hang_up_now("shutdown", 5.0), "shutdown"),
        (lambda c: c.rtp_timeout(5.0), "rtp-timeout"),
        (lambda c: c.timer_fired(MAX_DURATION, 5.0, 0), "max-duration"),
        (lambda c: c.dtmf("0", 5.0), "dtmf-hangup"),
    ],
)
def test_every_end_reason_is_recorded_once_and_the_first_wins(first, reason) -> None:  # type: ignore[no-untyped-def]
    core = opened(max_duration_s=5.0, dtmf={"0": HangUp()})
    actions = first(core)
    ends = [a for a in actions if isinstance(a, End)]
    assert ends == [End(reason)]
    assert core.ended == reason
    # whatever comes next changes nothing: no second End, no BYE, no more actions at all
    assert core.dialog_ended("bye-sent", 6.0) == []
    assert core.hang_up_now("shutdown", 6.0) == []
    assert core.rtp_timeout(6.0) == []
    assert core.timer_fired(MAX_DURATION, 6.0, 0) == []
    assert core.provider_lost("provider-closed", 6.0) == []
    assert core.provider_event(AudioOut(b"\0\0", "i"), 6.0) == []
    assert core.dtmf("0", 6.0) == []
    assert core.ended == reason


def test_our_own_hang_up_sends_bye_then_ends() -> None:
    core = opened()
    assert core.rtp_timeout(3.0) == [Hangup(), End("rtp-timeout")]


def test_the_callers_bye_ends_without_a_bye_of_ours() -> None:
    core = opened()
    assert core.dialog_ended("bye-received", 3.0) == [End("bye-received")]


# --------------------------------------------------------------------------- Rule 2: barge-in


def test_barge_in_flushes_cancels_running_tools_and_truncates_each_cut_item() -> None:
    core = opened()
    assert core.provider_event(AudioOut(b"a" * 480, "item-1"), 1.0) == [Play(b"a" * 480, "item-1")]
    assert core.provider_event(LOOKUP, 1.1) == [StartTool(LOOKUP)]
    assert core.provider_event(ToolCall("t3", "other", {}), 1.2) == [
        StartTool(ToolCall("t3", "other", {}))
    ]
    actions = core.provider_event(Interrupted("item-1"), 1.5)
    assert actions == [Flush(report=True), CancelTools(("t1", "t3"))]
    heard = {"item-1": 480, "item-2": 20}
    assert core.media_flushed(heard, 1.5) == [Truncate("item-1", 480), Truncate("item-2", 20)]
    assert core.counts.interruptions == 1


def test_a_cancelled_tools_result_is_not_sent() -> None:
    core = opened()
    core.provider_event(LOOKUP, 1.0)
    core.provider_event(Interrupted(), 1.1)
    assert core.tool_finished("t1", None, 1.2, cancelled=True) == []
    assert core.running_tools == ()


def test_barge_in_with_nothing_playing_truncates_nothing() -> None:
    core = opened()
    assert core.provider_event(Interrupted(), 1.0) == [Flush(report=True), CancelTools(())]
    assert core.media_flushed({}, 1.0) == []


# --------------------------------------------------------------------------- Rule 4: tools


def test_tool_results_go_back_to_the_provider_and_counts_are_kept() -> None:
    core = opened()
    assert core.provider_event(LOOKUP, 1.0) == [StartTool(LOOKUP)]
    assert core.running_tools == ("t1",)
    assert core.tool_finished("t1", {"a": 1}, 1.5) == [SendToolResult("t1", "lookup", {"a": 1})]
    assert core.tool_finished("t1", {"a": 1}, 1.6) == []  # once
    assert core.provider_event(ToolCallCancelled(("t9",)), 1.7) == [CancelTools(("t9",))]
    assert core.provider_event(TurnComplete(), 2.0) == []
    assert core.provider_event(Transcript("caller", "hi"), 2.0) == []
    assert core.provider_event(ProviderNotice("resumed"), 2.0) == []
    assert (core.counts.turns, core.counts.tool_calls) == (1, 1)


def test_a_tool_that_finishes_after_the_end_sends_nothing() -> None:
    core = opened()
    core.provider_event(LOOKUP, 1.0)
    core.dialog_ended("bye-received", 1.1)
    assert core.tool_finished("t1", "late", 1.2) == []


# --------------------------------------------------------------------------- Rule 3: apology


@pytest.mark.parametrize("reason", ["provider-unavailable", "provider-error", "provider-closed"])
def test_a_lost_provider_plays_the_apology_then_hangs_up(reason: str) -> None:
    core = Conversation()
    core.confirmed(0.0)
    assert core.provider_lost(reason, 2.0) == [
        Flush(),
        PlayPrompt("apology"),
        WatchDrain(),
        SetTimer(2.0 + APOLOGY_TIMEOUT_S, APOLOGY),
    ]
    assert not core.listening
    assert core.ended is None  # not before the apology has played
    assert core.media_drained(4.5) == [Hangup(), End(reason)]


def test_a_provider_failure_mutes_the_agent_apologises_and_hangs_up_once() -> None:
    core = opened()
    core.provider_event(AudioOut(b"x" * 96, "i1"), 1.0)
    actions = core.provider_event(ProviderFailed("gone"), 1.2)
    assert actions[:2] == [Flush(), PlayPrompt("apology")]
    assert core.provider_event(AudioOut(b"x" * 96, "i1"), 1.3) == []  # muted
    assert core.provider_lost("provider-closed", 1.4) == []  # one apology
    assert core.media_drained(3.0) == [Hangup(), End("provider-failed")]


def test_an_apology_that_never_drains_is_bounded() -> None:
    core = opened()
    core.provider_lost("provider-closed", 2.0)
    assert core.timer_fired(APOLOGY, 2.0 + APOLOGY_TIMEOUT_S, 960) == [
        Hangup(),
        End("provider-closed"),
    ]


# --------------------------------------------------------------------------- Rule 5: hang-up


def test_hang_up_waits_for_the_goodbye_turn_and_its_playout() -> None:
    core = opened()
    assert core.provider_event(HANG_UP, 1.0) == [StartTool(HANG_UP)]
    assert core.hang_up_requested(1.0) == [
        SetTimer(1.0 + HANGUP_WAIT_S, HANGUP_DEADLINE),
        SetTimer(1.0 + HANGUP_QUIET_S, HANGUP_QUIET),
    ]
    core.tool_finished("t2", "the call will end", 1.01)
    assert core.provider_event(AudioOut(b"g" * 960, "bye"), 1.2) == [Play(b"g" * 960, "bye")]
    assert core.provider_event(AudioOut(b"g" * 960, "bye"), 1.4) == [Play(b"g" * 960, "bye")]
    # the quiet timer comes due while the agent speaks: look again later
    assert core.timer_fired(HANGUP_QUIET, 3.0, 500) == [
        SetTimer(1.4 + HANGUP_QUIET_S, HANGUP_QUIET)
    ]
    assert core.provider_event(TurnComplete(), 1.5) == [WatchDrain()]
    assert core.ended is None  # the goodbye is still playing
    assert core.media_drained(2.6) == [Hangup(), End("agent-hangup")]


def test_hang_up_after_a_goodbye_said_first_comes_after_hangup_quiet() -> None:
    core = opened()
    core.provider_event(AudioOut(b"g" * 960, "bye"), 1.0)
    core.provider_event(TurnComplete(), 1.1)  # goodbye said, then the tool
    assert core.hang_up_requested(1.5) == [
        SetTimer(1.5 + HANGUP_WAIT_S, HANGUP_DEADLINE),
        SetTimer(1.5 + HANGUP_QUIET_S, HANGUP_QUIET),
    ]
    assert core.timer_fired(HANGUP_QUIET, 1.5 + HANGUP_QUIET_S, 0) == [WatchDrain()]
    assert core.media_drained(3.5) == [Hangup(), End("agent-hangup")]


def test_new_speech_while_draining_waits_for_that_turn() -> None:
    core = opened()
    core.hang_up_requested(1.0)
    assert core.timer_fired(HANGUP_QUIET, 3.0, 0) == [WatchDrain()]
    core.provider_event(AudioOut(b"g" * 960, "more"), 3.01)
    assert core.media_drained(3.5) == [SetTimer(3.01 + HANGUP_QUIET_S, HANGUP_QUIET)]
    assert core.provider_event(TurnComplete(), 3.6) == [WatchDrain()]
    assert core.media_drained(4.0) == [Hangup(), End("agent-hangup")]


def test_hang_up_is_bounded_when_the_agent_never_stops() -> None:
    core = opened()
    core.hang_up_requested(1.0)
    core.provider_event(AudioOut(b"g" * 960, "endless"), 1.5)
    deadline = 1.0 + HANGUP_WAIT_S
    assert core.timer_fired(HANGUP_DEADLINE, deadline, 4000) == [
        WatchDrain(),
        SetTimer(deadline + HANGUP_GRACE_S, HANGUP_GRACE),
    ]
    assert core.timer_fired(HANGUP_GRACE, deadline + HANGUP_GRACE_S, 3900) == [
        Hangup(),
        End("agent-hangup"),
    ]


def test_at_the_hang_up_deadline_a_drained_pacer_hangs_up_at_once() -> None:
    core = opened()
    core.hang_up_requested(1.0)
    core.provider_event(AudioOut(b"g" * 960, "x"), 1.2)
    core.timer_fired(HANGUP_DEADLINE, 16.0, 0)
    assert core.media_drained(16.0) == [Hangup(), End("agent-hangup")]


def test_a_second_hang_up_request_changes_nothing() -> None:
    core = opened()
    core.hang_up_requested(1.0)
    assert core.hang_up_requested(2.0) == []


# --------------------------------------------------------------------------- Rule 6: filler


def test_a_slow_tool_plays_the_filler_once_and_only_into_silence() -> None:
    core = opened(filler_after_s=1.5)
    assert core.provider_event(LOOKUP, 1.0) == [StartTool(LOOKUP), SetTimer(2.5, FILLER + "t1")]
    assert core.timer_fired(FILLER + "t1", 2.5, 0) == [PlayPrompt("filler")]
    assert core.timer_fired(FILLER + "t1", 2.6, 0) == []  # once

    busy = opened(filler_after_s=1.5)
    busy.provider_event(LOOKUP, 1.0)
    assert busy.timer_fired(FILLER + "t1", 2.5, 40) == []  # the agent is still talking
    assert busy.timer_fired(FILLER + "t1", 2.7, 0) == []  # and not later either


def test_a_fast_tool_gets_no_filler() -> None:
    core = opened(filler_after_s=1.5)
    core.provider_event(LOOKUP, 1.0)
    core.tool_finished("t1", "ok", 1.2)
    assert core.timer_fired(FILLER + "t1", 2.5, 0) == []


def test_no_filler_without_a_filler_prompt() -> None:
    core = opened()
    assert core.provider_event(LOOKUP, 1.0) == [StartTool(LOOKUP)]


def test_no_filler_once_muted() -> None:
    core = opened(filler_after_s=1.5)
    core.provider_event(LOOKUP, 1.0)
    core.transfer_requested("sip:desk@example.com", "x1", 1.1)
    core.refer_accepted(1.2)
    assert core.timer_fired(FILLER + "t1", 2.5, 0) == []


# --------------------------------------------------------------------------- DTMF


def test_dtmf_route_actions_and_digits_for_the_model() -> None:
    core = opened(dtmf={"9": Transfer("sip:desk@example.com"), "0": HangUp()})
    assert core.dtmf("9", 1.0) == [Refer("sip:desk@example.com")]
    assert core.dtmf("5", 1.1) == [SendText("The caller pressed the key 5.")]
    assert core.dtmf("0", 1.2) == [Hangup(), End("dtmf-hangup")]
    assert core.dtmf("5", 1.3) == []


def test_dtmf_before_the_provider_is_open_is_dropped() -> None:
    core = Conversation(dtmf={"0": HangUp()})
    assert core.dtmf("5", 0.5) == []
    assert core.dtmf("0", 0.6) == [Hangup(), End("dtmf-hangup")]


# --------------------------------------------------------------------------- Rule 7: transfer


DESK = "sip:desk@example.com"


def transferring(**kwargs: object) -> Conversation:
    """A conversation whose agent's tool asked for a transfer (request "x1") at 1.5."""
    core = opened(**kwargs)
    assert core.transfer_requested(DESK, "x1", 1.5) == [Refer(DESK)]
    return core


def test_an_accepted_transfer_mutes_and_byes_after_a_2xx_final_notify() -> None:
    core = transferring()
    assert core.refer_accepted(2.0) == [
        Flush(),
        SetTimer(2.0 + TRANSFER_NOTIFY_TIMEOUT_S, TRANSFER),
    ]
    assert core.provider_event(AudioOut(b"x" * 96, "i"), 2.1) == []  # muted
    assert core.ended is None
    assert core.refer_final(200, 3.0) == [
        TransferDone("x1", "transferred", True),
        Hangup(),
        End("transferred"),
    ]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(486, "busy (486)"), (600, "busy (600)"), (480, "no answer (480)"),
     (408, "no answer (408)"), (603, "refused (603)"), (404, "failed (404)"),
     (503, "failed (503)")],
)  # fmt: skip
def test_a_failed_target_gives_the_caller_back_to_the_agent(status: int, outcome: str) -> None:
    core = transferring()
    core.refer_accepted(2.0)
    assert core.refer_final(status, 3.0) == [TransferDone("x1", outcome, False)]
    assert core.ended is None
    # unmuted: the agent can say what happened
    assert core.provider_event(AudioOut(b"x" * 96, "sorry"), 3.1) == [Play(b"x" * 96, "sorry")]
    assert core.timer_fired(TRANSFER, 2.0 + TRANSFER_NOTIFY_TIMEOUT_S, 0) == []  # no second word
    assert core.refer_final(200, 4.0) == []  # a late NOTIFY changes nothing


def test_no_final_notify_within_the_bound_gives_the_caller_back() -> None:
    core = transferring(transfer_timeout_s=3.0)
    assert core.refer_accepted(2.0) == [Flush(), SetTimer(5.0, TRANSFER)]
    assert core.timer_fired(TRANSFER, 4.999, 0) == [SetTimer(5.0, TRANSFER)]  # a hair early
    assert core.timer_fired(TRANSFER, 5.0, 0) == [
        TransferDone("x1", "no final NOTIFY within 3 s", False)
    ]
    assert core.ended is None
    assert core.provider_event(AudioOut(b"x", "i"), 5.1) == [Play(b"x", "i")]


def test_a_refused_refer_gives_the_caller_back_with_the_status() -> None:
    core = transferring()
    assert core.refer_refused(403, 2.0) == [TransferDone("x1", "refused (403)", False)]
    core = transferring()
    assert core.refer_refused(None, 2.0) == [TransferDone("x1", "no answer to the REFER", False)]
    assert core.ended is None


def test_one_transfer_at_a_time() -> None:
    core = transferring(dtmf={"9": Transfer("sip:other@example.com")})
    assert core.transfer_requested("sip:other@example.com", "x2", 1.6) == [
        TransferDone("x2", "another transfer is in progress", False)
    ]
    assert core.dtmf("9", 1.7) == []  # a keypress transfer waits its turn too
    core.refer_refused(486, 2.0)
    assert core.transfer_requested(DESK, "x3", 3.0) == [Refer(DESK)]  # the next one may go


def test_a_transfer_request_after_the_end_is_answered_at_once() -> None:
    core = opened()
    core.dialog_ended("bye-received", 1.0)
    assert core.transfer_requested(DESK, "x1", 1.5) == [
        TransferDone("x1", "the call has ended", False)
    ]


def test_a_stale_transfer_timer_does_not_end_the_next_transfer() -> None:
    core = transferring(transfer_timeout_s=3.0)
    core.refer_accepted(2.0)
    core.refer_final(486, 2.5)
    core.transfer_requested(DESK, "x2", 4.0)
    assert core.timer_fired(TRANSFER, 5.0, 0) == []  # the first one's: REFER 2 not accepted
    assert core.refer_accepted(6.0) == [Flush(), SetTimer(9.0, TRANSFER)]


def test_a_keypress_transfer_that_fails_is_told_to_the_model() -> None:
    core = opened(dtmf={"9": Transfer(DESK)})
    assert core.dtmf("9", 1.0) == [Refer(DESK)]
    core.refer_accepted(1.5)
    assert core.refer_final(486, 2.0) == [
        TransferDone(None, "busy (486)", False),
        SendText(
            "The caller pressed a key to be transferred to sip:desk@example.com, but the "
            "transfer did not happen: busy (486). The caller is still on the line with you; "
            "tell them."
        ),
    ]
    assert core.provider_event(AudioOut(b"x", "i"), 2.1) == [Play(b"x", "i")]
    assert core.dtmf("9", 3.0) == [Refer(DESK)]
    core.refer_accepted(3.5)
    assert core.refer_final(202, 4.0) == [
        TransferDone(None, "transferred", True),
        Hangup(),
        End("transferred"),
    ]


def test_a_failed_transfer_during_the_apology_stays_muted() -> None:
    core = transferring()
    core.refer_accepted(2.0)
    core.provider_lost("provider-closed", 2.5)
    assert core.refer_final(486, 3.0) == [TransferDone("x1", "busy (486)", False)]
    assert core.provider_event(AudioOut(b"x", "i"), 3.1) == []


# --------------------------------------------------------------------------- Rule 9: warm


def consulting() -> Conversation:
    """A warm transfer to DESK (request "w1") whose target answered and was briefed."""
    core = opened()
    assert core.transfer_requested(DESK, "w1", 1.0, warm=True) == [
        Flush(),
        PlayPrompt("hold"),
        SetTimer(1.0 + HOLD_TICK_S, HOLD),
        Consult(DESK),
    ]
    assert core.provider_event(AudioOut(b"x", "i"), 1.1) == []  # the agent is muted
    assert core.consult_answered(3.0) == [Brief()]
    assert core.consult_briefed(5.0) == [Refer(DESK, replaces=True)]
    return core


def test_a_warm_transfer_calls_briefs_and_hands_over_with_replaces() -> None:
    core = consulting()
    core.refer_accepted(5.1)
    assert core.consult_ended(5.5) == []  # the target ends our consultation call (Replaces)
    assert core.refer_final(200, 5.6) == [
        TransferDone("w1", "transferred", True),
        Hangup(),
        End("transferred"),
    ]


def test_the_hold_audio_is_topped_up_until_the_handover() -> None:
    core = opened()
    core.transfer_requested(DESK, "w1", 1.0, warm=True)
    assert core.timer_fired(HOLD, 2.0, HOLD_LOW_MS) == [SetTimer(2.0 + HOLD_TICK_S, HOLD)]
    assert core.timer_fired(HOLD, 3.0, HOLD_LOW_MS - 1) == [
        PlayPrompt("hold"),
        SetTimer(3.0 + HOLD_TICK_S, HOLD),
    ]
    core.consult_answered(3.5)
    core.consult_briefed(3.6)
    assert core.timer_fired(HOLD, 4.0, 0) == [PlayPrompt("hold"), SetTimer(5.0, HOLD)]
    core.refer_accepted(4.5)
    assert core.timer_fired(HOLD, 5.0, 0) == []  # handed over: the hold is over


def test_a_warm_transfer_whose_target_does_not_answer_goes_back_to_the_agent() -> None:
    core = opened()
    core.transfer_requested(DESK, "w1", 1.0, warm=True)
    assert core.consult_failed(486, 2.0) == [Flush(), TransferDone("w1", "busy (486)", False)]
    assert core.provider_event(AudioOut(b"x", "i"), 2.1) == [Play(b"x", "i")]
    assert core.timer_fired(HOLD, 2.2, 0) == []  # no more hold audio
    core.transfer_requested(DESK, "w2", 3.0, warm=True)
    assert core.consult_failed(None, 33.0) == [Flush(), TransferDone("w2", "no answer", False)]


def test_a_warm_transfer_whose_refer_fails_ends_the_consultation_call() -> None:
    core = consulting()
    core.refer_accepted(5.1)
    assert core.refer_final(603, 6.0) == [
        Flush(),
        EndConsult(),
        TransferDone("w1", "refused (603)", False),
    ]
    core = consulting()
    assert core.refer_refused(405, 5.1) == [
        Flush(),
        EndConsult(),
        TransferDone("w1", "refused (405)", False),
    ]


def test_the_target_hanging_up_during_the_briefing_goes_back_to_the_agent() -> None:
    core = opened()
    core.transfer_requested(DESK, "w1", 1.0, warm=True)
    core.consult_answered(3.0)
    assert core.consult_ended(4.0) == [Flush(), TransferDone("w1", "the target hung up", False)]
    assert core.consult_briefed(5.0) == []  # no REFER for a call that is gone


def test_a_consultation_answered_after_the_call_ended_is_hung_up() -> None:
    core = opened()
    core.transfer_requested(DESK, "w1", 1.0, warm=True)
    core.dialog_ended("bye-received", 2.0)
    assert core.consult_answered(3.0) == [EndConsult()]


def test_transfer_outcome_words() -> None:
    assert transfer_outcome(200) == "transferred"
    assert transfer_outcome(486) == "busy (486)"
    assert transfer_outcome(487) == "no answer (487)"
    assert transfer_outcome(500) == "failed (500)"


def test_a_notify_without_an_accepted_refer_does_nothing() -> None:
    core = opened()
    assert core.refer_final(200, 1.0) == []
    assert core.timer_fired(TRANSFER, 1.0, 0) == []
    assert core.refer_accepted(1.0) == []
    core = transferring()
    assert core.refer_final(200, 1.6) == []  # before the 202: not ours yet


# --------------------------------------------------------------------------- Rules 9-10: AMD


def detecting(**policy: object) -> Conversation:
    """A conversation with answering-machine detection, answered at 0 and confirmed."""
    core = Conversation(amd=AmdPolicy(**policy))  # type: ignore[arg-type]
    assert core.start(0.0) == [
        DetectMachine(5.0),
        SetTimer(5.0 + AMD_NO_AUDIO_GRACE_S, AMD_DEADLINE),
    ]
    assert core.confirmed(0.1) == []  # Rule 9: the provider waits for the verdict
    assert core.caller_audio(0.2) == []
    return core


def test_a_human_verdict_stops_the_detector_and_opens_the_provider() -> None:
    core = detecting(on_machine="hangup")
    assert core.amd_verdict("human", "silence-after-greeting", 1500, 2.0) == [
        StopDetecting(),
        OpenProvider(),
    ]
    assert core.confirmed(2.1) == []  # once
    assert core.timer_fired(AMD_DEADLINE, 8.0, 0) == []  # the deadline is moot
    assert core.amd_report is not None
    assert core.amd_report.as_dict() == {
        "result": "human",
        "cause": "silence-after-greeting",
        "decision_ms": 1500,
        "action": "talk",
    }


@pytest.mark.parametrize(
    ("result", "policy", "reason"),
    [
        ("machine", {"on_machine": "hangup"}, "amd-machine"),
        ("unknown", {"on_unknown": "hangup"}, "amd-unknown"),
    ],
)
def test_hang_up_on_a_machine_or_an_unknown_line(
    result: AmdResult, policy: dict[str, str], reason: str
) -> None:
    core = detecting(**policy)
    assert core.amd_verdict(result, "x", 2400, 3.0) == [StopDetecting(), Hangup(), End(reason)]
    assert core.ended == reason


def test_talk_to_a_machine_or_an_unknown_line_when_so_configured() -> None:
    core = detecting(on_machine="talk")
    assert core.amd_verdict("machine", "long-greeting", 2400, 3.0) == [
        StopDetecting(),
        OpenProvider(),
    ]
    core = detecting()  # unknown: talk by default
    assert core.amd_verdict("unknown", "initial-silence", 2500, 3.0) == [
        StopDetecting(),
        OpenProvider(),
    ]


def test_no_callee_audio_at_all_is_unknown_at_the_deadline() -> None:
    core = detecting(on_unknown="hangup")
    assert core.timer_fired(AMD_DEADLINE, 8.0, 0) == [
        StopDetecting(),
        Hangup(),
        End("amd-unknown"),
    ]
    assert core.amd_report is not None
    assert (core.amd_report.result, core.amd_report.cause) == ("unknown", "no-audio")


def test_the_agent_leaves_its_message_after_the_beep_then_byes_after_the_playout() -> None:
    core = detecting(on_machine="message")
    assert core.amd_verdict("machine", "long-greeting", 2000, 10.0) == [
        SetTimer(10.0 + AMD_BEEP_WAIT_S, AMD_BEEP_WAIT)
    ]
    assert core.confirmed(10.1) == []  # still nothing opens before the beep
    assert core.amd_beep(6500, 14.5) == [
        StopDetecting(forward=False),  # the model must not hear the machine
        SetTimer(14.5 + AMD_MESSAGE_TIMEOUT_S, AMD_MESSAGE),
        OpenProvider(message=True),
    ]
    assert core.amd_beep(7000, 14.6) == []  # once
    assert core.provider_opened(15.0) == []
    assert core.provider_event(TurnComplete(), 15.1) == []  # a turn before it spoke: not it
    assert core.provider_event(AudioOut(b"m" * 480, "msg"), 15.2) == [Play(b"m" * 480, "msg")]
    assert core.provider_event(TurnComplete(), 18.0) == [WatchDrain()]
    assert core.media_drained(21.0) == [Hangup(), End("amd-message")]
    assert core.amd_report is not None
    assert core.amd_report.as_dict() == {
        "result": "machine",
        "cause": "long-greeting",
        "decision_ms": 2000,
        "action": "message",
        "beep_ms": 6500,
        "message_ms": 6500,  # 4.5 s after the verdict at 2000 ms of audio
        "message_done": True,
    }


def test_a_fixed_message_plays_when_the_greeting_ends_without_a_beep() -> None:
    core = detecting(on_machine="message", spoken_message=False)
    core.amd_verdict("machine", "long-greeting", 2000, 10.0)
    assert core.amd_greeting_ended(7000, 15.0) == [
        StopDetecting(forward=False),
        SetTimer(15.0 + AMD_MESSAGE_TIMEOUT_S, AMD_MESSAGE),
        PlayPrompt("message"),
        WatchDrain(),
    ]
    assert core.media_drained(18.0) == [Hangup(), End("amd-message")]


def test_the_message_waits_for_the_beep_at_most_and_plays_out_at_most_so_long() -> None:
    core = detecting(on_unknown="message", spoken_message=False)
    assert core.amd_verdict("unknown", "initial-silence", 2500, 3.0) == [
        SetTimer(3.0 + AMD_BEEP_WAIT_S, AMD_BEEP_WAIT)
    ]
    actions = core.timer_fired(AMD_BEEP_WAIT, 3.0 + AMD_BEEP_WAIT_S, 0)
    assert PlayPrompt("message") in actions
    end = 3.0 + AMD_BEEP_WAIT_S + AMD_MESSAGE_TIMEOUT_S
    assert core.timer_fired(AMD_MESSAGE, end, 5000) == [Hangup(), End("amd-message")]
    assert core.amd_report is not None
    assert core.amd_report.message_done is False


def test_without_detection_there_is_no_report() -> None:
    assert Conversation().amd_report is None
    assert Conversation().amd_verdict("machine", "x", 1, 1.0) == []


# --------------------------------------------------------------------------- sans-I/O


def test_the_core_imports_no_asyncio_and_reads_no_clock() -> None:
    tree = ast.parse(Path(sipbot.conversation.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"asyncio", "time", "datetime", "threading", "socket"}, imported


# --------------------------------------------------------------------------- Rule 10 (guard)


def test_a_suspected_barge_in_ducks_and_a_false_alarm_restores() -> None:
    core = opened()
    core.provider_event(AudioOut(b"a" * 10, "item-1"), 1.0)
    assert core.barge_in_suspected(1.1) == [Duck(GUARD_DUCK_DB)]
    assert core.barge_in_suspected(1.2) == []  # once
    assert core.provider_event(AudioOut(b"b" * 10, "item-1"), 1.3) == [Play(b"b" * 10, "item-1")]
    assert core.barge_in_cleared(1.5) == [Duck(0.0)]
    assert core.barge_in_cleared(1.6) == []
    assert core.counts.interruptions == 0


def test_a_confirmed_barge_in_restores_then_flushes_and_drops_the_cut_items_rest() -> None:
    core = opened()
    core.provider_event(LOOKUP, 0.5)
    core.provider_event(AudioOut(b"a" * 10, "item-1"), 1.0)
    core.barge_in_suspected(1.1)
    assert core.barge_in_confirmed(1.9) == [
        Duck(0.0),
        Flush(report=True),
        CancelTools(("t1",)),
    ]  # Rule 2, as a provider interruption
    assert core.media_flushed({"item-1": 700}, 1.9) == [Truncate("item-1", 700)]
    assert core.counts.interruptions == 1
    assert core.provider_event(AudioOut(b"late", "item-1"), 2.0) == []  # never to be heard
    core.provider_event(TurnComplete("item-1"), 2.1)
    assert core.provider_event(AudioOut(b"next", "item-2"), 3.0) == [Play(b"next", "item-2")]


def test_a_cut_items_audio_is_dropped_for_a_bounded_time_only() -> None:
    core = opened()
    core.provider_event(AudioOut(b"a", "loop"), 1.0)
    core.barge_in_confirmed(1.1)
    core.media_flushed({"loop": 100}, 1.1)
    assert core.provider_event(AudioOut(b"b", "loop"), 1.1 + GUARD_CUT_DROP_S) == []
    after = 1.2 + GUARD_CUT_DROP_S
    assert core.provider_event(AudioOut(b"c", "loop"), after) == [Play(b"c", "loop")]


def test_a_provider_interruption_does_not_drop_later_audio_of_its_item() -> None:
    core = opened()
    core.provider_event(AudioOut(b"a", "loop"), 1.0)
    core.provider_event(Interrupted("loop"), 1.1)
    core.media_flushed({"loop": 100}, 1.1)
    assert core.provider_event(AudioOut(b"b", "loop"), 1.2) == [Play(b"b", "loop")]


def test_guard_verdicts_after_the_end_do_nothing() -> None:
    core = opened()
    core.barge_in_suspected(1.0)
    core.dialog_ended("bye", 1.1)
    assert core.barge_in_confirmed(1.2) == []
    assert core.barge_in_cleared(1.3) == []
    assert core.barge_in_suspected(1.4) == []


# --------------------------------------------------------------------------- Rule 13: stalls


def test_a_stall_plays_the_filler_once_into_silence_and_counts_the_recovery() -> None:
    core = opened()
    assert core.provider_event(AudioOut(b"\x00" * 480, "a"), 1.0) == [Play(b"\x00" * 480, "a")]
    stalled = ProviderStalled("gemini: no output for 4 s")
    assert core.provider_event(stalled, 5.0) == [SetTimer(5.0, RECOVERY_FILLER)]
    # the agent's last words still play: the filler comes after them
    assert core.timer_fired(RECOVERY_FILLER, 5.0, queued_ms=300) == [SetTimer(5.3, RECOVERY_FILLER)]
    assert core.timer_fired(RECOVERY_FILLER, 5.3, queued_ms=0) == [PlayPrompt("filler")]
    assert core.timer_fired(RECOVERY_FILLER, 5.4, queued_ms=0) == []  # once
    assert core.provider_event(stalled, 5.5) == []  # the same recovery: no second filler
    assert core.provider_event(AudioOut(b"\x01" * 480, "b"), 5.75) == [Play(b"\x01" * 480, "b")]
    assert (core.counts.stalls, core.counts.recovery_ms) == (2, 750)


def test_the_reply_coming_back_before_the_filler_cancels_it() -> None:
    core = opened()
    assert core.provider_event(ProviderStalled("x"), 2.0) == [SetTimer(2.0, RECOVERY_FILLER)]
    core.provider_event(AudioOut(b"\x00" * 480, "a"), 2.1)
    assert core.timer_fired(RECOVERY_FILLER, 2.2, queued_ms=0) == []
    assert core.counts.recovery_ms == 100


# --------------------------------------------------------------------------- Rule 14: failover


@pytest.mark.parametrize("lost", ["event", "unavailable"])
def test_a_lost_provider_switches_to_the_fallback_then_apologises_when_none_is_left(
    lost: str,
) -> None:
    core = opened(fallbacks=1)
    core.provider_event(LOOKUP, 0.5)
    if lost == "event":
        actions = core.provider_event(ProviderFailed("gemini: stalled twice"), 1.0)
        reason = "provider-failed"
    else:
        actions = core.provider_lost("provider-unavailable", 1.0)
        reason = "provider-unavailable"
    assert actions == [
        CancelTools(("t1",)),
        SwitchProvider(reason),
        SetTimer(1.0, RECOVERY_FILLER),
    ]
    assert core.dtmf("5", 1.1) == []  # no session to tell until the fallback is open
    assert core.provider_opened(1.5) == []
    assert core.provider_event(AudioOut(b"\x00" * 480, "x"), 2.0) == [Play(b"\x00" * 480, "x")]
    assert (core.counts.switches, core.counts.recovery_ms) == (1, 1000)
    # the fallback is lost too: Rule 3
    assert core.provider_event(ProviderFailed("openai: gave up"), 3.0) == [
        Flush(),
        PlayPrompt("apology"),
        WatchDrain(),
        SetTimer(3.0 + APOLOGY_TIMEOUT_S, APOLOGY),
    ]


# --------------------------------------------------------------------------- Rule 15: handoff

HANDOFF_CALL = ToolCall("h1", "handoff", {"agent": "billing", "reason": "invoice"})


def test_a_handoff_switches_once_its_tool_has_finished_and_its_result_goes_nowhere() -> None:
    core = opened(fallbacks=1)
    core.provider_event(LOOKUP, 0.5)
    core.provider_event(HANDOFF_CALL, 1.0)
    assert core.handoff_requested(1.1, fallbacks=0) == []
    assert core.tool_finished("h1", "the call goes to billing now", 1.2) == [
        CancelTools(("t1",)),
        SwitchProvider("handoff"),
    ]
    assert core.dtmf("5", 1.3) == []  # no session until the other agent's is open
    assert core.provider_opened(1.5) == []
    # a handoff tool that did not ask (refused agent) answers the model as usual
    core.provider_event(ToolCall("h2", "handoff", {}), 2.0)
    assert core.tool_finished("h2", None, 2.1) == [SendToolResult("h2", "handoff", None)]
    # the other agent has no fallback: losing its provider is Rule 3
    assert core.provider_lost("provider-closed", 3.0)[:2] == [Flush(), PlayPrompt("apology")]
