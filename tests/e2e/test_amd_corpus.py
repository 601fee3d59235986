"""Answering-machine detection holds its measured figures on the generated corpus.

No server runs here; it lives with the e2e tests for espeak-ng (the ``requires_peers`` rule).

The corpus (:mod:`tests.e2e.peers.amd_corpus`, 43 recordings) is spoken by espeak-ng into
pytest's cache once, so a rerun takes a second. The floors are a little below what
``bench/bench_amd.py`` measured (accuracy 0.953, false-machine rate 0.105 = 2/19 people,
beeps 16/16 found within 30 ms of their end, no false beep, decisions within 3.7 s).
"""

from __future__ import annotations

import pytest

from sipbot.media.amd import DEFAULT_MAX_WAIT_S
from tests.e2e.peers.amd_corpus import evaluate, make_corpus, score

ACCURACY_FLOOR = 0.90  # measured 0.953 (41/43)
FALSE_MACHINE_CEILING = 0.16  # measured 0.105 (2/19): one more person hung up on fails
BEEPS_FOUND_FLOOR = 15  # of 16; measured 16
BEEP_DELAY_CEILING_MS = 60  # after the beep's end; measured 28 at most
DECISION_P90_CEILING_MS = 3500  # measured p90 3020 ms


@pytest.mark.requires_peers("espeak-ng")
def test_the_detector_holds_its_figures_on_the_corpus(request: pytest.FixtureRequest) -> None:
    corpus = make_corpus(request.config.cache.mkdir("amd-corpus"))
    assert len(corpus) >= 40
    outcomes = [evaluate(r) for r in corpus]
    s = score(outcomes)
    wrong = [(o.recording.name, o.result) for o in outcomes if o.result != o.recording.expected]
    assert s.accuracy >= ACCURACY_FLOOR, wrong
    assert s.false_machine_rate <= FALSE_MACHINE_CEILING, wrong
    assert s.machines_found >= s.machines - 1, wrong
    assert all(o.verdict is not None for o in outcomes)  # always a verdict, in bounded time
    assert max(s.decision_ms) <= DEFAULT_MAX_WAIT_S * 1000
    assert s.percentile_ms(0.9) <= DECISION_P90_CEILING_MS
    assert s.beeps_found >= BEEPS_FOUND_FLOOR
    assert max(s.beep_delay_ms) <= BEEP_DELAY_CEILING_MS
    assert s.false_beeps == 0
