"""ReconnectBudget, TranscriptLog, StallWatch, HeardText, seeding and prompts (fake clock)."""

from __future__ import annotations

from sipbot.domain import AudioOut, Interrupted, ToolCall, Transcript, TurnComplete
from sipbot.providers.continuity import (
    HeardText,
    ReconnectBudget,
    StallWatch,
    TranscriptLog,
    failover_seed,
    greeting_prompt,
)


def test_first_reconnect_is_immediate_then_backoff_doubles_to_cap() -> None:
    budget = ReconnectBudget(max_attempts=5, base_delay_s=0.25, max_delay_s=0.6)
    budget.connected(0.0)
    assert budget.lost(1.0) == 0.0
    assert budget.failed() == 0.25
    assert budget.failed() == 0.5
    assert budget.failed() == 0.6
    assert budget.failed() == 0.6
    assert budget.failed() is None
    assert budget.attempts == 6


def test_healthy_connection_resets_the_streak() -> None:
    budget = ReconnectBudget(max_attempts=2, healthy_s=10.0)
    budget.connected(0.0)
    assert budget.lost(3.0) == 0.0  # short-lived: attempt 1
    budget.connected(3.1)
    assert budget.lost(4.0) == 0.25  # still short-lived: attempt 2
    budget.connected(4.1)
    assert budget.lost(5.0) is None  # third short connection in a row: give up


def test_long_call_reconnects_forever_when_each_connection_is_healthy() -> None:
    budget = ReconnectBudget(max_attempts=1, healthy_s=10.0)
    now = 0.0
    for _ in range(20):
        budget.connected(now)
        now += 600.0
        assert budget.lost(now) == 0.0


def test_lost_without_connected_counts_as_failure() -> None:
    budget = ReconnectBudget(max_attempts=1)
    assert budget.lost(100.0) == 0.0
    assert budget.lost(200.0) is None


def test_transcript_log_keeps_finals_and_trims_oldest() -> None:
    seed = (Transcript("caller", "hello"), Transcript("agent", "hi there"))
    log = TranscriptLog(seed, max_chars=25)
    log.add(Transcript("caller", "partial", final=False))
    log.add(Transcript("agent", "   "))
    assert log.history() == seed
    log.add(Transcript("caller", "what time is it"))  # 5 + 8 + 15 = 28 > 25: drop "hello"
    assert log.history() == (
        Transcript("agent", "hi there"),
        Transcript("caller", "what time is it"),
    )


def test_transcript_log_keeps_one_entry_even_if_too_long() -> None:
    log = TranscriptLog(max_chars=3)
    log.add(Transcript("caller", "a long sentence"))
    assert log.history() == (Transcript("caller", "a long sentence"),)


def test_greeting_prompt() -> None:
    assert greeting_prompt("Hello, Acme here.") == (
        'The phone call has just been answered. Greet the caller by saying: "Hello, Acme here."'
    )


# --------------------------------------------------------------------------- StallWatch


def test_a_caller_turn_owes_an_answer_and_silence_past_the_bound_is_one_stall() -> None:
    watch = StallWatch(2.0, caller_text_due=True)
    watch.event(Transcript("caller", "what time is it"), 10.0)
    assert watch.deadline() == 12.0
    assert not watch.stalled(11.9)
    assert watch.stalled(12.0)
    assert (watch.in_a_row, watch.deadline()) == (1, None)
    assert not watch.stalled(20.0)  # counted once


def test_each_arrival_of_a_reply_pushes_the_deadline_until_the_turn_completes() -> None:
    watch = StallWatch(2.0, caller_text_due=False)
    watch.expect(0.0)
    watch.event(AudioOut(b"\x00\x00", "a"), 1.5)
    watch.event(Transcript("agent", "hel", final=False), 3.0)
    assert watch.deadline() == 5.0
    watch.event(Transcript("agent", "hello"), 4.0)  # the final text is not progress
    assert watch.deadline() == 5.0
    watch.in_a_row = 1
    watch.event(TurnComplete("a"), 4.5)
    assert (watch.due, watch.in_a_row) == (False, 0)  # a completed reply ends a stall streak


def test_interruptions_tool_calls_and_empty_turns_owe_nothing() -> None:
    watch = StallWatch(2.0, caller_text_due=False)
    watch.event(Transcript("caller", "late transcription"), 0.0)
    assert not watch.due  # OpenAI transcribes asynchronously: not a turn end
    for event in (Interrupted("a"), ToolCall("1", "f", {}), TurnComplete(None)):
        watch.expect(1.0)
        watch.in_a_row = 1
        watch.event(event, 1.5)
        assert (watch.due, watch.in_a_row) == (False, 1)


# --------------------------------------------------------------------------- HeardText


def test_heard_text_places_words_over_the_audio_they_came_with() -> None:
    heard = HeardText(bytes_per_ms=48)  # PCM16 24 kHz
    heard.audio("a", 48 * 100)
    heard.piece("one two ")  # over ms 0-100: one at 0, two at 50
    heard.audio("a", 48 * 100)
    heard.piece("three")  # over ms 100-200
    heard.audio("a", 48 * 200)
    heard.piece("four five six seven")  # 200-400: at 200, 250, 300, 350
    assert heard.heard("a", 0) == ""
    assert heard.heard("a", 51) == "one two"
    assert heard.heard("a", 260) == "one two three four five"
    assert heard.heard("a", 10_000) == "one two three four five six seven"
    assert heard.word_count("a") == 7
    assert heard.heard("unknown", 100) is None


def test_heard_text_keeps_a_few_recent_replies() -> None:
    heard = HeardText(bytes_per_ms=8)
    for item in ("a", "b", "c", "d", "e"):
        heard.audio(item, 80)
        heard.piece(item)
    assert heard.heard("a", 100) is None
    assert heard.heard("e", 100) == "e"


def test_a_cut_reply_replaces_the_latest_agent_entry_of_the_log() -> None:
    log = TranscriptLog()
    for entry in (Transcript("agent", "hi"), Transcript("agent", "one two three four")):
        log.add(entry)
    log.add(Transcript("caller", "stop"))
    log.cut_last_agent("one two")
    assert [e.text for e in log.history()] == ["hi", "one two", "stop"]


def test_a_fallback_is_seeded_with_lines_and_tool_calls_in_time_order() -> None:
    lines = [(1.0, Transcript("caller", "weather in Paris?")), (3.0, Transcript("agent", "It is"))]
    tools = [(2.0, "weather", '{"city": "Paris"}', '{"temp": 21}')]
    assert failover_seed(lines, tools) == (
        Transcript("caller", "weather in Paris?"),
        Transcript(
            "caller",
            '[system note] You called the tool weather with {"city": "Paris"}; '
            'it returned: {"temp": 21}',
        ),
        Transcript("agent", "It is"),
    )
