"""SIP messages: the data model, a strict parser and the serializer (RFC 3261 §7, §20, §25).

Sans-I/O: bytes in, objects out, and back. Nothing here knows about sockets or time.

Rules the parser keeps (each broken rule is a :class:`~sipbot.errors.SipParseError` carrying
the status code a request deserves and a reason phrase that names the fault):

* Rule 1: the start line has exactly three parts separated by single spaces, nothing trailing.
* Rule 2: a version other than ``SIP/2.0`` is 505 (requests); a malformed one is 400.
* Rule 3: Via, From, To, Call-ID and CSeq are present exactly as RFC 3261 §8.1.1 requires;
  CSeq's number fits 31 bits and its method matches the request's method.
* Rule 4: Content-Length is a non-negative integer no larger than what is there; extra bytes
  after the body (UDP) are discarded.
* Rule 5: a message over :data:`MAX_MESSAGE_BYTES` is 513, a body over :data:`MAX_BODY_BYTES` 413.

Header names are stored in their canonical form (compact forms expanded), values as received
minus surrounding whitespace. Headers whose grammar is a comma list (Via, Contact, Route, ...) are
split into one value per element by :meth:`Headers.get_all`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from sipbot.errors import SipParseError
from sipbot.sip.address import parse_name_addr, parse_uri, parse_via
from sipbot.sip.headers import TOKEN_RE, Headers

SIP_VERSION = "SIP/2.0"
MAX_MESSAGE_BYTES = 65_535  # larger → 513 Message Too Large
MAX_BODY_BYTES = 32_768  # larger → 413 Request Entity Too Large
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: less than 2**31
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)", re.IGNORECASE)
_DIGITS_RE = re.compile(r"\d+")


@dataclass(slots=True)
class SipRequest:
    """A SIP request. ``uri`` is the Request-URI as text (see :func:`parse_uri`)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")

    def __bytes__(self) -> bytes:
        return serialize(self)


@dataclass(slots=True)
class SipResponse:
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")

    def __bytes__(self) -> bytes:
        return serialize(self)


