"""SIP messages: the data model, a strict parser and the serializer (RFC 3261 §7, §20, §25).

Sans-I/O: bytes in, objects out, and back. Nothing here knows about sockets or time.

Rules the parser keeps. Each broken rule is a :class:`~sipbot.errors.SipParseError` carrying the
status a request deserves, a reason phrase naming the fault, and the request as far as it could
be read (so the core can still answer); for a response the error only tells the core to drop it.
They are checked in this order, so a message with several faults gets the first reason:

* Rule 1: CRLFs before the start line are skipped (§7.5). The head is UTF-8; lines end in CRLF
  (bare LF is tolerated, a stray CR or LF inside a line is not). Control characters appear in
  the head only as quoted-pairs (``\\`` + char), as RFC 4475 §3.1.1.2 shows.
* Rule 2: the start line is ``Method SP Request-URI SP SIP-Version`` (or ``SIP-Version SP
  3DIGIT SP Reason-Phrase``) with single spaces and nothing trailing (RFC 4475 §3.1.2.8-10).
* Rule 3: a well-formed version other than ``SIP/2.0`` is 505 and stops the parse there: the
  rest of a SIP/7.0 message has no meaning to us.
* Rule 4: every header line is ``token *WSP ":" value`` after unfolding; continuation lines
  join with one space.
* Rule 5: a message over :data:`MAX_MESSAGE_BYTES` is 513.
* Rule 6: the Request-URI is a URI; a SIP URI in it carries no ``<>`` and no headers (§19.1.1).
  Other schemes parse, opaque: answering 416 is the core's decision.
* Rule 7: the header checks of :func:`sipbot.sip.grammar.check_request_headers`.
* Rule 8: Content-Length is digits, at most one, and no more than the bytes present (a datagram
  cannot be short, §18.3); bytes after the body are discarded; no Content-Length on a datagram
  means "the rest". A body over :data:`MAX_BODY_BYTES` is 413.
* Rule 9: liberal where it costs nothing: an empty Route, Record-Route, Require or
  Proxy-Require line is read as absent (:data:`EMPTY_IS_ABSENT`). Their grammar needs at least
  one element, so an empty line can only mean "none" — SIPp's ``[routes]`` expands to
  ``Route:`` with nothing after it in a dialog without a route set. Empty elements inside a
  non-empty list (``<sip:p>,,<sip:q>``) stay a 400. Accept, Allow and Supported are kept as
  received: their grammar allows an empty value and it has a meaning (an empty Accept accepts
  no body at all, RFC 3261 §20.1, hence 406 for an INVITE).
* Rule 10: a head of more than :data:`MAX_HEAD_LINES` lines is 400 "Too many header lines"
  (a fault of the head like Rule 1's); only the first lines are read, so the request can still
  be answered. Header lookups scan the lines, so 3,000 one-byte headers in a 24 kB datagram
  would otherwise cost ~100 times a normal request.

Header names are stored in their canonical form (compact forms expanded), values as received
minus surrounding whitespace. Headers whose grammar is a comma list (Via, Contact, Route, ...) are
split into one value per element by :meth:`Headers.get_all`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from sipbot.errors import LocalSipError, SipParseError
from sipbot.sip.address import parse_name_addr, parse_uri
from sipbot.sip.grammar import (
    BRANCH_MAGIC,
    MAX_CSEQ,
    check_request_headers,
    check_response_headers,
    parse_content_length,
    parse_cseq,
)
from sipbot.sip.headers import TOKEN_RE, Headers, canonical_name

__all__ = [
    "BRANCH_MAGIC",
    "EMPTY_IS_ABSENT",
    "MAX_BODY_BYTES",
    "MAX_CSEQ",
    "MAX_HEAD_LINES",
    "MAX_MESSAGE_BYTES",
    "REASON_PHRASES",
    "SIP_VERSION",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "StreamFramer",
    "generate_branch",
    "generate_call_id",
    "generate_tag",
    "make_response",
    "parse_cseq",
    "parse_message",
    "serialize",
]

SIP_VERSION = "SIP/2.0"
MAX_MESSAGE_BYTES = 65_535  # larger → 513 Message Too Large
MAX_BODY_BYTES = 32_768  # larger → 413 Request Entity Too Large
MAX_HEAD_LINES = 256  # start line + header lines; more → 400 (Rule 10)

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

# Rule 9: headers whose empty value is read as absent (canonical names).
EMPTY_IS_ABSENT = frozenset({"Route", "Record-Route", "Require", "Proxy-Require"})

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTENT_LENGTH_RE = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$")


class _Message:
    """What requests and responses share: the headers every message has, and serializing."""

    __slots__ = ()
    headers: Headers

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method); raises SipParseError on a message that was not parsed strictly."""
        return parse_cseq(self.headers.get("CSeq") or "")

    def __bytes__(self) -> bytes:
        return serialize(self)  # type: ignore[arg-type]  # a SipRequest or a SipResponse


