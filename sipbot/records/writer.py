"""The asyncio shell around a store: a bounded queue drained by one writer task.

Calls hand their record to :meth:`RecordWriter.submit`, which never blocks and never raises;
the writer task writes batches in a worker thread (``asyncio.to_thread``), so no database work
ever runs on the event loop.

Rules:

* Rule 1: the queue is bounded (``queue_max``); a record that does not fit is dropped and
  counted — calls never wait for the database.
* Rule 2: while the database is unavailable the batch stays at the head of the queue and is
  retried with a growing pause (up to ``RETRY_MAX_S``); the outage is logged when it starts,
  at most every ``LOG_EVERY_S`` while it lasts, and when it ends.
* Rule 3: a batch the database refuses for good (disk full) is dropped and counted; the loss
  is logged once, then at most every ``LOG_EVERY_S``.
* Rule 4: old records are purged (``keep_days``) at start and then every ``PURGE_EVERY_S``.
* Rule 5: the counters ``written``, ``dropped``, ``errors`` and ``queued`` are plain
  attributes, for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from sipbot.errors import RecordsUnavailable, RecordsWriteFailed
from sipbot.records.model import CallRow
from sipbot.records.store import SqlStore

log = logging.getLogger("sipbot.records")

BATCH_MAX = 100  # records per transaction
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
LOG_EVERY_S = 60.0
PURGE_EVERY_S = 86_400.0  # daily
DAY_S = 86_400.0


class RecordWriter:
    """Writes call records off the event loop.

    Args:
        store: where records go (opened and migrated by :meth:`start`).
        queue_max: the most records held while the database is slow or away (Rule 1).
        keep_days: purge records older than this many days; 0 keeps them forever (Rule 4).
        clock: wall-clock seconds (tests pass a fake).
        retry_s: the first and the longest pause between attempts while unavailable (Rule 2).
    """

    def __init__(
        self,
        store: SqlStore,
        *,
        queue_max: int = 10_000,
        keep_days: int = 0,
        clock: Callable[[], float] = time.time,
        retry_s: tuple[float, float] = (RETRY_MIN_S, RETRY_MAX_S),
    ) -> None:
        self.store = store
        self.queue_max = queue_max
        self.keep_days = keep_days
        self.clock = clock
        self.retry_s = retry_s
        self.written = 0
        self.dropped = 0
        self.errors = 0  # failed write attempts (outages and refused batches)
        self.purged = 0
        self._queue: deque[CallRow] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._outage_since: float | None = None
        self._last_log: dict[str, float] = {}
        self._next_purge = 0.0

    @property
    def queued(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    async def start(self) -> None:
        """Connect, migrate and purge (in a thread), then start the writer task.

        Raises:
            ConfigError: the database cannot be opened or reached (one line).
        """
        await asyncio.to_thread(self._open)
        self._next_purge = self.clock() + PURGE_EVERY_S
        self._task = asyncio.get_running_loop().create_task(self._run(), name="records-writer")

    def _open(self) -> None:
        connect = getattr(self.store, "connect", None)
        if connect is not None:
            connect()
        self.store.migrate()
        self._purge()

    def submit(self, row: CallRow) -> bool:
        """Queue ``row`` for writing (Rule 1); False when it was dropped."""
        if self._closing:  # shutting down: the INVITEs refused now are not worth a line each
            self.dropped += 1
            return False
        if len(self._queue) >= self.queue_max:
            self.dropped += 1
            self._log_limited(
                "full",
                logging.WARNING,
                "call record %s dropped: %d records queued (records.queue_max)",
                row.call_id,
                len(self._queue),
            )
            return False
        self._queue.append(row)
        self._idle.clear()
        self._wake.set()
        return True

    async def flush(self) -> None:
        """Return once every queued record has been written or dropped (waits while the
        database is away: bound it with a timeout)."""
        await self._idle.wait()

    async def aclose(self, flush_s: float = 5.0) -> None:
        """Write what is queued (for at most ``flush_s``), then stop and close the store."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), flush_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._queue:
            log.warning("call records: %d queued records not written at exit", len(self._queue))
            self.dropped += len(self._queue)
            self._queue.clear()
        self._idle.set()
        await asyncio.to_thread(self.store.close)

    # ------------------------------------------------------------------ the writer task

    async def _run(self) -> None:
        pause = self.retry_s[0]
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._until_purge())
                if self.clock() >= self._next_purge:
                    await self._purge_async()
                continue
            batch = [self._queue[i] for i in range(min(BATCH_MAX, len(self._queue)))]
            try:
                await asyncio.to_thread(self.store.write, batch)
            except RecordsUnavailable as exc:
                self._outage(exc)
                await self._sleep(pause)
                pause = min(pause * 2, self.retry_s[1])
                continue
            except RecordsWriteFailed as exc:
                self._lost(exc, batch)
            else:
                self.written += len(batch)
                self._recovered()
            for _ in batch:
                self._queue.popleft()
            pause = self.retry_s[0]

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _until_purge(self) -> float:
        return max(0.0, self._next_purge - self.clock())

    async def _purge_async(self) -> None:
        self._next_purge = self.clock() + PURGE_EVERY_S
        try:
            await asyncio.to_thread(self._purge)
        except (RecordsUnavailable, RecordsWriteFailed) as exc:
            log.warning("call records: purge failed: %s", exc)

    def _purge(self) -> None:
        if self.keep_days <= 0:
            return
        deleted = self.store.purge(self.clock() - self.keep_days * DAY_S)
        self.purged += deleted
        if deleted:
            log.info("call records: purged %d older than %d days", deleted, self.keep_days)

    # ------------------------------------------------------------------ logging (Rules 2-3)

    def _outage(self, exc: Exception) -> None:
        self.errors += 1
        if self._outage_since is None:
            self._outage_since = self.clock()
            self._last_log.pop("outage", None)
        self._log_limited(
            "outage",
            logging.WARNING,
            "call records: database unavailable (%s); %d records queued, retrying",
            exc,
            len(self._queue),
        )

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "call records: database back after %.1f s; writing %d queued records",
                self.clock() - self._outage_since,
                len(self._queue),
            )
            self._outage_since = None

    def _lost(self, exc: Exception, batch: list[CallRow]) -> None:
        self.errors += 1
        self.dropped += len(batch)
        self._log_limited(
            "lost",
            logging.ERROR,
            "call records lost: %s (%d records lost so far)",
            exc,
            self.dropped,
        )

    def _log_limited(self, kind: str, level: int, message: str, *args: object) -> None:
        now = self.clock()
        last = self._last_log.get(kind)
        if last is None or now - last >= LOG_EVERY_S:
            self._last_log[kind] = now
            log.log(level, message, *args)
