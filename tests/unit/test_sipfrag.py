"""REFER subscription helpers: the sipfrag status line and the Event header of a NOTIFY."""

from __future__ import annotations

import pytest

from sipbot.sip.headers import Headers
from sipbot.sip.message import SipRequest
from sipbot.sip.sipfrag import refer_event, replacing, sipfrag_status


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"SIP/2.0 200 OK\r\n", 200),
        (b"SIP/2.0 100 Trying", 100),
        (b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n", 486),
        (b"sip/2.0 603 Decline\n", 603),
        (b"", None),
        (b"garbage", None),
        (b"SIP/2.0 OK 200", None),
    ],
)
def test_sipfrag_status(body: bytes, status: int | None) -> None:
    assert sipfrag_status(body) == status


@pytest.mark.parametrize(
    ("method", "event", "expected"),
    [
        ("NOTIFY", "refer", (True, None)),
        ("NOTIFY", "Refer ; id=7", (True, 7)),
        ("NOTIFY", 'refer;id="12"', (True, 12)),
        ("NOTIFY", "refer;id=x", (True, None)),
        ("NOTIFY", "presence", (False, None)),
        ("NOTIFY", None, (False, None)),
        ("INFO", "refer;id=1", (False, None)),
    ],
)
def test_refer_event(method: str, event: str | None, expected: tuple[bool, int | None]) -> None:
    headers = Headers([("Event", event)] if event is not None else [])
    assert refer_event(SipRequest(method, "sip:bot@192.0.2.1", headers)) == expected


def test_refer_event_compact_form() -> None:
    request = SipRequest("NOTIFY", "sip:bot@192.0.2.1", Headers([("o", "refer;id=3")]))
    assert refer_event(request) == (True, 3)


def test_replacing_embeds_an_escaped_replaces_header() -> None:
    # RFC 3891 §6.1's example shape: the ; and = of the value are escaped inside the URI
    assert replacing("sip:bob@127.0.0.1:5070", "98asjd8@h;to-tag=a7;from-tag=b3") == (
        "sip:bob@127.0.0.1:5070?Replaces=98asjd8%40h%3Bto-tag%3Da7%3Bfrom-tag%3Db3"
    )
    assert replacing("sip:bob@h?X-A=1", "c;to-tag=1;from-tag=2") == (
        "sip:bob@h?X-A=1&Replaces=c%3Bto-tag%3D1%3Bfrom-tag%3D2"
    )
