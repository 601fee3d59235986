"""Call records: one row per call attempt, with its transcript, in SQLite or PostgreSQL.

- :mod:`~sipbot.records.model`: :class:`CallRow` and :class:`LineRow`, what is stored.
- :mod:`~sipbot.records.schema`: one schema for both databases, as numbered migrations.
- :mod:`~sipbot.records.store`: the shared SQL and the SQLite store (synchronous);
  :mod:`~sipbot.records.postgres` the PostgreSQL one (the only module importing psycopg).
- :mod:`~sipbot.records.writer`: the asyncio shell: a bounded queue, one writer task, work in
  a thread.
- :mod:`~sipbot.records.attempt`: builds a call attempt's row from what the server saw.
- :mod:`~sipbot.records.commands`: ``sipbot calls ...``.
"""

from __future__ import annotations

import os

from sipbot.records.attempt import Attempt
from sipbot.records.model import CallRow, LineRow
from sipbot.records.store import SqlStore, open_store
from sipbot.records.writer import RecordWriter


def default_data_dir() -> str:
    """``$XDG_DATA_HOME/sipbot`` (``~/.local/share/sipbot`` without it)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "sipbot")


__all__ = [
    "Attempt",
    "CallRow",
    "LineRow",
    "RecordWriter",
    "SqlStore",
    "default_data_dir",
    "open_store",
]
