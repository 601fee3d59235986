"""REFER subscription helpers: the sipfrag status line and the Event header of a NOTIFY."""

from __future__ import annotations

import pytest

from sipbot.sip.headers import Headers
from sipbot.sip.message import SipRequest
from sipbot.sip.sipfrag import refer_event, sipfrag_status


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
