"""Answering-machine detection on a generated corpus: accuracy, false machines, timings, CPU.

    python bench/bench_amd.py [--cache DIR] [--max-wait-s 5] [-v]

Speaks the corpus of :mod:`tests.e2e.peers.amd_corpus` (19 people answering, 20 voicemail
greetings of which 16 end in a beep, 4 silent lines; espeak-ng, G.711 and line noise) into
``--cache`` once, runs :class:`~sipbot.media.amd.AnsweringMachineDetection` over each recording
in 20 ms frames, and prints:

* accuracy (a silent line is right when the verdict is unknown) and the confusion per kind;
* the false-machine rate: people classified machine (the bot would hang up on them);
* time to decision from the callee's first audio (median, p90, max);
* beeps found, how long after the beep's end they were reported, and beeps reported where
  there was none;
* CPU (process time) per call-second of audio fed, with the load average (shared machine), and
  the worst case: a minute of loud noise, so that the beep check runs on every frame.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np

from sipbot.media.amd import AnsweringMachineDetection
from tests.e2e.peers.amd_corpus import evaluate, make_corpus, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = Path(tempfile.gettempdir()) / "sipbot-amd-corpus"
    parser.add_argument("--cache", type=Path, default=default_cache, help="speech cache dir")
    parser.add_argument("--max-wait-s", type=float, default=5.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per recording")
    args = parser.parse_args()
    corpus = make_corpus(args.cache)
    outcomes = [evaluate(r, max_wait_s=args.max_wait_s) for r in corpus]
    if args.verbose:
        for o in outcomes:
            r, v = o.recording, o.verdict
            mark = "" if o.result == r.expected else "   <-- wrong"
            cause = f"{v.cause} at {v.after_ms} ms" if v else "no verdict"
            beep = f" beep {o.beep.frequency_hz:.0f} Hz ends {o.beep.end_ms} ms" if o.beep else ""
            print(f"{r.name} {r.rate // 1000} kHz: {o.result} ({cause}){beep}  {r.text!r}{mark}")
    s = score(outcomes)
    confusion = Counter((o.recording.kind, o.result) for o in outcomes)
    print(f"recordings: {s.total} ({s.humans} people, {s.machines} machines, {s.beeps} beeps)")
    for kind in ("human", "machine", "silence"):
        row = ", ".join(
            f"{res} {confusion[(kind, res)]}" for res in ("human", "machine", "unknown")
        )
        print(f"  {kind:8} -> {row}")
    print(f"accuracy: {s.accuracy:.3f} ({s.correct}/{s.total})")
    print(f"false-machine rate: {s.false_machine_rate:.3f} ({s.false_machine}/{s.humans} people)")
    print(f"machines found: {s.machines_found}/{s.machines}")
    print(
        f"time to decision: median {s.median_ms} ms, p90 {s.percentile_ms(0.9)} ms, "
        f"max {max(s.decision_ms)} ms (from the callee's first audio)"
    )
    delays = sorted(s.beep_delay_ms)
    if delays:
        print(
            f"beeps found: {s.beeps_found}/{s.beeps}, reported {delays[len(delays) // 2]} ms "
            f"(median) / {delays[-1]} ms (max) after the beep ended; false beeps: {s.false_beeps}"
        )
    load = os.getloadavg()[0]
    print(
        f"CPU: {1000 * s.cpu_s / s.audio_s:.2f} ms per call-second of audio "
        f"({s.audio_s:.0f} s fed; load average {load:.1f})"
    )
    print(f"CPU, worst case (every frame loud, 8/16 kHz): {worst_case_ms():.2f} ms per call-second")


def worst_case_ms(seconds: int = 60) -> float:
    """CPU per call-second when every frame is loud noise (the tone check runs on each)."""
    rng = np.random.default_rng(1)
    costs = []
    for rate in (8000, 16000):
        step = rate // 50
        pcm = np.round(rng.standard_normal(seconds * rate) * 3000).astype("<i2").tobytes()
        frames = [pcm[2 * i : 2 * (i + step)] for i in range(0, seconds * rate, step)]
        detector = AnsweringMachineDetection(rate, max_wait_s=30.0)
        started = time.process_time()
        for index, frame in enumerate(frames):
            detector.feed(frame, index * 0.02)
        costs.append(1000 * (time.process_time() - started) / seconds)
    return max(costs)


if __name__ == "__main__":
    main()
