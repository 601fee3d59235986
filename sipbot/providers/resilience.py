"""The asyncio shell both cloud adapters share: uplink sender, event queue, reconnection.

A :class:`ResilientSession` is a ``ProviderSession`` whose connection may be replaced during the
call. Subclasses say how to connect, send a batch of caller audio, receive, and disconnect;
this class runs them:

* Rule 1: ``send_audio`` only appends to an :class:`UplinkBuffer` (never blocks, never raises);
  a sender task sends due batches while a connection is up. While none is, audio waits
  (bounded: the oldest is dropped).
* Rule 2: a supervisor task serves one connection at a time. When the receiver returns (a
  planned end such as goAway or session expiry) or the sender or receiver fails (a dropped
  socket), the connection is closed, the subclass closes what it left open, and a new one is
  made after the :class:`ReconnectBudget`'s delay. Every reconnection is a
  :class:`ProviderNotice`; a spent budget is one :class:`ProviderFailed`, then the events end.
* Rule 3: ``close()`` is idempotent and bounded: it cancels the tasks and closes the connection
  with a timeout; ``events()`` then ends.
* Rule 4: a stall (:class:`StallWatch`: output due and nothing for ``stall_timeout_s``) ends the
  connection like a drop, with one :class:`ProviderStalled`, and is resumed in place with a
  single attempt (``stall_recovery`` is set meanwhile: Gemini presents its resumption handle,
  OpenAI seeds a new session and asks for the answer again). A failed resume, or a second stall
  before a reply completed, is a :class:`ProviderFailed` at once (the call then fails over).
* Rule 5: what the caller heard of a cut reply (:meth:`heard_part`, from :class:`HeardText`)
  replaces that reply in the transcript kept for seeding, and is reported as :class:`Heard`; a
  connection lost mid-reply turns the reply's transcript pieces into its final transcript.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from sipbot.domain import (
    AudioFormat,
    AudioOut,
    CallInfo,
    Heard,
    ProviderEvent,
    ProviderFailed,
    ProviderNotice,
    ProviderStalled,
    SessionConfig,
    Transcript,
)
from sipbot.errors import ProviderConnectError
from sipbot.providers.continuity import (
    STALL_TIMEOUT_S,
    HeardText,
    ReconnectBudget,
    StallWatch,
    TranscriptLog,
)
from sipbot.providers.uplink import UplinkBuffer

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # a stuck peer must not hold a hung-up call
STALLED = "stalled"  # why a connection ended when its StallWatch fired


class ResilientSession(abc.ABC):
    """Base of the cloud provider sessions (see the module docstring).

    Class attributes:
        caller_text_due: a caller transcript means the model owes an answer (StallWatch).

    Args:
        name: provider name, for notices and logs.
        call: the call this session serves.
        config: the session settings.
        audio_format: format of caller audio in (``input_format``).
        output_format: format of agent audio out.
        max_attempts: consecutive failed reconnections before giving up.
    """

    caller_text_due = True

    def __init__(
        self,
        name: str,
        call: CallInfo,
        config: SessionConfig,
        audio_format: AudioFormat,
        output_format: AudioFormat,
        *,
        max_attempts: int,
    ) -> None:
        self.name = name
        self.call = call
        self.config = config
        self.transcript = TranscriptLog(config.history)
        self._input_format = audio_format
        self._output_format = output_format
        self._loop = asyncio.get_running_loop()
        self._uplink = UplinkBuffer(audio_format)
        self._wake = asyncio.Event()
        self._budget = ReconnectBudget(max_attempts=max_attempts)
        self._events: asyncio.Queue[ProviderEvent | None] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self.watch = StallWatch(
            config.stall_timeout_s or STALL_TIMEOUT_S, caller_text_due=self.caller_text_due
        )
        self.stall_recovery = False  # connect() is resuming after a stall (Rule 4)
        self._armed = asyncio.Event()  # the watch has a deadline
        self._heard = HeardText(output_format.bytes_per_ms)
        self._agent_pieces: list[str] = []  # agent transcript of the reply arriving

    # ----------------------------------------------------------------- for subclasses

    @abc.abstractmethod
    async def connect(self, first: bool) -> str:
        """Open and configure a connection (``first``: the call's first one, greet on it).

        Returns a few words on how (for the reconnection notice).

        Raises:
            ProviderConnectError: the attempt failed (and left nothing open).
        """

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the current connection, if any (called with a time bound)."""

    @abc.abstractmethod
    async def send_batch(self, audio: bytes) -> None:
        """Send one batch of caller audio on the current connection."""

    @abc.abstractmethod
    async def receive(self) -> str:
        """Receive until the connection should be replaced; returns why. Raises if it broke."""

    @abc.abstractmethod
    def connection_lost(self) -> list[ProviderEvent]:
        """Events closing what the ended connection left open (e.g. a reply cut short)."""

    def emit(self, event: ProviderEvent) -> None:
        """Queue an event for ``events()`` (final transcripts are also logged for seeding)."""
        if isinstance(event, AudioOut):
            self._heard.audio(event.item_id, len(event.audio))
        elif isinstance(event, Transcript) and event.role == "agent" and not event.final:
            self._heard.piece(event.text)
            self._agent_pieces.append(event.text)
        self.watch.event(event, self.now())
        if self.watch.due:
            self._armed.set()
        self._queue(event)

    def _queue(self, event: ProviderEvent) -> None:
        if isinstance(event, Transcript):
            self.transcript.add(event)
            if event.role == "agent" and event.final:
                self._agent_pieces.clear()
        self._events.put_nowait(event)

    def expect_output(self) -> None:
        """The model owes an answer from now (text, tool result or greeting sent; Rule 4)."""
        self.watch.expect(self.now())
        self._armed.set()

    def heard_part(self, item_id: str, played_ms: int) -> str | None:
        """What the caller heard of ``item_id`` (Rule 5); None: unknown, or heard whole."""
        text = self._heard.heard(item_id, played_ms)
        if text is None or len(text.split()) >= self._heard.word_count(item_id):
            return None
        self.transcript.cut_last_agent(text)
        self._queue(Heard(item_id, played_ms, text))
        return text

    def now(self) -> float:
        """The loop's monotonic clock, in seconds."""
        return self._loop.time()

    async def start(self) -> None:
        """Make the first connection, then let the supervisor run the session.

        Raises:
            ProviderConnectError: the first connection failed.
        """
        await self.connect(first=True)
        self._budget.connected(self.now())
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.name}-session")

    # ----------------------------------------------------------------- ProviderSession

    @property
    def input_format(self) -> AudioFormat:
        return self._input_format

    @property
    def output_format(self) -> AudioFormat:
        return self._output_format

    def send_audio(self, audio: bytes) -> None:
        if self._closed:
            return
        uplink = self._uplink
        was_empty = len(uplink) == 0
        now = self._loop.time()
        uplink.push(audio, now)
        if was_empty or uplink.due(now):
            self._wake.set()

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            # the cancelled task keeps its CancelledError, whose traceback holds the frames of
            # this session's loops: held here, that was a reference cycle (session → task →
            # traceback → frames → session) that only the cyclic GC freed (issue 12)
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        await bounded(self.disconnect())
        self._events.put_nowait(None)

    # ----------------------------------------------------------------- the supervisor

    async def _supervise(self) -> None:
        try:
            while True:
                reason = await self._serve()
                await bounded(self.disconnect())
                for event in self.connection_lost():
                    self._queue(event)  # not to the StallWatch: nothing new arrived
                if self._agent_pieces:  # a reply cut short: what arrived of it (Rule 5)
                    self._queue(Transcript("agent", "".join(self._agent_pieces).strip()))
                    self._agent_pieces.clear()
                if reason == STALLED:
                    if not await self._resume_stalled():
                        return
                    continue
                delay = self._budget.lost(self.now())
                self.emit(ProviderNotice(f"{self.name}: connection ended ({reason}); reconnecting"))
                if not await self._reconnect(delay):
                    return
        finally:
            if not self._closed:
                self._closed = True
                self._events.put_nowait(None)

    async def _resume_stalled(self) -> bool:
        """One attempt to resume after a stall (Rule 4); False: ProviderFailed was emitted."""
        if self.watch.in_a_row > 1:
            self.emit(ProviderFailed(f"{self.name}: stalled twice"))
            return False
        self.emit(ProviderStalled(f"{self.name}: no output for {self.watch.timeout_s:g} s"))
        self.stall_recovery = True
        try:
            how = await self.connect(first=False)
        except ProviderConnectError as error:
            self.emit(ProviderFailed(f"{self.name}: stalled and cannot resume: {error}"))
            return False
        finally:
            self.stall_recovery = False
        self._budget.connected(self.now())
        self.expect_output()  # the answer is still owed
        self.emit(ProviderNotice(f"{self.name}: resumed after a stall ({how})"))
        return True

    async def _reconnect(self, delay: float | None) -> bool:
        last = "the connection kept ending"
        while delay is not None:
            await asyncio.sleep(delay)
            try:
                how = await self.connect(first=False)
            except ProviderConnectError as error:
                logger.warning("call %s: %s", self.call.call_id, error)
                last = str(error)
                delay = self._budget.failed()
                continue
            self._budget.connected(self.now())
            if self.watch.due:  # a reply was owed when the connection ended: still is
                self.expect_output()
            self.emit(ProviderNotice(f"{self.name}: reconnected ({how})"))
            return True
        self.emit(ProviderFailed(f"{self.name}: gave up reconnecting: {last}"))
        return False

    async def _serve(self) -> str:
        """Run the sender and the receiver on the current connection; returns why it ended."""
        sender = asyncio.create_task(self._send_loop())
        receiver = asyncio.create_task(self.receive())
        watchdog = asyncio.create_task(self._watchdog())
        tasks = {sender, receiver, watchdog}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        task = done.pop()
        error = task.exception()
        return describe(error) if error is not None else str(task.result())

    async def _watchdog(self) -> str:
        """Return STALLED once the StallWatch fires (one timer at its deadline, Rule 4)."""
        watch, armed = self.watch, self._armed
        while True:
            deadline = watch.deadline()
            if deadline is None:
                armed.clear()
                await armed.wait()
                continue
            delay = deadline - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            elif watch.stalled(self.now()):
                return STALLED

    async def _send_loop(self) -> str:
        uplink, wake, loop = self._uplink, self._wake, self._loop
        while True:
            now = loop.time()
            if uplink.due(now):
                batch = uplink.pop(now)
                try:
                    await self.send_batch(batch)
                except Exception:
                    # The connection broke: keep the audio for the next one. (A cancelled
                    # send has usually been written already, so it is not put back.)
                    uplink.unpop(batch, loop.time())
                    raise
                continue
            wake.clear()
            deadline = uplink.deadline()
            timer = loop.call_at(deadline, wake.set) if deadline is not None else None
            await wake.wait()
            if timer is not None:
                timer.cancel()


async def bounded(awaitable: Awaitable[Any], timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Await a close, bounded in time; errors while closing are not interesting."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await awaitable


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, for notices and logs."""
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name
