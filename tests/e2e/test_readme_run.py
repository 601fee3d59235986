"""The README's first command, ``scripts/run``, installs sipbot (into ``.venv``, if needed) and
starts a server that a real phone (baresip) can call and hear its own words from.

If ``.venv`` does not exist yet, ``scripts/run`` creates it and installs sipbot with its
dependencies from the package index first (minutes); the test command of the README has
already made ``.venv`` in CI, so there it only checks the install and starts.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.peers import audio, baresip
from tests.e2e.peers.ports import E2E_RTP_PORTS, free_port
from tests.e2e.peers.process import ManagedProcess
from tests.e2e.test_call_path import ECHO_HOLD_S, ECHO_MIN_CORRELATION

INSTALL_AND_START_TIMEOUT_S = 600.0  # a first run installs every dependency into .venv
STOP_TIMEOUT_S = 15.0

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(INSTALL_AND_START_TIMEOUT_S + 120)]


SHELL_FENCES = ("sh", "bash", "shell", "console", "")


def readme_commands() -> list[str]:
    """The command lines of README.md's shell code blocks, in order, comments dropped."""
    commands: list[str] = []
    fence: str | None = None  # the language of the open code block, None outside one
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence in SHELL_FENCES and (command := line.split("#", 1)[0].strip()):
            commands.append(command)
    return commands


def test_the_readme_starts_with_scripts_run_then_scripts_test() -> None:
    commands = readme_commands()
    assert commands[:2] == ["scripts/run", "scripts/test"], commands


@pytest.mark.requires_peers("baresip")
def test_scripts_run_answers_a_baresip_call_with_its_own_words(
    speech: audio.Speech, peers_tmp: Path
) -> None:
    port = free_port("both")
    argv = [str(REPO_ROOT / "scripts" / "run"), "--listen", f"127.0.0.1:{port}", *E2E_RTP_PORTS]
    server = ManagedProcess.start("scripts-run", argv, peers_tmp, cwd=REPO_ROOT)
    try:
        ready = rf"^sipbot ready udp:127\.0\.0\.1:{port} tcp:127\.0\.0\.1:{port}$"
        server.wait_for_line(ready, INSTALL_AND_START_TIMEOUT_S, stream="stderr")
        caller = baresip.start(
            peers_tmp, speech.wav_8k, dial=f"sip:bot@127.0.0.1:{port}", duration_s=ECHO_HOLD_S
        )
        assert caller.wait(30) == 0
    finally:
        code = server.stop(timeout=STOP_TIMEOUT_S, signum=signal.SIGTERM)
    log = server.read_log("stderr")
    assert code == 0, log[-3000:]  # scripts/run execs sipbot: SIGTERM reached the server itself
    assert "Traceback" not in log
    assert caller.established() == [f"sip:bot@127.0.0.1:{port}"], caller.log()[-2000:]
    heard, rate = caller.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION
