"""The records writer: bounded queue, outages retried, lost records counted, purge at start.

The store is a real SQLite file; an outage is a real SQLite store whose ``write`` is made to
fail with RecordsUnavailable a given number of times (the writer only sees that error).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from sipbot.errors import RecordsUnavailable
from sipbot.records import CallRow, LineRow, RecordWriter
from sipbot.records.store import SqliteStore
from sipbot.records.writer import DAY_S

T0 = 1_750_000_000.0
FLUSH_TIMEOUT_S = 10.0  # bounds waits on the worker thread


def row(n: int, started: float = T0, text: str = "hi") -> CallRow:
    return CallRow(
        id=f"{n:032x}",
        call_id=f"c{n}",
        caller="+1",
        did="100",
        outcome="answered",
        started=started,
        lines=(LineRow(0, None, "agent", text),),
    )


class FlakyStore(SqliteStore):
    """SQLite that reports itself unavailable for the first ``outages`` writes."""

    def __init__(self, path: str, outages: int) -> None:
        super().__init__(path)
        self.outages = outages
        self.attempts = 0

    def write(self, rows: Sequence[CallRow]) -> None:
        self.attempts += 1
        if self.attempts <= self.outages:
            raise RecordsUnavailable("postgresql://u@h:1/db unavailable: server closed")
        super().write(rows)


async def test_records_are_written_in_a_thread_and_counted(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "r.sqlite3"))
    writer = RecordWriter(store)
    await writer.start()
    assert all(writer.submit(row(n)) for n in range(250))
    assert writer.queued == 250  # nothing was written on the event loop
    await asyncio.wait_for(writer.flush(), FLUSH_TIMEOUT_S)
    assert (writer.written, writer.queued, writer.dropped, writer.errors) == (250, 0, 0, 0)
    await writer.aclose()
    assert len(SqliteStore(store.path).list_calls()) == 250


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = RecordWriter(SqliteStore(str(tmp_path / "r.sqlite3")), queue_max=2)
    await writer.start()
    results = [writer.submit(row(n)) for n in range(3)]  # no await: the writer cannot run
    assert results == [True, True, False]
    assert (writer.queued, writer.dropped) == (2, 1)
    await writer.aclose()
    assert writer.written == 2


async def test_an_outage_keeps_the_records_and_writes_them_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(str(tmp_path / "r.sqlite3"), outages=5)
    writer = RecordWriter(store, retry_s=(0.0, 0.0))
    await writer.start()
    with caplog.at_level(logging.WARNING, "sipbot.records"):
        writer.submit(row(1))
        writer.submit(row(2))
        await asyncio.wait_for(writer.flush(), FLUSH_TIMEOUT_S)
    assert (writer.written, writer.dropped, writer.errors) == (2, 0, 5)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "call records: database unavailable (postgresql://u@h:1/db unavailable: server closed);"
        " 2 records queued, retrying"
    )
    assert len(messages) == 2  # rate-limited: one line at the start, one at the end
    assert messages[1].startswith("call records: database back after ")
    assert messages[1].endswith("s; writing 2 queued records")
    await writer.aclose()
    assert len(SqliteStore(store.path).list_calls()) == 2


async def test_records_a_full_disk_refuses_are_lost_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(str(tmp_path / "r.sqlite3"), max_size_mb=0.05)
    writer = RecordWriter(store)
    await writer.start()
    with caplog.at_level(logging.WARNING, "sipbot.records"):
        for n in range(3):
            writer.submit(row(n, text="x" * 100_000))
            await asyncio.wait_for(writer.flush(), FLUSH_TIMEOUT_S)
    assert (writer.written, writer.dropped, writer.errors) == (0, 3, 3)
    assert [r.getMessage() for r in caplog.records] == [
        f"call records lost: sqlite:///{store.path}: database or disk is full"
        " (1 records lost so far)"
    ]
    writer.submit(row(9))  # a small record still fits
    await asyncio.wait_for(writer.flush(), FLUSH_TIMEOUT_S)
    assert writer.written == 1
    await writer.aclose()


async def test_old_records_are_purged_at_start(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sqlite3")
    seed = SqliteStore(path)
    seed.migrate()
    seed.write([row(1, started=T0 - 31 * DAY_S), row(2, started=T0 - 29 * DAY_S)])
    writer = RecordWriter(SqliteStore(path), keep_days=30, clock=lambda: T0)
    await writer.start()
    assert writer.purged == 1
    await writer.aclose()
    assert [r["call_id"] for r in SqliteStore(path).list_calls()] == ["c2"]


async def test_keep_days_zero_keeps_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sqlite3")
    seed = SqliteStore(path)
    seed.migrate()
    seed.write([row(1, started=0.0)])
    writer = RecordWriter(SqliteStore(path), keep_days=0)
    await writer.start()
    await writer.aclose()
    assert writer.purged == 0
    assert len(SqliteStore(path).list_calls()) == 1


async def test_close_drops_what_it_cannot_write_in_time(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "r.sqlite3"), outages=1_000_000)
    writer = RecordWriter(store, retry_s=(0.001, 0.001))
    await writer.start()
    writer.submit(row(1))
    await writer.aclose(flush_s=0.05)
    assert (writer.written, writer.dropped, writer.queued) == (0, 1, 0)
    assert writer.submit(row(2)) is False  # closed: counted as dropped
    assert writer.dropped == 2


def test_the_server_makes_the_writer_the_config_asks_for(tmp_path: Path) -> None:
    from sipbot.config import config_from_objects
    from sipbot.dialplan.model import Dialplan
    from sipbot.server import make_records

    plan = Dialplan(routes=())
    off = config_from_objects(plan, {"records": {"enabled": False}})
    assert make_records(off) is None
    settings = {"data_dir": str(tmp_path), "records": {"keep_days": 7, "queue_max": 5}}
    writer = make_records(config_from_objects(plan, settings))
    assert writer is not None
    assert (writer.keep_days, writer.queue_max) == (7, 5)
    assert isinstance(writer.store, SqliteStore)
    assert writer.store.path == str(tmp_path / "records.sqlite3")
