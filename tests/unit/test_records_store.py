"""The records schema, migrations and SQLite store (a real SQLite file in a temp dir)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from sipbot.errors import ConfigError, RecordsWriteFailed
from sipbot.records import CallRow, LineRow, open_store
from sipbot.records.model import CALL_COLUMNS, as_text, truncate
from sipbot.records.schema import MIGRATIONS, SCHEMA_VERSION, pending
from sipbot.records.store import SqliteStore

T0 = 1_750_000_000.0


def row(n: int, caller: str = "+4930555", started: float = T0, **fields: object) -> CallRow:
    lines = (LineRow(0, started + 1, "agent", f"hello {n}"), LineRow(1, None, "caller", "bye"))
    base: dict[str, object] = {
        "id": f"{n:032x}",
        "call_id": f"call-{n}@host",
        "caller": caller,
        "did": "100",
        "outcome": "answered",
        "started": started,
        "lines": lines,
    }
    base.update(fields)
    return CallRow(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    db = SqliteStore(str(tmp_path / "data" / "records.sqlite3"))
    db.migrate()
    return db


def test_an_empty_database_migrates_to_the_current_version(tmp_path: Path) -> None:
    db = SqliteStore(str(tmp_path / "r.sqlite3"))
    assert db.version() == 0
    assert db.migrate() == 0
    assert db.version() == SCHEMA_VERSION == 7
    assert db.migrate() == SCHEMA_VERSION  # a second run changes nothing
    columns = [r[1] for r in sqlite3.connect(db.path).execute("PRAGMA table_info(calls)")]
    assert tuple(columns) == CALL_COLUMNS


def test_a_version_1_database_keeps_its_records_through_the_migration(tmp_path: Path) -> None:
    db = SqliteStore(str(tmp_path / "r.sqlite3"))
    assert db.migrate(target=1) == 0
    with sqlite3.connect(db.path) as old:
        old.execute(
            "INSERT INTO calls (id, call_id, caller, did, outcome, started, turns)"
            " VALUES ('old', 'c', '+1', '100', 'answered', ?, 3)",
            (T0,),
        )
        old.execute("INSERT INTO transcript_lines VALUES ('old', 0, ?, 'agent', 'hi')", (T0,))
    assert db.migrate() == 1
    record = db.get("old")
    assert record is not None
    assert (record["turns"], record["media"], record["recording_path"]) == (3, None, None)
    assert record["lines"] == [{"seq": 0, "at": T0, "role": "agent", "text": "hi"}]
    assert record["concealed_frames"] == 0  # version 5
    db.write([row(1, media='{"rtp_in": 5}', concealed_frames=12)])
    assert db.get(f"{1:032x}")["media"] == '{"rtp_in": 5}'  # type: ignore[index]
    assert db.get(f"{1:032x}")["concealed_frames"] == 12  # type: ignore[index]


def test_a_newer_database_is_refused(store: SqliteStore) -> None:
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE schema_version SET version = 8")
    with pytest.raises(ConfigError) as caught:
        store.migrate()
    assert str(caught.value) == (
        "server.records.url: the records database is at schema version 8; "
        "this sipbot knows versions up to 7"
    )


def test_pending_lists_the_steps_after_the_current_version() -> None:
    assert pending(0) == [(v + 1, step) for v, step in enumerate(MIGRATIONS)]
    assert pending(1) == [(v + 1, step) for v, step in enumerate(MIGRATIONS) if v >= 1]
    assert pending(3) == [
        (4, MIGRATIONS[3]),
        (5, MIGRATIONS[4]),
        (6, MIGRATIONS[5]),
        (7, MIGRATIONS[6]),
    ]
    assert pending(7) == []


def test_writes_are_idempotent_and_keep_the_transcript_in_order(store: SqliteStore) -> None:
    store.write([row(1), row(2, started=T0 + 10)])
    store.write([row(1)])  # a batch retried after a lost commit
    listed = store.list_calls()
    assert [r["call_id"] for r in listed] == ["call-2@host", "call-1@host"]  # newest first
    record = store.get(f"{1:032x}")
    assert record is not None
    assert record["lines"] == [
        {"seq": 0, "at": T0 + 1, "role": "agent", "text": "hello 1"},
        {"seq": 1, "at": None, "role": "caller", "text": "bye"},
    ]
    assert store.list_calls(limit=1)[0]["call_id"] == "call-2@host"


def test_nul_characters_are_removed_as_postgresql_requires(store: SqliteStore) -> None:
    store.write([row(1, caller="+49\x00", lines=(LineRow(0, None, "agent", "a\x00b"),))])
    record = store.get(f"{1:032x}")
    assert record is not None
    assert (record["caller"], record["lines"][0]["text"]) == ("+49", "ab")


def test_get_takes_a_unique_prefix_of_four_or_more(store: SqliteStore) -> None:
    first, second = "abcd1" + "0" * 27, "abcd2" + "0" * 27
    store.write([row(1, id=first), row(2, id=second)])
    assert store.get("abcd") is None  # ambiguous
    assert store.get("abc") is None  # too short
    found = store.get("abcd1")
    assert found is not None
    assert found["id"] == first
    assert store.get(second) is not None
    assert store.get("ffff") is None


def test_purge_removes_old_records_and_their_lines(store: SqliteStore) -> None:
    store.write([row(1, started=T0 - 100), row(2, started=T0)])
    assert store.purge(before=T0 - 50) == 1
    assert [r["call_id"] for r in store.list_calls()] == ["call-2@host"]
    lines = sqlite3.connect(store.path).execute("SELECT DISTINCT record_id FROM transcript_lines")
    assert [r[0] for r in lines] == [f"{2:032x}"]


def test_erase_removes_every_record_and_line_of_one_caller(store: SqliteStore) -> None:
    store.write([row(1, caller="+111"), row(2, caller="+222"), row(3, caller="+111")])
    assert store.erase_caller("+111") == (2, 4)
    assert [r["caller"] for r in store.list_calls()] == ["+222"]
    assert store.erase_caller("+111") == (0, 0)


def test_files_are_owner_only(store: SqliteStore) -> None:
    store.write([row(1)])
    directory = os.path.dirname(store.path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    names = sorted(os.listdir(directory))
    assert names == ["records.sqlite3", "records.sqlite3-shm", "records.sqlite3-wal"]
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name
    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_full_database_fails_the_write_for_good(tmp_path: Path) -> None:
    db = SqliteStore(str(tmp_path / "r.sqlite3"), max_size_mb=0.05)
    db.migrate()
    big = LineRow(0, None, "agent", "x" * 100_000)
    with pytest.raises(RecordsWriteFailed) as caught:
        db.write([row(1, lines=(big,))])
    assert str(caught.value) == f"sqlite:///{db.path}: database or disk is full"
    assert db.list_calls() == []  # the transaction was rolled back
    db.write([row(2, lines=())])  # small records still fit
    assert len(db.list_calls()) == 1


def test_an_unopenable_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^server\.records\.url: cannot open .*file/r\.db: "):
        SqliteStore(str(blocker / "r.db")).migrate()


def test_open_store_reads_urls(tmp_path: Path) -> None:
    default = open_store(None, str(tmp_path))
    assert isinstance(default, SqliteStore)
    assert default.path == str(tmp_path / "records.sqlite3")
    absolute = open_store(f"sqlite:///{tmp_path}/x.db", "unused")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == f"{tmp_path}/x.db"
    relative = open_store("sqlite:///rel/x.db", "unused")
    assert isinstance(relative, SqliteStore)
    assert relative.path == "rel/x.db"
    with pytest.raises(ConfigError, match="an SQLite URL is sqlite:///PATH"):
        open_store("sqlite:/x.db", "unused")
    with pytest.raises(ConfigError, match="unsupported records URL scheme 'mysql'"):
        open_store("mysql://h/db", "unused")


def test_truncation_marks_what_it_cut() -> None:
    assert truncate("abc", 10) == "abc"
    cut = truncate("a" * 50, 20)
    assert len(cut) == 20
    assert cut.endswith("…[truncated]")
    assert as_text({"city": "Paris"}) == '{"city": "Paris"}'
    assert as_text("plain") == "plain"
    assert as_text(None) == "null"


def test_a_version_2_database_gains_the_outbound_columns(tmp_path: Path) -> None:
    db = SqliteStore(str(tmp_path / "r.sqlite3"))
    assert db.migrate(target=2) == 0
    with sqlite3.connect(db.path) as old:
        old.execute(
            "INSERT INTO calls (id, call_id, caller, did, outcome, started, source)"
            " VALUES ('old', 'c', '+1', '100', 'answered', ?, '192.0.2.1:5060')",
            (T0,),
        )
    assert db.migrate() == 2
    record = db.get("old")
    assert record is not None
    assert (record["direction"], record["dial_state"], record["ringing"]) == ("inbound", None, None)
    assert record["early_media"] == 0
    db.write([row(1, direction="outbound", dial_state="busy", sip_status=486, ringing=T0 + 1)])
    new = db.get(f"{1:032x}")
    assert new is not None
    assert (new["direction"], new["dial_state"], new["sip_status"]) == ("outbound", "busy", 486)
    assert new["ringing"] == T0 + 1
