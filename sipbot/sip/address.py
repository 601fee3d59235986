"""SIP URIs, name-addr values (From/To/Contact/Route) and Via (RFC 3261 §19.1, §20, §25).

Sans-I/O parsing helpers; malformed values raise :class:`~sipbot.errors.SipParseError` (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipbot.errors import SipParseError
from sipbot.sip.headers import TOKEN, TOKEN_RE, split_unquoted


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
# RFC 3261 §25.1: unreserved, escaped, and the extra characters each URI part allows.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
_PARAM_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+")
_HEADERS_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$=&]|{_ESCAPED})+")
# Hostnames as RFC 3261 §25.1 has them, plus "_": container and cluster names carry it and
# peers send them; rejecting a call for it would help nobody.
_HOSTNAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?"
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|" + _HOSTNAME + r")(?::(\d{1,5}))?")
_SPACE = frozenset(" \t\r\n")


def format_host(host: str) -> str:
    """Bracket an IPv6 address for use in a URI or Via."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_uri(text: str) -> SipUri:
    """Parse a URI. SIP/SIPS URIs are parsed fully (RFC 3261 §19.1, §25.1); others stay opaque.

    Escapes (``%41``) are kept as received: comparing or unescaping is the caller's business.

    Raises:
        SipParseError: (400) the text is not a URI, or a SIP URI part has a character its
            grammar does not allow (whitespace anywhere, no host, a bad port, ...).
    """
    m = _URI_SCHEME_RE.fullmatch(text)
    if not m or not _SPACE.isdisjoint(text) or "<" in text or ">" in text:
        raise SipParseError(400, f"Malformed URI {text!r}")
    scheme = m.group(1).lower()
    rest = m.group(2)
    if scheme not in ("sip", "sips"):
        if not rest:
            raise SipParseError(400, f"Malformed URI {text!r}")
        return SipUri(scheme=scheme, opaque=rest)
    user = password = None
    # "@" is allowed in no SIP URI part but userinfo's end, so the first one ends userinfo.
    userinfo, at, hostpart = rest.partition("@")
    if not at:
        userinfo, hostpart = "", rest
    else:
        user, colon, pw = userinfo.partition(":")
        if not _USER_RE.fullmatch(user) or not _PASSWORD_RE.fullmatch(pw):
            raise SipParseError(400, f"Malformed user part in URI {text!r}")
        password = pw if colon else None
    hostpart, qmark, headers = hostpart.partition("?")
    if qmark and not _HEADERS_RE.fullmatch(headers):
        raise SipParseError(400, f"Malformed headers in URI {text!r}")
    hostport, *param_parts = hostpart.split(";")
    hm = _HOST_RE.fullmatch(hostport)
    if not hm:
        raise SipParseError(400, f"Malformed host in URI {text!r}")
    port = int(hm.group(2)) if hm.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(400, f"Port out of range in URI {text!r}")
    params: list[tuple[str, str | None]] = []
    for part in param_parts:
        k, eq, v = part.partition("=")
        if not _PARAM_RE.fullmatch(k) or (eq and not _PARAM_RE.fullmatch(v)):
            raise SipParseError(400, f"Malformed parameter in URI {text!r}")
        params.append((k.lower(), v if eq else None))
    host = hm.group(1).strip("[]")
    return SipUri(scheme, host, user, password, port, tuple(params), headers if qmark else None)


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


_TOKEN_WORDS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*")
_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_PARAM_VALUE_RE = re.compile(TOKEN + r'|"(?:[^"\\]|\\.)*"|\[[0-9A-Fa-f:.]+\]', re.DOTALL)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_params(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;a=b;c`` generic parameters (RFC 3261 §25.1 generic-param).

    LWS around ``;`` and ``=`` is allowed; names are tokens (lower-cased); values are tokens,
    quoted strings (kept with their quotes) or IPv6 references.
    """
    params: list[tuple[str, str | None]] = []
    text = text.strip()
    if not text:
        return ()
    if text[0] != ";":
        raise SipParseError(400, f"Malformed {what}: text after the address")
    for part in split_params(text[1:], what):
        k, eq, v = part.partition("=")
        k = k.strip()
        v = v.strip()
        if not TOKEN_RE.fullmatch(k) or (eq and not _PARAM_VALUE_RE.fullmatch(v)):
            raise SipParseError(400, f"Malformed parameter in {what}")
        params.append((k.lower(), v if eq else None))
    return tuple(params)


def split_params(text: str, what: str = "header") -> list[str]:
    """Split ``a=b;c="x;y"`` at the semicolons outside quoted strings.

    Raises:
        SipParseError: (400) an empty parameter (``a;;b``) or an unterminated quoted string.
    """
    if '"' not in text:
        parts = [p.strip() for p in text.split(";")]
    else:
        parts, unterminated = split_unquoted(text, ";")
        if unterminated:
            raise SipParseError(400, f"Unterminated quoted string in {what}")
    if not all(parts):
        raise SipParseError(400, f"Empty parameter in {what}")
    return parts


def _unquote(quoted: str) -> str:
    """The content of a quoted string, quoted-pairs resolved."""
    inner = quoted[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


def parse_name_addr(text: str, what: str = "address") -> NameAddress:
    """Parse a From/To/Contact/Route value: ``name-addr`` or ``addr-spec`` plus parameters.

    ``display-name`` is a quoted string or unquoted tokens separated by LWS (RFC 3261 §25.1;
    no LWS is needed before ``<``, see RFC 4475 §3.1.1.6). An ``addr-spec`` outside ``<>``
    must not contain ``,``, ``;`` or ``?`` (§20.10): its parameters are header parameters.

    Raises:
        SipParseError: (400) with a reason naming ``what`` and the fault.
    """
    s = text.strip()
    display: str | None = None
    if s.startswith('"'):
        m = _QUOTED_RE.match(s)
        if not m:
            raise SipParseError(400, f"Unterminated quoted string in {what}")
        display = _unquote(m.group())
        s = s[m.end() :].lstrip()
        if not s.startswith("<"):
            raise SipParseError(400, f"Malformed {what}: quoted display name without <URI>")
    lt = s.find("<")
    if lt >= 0:
        before = s[:lt].strip()
        if before:
            if display is not None or not _TOKEN_WORDS_RE.fullmatch(before):
                raise SipParseError(400, f"Malformed display name in {what}")
            display = " ".join(before.split())
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(400, f"Unterminated <URI> in {what}")
        uri = s[lt + 1 : gt]
        params = parse_params(s[gt + 1 :], what)
    else:
        uri, semi, rest = s.partition(";")
        uri = uri.strip()
        if any(c in uri for c in " \t,?"):
            raise SipParseError(400, f"Malformed {what}: a URI with spaces or headers needs <>")
        params = parse_params(semi + rest, what)
    try:
        parse_uri(uri)
    except SipParseError:
        raise SipParseError(400, f"Malformed URI in {what}") from None
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
    r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*(" + TOKEN + r")[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|" + _HOSTNAME + r")"
    r"(?:[ \t]*:[ \t]*(\d{1,5}))?[ \t]*(.*)",
    re.IGNORECASE | re.DOTALL,
)


def parse_via(text: str) -> Via:
    """Parse one Via element (``sent-protocol LWS sent-by *( SEMI via-params )``).

    Raises:
        SipParseError: (400) the value is not a Via element, or a parameter is malformed.
    """
    m = _VIA_RE.fullmatch(text.strip())
    if not m:
        raise SipParseError(400, "Malformed Via header")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(400, "Via port out of range")
    params = parse_params(m.group(4), "Via")
    return Via(m.group(1).upper(), m.group(2).strip("[]"), port, params)
