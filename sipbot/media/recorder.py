"""Per-call stereo WAV recording: caller on the left, bot on the right (synchronous).

The bot side is the clock: every outbound frame (one per 20 ms slot, silence included) is paired
with the same number of caller samples, so both channels stay aligned however the caller's
packets arrive.

Rules:

* Rule 1: caller audio that has not arrived when a bot frame is written is silence; caller audio
  that piles up beyond ``max_skew_ms`` (a burst) is dropped oldest first, so the skew is bounded.
* Rule 2: writes are buffered (``flush_bytes``) so the event loop touches the file about once a
  second; :meth:`CallRecorder.close` writes the rest and fixes the WAV header. It is idempotent.
* Rule 3: the file is the caller's voice: it is created readable by its owner only (0600),
  whatever the umask, and an older file of that name is made 0600 too before it is reused.
* Rule 4: before the bot's side has a clock (early media: the call is not answered, nothing is
  sent), the caller's audio is written as it arrives with silence on the bot's channel.
"""

from __future__ import annotations

import os
import wave

import numpy as np

from sipbot.media.resample import Resampler


class CallRecorder:
    """Records one call as 16-bit stereo PCM at ``rate_hz``.

    Args:
        path: the WAV file to create (overwritten).
        rate_hz: sample rate of the file; audio at another supported rate is resampled
            (a codec change during the call).
        flush_bytes: stereo bytes buffered before a write.
        max_skew_ms: most caller audio kept ahead of the bot side.
    """

    def __init__(
        self, path: str, rate_hz: int, *, flush_bytes: int = 65_536, max_skew_ms: int = 200
    ) -> None:
        self.path = path
        self.rate_hz = rate_hz
        self.flush_bytes = flush_bytes
        self.max_skew_bytes = 2 * rate_hz * max_skew_ms // 1000
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # Rule 3
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")  # noqa: SIM115 - closed in close()
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate_hz)
        self._caller = bytearray()
        self._out = bytearray()
        self._resamplers: dict[tuple[str, int], Resampler] = {}

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._wav is None

    def _at_rate(self, side: str, pcm: bytes, rate_hz: int | None) -> bytes:
        if rate_hz is None or rate_hz == self.rate_hz:
            return pcm
        resampler = self._resamplers.get((side, rate_hz))
        if resampler is None:
            resampler = self._resamplers[side, rate_hz] = Resampler(rate_hz, self.rate_hz)
        return resampler.process(pcm)

    def caller(self, pcm: bytes, rate_hz: int | None = None) -> None:
        """Caller audio as it arrives (PCM16 at ``rate_hz``, default the file's rate)."""
        if self._wav is None:
            return
        self._caller += self._at_rate("caller", pcm, rate_hz)
        excess = len(self._caller) - self.max_skew_bytes
        if excess > 0:
            del self._caller[: excess + (excess & 1)]

    def caller_alone(self, pcm: bytes, rate_hz: int | None = None) -> None:
        """Caller audio while the bot sends nothing at all (early media before the answer):
        the caller is the clock, the bot's channel is silence (Rule 4)."""
        if self._wav is None:
            return
        pcm = self._at_rate("caller", pcm, rate_hz)
        self._caller += pcm
        self.bot(bytes(len(self._caller) & ~1))

    def bot(self, pcm: bytes, rate_hz: int | None = None) -> None:
        """One frame the bot sent (or silence), paired with as much caller audio."""
        if self._wav is None:
            return
        pcm = self._at_rate("bot", pcm, rate_hz)
        size = len(pcm) & ~1
        left = bytes(self._caller[:size])
        del self._caller[:size]
        stereo = np.zeros(size, dtype="<i2")  # size/2 samples a channel, interleaved
        stereo[1::2] = np.frombuffer(pcm, dtype="<i2", count=size // 2)
        stereo[0 : 2 * (len(left) // 2) : 2] = np.frombuffer(left, dtype="<i2")
        self._out += stereo.tobytes()
        if len(self._out) >= self.flush_bytes:
            self._write()

    def _write(self) -> None:
        if self._wav is not None and self._out:
            self._wav.writeframesraw(bytes(self._out))
            self._out.clear()

    def close(self) -> None:
        """Write what is buffered and finish the file (idempotent)."""
        if self._wav is None:
            return
        self._write()
        self._wav.close()
        self._file.close()  # wave does not close a file object it was given
        self._wav = None
