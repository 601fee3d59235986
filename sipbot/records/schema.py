"""One schema for SQLite and PostgreSQL, as numbered migrations.

Rules:

* Rule 1: one SQL text for both databases: only types both understand (TEXT, INTEGER,
  DOUBLE PRECISION), no autoincrement (record ids are made by sipbot, transcript lines are keyed
  by ``(record_id, seq)``), ``?`` placeholders (the PostgreSQL store rewrites them).
* Rule 2: ``schema_version`` holds one row, the version reached; each migration runs in one
  transaction with its version bump, so a database is always at a whole version.
* Rule 3: migrations only add; a database newer than this sipbot is refused, never "downgraded".

History: version 1 held calls and their transcript; version 2 added the media-quality summary,
the recording path and the source address, and an index on ``caller`` for ``calls erase``;
version 3 added outbound calls: ``direction``, the final dial state (answered, busy, no-answer,
rejected, failed), when it started ringing and how much early media came (ms); version 4 added
the answering-machine detection's result and timings (``amd``, JSON);
version 5 added ``concealed_frames`` (20 ms of lost caller audio concealed, media Rule 7);
version 6 added provider stalls, the recovery time and the provider a call switched to;
version 7 added returning callers (:mod:`sipbot.memory`): ``caller_key`` (the caller, normalised;
NULL for anonymous callers and outbound calls), ``summary`` (JSON, built from the transcript at
call end) and an index on ``(caller_key, started)`` for the lookup at call start.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # version 1
    (
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            caller TEXT NOT NULL,
            did TEXT NOT NULL,
            trunk TEXT,
            route TEXT,
            agent TEXT,
            provider TEXT,
            outcome TEXT NOT NULL,
            started DOUBLE PRECISION NOT NULL,
            answered DOUBLE PRECISION,
            ended DOUBLE PRECISION,
            end_reason TEXT,
            sip_status INTEGER,
            sip_reason TEXT,
            turns INTEGER NOT NULL DEFAULT 0,
            tool_calls INTEGER NOT NULL DEFAULT 0,
            barge_ins INTEGER NOT NULL DEFAULT 0,
            tools TEXT NOT NULL DEFAULT '[]'
        )""",
        "CREATE INDEX calls_started ON calls (started)",
        """CREATE TABLE transcript_lines (
            record_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at DOUBLE PRECISION,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (record_id, seq)
        )""",
    ),
    # version 2
    (
        "ALTER TABLE calls ADD COLUMN media TEXT",
        "ALTER TABLE calls ADD COLUMN recording_path TEXT",
        "ALTER TABLE calls ADD COLUMN source TEXT",
        "CREATE INDEX calls_caller ON calls (caller)",
    ),
    # version 3
    (
        "ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound'",
        "ALTER TABLE calls ADD COLUMN dial_state TEXT",
        "ALTER TABLE calls ADD COLUMN ringing DOUBLE PRECISION",
        "ALTER TABLE calls ADD COLUMN early_media INTEGER NOT NULL DEFAULT 0",
    ),
    # version 4
    ("ALTER TABLE calls ADD COLUMN amd TEXT",),
    # version 5
    ("ALTER TABLE calls ADD COLUMN concealed_frames INTEGER NOT NULL DEFAULT 0",),
    # version 6
    (
        "ALTER TABLE calls ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE calls ADD COLUMN recovery_ms INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE calls ADD COLUMN switched_to TEXT",
    ),
    # version 7
    (
        "ALTER TABLE calls ADD COLUMN caller_key TEXT",
        "ALTER TABLE calls ADD COLUMN summary TEXT",
        "CREATE INDEX calls_caller_key_started ON calls (caller_key, started)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def pending(current: int, target: int = SCHEMA_VERSION) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations that take a database from ``current`` to ``target``: (version, SQL).

    Raises:
        ValueError: ``current`` is newer than ``target`` (Rule 3).
    """
    if current > target:
        raise ValueError(
            f"the records database is at schema version {current}; "
            f"this sipbot knows versions up to {target}"
        )
    return [(v, MIGRATIONS[v - 1]) for v in range(current + 1, target + 1)]
