"""ReconnectBudget, TranscriptLog and greeting_prompt (fake clock)."""

from __future__ import annotations

from sipbot.domain import Transcript
from sipbot.providers.continuity import ReconnectBudget, TranscriptLog, greeting_prompt


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
