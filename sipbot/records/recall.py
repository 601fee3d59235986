"""The asyncio shell that reads a returning caller's earlier calls at call start.

The lookup runs on its own connection (the writer's is used by the writer's thread only) in
one worker thread, so no database work runs on the event loop.

Rules:

* Rule 1: a lookup never delays a call by more than ``timeout_s``: past it the call goes on
  without memory, and a lookup that has not started yet is cancelled.
* Rule 2: while the store is failing (an error or a timeout) lookups are skipped at once for
  ``retry_s``, so an unreachable database costs the calls after it nothing; the outage is
  logged once when it starts and once when it ends.
* Rule 3: at most ``max_pending`` lookups wait for the worker; more are skipped (no memory).
* Rule 4: the counters ``lookups``, ``found``, ``failed`` and ``skipped`` are plain
  attributes, for metrics and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sipbot.records.store import SqlStore

log = logging.getLogger("sipbot.records")

LOOKUP_TIMEOUT_S = 0.5
RETRY_S = 10.0
MAX_PENDING = 16


class Recall:
    """Reads earlier calls of a caller for :mod:`sipbot.memory`.

    Args:
        store: a store of its own (not the writer's); connected on first use.
        timeout_s: the longest a call waits for its lookup (Rule 1).
        retry_s: how long lookups are skipped after a failure (Rule 2).
        max_pending: the most lookups waiting for the worker (Rule 3).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        store: SqlStore,
        *,
        timeout_s: float = LOOKUP_TIMEOUT_S,
        retry_s: float = RETRY_S,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.max_pending = max_pending
        self.clock = clock
        self.lookups = 0
        self.found = 0
        self.failed = 0
        self.skipped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._down_until: float | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sipbot-recall")

    async def recent_calls(
        self, key: str, since: float, limit: int, agent: str | None = None
    ) -> list[dict[str, Any]]:
        """The caller's recent calls (``SqlStore.recent_calls``); [] when none, skipped or the
        store failed (Rules 1-3). Never raises."""
        rows = await self.query(key, since, limit, agent)
        return [] if rows is None else rows

    async def query(
        self, key: str, since: float, limit: int, agent: str | None = None
    ) -> list[dict[str, Any]] | None:
        """The caller's recent calls, as :meth:`recent_calls`, but None when the store gave no
        answer (skipped, failed or late: Rules 1-3), so that an answer can be kept and reused.
        Never raises."""
        now = self.clock()
        if self._down_until is not None and now < self._down_until:
            self.skipped += 1
            return None
        with self._lock:
            if self._pending >= self.max_pending:
                self.skipped += 1
                return None
            self._pending += 1
        self.lookups += 1
        job = self._executor.submit(self.store.recent_calls, key, since, limit, agent)
        job.add_done_callback(self._done)
        try:
            rows = await asyncio.wait_for(asyncio.wrap_future(job), self.timeout_s)
        except TimeoutError:
            job.cancel()
            self._failing(f"no answer within {self.timeout_s:g} s")
            return None
        except Exception as exc:  # any database error: the call goes on without memory
            self._failing(str(exc) or type(exc).__name__)
            return None
        if self._down_until is not None:
            self._down_until = None
            log.warning("returning callers: the records database answers again")
        self.found += bool(rows)
        return rows

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    def _failing(self, reason: str) -> None:
        self.failed += 1
        if self._down_until is None:
            log.warning(
                "returning callers: records lookup failed (%s); calls go on without memory",
                reason,
            )
        self._down_until = self.clock() + self.retry_s

    async def aclose(self) -> None:
        """Close the store (in the worker) and stop the worker."""
        closing = self._executor.submit(self.store.close)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(closing), self.timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
