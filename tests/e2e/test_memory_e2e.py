"""End to end: a returning caller (agent ``memory``) on a real ``sipbot run``.

SIPp calls twice from the same number (written differently the second time) to an agent with
memory on, behind the OpenAI emulator and the real SDK: the second session's instructions hold
the summary of the first call, quoted as data. ``sipbot calls erase --caller`` then removes the
caller's records, and a third call's instructions hold no memory; ``DELETE /api/records``
erases the third call's record over HTTP (with the token; twice: nothing the second time).
Also: a call handed off (``handoff``) to an agent with memory gives that agent's session the
earlier call's summary, though the agent that answered has none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbot.emulators.script import EmulatorScript, ToolCallRule
from sipbot.memory import MEMORY_DATA_NOTE, MEMORY_HEADER
from sipbot.records import open_store
from tests.e2e.calls import caller_turns
from tests.e2e.conftest import REPO_ROOT, SipbotServer, StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.test_records_e2e import wait_records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CALLER_SAID = "my order 42 is late"
AGENT_SAID = "a new one ships tomorrow"
PROMPT = "You answer the phone."
TOKEN = "memory-e2e-token"


def script(tool_calls: tuple[ToolCallRule, ...] = ()) -> EmulatorScript:
    """Each caller turn is CALLER_SAID, each reply a short tone with AGENT_SAID."""
    return EmulatorScript(
        reply="tone",
        reply_ms=400,
        reply_text=AGENT_SAID,
        caller_text=CALLER_SAID,
        vad_silence_ms=300,
        tool_calls=tool_calls,
    )


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread("openai", script()) as emu:
        yield emu


def call(server: SipbotServer, tmp: Path, name: str, caller: str, hold_s: float) -> None:
    talk = sipp.uac_scenario(
        tmp / f"{name}.xml", caller_turns(tmp / f"{name}.ulaw"), hold_s=hold_s, caller=caller
    )
    result = sipp.run_uac(server.address, talk, tmp, service="100", name=name, timeout_s=30)
    result.assert_ok(calls=1)


def delete(url: str, caller: str, token: str = TOKEN) -> tuple[int, dict[str, object]]:
    query = urllib.parse.urlencode({"caller": caller})
    req = urllib.request.Request(f"{url}/api/records?{query}", method="DELETE")
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def instructions(emu: EmulatorThread, index: int) -> str:
    update = next(f for f in emu.received(index) if f.get("type") == "session.update")
    text = update["session"]["instructions"]
    assert isinstance(text, str)
    return text


@pytest.mark.requires_peers("sipp")
def test_a_returning_caller_is_remembered_until_erased(
    sipbot_server: StartServer, peers_tmp: Path, emulator: EmulatorThread
) -> None:
    path = peers_tmp / "records.sqlite3"
    url = f"sqlite:///{path}"
    config = {
        "server": {"records": {"url": url}, "http": {"token": "${E2E_HTTP_TOKEN}"}},
        "agents": {
            "bot": emulator.agent(prompt=PROMPT, memory={"days": 30, "max_calls": 3}),
        },
        "routes": [{"answer": "bot"}],
    }
    http = f"127.0.0.1:{free_port('tcp')}"
    server = sipbot_server(
        "-c",
        str(write_dialplan(peers_tmp / "plan.yaml", config)),
        "--http",
        http,
        env={**server_env(), "E2E_HTTP_TOKEN": TOKEN},
    )
    store = open_store(url, "unused")

    call(server, peers_tmp, "first", "+15550100", hold_s=3.0)
    (first,) = wait_records(store, 1)
    assert first["caller_key"] == "+15550100"
    assert CALLER_SAID in first["summary"]
    assert instructions(emulator, 0) == PROMPT  # a first call: nothing to remember

    call(server, peers_tmp, "second", "+1-555-0100", hold_s=1.0)  # the same number, dashed
    remembered = instructions(emulator, 1)
    assert remembered.startswith(f"{PROMPT}\n\n{MEMORY_HEADER}\n- ")
    assert f'the caller said "{CALLER_SAID}"' in remembered
    assert f'the agent said last "{AGENT_SAID}"' in remembered
    assert 'agent "bot"' in remembered
    assert remembered.endswith(MEMORY_DATA_NOTE)
    wait_records(store, 2)  # the second call's record is in before it is erased

    env = {**os.environ, "XDG_DATA_HOME": str(peers_tmp / "data")}
    erase = [sys.executable, "-m", "sipbot", "calls", "erase", "--url", url, "--caller"]
    done = subprocess.run(
        [*erase, "+15550100"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("erased 2 call records, ")
    assert done.stdout.endswith(" and 0 recording files of caller +15550100\n")

    call(server, peers_tmp, "third", "+15550100", hold_s=1.0)
    assert instructions(emulator, 2) == PROMPT  # erased: nothing to remember
    assert "returning caller" in server.log()

    wait_records(store, 1)  # the third call's record
    store.close()
    assert delete(f"http://{http}", "+15550100", token="wrong")[0] == 401
    status, body = delete(f"http://{http}", "+1 555 0100")
    assert (status, body["calls"], body["recordings_removed"]) == (200, 1, [])
    status, body = delete(f"http://{http}", "+1 555 0100")
    assert (status, body["calls"], body["lines"]) == (200, 0, 0)


@pytest.mark.requires_peers("sipp")
def test_an_agent_the_call_is_handed_off_to_remembers_the_caller(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    handoff = ToolCallRule("handoff", {"agent": "billing", "reason": "an invoice"}, on_turn=1)
    desk, billing = "You answer the phone.", "You are billing."
    with EmulatorThread("openai", script((handoff,))) as emu:
        url = f"sqlite:///{peers_tmp / 'records.sqlite3'}"
        config = {
            "server": {"records": {"url": url}},
            "agents": {  # the desk remembers nothing; billing, every agent's calls
                "desk": emu.agent(prompt=desk, tools=["handoff"], handoff_allow=["billing"]),
                "billing": emu.agent(prompt=billing, memory={"days": 30, "scope": "all"}),
            },
            "routes": [{"answer": "desk"}],
        }
        plan = write_dialplan(peers_tmp / "plan.yaml", config)
        server = sipbot_server("-c", str(plan), env=server_env())
        store = open_store(url, "unused")

        call(server, peers_tmp, "first", "+15550100", hold_s=3.0)  # desk, then billing
        (first,) = wait_records(store, 1)
        assert CALLER_SAID in first["summary"]
        assert (instructions(emu, 0), instructions(emu, 1)) == (desk, billing)

        call(server, peers_tmp, "second", "+1-555-0100", hold_s=3.0)
        wait_until(lambda: emu.session_count >= 4, 10.0, "the second call's billing session")
        store.close()
        assert instructions(emu, 2) == desk  # the desk has no memory
        remembered = instructions(emu, 3)
        assert remembered.startswith(f"{billing}\n\n{MEMORY_HEADER}\n- ")
        assert f'the caller said "{CALLER_SAID}"' in remembered
        assert f'the agent said last "{AGENT_SAID}"' in remembered
        assert 'agent "desk"' in remembered  # the record names the agent that answered
        assert remembered.endswith(MEMORY_DATA_NOTE)
        assert "earlier calls for agent billing (handoff; a new lookup)" in server.log()
