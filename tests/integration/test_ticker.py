"""The shared phase-group ticker (real uvloop, bounded waits)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from sipbot.media.ticker import Ticker

pytestmark = pytest.mark.timeout(30)


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro_fn(), 20))


class Target:
    def __init__(self, fail: bool = False) -> None:
        self.ticks: list[tuple[float, int, int]] = []
        self.fail = fail

    def tick(self, now: float, frames: int, skipped: int) -> None:
        self.ticks.append((now, frames, skipped))
        if self.fail:
            raise RuntimeError("boom")


def test_groups_tick_on_their_own_phase_of_one_grid() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ticker = Ticker(loop, groups=4)
        targets = [Target() for _ in range(8)]
        for target in targets:
            ticker.add(target)
        await asyncio.sleep(0.5)
        ticker.close()
        assert ticker.members == 0
        phases = set()
        for target in targets:
            assert 20 <= len(target.ticks) <= 26
            assert all(frames >= 1 for _, frames, _ in target.ticks)
            phase_ms = round(((target.ticks[-1][0] - ticker._base) * 1000) % 20)
            phases.add(phase_ms % 20 // 5)
        assert phases == {0, 1, 2, 3}  # two members in each of the four 5 ms phases

    run(main)


def test_a_failing_member_does_not_stop_the_others() -> None:
    async def main() -> None:
        ticker = Ticker(asyncio.get_running_loop(), groups=1)
        bad, good = Target(fail=True), Target()
        ticker.add(bad)
        ticker.add(good)
        await asyncio.sleep(0.2)
        ticker.close()
        assert len(bad.ticks) >= 8
        assert len(good.ticks) >= 8

    run(main)


def test_remove_inside_a_tick_and_idle_groups_have_no_timer() -> None:
    async def main() -> None:
        ticker = Ticker(asyncio.get_running_loop(), groups=2)
        other = Target()

        class SelfRemoving(Target):
            def tick(self, now: float, frames: int, skipped: int) -> None:
                super().tick(now, frames, skipped)
                ticker.remove(self)
                ticker.remove(other)

        first = SelfRemoving()
        ticker.add(first)
        ticker.add(other)
        await asyncio.sleep(0.1)
        assert len(first.ticks) == 1
        assert ticker.members == 0
        assert all(group.handle is None for group in ticker._groups)

    run(main)


def test_a_stall_is_caught_up_boundedly() -> None:
    async def main() -> None:
        ticker = Ticker(asyncio.get_running_loop(), groups=1)
        target = Target()
        ticker.add(target)
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # noqa: ASYNC251 - block the loop on purpose: ~7 deadlines pass
        await asyncio.sleep(0.05)
        ticker.close()
        burst = [t for t in target.ticks if t[1] > 1]
        assert burst
        assert burst[0][1] == 3  # at most MAX_CATCHUP_FRAMES at once
        assert burst[0][2] >= 3
        assert ticker.stats.late_ticks >= 1
        assert ticker.stats.skipped_frames == burst[0][2]

    run(main)


def test_the_group_hook_runs_once_per_group_tick_before_its_members() -> None:
    """Rule 4: one call per group tick with that group's members, before their ticks; a hook
    that raises is logged and the members still tick."""

    async def main() -> None:
        ticker = Ticker(asyncio.get_running_loop(), groups=2)
        targets = [Target() for _ in range(4)]
        calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

        def before(group: tuple[object, ...]) -> None:
            members = tuple(targets.index(t) for t in group)  # type: ignore[arg-type]
            calls.append((members, tuple(len(targets[i].ticks) for i in members)))
            if len(calls) == 3:
                raise RuntimeError("boom")

        ticker.before_tick = before
        for target in targets:
            ticker.add(target)
        await asyncio.sleep(0.2)
        ticker.close()
        groups = {members for members, _ in calls}
        assert groups == {(0, 2), (1, 3)}  # least-loaded placement: two groups of two
        for _members, ticks_before in calls:  # the members had not ticked yet this round
            assert len({ticks_before[0], ticks_before[1]}) == 1
        ticked = [len(t.ticks) for t in targets]
        assert sum(1 for members, _ in calls if members == (0, 2)) == ticked[0] == ticked[2]
        assert sum(1 for members, _ in calls if members == (1, 3)) == ticked[1] == ticked[3]

    run(main)
