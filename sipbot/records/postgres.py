"""Call records in PostgreSQL (psycopg 3). The only module that imports ``psycopg``.

Rules:

* Rule 1: one synchronous connection, used by one thread at a time; a connection that failed
  is dropped and the next use reconnects (``connect_timeout`` bounds each attempt).
* Rule 2: ``OperationalError`` (server gone, connection refused or reset) means "unavailable,
  try again"; any other database error means these records cannot be written.
* Rule 3: messages name the server as ``postgresql://user@host:port/db``, never the password.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg

from sipbot.errors import ConfigError, RecordsUnavailable, RecordsWriteFailed
from sipbot.records.store import URL_FIELD, SqlStore

CONNECT_TIMEOUT_S = 3
# A server that vanishes without a reset (a network partition) is noticed in ~20 s, not hours.
KEEPALIVES: Final[dict[str, Any]] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
}
SCHEMA_LOCK_KEY = 0x51_7B07  # pg_advisory_xact_lock key serialising migrations


class PostgresStore(SqlStore):
    """Records in a PostgreSQL database named by a ``postgresql://`` URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = safe_url(url)
        self._db: psycopg.Connection[Any] | None = None

    def connect(self) -> None:
        """Connect now (at start: an unreachable server is a configuration error).

        Raises:
            ConfigError: the server cannot be reached or refuses us (one line).
        """
        try:
            self._conn()
        except RecordsUnavailable as exc:
            raise ConfigError(str(exc), field=URL_FIELD) from None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            try:
                self._db = psycopg.connect(
                    self.url, connect_timeout=CONNECT_TIMEOUT_S, **KEEPALIVES
                )
            except psycopg.Error as exc:
                message = f"cannot connect to {self.label}: {_first_line(exc)}"
                raise RecordsUnavailable(message) from None
        return self._db

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        db = self._conn()
        try:
            with db.transaction():
                yield db
        except psycopg.OperationalError as exc:
            self.close()  # Rule 1
            raise RecordsUnavailable(f"{self.label} unavailable: {_first_line(exc)}") from exc

    def _lock_schema(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))

    def _sort_error(self, exc: Exception) -> Exception:
        if isinstance(exc, psycopg.OperationalError):
            self.close()
            return RecordsUnavailable(f"{self.label} unavailable: {_first_line(exc)}")
        return RecordsWriteFailed(f"{self.label}: {_first_line(exc)}")

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(psycopg.Error):
                db.close()


def safe_url(url: str) -> str:
    """``postgresql://user:secret@host:5432/db`` → ``postgresql://user@host:5432/db`` (Rule 3)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
