"""``Dialog`` Rule 3 (sipbot.sip.ua): once ended, a dialog keeps no hooks.

A hook is the media leg's bound method or a closure over the call's media, which hold the dialog:
kept after the end, that cycle made every ended call cyclic garbage (issue 12, the soak's RSS
growth). The whole call's lifetime is tested in tests/integration/test_call_lifetime.py.
"""

from __future__ import annotations

from sipbot.sip.legs import CallLeg, Peer
from sipbot.sip.message import SipRequest, parse_message
from sipbot.sip.ua import ServerCall, SipSettings, UserAgent

INVITE = (
    b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1\r\n"
    b"From: <sip:caller@127.0.0.1>;tag=f1\r\nTo: <sip:bot@127.0.0.1>\r\n"
    b"Call-ID: hooks@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)


async def test_an_ended_dialog_drops_its_hooks_and_keeps_none_set_later() -> None:
    ua = UserAgent(SipSettings(listen=()), lambda call: None)
    invite = parse_message(INVITE)
    assert isinstance(invite, SipRequest)
    dialog = ServerCall(ua, CallLeg(1, "uas", invite, Peer("udp", "127.0.0.1", 5062), "t1"))

    async def reoffer(offer: bytes) -> bytes | int:
        return 488

    dialog.on_reoffer = reoffer
    dialog.on_request = lambda request: 200
    assert hooks(dialog) == (reoffer, dialog.on_request)
    assert dialog.on_request is not None
    dialog._ended("bye-received")
    assert hooks(dialog) == (None, None)
    assert await dialog.terminated == "bye-received"
    dialog.on_reoffer = reoffer  # e.g. a media leg answering after a CANCEL
    dialog.on_request = lambda request: 200
    assert hooks(dialog) == (None, None)


def hooks(dialog: ServerCall) -> tuple[object, object]:
    return (dialog.on_reoffer, dialog.on_request)
