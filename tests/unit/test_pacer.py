"""FrameClock cadence and Pacer behaviour on a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from sipbot.media.pacer import FrameClock, Pacer

# PCM16 at 8 kHz: 16 bytes a millisecond, 320 a frame
BPM = 16
FRAME = 320
SILENCE = bytes(FRAME)


def audio(ms: int, fill: int = 1) -> bytes:
    return bytes([fill]) * (ms * BPM)


def make(prebuffer_ms: int = 60, max_hold_ms: int = 40) -> Pacer:
    return Pacer(FRAME, SILENCE, BPM, prebuffer_ms=prebuffer_ms, max_hold_ms=max_hold_ms)


# --------------------------------------------------------------------------- FrameClock


def test_clock_fires_once_per_deadline_and_never_drifts() -> None:
    clock = FrameClock(1000.0)
    fired = 0
    now = 1000.0
    for step in range(50_000):  # 1000 s in 0.4 ms steps, like a fake loop
        now = 1000.0 + step * 0.0004
        frames, skipped = clock.due(now)
        assert skipped == 0
        fired += frames
    assert fired == int((now - 1000.0) / 0.02) + 1
    assert clock.next_deadline == pytest.approx(1000.0 + fired * 0.02, abs=1e-9)


def test_clock_is_due_exactly_at_the_deadline() -> None:
    clock = FrameClock(5.0)
    assert clock.due(4.9999) == (0, 0)
    assert clock.due(5.0) == (1, 0)
    assert clock.due(5.0199) == (0, 0)
    assert clock.due(5.02) == (1, 0)
    assert clock.next_deadline == pytest.approx(5.04)


def test_clock_catches_up_boundedly_then_resyncs_on_the_same_grid() -> None:
    clock = FrameClock(0.0, max_catchup=3)
    assert clock.due(0.0) == (1, 0)
    assert clock.due(0.045) == (2, 0)  # deadlines 0.02 and 0.04 passed: a small catch-up
    assert clock.due(0.2105) == (3, 5)  # 8 deadlines (0.06 .. 0.20): 3 sent, 5 skipped
    assert clock.skipped == 5
    assert clock.next_deadline == pytest.approx(0.22)  # still on the t0 + k*20 ms grid
    assert clock.due(0.22) == (1, 0)


# --------------------------------------------------------------------------- Pacer


def test_silence_when_empty() -> None:
    pacer = make()
    assert [pacer.pull() for _ in range(3)] == [SILENCE] * 3
    assert not pacer.playing
    assert not pacer.talkspurt_start


def test_prebuffer_met_starts_at_the_next_slot() -> None:
    pacer = make()
    pacer.push(audio(60, 7), "a")
    frame = pacer.pull()
    assert frame == audio(20, 7)
    assert pacer.talkspurt_start
    assert pacer.pull() == audio(20, 7)
    assert not pacer.talkspurt_start
    assert pacer.pull() == audio(20, 7)
    assert pacer.pull() == SILENCE
    assert pacer.played_ms("a") == 60


def test_prebuffer_holds_a_trickle_until_it_fills() -> None:
    pacer = make(prebuffer_ms=60, max_hold_ms=100)
    pacer.push(audio(20, 1), "a")
    assert pacer.pull() == SILENCE
    pacer.push(audio(20, 2), "a")
    assert pacer.pull() == SILENCE
    pacer.push(audio(20, 3), "a")
    assert pacer.pull() == audio(20, 1)  # 60 ms queued: go
    pacer.push(audio(20, 4), "a")
    assert pacer.pull() == audio(20, 2)
    assert pacer.queued_ms == 40


def test_max_hold_releases_a_short_reply() -> None:
    pacer = make(prebuffer_ms=60, max_hold_ms=40)
    pacer.push(audio(30, 5), "short")
    assert pacer.pull() == SILENCE
    assert pacer.pull() == SILENCE  # held two slots (40 ms)
    assert pacer.pull() == audio(20, 5)
    assert pacer.pull() == audio(10, 5) + bytes(10 * BPM)  # tail padded with silence
    assert pacer.pull() == SILENCE
    assert pacer.played_ms("short") == 30


def test_zero_prebuffer_plays_at_once() -> None:
    pacer = make(prebuffer_ms=0)
    pacer.push(audio(10, 9), "a")
    assert pacer.pull() == audio(10, 9) + bytes(10 * BPM)


def test_underrun_pads_then_prebuffers_again() -> None:
    pacer = make(prebuffer_ms=40, max_hold_ms=40)
    pacer.push(audio(50, 1), "a")
    assert pacer.pull() == audio(20, 1)
    assert pacer.pull() == audio(20, 1)
    assert pacer.pull() == audio(10, 1) + bytes(10 * BPM)  # ran dry mid-frame
    assert not pacer.playing
    pacer.push(audio(20, 2), "a")  # less than the pre-buffer: held again
    assert pacer.pull() == SILENCE
    pacer.push(audio(20, 3), "a")
    assert pacer.pull() == audio(20, 2)
    assert pacer.talkspurt_start
    assert pacer.played_ms("a") == 70


def test_frames_are_assembled_across_chunks_of_one_item() -> None:
    pacer = make(prebuffer_ms=0)
    for fill in (1, 2, 3):
        pacer.push(audio(15, fill), "a")
    assert pacer.pull() == audio(15, 1) + audio(5, 2)
    assert pacer.pull() == audio(10, 2) + audio(10, 3)
    assert pacer.pull() == audio(5, 3) + bytes(15 * BPM)


def test_a_frame_never_mixes_two_items() -> None:
    pacer = make(prebuffer_ms=0)
    pacer.push(audio(30, 1), "a")
    pacer.push(audio(20, 2), "b")
    assert pacer.pull() == audio(20, 1)
    assert pacer.pull() == audio(10, 1) + bytes(10 * BPM)
    assert pacer.pull() == audio(20, 2)
    assert (pacer.played_ms("a"), pacer.played_ms("b")) == (30, 20)


def test_flush_makes_the_next_frame_silent_and_reports_played_ms() -> None:
    pacer = make(prebuffer_ms=0)
    pacer.push(audio(100, 1), "a")
    pacer.push(audio(100, 2), "b")
    pacer.pull()
    pacer.pull()
    assert pacer.flush() == {"a": 40, "b": 0}
    assert pacer.pull() == SILENCE
    assert pacer.queued_ms == 0
    assert pacer.played_ms("a") == 40
    assert pacer.played_ms("unknown") == 0


def test_flush_after_the_queue_ran_dry_still_names_the_last_item() -> None:
    pacer = make(prebuffer_ms=0)
    pacer.push(audio(20, 1), "a")
    pacer.pull()
    assert pacer.flush() == {"a": 20}
    assert make().flush() == {}


def test_accounting_is_exact_over_many_odd_chunks() -> None:
    pacer = make(prebuffer_ms=0)
    total = 0
    for size in (3, 17, 40, 1, 99, 22):  # ms
        pacer.push(audio(size), "a")
        total += size
    while pacer.queued_bytes:
        pacer.pull()
    assert pacer.played_ms("a") == total


def test_inherit_accounting() -> None:
    old = make(prebuffer_ms=0)
    old.push(audio(20), "a")
    old.pull()
    new = make()
    new.inherit_accounting(old)
    assert new.played_ms("a") == 20
    wider = Pacer(640, bytes(640), 32)  # another format (16 kHz): bytes are converted
    wider.inherit_accounting(old)
    assert wider.played_ms("a") == 20


def test_silence_must_be_one_frame() -> None:
    with pytest.raises(ValueError, match="exactly one frame"):
        Pacer(FRAME, b"\x00", BPM)
