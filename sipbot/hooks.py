"""Integrator hooks, the asyncio shell: runs Python hooks and posts webhooks for the events of
:mod:`sipbot.hook_events` beside the calls, never in their way.

Rules:

* Rule 1: nothing here is awaited on the media path or on a call's end path: :meth:`Hooks.emit`
  returns at once (Python hooks start as tasks, webhook posts are queued); only the call start
  (:meth:`Hooks.call_start`, before the answer) and a transcript line's redaction
  (:meth:`Hooks.redact`, off the media path; the line is stored once it returns) wait, and
  each of those for at most its hook's timeout.
* Rule 2: every hook run is bounded: a hook still running after its timeout is abandoned (an
  async one is cancelled without waiting for it; a sync one keeps its thread until it returns,
  its result ignored). Async hooks run on the loop; sync ones on HOOK_THREADS daemon threads,
  so a blocking hook blocks neither the loop nor the process's exit.
* Rule 3: a hook that raises, times out or is dropped (MAX_IN_FLIGHT runs already pending) is
  logged once per HOOK_LOG_INTERVAL_S per hook and kind, with a count of the rest, and counted
  (``on_failure(event, outcome)``: the ``sipbot_hook_failures`` metric). An exception is
  logged by its type: its text may quote the event (a transcript line a redactor choked on, a
  tool's arguments); with ``server.log_sensitive`` the text follows at DEBUG (sensitive Rule 3).
* Rule 4: transcript hooks redact in config order, each given the previous one's text; a
  failure fails closed (hook_events Rule 3) and stops the chain. Webhooks get the redacted line.
* Rule 5: several call-start hooks run at once; the first decision in config order wins; none
  (or none in time) leaves the dialplan's choice. A webhook's decision is its JSON reply.
* Rule 6: webhooks other than call start are fire and forget: one queue per webhook, in order,
  retried with backoff (:class:`sipbot.webhook.StatusWebhook`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from sipbot.domain import AudioFormat
from sipbot.hook_events import (
    CALL_START,
    TRANSCRIPT,
    CallStart,
    Decision,
    Hook,
    HookEvent,
    TranscriptLine,
    WebhookTarget,
    parse_decision,
    redacted,
)
from sipbot.media.codecs import Decoder, make_decoder
from sipbot.media.vad import EnergyVad, VadEvent
from sipbot.ratelimit import RateLimitedLog
from sipbot.sensitive import log_values
from sipbot.webhook import StatusWebhook, post_for_json

log = logging.getLogger(__name__)

HOOK_THREADS = 4  # sync hooks run on this many daemon threads
MAX_IN_FLIGHT = 256  # hook runs pending at once; more are dropped (Rule 3)
HOOK_LOG_INTERVAL_S = 30.0
WEBHOOK_QUEUE_MAX = 1_024  # events waiting for one webhook
SIGNATURE_HEADER = "X-Sipbot-Signature"

FailureSink = Callable[[str, str], None]  # (event, outcome: error | timeout | dropped)


def webhook_headers(target: WebhookTarget, body: bytes) -> dict[str, str]:
    """The headers of a POST of ``body``: the bearer token and the HMAC-SHA256 signature
    (``sha256=HEX`` of the body with the webhook's secret), when configured."""
    headers = {"Content-Type": "application/json"}
    if target.token is not None:
        headers["Authorization"] = f"Bearer {target.token.reveal()}"
    if target.secret is not None:
        key = target.secret.reveal().encode()
        headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return headers


class _Threads:
    """Daemon threads that run sync hooks (Rule 2); started on first use. A job abandoned (timed
    out) before a thread took it is skipped; at most ``queued`` jobs wait."""

    def __init__(self, count: int, queued: int) -> None:
        self._count = count
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(queued)
        self._threads: list[threading.Thread] = []

    def submit(self, function: Callable[[HookEvent], Any], event: HookEvent) -> asyncio.Future[Any]:
        """Run ``function(event)`` on a hook thread; its future on the loop.

        Raises:
            queue.Full: ``queued`` jobs wait already (threads stuck in hooks).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():  # abandoned after its timeout
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def job() -> None:
            if future.done():  # abandoned while it waited (a benign race: then it just runs)
                return
            try:
                result, error = function(event), None
            except Exception as exc:  # the integrator's code: reported, never raised here
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(settle, result, error)

        if not self._threads:
            for n in range(self._count):
                thread = threading.Thread(target=self._work, name=f"sipbot-hook-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)
        self._jobs.put_nowait(job)
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def close(self) -> None:
        for _ in self._threads:
            with contextlib.suppress(queue.Full):  # stuck threads: daemons, they die with us
                self._jobs.put_nowait(None)
        self._threads.clear()


class Hooks:
    """The configured hooks of a server (see the module rules).

    Args:
        hooks: the loaded ``hooks:`` entries, in config order.
        on_failure: told of each hook run that failed (event name, outcome).
        threads: daemon threads for sync hooks.
        max_in_flight: hook runs pending at once before new ones are dropped.
    """

    def __init__(
        self,
        hooks: Sequence[Hook],
        *,
        on_failure: FailureSink | None = None,
        threads: int = HOOK_THREADS,
        max_in_flight: int = MAX_IN_FLIGHT,
        log_sensitive: bool = False,
    ) -> None:
        self.hooks = tuple(hooks)
        self._log_sensitive = log_sensitive
        self._on_failure = on_failure
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._threads = _Threads(threads, max_in_flight)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._posters: dict[int, StatusWebhook] = {}
        self._session: aiohttp.ClientSession | None = None
        self._log = RateLimitedLog(log, HOOK_LOG_INTERVAL_S)
        self.failures: Counter[tuple[str, str]] = Counter()  # (event, outcome) -> runs

    def same(self, hooks: Sequence[Hook]) -> bool:
        """``hooks`` (reloaded) are these: the same functions, webhooks, events and bounds."""
        return [_key(h) for h in hooks] == [_key(h) for h in self.hooks]

    def wants(self, *events: str) -> bool:
        """Some hook takes one of ``events``."""
        return any(not hook.events.isdisjoint(events) for hook in self.hooks)

    @property
    def redacting(self) -> bool:
        """A Python hook takes transcript lines: they are stored once it returned (Rule 4)."""
        return any(h.function is not None and TRANSCRIPT in h.events for h in self.hooks)

    def _for(self, event: str) -> list[Hook]:
        return [hook for hook in self.hooks if event in hook.events]

    # ------------------------------------------------------------------ events (Rule 1)

    def emit(self, event: HookEvent) -> None:
        """Hand ``event`` to its hooks and return at once (a transcript line goes through
        :meth:`redact` instead)."""
        for hook in self._for(event.name):
            if hook.webhook is not None:
                self._post(hook, event)
            else:
                self._spawn(self._run(hook, event))

    def _post(self, hook: Hook, event: HookEvent) -> None:
        target = hook.webhook
        assert target is not None
        poster = self._posters.get(id(hook))
        if poster is None:
            poster = self._posters[id(hook)] = StatusWebhook(
                target.url,
                timeout_s=hook.timeout_s(""),  # its timeout_ms, or DEFAULT_TIMEOUT_MS
                headers=lambda body: webhook_headers(target, body),
                queue_max=WEBHOOK_QUEUE_MAX,
            )
        poster.post(event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, hook: Hook, event: HookEvent) -> tuple[Any, bool]:
        """Run one Python hook on ``event``, bounded (Rule 2); returns (result, failed)."""
        function = hook.function
        assert function is not None
        loop = asyncio.get_running_loop()
        if self._in_flight >= self._max_in_flight:
            self._failed(hook, event, "dropped", None)
            return None, True
        if hook.is_async:
            pending: asyncio.Future[Any] = loop.create_task(function(event))
        else:
            try:
                pending = self._threads.submit(function, event)
            except queue.Full:
                self._failed(hook, event, "dropped", None)
                return None, True
        self._in_flight += 1
        pending.add_done_callback(self._release)
        try:
            done, _ = await asyncio.wait({pending}, timeout=hook.timeout_s(event.name))
        except asyncio.CancelledError:  # the caller gave up (a call's end, shutdown)
            pending.cancel()
            raise
        if not done:
            pending.cancel()  # not awaited: a hook that ignores cancelling stays its own problem
            self._failed(hook, event, "timeout", None)
            return None, True
        if pending.cancelled() or pending.exception() is not None:
            self._failed(hook, event, "error", None if pending.cancelled() else pending.exception())
            return None, True
        return pending.result(), False

    def _release(self, _: asyncio.Future[Any]) -> None:
        self._in_flight -= 1

    def _failed(
        self, hook: Hook, event: HookEvent, outcome: str, error: BaseException | None
    ) -> None:
        self.failures[(event.name, outcome)] += 1
        if self._on_failure is not None:
            self._on_failure(event.name, outcome)
        now = asyncio.get_running_loop().time()
        what = "timed out" if outcome == "timeout" else outcome
        if outcome == "error":  # Rule 3: the type, not the text
            what = f"raised {type(error).__name__}" if error is not None else "was cancelled"
            if error is not None and log_values(log, self._log_sensitive):
                log.debug(
                    "hook %s on %s (call %s) raised %r",
                    hook.label,
                    event.name,
                    event.call_id,
                    error,
                )
        self._log.warning(
            f"{hook.label}:{outcome}",
            now,
            "hook %s %s on %s (call %s)",
            hook.label,
            what,
            event.name,
            event.call_id,
        )

    # ------------------------------------------------------------------ transcripts (Rule 4)

    async def redact(self, line: TranscriptLine) -> str:
        """``line``'s text as the transcript hooks leave it (fail closed, Rule 4); then the
        redacted line goes to the webhooks. Never raises; waits at most the sum of the
        transcript hooks' timeouts."""
        text = line.text
        for hook in self._for(TRANSCRIPT):
            if hook.function is None:
                continue
            result, failed = await self._run(hook, replace(line, text=text))
            changed = redacted(result, failed=failed)
            if changed is not None:
                text = changed
            if failed:
                break
        done = replace(line, text=text)
        for hook in self._for(TRANSCRIPT):
            if hook.webhook is not None:
                self._post(hook, done)
        return text

    # ------------------------------------------------------------------ call start (Rule 5)

    async def call_start(self, event: CallStart, agents: Iterable[str]) -> Decision | None:
        """Ask the call-start hooks what to do with a call; None: the dialplan's choice."""
        hooks = self._for(CALL_START)
        if not hooks:
            return None
        names = list(agents)
        answers = await asyncio.gather(*(self._decide(hook, event) for hook in hooks))
        for answer in answers:
            decision = parse_decision(answer, names)
            if decision is not None:
                return decision
        return None

    async def _decide(self, hook: Hook, event: CallStart) -> object:
        if hook.function is not None:
            result, _ = await self._run(hook, event)
            return result
        target = hook.webhook
        assert target is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = json.dumps(event.to_json(), default=str).encode()
        headers = webhook_headers(target, body)
        timeout_s = hook.timeout_s(CALL_START)
        try:
            return await post_for_json(self._session, target.url, body, headers, timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._failed(hook, event, "timeout" if isinstance(exc, TimeoutError) else "error", exc)
            return None

    # ------------------------------------------------------------------ the end

    async def aclose(self, timeout_s: float) -> None:
        """Let queued webhook posts go for up to ``timeout_s``; abandon running hooks."""
        await asyncio.gather(*(p.close(timeout_s) for p in self._posters.values()))
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        self._threads.close()


def _key(hook: Hook) -> tuple[object, ...]:
    """What makes two loaded hooks the same (secrets compared by value)."""
    target = hook.webhook
    if target is None:
        return (hook.events, hook.function, hook.timeout_ms)
    token, secret = (s.reveal() if s is not None else None for s in (target.token, target.secret))
    return (hook.events, hook.timeout_ms, target.url, token, secret)


class CallerSpeech:
    """Caller speech start/end for the ``speech.*`` hooks: the energy detector over the frames
    the call sends its provider (PCM16, or G.711 decoded first). Synchronous, cheap (one RMS a
    frame)."""

    def __init__(self, fmt: AudioFormat) -> None:
        pcm = fmt.encoding == "pcm16"
        self._decoder: Decoder | None = None if pcm else make_decoder(fmt.encoding)
        self._vad = EnergyVad(fmt.rate_hz if pcm else 8_000)

    def feed(self, frame: bytes) -> VadEvent | None:
        """One frame; ``speech_start`` / ``speech_end`` on a transition."""
        if self._decoder is not None:
            frame = self._decoder.decode(frame)
        return self._vad.process(frame)
