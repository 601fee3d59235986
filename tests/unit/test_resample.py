"""The stateful polyphase resampler: frame sizes, seams, passband, stopband, delay."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.media import _filters
from sipbot.media.resample import _PLANS, SUPPORTED_RATES, Resampler, resample_batch

PAIRS = list(SUPPORTED_RATES)


def as_bytes(x: np.ndarray) -> bytes:
    return bytes(np.rint(x).astype("<i2").tobytes())


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(float)


def sine(rate_hz: int, freq_hz: float, seconds: float, amplitude: float = 10_000.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq_hz * np.arange(int(rate_hz * seconds)) / rate_hz)


def reference(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Direct form: zero-stuff, filter with the prototype, decimate (float64)."""
    taps, _, up, down = _PLANS[(in_rate, out_rate)]
    stuffed = np.zeros(len(x) * up)
    stuffed[::up] = np.rint(x)
    filtered = np.convolve(stuffed, np.asarray(taps) * up)[: len(stuffed)]
    return np.clip(np.rint(filtered[::down]), -32768, 32767)


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-12))


def test_supported_rates_are_the_ones_the_call_path_needs() -> None:
    assert set(PAIRS) == {
        (8000, 16000), (16000, 8000), (8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)
    }  # fmt: skip


def test_unsupported_pair_and_passthrough() -> None:
    with pytest.raises(ValueError, match=r"^no resampler from 44100 Hz to 8000 Hz$"):
        Resampler(44_100, 8_000)
    same = Resampler(16_000, 16_000)
    assert same.process(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"
    assert same.delay_ms == 0.0


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_one_frame_in_one_frame_out(in_rate: int, out_rate: int) -> None:
    resampler = Resampler(in_rate, out_rate)
    frame = as_bytes(sine(in_rate, 440.0, 0.02))
    for _ in range(5):
        assert len(resampler.process(frame)) == 2 * out_rate // 50


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_matches_direct_form_and_has_no_seams(in_rate: int, out_rate: int) -> None:
    x = sine(in_rate, 700.0, 0.5) + sine(in_rate, 2900.0, 0.5, 6000.0)
    expected = reference(x, in_rate, out_rate)
    frame = in_rate // 50
    framed = Resampler(in_rate, out_rate)
    by_frame = b"".join(framed.process(as_bytes(x[i : i + frame])) for i in range(0, len(x), frame))
    odd = Resampler(in_rate, out_rate)
    sizes = [1, 7, 13, 333, 2, frame, 5]
    pieces, i, k = [], 0, 0
    while i < len(x):
        pieces.append(odd.process(as_bytes(x[i : i + sizes[k % len(sizes)]])))
        i += sizes[k % len(sizes)]
        k += 1
    by_odd_chunks = b"".join(pieces)
    assert len(by_frame) // 2 == len(expected)
    assert np.max(np.abs(as_array(by_frame) - expected)) <= 1.0  # float32 vs float64 rounding
    assert by_odd_chunks == by_frame  # chunking never changes a sample: no seams


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_passband_is_flat(in_rate: int, out_rate: int) -> None:
    edge = 3400.0 if min(in_rate, out_rate) == 8000 else 7000.0
    for freq in (300.0, 1000.0, edge):
        resampler = Resampler(in_rate, out_rate)
        out = as_array(resampler.process(as_bytes(sine(in_rate, freq, 0.5))))
        steady = out[len(out) // 5 :]
        assert abs(rms_db(steady) - rms_db(sine(out_rate, freq, 0.4))) < 0.12, freq


@pytest.mark.parametrize(("in_rate", "out_rate"), [p for p in PAIRS if p[0] > p[1]])
def test_decimation_rejects_aliases(in_rate: int, out_rate: int) -> None:
    # A tone above the output Nyquist frequency would fold into the band: it must be >= 60 dB down.
    nyquist = out_rate / 2
    for freq in (nyquist + 10.0, nyquist + 1000.0, in_rate / 2 - 100.0):
        out = as_array(Resampler(in_rate, out_rate).process(as_bytes(sine(in_rate, freq, 0.5))))
        level = rms_db(out[len(out) // 5 :]) - rms_db(sine(in_rate, freq, 0.5))
        assert level < -60.0, (freq, level)


@pytest.mark.parametrize(("in_rate", "out_rate"), [p for p in PAIRS if p[0] < p[1]])
def test_interpolation_rejects_images(in_rate: int, out_rate: int) -> None:
    edge = 3400.0 if in_rate == 8000 else 7000.0
    for freq in (1000.0, edge):
        out = as_array(Resampler(in_rate, out_rate).process(as_bytes(sine(in_rate, freq, 0.5))))
        steady = out[len(out) // 5 :] * np.hanning(len(out) - len(out) // 5)
        spectrum = np.abs(np.fft.rfft(steady)) ** 2
        freqs = np.fft.rfftfreq(len(steady), 1 / out_rate)
        wanted = spectrum[np.abs(freqs - freq) < 50].sum()
        images = spectrum[freqs > in_rate / 2].sum()
        level = 10 * np.log10(images / wanted)
        assert level < -60.0, (freq, level)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_delay_is_measured_and_within_target(in_rate: int, out_rate: int) -> None:
    resampler = Resampler(in_rate, out_rate)
    taps, proto_rate, _, _ = _PLANS[(in_rate, out_rate)]
    assert resampler.delay_ms == pytest.approx(1000 * (len(taps) - 1) / 2 / proto_rate)
    assert resampler.delay_ms <= 3.0
    # a band-limited click comes out delayed by delay_ms
    click = np.zeros(in_rate // 10)
    click[in_rate // 50] = 20_000.0
    out = as_array(resampler.process(as_bytes(click)))
    peak_s = np.argmax(np.abs(out)) / out_rate
    assert abs(peak_s - (0.02 + resampler.delay_s)) <= 1.0 / out_rate


def test_documented_delays() -> None:
    assert Resampler(8000, 16000).delay_ms == pytest.approx(2.3125)
    assert Resampler(24000, 8000).delay_ms == pytest.approx(2.3333, abs=1e-3)
    assert Resampler(24000, 16000).delay_ms == pytest.approx(1.375)
    assert len(_filters.LOWPASS_16K_4K) == 75
    for taps in (_filters.LOWPASS_16K_4K, _filters.LOWPASS_24K_4K, _filters.LOWPASS_48K_8K):
        assert abs(20 * np.log10(sum(taps))) <= 0.1  # DC is in the ±0.1 dB passband


def test_reset_forgets_history() -> None:
    resampler = Resampler(8000, 16000)
    loud = as_bytes(sine(8000, 1000.0, 0.02, 20_000.0))
    first = resampler.process(loud)
    resampler.process(loud)
    resampler.reset()
    assert resampler.process(loud) == first


def test_long_chunk_grows_the_buffer() -> None:
    x = sine(24000, 1000.0, 1.0)
    whole = Resampler(24000, 16000).process(as_bytes(x))
    framed = Resampler(24000, 16000)
    assert b"".join(framed.process(as_bytes(x[i : i + 480])) for i in range(0, 24000, 480)) == whole


def exact_reference(x: np.ndarray, resampler: Resampler) -> bytes:
    """The resampler's filter in integers (Rule 6): coefficients × 2**30, int64 sums, rint."""
    coefficients = np.rint(resampler._matrix * (1 << 30)).astype(np.int64)
    window = coefficients.shape[0]
    down = resampler.down
    padded = np.concatenate([np.zeros(window - down, dtype=np.int64), np.rint(x).astype(np.int64)])
    groups = (len(padded) - (window - down)) // down
    rows = np.stack([padded[g * down : g * down + window] for g in range(groups)])
    sums = rows @ coefficients  # exact: every product and sum is below 2**63
    quotient, remainder = np.divmod(sums, 1 << 30)
    half = 1 << 29
    up_round = (remainder > half) | ((remainder == half) & (quotient % 2 == 1))  # half to even
    values = np.clip(quotient + up_round, -32768, 32767)
    return bytes(values.astype("<i2").tobytes())


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_arithmetic_is_exact_whatever_the_chunking(in_rate: int, out_rate: int) -> None:
    """Rule 6: float64 on a 2**-30 coefficient grid equals the integer filter, sample for
    sample, for any chunking (so neither the blocking nor BLAS's summation order shows)."""
    rng = np.random.default_rng(in_rate + out_rate)
    x = np.clip(rng.standard_normal(in_rate // 2) * 12_000, -32768, 32767)
    x[100:140] = 32767  # full scale: the clip path
    probe = Resampler(in_rate, out_rate)
    coefficients = probe._matrix * (1 << 30)
    assert np.array_equal(coefficients, np.rint(coefficients))  # on the grid
    assert 32768 * np.abs(coefficients).sum(axis=0).max() < 2.0**53  # no sum can round
    expected = exact_reference(x, probe)
    for sizes in ([in_rate // 50], [1, 7, 13, 333, 2, 5], [4800]):
        resampler = Resampler(in_rate, out_rate)
        pieces, i, k = [], 0, 0
        while i < len(x):
            size = sizes[k % len(sizes)]
            pieces.append(resampler.process(as_bytes(x[i : i + size])))
            i, k = i + size, k + 1
        got = b"".join(pieces)
        assert got == expected[: len(got)], sizes
        assert len(expected) - len(got) < 2 * resampler.up  # only a held remainder is missing


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_a_batch_is_bit_identical_to_one_call_per_stream(in_rate: int, out_rate: int) -> None:
    """Rule 7: 24 streams in different states (history, held remainder, fresh, reset), over
    many rounds of 20 ms frames and odd chunks, some streams idle or starved in a round."""
    rng = np.random.default_rng(in_rate * 3 + out_rate)
    streams = 24
    alone = [Resampler(in_rate, out_rate) for _ in range(streams)]
    batched = [Resampler(in_rate, out_rate) for _ in range(streams)]
    for index in range(streams):  # different states before the first batch
        warm = as_bytes(rng.standard_normal(index * 37) * 9000)
        assert alone[index].process(warm) == batched[index].process(warm)
    frame = in_rate // 50
    for round_ in range(60):
        chunks = []
        for index in range(streams):
            size = frame if (index + round_) % 5 else int(rng.integers(0, 3 * frame))
            if index == 0 and round_ % 7 == 0:
                size = round_ % 2  # nothing, or one sample: no output group yet
            chunks.append(as_bytes(np.clip(rng.standard_normal(size) * 14_000, -32768, 32767)))
        if round_ == 30:
            alone[3].reset()
            batched[3].reset()
        expected = [r.process(chunk) for r, chunk in zip(alone, chunks, strict=True)]
        assert resample_batch(batched, chunks) == expected, round_
    assert [r._tail for r in batched] == [r._tail for r in alone]


def test_batch_refuses_mixed_rates_and_handles_nothing() -> None:
    assert resample_batch([], []) == []
    with pytest.raises(ValueError, match="resample_batch needs one rate pair"):
        resample_batch([Resampler(8000, 16000), Resampler(8000, 24000)], [b"", b""])
    with pytest.raises(ValueError, match="resample_batch needs one chunk per resampler"):
        resample_batch([Resampler(8000, 16000)], [])
    same = Resampler(8000, 8000)
    assert resample_batch([same], [b"\x01\x02"]) == [b"\x01\x02"]
