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
  into a float64 work buffer, the dot, one ``clip`` ufunc, ``rint`` written straight into an
  int16 array, ``tobytes``); clipping before rounding gives the same integers as rounding
  before clipping, because the bounds are integers.
* Rule 6 (blocked product): the dot takes ``BLOCK_GROUPS`` output groups per row
  (:func:`block_matrix`), not one: numpy must copy a strided view into a contiguous array
  before it calls BLAS, and with one group per row that copy is ``window`` times the input
  and the product is only ``up`` columns wide, which BLAS does badly. Blocked, the copy is
  about the input's size and the product 8× wider (a 20 ms frame: 160 groups, 20 rows).
  A last, partial block reads past the input into outputs that are dropped. The arithmetic
  is exact, so neither the blocking nor the chunking nor BLAS's order of summation can change
  a sample (Rule 1): the coefficients are rounded to multiples of 2**-30 (1e-9, far below
  the filters' ripple), so in float64 every product of a PCM16 sample and a coefficient, and
  every partial sum, is an exact multiple of 2**-30 below 2**23 (47 significant bits of 53).
* Rule 7 (batches): :func:`resample_batch` runs many streams of the same rate pair through
  one blocked product (the frames of a whole phase group of calls, one numpy pass instead of
  one per call). By Rule 6 its output and the state it leaves are bit-identical to calling
  :meth:`Resampler.process` on each stream; below ``BATCH_MIN`` streams it does exactly that
  (one stream's cached view is cheaper than laying out a batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
_clip: np.ufunc = (getattr(np, "_core", None) or np.core).umath.clip
_INITIAL_CAPACITY = 4_096  # input samples per call before the work buffer has to grow
BLOCK_GROUPS = 8  # output groups per row of the blocked product (Rule 6)
_GRID = float(1 << 30)  # coefficients are multiples of 1/_GRID (Rule 6)
BATCH_MIN = 4  # streams below which resample_batch calls process() per stream (Rule 7)


def polyphase_matrix(
    taps: tuple[float, ...], up: int, down: int, dtype: type[np.floating[Any]] = np.float32
) -> np.ndarray:
    """The (window, up) matrix that maps one input window to one group of ``up`` outputs.

    Output ``n = g*up + r`` sits at input position ``(g*down*up + r*down) / up``: its window
    offset is ``r*down // up`` and its filter phase ``r*down % up``.
    """
    per_phase = math.ceil(len(taps) / up)
    padded = np.zeros(per_phase * up)
    padded[: len(taps)] = np.asarray(taps) * up  # gain `up` restores the level after zero-stuffing
    window = per_phase + down - 1
    matrix = np.zeros((window, up), dtype=dtype)
    for r in range(up):
        offset, phase = divmod(r * down, up)
        for k in range(per_phase):
            matrix[offset + per_phase - 1 - k, r] = padded[phase + k * up]
    return matrix


def block_matrix(matrix: np.ndarray, down: int, block: int) -> np.ndarray:
    """The polyphase ``matrix`` for ``block`` consecutive output groups at once.

    Column block ``j`` (``up`` columns) is ``matrix`` shifted down by ``j * down`` rows: one row
    of input (``(block - 1) * down + window`` samples) gives ``block * up`` outputs. The input
    rows of consecutive blocks overlap by only ``window - down`` samples, so the strided view
    numpy copies for the BLAS call is about ``window / (block * down)`` times smaller than one
    row per group, and the product is ``block`` times wider (Rule 6).
    """
    window, up = matrix.shape
    rows = (block - 1) * down + window
    blocked = np.zeros((rows, block * up), dtype=matrix.dtype)
    for j in range(block):
        blocked[j * down : j * down + window, j * up : (j + 1) * up] = matrix
    return blocked


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
        # Rule 6: coefficients on a 2**-30 grid, in float64 (exact sums in any order)
        exact = np.round(polyphase_matrix(taps, self.up, self.down, np.float64) * _GRID) / _GRID
        self._matrix = exact
        self._blocked = block_matrix(exact, self.down, BLOCK_GROUPS)
        self._window = self._matrix.shape[0]
        self._history = self._window - self.down  # samples kept between calls
        # Rule 4: the state between calls is the input not yet consumed (history + remainder)
        self._tail = bytes(2 * self._history)
        self._buffer = np.zeros(self._history + _INITIAL_CAPACITY, dtype=np.float64)
        self._cache_groups = -1
        self._view = self._buffer[:0]
        self._out = np.empty((0, self.up), dtype=np.float64)
        self._pcm = np.empty((0, self.up), dtype=np.int16)
        self._result = self._pcm.reshape(-1)

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
        if groups != self._cache_groups or total > self._buffer.size:
            self._prepare(groups, total)
        self._buffer[:total] = np.frombuffer(data, dtype="<i2")
        out = self._out
        np.dot(self._view, self._blocked, out=out)
        # Rule 5: one clip ufunc, then rint straight into int16
        _clip(out, -32768.0, 32767.0, out=out)
        np.rint(out, out=self._pcm, casting="unsafe")
        self._tail = data[2 * groups * self.down :]
        return self._result.tobytes()

    def _prepare(self, groups: int, total: int) -> None:
        """Make the strided input view and output arrays for ``groups`` output groups."""
        blocks = -(-groups // BLOCK_GROUPS)
        rows, width = self._blocked.shape
        # the last block may read past the input (Rule 6): those outputs are never returned
        needed = max(total, (blocks - 1) * BLOCK_GROUPS * self.down + rows)
        if needed > self._buffer.size:
            self._buffer = np.zeros(max(needed, 2 * self._buffer.size), dtype=np.float64)
        itemsize = self._buffer.itemsize
        self._view = as_strided(
            self._buffer,
            shape=(blocks, rows),
            strides=(BLOCK_GROUPS * self.down * itemsize, itemsize),
            writeable=False,
        )
        self._out = np.empty((blocks, width), dtype=np.float64)
        self._pcm = np.empty((blocks, width), dtype=np.int16)
        self._result = self._pcm.reshape(-1)[: groups * self.up]
        self._cache_groups = groups


def resample_batch(resamplers: Sequence[Resampler], chunks: Sequence[bytes]) -> list[bytes]:
    """``[r.process(c) for r, c in zip(resamplers, chunks)]`` in one blocked product (Rule 7).

    Every resampler must convert between the same two rates. Each one's unconsumed input is
    put before its chunk, the segments are laid end to end (each padded to a whole input
    block) and multiplied once; each resampler keeps its own state, exactly as
    :meth:`Resampler.process` would leave it.

    Raises:
        ValueError: ``resample_batch needs one rate pair`` (mixed rates), or lengths differ.
    """
    if len(resamplers) != len(chunks):
        raise ValueError("resample_batch needs one chunk per resampler")
    if not resamplers:
        return []
    first = resamplers[0]
    pair = (first.in_rate_hz, first.out_rate_hz)
    if any((r.in_rate_hz, r.out_rate_hz) != pair for r in resamplers):
        raise ValueError("resample_batch needs one rate pair")
    if first.passthrough:
        return list(chunks)
    if len(resamplers) < BATCH_MIN:
        return [r.process(chunk) for r, chunk in zip(resamplers, chunks, strict=True)]
    down, up, history = first.down, first.up, first._history
    rows, width = first._blocked.shape
    step = BLOCK_GROUPS * down  # input samples per block
    results: list[bytes] = [b""] * len(chunks)
    segments: list[bytes] = []
    placed: list[tuple[int, int, int]] = []  # (result index, first block row, groups)
    position = 0
    for index, (resampler, chunk) in enumerate(zip(resamplers, chunks, strict=True)):
        if len(chunk) & 1:
            chunk = chunk[:-1]
        data = resampler._tail + chunk
        total = len(data) >> 1
        groups = (total - history) // down
        if groups <= 0:
            resampler._tail = data
            continue
        resampler._tail = data[2 * groups * down :]
        span = max(total, (-(-groups // BLOCK_GROUPS) - 1) * step + rows)
        span += -span % step
        segments.append(data + bytes(2 * (span - total)))
        placed.append((index, position // step, groups))
        position += span
    if not segments:
        return results
    samples = np.frombuffer(b"".join(segments), dtype="<i2").astype(np.float64)
    view: np.ndarray = np.ndarray(  # as_strided, without its Python-level cost
        ((position - rows) // step + 1, rows), np.float64, samples, 0, (8 * step, 8)
    )
    out = np.dot(view, first._blocked)
    _clip(out, -32768.0, 32767.0, out=out)
    pcm = np.rint(out, out=np.empty(out.shape, dtype=np.int16), casting="unsafe").tobytes()
    block_bytes, group_bytes = 2 * width, 2 * up
    for index, row, groups in placed:
        start = row * block_bytes
        results[index] = pcm[start : start + groups * group_bytes]
    return results
