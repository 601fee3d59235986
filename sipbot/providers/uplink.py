"""Caller audio on its way to a cloud provider: batching and bounded buffering (sans-I/O).

The media path hands a provider session one 20 ms frame at a time; sending each frame as its own
websocket message doubles the JSON/base64 work for no gain, while waiting too long adds latency
to everything the caller says. An :class:`UplinkBuffer` sits between the two:

* Rule 1: :meth:`UplinkBuffer.push` never blocks and never fails; when more than ``limit_ms`` is
  waiting (the provider is reconnecting), the oldest audio is dropped and counted.
* Rule 2: a batch is due when ``batch_ms`` is waiting, or when the oldest waiting byte has
  waited ``max_wait_ms`` (so a lone frame is never held longer than that).
* Rule 3: :meth:`UplinkBuffer.pop` returns at most ``batch_ms`` of audio, cut on a sample
  boundary; a backlog drains as a run of full batches.
* Rule 4: a batch that failed to go out is put back in front (:meth:`UplinkBuffer.unpop`).
* Rule 5: time is a value (``now``, monotonic seconds); nothing here reads a clock.
"""

from __future__ import annotations

from sipbot.domain import AudioFormat

BATCH_MS = 40  # most audio in one message: bounds what batching adds to latency
MAX_WAIT_MS = 20  # a lone 20 ms frame waits at most one frame time for its partner
LIMIT_MS = 10_000  # caller audio kept while a provider reconnects; older audio is dropped


class UplinkBuffer:
    """Caller audio waiting to be sent, in one :class:`AudioFormat`.

    Args:
        audio_format: format of the bytes pushed (sets bytes per ms and the sample width).
        batch_ms: most audio per :meth:`pop`.
        max_wait_ms: longest the oldest waiting byte may wait before a batch is due.
        limit_ms: most audio kept; beyond it the oldest is dropped (see ``dropped_bytes``).
    """

    def __init__(
        self,
        audio_format: AudioFormat,
        *,
        batch_ms: int = BATCH_MS,
        max_wait_ms: int = MAX_WAIT_MS,
        limit_ms: int = LIMIT_MS,
    ) -> None:
        width = 2 if audio_format.encoding == "pcm16" else 1
        self._width = width
        self._batch_bytes = max(width, audio_format.bytes_per_ms * batch_ms // width * width)
        self._limit_bytes = max(self._batch_bytes, audio_format.bytes_per_ms * limit_ms)
        self._max_wait_s = max_wait_ms / 1000.0
        self._data = bytearray()
        self._oldest_at: float | None = None
        self.dropped_bytes = 0

    def __len__(self) -> int:
        """Bytes waiting."""
        return len(self._data)

    def push(self, audio: bytes, now: float) -> None:
        """Queue ``audio`` (Rule 1: drops the oldest audio beyond the limit)."""
        if not audio:
            return
        if not self._data:
            self._oldest_at = now
        self._data += audio
        excess = len(self._data) - self._limit_bytes
        if excess > 0:
            excess += -excess % self._width  # keep whole samples
            del self._data[:excess]
            self.dropped_bytes += excess
            # The oldest audio left is younger than what was dropped; treat it as due now.
            self._oldest_at = now - self._max_wait_s

    def due(self, now: float) -> bool:
        """Whether a batch should be sent now (Rule 2)."""
        if not self._data:
            return False
        if len(self._data) >= self._batch_bytes:
            return True
        assert self._oldest_at is not None
        return now - self._oldest_at >= self._max_wait_s

    def deadline(self) -> float | None:
        """When the waiting audio becomes due by age, or None if nothing is waiting."""
        if self._oldest_at is None or not self._data:
            return None
        return self._oldest_at + self._max_wait_s

    def pop(self, now: float) -> bytes:
        """Take up to one batch of the oldest audio (Rule 3); empty if nothing waits."""
        cut = min(len(self._data), self._batch_bytes)
        cut -= cut % self._width
        batch = bytes(self._data[:cut])
        del self._data[:cut]
        # What is left arrived after the batch just sent; it is at most as old as now.
        self._oldest_at = now if self._data else None
        return batch

    def unpop(self, batch: bytes, now: float) -> None:
        """Put back a batch that could not be sent, ahead of everything waiting."""
        if not batch:
            return
        self._data[:0] = batch
        self._oldest_at = now - self._max_wait_s  # it was already due

    def clear(self) -> None:
        """Drop everything waiting (not counted as dropped)."""
        self._data.clear()
        self._oldest_at = None
