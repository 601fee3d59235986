"""Header-value checks the strict parser applies to requests (RFC 3261 §8.1.1, §20, §25.1).

Each check raises :class:`~sipbot.errors.SipParseError` (400) whose reason names the header and
the fault; :func:`sipbot.sip.message.parse_message` attaches the request as far as it was read.
Only headers sipbot relies on, or that RFC 4475 shows are worth rejecting, are checked; other
headers are carried as opaque text.
"""

from __future__ import annotations

import re

from sipbot.errors import SipParseError
from sipbot.sip.address import parse_name_addr, parse_params, parse_via
from sipbot.sip.headers import TOKEN, Headers, split_list

MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: less than 2**31
MAX_MAX_FORWARDS = 255  # RFC 3261 §8.1.1.6 / §20.22 (a one-octet counter in practice)
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7

REQUIRED_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
SINGLE_HEADERS = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type")

_DIGITS_RE = re.compile(r"[0-9]+")
MAX_DIGITS = 18  # larger numbers are out of range for every header read here
# Call-ID = word [ "@" word ]; word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" /
# "`" / "'" / "~" / "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}")
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(_WORD + r"(?:@" + _WORD + r")?")
_CSEQ_RE = re.compile(r"([0-9]+)[ \t\r\n]+(" + TOKEN + r")")
_MEDIA_TYPE_RE = re.compile(r"(" + TOKEN + r")[ \t]*/[ \t]*(" + TOKEN + r")[ \t]*(.*)", re.DOTALL)
# RFC 3261 §20.17: rfc1123-date, and the zone is always GMT.
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse a CSeq value into (number, method).

    Raises:
        SipParseError: (400) malformed, or the number is not below 2**31 (RFC 3261 §8.1.1.5).
    """
    m = _CSEQ_RE.fullmatch(value.strip())
    if not m:
        raise SipParseError(400, "Malformed CSeq header")
    number = _bounded_int(m.group(1))
    if number is None or number > MAX_CSEQ:
        raise SipParseError(400, "CSeq number out of range")
    return number, m.group(2)


def parse_max_forwards(value: str) -> int:
    """Parse Max-Forwards (0-255).

    Raises:
        SipParseError: (400) not a number, or above 255.
    """
    value = value.strip()
    if not _DIGITS_RE.fullmatch(value):
        raise SipParseError(400, "Malformed Max-Forwards header")
    number = _bounded_int(value)
    if number is None or number > MAX_MAX_FORWARDS:
        raise SipParseError(400, "Max-Forwards out of range")
    return number


def parse_content_length(value: str) -> int:
    """Parse Content-Length (a non-negative decimal).

    Raises:
        SipParseError: (400) anything but digits (a sign, a fraction, nothing).
    """
    value = value.strip()
    if not _DIGITS_RE.fullmatch(value):
        raise SipParseError(400, "Malformed Content-Length header")
    number = _bounded_int(value)
    if number is None:
        raise SipParseError(400, "Content-Length out of range")
    return number


def _bounded_int(digits: str) -> int | None:
    """``int(digits)``, or None past :data:`MAX_DIGITS` significant digits (Python refuses to
    convert more than 4300 digits: a ValueError, not a parse error)."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= MAX_DIGITS else None


def media_type(value: str) -> str:
    """The ``type/subtype`` of a Content-Type value, lower-cased, parameters checked and dropped.

    Raises:
        SipParseError: (400) not a media type.
    """
    m = _MEDIA_TYPE_RE.fullmatch(value.strip())
    if not m:
        raise SipParseError(400, "Malformed Content-Type header")
    rest = m.group(3)
    if rest:
        parse_params(rest, "Content-Type")
    return f"{m.group(1)}/{m.group(2)}".lower()


def check_request_headers(headers: Headers, method: str) -> None:
    """Apply every request header check, in a fixed order so the reason is deterministic.

    Order: presence of the mandatory headers, duplicates of single-valued ones, Via (each
    element; the top branch must carry a transaction id after the magic cookie), From, To,
    Call-ID, CSeq (and its method), Max-Forwards, Contact, Route, Record-Route, Content-Type,
    Date.

    Raises:
        SipParseError: (400) naming the first fault found.
    """
    counts = headers.counts()
    missing = [name for name in REQUIRED_HEADERS if name.lower() not in counts]
    if missing:
        raise SipParseError(400, "Missing required headers: " + ", ".join(missing))
    for name in SINGLE_HEADERS:
        if counts.get(name.lower(), 0) > 1:
            raise SipParseError(400, f"Multiple {name} headers")
    _check_vias(headers)
    from_ = parse_name_addr(headers.get("From") or "", "From")
    if from_.tag == "":
        raise SipParseError(400, "Empty tag in From")
    parse_name_addr(headers.get("To") or "", "To")
    if not _CALL_ID_RE.fullmatch(headers.get("Call-ID") or ""):
        raise SipParseError(400, "Malformed Call-ID header")
    if parse_cseq(headers.get("CSeq") or "")[1] != method:
        raise SipParseError(400, "CSeq method does not match Request-Line")
    _check_optional(headers)


def check_response_headers(headers: Headers) -> None:
    """The checks a response must pass before it may touch a transaction or a dialog.

    Raises:
        SipParseError: (400) naming the first fault found.
    """
    counts = headers.counts()
    missing = [name for name in REQUIRED_HEADERS if name.lower() not in counts]
    if missing:
        raise SipParseError(400, "Missing required headers: " + ", ".join(missing))
    for name in ("Call-ID", "CSeq", "From", "To"):
        if counts.get(name.lower(), 0) > 1:
            raise SipParseError(400, f"Multiple {name} headers")
    parse_via(headers.get("Via") or "")
    parse_name_addr(headers.get("From") or "", "From")
    parse_name_addr(headers.get("To") or "", "To")
    parse_cseq(headers.get("CSeq") or "")
    _check_addresses(headers, ("Record-Route",))  # a 2xx's route set becomes the dialog's


def _check_vias(headers: Headers) -> None:
    first = True
    for line in headers.get_lines("Via"):
        try:
            elements = split_list(line, strict=True)
        except ValueError:
            raise SipParseError(400, "Malformed Via header") from None
        for element in elements:
            via = parse_via(element)
            if first and via.branch == BRANCH_MAGIC:
                raise SipParseError(400, "Via branch has no transaction id after z9hG4bK")
            first = False


def _check_addresses(headers: Headers, names: tuple[str, ...]) -> None:
    for name in names:
        for line in headers.get_lines(name):
            try:
                elements = split_list(line, strict=True)
            except ValueError:
                raise SipParseError(400, f"Empty element in {name}") from None
            for element in elements:
                if not (name == "Contact" and element == "*"):
                    parse_name_addr(element, name)


def _check_optional(headers: Headers) -> None:
    mf = headers.get("Max-Forwards")
    if mf is not None:
        parse_max_forwards(mf)
    _check_addresses(headers, ("Contact", "Route", "Record-Route"))
    content_type = headers.get("Content-Type")
    if content_type is not None:
        media_type(content_type)
    date = headers.get("Date")
    if date is not None and not _DATE_RE.fullmatch(date):
        raise SipParseError(400, "Malformed Date header")
