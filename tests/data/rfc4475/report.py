"""Print the RFC 4475 table: name, section, expected parse result and answer, actual parse.

Run: ``python -m tests.data.rfc4475.report`` (exit status 1 if a parse result differs).
"""

from __future__ import annotations

import sys

from sipbot.errors import SipParseError
from sipbot.sip.message import SipRequest, parse_message
from tests.data.rfc4475 import load
from tests.data.rfc4475.expected import EXPECTED


def actual_parse(name: str) -> str:
    """The parse outcome of ``name`` in the notation of ``Expected.parse``."""
    try:
        message = parse_message(load(name))
    except SipParseError as exc:
        return f"{exc.status} {exc.reason}"
    return "request" if isinstance(message, SipRequest) else "response"


def main() -> int:
    rows = []
    failures = 0
    for name, exp in EXPECTED.items():
        actual = actual_parse(name)
        ok = actual == exp.parse
        failures += not ok
        answer = "no response" if exp.answer is None else str(exp.answer)
        rows.append((name, exp.section, answer, actual, "ok" if ok else "MISMATCH"))
    header = ("name", "RFC 4475", "UAS answer", "parse result", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
