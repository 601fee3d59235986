"""Coverage-guided fuzzing of sipbot's parsers (issue 12), outside the runtime package.

:mod:`fuzz.targets` holds one plain function per target (bytes in, nothing out) and the
property every target checks: only sipbot's own errors (the tree in :mod:`sipbot.errors`)
may come out of a parser fed hostile bytes; never another exception, a hang or unbounded
memory. :mod:`fuzz.run` drives a target with atheris (libFuzzer); ``scripts/fuzz TARGET
--minutes N`` runs it long. ``corpus/TARGET/`` holds each target's stored seeds and
``regressions/TARGET/`` every input that once crashed a target (replayed by the unit tests).
"""
