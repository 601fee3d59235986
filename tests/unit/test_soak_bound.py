"""bench/soak.py's plateau rule: memory that levels off passes, memory that keeps growing with
the calls does not (synthetic samples: the rule is arithmetic on the sampled series)."""

from __future__ import annotations

from bench._plateau import Point, rss_plateau


def series(rss: list[float], calls_per_sample: int = 5) -> list[Point]:
    """(t_s, rss_mb, calls ended) every 10 s."""
    return [(10.0 * i, float(mb), calls_per_sample * i) for i, mb in enumerate(rss)]


def test_memory_that_levels_off_shows_no_late_growth() -> None:
    # grows fast, then stops (an allocator's pools, a cache filling): the second half adds 0.3
    plateau = rss_plateau(series([90, 95, 98, 99.5, 100, 100.2, 100.1, 100.3, 100.2, 100.3]))
    assert plateau["early_max_mb"] == 100.0
    assert plateau["late_max_mb"] == 100.3
    assert plateau["late_growth_mb"] == 0.3
    assert plateau["late_kb_per_call"] == round(0.3 * 1024 / 25, 1)


def test_a_leak_per_call_shows_as_its_size() -> None:
    # 100 kB per call, 5 calls per sample: +0.49 MB a sample for as long as the calls go on
    rss = [80 + i * 5 * 100 / 1024 for i in range(20)]
    plateau = rss_plateau(series(rss))
    assert 4.5 < plateau["late_growth_mb"] < 5.0
    assert 95 < plateau["late_kb_per_call"] < 105


def test_too_few_samples_judge_nothing() -> None:
    assert rss_plateau(series([90]))["late_growth_mb"] == 0.0