@dataclass(slots=True)
class SipRequest(_Message):
    """A SIP request. ``uri`` is the Request-URI as text (see :func:`parse_uri`)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION


@dataclass(slots=True)
class SipResponse(_Message):
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION


SipMessage = SipRequest | SipResponse


# --------------------------------------------------------------------------- parsing


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message from a datagram (or one message cut by :class:`StreamFramer`).

    Raises:
        SipParseError: the message breaks a rule of this module's docstring; ``status`` says
            how to answer a request, ``request`` holds what could be read (None for responses
            and for requests whose start line could not be read).
    """
    start, lines, body, fault = _split_message(data.lstrip(b"\r\n"))
    if start[:4].upper() == "SIP/":
        if fault:
            raise SipParseError(400, fault)
        return _parse_response(start, lines, body)
    return _parse_request(start, lines, body, len(data), fault)


def _split_message(data: bytes) -> tuple[str, list[str], bytes, str | None]:
    """Cut the head from the body and the head into the start line and unfolded header lines.

    A fault of the head's encoding or line structure is returned, not raised, so the request
    can still be read well enough to be answered.
    """
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head_bytes, body = data[:end], data[end + 4 :]
    else:
        end = data.find(b"\n\n")
        # A datagram may end right after its last header line: the body is then empty.
        head_bytes, body = (data[:end], data[end + 2 :]) if end >= 0 else (data, b"")
    fault = None
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        head, fault = head_bytes.decode("latin-1"), "Message head is not UTF-8"
    if not head.strip():
        raise SipParseError(400, "Empty message")
    raw_lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    if raw_lines[-1] == "":  # the head ended in one CRLF (no body separator found)
        raw_lines.pop()
    if len(raw_lines) > MAX_HEAD_LINES:  # Rule 10: read no further
        del raw_lines[MAX_HEAD_LINES:]
        fault = fault or "Too many header lines"
    lines: list[str] = []
    for line in raw_lines:
        if "\r" in line or "\n" in line:
            fault = fault or "Bare CR or LF in message head"
            line = line.replace("\r", " ").replace("\n", " ")
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip(" \t")
        else:
            lines.append(line)
    return lines[0], lines[1:], body, fault


def _parse_headers(lines: list[str]) -> tuple[Headers, str | None]:
    """Headers from unfolded lines; the first malformed line's fault is returned, not raised,
    so the request can carry every good header when the error is raised."""
    headers = Headers()
    fault = None
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not TOKEN_RE.fullmatch(name):
            fault = fault or (
                "Header continuation before the first header"
                if line[:1] in " \t"
                else "Malformed header line"
            )
            continue
        value = value.strip(" \t")
        if not value and canonical_name(name) in EMPTY_IS_ABSENT:
            continue  # Rule 9
        if _CONTROL_RE.search(value) and not _controls_quoted(value):
            fault = fault or f"Control character in {canonical_name(name)} header"
            continue
        headers.add(name, value)
    return headers, fault


def _controls_quoted(value: str) -> bool:
    """True when every control character is the second half of a quoted-pair (RFC 3261 §25.1)."""
    return all(m.start() > 0 and value[m.start() - 1] == "\\" for m in _CONTROL_RE.finditer(value))


def _parse_request(
    start: str, lines: list[str], body: bytes, size: int, fault: str | None
) -> SipRequest:
    parts = start.split(" ")
    headers, header_fault = _parse_headers(lines)
    fault = fault or header_fault
    # Even a request with a broken start line carries its headers: the core can answer 400.
    request = SipRequest(parts[0], parts[1] if len(parts) > 1 else "", headers)
    if len(parts) != 3 or not all(parts):
        raise SipParseError(400, _request_line_fault(parts), request)
    method, uri, version = parts
    if not TOKEN_RE.fullmatch(method) or not _VERSION_RE.fullmatch(version):
        raise SipParseError(400, "Malformed Request-Line", request)
    request.version = version
    if version.upper() != SIP_VERSION:
        raise SipParseError(505, "Version Not Supported", request)
    if fault:
        raise SipParseError(400, fault, request)
    if size > MAX_MESSAGE_BYTES:
        raise SipParseError(513, "Message Too Large", request)
    try:
        _check_request_uri(uri)
        check_request_headers(headers, method)
        request.body = _take_body(headers, body)
    except SipParseError as exc:
        raise SipParseError(exc.status, exc.reason, request) from None
    return request


def _request_line_fault(parts: list[str]) -> str:
    if len(parts) > 3 and "" in parts:
        return "Extra whitespace in Request-Line"
    if len(parts) > 3 and _VERSION_RE.fullmatch(parts[-1]) and ":" in parts[1]:
        return "Whitespace in Request-URI"
    return "Malformed Request-Line"


