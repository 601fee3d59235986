"""The per-source limiter (sipbot.sip.limiter): token bucket, concurrent calls, bounded memory."""

from __future__ import annotations

import pytest

from sipbot.sip.limiter import LimiterSettings, SourceLimiter

A, B = "192.0.2.1", "192.0.2.2"


def limiter(
    rate: float = 10.0, burst: float = 5.0, max_calls: int = 2, max_sources: int = 100
) -> SourceLimiter:
    return SourceLimiter(LimiterSettings(rate, burst, max_calls, max_sources))


def test_a_burst_passes_then_the_rest_is_refused_and_counted() -> None:
    lim = limiter(rate=10, burst=5)
    assert [lim.allow_message(A, 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.refused_messages == 2


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    lim = limiter(rate=10, burst=5)
    for _ in range(5):
        lim.allow_message(A, 0.0)
    assert not lim.allow_message(A, 0.05)  # half a token back
    assert lim.allow_message(A, 0.1)  # 0.5 + 0.5: one token
    assert not lim.allow_message(A, 0.1)
    # a long pause refills to the burst, never beyond it
    assert [lim.allow_message(A, 100.0) for _ in range(6)] == [True] * 5 + [False]


def test_a_steady_flood_gets_exactly_the_rate() -> None:
    lim = limiter(rate=200, burst=400)
    allowed = sum(lim.allow_message(A, i / 800) for i in range(8000))  # 800/s for 10 s
    assert allowed == pytest.approx(400 + 200 * 10, abs=2)


def test_a_flood_from_one_source_leaves_others_their_allowance() -> None:
    lim = limiter(rate=10, burst=5)
    for i in range(1000):
        lim.allow_message(A, i * 0.001)
    assert not lim.allow_message(A, 1.0)
    assert [lim.allow_message(B, 1.0) for _ in range(5)] == [True] * 5


def test_concurrent_calls_per_source_and_release() -> None:
    lim = limiter(max_calls=2)
    assert (lim.open_call(A), lim.open_call(A), lim.open_call(A)) == (True, True, False)
    assert lim.open_call(B)
    assert (lim.open_calls(A), lim.open_calls(B), lim.refused_calls) == (2, 1, 1)
    lim.close_call(A)
    assert lim.open_call(A)
    for _ in range(3):
        lim.close_call(A)  # one more than open: never negative
    assert lim.open_calls(A) == 0
    assert lim.open_call(A)


def test_refilled_sources_are_forgotten() -> None:
    lim = limiter(rate=10, burst=5)  # an empty bucket is full again after 0.5 s
    for i in range(50):
        lim.allow_message(f"10.0.0.{i}", 0.0)
    assert lim.tracked_sources == 50
    for i in range(100):  # each new source forgets up to two refilled ones
        lim.allow_message(f"10.1.0.{i}", 1.0 + i * 0.001)
    assert lim.tracked_sources == 100  # the 50 old ones are gone, the 100 new ones are not
    assert lim.allow_message("10.0.0.0", 1.2)  # a forgotten source starts with a full bucket


def test_memory_is_bounded_under_a_many_source_flood() -> None:
    lim = limiter(rate=1, burst=1, max_sources=1000)
    for i in range(20_000):  # 20k sources within one refill period: none idle yet
        lim.allow_message(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", i * 1e-5)
    assert lim.tracked_sources == 1000  # max_sources: the least recently seen made room
    assert lim.allow_message(A, 1.0)


@pytest.mark.parametrize(
    ("rate", "burst", "max_calls", "message"),
    [
        (0.0, 1.0, 1, "rate must be a positive number, not 0.0"),
        (float("inf"), 1.0, 1, "rate must be a positive number, not inf"),
        (1.0, 0.5, 1, "burst must be at least 1, not 0.5"),
        (1.0, 1.0, 0, "max_calls and max_sources must be at least 1"),
    ],
)
def test_settings_are_checked(rate: float, burst: float, max_calls: int, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        LimiterSettings(rate, burst, max_calls)
