"""SIP URIs, name-addr values (From/To/Contact/Route) and Via (RFC 3261 §19.1, §20, §25).

Sans-I/O parsing helpers; malformed values raise :class:`~sipbot.errors.SipParseError` (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipbot.errors import SipParseError
from sipbot.sip.headers import TOKEN, TOKEN_RE


@dataclass(frozen=True, slots=True)
class SipUri:
    """A SIP/SIPS URI (RFC 3261 §19.1). Other schemes keep their text in ``opaque``.

    ``params`` values are None for flag parameters (``;lr``). Parameter names are lower-cased.
    """

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    opaque: str | None = None

    def param(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name.lower():
                return v if v is not None else ""
        return default

    def has_param(self, name: str) -> bool:
        return any(k == name.lower() for k, _ in self.params)

    def with_params(self, **params: str | None) -> SipUri:
        """A copy with parameters set (None → flag parameter)."""
        kept = [(k, v) for k, v in self.params if k not in params]
        kept.extend((k.lower(), v) for k, v in params.items())
        return SipUri(
            self.scheme,
            self.host,
            self.user,
            self.password,
            self.port,
            tuple(kept),
            self.headers,
            self.opaque,
        )

    @property
    def transport(self) -> str:
        """The ``transport`` parameter, lower-cased (``udp`` when absent)."""
        return (self.param("transport") or "udp").lower()

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(format_host(self.host))
        if self.port is not None:
            out.append(f":{self.port}")
        for k, v in self.params:
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)


_URI_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):(.*)", re.DOTALL)
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::(\d{1,5}))?$")


def format_host(host: str) -> str:
    """Bracket an IPv6 address for use in a URI or Via."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_uri(text: str) -> SipUri:
    """Parse a URI. SIP/SIPS URIs are parsed fully; other schemes are kept opaque.

    Raises:
        SipParseError: (400) the text is not a URI, or a SIP URI has no valid host.
    """
    m = _URI_SCHEME_RE.fullmatch(text.strip())
    if not m or any(c in text for c in " \t\r\n<>"):
        raise SipParseError(400, f"Malformed URI {text!r}")
    scheme = m.group(1).lower()
    rest = m.group(2)
    if scheme not in ("sip", "sips"):
        return SipUri(scheme=scheme, opaque=rest)
    headers = None
    if "?" in rest:
        rest, headers = rest.split("?", 1)
    user = password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
        else:
            user = userinfo
    hostport, *param_parts = rest.split(";")
    hm = _HOST_RE.fullmatch(hostport)
    if not hm:
        raise SipParseError(400, f"Malformed host in URI {text!r}")
    host = hm.group(1).strip("[]")
    port = int(hm.group(2)) if hm.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(400, f"Port out of range in URI {text!r}")
    params: list[tuple[str, str | None]] = []
    for part in param_parts:
        if not part:
            continue
        k, eq, v = part.partition("=")
        params.append((k.lower(), v if eq else None))
    return SipUri(scheme, host, user, password, port, tuple(params), headers)


@dataclass(frozen=True, slots=True)
class NameAddress:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route, ...).

    ``uri`` is the URI text exactly as received; ``params`` holds the header parameters
    (``tag``, ``expires``, ...), names lower-cased, None for flags.
    """

    uri: str
    display_name: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def param(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name.lower():
                return v if v is not None else ""
        return default

    def with_param(self, name: str, value: str | None) -> NameAddress:
        kept = tuple((k, v) for k, v in self.params if k != name.lower())
        return NameAddress(self.uri, self.display_name, (*kept, (name.lower(), value)))

    @property
    def parsed_uri(self) -> SipUri:
        return parse_uri(self.uri)

    def __str__(self) -> str:
        display = ""
        if self.display_name:
            name = self.display_name
            display = name + " " if _TOKEN_WORDS_RE.fullmatch(name) else f'"{_quote(name)}" '
        out = f"{display}<{self.uri}>"
        for k, v in self.params:
            out += f";{k}" if v is None else f";{k}={v}"
        return out


_TOKEN_WORDS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+( [A-Za-z0-9\-.!%*_+`'~]+)*")


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _parse_params(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;a=b;c`` header parameters (quoted values allowed)."""
    params: list[tuple[str, str | None]] = []
    for part in split_params(text):
        k, eq, v = part.partition("=")
        k = k.strip().lower()
        if not k or not TOKEN_RE.fullmatch(k):
            raise SipParseError(400, f"Malformed parameter in {what}")
        params.append((k, v.strip() if eq else None))
    return tuple(params)


