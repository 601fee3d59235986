"""SIP header names and the ordered header multi-map (RFC 3261 §7.3, §20).

Names are stored in canonical spelling, compact forms expanded (``v`` → ``Via``). Headers whose
grammar is a comma list are split into one value per element by :meth:`Headers.get_all`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL_NAMES = [
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Remote-Party-ID",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]
CANONICAL = {name.lower(): name for name in _CANONICAL_NAMES}
CANONICAL.update({short: long for short, long in COMPACT_FORMS.items()})
# (key, canonical) for names as commonly spelled, so the hot path skips str.lower().
_KEYS = {name: (name.lower(), name) for name in _CANONICAL_NAMES}
_KEYS.update({k: (v.lower(), v) for k, v in CANONICAL.items()})
_KEYS.update({k.upper(): (v.lower(), v) for k, v in COMPACT_FORMS.items()})

# Headers whose grammar is a comma-separated list: get_all() returns one value per element.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Allow",
        "Allow-Events",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "In-Reply-To",
        "Path",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "P-Asserted-Identity",
    )
)

TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN)


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name (compact forms expanded)."""
    return CANONICAL.get(name.lower(), name)


def split_unquoted(text: str, separator: str) -> tuple[list[str], bool]:
    """Split ``text`` at each ``separator`` that stands outside quoted strings and ``<...>``.

    Returns:
        The stripped parts (empty ones included), and True if a quoted string was left open.
    """
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    parts.append(text[start:].strip())
    return parts, quoted


def split_list(value: str, *, strict: bool = False) -> list[str]:
    """Split a comma-list header value, respecting quoted strings and ``<...>``.

    Args:
        value: the header value.
        strict: raise ``ValueError`` on an empty element (``a,,b``) instead of dropping it;
            RFC 3261's grammar has no null list elements.
    """
    if "," not in value:
        stripped = value.strip()
        if not stripped and strict:
            raise ValueError("empty list element")
        return [stripped] if stripped else []
    parts, _ = split_unquoted(value, ",")
    if strict and not all(parts):
        raise ValueError("empty list element")
    return [p for p in parts if p]


class Headers:
    """An ordered multi-map of SIP headers with case-insensitive, compact-aware names.

    Each header line is kept as one entry, in order, with its canonical name. ``get`` and
    ``get_all`` split the values of comma-list headers (:data:`LIST_HEADERS`) into elements;
    ``count`` counts lines. Values are stored as given (the parser strips surrounding
    whitespace and unfolds continuation lines).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # (lower-cased canonical name, canonical name, value): the key avoids lower() per lookup.
        self._items: list[tuple[str, str, str]] = []
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _key(name: str) -> tuple[str, str]:
        known = _KEYS.get(name)
        if known is not None:
            return known
        canonical = CANONICAL.get(name.lower(), name)
        return canonical.lower(), canonical

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (the first list element for list headers)."""
        key, _ = self._key(name)
        for k, _n, v in self._items:
            if k == key:
                if key in LIST_HEADERS:
                    parts = split_list(v)
                    return parts[0] if parts else v
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; list headers are split into elements."""
        key, _ = self._key(name)
        out: list[str] = []
        for k, _n, v in self._items:
            if k == key:
                if key in LIST_HEADERS:
                    out.extend(split_list(v))
                else:
                    out.append(v)
        return out

    def get_lines(self, name: str) -> list[str]:
        """The raw value of every line named ``name``, unsplit."""
        key, _ = self._key(name)
        return [v for k, _n, v in self._items if k == key]

    def count(self, name: str) -> int:
        """How many header lines named ``name`` there are (not list elements)."""
        key, _ = self._key(name)
        return sum(1 for k, _n, _v in self._items if k == key)

    def counts(self) -> dict[str, int]:
        """Lines per header, keyed by the lower-cased canonical name (one pass)."""
        out: dict[str, int] = {}
        for k, _n, _v in self._items:
            out[k] = out.get(k, 0) + 1
        return out

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        key, canonical = self._key(name)
        self._items.append((key, canonical, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before all others (e.g. a new top Via)."""
        key, canonical = self._key(name)
        self._items.insert(0, (key, canonical, value))

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one line (kept at the first one's position)."""
        self.replace_all(name, (value,))

    def remove(self, name: str) -> None:
        """Remove every line of ``name``."""
        key, _ = self._key(name)
        self._items = [item for item in self._items if item[0] != key]

    def replace_all(self, name: str, values: Iterable[str]) -> None:
        """Replace every line of ``name`` by one line per value, where the first one stood."""
        key, canonical = self._key(name)
        new = [(key, canonical, v) for v in values]
        for i, item in enumerate(self._items):
            if item[0] == key:
                rest = [it for it in self._items[i:] if it[0] != key]
                self._items[i:] = new + rest
                return
        self._items.extend(new)

    def items(self) -> list[tuple[str, str]]:
        """All header lines as (canonical name, value) pairs, in order."""
        return [(n, v) for _k, n, v in self._items]

    def copy(self) -> Headers:
        """A shallow copy (values are strings, so an independent one)."""
        h = Headers()
        h._items = list(self._items)
        return h

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key, _ = self._key(name)
        return any(k == key for k, _n, _v in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self.items() == other.items()

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"
