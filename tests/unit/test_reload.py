"""Hot reload: a valid change applies to new calls, a broken file is logged and the old kept.

No event loop, no clock: each test calls ``poll()`` itself. The polling loop and
SIGHUP run in ``tests/integration/test_reload_loop.py``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sipbot.config import load_config
from sipbot.dialplan import Answer
from sipbot.reload import DialplanWatcher

PLAN = """\
agents:
  echo: {provider: local}
  loop: {provider: local, local: {mode: loopback}}
routes:
  - {name: main, match: {did: "1"}, answer: %s}
  - {name: e, match: {did: "2"}, answer: echo}
  - {name: l, match: {did: "3"}, answer: loop}
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()  # make sure the mtime moves even on a coarse clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def agent_of(watcher: DialplanWatcher) -> str:
    action = watcher.current.routes[0].action
    assert isinstance(action, Answer)
    return action.agent.name


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    write(path, PLAN % "echo")
    return path


def test_valid_change_applies_broken_change_is_refused(
    plan: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloaded: list[str] = []
    watcher = DialplanWatcher(load_config(str(plan)), on_reload=lambda c: reloaded.append(c.source))
    in_progress = watcher.current  # what a running call holds
    assert watcher.poll() is False  # nothing changed

    write(plan, PLAN % "loop")
    assert watcher.poll() is True
    assert agent_of(watcher) == "loop"
    assert reloaded == [str(plan)]
    action = in_progress.routes[0].action
    assert isinstance(action, Answer)
    assert action.agent.name == "echo"  # the call in progress is undisturbed

    write(plan, PLAN % "nobody")
    with caplog.at_level(logging.INFO, logger="sipbot.reload"):
        assert watcher.poll() is False
    assert agent_of(watcher) == "loop"  # old one kept
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            f"{plan}:5: routes[0].answer: unknown agent 'nobody' (agents: echo, loop) "
            "(keeping the previous dialplan)",
        )
    ]
    assert watcher.poll() is False  # the same broken file is not retried until it changes

    write(plan, PLAN % "echo")
    assert watcher.poll() is True
    assert agent_of(watcher) == "echo"


def test_deleted_file_keeps_the_dialplan(plan: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = DialplanWatcher(load_config(str(plan)))
    plan.unlink()
    with caplog.at_level(logging.ERROR, logger="sipbot.reload"):
        assert watcher.poll() is False
        assert watcher.poll() is False
    assert [r.getMessage() for r in caplog.records] == [
        f"{plan}: cannot read the file: No such file or directory (keeping the previous dialplan)"
    ]
    assert agent_of(watcher) == "echo"


def test_server_change_needs_a_restart(plan: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = DialplanWatcher(load_config(str(plan)))
    write(plan, "server: {limits: {max_calls: 3}}\n" + PLAN % "loop")
    with caplog.at_level(logging.WARNING, logger="sipbot.reload"):
        assert watcher.poll() is True
    assert [r.getMessage() for r in caplog.records] == [
        f"{plan}: server settings changed: restart sipbot to apply them"
    ]
    assert agent_of(watcher) == "loop"
