"""Pure helpers of call.py (the call itself is exercised end to end in tests/e2e)."""

from __future__ import annotations

import pytest

from sipbot.call import _sipfrag_status


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
    assert _sipfrag_status(body) == status
