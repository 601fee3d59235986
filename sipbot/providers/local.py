"""The offline provider: no key, no network. Two modes.

* ``echo`` (the default): an energy VAD finds each caller utterance; when it ends, the
  utterance is spoken back (resampled to 24 kHz) as a new response item, streamed faster than
  real time in chunks the way a cloud model streams, then :class:`TurnComplete`. If the caller
  starts talking while the reply may still be playing, the reply stops (no more chunks) and
  :class:`Interrupted` tells the call to flush what it queued.
* ``loopback``: every input chunk comes straight back as :class:`AudioOut` (resampled to 24 kHz),
  so the whole media path runs continuously (the benchmark uses it).

Input PCM16 16 kHz, output PCM16 24 kHz, like a cloud provider. The session keeps the rules of
:mod:`sipbot.providers.base` (``send_audio`` never blocks or raises; ``close`` is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Literal

from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    AudioFormat,
    AudioOut,
    CallInfo,
    Interrupted,
    ProviderEvent,
    SessionConfig,
    TurnComplete,
)
from sipbot.media.resample import Resampler
from sipbot.media.vad import EnergyVad

log = logging.getLogger(__name__)

LocalMode = Literal["echo", "loopback"]
MAX_UTTERANCE_S = 30.0  # longer speech is cut (the echo of a monologue is not useful)
TAIL_KEEP_MS = 100  # trailing quiet kept from the VAD hangover
AUDIBLE_SLACK_S = 0.3  # pacer pre-buffer and network delay after the last chunk would play
_ids = itertools.count(1)


class LocalProvider:
    """The local provider (see the module docstring).

    Args:
        mode: ``"echo"`` or ``"loopback"``.
        chunk_ms: audio per :class:`AudioOut` of an echo reply.
        speed: how much faster than real time echo replies are streamed.
    """

    name = "local"

    def __init__(self, mode: LocalMode = "echo", *, chunk_ms: int = 100, speed: float = 2.0):
        if mode not in ("echo", "loopback"):
            raise ValueError(f"unknown local provider mode {mode!r} (echo or loopback)")
        self.mode: LocalMode = mode
        self.chunk_ms = chunk_ms
        self.speed = speed

    async def open(self, call: CallInfo, config: SessionConfig) -> LocalSession:
        """A session for ``call`` (never fails: nothing to connect to)."""
        return LocalSession(self.mode, config, call.call_id, self.chunk_ms, self.speed)


class _EventQueue:
    """An unbounded single-consumer queue that ends when closed (cheaper than asyncio.Queue)."""

    def __init__(self) -> None:
        self._items: deque[ProviderEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def put(self, event: ProviderEvent) -> None:
        if self.closed:
            return
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[ProviderEvent]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self.closed:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


class LocalSession:
    """One call with the local provider."""

    def __init__(
        self, mode: LocalMode, config: SessionConfig, call_id: str, chunk_ms: int, speed: float
    ) -> None:
        self.mode = mode
        self.call_id = call_id
        self._events = _EventQueue()
        self._closed = False
        self._loopback = Resampler(PCM16_16K.rate_hz, PCM16_24K.rate_hz)
        self._item_id = f"loopback-{next(_ids)}"
        turn = config.turn_detection
        self._vad = EnergyVad(
            PCM16_16K.rate_hz,
            threshold_dbfs=float(config.options.get("vad_threshold_dbfs", -40.0)),
            hangover_ms=turn.silence_ms,
        )
        self._barge_in = turn.barge_in
        self._preroll: deque[bytes] = deque(maxlen=max(1, turn.prefix_ms // 20))
        self._utterance: list[bytes] = []
        self._utterance_bytes = 0
        self._chunk_in_bytes = PCM16_16K.bytes_per_ms * chunk_ms  # 16 kHz input per chunk
        self._chunk_interval_s = chunk_ms / 1000.0 / speed
        self._reply: asyncio.Task[None] | None = None
        self._reply_item: str | None = None
        self._audible_until = 0.0
        self.truncated: dict[str, int] = {}
        self._failed = False

    @property
    def input_format(self) -> AudioFormat:
        """PCM16 16 kHz."""
        return PCM16_16K

    @property
    def output_format(self) -> AudioFormat:
        """PCM16 24 kHz."""
        return PCM16_24K

    def send_audio(self, audio: bytes) -> None:
        """Take caller audio (never blocks, never raises)."""
        if self._closed or not audio:
            return
        try:
            if self.mode == "loopback":
                self._events.put(AudioOut(self._loopback.process(audio), self._item_id))
            else:
                self._echo_input(audio)
        except Exception:  # Rule 1 of base.py: never raise into the media path
            if not self._failed:
                log.exception("local provider: send_audio failed (logged once per session)")
                self._failed = True

    def _echo_input(self, audio: bytes) -> None:
        event = self._vad.process(audio)
        if event == "speech_start":
            self._utterance = [*self._preroll, audio]
            self._utterance_bytes = sum(len(chunk) for chunk in self._utterance)
            self._preroll.clear()
            if self._barge_in and self._reply_audible():
                self._interrupt()
        elif self._vad.speaking or event == "speech_end":
            if self._utterance_bytes < MAX_UTTERANCE_S * PCM16_16K.bytes_per_ms * 1000:
                self._utterance.append(audio)
                self._utterance_bytes += len(audio)
            if event == "speech_end":
                self._reply_to(b"".join(self._utterance))
                self._utterance, self._utterance_bytes = [], 0
        else:
            self._preroll.append(audio)

    def _reply_audible(self) -> bool:
        running = self._reply is not None and not self._reply.done()
        return running or asyncio.get_running_loop().time() < self._audible_until

    def _interrupt(self) -> None:
        if self._reply is not None:
            self._reply.cancel()
            self._reply = None
        self._audible_until = 0.0
        self._events.put(Interrupted(self._reply_item))

    def _reply_to(self, utterance: bytes) -> None:
        trailing_quiet = max(0, self._vad.hangover_ms - TAIL_KEEP_MS) * PCM16_16K.bytes_per_ms
        utterance = utterance[: max(0, len(utterance) - trailing_quiet)]
        if not utterance:
            return
        if self._reply is not None:
            self._reply.cancel()
        self._reply_item = f"echo-{next(_ids)}"
        self._reply = asyncio.get_running_loop().create_task(
            self._speak(self._reply_item, utterance)
        )

    async def _speak(self, item_id: str, utterance: bytes) -> None:
        """Stream one reply in chunks, faster than real time, then TurnComplete.

        Each chunk is resampled to 24 kHz just before it goes out: resampling a whole
        utterance at once held the event loop (every call's pacer) for 5-20 ms.
        """
        loop = asyncio.get_running_loop()
        duration_s = len(utterance) / (PCM16_16K.bytes_per_ms * 1000)
        self._audible_until = loop.time() + duration_s + AUDIBLE_SLACK_S
        resampler = Resampler(PCM16_16K.rate_hz, PCM16_24K.rate_hz)
        step = self._chunk_in_bytes
        for offset in range(0, len(utterance), step):
            chunk = utterance[offset : offset + step]
            if offset + step >= len(utterance):
                # Zeros after the speech push the filter's delay line out: the reply ends
                # where it should.
                chunk += bytes(2 * 64)
            self._events.put(AudioOut(resampler.process(chunk), item_id))
            await asyncio.sleep(self._chunk_interval_s)
        self._events.put(TurnComplete(item_id))

    def events(self) -> AsyncIterator[ProviderEvent]:
        """The session's events until it is closed."""
        return self._events.__aiter__()

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        """No tools offline: ignored."""

    async def send_text(self, text: str) -> None:
        """No model to tell: ignored (logged at debug level, by its length: it may say which
        key the caller pressed, :mod:`sipbot.sensitive`)."""
        log.debug("local provider: text ignored (%d characters)", len(text))

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Remember how much of ``item_id`` the caller heard (nothing else to do offline)."""
        self.truncated[item_id] = played_ms

    async def close(self) -> None:
        """End the session (idempotent, immediate)."""
        if self._closed:
            return
        self._closed = True
        if self._reply is not None:
            self._reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reply
            self._reply = None
        self._events.close()
