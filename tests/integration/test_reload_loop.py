"""Hot reload in a running loop: the file poller and SIGHUP (real time, bounded waits).

The reload decisions themselves are unit-tested in ``tests/unit/test_reload.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from sipbot.config import load_config
from sipbot.reload import DialplanWatcher
from tests.unit.test_reload import PLAN, agent_of, write


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    write(path, PLAN % "echo")
    return path


async def test_run_polls_the_file(plan: Path) -> None:
    reloaded = asyncio.Event()
    watcher = DialplanWatcher(
        load_config(str(plan)), poll_interval_s=0.02, on_reload=lambda c: reloaded.set()
    )
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.05)
        write(plan, PLAN % "loop")
        await asyncio.wait_for(reloaded.wait(), 3)
        assert agent_of(watcher) == "loop"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_sighup_reloads(plan: Path) -> None:
    before = signal.getsignal(signal.SIGHUP)
    reloaded = asyncio.Event()
    watcher = DialplanWatcher(
        load_config(str(plan)), poll_interval_s=3600, on_reload=lambda c: reloaded.set()
    )
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.05)  # let run() install its handler
        write(plan, PLAN % "loop")  # the poller would not look for an hour
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), 3)
        assert agent_of(watcher) == "loop"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert signal.getsignal(signal.SIGHUP) == before  # the handler left with the task
