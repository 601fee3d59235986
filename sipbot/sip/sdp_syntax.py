"""SDP syntax (RFC 4566): the data model, a strict parser and the serializer.

Import these from :mod:`sipbot.sip.sdp`, which adds offer/answer on top.

Parsing rules: lines end in CRLF (bare LF tolerated); each is ``<letter>=<value>`` with no
space around ``=``; ``v=0`` comes first, then ``o=``, ``s=``; every ``m=`` line is
``media port[/count] proto fmt...``; every accepted stream needs a ``c=`` at session or media
level. Unknown line types are kept and written back. A broken rule is an :class:`SdpError`
whose message says the line number and the fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from sipbot.errors import SdpError

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_LINE_RE = re.compile(r"([a-z])=(.*)")
_MEDIA_RE = re.compile(r"([a-z]+) ([0-9]+)(?:/([0-9]+))? ([A-Za-z0-9/._\-]+)((?: [^ ]+)+)")
_ORIGIN_RE = re.compile(r"(\S+) ([0-9]+) ([0-9]+) (IN) (IP4|IP6) (\S+)")
_CONNECTION_RE = re.compile(r"(IN) (IP4|IP6) ([^ /]+)(/[0-9/]+)?")
# Media-level line types other than c= and a= (RFC 4566 §5 order).
_MEDIA_ORDER = "ibk"


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=`` (RFC 4566 §5.2). Session id and version are decimal strings as received."""

    username: str
    session_id: str
    session_version: str
    address: str
    address_type: str = "IP4"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"IN {self.address_type} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section. ``attributes`` are ``(name, value)`` in order, value None for flags;
    ``lines`` holds its other ``i=``, ``b=``, ``k=`` lines as ``(type, value)``."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None  # c= address, if given at media level
    attributes: tuple[tuple[str, str | None], ...] = ()
    lines: tuple[tuple[str, str], ...] = ()
    port_count: int | None = None

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name`` ("" for a flag), or None."""
        for k, v in self.attributes:
            if k == name:
                return "" if v is None else v
        return None

    def attribute_values(self, name: str) -> list[str]:
        """Every value of ``a=name`` in order."""
        return [v or "" for k, v in self.attributes if k == name]

    @property
    def direction(self) -> str | None:
        """The media-level direction attribute, if any."""
        return next((k for k, _ in self.attributes if k in DIRECTIONS), None)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A session description. ``connection`` is the session-level ``c=`` address."""

    origin: Origin
    session_name: str = "-"
    connection: str | None = None
    connection_type: str = "IP4"
    timing: str = "0 0"
    attributes: tuple[tuple[str, str | None], ...] = ()
    media: tuple[MediaDescription, ...] = ()
    lines: tuple[tuple[str, str], ...] = field(default=())  # other session-level lines

    @property
    def direction(self) -> str | None:
        """The session-level direction attribute, if any."""
        return next((k for k, _ in self.attributes if k in DIRECTIONS), None)

    def attribute(self, name: str) -> str | None:
        """The value of the first session-level ``a=name`` ("" for a flag), or None."""
        for k, v in self.attributes:
            if k == name:
                return "" if v is None else v
        return None

    def with_version(self, session_version: int) -> SessionDescription:
        """A copy whose ``o=`` carries ``session_version`` (RFC 3264 §8: +1 per change)."""
        return replace(self, origin=replace(self.origin, session_version=str(session_version)))

    def serialize(self) -> bytes:
        """The description as SDP text with CRLF line ends, fields in RFC 4566 order."""
        out = ["v=0", f"o={self.origin}", f"s={self.session_name}"]
        out += _ordered(self.lines, "iuep")
        if self.connection is not None:
            out.append(f"c=IN {self.connection_type} {self.connection}")
        out += _ordered(self.lines, "b")
        out.append(f"t={self.timing}")
        out += _ordered(self.lines, "rzk")
        out += _attributes(self.attributes)
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count is not None else str(m.port)
            out.append(f"m={m.media} {port} {m.proto} {' '.join(m.formats)}")
            out += _ordered(m.lines, "i")
            if m.connection is not None:
                kind = "IP6" if ":" in m.connection else "IP4"
                out.append(f"c=IN {kind} {m.connection}")
            out += _ordered(m.lines, "bk")
            out += _attributes(m.attributes)
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def __bytes__(self) -> bytes:
        return self.serialize()