def split_params(text: str) -> list[str]:
    """Split ``;a=b;c="x;y"`` into ``['a=b', 'c="x;y"']``, respecting quotes."""
    parts: list[str] = []
    quoted = False
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            buf.append(ch)
        elif ch == ";":
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quoted:
        raise SipParseError(400, "Unterminated quoted string")
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


def parse_name_addr(text: str, what: str = "address") -> NameAddress:
    """Parse a From/To/Contact/Route value.

    Raises:
        SipParseError: (400) the value is not a name-addr or addr-spec.
    """
    s = text.strip()
    display: str | None = None
    if s.startswith('"'):
        i = 1
        chars: list[str] = []
        while i < len(s) and s[i] != '"':
            if s[i] == "\\" and i + 1 < len(s):
                i += 1
            chars.append(s[i])
            i += 1
        if i >= len(s):
            raise SipParseError(400, f"Unterminated quoted string in {what}")
        display = "".join(chars)
        s = s[i + 1 :].lstrip()
        if not s.startswith("<"):
            raise SipParseError(400, f"Malformed {what}: display name without <URI>")
    if "<" in s:
        lt = s.index("<")
        before = s[:lt].strip()
        if before:
            if display is not None or not _TOKEN_WORDS_RE.fullmatch(" ".join(before.split())):
                raise SipParseError(400, f"Malformed display name in {what}")
            display = " ".join(before.split())
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(400, f"Unterminated <URI> in {what}")
        uri = s[lt + 1 : gt]
        rest = s[gt + 1 :].strip()
        if rest and not rest.startswith(";"):
            raise SipParseError(400, f"Malformed {what}: text after <URI>")
        params = _parse_params(rest, what)
    else:
        uri, _, rest = s.partition(";")
        uri = uri.strip()
        if any(c in uri for c in " \t,?"):
            raise SipParseError(400, f"Malformed {what}: URI with spaces or header parts needs <>")
        params = _parse_params(rest, what)
    parse_uri(uri)  # validates
    return NameAddress(uri, display, params)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via element (RFC 3261 §20.42). ``params`` names lower-cased, None for flags."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    def param(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name:
                return v if v is not None else ""
        return default

    def has_param(self, name: str) -> bool:
        return any(k == name for k, _ in self.params)

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((k, v) for k, v in self.params if k != name)
        if any(k == name for k, _ in self.params):
            params = tuple((k, value) if k == name else (k, v) for k, v in self.params)
        else:
            params = (*kept, (name, value))
        return Via(self.transport, self.host, self.port, params)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        out = f"SIP/2.0/{self.transport} {format_host(self.host)}"
        if self.port is not None:
            out += f":{self.port}"
        for k, v in self.params:
            out += f";{k}" if v is None else f";{k}={v}"
        return out


_VIA_RE = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*(" + TOKEN + r")\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)"
    r"(?:\s*:\s*(\d{1,5}))?\s*(.*)",
    re.IGNORECASE | re.DOTALL,
)


def parse_via(text: str) -> Via:
    """Parse one Via element.

    Raises:
        SipParseError: (400) the value is not a Via.
    """
    m = _VIA_RE.fullmatch(text.strip())
    if not m:
        raise SipParseError(400, f"Malformed Via header {text!r}")
    rest = m.group(4).strip()
    if rest and not rest.startswith(";"):
        raise SipParseError(400, f"Malformed Via header {text!r}")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(400, "Via port out of range")
    return Via(m.group(1).upper(), m.group(2).strip("[]"), port, _parse_params(rest, "Via"))
