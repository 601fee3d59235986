"""The bounded fuzzing run of the suite: every target of :mod:`fuzz.targets` under atheris.

One process fuzzes all targets (``python -m fuzz.run all``: the first byte of an input picks
the target), so the interpreter and the instrumented imports are paid once; the run starts
from the stored seeds and past crashes and writes nothing into the repository. It fails on
any exception outside a target's allowed sipbot errors, an input running over the per-input
timeout (a hang) or the process going over its memory limit, and prints executions per
second per target (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import ORDER

ROOT = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = 35  # + start-up (~5 s, more on a loaded machine): the budget is 60 s
FUZZ_ALL = (sys.executable, "-m", "fuzz.run", "all")
WALL_LIMIT_S = 150  # a loaded machine starts slowly; the fuzzing itself is bounded above


@pytest.mark.slow
def test_every_target_survives_a_bounded_fuzzing_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [*FUZZ_ALL, "--seconds", str(FUZZ_SECONDS), "--work", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WALL_LIMIT_S,
    )
    log = run.stdout + run.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.split("-")[0] in _ARTIFACTS)
    assert crashes == [], f"fuzzing found {crashes}: ...{log[-6000:]}"
    assert run.returncode == 0, f"fuzzing failed (status {run.returncode}): ...{log[-6000:]}"
    stats = json.loads((tmp_path / "stats.json").read_text())
    ran = stats["targets"]
    print(f"\nbounded fuzzing, {stats['elapsed_s']:.0f} s, all targets in one process:")
    for name in ORDER:
        runs, seconds = ran.get(name, {}).get("runs", 0), ran.get(name, {}).get("seconds", 0.0)
        rate = runs / seconds if seconds else 0.0
        print(f"  {name:12} {runs:7} inputs  {rate:8.0f} exec/s in the target")
    assert set(ORDER) <= {name for name, entry in ran.items() if entry["runs"] > 0}
    assert "Done" in log  # libFuzzer ended the run at its time limit


_ARTIFACTS = {"crash", "timeout", "oom", "leak", "slow"}
