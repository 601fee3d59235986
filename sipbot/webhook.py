"""The status webhook of an outbound call: each :class:`~sipbot.outbound.DialStatus` is POSTed
as JSON to the request's ``status_callback`` URL.

Rules:

* Rule 1: posting never blocks the call: statuses are queued and sent, in order, by one task
  per call; a target that is down or slow costs the call nothing.
* Rule 2: a failed POST (connection error, timeout, a non-2xx status) is retried after an
  exponential backoff with full jitter (:func:`backoff_delay`), at most ``attempts`` times in
  all; then that status is given up (logged) and the next one is tried.
* Rule 3: the queue is bounded (``QUEUE_MAX``): a call cannot make more statuses than that,
  but a stuck target must not grow memory.

The integrator hooks (:mod:`sipbot.hooks`) post their events with the same sender (any payload
with ``to_json``, ``state`` and ``call_id``; signed with ``headers``), and ask a call-start
webhook for its decision with :func:`post_for_json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

ATTEMPTS = 5
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0
REQUEST_TIMEOUT_S = 5.0
QUEUE_MAX = 64


def backoff_delay(
    attempt: int, rng: random.Random, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S
) -> float:
    """The wait before retry ``attempt`` (1 = the first retry): full jitter over
    ``min(cap, base * 2**(attempt-1))`` (Rule 2)."""
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** (attempt - 1)))


class Payload(Protocol):
    """What the sender posts: a :class:`DialStatus`, or a hook event."""

    @property
    def state(self) -> str: ...  # what it is, for the log

    @property
    def call_id(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


async def post_for_json(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
) -> object:
    """POST ``body`` once and return the reply's JSON (None for a non-2xx status or an empty
    body); no retries: the caller is waiting (a call-start hook).

    Raises:
        aiohttp.ClientError, TimeoutError, OSError: the request failed.
        ValueError: the reply is not JSON.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url, data=body, headers=dict(headers), timeout=timeout) as response:
        if not 200 <= response.status < 300:
            return None
        text = await response.text()
        return json.loads(text) if text.strip() else None


class StatusWebhook:
    """POSTs one call's statuses to ``url`` (see the module rules).

    Args:
        url: the http(s) URL.
        attempts: the most POSTs per status.
        timeout_s: the bound of one POST.
        rng: the jitter's randomness.
        headers: the extra headers of a POST, given its body (a signature, a token).
        queue_max: the most payloads waiting (Rule 3).
    """

    def __init__(
        self,
        url: str,
        *,
        attempts: int = ATTEMPTS,
        timeout_s: float = REQUEST_TIMEOUT_S,
        base_s: float = BACKOFF_BASE_S,
        rng: random.Random | None = None,
        headers: Callable[[bytes], Mapping[str, str]] | None = None,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self.url = url
        self._headers = headers
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.base_s = base_s
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[Payload | None] = asyncio.Queue(queue_max)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.tries = 0

    def post(self, status: Payload) -> None:
        """Queue ``status`` (Rule 1: returns at once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait(status)
        except asyncio.QueueFull:  # Rule 3
            log.warning("status webhook %s: queue full, %s dropped", self.url, status.state)

    async def close(self, timeout_s: float) -> None:
        """Let queued statuses go for up to ``timeout_s``, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        self._task.cancel()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                status = await self._queue.get()
                if status is None:
                    return
                await self._deliver(session, status)

    async def _deliver(self, session: aiohttp.ClientSession, status: Payload) -> None:
        why = ""
        body = json.dumps(status.to_json(), default=str).encode()
        headers = {"Content-Type": "application/json"}
        if self._headers is not None:
            headers.update(self._headers(body))
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt, self._rng, self.base_s))
            self.tries += 1
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        self.delivered += 1
                        return
                    why = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
        self.failed += 1
        log.warning(
            "status webhook %s: %s for call %s not delivered after %d attempts: %s",
            self.url,
            status.state,
            status.call_id,
            self.attempts,
            why,
        )
