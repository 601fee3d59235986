"""``sipbot calls list|show|export|erase``: read and erase call records from a terminal.

Each command opens the store named by the config (or ``--url``), migrates it, does one thing
and prints to ``out``. Times print as UTC ISO 8601.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from sipbot.memory import caller_key
from sipbot.records.model import CALL_COLUMNS
from sipbot.records.store import SqlStore

LIST_COLUMNS = ("id", "started", "caller", "did", "agent", "outcome", "end_reason", "duration")
TIME_KEYS = ("started", "answered", "ended", "at")


def list_command(store: SqlStore, out: IO[str], limit: int | None) -> int:
    """A table of the newest records."""
    rows = [_summary(r) for r in store.list_calls(limit)]
    if not rows:
        print("no call records", file=out)
        return 0
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in LIST_COLUMNS}
    print("  ".join(c.upper().ljust(widths[c]) for c in LIST_COLUMNS).rstrip(), file=out)
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in LIST_COLUMNS).rstrip(), file=out)
    return 0


def show_command(store: SqlStore, out: IO[str], err: IO[str], record_id: str) -> int:
    """One record, its tool calls and its transcript; exit 1 when there is no such record."""
    record = store.get(record_id)
    if record is None:
        print(f"sipbot calls show: no record {record_id!r} (or the prefix is ambiguous)", file=err)
        return 1
    for key in CALL_COLUMNS:
        value = record.get(key)
        if key in ("tools", "media") or value is None:
            continue
        print(f"{key + ':':16}{_text(key, value)}", file=out)
    if record.get("media"):
        print(f"{'media:':16}{record['media']}", file=out)
    for tool in json.loads(record.get("tools") or "[]"):
        error = f" error={tool['error']}" if tool.get("error") else ""
        print(f"tool {tool['name']}({tool['arguments']}) -> {tool['output']}{error}", file=out)
    for line in record["lines"]:
        at = _iso(line["at"]) if line["at"] is not None else "-"
        print(f"[{at}] {line['role']}: {line['text']}", file=out)
    return 0


def export_command(store: SqlStore, out: IO[str], fmt: str) -> int:
    """Every record: JSON lines (with ``lines``) or CSV (the calls table; the transcript joined
    into one ``transcript`` column, ``role: text`` per line)."""
    records = store.export()
    if fmt == "jsonl":
        for record in records:
            print(json.dumps(_jsonable(record), ensure_ascii=False), file=out)
        return 0
    writer = csv.writer(out)
    writer.writerow([*CALL_COLUMNS, "transcript"])
    for record in records:
        transcript = "\n".join(f"{ln['role']}: {ln['text']}" for ln in record["lines"])
        writer.writerow([*(record.get(c) for c in CALL_COLUMNS), transcript])
    return 0


def erase_command(store: SqlStore, out: IO[str], caller: str) -> int:
    """Delete every record of one caller (a data-subject request): its transcript, its summary
    (what returning callers are remembered by) and the recording files it names. Idempotent:
    a second run finds nothing; a recording already gone is reported, not an error."""
    erased = store.erase(caller)
    key = caller_key(caller)
    also = f" (and records of {key})" if key is not None and key != caller else ""
    files = remove_recordings(erased.recordings)
    for path in files.removed:
        print(f"removed recording {path}", file=out)
    for path in files.missing:
        print(f"recording {path} was already gone", file=out)
    for path, reason in files.failed:
        print(f"recording {path} NOT removed: {reason}", file=out)
    print(
        f"erased {erased.calls} call records, {erased.lines} transcript lines and "
        f"{len(files.removed)} recording files of caller {caller}{also}",
        file=out,
    )
    return 0


@dataclass(frozen=True, slots=True)
class RemovedFiles:
    """What :func:`remove_recordings` did: removed, already gone, not removed (with why)."""

    removed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


def remove_recordings(paths: Iterable[str]) -> RemovedFiles:
    """Remove the recording files of erased records (a file already gone is no error)."""
    removed: list[str] = []
    missing: list[str] = []
    failed: list[tuple[str, str]] = []
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            missing.append(path)
        except OSError as exc:
            failed.append((path, exc.strerror or str(exc)))
        else:
            removed.append(path)
    return RemovedFiles(tuple(removed), tuple(missing), tuple(failed))


def _summary(record: dict[str, Any]) -> dict[str, str]:
    ended, started = record.get("ended"), record["started"]
    duration = f"{ended - started:.1f}s" if ended is not None else "-"
    row = {c: _text(c, record.get(c)) for c in LIST_COLUMNS if c != "duration"}
    row["duration"] = duration
    return row


def _text(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in TIME_KEYS:
        return _iso(value)
    return str(value)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in ("tools", "media", "amd"):  # JSON text columns
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


def rows_of(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as plain comparable dicts (tests compare SQLite and PostgreSQL with it)."""
    return [_jsonable(r) for r in records]
