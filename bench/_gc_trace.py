"""``python bench/_gc_trace.py run ARGS``: ``sipbot run ARGS`` that logs its long GC pauses.

The benchmark runs the server through this wrapper so that its figures can say whether a stall
seen on the wire was the garbage collector. Every generation-2 pass, and any pass longer than
:data:`REPORT_MS`, prints one stderr line ``gc-pause gen=G ms=M at=EPOCH``. The callback costs
~1 µs per collection; sipbot itself is unchanged (``sipbot.cli.main``).

With ``BENCH_CPROFILE=FILE`` in the environment the server runs under cProfile and writes its
statistics to FILE when it exits (diagnosis only: the profiler slows every Python call, so
cadence figures from such a run mean nothing; call counts per frame do).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

REPORT_MS = 5.0
_started = [0.0]
_totals: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}  # gen: [passes, ms]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pause_ms = (time.perf_counter() - _started[0]) * 1000.0
    total = _totals[info["generation"]]
    total[0] += 1
    total[1] += pause_ms
    if info["generation"] == 2 or pause_ms > REPORT_MS:
        print(
            f"gc-pause gen={info['generation']} ms={pause_ms:.1f} at={time.time():.3f}",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sipbot.cli import main

    gc.callbacks.append(_on_gc)
    atexit.register(
        lambda: print(
            "gc-totals " + " ".join(f"gen{g}={n:.0f}/{ms:.1f}ms" for g, (n, ms) in _totals.items()),
            file=sys.stderr,
            flush=True,
        )
    )
    profile_to = os.environ.get("BENCH_CPROFILE")
    if not profile_to:
        raise SystemExit(main(sys.argv[1:]))
    import cProfile

    profiler = cProfile.Profile()
    try:
        code = profiler.runcall(main, sys.argv[1:])
    finally:
        profiler.dump_stats(profile_to)
    raise SystemExit(code)
