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


def split_list(value: str) -> list[str]:
    """Split a comma-list header value, respecting quotes and ``<...>``."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
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
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


class Headers:
    """An ordered multi-map of SIP headers with case-insensitive, compact-aware names."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(k), v) for k, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (the first list element for list headers)."""
        key = canonical_name(name).lower()
        for k, v in self._items:
            if k.lower() == key:
                if key in LIST_HEADERS:
                    parts = split_list(v)
                    return parts[0] if parts else v
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; list headers are split into elements."""
        key = canonical_name(name).lower()
        out: list[str] = []
        for k, v in self._items:
            if k.lower() == key:
                if key in LIST_HEADERS:
                    out.extend(split_list(v))
                else:
                    out.append(v)
        return out

    def count(self, name: str) -> int:
        """How many header lines named ``name`` there are (not list elements)."""
        key = canonical_name(name).lower()
        return sum(1 for k, _ in self._items if k.lower() == key)

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before all others (e.g. a new top Via)."""
        self._items.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one line (kept at the first one's position)."""
        key = canonical_name(name).lower()
        for i, (k, _) in enumerate(self._items):
            if k.lower() == key:
                self._items[i] = (canonical_name(name), value)
                self._items[i + 1 :] = [kv for kv in self._items[i + 1 :] if kv[0].lower() != key]
                return
        self._items.append((canonical_name(name), value))

    def remove(self, name: str) -> None:
        """Remove every line of ``name``."""
        key = canonical_name(name).lower()
        self._items = [kv for kv in self._items if kv[0].lower() != key]

    def replace_all(self, name: str, values: Iterable[str]) -> None:
        """Replace every line of ``name`` by one line per value, where the first one stood."""
        key = canonical_name(name).lower()
        values = list(values)
        for i, (k, _) in enumerate(self._items):
            if k.lower() == key:
                rest = [kv for kv in self._items[i:] if kv[0].lower() != key]
                self._items[i:] = [(canonical_name(name), v) for v in values] + rest
                return
        self._items.extend((canonical_name(name), v) for v in values)

    def items(self) -> list[tuple[str, str]]:
        """All header lines as (canonical name, value) pairs, in order."""
        return list(self._items)

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name).lower()
        return any(k.lower() == key for k, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"
