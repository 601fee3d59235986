"""Reading call records for the HTTP API without blocking the event loop.

The records writer owns its own database connection on its own thread; this reader opens a
second one (lazily) and uses it from a worker thread, one query at a time. Callers are masked
and transcripts come only with a single record, as on the live page.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sipbot.ops.observe import mask_number
from sipbot.records import open_store
from sipbot.records.commands import remove_recordings

LIST_FIELDS = (
    "id",
    "call_id",
    "caller",
    "did",
    "route",
    "agent",
    "provider",
    "outcome",
    "started",
    "answered",
    "ended",
    "end_reason",
    "sip_status",
    "turns",
    "tool_calls",
    "barge_ins",
    "trunk",
    "direction",
    "dial_state",
    "ringing",
)


class RecordsReader:
    """Lists and fetches call records on a worker thread (one query at a time).

    Args:
        url: the records database URL (None: SQLite in ``data_dir``).
        data_dir: where the SQLite file lives.
    """

    def __init__(self, url: str | None, data_dir: str) -> None:
        self._url = url
        self._data_dir = data_dir
        self._store: Any = None
        self._lock = asyncio.Lock()

    async def list(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records (no transcripts); [] when the database cannot be read."""
        async with self._lock:
            rows = await asyncio.to_thread(self._call, "list_calls", limit)
        return [view(row) for row in rows or []]

    async def get(self, record_id: str) -> dict[str, Any] | None:
        """One record with its transcript ``lines``, or None."""
        async with self._lock:
            row = await asyncio.to_thread(self._call, "get", record_id)
        if not row:
            return None
        out = view(row)
        out["lines"] = [
            {"at": line.get("at"), "role": line.get("role"), "text": line.get("text")}
            for line in row.get("lines", [])
        ]
        out["recording_path"] = row.get("recording_path")
        return out

    async def erase(self, caller: str) -> dict[str, Any] | None:
        """``sipbot calls erase --caller`` over HTTP: the caller's records, transcripts,
        summaries and recording files; what was removed, or None when the database failed."""
        async with self._lock:
            return await asyncio.to_thread(self._erase, caller)

    def _erase(self, caller: str) -> dict[str, Any] | None:
        erased = self._call("erase", caller)
        if erased is None:
            return None
        files = remove_recordings(erased.recordings)
        return {
            "caller": caller,
            "calls": erased.calls,
            "lines": erased.lines,
            "recordings_removed": list(files.removed),
            "recordings_missing": list(files.missing),
            "recordings_failed": [path for path, _ in files.failed],
        }

    def _call(self, method: str, arg: Any) -> Any:
        try:
            if self._store is None:
                self._store = open_store(self._url, self._data_dir)
            return getattr(self._store, method)(arg)
        except Exception:  # an outage: the page shows what it has; the writer logs outages
            self._close()
            return None

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                return


def view(row: dict[str, Any]) -> dict[str, Any]:
    """A record as the API shows it: the caller masked, media parsed, a recording flag."""
    out = {key: row.get(key) for key in LIST_FIELDS}
    out["caller"] = mask_number(str(row.get("caller") or ""))
    media = row.get("media")
    try:
        out["media"] = json.loads(media) if isinstance(media, str) else media
    except ValueError:
        out["media"] = None
    out["has_recording"] = bool(row.get("recording_path"))
    return out