def _check_request_uri(uri: str) -> None:
    if uri.startswith("<"):
        raise SipParseError(400, "Request-URI enclosed in <>")
    try:
        parsed = parse_uri(uri)
    except SipParseError:
        raise SipParseError(400, "Malformed Request-URI") from None
    if parsed.headers is not None:
        raise SipParseError(400, "Request-URI must not contain headers")


def _parse_response(start: str, lines: list[str], body: bytes) -> SipResponse:
    parts = start.split(" ", 2)
    if len(parts) < 3 or not _VERSION_RE.fullmatch(parts[0]):
        raise SipParseError(400, "Malformed Status-Line")
    if parts[0].upper() != SIP_VERSION:
        raise SipParseError(505, "Version Not Supported")
    if not _STATUS_RE.fullmatch(parts[1]):
        raise SipParseError(400, "Malformed status code")
    headers, fault = _parse_headers(lines)
    if fault:
        raise SipParseError(400, fault)
    check_response_headers(headers)
    return SipResponse(int(parts[1]), parts[2], headers, _take_body(headers, body))


def _take_body(headers: Headers, body: bytes) -> bytes:
    lines = headers.get_lines("Content-Length")
    if len(lines) > 1:
        raise SipParseError(400, "Multiple Content-Length headers")
    length = parse_content_length(lines[0]) if lines else len(body)
    if length > len(body):
        raise SipParseError(400, "Content-Length larger than message")
    if length > MAX_BODY_BYTES:
        raise SipParseError(413, "Request Entity Too Large")
    return body[:length] if length != len(body) else body


# --------------------------------------------------------------------------- serializing


def serialize(message: SipMessage) -> bytes:
    """Serialize a message; Content-Length is always written last, from the actual body.

    Raises:
        LocalSipError: a start-line part or a header value contains CR or LF (that would let
            text we copied from a peer inject headers).
    """
    if isinstance(message, SipRequest):
        start = f"{message.method} {message.uri} {message.version}"
    else:
        start = f"{message.version} {message.status} {message.reason}"
    lines = [start]
    for name, value in message.headers:
        if name != "Content-Length":
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(message.body)}")
    text = "\r\n".join(lines)
    if text.count("\r") != len(lines) - 1 or text.count("\n") != len(lines) - 1:
        raise LocalSipError("CR or LF inside a SIP start line or header value")
    return (text + "\r\n\r\n").encode("utf-8") + message.body


class StreamFramer:
    """Cuts a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    ``feed(data)`` returns the complete messages received so far. CRLF keep-alives
    (RFC 5626 §3.5.1) before a message are skipped.

    Raises:
        SipParseError: the stream cannot be framed (no, several or a bad Content-Length, or a
            message over :data:`MAX_MESSAGE_BYTES`); the connection should be closed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            skip = 0
            while self._buf[skip : skip + 2] == b"\r\n":
                skip += 2
            if skip:
                del self._buf[:skip]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_MESSAGE_BYTES:
                    raise SipParseError(513, "Message Too Large")
                return out
            values = _CONTENT_LENGTH_RE.findall(self._buf, 0, end + 2)
            if len(values) != 1:
                raise SipParseError(
                    400,
                    "Missing Content-Length on a stream transport"
                    if not values
                    else "Multiple Content-Length headers",
                )
            length = parse_content_length(values[0].decode("latin-1"))
            total = end + 4 + length
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

    Copies every Via line (as received, in order), From, Call-ID, CSeq and To (appending
    ``;tag=to_tag`` when To has no tag and the response is not 100). Record-Route lines are
    copied only when asked (dialog-creating 18x/2xx, §12.1.1). Timestamp is echoed in 100 Trying
    (§8.2.6.1). A header the request lacks (a request that failed to parse) is left out.
    """
    h = request.headers
    out = Headers()
    for via in h.get_lines("Via"):
        out.add("Via", via)
    if copy_record_route:
        for rr in h.get_lines("Record-Route"):
            out.add("Record-Route", rr)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = h.get(name)
        if value is None:
            continue  # answering a request that failed to parse: copy what there is
        if name == "To" and to_tag and status != 100:
            value = _with_to_tag(value, to_tag)
        out.add(name, value)
    if status == 100 and "Timestamp" in h:
        out.add("Timestamp", h.get("Timestamp") or "")
    return SipResponse(status, reason or REASON_PHRASES.get(status, "Unknown"), out)


def _with_to_tag(to: str, tag: str) -> str:
    """``to`` with ``;tag=`` appended when it has none (text kept as received otherwise)."""
    try:
        addr = parse_name_addr(to, "To")
    except SipParseError:
        return to
    return to if addr.tag is not None else f"{to};tag={tag}"
