"""Pure helpers of the SIP core: what sipbot allows and supports, header values, RFC 3581.

Functions of messages only (no state, no clock), shared by :mod:`sipbot.sip.endpoint`,
:mod:`sipbot.sip.uac` and :mod:`sipbot.sip.core`.
"""

from __future__ import annotations

from sipbot.errors import SipParseError
from sipbot.sip.address import Via, format_host, parse_name_addr, parse_via
from sipbot.sip.legs import Peer
from sipbot.sip.message import SipMessage, SipRequest, SipResponse

ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "NOTIFY", "REFER")
ALLOW_VALUE = ", ".join(ALLOW)
KNOWN_NOT_ALLOWED = frozenset({"REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH", "PRACK"})
SUPPORTED: frozenset[str] = frozenset()  # option tags we implement (no 100rel, no timer yet)
URI_SCHEMES = frozenset({"sip", "sips", "tel"})
SDP_TYPE = "application/sdp"
SDP_RANGES = frozenset({SDP_TYPE, "application/*", "*/*"})
DEFAULT_REQUEST_STATUS = {"INFO": 200, "NOTIFY": 200, "MESSAGE": 200, "REFER": 603}
CONTACT_METHODS = frozenset({"INVITE", "UPDATE", "REFER", "SUBSCRIBE", "NOTIFY"})


COUNTED_METHODS = frozenset(ALLOW) | KNOWN_NOT_ALLOWED


def count_key(direction: str, message: SipMessage) -> tuple[str, str, str]:
    """``(direction, method, status)`` for the message counters; ``status`` is "" for requests.

    Methods outside :data:`COUNTED_METHODS` count as ``other`` (a bounded set of keys, whatever
    a peer sends)."""
    if isinstance(message, SipResponse):
        try:
            method = message.cseq[1]
        except SipParseError:
            method = "other"
        status = str(message.status)
    else:
        assert isinstance(message, SipRequest)
        method, status = message.method, ""
    return direction, method if method in COUNTED_METHODS else "other", status


def tag_of(value: str | None) -> str | None:
    """The ``tag`` parameter of a From/To value (None when absent or malformed)."""
    try:
        return parse_name_addr(value or "", "address").tag
    except SipParseError:
        return None


def media_type(message: SipMessage) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return (message.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def is_plain_sdp(request: SipRequest) -> bool:
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    return media_type(request) == SDP_TYPE and encoding == "identity"


def accepts_sdp(request: SipRequest) -> bool:
    """§8.2.3 / §20.1: our answer is SDP; an Accept without it (or empty) rules it out."""
    if "Accept" not in request.headers:
        return True
    ranges = (r.split(";", 1)[0].strip().lower() for r in request.headers.get_all("Accept"))
    return any(r in SDP_RANGES for r in ranges)


def stamp_via(request: SipRequest, source: Peer) -> Via:
    """RFC 3581 / §18.2.1: add received (and rport) to the top Via; return it."""
    vias = request.headers.get_all("Via")
    via = parse_via(vias[0])
    stamped = via
    if via.has_param("rport"):
        stamped = via.with_param("rport", str(source.port))
        stamped = stamped.with_param("received", source.host)
    elif via.host != source.host:
        stamped = via.with_param("received", source.host)
    if stamped is not via:
        request.headers.replace_all("Via", [str(stamped), *vias[1:]])
    return stamped


def via_value(transport: str, host: str, port: int, branch: str) -> str:
    """A Via for a request we send (with ``rport``, RFC 3581)."""
    return f"SIP/2.0/{transport.upper()} {format_host(host)}:{port};branch={branch};rport"


def contact_value(transport: str, host: str, port: int, user: str) -> str:
    """Our Contact: ``<sip:user@host:port>`` (``;transport=tcp``/``tls`` on TCP/TLS)."""
    user = user.split("@", 1)[0]
    params = f";transport={transport}" if transport in ("tcp", "tls") else ""
    return f"<sip:{user}@{format_host(host)}:{port}{params}>"
