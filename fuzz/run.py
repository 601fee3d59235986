"""Run one fuzz target under atheris (libFuzzer), or replay inputs through it.

::

    python -m fuzz.run sip_core --minutes 5          # what scripts/fuzz runs
    python -m fuzz.run all --seconds 45 --work /tmp/w # every target: the suite's bounded run
    python -m fuzz.run dialplan --replay crash-1234   # reproduce a crash (no atheris needed)
    python -m fuzz.run --list

The stored seeds (``fuzz/corpus/TARGET``) and past crashes (``fuzz/regressions/TARGET``) are
read, never written: new inputs go to ``--work`` (default ``.fuzz/TARGET``) under ``new/``,
executions and seconds per target to its ``stats.json``, and a crash, a
hang (over ``--timeout`` seconds for one input) or memory over ``--rss-mb`` is written there
as ``crash-*``, ``timeout-*`` or ``oom-*`` and ends the run with a non-zero status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
REGRESSIONS_DIR = FUZZ_DIR / "regressions"
DEFAULT_TIMEOUT_S = 5  # one input running longer is a hang (slow, loaded CI machines too)
DEFAULT_RSS_MB = 1024  # the whole process; Python and the SDKs need ~200 MB
ALL = "all"  # every target in one process, the first input byte choosing (the suite's run)
STATS_FILE = "stats.json"
STATS_EVERY_S = 1.0


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?", help="the target's name (see --list)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help="run this long")
    length.add_argument("--minutes", type=float, help="run this long")
    length.add_argument("--replay", nargs="+", type=Path, help="run these inputs once, no fuzzing")
    parser.add_argument("--work", type=Path, help="where new inputs and crashes go")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="hang, seconds")
    parser.add_argument("--rss-mb", type=int, default=DEFAULT_RSS_MB, help="memory limit")
    parser.add_argument("--list", action="store_true", help="list the targets")
    args = parser.parse_args(argv)
    if not args.list and args.target is None:
        parser.error("a target is needed (see --list)")
    return args


def replay(name: str, paths: list[Path]) -> int:
    """Run each input once through target ``name``; the first failure propagates."""
    from fuzz.targets import TARGETS, check

    target = TARGETS[name]
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            check(target, file.read_bytes())
    return 0


def fuzz(args: argparse.Namespace) -> None:
    """Hand the target to libFuzzer; never returns (libFuzzer exits)."""
    import faulthandler  # noqa: F401 - libFuzzer's timeout report imports it (dialplan Rule 4)
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # the parsers log what they drop; millions of lines
    with atheris.instrument_imports(include=["sipbot"]):
        from fuzz import targets
    seconds = args.seconds if args.seconds is not None else (args.minutes or 1.0) * 60
    work = args.work or Path(".fuzz") / args.target
    (work / "new").mkdir(parents=True, exist_ok=True)
    names = list(targets.ORDER) if args.target == ALL else [args.target]
    for name in names:  # imports and first-call work happen before the clock runs
        targets.check(targets.TARGETS[name], b"")
    if args.target == ALL:
        corpora = [_all_seeds(work / "seeds", names)]
        max_len = max(t.max_len for t in targets.TARGETS.values()) + 1
    else:
        corpora = [
            d for d in (CORPUS_DIR / args.target, REGRESSIONS_DIR / args.target) if d.is_dir()
        ]
        max_len = targets.TARGETS[args.target].max_len
    libfuzzer = [
        sys.argv[0],
        f"-max_total_time={max(1, round(seconds))}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        f"-max_len={max_len}",
        f"-artifact_prefix={work}/",
        "-print_final_stats=1",
        str(work / "new"),
        *(str(d) for d in corpora),
    ]
    print(f"fuzz: {args.target} ({', '.join(names)}) for {seconds:.0f} s", flush=True)
    stats = _Stats(work / STATS_FILE)

    def one_input(data: bytes) -> None:
        target, rest = (
            targets.pick(data) if args.target == ALL else (targets.TARGETS[names[0]], data)
        )
        started = time.perf_counter()
        targets.check(target, rest)
        stats.add(target.name, time.perf_counter() - started)

    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


def _all_seeds(directory: Path, names: list[str]) -> Path:
    """Every target's seeds and regressions, each prefixed with its selector byte."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        for source in (CORPUS_DIR / name, REGRESSIONS_DIR / name):
            for file in sorted(source.glob("*")) if source.is_dir() else []:
                (directory / f"{name}-{file.name}").write_bytes(bytes([index]) + file.read_bytes())
    return directory


class _Stats:
    """Executions and seconds spent per target, written to ``stats.json`` every second
    (libFuzzer ends the process with ``exit``: nothing runs after the last input)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, list[float]] = {}
        self.started = self.written = time.monotonic()

    def add(self, name: str, seconds: float) -> None:
        entry = self.runs.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
        now = time.monotonic()
        if now - self.written >= STATS_EVERY_S:
            self.written = now
            report = {
                "elapsed_s": round(now - self.started, 3),
                "targets": {
                    n: {"runs": int(r), "seconds": round(t, 3)} for n, (r, t) in self.runs.items()
                },
            }
            self.path.write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    if args.list:
        from fuzz.targets import TARGETS

        for target in TARGETS.values():
            print(f"{target.name:12} {target.what}")
        print(f"{ALL:12} every target in one process (the first byte of an input picks one)")
        return 0
    if args.replay:
        return replay(args.target, args.replay)
    fuzz(args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
