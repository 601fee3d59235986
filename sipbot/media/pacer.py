"""The outbound pacer: the 20 ms cadence and what goes into each frame (sans-I/O).

Two small cores:

* :class:`FrameClock` says *when*: absolute deadlines ``t0 + k * period`` (k counted as an
  integer, so nothing accumulates and nothing drifts). One clock drives a whole phase group of
  calls in :mod:`sipbot.media.ticker`.
* :class:`Pacer` says *what*: for each slot exactly one frame, audio or silence, from the bursty
  audio a provider pushes. It never reads a clock: its unit of time is the slot (one ``pull``).

Pacer rules:

* Rule 1: every :meth:`Pacer.pull` returns exactly one frame of ``frame_bytes``.
* Rule 2 (pre-buffer): after silence, audio starts once ``prebuffer_ms`` is queued, or once it
  has waited ``max_hold_ms`` worth of slots (a short reply is never stuck). Once playing, frames
  play back to back until the queue runs dry; then silence, and the pre-buffer applies again.
* Rule 3 (item boundaries): a frame never mixes two items. The tail of an item that does not
  fill a frame is padded with silence, as is a partial frame when the queue runs dry.
* Rule 4 (accounting): ``played_ms(item)`` counts the item's audio bytes that left in frames,
  exact to the sample (padding is not counted).
* Rule 5 (flush): :meth:`Pacer.flush` drops everything queued; the very next frame is silence.
"""

from __future__ import annotations

from collections import deque

from sipbot.media.formats import FRAME_MS

FRAME_S = FRAME_MS / 1000.0
MAX_CATCHUP_FRAMES = 3  # after a stall, at most this many frames go out at once; the rest skip
_EPSILON_S = 1e-6  # a deadline this close to `now` is due (float rounding of t0 + k*period)