SipMessage = SipRequest | SipResponse


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse a CSeq value into (number, method).

    Raises:
        SipParseError: (400) malformed or out of range (RFC 3261: less than 2**31).
    """
    parts = value.split()
    if len(parts) != 2 or not _DIGITS_RE.fullmatch(parts[0]) or not TOKEN_RE.fullmatch(parts[1]):
        raise SipParseError(400, f"Malformed CSeq {value!r}")
    number = int(parts[0])
    if number > MAX_CSEQ:
        raise SipParseError(400, "CSeq number out of range")
    return number, parts[1]


# --------------------------------------------------------------------------- parsing


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx], data[idx + len(sep) :]
    return data, b""


def _header_lines(head: str) -> list[str]:
    raw = head.replace("\r\n", "\n").split("\n")
    lines: list[str] = []
    for line in raw:
        if line[:1] in (" ", "\t"):
            if not lines:
                raise SipParseError(400, "Header continuation before the first header")
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message from a datagram (or one framed TCP message).

    Raises:
        SipParseError: the message is malformed; ``status`` says how to answer a request and
            ``request`` holds what could be read of it (None if not even that).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError(513, "Message Too Large")
    head_bytes, body = _split_head(data.lstrip(b"\r\n"))
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(400, "Message head is not UTF-8") from None
    if not head.strip():
        raise SipParseError(400, "Empty message")
    start, *header_lines = _header_lines(head)
    headers = Headers()
    for line in header_lines:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not TOKEN_RE.fullmatch(name):
            raise SipParseError(400, f"Malformed header line {line[:40]!r}")
        headers.add(name, value.strip())
    if start.startswith("SIP/") or start[:4].upper() == "SIP/":
        return _parse_response(start, headers, body)
    return _parse_request(start, headers, body)


def _parse_request(start: str, headers: Headers, body: bytes) -> SipRequest:
    parts = start.split(" ")
    method = parts[0] if parts else ""
    request = SipRequest(method, parts[1] if len(parts) > 1 else "", headers, b"")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(400, "Malformed Request-Line", request)
    method, uri, version = parts
    if not TOKEN_RE.fullmatch(method):
        raise SipParseError(400, "Malformed method in Request-Line", request)
    vm = _VERSION_RE.fullmatch(version)
    if not vm:
        raise SipParseError(400, "Malformed SIP-Version", request)
    request.version = version
    if uri.startswith("<"):
        raise SipParseError(400, "Request-URI enclosed in <>", request)
    try:
        parse_uri(uri)
    except SipParseError as exc:
        raise SipParseError(400, exc.reason, request) from None
    if version.upper() != SIP_VERSION:
        raise SipParseError(505, "Version Not Supported", request)
    _check_required(request)
    request.body = _take_body(headers, body, request)
    return request


def _parse_response(start: str, headers: Headers, body: bytes) -> SipResponse:
    parts = start.split(" ", 2)
    if len(parts) < 2 or not _VERSION_RE.fullmatch(parts[0]):
        raise SipParseError(400, "Malformed Status-Line")
    if parts[0].upper() != SIP_VERSION:
        raise SipParseError(505, "Version Not Supported")
    if not re.fullmatch(r"[1-6]\d\d", parts[1]):
        raise SipParseError(400, "Malformed status code")
    response = SipResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in headers:
            raise SipParseError(400, f"Missing {name} header")
    parse_cseq(headers.get("CSeq") or "")
    response.body = _take_body(headers, body, None)
    return response


def _check_required(request: SipRequest) -> None:
    h = request.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in h:
            raise SipParseError(400, f"Missing {name} header", request)
    for name in ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length"):
        if h.count(name) > 1:
            raise SipParseError(400, f"Multiple {name} headers", request)
    try:
        for via in h.get_all("Via"):
            parse_via(via)
        parse_name_addr(h.get("From") or "", "From")
        parse_name_addr(h.get("To") or "", "To")
        _number, method = parse_cseq(h.get("CSeq") or "")
        for contact in h.get_all("Contact"):
            if contact.strip() != "*":
                parse_name_addr(contact, "Contact")
    except SipParseError as exc:
        raise SipParseError(exc.status, exc.reason, request) from None
    if method != request.method:
        raise SipParseError(400, "CSeq method does not match Request-Line", request)
    mf = h.get("Max-Forwards")
    if mf is not None and (not _DIGITS_RE.fullmatch(mf) or int(mf) > 255):
        raise SipParseError(400, "Malformed Max-Forwards", request)


def _take_body(headers: Headers, body: bytes, request: SipRequest | None) -> bytes:
    cl = headers.get("Content-Length")
    if cl is None:
        length = len(body)
    else:
        if not _DIGITS_RE.fullmatch(cl):
            raise SipParseError(400, "Malformed Content-Length", request)
        length = int(cl)
        if length > len(body):
            raise SipParseError(400, "Content-Length larger than message", request)
    if length > MAX_BODY_BYTES:
        raise SipParseError(413, "Request Entity Too Large", request)
    return body[:length]


# --------------------------------------------------------------------------- serializing


def serialize(message: SipMessage) -> bytes:
    """Serialize a message; Content-Length is always written from the actual body."""
    if isinstance(message, SipRequest):
        start = f"{message.method} {message.uri} {message.version}"
    else:
        start = f"{message.version} {message.status} {message.reason}"
    lines = [start]
    for name, value in message.headers:
        if name == "Content-Length":
            continue
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(message.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + message.body


class StreamFramer:
    """Cuts a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    ``feed(data)`` returns the complete messages received so far. CRLF keep-alives
    (RFC 5626) between messages are skipped.

    Raises:
        SipParseError: the stream cannot be framed (no or bad Content-Length, too large);
            the connection should be closed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_MESSAGE_BYTES:
                    raise SipParseError(513, "Message Too Large")
                return out
            head = bytes(self._buf[:end])
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", head)
            if not m:
                raise SipParseError(400, "Missing Content-Length on a stream transport")
            total = end + 4 + int(m.group(1))
            if total > MAX_MESSAGE_BYTES:
                raise SipParseError(513, "Message Too Large")
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]


# --------------------------------------------------------------------------- building


def generate_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(8)


def generate_branch() -> str:
    """A fresh RFC 3261 branch parameter (starts with the magic cookie)."""
    return BRANCH_MAGIC + secrets.token_hex(10)


def generate_call_id(host: str) -> str:
    """A fresh Call-ID."""
    return f"{secrets.token_hex(12)}@{host}"


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    copy_record_route: bool = False,
) -> SipResponse:
    """Build a response to ``request`` per RFC 3261 §8.2.6.

    Copies Via (all), From, Call-ID, CSeq and To (adding ``to_tag`` when To has none and the
    response is not 100). Record-Route is copied only when asked (dialog-creating 18x/2xx,
    §12.1.1). Timestamp is echoed in 100 Trying (§8.2.6.1).
    """
    h = request.headers
    out = Headers()
    for via in h.get_all("Via"):
        out.add("Via", via)
    if copy_record_route:
        for rr in h.get_all("Record-Route"):
            out.add("Record-Route", rr)
    out.add("From", h.get("From") or "")
    to = h.get("To") or ""
    if to_tag and status != 100:
        try:
            addr = parse_name_addr(to, "To")
        except SipParseError:
            addr = None
        if addr is not None and addr.tag is None:
            to = str(addr.with_param("tag", to_tag))
    out.add("To", to)
    out.add("Call-ID", h.get("Call-ID") or "")
    out.add("CSeq", h.get("CSeq") or "")
    if status == 100 and "Timestamp" in h:
        out.add("Timestamp", h.get("Timestamp") or "")
    return SipResponse(status, reason or REASON_PHRASES.get(status, "Unknown"), out)
