"""The soak's plateau rule (``bench/soak.py``): whether RSS levelled off after warm-up.

Plain arithmetic on the sampled series, importable without the e2e peers (unit-tested).
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float, int]  # (t_s, rss_mb, calls ended so far)


def rss_plateau(steady: Sequence[Point]) -> dict[str, float]:
    """How much RSS still grew in the second half of ``steady`` (the samples after warm-up).

    ``late_growth_mb``: the second half's maximum RSS minus the first half's (halves by time);
    ``late_kb_per_call``: that growth per call ended in the second half. A leak of K kB per
    call shows as about K; memory that has levelled off (an allocator's pools, a bounded cache
    filled) as about 0.
    """
    if len(steady) < 2:
        return {"early_max_mb": 0.0, "late_max_mb": 0.0, "late_growth_mb": 0.0,
                "late_kb_per_call": 0.0}  # fmt: skip
    middle = (steady[0][0] + steady[-1][0]) / 2
    early = [p for p in steady if p[0] <= middle]
    late = [p for p in steady if p[0] > middle]
    early_max = max(p[1] for p in early)
    late_max = max(p[1] for p in late)
    growth = round(late_max - early_max, 1)
    calls = max(1, steady[-1][2] - early[-1][2])
    return {
        "early_max_mb": early_max,
        "late_max_mb": late_max,
        "late_growth_mb": growth,
        "late_kb_per_call": round(max(0.0, growth) * 1024 / calls, 1),
    }
