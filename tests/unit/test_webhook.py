"""The status webhook's backoff (sipbot.webhook): exponential, full jitter, capped."""

from __future__ import annotations

import random

from sipbot.webhook import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_delay


class Top(random.Random):
    """A random source that always draws the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_doubles_up_to_the_cap() -> None:
    top = Top()
    delays = [backoff_delay(n, top) for n in range(1, 9)]
    assert delays[:4] == [BACKOFF_BASE_S * 2**i for i in range(4)]
    assert max(delays) == BACKOFF_CAP_S


def test_backoff_is_jittered_within_its_bound() -> None:
    rng = random.Random(7)
    for attempt in range(1, 6):
        bound = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        draws = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in draws)
        assert max(draws) - min(draws) > bound / 2  # spread out, not one fixed delay
