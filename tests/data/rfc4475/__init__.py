"""RFC 4475 torture messages (``<name>.dat``, byte-exact, CRLF) and what sipbot must do with them.

``load(name)`` returns a message's bytes; :mod:`.expected` holds the table; ``python -m
tests.data.rfc4475.report`` prints the parse results next to the expectations.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent


def load(name: str) -> bytes:
    """The exact bytes of the torture message ``name`` (e.g. ``"wsinv"``)."""
    return (DATA_DIR / f"{name}.dat").read_bytes()
