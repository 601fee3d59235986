"""``did you mean ...?`` hints for unknown names in config files and tool references.

Shared by the dialplan, the config loader and the tool registry; it imports nothing from sipbot.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    options = list(candidates)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close and len(name) >= 2:  # a shortened name: ``t1`` for ``t1_ms``
        close = [c for c in options if c.startswith(name)][:1]
    return f"; did you mean {close[0]!r}?" if close else ""