class FrameClock:
    """Absolute deadlines ``t0 + k * period_s``.

    Args:
        t0: the first deadline (monotonic seconds).
        period_s: the frame period.
        max_catchup: most frames reported due at once; deadlines further behind are skipped.
    """

    def __init__(
        self, t0: float, period_s: float = FRAME_S, max_catchup: int = MAX_CATCHUP_FRAMES
    ) -> None:
        self.t0 = t0
        self.period_s = period_s
        self.max_catchup = max_catchup
        self.index = 0  # deadlines passed so far
        self.skipped = 0  # deadlines skipped after stalls, in total

    @property
    def next_deadline(self) -> float:
        """The next deadline not yet reported due."""
        return self.t0 + self.index * self.period_s

    def due(self, now: float) -> tuple[int, int]:
        """Report the deadlines passed at ``now``: ``(frames to send, frames skipped)``.

        Normally ``(1, 0)`` once per period. After a stall of ``n`` periods, ``(min(n,
        max_catchup), n - min(n, max_catchup))``: a bounded catch-up burst, then the clock is back
        on its original grid (it resynchronises by skipping, it never shifts).
        """
        behind = now - self.next_deadline + _EPSILON_S
        if behind < 0.0:
            return 0, 0
        passed = int(behind // self.period_s) + 1
        self.index += passed
        frames = min(passed, self.max_catchup)
        skipped = passed - frames
        self.skipped += skipped
        return frames, skipped


class Pacer:
    """One call's outbound audio queue, pulled once per 20 ms slot.

    Args:
        frame_bytes: bytes per frame in the queued format (PCM16 or G.711 bytes).
        silence: one frame of silence in that format (also used as padding).
        bytes_per_ms: bytes per millisecond of that format.
        prebuffer_ms: audio queued before playing starts after silence (0 = start at once).
        max_hold_ms: longest the pre-buffer may hold audio back, in slots of ``FRAME_MS``.
    """

    def __init__(
        self,
        frame_bytes: int,
        silence: bytes,
        bytes_per_ms: int,
        *,
        prebuffer_ms: int = 60,
        max_hold_ms: int = 40,
    ) -> None:
        if len(silence) != frame_bytes:
            raise ValueError("silence must be exactly one frame")
        self.frame_bytes = frame_bytes
        self.silence = silence
        self.bytes_per_ms = bytes_per_ms
        self.prebuffer_bytes = prebuffer_ms * bytes_per_ms
        self.max_hold_frames = -(-max_hold_ms // FRAME_MS)
        self.playing = False  # audio frames are going out back to back
        self.talkspurt_start = False  # the last frame pulled is audio after silence
        self.last_was_audio = False
        self._chunks: deque[tuple[str, bytes]] = deque()
        self._offset = 0  # bytes of the first chunk already played
        self._queued = 0
        self._held_frames = 0
        self._played: dict[str, int] = {}
        self._last_item: str | None = None

    @property
    def queued_bytes(self) -> int:
        """Audio bytes waiting to be played."""
        return self._queued

    @property
    def queued_ms(self) -> int:
        """Milliseconds of audio waiting to be played (rounded down)."""
        return self._queued // self.bytes_per_ms

    def push(self, audio: bytes, item_id: str) -> None:
        """Queue ``audio`` belonging to provider response ``item_id``."""
        if not audio:
            return
        self._chunks.append((item_id, audio))
        self._queued += len(audio)
        self._played.setdefault(item_id, 0)

    def pull(self) -> bytes:
        """The frame for this slot (audio, or ``silence``); see the module rules."""
        if not self.playing:
            if not self._queued or (
                self._queued < self.prebuffer_bytes and self._held_frames < self.max_hold_frames
            ):
                if self._queued:
                    self._held_frames += 1
                self.talkspurt_start = self.last_was_audio = False
                return self.silence
            self.playing = True
            self.talkspurt_start = not self.last_was_audio
        else:
            self.talkspurt_start = False
        frame = self._take_frame()
        self.last_was_audio = True
        if not self._queued:
            self.playing = False
            self._held_frames = 0
        return frame

    def _take_frame(self) -> bytes:
        """One frame from the head of the queue (padded at an item's end or an underrun)."""
        item_id, data = self._chunks[0]
        start = self._offset
        end = start + self.frame_bytes
        if end <= len(data):  # the common case: one slice of one chunk
            self._offset = end
            if end == len(data):
                self._chunks.popleft()
                self._offset = 0
            self._account(item_id, self.frame_bytes)
            return data[start:end]
        parts = [data[start:]]
        size = len(data) - start
        self._chunks.popleft()
        self._offset = 0
        while self._chunks and self._chunks[0][0] == item_id and size < self.frame_bytes:
            data = self._chunks[0][1]
            need = self.frame_bytes - size
            if need >= len(data):
                parts.append(data)
                size += len(data)
                self._chunks.popleft()
            else:
                parts.append(data[:need])
                size += need
                self._offset = need
        self._account(item_id, size)
        if size < self.frame_bytes:
            parts.append(self.silence[size:])
        return b"".join(parts)

    def _account(self, item_id: str, size: int) -> None:
        self._queued -= size
        self._played[item_id] += size
        self._last_item = item_id

    def flush(self) -> dict[str, int]:
        """Drop all queued audio (barge-in); the next frame is silence.

        Returns:
            ``{item_id: played_ms}`` for every item that had audio queued and for the item
            that played last, i.e. every item the caller may have heard only partly.
        """
        items = {item_id for item_id, _ in self._chunks}
        if self._last_item is not None:
            items.add(self._last_item)
        self._chunks.clear()
        self._offset = 0
        self._queued = 0
        self._held_frames = 0
        self.playing = False
        return {item_id: self.played_ms(item_id) for item_id in items}

    def inherit_accounting(self, previous: Pacer) -> None:
        """Continue the played-ms accounting of ``previous`` (replaced on a codec change)."""
        for item_id, size in previous._played.items():
            self._played[item_id] = size * self.bytes_per_ms // previous.bytes_per_ms
        self._last_item = previous._last_item

    @property
    def last_item(self) -> str | None:
        """The item of the last audio frame pulled (None before any)."""
        return self._last_item

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` sent so far (0 for an unknown item), rounded down."""
        return self._played.get(item_id, 0) // self.bytes_per_ms
