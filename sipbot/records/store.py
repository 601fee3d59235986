"""Synchronous stores of call records: the SQL shared by both databases, and SQLite.

A store is used from one thread at a time (the writer's worker thread, or the CLI); nothing
here touches asyncio. :func:`open_store` picks the store from a URL.

Rules:

* Rule 1: a write is one transaction and idempotent: a batch written twice (a commit whose
  outcome was lost with the connection) leaves each record once (``ON CONFLICT DO NOTHING``).
* Rule 2: failures are sorted for the writer: :class:`~sipbot.errors.RecordsUnavailable` (try
  again: locked, connection lost) or :class:`~sipbot.errors.RecordsWriteFailed` (the records
  are lost: disk full, invalid data). Nothing else escapes ``write``.
* Rule 3: the SQLite file, its WAL and shared-memory files are created owner-only (0600), in a
  directory created 0700.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sipbot.errors import ConfigError, RecordsUnavailable, RecordsWriteFailed
from sipbot.memory import caller_key
from sipbot.records.model import CALL_COLUMNS, LINE_COLUMNS, CallRow
from sipbot.records.schema import SCHEMA_VERSION, VERSION_TABLE, pending

DEFAULT_FILE = "records.sqlite3"
BUSY_TIMEOUT_MS = 2000
URL_FIELD = "server.records.url"

_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(CALL_COLUMNS))})"
    " ON CONFLICT (id) DO NOTHING"
)
_INSERT_LINE = (
    f"INSERT INTO transcript_lines ({', '.join(LINE_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (record_id, seq) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Erased:
    """What :meth:`SqlStore.erase` deleted: records, transcript lines, and the recording files
    those records named (the caller removes the files)."""

    calls: int
    lines: int
    recordings: tuple[str, ...] = ()


class SqlStore:
    """What both databases share; subclasses connect, lock and sort errors.

    Attributes:
        label: where the records are, for messages (no password).
    """

    label = ""

    # ------------------------------------------------------------------ subclass hooks

    def _conn(self) -> Any:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """A read-only transaction (SQLite: one that takes no write lock)."""
        with self._transaction() as conn:
            yield conn

    def _sort_error(self, exc: Exception) -> Exception:
        """The RecordsUnavailable / RecordsWriteFailed for a database error (Rule 2)."""
        raise NotImplementedError

    def _lock_schema(self, conn: Any) -> None:
        """Serialise migrations between processes (inside the migration transaction)."""

    def close(self) -> None:
        """Close the connection (a later use reconnects)."""

    # ------------------------------------------------------------------ schema

    def version(self) -> int:
        """The schema version the database is at (0: empty)."""
        with self._transaction() as conn:
            return self._version(conn)

    def _version(self, conn: Any) -> int:
        conn.execute(VERSION_TABLE)
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Bring the schema to ``target`` (Rule 2 of :mod:`sipbot.records.schema`).

        Returns:
            The version the database was at before.

        Raises:
            ConfigError: the database is newer than this sipbot.
        """
        with self._transaction() as conn:
            self._lock_schema(conn)
            before = self._version(conn)
        try:
            steps = pending(before, target)
        except ValueError as exc:
            raise ConfigError(str(exc), field=URL_FIELD) from None
        for version, statements in steps:
            with self._transaction() as conn:
                self._lock_schema(conn)
                if self._version(conn) >= version:  # another process got there first
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("DELETE FROM schema_version")
                conn.execute(
                    self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,)
                )
        return before

    # ------------------------------------------------------------------ writing

    def write(self, rows: Sequence[CallRow]) -> None:
        """Store ``rows`` and their transcripts in one transaction (Rules 1-2).

        Raises:
            RecordsUnavailable: try again later.
            RecordsWriteFailed: these records cannot be stored.
        """
        try:
            with self._transaction() as conn:
                cursor = conn.cursor()
                cursor.executemany(self._sql(_INSERT_CALL), [row.values() for row in rows])
                lines = [
                    (row.id, line.seq, line.at, line.role, line.text.replace("\x00", ""))
                    for row in rows
                    for line in row.lines
                ]
                if lines:
                    cursor.executemany(self._sql(_INSERT_LINE), lines)
        except (RecordsUnavailable, RecordsWriteFailed):
            raise
        except Exception as exc:
            raise self._sort_error(exc) from exc

    def purge(self, before: float) -> int:
        """Delete the records of calls started before ``before`` (epoch s); how many."""
        with self._transaction() as conn:
            old = "SELECT id FROM calls WHERE started < ?"
            conn.execute(
                self._sql(f"DELETE FROM transcript_lines WHERE record_id IN ({old})"), (before,)
            )
            return int(
                conn.execute(self._sql("DELETE FROM calls WHERE started < ?"), (before,)).rowcount
            )

    def erase_caller(self, caller: str) -> tuple[int, int]:
        """Delete every record and transcript line of ``caller``: (records, lines) deleted."""
        erased = self.erase(caller)
        return erased.calls, erased.lines

    def erase(self, caller: str) -> Erased:
        """Delete every record (with its transcript and summary) of ``caller``, as given or
        normalised (its ``caller_key``, :func:`sipbot.memory.caller_key`), in one transaction.

        Returns:
            What was deleted, with the recording files the records named (not yet removed).
        """
        where = "caller = ?"
        params: tuple[str, ...] = (caller,)
        key = caller_key(caller)
        if key is not None:
            where, params = "caller = ? OR caller_key = ?", (caller, key)
        with self._transaction() as conn:
            paths = conn.execute(
                self._sql(f"SELECT recording_path FROM calls WHERE ({where})"), params
            ).fetchall()
            ids = f"SELECT id FROM calls WHERE ({where})"
            lines = conn.execute(
                self._sql(f"DELETE FROM transcript_lines WHERE record_id IN ({ids})"), params
            ).rowcount
            calls = conn.execute(self._sql(f"DELETE FROM calls WHERE ({where})"), params).rowcount
        recordings = tuple(sorted({row[0] for row in paths if row[0]}))
        return Erased(int(calls), int(lines), recordings)

    def recent_calls(
        self, key: str, since: float, limit: int, agent: str | None = None
    ) -> list[dict[str, Any]]:
        """A returning caller's answered calls since ``since`` (epoch s), newest first: one
        query on the ``(caller_key, started)`` index (:mod:`sipbot.memory` Rule 4).

        Args:
            key: the caller's key (:func:`sipbot.memory.caller_key`).
            since: the window's start.
            limit: at most this many calls.
            agent: only this agent's calls; None → any agent's.
        """
        sql = (
            "SELECT started, answered, ended, agent, end_reason, summary FROM calls"
            " WHERE caller_key = ? AND started >= ? AND answered IS NOT NULL"
        )
        params: tuple[Any, ...] = (key, since)
        if agent is not None:
            sql += " AND agent = ?"
            params += (agent,)
        sql += " ORDER BY started DESC LIMIT ?"
        with self._reading() as conn:
            return _dicts(conn.execute(self._sql(sql), (*params, limit)))

    # ------------------------------------------------------------------ reading

    def list_calls(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest records first (at most ``limit``), without transcripts."""
        sql = "SELECT * FROM calls ORDER BY started DESC, id"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        with self._transaction() as conn:
            return _dicts(conn.execute(self._sql(sql), params))

    def get(self, record_id: str) -> dict[str, Any] | None:
        """One record with its ``lines`` by id, or by a unique id prefix; None if none/ambiguous."""
        with self._transaction() as conn:
            rows = _dicts(
                conn.execute(
                    self._sql("SELECT * FROM calls WHERE id = ? OR id LIKE ? ORDER BY id LIMIT 2"),
                    (record_id, _like_prefix(record_id)),
                )
            )
            exact = [r for r in rows if r["id"] == record_id]
            rows = exact or rows
            if len(rows) != 1:
                return None
            record = rows[0]
            record["lines"] = self._lines(conn, record["id"])
            return record

    def export(self) -> Iterator[dict[str, Any]]:
        """Every record with its ``lines``, oldest first."""
        with self._transaction() as conn:
            records = _dicts(conn.execute("SELECT * FROM calls ORDER BY started, id"))
            for record in records:
                record["lines"] = self._lines(conn, record["id"])
        yield from records

    def _lines(self, conn: Any, record_id: str) -> list[dict[str, Any]]:
        cursor = conn.execute(
            self._sql(
                "SELECT seq, at, role, text FROM transcript_lines WHERE record_id = ? ORDER BY seq"
            ),
            (record_id,),
        )
        return _dicts(cursor)


class SqliteStore(SqlStore):
    """Records in an SQLite file (WAL, owner-only; Rule 3).

    Args:
        path: the database file; its directory is created (0700) when missing.
        max_size_mb: cap the file's size (``PRAGMA max_page_count``); writes past it fail as a
            full disk does, and those records are lost.
    """

    def __init__(self, path: str, *, max_size_mb: float | None = None) -> None:
        self.path = path
        self.label = f"sqlite:///{path}"
        self.max_size_mb = max_size_mb
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):  # Rule 3: before SQLite makes them 0644
                os.close(os.open(self.path + suffix, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            if self.max_size_mb is not None:
                page = int(db.execute("PRAGMA page_size").fetchone()[0])
                pages = max(1, int(self.max_size_mb * 1024 * 1024 // page))
                db.execute(f"PRAGMA max_page_count = {pages}")
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"cannot open {self.path}: {reason}", field=URL_FIELD) from None
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN DEFERRED")  # WAL: reads a snapshot, never waits for the writer
        try:
            yield db
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("COMMIT")

    def _sort_error(self, exc: Exception) -> Exception:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return RecordsUnavailable(f"{self.label} is locked: {exc}")
        if code == sqlite3.SQLITE_FULL or isinstance(exc, OSError):
            return RecordsWriteFailed(f"{self.label}: database or disk is full")
        return RecordsWriteFailed(f"{self.label}: {exc}")

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def open_store(url: str | None, data_dir: str, *, max_size_mb: float | None = None) -> SqlStore:
    """The store for ``url`` (``sqlite:///PATH``, ``postgresql://...``; None: SQLite in
    ``data_dir``). Nothing is connected yet.

    Raises:
        ConfigError: the URL names no database sipbot supports.
    """
    if url is None:
        return SqliteStore(os.path.join(data_dir, DEFAULT_FILE), max_size_mb=max_size_mb)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = unquote(url.split(":", 1)[1].removeprefix("///"))
        if not path or url.split(":", 1)[1][:3] != "///":
            raise ConfigError(
                "an SQLite URL is sqlite:///PATH (sqlite:////abs/path for an absolute one)",
                field=URL_FIELD,
            )
        return SqliteStore(path, max_size_mb=max_size_mb)
    if scheme in ("postgresql", "postgres"):
        from sipbot.records.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(
        f"unsupported records URL scheme {scheme!r}: use sqlite:///PATH or postgresql://...",
        field=URL_FIELD,
    )


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "").replace("%", "").replace("_", "")
    return escaped + "%" if len(escaped) >= 4 else "\x01"  # short prefixes match nothing
