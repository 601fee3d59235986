"""The process-wide 20 ms ticker that paces every media session (asyncio shell).

Instead of one timer per call, a few *phase groups* share the work: group ``i`` fires at
``base + i * period / groups + k * period`` (absolute deadlines from :class:`FrameClock`, so it
never drifts), and each session belongs to one group for its whole life. Spreading calls over
groups spreads the CPU work and the packet bursts over the 20 ms period. A group with no members
has no timer, so an idle process does no work.

Rules:

* Rule 1: one ``loop.call_at`` per group per period; each member's :meth:`TickTarget.tick` is
  called with the frames due (one normally, a bounded catch-up after a stall) and the frames
  skipped; the member sends exactly that many packets.
* Rule 2: a member that raises is logged (rate-limited) and stays in its group; the others
  are not disturbed.
* Rule 3: members may be added or removed from inside a tick (a callback closing a call): the
  tick iterates over a snapshot.
* Rule 4 (group work): :attr:`Ticker.before_tick`, when set, is called once per group tick
  with the group's snapshot, before the members' ticks: work that is cheaper for the whole
  group at once (batched DSP) happens there. If it raises, that is logged as in Rule 2 and
  the members tick as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sipbot.media.pacer import FRAME_S, MAX_CATCHUP_FRAMES, FrameClock
from sipbot.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

LATE_TICK_S = 0.005  # a tick this much behind its deadline counts as late


class TickTarget(Protocol):
    """What the ticker drives (a media session)."""

    def tick(self, now: float, frames: int, skipped: int) -> None:
        """Send ``frames`` packets now; ``skipped`` slots passed without any (after a stall)."""
        ...


@dataclass(slots=True)
class TickerStats:
    """Counters over all groups."""

    ticks: int = 0
    late_ticks: int = 0  # ticks more than LATE_TICK_S behind the deadline
    skipped_frames: int = 0  # deadlines dropped after a stall (per group, not per member)
    max_lateness_s: float = 0.0


@dataclass(slots=True)
class _Group:
    offset_s: float
    members: list[TickTarget] = field(default_factory=list)
    snapshot: tuple[TickTarget, ...] = ()
    clock: FrameClock | None = None
    handle: asyncio.TimerHandle | None = None


class Ticker:
    """Shared absolute-deadline ticker with ``groups`` phase groups.

    Args:
        loop: the running event loop (its ``time()`` is the clock).
        groups: number of phase groups (1 = every call ticks at the same instant).
        period_s: the frame period.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, groups: int = 4, period_s: float = FRAME_S
    ) -> None:
        self._loop = loop
        self.period_s = period_s
        self._base = loop.time()
        # Whole-millisecond offsets: uvloop's clock and timers have millisecond resolution.
        self._groups = [_Group(round(i * period_s / groups, 3)) for i in range(groups)]
        self.stats = TickerStats()
        self._errors = RateLimitedLog(log)
        self.before_tick: Callable[[tuple[TickTarget, ...]], None] | None = None  # Rule 4

    @property
    def members(self) -> int:
        """Targets currently ticking."""
        return sum(len(group.members) for group in self._groups)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any group (None when nothing ticks)."""
        deadlines = [g.clock.next_deadline for g in self._groups if g.clock is not None]
        return min(deadlines) if deadlines else None

    def add(self, target: TickTarget) -> None:
        """Start ticking ``target`` in the least-loaded group (from that group's next deadline)."""
        group = min(self._groups, key=lambda g: len(g.members))
        group.members.append(target)
        group.snapshot = tuple(group.members)
        if group.clock is None:
            now = self._loop.time()
            grid = self._base + group.offset_s
            periods = max(0, -int(-(now - grid) // self.period_s))  # ceil: first grid point >= now
            group.clock = FrameClock(grid + periods * self.period_s, self.period_s)
            self._schedule(group)

    def remove(self, target: TickTarget) -> None:
        """Stop ticking ``target`` (no-op if it is not ticking)."""
        for group in self._groups:
            if target in group.members:
                group.members.remove(target)
                group.snapshot = tuple(group.members)
                if not group.members:
                    self._stop(group)
                return

    def close(self) -> None:
        """Stop every group."""
        for group in self._groups:
            group.members.clear()
            group.snapshot = ()
            self._stop(group)

    def _schedule(self, group: _Group) -> None:
        assert group.clock is not None
        group.handle = self._loop.call_at(group.clock.next_deadline, self._run, group)

    def _stop(self, group: _Group) -> None:
        if group.handle is not None:
            group.handle.cancel()
        group.handle = None
        group.clock = None

    def _run(self, group: _Group) -> None:
        clock = group.clock
        if clock is None:
            return
        now = self._loop.time()
        lateness = now - clock.next_deadline
        frames, skipped = clock.due(now)
        stats = self.stats
        stats.ticks += 1
        stats.skipped_frames += skipped
        if lateness > LATE_TICK_S:
            stats.late_ticks += 1
            stats.max_lateness_s = max(stats.max_lateness_s, lateness)
        if frames:
            before = self.before_tick
            if before is not None:
                try:
                    before(group.snapshot)
                except Exception:
                    self._errors.exception("before_tick", now, "media group work failed")
            for target in group.snapshot:
                try:
                    target.tick(now, frames, skipped)
                except Exception:
                    self._errors.exception("tick", now, "media tick failed for %r", target)
        if group.clock is clock and group.members:
            self._schedule(group)


__all__ = ["MAX_CATCHUP_FRAMES", "TickTarget", "Ticker", "TickerStats"]
