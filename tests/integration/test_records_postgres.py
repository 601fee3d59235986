"""Call records in a real PostgreSQL 15 (a throwaway cluster): migrations, the same records as
SQLite, erase and purge, an unreachable server at start, and an outage in the middle of a run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sipbot.errors import ConfigError, RecordsUnavailable
from sipbot.memory import DAY_S, caller_key, summarize, window_start
from sipbot.records import CallRow, LineRow, RecordWriter, open_store
from sipbot.records.commands import rows_of
from sipbot.records.postgres import PostgresStore, safe_url
from sipbot.records.recall import Recall
from sipbot.records.schema import SCHEMA_VERSION
from sipbot.records.store import SqliteStore
from tests.e2e.peers.ports import free_port
from tests.e2e.peers.postgres import PostgresCluster, require_postgres

T0 = 1_750_000_000.25
WAIT_S = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    require_postgres()
    pg = PostgresCluster()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def url(cluster: PostgresCluster) -> str:
    if not cluster.running:  # a test stopped it
        cluster.start()
    return cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")


def rows() -> list[CallRow]:
    answered = CallRow(
        id="a" * 32,
        call_id="c1@127.0.0.1",
        caller="+4930555",
        did="100",
        outcome="answered",
        started=T0,
        route="shop",
        agent="support",
        provider="gemini",
        answered=T0 + 0.125,
        ended=T0 + 30.5,
        end_reason="bye",
        sip_status=200,
        sip_reason="OK",
        turns=3,
        tool_calls=1,
        barge_ins=1,
        tools='[{"name": "lookup_order", "arguments": "{}", "output": "ok"}]',
        media='{"rtp_in": 1500, "rtp_lost": 0}',
        recording_path="/rec/x.wav",
        source="127.0.0.1:5062",
        lines=(
            LineRow(0, T0 + 1.5, "agent", "Hello, bike shop – ¿cómo?"),
            LineRow(1, None, "caller", "nul\x00byte"),
        ),
    )
    rejected = CallRow(
        id="b" * 32,
        call_id="c2@127.0.0.1",
        caller="+4930666",
        did="300",
        outcome="rejected",
        started=T0 + 5,
        route="closed",
        ended=T0 + 5,
        end_reason="route",
        sip_status=486,
        sip_reason="Busy Here",
    )
    return [answered, rejected]


def test_an_empty_database_migrates_and_holds_the_same_records_as_sqlite(
    url: str, tmp_path: Path
) -> None:
    pg = open_store(url, "unused")
    assert isinstance(pg, PostgresStore)
    assert pg.migrate() == 0
    assert pg.version() == SCHEMA_VERSION
    assert pg.migrate() == SCHEMA_VERSION
    lite = SqliteStore(str(tmp_path / "r.sqlite3"))
    lite.migrate()
    for store in (pg, lite):
        store.write(rows())
        store.write(rows()[:1])  # idempotent
    assert rows_of(pg.export()) == rows_of(lite.export())
    assert pg.list_calls() == lite.list_calls()
    assert pg.get("aaaa") == lite.get("aaaa")
    exported = rows_of(pg.export())
    assert [r["outcome"] for r in exported] == ["answered", "rejected"]
    assert exported[0]["lines"][1]["text"] == "nulbyte"
    assert exported[0]["started"] == T0
    assert pg.erase_caller("+4930555") == lite.erase_caller("+4930555") == (1, 2)
    assert pg.purge(T0 + 6) == lite.purge(T0 + 6) == 1
    assert pg.list_calls() == lite.list_calls() == []
    pg.close()


def test_a_version_1_database_is_migrated_with_its_records(url: str) -> None:
    import psycopg

    pg = PostgresStore(url)
    pg.migrate(target=1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO calls (id, call_id, caller, did, outcome, started, turns)"
            " VALUES ('old', 'c', '+1', '100', 'answered', %s, 2)",
            (T0,),
        )
    assert pg.migrate() == 1
    assert pg.version() == SCHEMA_VERSION == 7
    old = pg.get("old")
    assert old is not None
    assert (old["turns"], old["media"], old["source"]) == (2, None, None)
    assert (old["stalls"], old["recovery_ms"], old["switched_to"]) == (0, 0, None)
    pg.write(rows())
    assert len(pg.list_calls()) == 3
    pg.close()


def test_an_unreachable_server_is_one_clear_line() -> None:
    port = free_port("tcp")  # nothing listens there
    store = PostgresStore(f"postgresql://sipbot:hunter2@127.0.0.1:{port}/records")
    with pytest.raises(ConfigError) as caught:
        store.connect()
    message = str(caught.value)
    assert message.startswith(
        f"server.records.url: cannot connect to postgresql://sipbot@127.0.0.1:{port}/records: "
    )
    assert "\n" not in message
    assert "hunter2" not in message
    assert safe_url("postgresql://u:p@[::1]:5/d") == "postgresql://u@[::1]:5/d"


async def test_records_written_during_an_outage_arrive_when_the_server_returns(
    cluster: PostgresCluster, url: str
) -> None:
    store = PostgresStore(url)
    writer = RecordWriter(store, retry_s=(0.05, 0.2))
    await writer.start()
    cluster.stop()
    first, second = rows()
    writer.submit(first)
    async with asyncio.timeout(WAIT_S):
        while writer.errors == 0:  # noqa: ASYNC110 - a plain counter, no event to wait on
            await asyncio.sleep(0.02)
    assert (writer.written, writer.queued) == (0, 1)
    writer.submit(second)
    await asyncio.to_thread(cluster.start)
    await asyncio.wait_for(writer.flush(), WAIT_S)
    assert (writer.written, writer.dropped) == (2, 0)
    await writer.aclose()
    check = PostgresStore(url)
    assert [r["id"] for r in check.list_calls()] == ["b" * 32, "a" * 32]
    check.close()
    with pytest.raises(RecordsUnavailable):
        PostgresStore(url.replace(str(cluster.port), str(free_port("tcp")))).version()


def test_returning_callers_are_found_and_erased_the_same_way_as_in_sqlite(
    url: str, tmp_path: Path
) -> None:
    def calls(caller: str, n: int, started: float, **keys: object) -> CallRow:
        lines = (LineRow(0, None, "caller", f"question {n}"), LineRow(1, None, "agent", "answer"))
        return CallRow(
            id=f"{n:032x}",
            call_id=f"c{n}",
            caller=caller,
            caller_key=caller_key(caller),
            did="100",
            outcome="answered",
            started=started,
            answered=started + 1,
            ended=started + 30,
            agent=str(keys.get("agent", "support")),
            summary=summarize(lines),
            lines=lines,
        )

    records = [
        calls("+49 30 555", 1, T0 - 40 * DAY_S),  # outside the window
        calls("+4930555", 2, T0 - DAY_S),
        calls("+49-30-555", 3, T0 - 60, agent="sales"),
        calls("+4930666", 4, T0 - 30),
        calls("anonymous", 5, T0 - 30),
    ]
    pg = PostgresStore(url)
    pg.migrate()
    lite = SqliteStore(str(tmp_path / "r.sqlite3"))
    lite.migrate()
    since = window_start(T0, 30)
    for store in (pg, lite):
        store.write(records)
    found = pg.recent_calls("+4930555", since, 3)
    assert found == lite.recent_calls("+4930555", since, 3)
    assert [r["started"] for r in found] == [T0 - 60, T0 - DAY_S]
    assert [r["agent"] for r in pg.recent_calls("+4930555", since, 3, "sales")] == ["sales"]
    assert pg.erase("+49 30 555") == lite.erase("+49 30 555")
    assert pg.recent_calls("+4930555", 0.0, 3) == []
    assert [r["caller"] for r in pg.list_calls()] == ["+4930666", "anonymous"]
    assert pg.erase("+49 30 555").calls == 0  # idempotent
    pg.close()


async def test_a_blocked_lookup_costs_a_call_at_most_the_timeout(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    store = PostgresStore(url)
    store.migrate()
    store.write([replace(rows()[0], caller_key="+4930555")])
    store.close()
    now = [0.0]
    recall = Recall(PostgresStore(url), timeout_s=0.2, retry_s=10.0, clock=lambda: now[0])
    assert len(await recall.recent_calls("+4930555", 0.0, 3)) == 1
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING, "sipbot.records"):
        with psycopg.connect(url) as locker:  # another session holds the table (a DDL, a dump)
            locker.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
            started = loop.time()
            assert await recall.recent_calls("+4930555", 0.0, 3) == []
            waited = loop.time() - started
            assert await recall.recent_calls("+4930555", 0.0, 3) == []  # skipped at once
            skipped = loop.time() - started - waited
            locker.rollback()
        now[0] = 11.0  # past retry_s: tried again, and the database answers
        recall.timeout_s = WAIT_S  # (a loaded machine must not make this one time out)
        async with asyncio.timeout(WAIT_S):
            assert len(await recall.recent_calls("+4930555", 0.0, 3)) == 1
    assert 0.2 <= waited < 0.6
    assert skipped < 0.05
    assert (recall.lookups, recall.found, recall.failed, recall.skipped) == (3, 2, 1, 1)
    assert [r.getMessage() for r in caplog.records] == [
        "returning callers: records lookup failed (no answer within 0.2 s); "
        "calls go on without memory",
        "returning callers: the records database answers again",
    ]
    await recall.aclose()
