"""The per-trunk dial gate (sipbot.dial_limits): calls per second, concurrency, the queue."""

from __future__ import annotations

import pytest

from sipbot.dial_limits import CPS_MARGIN, DialGate, OutboundLimits

GAP = (1 + CPS_MARGIN) / 5  # cps 5


def test_no_limits_release_everything_at_once() -> None:
    gate = DialGate(OutboundLimits())
    assert all(gate.submit(f"t{i}", 0.0) for i in range(3))
    assert gate.release(0.0) == ["t0", "t1", "t2"]
    assert gate.next_deadline() is None


def test_cps_spaces_releases_and_never_bursts() -> None:
    gate = DialGate(OutboundLimits(cps=5, queue=20))
    for i in range(20):
        assert gate.submit(f"t{i}", 0.0)
    released: list[tuple[float, str]] = []
    now = 0.0
    while len(released) < 20:
        released += [(now, t) for t in gate.release(now)]
        deadline = gate.next_deadline()
        assert deadline is not None or len(released) == 20
        now = deadline if deadline is not None else now
    times = [t for t, _ in released]
    assert [t for _, t in released] == [f"t{i}" for i in range(20)]  # first come first served
    assert times[:3] == pytest.approx([0.0, GAP, 2 * GAP])
    # Rule 1: no window of one second holds more than cps releases
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) == 5


def test_a_late_release_does_not_make_a_burst() -> None:
    gate = DialGate(OutboundLimits(cps=5, queue=5))
    for i in range(3):
        gate.submit(f"t{i}", 0.0)
    assert gate.release(0.0) == ["t0"]
    assert gate.release(3.0) == ["t1"]  # the timer fired late: one, not a catch-up burst
    assert gate.release(3.0) == []
    assert gate.next_deadline() == pytest.approx(3.0 + GAP)


def test_invites_are_paced_by_when_they_really_left() -> None:
    gate = DialGate(OutboundLimits(cps=5))
    assert gate.invite_wait(0.0) == 0.0
    gate.invite_sent(0.0)
    gate.invite_sent(0.012)  # the same INVITE, seen leaving 12 ms later
    assert gate.invite_wait(GAP) == pytest.approx(0.012)
    assert gate.invite_wait(GAP + 0.012) == 0.0


def test_max_calls_holds_requests_until_a_call_finishes() -> None:
    gate = DialGate(OutboundLimits(max_calls=2, queue=5))
    for i in range(4):
        gate.submit(f"t{i}", 0.0)
    assert gate.release(0.0) == ["t0", "t1"]
    assert gate.release(1.0) == []
    assert (gate.active, gate.waiting) == (2, 2)
    assert gate.next_deadline() == 30.0  # only the queue timeout of the first waiting one
    gate.finished("t1")
    assert gate.release(1.0) == ["t2"]


def test_a_full_queue_refuses_and_the_timeout_drops() -> None:
    gate = DialGate(OutboundLimits(max_calls=1, queue=1, queue_timeout_s=5.0))
    assert gate.submit("a", 0.0)
    assert gate.release(0.0) == ["a"]
    assert gate.submit("b", 1.0)  # waits
    assert not gate.submit("c", 1.0)  # Rule 3: the queue holds one
    assert gate.expired(5.9) == []
    assert gate.next_deadline() == 6.0
    assert gate.expired(6.0) == ["b"]
    assert gate.waiting == 0


def test_queue_zero_takes_only_what_goes_at_once() -> None:
    gate = DialGate(OutboundLimits(cps=5))
    assert gate.submit("a", 0.0)
    assert gate.release(0.0) == ["a"]
    assert not gate.submit("b", 0.1)  # it would have to wait: no queue
    assert gate.submit("c", GAP)


def test_a_reloaded_gate_keeps_calls_queue_and_pacing() -> None:
    old = DialGate(OutboundLimits(max_calls=1, cps=5, queue=3))
    old.submit("a", 0.0)
    old.release(0.0)
    old.submit("b", 0.0)
    new = DialGate(OutboundLimits(max_calls=2, cps=5, queue=3))
    new.adopt(old)
    assert new.release(0.1) == []  # still paced by the old release
    assert new.release(GAP) == ["b"]
    assert new.active == 2
