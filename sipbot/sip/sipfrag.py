"""REFER subscriptions (RFC 3515): what a NOTIFY of a transfer says.

Pure functions of messages (no state, no clock), used by the user agent's
:class:`~sipbot.sip.ua.Referral`.

Rules:

* Rule 1: a NOTIFY belongs to a REFER subscription when its Event package is ``refer``
  (RFC 3515 §2.4.4); its optional ``id`` parameter is the CSeq number of that REFER.
* Rule 2: the progress of the transfer is the status line of the ``message/sipfrag`` body
  (``SIP/2.0 200 OK``); a status of 200 or more is final.
"""

from __future__ import annotations

from urllib.parse import quote

from sipbot.sip.message import SipRequest


def sipfrag_status(body: bytes) -> int | None:
    """The status of a ``message/sipfrag`` NOTIFY body (``SIP/2.0 200 OK``), or None."""
    first = body.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(first) >= 2 and first[0].upper().startswith(b"SIP/") and first[1].isdigit():
        return int(first[1])
    return None


def refer_event(request: SipRequest) -> tuple[bool, int | None]:
    """Rule 1: (is this a NOTIFY of a REFER subscription, its ``id`` — the REFER's CSeq
    number — or None when it names none)."""
    value = request.headers.get("Event") if request.method == "NOTIFY" else None
    if value is None:
        return False, None
    package, *params = (part.strip() for part in value.split(";"))
    if package.lower() != "refer":
        return False, None
    for param in params:
        name, _, number = param.partition("=")
        if name.strip().lower() == "id":
            number = number.strip().strip('"')
            return True, int(number) if number.isdigit() else None
    return True, None


def replacing(uri: str, replaces: str) -> str:
    """``uri`` with a Replaces header (RFC 3891) embedded for a Refer-To (RFC 3515 §2.1):
    ``sip:bob@host?Replaces=call-id%3Bto-tag%3Da%3Bfrom-tag%3Db``."""
    separator = "&" if "?" in uri else "?"
    return f"{uri}{separator}Replaces={quote(replaces, safe='')}"
