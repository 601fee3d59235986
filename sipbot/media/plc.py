"""Packet-loss concealment for inbound G.711/G.722 audio (sans-I/O, numpy, one per stream).

Waveform substitution in the spirit of ITU-T G.711 Appendix I: the decoded audio of every good
frame goes into a history buffer; when frames are lost, the last pitch period (found by
normalized cross-correlation over 5-15 ms) is repeated, faded, and blended into the first good
frame that follows.

Rules:

* Rule 1: :meth:`Concealer.good` passes a good frame through untouched (the same object) unless
  it is the first after a concealment; then its first samples are overlap-added with the
  concealed signal's continuation over ``4 ms + 4 ms per further 10 ms lost`` (at most 10 ms),
  so the boundary has no click.
* Rule 2: a concealment repeats one pitch period for its first 10 ms, then cycles over up to
  three periods (fewer buzzy artefacts); it keeps full level for 10 ms, then fades linearly by
  20 % per 10 ms to silence at 60 ms. Beyond 60 ms it is silence.
* Rule 3: :meth:`Concealer.silence` (a gap the sender meant: silence suppression, DTX) is plain
  zeros and ends any concealment without an overlap-add.
* Rule 4 (hot path): a good frame costs no numpy work: its bytes are appended to a short list
  of recent frames (at most one history plus one frame of bytes); the history array is made
  from them only when a loss starts, and the pitch search runs once per loss.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BASE_RATE_HZ = 8_000
PITCH_MIN = 40  # samples at 8 kHz: 5 ms (200 Hz)
PITCH_MAX = 120  # samples at 8 kHz: 15 ms (66 Hz)
CORR_LEN = 160  # samples at 8 kHz: 20 ms compared per candidate period
FULL_LEVEL_MS = 10  # Rule 2: no fade for this long
FADE_MS = 50  # then linear to silence, 20 % per 10 ms
PERIODS_MAX = 3
OLA_MIN_MS = 4  # Rule 1
OLA_STEP_MS = 4
OLA_MAX_MS = 10


class Concealer:
    """Conceals lost frames of one PCM16 stream at ``rate_hz`` (8000 or 16000).

    Attributes:
        concealed_samples: samples produced by :meth:`conceal` so far.
    """

    def __init__(self, rate_hz: int) -> None:
        scale = max(1, rate_hz // BASE_RATE_HZ)
        self.rate_hz = rate_hz
        self._ms = rate_hz // 1000  # samples per ms
        self._pmin, self._pmax = PITCH_MIN * scale, PITCH_MAX * scale
        self._corr = CORR_LEN * scale
        self._hlen = max(PERIODS_MAX * self._pmax, self._corr + self._pmax)
        self._hbytes = 2 * self._hlen
        # Rule 4: the newest output as bytes, oldest first; together at least _hbytes long
        self._recent: deque[bytes] = deque((bytes(self._hbytes),))
        self._recent_bytes = self._hbytes
        self._cycle = np.zeros(PERIODS_MAX * self._pmax, dtype=np.float32)
        self._pitch = self._pmin
        self._phase = 0  # samples generated in the current concealment
        self._erasing = False
        self.concealed_samples = 0

    @property
    def history(self) -> np.ndarray:
        """The most recent output samples (``history_samples`` of them, a new array)."""
        recent = self._recent
        data = recent[0] if len(recent) == 1 else b"".join(recent)
        return np.frombuffer(data[len(data) - self._hbytes :], dtype=np.int16)

    def reset(self) -> None:
        """A new stream: forget the history."""
        self._recent.clear()
        self._recent.append(bytes(self._hbytes))
        self._recent_bytes = self._hbytes
        self._erasing = False

    def good(self, pcm: bytes) -> bytes:
        """A decoded good frame; returns it, blended at the start after a concealment (Rule 1)."""
        if self._erasing:
            pcm = self._blend(pcm)
        self._remember(pcm)
        return pcm

    def conceal(self, samples: int) -> bytes:
        """``samples`` of substitute audio for a lost stretch (Rule 2)."""
        if samples <= 0:
            return b""
        if not self._erasing:
            self._start()
        out = self._generate(samples).tobytes()
        self.concealed_samples += samples
        self._remember(out)
        return out

    def silence(self, samples: int) -> bytes:
        """``samples`` of silence for a gap the sender meant (Rule 3)."""
        if samples <= 0:
            return b""
        self._erasing = False
        out = bytes(2 * samples)
        self._remember(out)
        return out

    # ------------------------------------------------------------------ internals

    def _remember(self, pcm: bytes) -> None:
        """Append ``pcm`` to the recent output; drop what is older than one history (Rule 4)."""
        recent = self._recent
        recent.append(pcm)
        size = self._recent_bytes + len(pcm)
        keep = self._hbytes
        while size - len(recent[0]) >= keep:
            size -= len(recent.popleft())
        self._recent_bytes = size

    def _start(self) -> None:
        """A loss begins: find the pitch period and take the last periods as the cycle."""
        history = self.history.astype(np.float32)
        reference = history[-self._corr :]
        span = history[-(self._corr + self._pmax) : -self._pmin]
        windows = sliding_window_view(span, self._corr)[::-1]  # lag pmin .. pmax
        dots = windows @ reference
        energy = np.einsum("ij,ij->i", windows, windows) + 1e-3
        score = dots / np.sqrt(energy)
        self._pitch = self._pmin + int(np.argmax(score))
        self._cycle[:] = history[-self._cycle.size :]
        self._phase = 0
        self._erasing = True

    def _generate(self, samples: int) -> np.ndarray:
        """The next ``samples`` of the concealment, faded (Rule 2), as int16."""
        phase = self._phase + np.arange(samples)
        pitch = self._pitch
        periods = np.minimum(PERIODS_MAX, 1 + phase // (FULL_LEVEL_MS * self._ms))
        length = periods * pitch
        # read cyclically over the last `length` samples of the cycle buffer
        index = self._cycle.size - length + (phase % length)
        gain = 1.0 - (phase - FULL_LEVEL_MS * self._ms) / (FADE_MS * self._ms)
        out: np.ndarray = np.rint(self._cycle[index] * np.clip(gain, 0.0, 1.0)).astype(np.int16)
        self._phase += samples
        return out

    def _blend(self, pcm: bytes) -> bytes:
        """Overlap-add the concealment's continuation into a good frame's start (Rule 1)."""
        self._erasing = False
        frame = np.frombuffer(pcm, dtype=np.int16)
        lost_ms = self._phase // self._ms
        ola_ms = min(OLA_MAX_MS, OLA_MIN_MS + OLA_STEP_MS * max(0, (lost_ms - 1) // 10))
        n = min(frame.size, ola_ms * self._ms)
        if n == 0:
            return pcm
        tail = self._generate(n).astype(np.float32)
        ramp = (np.arange(n, dtype=np.float32) + 1.0) / (n + 1.0)
        blended = frame.astype(np.float32)
        blended[:n] = blended[:n] * ramp + tail * (1.0 - ramp)
        return np.rint(blended).astype(np.int16).tobytes()
