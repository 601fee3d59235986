"""End to end: a real ``sipbot run`` writes one call record per INVITE, to SQLite or PostgreSQL.

SIPp places an answered call (the OpenAI emulator behind the real SDK talks back), a call
refused at capacity (``limits.max_calls: 1``) while the first is up, a call rejected by a route
and a call whose provider fails (a key the emulator refuses: apology, BYE). Both databases must
hold the same records. PostgreSQL stopped in the middle of a run: the call goes on and its
record arrives once the server is back. An unreachable PostgreSQL at start: exit 2, one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipbot.emulators.script import EmulatorScript
from sipbot.records import SqlStore, open_store
from sipbot.records.commands import rows_of
from tests.e2e.calls import caller_turns, silence_ulaw
from tests.e2e.conftest import REPO_ROOT, SipbotServer, StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.peers.postgres import PostgresCluster, require_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

CALL_TIMEOUT_S = 30.0
RECORDS_TIMEOUT_S = 20.0
AGENT_TEXT = "agent speaking"


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    script = EmulatorScript(
        reply="tone", tone_hz=660.0, reply_ms=600, reply_text=AGENT_TEXT, vad_silence_ms=300
    )
    with EmulatorThread("openai", script) as emu:
        yield emu


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    require_postgres()
    pg = PostgresCluster()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def plan(emu: EmulatorThread, records: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"limits": {"max_calls": 1}, "records": records},
        "agents": {
            "bot": emu.agent(prompt="You answer the phone."),
            "broken": emu.agent(api_key="${E2E_BAD_KEY}"),
        },
        "routes": [
            {"name": "closed", "match": {"did": "300"}, "reject": 486},
            {"name": "failing", "match": {"did": "500"}, "answer": "broken"},
            {"name": "main", "answer": "bot"},
        ],
    }


def start(sipbot_server: StartServer, tmp: Path, emu: EmulatorThread, url: str) -> SipbotServer:
    config = write_dialplan(tmp / f"plan-{uuid.uuid4().hex[:6]}.yaml", plan(emu, {"url": url}))
    return sipbot_server("-c", str(config), env={**server_env(), "E2E_BAD_KEY": "not-the-key"})


def place_calls(server: SipbotServer, tmp: Path) -> None:
    """The four attempts, one after the other (the capacity one while the first is up)."""
    talk = sipp.uac_scenario(tmp / "talk.xml", caller_turns(tmp / "talk.ulaw"), hold_s=5.0)
    first = sipp.start_uac(server.address, talk, tmp, service="100", name="answered")
    wait_until(lambda: "answered by agent bot" in server.log(), 10.0, "the first call answered")
    busy = sipp.reject_scenario(tmp / "busy.xml", 503)
    sipp.run_uac(server.address, busy, tmp, service="100", name="capacity", timeout_s=10).assert_ok(
        calls=1
    )
    first.wait(CALL_TIMEOUT_S).assert_ok(calls=1)
    closed = sipp.reject_scenario(tmp / "closed.xml", 486)
    sipp.run_uac(server.address, closed, tmp, service="300", name="route", timeout_s=10).assert_ok(
        calls=1
    )
    listen = sipp.uac_scenario(
        tmp / "fail.xml", silence_ulaw(tmp / "quiet.ulaw", 20.0), hangup="callee"
    )
    failing = sipp.run_uac(
        server.address, listen, tmp, service="500", name="provider", timeout_s=CALL_TIMEOUT_S
    )
    failing.assert_ok(calls=1)  # the apology, then our BYE


def wait_records(store: SqlStore, count: int) -> list[dict[str, Any]]:
    def records() -> list[dict[str, Any]]:
        try:
            found = rows_of(store.export())
        except Exception:  # the database may still be coming up
            return []
        return found if len(found) >= count else []

    return wait_until(records, RECORDS_TIMEOUT_S, f"{count} call records")


def summary(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    keys = ("did", "outcome", "end_reason", "sip_status", "route", "agent", "provider")
    return [tuple(r[k] for k in keys) for r in records]


EXPECTED = [
    ("100", "answered", "bye-received", 200, "main", "bot", "openai"),
    ("100", "refused", "capacity", 503, None, None, None),
    ("300", "rejected", "route", 486, "closed", None, None),
    ("500", "answered", "provider-unavailable", 200, "failing", "broken", "openai"),
]


def check_records(records: list[dict[str, Any]]) -> None:
    records.sort(key=lambda r: r["started"])
    assert summary(records) == EXPECTED
    answered = records[0]
    assert answered["caller"] == "sipp"
    assert answered["answered"] >= answered["started"]
    assert answered["ended"] > answered["answered"] + 4.0  # the 5 s call
    assert answered["turns"] >= 1
    assert answered["media"]["rtp_in"] > 100
    assert answered["media"]["rtp_out"] > 100
    assert set(answered["media"]["latency_ms"]) == {"inbound", "first_audio", "barge_in"}
    assert any(ln["role"] == "agent" and AGENT_TEXT in ln["text"] for ln in answered["lines"])
    assert records[1]["media"] is None
    assert records[1]["lines"] == []
    assert records[3]["media"]["rtp_out"] > 0  # the apology was played
    assert len({r["id"] for r in records}) == 4
    assert len({r["call_id"] for r in records}) == 4


@pytest.mark.requires_peers("sipp")
def test_sqlite_and_postgresql_get_the_same_records(
    sipbot_server: StartServer,
    peers_tmp: Path,
    emulator: EmulatorThread,
    cluster: PostgresCluster,
) -> None:
    lite_url = f"sqlite:///{peers_tmp}/data/records.sqlite3"
    pg_url = cluster.create_database("sipbot")
    results = []
    for url in (lite_url, pg_url):
        tmp = peers_tmp / url.split(":")[0]
        tmp.mkdir()
        server = start(sipbot_server, tmp, emulator, url)
        place_calls(server, tmp)
        store = open_store(url, "unused")
        records = wait_records(store, 4)
        store.close()
        check_records(records)
        results.append(records)
        assert "call records" not in server.log()  # no outage, nothing lost
    assert summary(results[0]) == summary(results[1])


@pytest.mark.requires_peers("sipp")
def test_postgresql_lost_mid_run_gets_the_records_when_it_returns(
    sipbot_server: StartServer,
    peers_tmp: Path,
    emulator: EmulatorThread,
    cluster: PostgresCluster,
) -> None:
    url = cluster.create_database("sipbot")
    server = start(sipbot_server, peers_tmp, emulator, url)
    cluster.stop()
    talk = sipp.uac_scenario(peers_tmp / "talk.xml", caller_turns(peers_tmp / "t.ulaw"), hold_s=3)
    for n in range(2):  # calls go on while the database is away
        result = sipp.run_uac(server.address, talk, peers_tmp, service="100", name=f"during{n}")
        result.assert_ok(calls=1)
    wait_until(
        lambda: "call records: database unavailable" in server.log(), 10.0, "the outage logged"
    )
    assert server.log().count("call records: database unavailable") == 1  # rate-limited
    cluster.start()
    store = open_store(url, "unused")
    records = wait_records(store, 2)
    store.close()
    assert [(r["outcome"], r["end_reason"]) for r in records] == [("answered", "bye-received")] * 2
    wait_until(lambda: "call records: database back after" in server.log(), 5.0, "recovery")


def test_an_unreachable_postgresql_at_start_exits_2_with_one_line(tmp_path: Path) -> None:
    port = free_port("tcp")  # nothing listens there
    config = tmp_path / "plan.yaml"
    config.write_text(
        f"server:\n  records:\n    url: postgresql://sipbot:secret@127.0.0.1:{port}/records\n"
    )
    sip_port = free_port("both")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipbot",
            "run",
            "-c",
            str(config),
            "--listen",
            f"127.0.0.1:{sip_port}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"server.records.url: cannot connect to postgresql://sipbot@127.0.0.1:{port}/records: "
    )
    assert "Connection refused" in lines[0]
    assert "secret" not in done.stderr
    assert done.stdout == ""


@pytest.mark.requires_peers("sipp")
def test_the_default_records_file_and_sipbot_calls(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server = sipbot_server()  # the embedded default: local echo agent, SQLite in the data dir
    talk = sipp.uac_scenario(peers_tmp / "talk.xml", caller_turns(peers_tmp / "t.ulaw"), hold_s=2)
    sipp.run_uac(server.address, talk, peers_tmp, service="100", name="call").assert_ok(calls=1)
    path = peers_tmp / "data" / "sipbot" / "records.sqlite3"  # XDG_DATA_HOME set by the fixture
    store = open_store(f"sqlite:///{path}", "unused")
    (record,) = wait_records(store, 1)
    store.close()
    assert (record["outcome"], record["agent"], record["provider"]) == ("answered", "echo", "local")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    env = {**os.environ, "XDG_DATA_HOME": str(peers_tmp / "data")}
    cli = [sys.executable, "-m", "sipbot", "calls"]
    listed = subprocess.run(
        [*cli, "list"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert record["id"] in listed.stdout
    assert "answered" in listed.stdout
    shown = subprocess.run(
        [*cli, "show", record["id"][:8]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"call_id:        {record['call_id']}\n" in shown.stdout


SCHEMA_PAGES = 9  # sqlite_master, schema_version, calls + 4 indexes, transcript_lines + its key


@pytest.mark.requires_peers("sipp")
def test_a_full_sqlite_loses_records_not_calls(sipbot_server: StartServer, peers_tmp: Path) -> None:
    # The file is capped at the pages of the empty schema (the way a full disk refuses growth),
    # and the agent's transcript line is longer than a page: a record cannot be stored.
    script = EmulatorScript(reply="tone", reply_ms=600, reply_text="y" * 6000, vad_silence_ms=300)
    path = peers_tmp / "full.sqlite3"
    with EmulatorThread("openai", script) as emu:
        config = plan(emu, {"url": f"sqlite:///{path}", "max_size_mb": SCHEMA_PAGES * 4096 / 2**20})
        server = sipbot_server(
            "-c",
            str(write_dialplan(peers_tmp / "p.yaml", config)),
            env={**server_env(), "E2E_BAD_KEY": "x"},
        )
        talk = sipp.uac_scenario(
            peers_tmp / "talk.xml", caller_turns(peers_tmp / "t.ulaw"), hold_s=3
        )
        for n in range(2):
            result = sipp.run_uac(server.address, talk, peers_tmp, service="100", name=f"c{n}")
            result.assert_ok(calls=1)  # the calls go on
        wait_until(lambda: "call records lost" in server.log(), 10.0, "the loss logged")
        wait_until(lambda: _cdr_lines(server) == 2, 10.0, "two CDR lines")
    log = server.log()
    assert log.count("call records lost") == 1  # one line, not one per record
    assert f"sqlite:///{path}: database or disk is full (1 records lost so far)" in log
    store = open_store(f"sqlite:///{path}", "unused")
    assert store.list_calls() == []
    store.close()


def _cdr_lines(server: SipbotServer) -> int:
    return sum(1 for line in server.log().splitlines() if " sipbot.cdr: " in line)
