"""Stateful polyphase FIR resampling of PCM16 streams (synchronous, one object per stream).

A :class:`Resampler` converts by the rational factor ``up/down`` with a linear-phase equiripple
prototype from :mod:`sipbot.media._filters` (±0.1 dB to 3.4 kHz or 7 kHz, ≥ 66 dB stopband,
1.4–2.3 ms delay; see ``scripts/design_filters.py``). Per call of :meth:`Resampler.process` it
puts the new samples behind the last ``taps_per_phase - 1`` ones it kept, takes one strided
view (row ``g`` = the input window of output group ``g``) and multiplies it by the polyphase
matrix: one ``np.dot`` per frame, no Python loop over samples.

Rules:

* Rule 1: the output is exactly what filtering the whole stream at once would give: a frame
  boundary leaves no seam, because the filter history crosses it.
* Rule 2: ``n`` input samples in → ``n * up / down`` samples out once ``n`` is a multiple of
  ``down``; otherwise the remainder (< ``down`` samples) waits for the next call. One 20 ms frame
  in is therefore exactly one 20 ms frame out at every supported rate.
* Rule 3: rates are fixed per object; :meth:`Resampler.reset` forgets the history (after a
  barge-in flush, so the next reply does not start with the tail of the last one).
* Rule 4 (state): between calls the object keeps only the input it has not consumed (the
  history and a remainder), as PCM16 bytes: the next call prepends it to its input with one
  bytes concatenation, and nothing is shifted inside a numpy buffer.
* Rule 5 (hot path): a 20 ms frame costs six numpy calls (view of the input, one cast copy
  into a float32 work buffer, the dot, one ``clip`` ufunc, ``rint`` written straight into an
  int16 array, ``tobytes``); clipping before rounding gives the same integers as rounding
  before clipping, because the bounds are integers.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from sipbot.media import _filters

# (in, out) -> (prototype taps, prototype rate, up, down)
_PLANS: dict[tuple[int, int], tuple[tuple[float, ...], int, int, int]] = {
    (8_000, 16_000): (_filters.LOWPASS_16K_4K, _filters.LOWPASS_16K_4K_RATE_HZ, 2, 1),
    (16_000, 8_000): (_filters.LOWPASS_16K_4K, _filters.LOWPASS_16K_4K_RATE_HZ, 1, 2),
    (8_000, 24_000): (_filters.LOWPASS_24K_4K, _filters.LOWPASS_24K_4K_RATE_HZ, 3, 1),
    (24_000, 8_000): (_filters.LOWPASS_24K_4K, _filters.LOWPASS_24K_4K_RATE_HZ, 1, 3),
    (16_000, 24_000): (_filters.LOWPASS_48K_8K, _filters.LOWPASS_48K_8K_RATE_HZ, 3, 2),
    (24_000, 16_000): (_filters.LOWPASS_48K_8K, _filters.LOWPASS_48K_8K_RATE_HZ, 2, 3),
}

SUPPORTED_RATES = tuple(sorted(_PLANS))
# the clip ufunc itself (numpy >= 1.17; ``_core`` from 2.0): np.clip's Python-level dispatch
# costs more than the work on a 20 ms frame
_clip: np.ufunc = (getattr(np, "_core", None) or getattr(np, "core")).umath.clip
_INITIAL_CAPACITY = 4_096  # input samples per call before the work buffer has to grow


def polyphase_matrix(taps: tuple[float, ...], up: int, down: int) -> np.ndarray:
    """The (window, up) matrix that maps one input window to one group of ``up`` outputs.

    Output ``n = g*up + r`` sits at input position ``(g*down*up + r*down) / up``: its window
    offset is ``r*down // up`` and its filter phase ``r*down % up``.
    """
    per_phase = math.ceil(len(taps) / up)
    padded = np.zeros(per_phase * up)
    padded[: len(taps)] = np.asarray(taps) * up  # gain `up` restores the level after zero-stuffing
    window = per_phase + down - 1
    matrix = np.zeros((window, up), dtype=np.float32)
    for r in range(up):
        offset, phase = divmod(r * down, up)
        for k in range(per_phase):
            matrix[offset + per_phase - 1 - k, r] = padded[phase + k * up]
    return matrix


class Resampler:
    """One direction of one call: PCM16 at ``in_rate_hz`` → PCM16 at ``out_rate_hz``.

    Args:
        in_rate_hz, out_rate_hz: one of the pairs in ``SUPPORTED_RATES``, or equal rates
            (then :meth:`process` returns its input unchanged).

    Raises:
        ValueError: ``no resampler from X Hz to Y Hz``.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self.passthrough = in_rate_hz == out_rate_hz
        if self.passthrough:
            self.up = self.down = 1
            self.delay_s = 0.0
            return
        plan = _PLANS.get((in_rate_hz, out_rate_hz))
        if plan is None:
            raise ValueError(f"no resampler from {in_rate_hz} Hz to {out_rate_hz} Hz")
        taps, proto_rate_hz, self.up, self.down = plan
        self.delay_s = (len(taps) - 1) / 2.0 / proto_rate_hz
        self._matrix = polyphase_matrix(taps, self.up, self.down)
        self._window = self._matrix.shape[0]
        self._history = self._window - self.down  # samples kept between calls
        # Rule 4: the state between calls is the input not yet consumed (history + remainder)
        self._tail = bytes(2 * self._history)
        self._buffer = np.zeros(self._history + _INITIAL_CAPACITY, dtype=np.float32)
        self._cache_groups = -1
        self._view = self._buffer[:0]
        self._out = np.empty((0, self.up), dtype=np.float32)
        self._pcm = np.empty((0, self.up), dtype=np.int16)

    @property
    def delay_ms(self) -> float:
        """Delay the filter adds (group delay of the linear-phase prototype)."""
        return 1000.0 * self.delay_s

    def reset(self) -> None:
        """Forget the history and any held remainder (the next call starts from silence)."""
        if not self.passthrough:
            self._tail = bytes(2 * self._history)

    def process(self, pcm: bytes) -> bytes:
        """Resample PCM16 little-endian mono ``pcm`` (any whole number of samples)."""
        if self.passthrough:
            return pcm
        if len(pcm) & 1:
            pcm = pcm[:-1]
        data = self._tail + pcm
        total = len(data) >> 1
        groups = (total - self._history) // self.down
        if groups <= 0:
            self._tail = data
            return b""
        if total > self._buffer.size:
            self._grow(total)
        self._buffer[:total] = np.frombuffer(data, dtype="<i2")
        if groups != self._cache_groups:
            self._prepare(groups)
        out = self._out
        np.dot(self._view, self._matrix, out=out)
        # Rule 5: one clip ufunc, then rint straight into int16
        _clip(out, -32768.0, 32767.0, out=out)
        np.rint(out, out=self._pcm, casting="unsafe")
        self._tail = data[2 * groups * self.down :]
        return self._pcm.tobytes()

    def _prepare(self, groups: int) -> None:
        """Make the strided input view and output arrays for ``groups`` output groups."""
        itemsize = self._buffer.itemsize
        self._view = as_strided(
            self._buffer,
            shape=(groups, self._window),
            strides=(self.down * itemsize, itemsize),
            writeable=False,
        )
        self._out = np.empty((groups, self.up), dtype=np.float32)
        self._pcm = np.empty((groups, self.up), dtype=np.int16)
        self._cache_groups = groups

    def _grow(self, needed: int) -> None:
        """Enlarge the work buffer (a longer chunk than ever before)."""
        self._buffer = np.zeros(max(needed, 2 * self._buffer.size), dtype=np.float32)
        self._cache_groups = -1
