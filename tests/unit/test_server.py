"""What an incoming INVITE tells the dialplan, prompts and tools (server.call_info)."""

from __future__ import annotations

from sipbot.server import call_info
from sipbot.sip.message import parse_message

INVITE = (
    b"INVITE sip:+4930123456100@pbx.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1\r\n"
    b'From: "Alice Example" <sip:+4917012345@trunk.example.net>;tag=a1\r\n'
    b"To: <sip:100@pbx.example.com>\r\n"
    b"Call-ID: c1@192.0.2.7\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"X-Customer-Id: 4711\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_call_info_reads_caller_did_display_name_and_headers() -> None:
    invite = parse_message(INVITE)
    info = call_info(invite, ("udp", "192.0.2.7", 5060))  # type: ignore[arg-type]
    assert info.call_id == "c1@192.0.2.7"
    assert info.caller == "+4917012345"
    assert info.display_name == "Alice Example"
    assert info.did == "+4930123456100"  # the Request-URI user wins over To
    assert info.headers["X-Customer-Id"] == "4711"
    assert info.remote_address == "192.0.2.7:5060"
    assert info.codec == ""  # known only once the offer is answered


def test_call_info_falls_back_to_the_to_user_when_the_request_uri_has_none() -> None:
    invite = parse_message(INVITE.replace(b"sip:+4930123456100@pbx", b"sip:pbx"))
    info = call_info(invite, ("tcp", "192.0.2.7", 40000))  # type: ignore[arg-type]
    assert info.did == "100"


def test_a_trunk_did_header_carries_the_dialled_number() -> None:
    with_header = INVITE.replace(
        b"X-Customer-Id", b"P-Called-Party-ID: <sip:+4930999@carrier.example>\r\nX-Customer-Id"
    )
    source = ("udp", "192.0.2.7", 5060)
    info = call_info(parse_message(with_header), source, "P-Called-Party-ID")  # type: ignore[arg-type]
    assert info.did == "+4930999"
    # absent header: the usual Request-URI user; "To" as the header: the To user
    assert call_info(parse_message(INVITE), source, "P-Called-Party-ID").did == "+4930123456100"  # type: ignore[arg-type]
    assert call_info(parse_message(INVITE), source, "To").did == "100"  # type: ignore[arg-type]
