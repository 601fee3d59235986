"""End to end: a YAML dialplan routes real SIP calls to different agents, rejects and redirects.

A real ``sipbot run -c FILE`` process, SIPp callers, and the Gemini / OpenAI emulators behind
the real SDK adapters. Each agent's emulated model answers with its own tone, so the audio the
caller hears proves which agent took the call.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from sipbot.dialplan.template import CALL_DATA_NOTE
from sipbot.emulators.script import EmulatorScript
from tests.e2e.calls import audio_to, caller_turns, dominant_hz
from tests.e2e.conftest import REPO_ROOT, StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import sipp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SALES_HZ = 440.0
SUPPORT_HZ = 880.0
CALL_TIMEOUT_S = 20.0


def agent_script(tone_hz: float, text: str) -> EmulatorScript:
    return EmulatorScript(
        reply="tone", tone_hz=tone_hz, reply_ms=800, reply_text=text, vad_silence_ms=300
    )


@pytest.fixture
def sales() -> Iterator[EmulatorThread]:
    with EmulatorThread("gemini", agent_script(SALES_HZ, "sales speaking")) as emulator:
        yield emulator


@pytest.fixture
def support() -> Iterator[EmulatorThread]:
    with EmulatorThread("openai", agent_script(SUPPORT_HZ, "support speaking")) as emulator:
        yield emulator


def two_agents(sales: EmulatorThread, support: EmulatorThread) -> dict[str, object]:
    return {
        "agents": {
            "sales": sales.agent(prompt="You sell bikes to {caller}."),
            "support": support.agent(prompt="You help {caller} with orders."),
        },
        "routes": [
            {"name": "sales", "match": {"did": "100"}, "answer": "sales"},
            {"name": "support", "match": {"did": "200"}, "answer": "support"},
            {"name": "closed", "match": {"did": "300"}, "reject": 486},
            {"name": "moved", "match": {"did": "400"}, "transfer": "sip:desk@127.0.0.1:5999"},
        ],
    }


def call_and_hear(server_address: str, did: str, tmp: Path, name: str) -> float:
    """Call ``did`` with one caller turn; return the dominant frequency the caller heard."""
    turns = caller_turns(tmp / f"{name}.ulaw")
    scenario = sipp.uac_scenario(tmp / f"{name}.xml", turns, hold_s=3.5)
    uac = sipp.start_uac(server_address, scenario, tmp, service=did, capture=True, name=name)
    result = uac.wait(CALL_TIMEOUT_S)
    result.assert_ok(calls=1)
    assert result.capture is not None
    pcm, rate = audio_to(result.capture.packets(), uac.media_port)
    return dominant_hz(pcm, rate)


@pytest.mark.requires_peers("sipp", "capture")
def test_two_dids_reach_two_agents_and_other_routes(
    sipbot_server: StartServer, peers_tmp: Path, sales: EmulatorThread, support: EmulatorThread
) -> None:
    config = write_dialplan(peers_tmp / "two.yaml", two_agents(sales, support))
    server = sipbot_server("-c", str(config), env=server_env())

    assert call_and_hear(server.address, "100", peers_tmp, "did100") == pytest.approx(
        SALES_HZ, abs=15
    )
    assert (sales.session_count, support.session_count) == (1, 0)
    assert call_and_hear(server.address, "200", peers_tmp, "did200") == pytest.approx(
        SUPPORT_HZ, abs=15
    )
    assert (sales.session_count, support.session_count) == (1, 1)
    # each model got the prompt of its own agent, filled in from the call
    setup = next(f["setup"] for f in sales.received(0) if "setup" in f)
    assert 'You sell bikes to "sipp".' in str(setup["systemInstruction"])
    update = next(f for f in support.received(0) if f.get("type") == "session.update")
    assert update["session"]["instructions"] == (
        f'You help "sipp" with orders.\n\n{CALL_DATA_NOTE}'  # the caller's data, marked
    )

    for did, status in (("300", 486), ("999", 404), ("400", 302)):
        scenario = sipp.reject_scenario(peers_tmp / f"reject{did}.xml", status)
        result = sipp.run_uac(
            server.address, scenario, peers_tmp, service=did, name=f"did{did}", timeout_s=10
        )
        result.assert_ok(calls=1)
    moved = (peers_tmp / "did400.messages.log").read_text()
    assert re.search(r"^SIP/2.0 302 .*\n(?:.*\n)*?Contact: <sip:desk@127.0.0.1:5999>", moved, re.M)
    assert (sales.session_count, support.session_count) == (1, 1)  # no model for a reject
    log = server.log()
    for line in ("route sales → answer sales", "route support → answer support"):
        assert line in log
    for line in ("route closed → reject 486", "route None → reject 404", "route moved → transfer"):
        assert line in log


def echo_plan(*routes: Mapping[str, object]) -> dict[str, object]:
    echo = {"provider": "local", "local": {"mode": "echo"}}
    return {"agents": {"echo": echo}, "routes": list(routes)}


def expect(server_address: str, did: str, tmp: Path, name: str, status: int = 200) -> None:
    """Call ``did``: answered (``status`` 200, then BYE) or refused with ``status``."""
    if status == 200:
        scenario = sipp.uac_scenario(tmp / f"{name}.xml", caller_turns(tmp / "t.ulaw"), hold_s=0.5)
    else:
        scenario = sipp.reject_scenario(tmp / f"{name}.xml", status)
    result = sipp.run_uac(server_address, scenario, tmp, service=did, name=name, timeout_s=10)
    result.assert_ok(calls=1)


def reloads(server_log: str) -> int:
    return len(re.findall(r"dialplan reloaded \(\d+ routes\)", server_log))


@pytest.mark.requires_peers("sipp")
def test_hot_reload_on_file_change_and_sighup_and_a_broken_file_keeps_the_old_plan(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    path = write_dialplan(
        peers_tmp / "plan.yaml", echo_plan({"match": {"did": "100"}, "answer": "echo"})
    )
    server = sipbot_server("-c", str(path))
    expect(server.address, "701", peers_tmp, "before", 404)

    # an edit on disk (a new route) is picked up by the watcher and applies to the next call
    added = {"name": "added", "match": {"did": "701"}, "answer": "echo"}
    write_dialplan(path, echo_plan({"match": {"did": "100"}, "answer": "echo"}, added))
    wait_until(lambda: "dialplan reloaded (2 routes)" in server.log(), 5, "the file reload")
    expect(server.address, "701", peers_tmp, "after-edit")

    # SIGHUP: an edit the watcher cannot see (same size, inode and mtime) applies on the signal
    before = path.stat()
    path.write_text(path.read_text().replace("'701'", "'702'"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    os.kill(server.pid, signal.SIGHUP)
    wait_until(
        lambda: reloads(server.log()) == 2 and "SIGHUP: reloading" in server.log(),
        5,
        "the SIGHUP reload",
    )
    expect(server.address, "702", peers_tmp, "after-sighup")
    expect(server.address, "701", peers_tmp, "gone-after-sighup", 404)

    # a broken file: one logged line naming file, line and field; the old dialplan stays
    broken = {"name": "typo", "match": {"did": "703"}, "answer": "ech0"}
    write_dialplan(path, echo_plan({"match": {"did": "100"}, "answer": "echo"}, broken))
    lines = path.read_text().splitlines()
    line_no = lines.index("  answer: ech0") + 1
    error = (
        f"{path}:{line_no}: routes[1].answer: unknown agent 'ech0'; did you mean 'echo'? "
        "(agents: echo) (keeping the previous dialplan)"
    )
    wait_until(lambda: error in server.log(), 5, "the reload error")
    [line] = [ln for ln in server.log().splitlines() if "ech0" in ln]
    assert line.endswith(error)
    assert " ERROR " in line
    assert reloads(server.log()) == 2
    expect(server.address, "702", peers_tmp, "after-broken")
    expect(server.address, "703", peers_tmp, "broken-route", 404)


def sipbot_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m sipbot ARGS`` in ``cwd`` (a user's own directory, not the repository)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "sipbot", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readme_story_copy_an_example_point_it_at_my_tools_check_and_route(
    tmp_path: Path,
) -> None:
    """The README's story: copy dialplans/support.yaml and examples/tools.py into a directory of
    one's own, reference one's own module, validate with ``sipbot check``, try ``sipbot route``."""
    mine = tmp_path / "mybot"
    mine.mkdir()
    plan = mine / "dialplan.yaml"
    text = (REPO_ROOT / "dialplans" / "support.yaml").read_text()
    assert text.count("examples.tools:") == 2
    plan.write_text(text.replace("examples.tools:", "mytools:"))
    (mine / "mytools.py").write_text((REPO_ROOT / "examples" / "tools.py").read_text())
    env = {"GEMINI_API_KEY": "g-key", "OPENAI_API_KEY": "o-key"}

    checked = sipbot_cli("check", "-c", "dialplan.yaml", cwd=mine, env=env)
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert "dialplan.yaml: OK" in out
    assert re.search(
        r"support\s+gemini .*tools: lookup_order, schedule_callback, transfer_call, hang_up", out
    )
    assert re.search(r"after_hours\s+openai .*tools: schedule_callback, crm_note, hang_up", out)
    rows = re.findall(r"^\s+(\d+\.)?\s*(\(no match\)|\S+)\s.*→ (.*)$", out, re.M)
    assert [(name, action) for _, name, action in rows][:5] == [
        ("blocked", "reject 403 Forbidden"),
        ("business-hours", "answer support"),
        ("after-hours", "answer after_hours"),
        ("default", "reject 404 Not Found"),
        ("(no match)", "reject 404 Not Found"),
    ]
    assert "g-key" not in out + checked.stderr

    def route(*args: str) -> str:
        done = sipbot_cli("route", "-c", str(plan), *args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    friday_morning = route("--did", "100", "--caller", "+4930555", "--at", "2025-03-14T10:00+01:00")
    assert "route: business-hours" in friday_morning
    assert "agent: support" in friday_morning
    assert "dtmf 0: transfer sip:operator@pbx.example.com" in friday_morning
    assert 'The caller\'s number is "+4930555"' in friday_morning  # quoted: call data
    saturday = route("--did", "100", "--caller", "+4930555", "--at", "2025-03-15T10:00+01:00")
    assert "route: after-hours" in saturday
    assert "agent: after_hours" in saturday
    assert "action: reject 403" in route("--did", "100", "--caller", "+19005550100")
    assert "action: reject 404" in route("--did", "555", "--caller", "+4930555")

    # a typo in the tool reference: one line naming the file, line and field; exit status 2
    plan.write_text(plan.read_text().replace("mytools:lookup_order", "mytools:lookup_ordr"))
    typo = sipbot_cli("check", "-c", "dialplan.yaml", cwd=mine, env=env)
    assert typo.returncode == 2
    [line] = (typo.stdout + typo.stderr).strip().splitlines()
    assert line.startswith("dialplan.yaml:")
    assert "lookup_ordr" in line
