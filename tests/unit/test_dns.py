"""RFC 2782 SRV ordering (the pure part of sipbot.sip.dns; lookups: tests/e2e/test_trunk_dns.py)."""

from __future__ import annotations

import random
from collections import Counter

from sipbot.sip.dns import SrvRecord, order_srv


def test_lower_priority_always_comes_first() -> None:
    records = [SrvRecord(20, 100, 5060, "b"), SrvRecord(10, 0, 5060, "a")]
    for seed in range(20):
        assert [r.target for r in order_srv(records, random.Random(seed))] == ["a", "b"]


def test_weights_share_the_first_place_in_proportion() -> None:
    records = [SrvRecord(10, 75, 5060, "heavy"), SrvRecord(10, 25, 5060, "light")]
    rng = random.Random(3)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(4000))
    assert 0.70 <= firsts["heavy"] / 4000 <= 0.80
    assert sorted(r.target for r in order_srv(records, rng)) == ["heavy", "light"]


def test_zero_weights_are_all_kept() -> None:
    records = [SrvRecord(10, 0, 5060, "a"), SrvRecord(10, 0, 5061, "b")]
    assert sorted(r.port for r in order_srv(records, random.Random(1))) == [5060, 5061]