def _ordered(lines: tuple[tuple[str, str], ...], types: str) -> list[str]:
    return [f"{t}={v}" for kind in types for t, v in lines if t == kind]


def _attributes(attributes: tuple[tuple[str, str | None], ...]) -> list[str]:
    return [f"a={k}" if v is None else f"a={k}:{v}" for k, v in attributes]


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body.

    Raises:
        SdpError: the body is not UTF-8 or breaks a rule of this module's docstring.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    raw = text.split("\r\n") if "\r\n" in text else text.split("\n")
    while raw and raw[-1] == "":
        raw.pop()
    if not raw:
        raise SdpError("Empty SDP")
    parsed: list[tuple[int, str, str]] = []
    for number, line in enumerate(raw, 1):
        m = _LINE_RE.fullmatch(line)
        if not m:
            raise SdpError(f"SDP line {number}: not <type>=<value>")
        parsed.append((number, m.group(1), m.group(2)))
    return _build(parsed)


def _build(parsed: list[tuple[int, str, str]]) -> SessionDescription:
    if parsed[0][1:] != ("v", "0"):
        raise SdpError("SDP line 1: must be v=0")
    session: dict[str, tuple[int, str]] = {}
    session_lines: list[tuple[str, str]] = []
    session_attrs: list[tuple[str, str | None]] = []
    media: list[_MediaBuilder] = []
    for number, kind, value in parsed[1:]:
        if kind == "m":
            media.append(_MediaBuilder.from_line(number, value))
        elif media:
            media[-1].add(number, kind, value)
        elif kind in "osct" and kind not in session:
            session[kind] = (number, value)
        elif kind == "a":
            session_attrs.append(_attribute(value))
        else:
            session_lines.append((kind, value))
    for kind, name in (("o", "o= (origin)"), ("s", "s= (session name)"), ("t", "t= (timing)")):
        if kind not in session:
            raise SdpError(f"SDP has no {name} line")
    origin = _origin(*session["o"])
    connection, connection_type = None, "IP4"
    if "c" in session:
        connection_type, connection = _connection(*session["c"])
    descriptions = tuple(m.build() for m in media)
    for m in descriptions:
        if m.port != 0 and m.connection is None and connection is None:
            raise SdpError(f"SDP m={m.media} has no c= line")
    return SessionDescription(
        origin,
        session["s"][1],
        connection,
        connection_type,
        session["t"][1],
        tuple(session_attrs),
        descriptions,
        tuple(session_lines),
    )


def _origin(number: int, value: str) -> Origin:
    m = _ORIGIN_RE.fullmatch(value)
    if not m:
        raise SdpError(f"SDP line {number}: malformed o= line")
    return Origin(m.group(1), m.group(2), m.group(3), m.group(6), m.group(5))


def _connection(number: int, value: str) -> tuple[str, str]:
    m = _CONNECTION_RE.fullmatch(value)
    if not m:
        raise SdpError(f"SDP line {number}: malformed c= line")
    return m.group(2), m.group(3)


def _attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    return name, rest if colon else None


@dataclass(slots=True)
class _MediaBuilder:
    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_line(cls, number: int, value: str) -> _MediaBuilder:
        m = _MEDIA_RE.fullmatch(value)
        if not m or int(m.group(2)) > 65535:
            raise SdpError(f"SDP line {number}: malformed m= line")
        count = int(m.group(3)) if m.group(3) else None
        return cls(m.group(1), int(m.group(2)), count, m.group(4), tuple(m.group(5).split()))

    def add(self, number: int, kind: str, value: str) -> None:
        if kind == "c":
            self.connection = _connection(number, value)[1]
        elif kind == "a":
            self.attributes.append(_attribute(value))
        elif kind in _MEDIA_ORDER:
            self.lines.append((kind, value))
        else:
            raise SdpError(f"SDP line {number}: {kind}= is not allowed in a media section")

    def build(self) -> MediaDescription:
        return MediaDescription(
            self.media,
            self.port,
            self.proto,
            self.formats,
            self.connection,
            tuple(self.attributes),
            tuple(self.lines),
            self.port_count,
        )
