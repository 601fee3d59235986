"""Unit tests of RFC 3261 §12 dialog state."""

from __future__ import annotations

from sipbot.sip.dialog import DialogState, contact_uri, dialog_response
from sipbot.sip.message import SipRequest, SipResponse, parse_message

INVITE = (
    "INVITE sip:bot@10.0.0.2 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-p1\r\n"
    "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-a1\r\n"
    "Record-Route: <sip:p2.example;lr>\r\n"
    "Record-Route: <sip:p1.example;lr>\r\n"
    "Max-Forwards: 69\r\n"
    "From: Alice <sip:alice@example.com>;tag=a-tag\r\n"
    "To: <sip:bot@example.com>\r\n"
    "Call-ID: c1@10.0.0.1\r\n"
    "CSeq: 10 INVITE\r\n"
    "Contact: <sip:alice@10.0.0.1:5070>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def parse_req(text: str) -> SipRequest:
    m = parse_message(text.encode())
    assert isinstance(m, SipRequest)
    return m


def parse_resp(text: str) -> SipResponse:
    m = parse_message(text.encode())
    assert isinstance(m, SipResponse)
    return m


def in_dialog(method: str, cseq: int) -> SipRequest:
    text = INVITE.replace("CSeq: 10 INVITE", f"CSeq: {cseq} {method}")
    return parse_req(text.replace("INVITE sip", f"{method} sip"))


def uas_dialog() -> DialogState:
    return DialogState.as_uas(parse_req(INVITE), "b-tag")


def test_uas_dialog_from_invite():
    d = uas_dialog()
    assert d.id == ("c1@10.0.0.1", "b-tag", "a-tag")
    assert str(d.local_uri) == "<sip:bot@example.com>"
    assert str(d.remote_uri) == "Alice <sip:alice@example.com>"
    assert d.remote_target == "sip:alice@10.0.0.1:5070"
    assert d.route_set == ("<sip:p2.example;lr>", "<sip:p1.example;lr>")  # in order
    assert d.local_seq is None
    assert d.remote_seq == 10
    assert d.secure is False


def test_uas_in_dialog_request_with_loose_routes():
    d = uas_dialog()
    bye = d.build_request("BYE")
    assert bytes(bye).decode() == (
        "BYE sip:alice@10.0.0.1:5070 SIP/2.0\r\n"
        "Route: <sip:p2.example;lr>\r\n"
        "Route: <sip:p1.example;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:bot@example.com>;tag=b-tag\r\n"
        "To: Alice <sip:alice@example.com>;tag=a-tag\r\n"
        "Call-ID: c1@10.0.0.1\r\n"
        "CSeq: 1 BYE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    assert d.local_seq == 1
    assert d.build_request("INFO").cseq == (2, "INFO")
    assert d.next_hop().host == "p2.example"


def test_uac_dialog_reverses_record_route_and_takes_contact():
    invite = parse_req(INVITE)
    ok = parse_resp(
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-a1\r\n"
        "Record-Route: <sip:p2.example;lr>, <sip:p1.example;lr>\r\n"
        "From: Alice <sip:alice@example.com>;tag=a-tag\r\n"
        "To: <sip:bot@example.com>;tag=b-tag\r\n"
        "Call-ID: c1@10.0.0.1\r\n"
        "CSeq: 10 INVITE\r\n"
        "Contact: <sip:bot@10.0.0.2:5080;transport=tcp>;expires=60\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    d = DialogState.as_uac(invite, ok)
    assert d.id == ("c1@10.0.0.1", "a-tag", "b-tag")
    assert d.route_set == ("<sip:p1.example;lr>", "<sip:p2.example;lr>")
    assert d.remote_target == "sip:bot@10.0.0.2:5080;transport=tcp"
    assert d.local_seq == 10
    assert d.remote_seq is None
    ack = d.build_request("ACK", cseq=10)
    assert ack.cseq == (10, "ACK")
    assert ack.uri == "sip:bot@10.0.0.2:5080;transport=tcp"
    assert ack.headers.get_all("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert ack.headers.get("From") == "Alice <sip:alice@example.com>;tag=a-tag"
    assert ack.headers.get("To") == "<sip:bot@example.com>;tag=b-tag"
    assert d.local_seq == 10  # ACK does not advance the CSeq
    assert d.build_request("BYE").cseq == (11, "BYE")


def test_strict_route_puts_first_route_in_request_uri_and_target_last():
    d = uas_dialog()
    d.route_set = ("<sip:strict.example>", "<sip:p1.example;lr>")
    req = d.build_request("BYE")
    assert req.uri == "sip:strict.example"
    assert req.headers.get_all("Route") == ["<sip:p1.example;lr>", "<sip:alice@10.0.0.1:5070>"]
    assert d.next_hop().host == "strict.example"


def test_no_route_set_sends_to_remote_target():
    d = uas_dialog()
    d.route_set = ()
    req = d.build_request("BYE")
    assert req.uri == "sip:alice@10.0.0.1:5070"
    assert "Route" not in req.headers
    hop = d.next_hop()
    assert (hop.host, hop.port, hop.transport) == ("10.0.0.1", 5070, "udp")


def test_remote_cseq_lower_is_500_equal_or_higher_accepted():
    d = uas_dialog()
    low = parse_req(
        INVITE.replace("CSeq: 10 INVITE", "CSeq: 9 INFO").replace("INVITE sip", "INFO sip")
    )
    assert d.check_remote_cseq(low) == 500
    assert d.remote_seq == 10
    high = parse_req(
        INVITE.replace("CSeq: 10 INVITE", "CSeq: 11 BYE").replace("INVITE sip", "BYE sip")
    )
    assert d.check_remote_cseq(high) is None
    assert d.remote_seq == 11
    ack = parse_req(
        INVITE.replace("CSeq: 10 INVITE", "CSeq: 10 ACK").replace("INVITE sip", "ACK sip")
    )
    assert d.check_remote_cseq(ack) is None  # ACK carries the INVITE's number
    assert d.remote_seq == 11


def test_uac_remote_cseq_empty_accepts_any():
    d = uas_dialog()
    d.remote_seq = None
    req = parse_req(
        INVITE.replace("CSeq: 10 INVITE", "CSeq: 1 BYE").replace("INVITE sip", "BYE sip")
    )
    assert d.check_remote_cseq(req) is None
    assert d.remote_seq == 1


def test_target_refresh_updates_remote_target_only_when_contact_present():
    d = uas_dialog()
    reinvite = parse_req(INVITE.replace("10.0.0.1:5070>", "10.0.0.7:6000>"))
    d.refresh_target(reinvite)
    assert d.remote_target == "sip:alice@10.0.0.7:6000"
    no_contact = parse_req(INVITE.replace("Contact: <sip:alice@10.0.0.1:5070>\r\n", ""))
    assert contact_uri(no_contact) is None
    d.refresh_target(no_contact)
    assert d.remote_target == "sip:alice@10.0.0.7:6000"


def test_dialog_response_copies_record_route_and_adds_tag_and_contact():
    resp = dialog_response(parse_req(INVITE), 180, "b-tag", "<sip:bot@10.0.0.2:5060>")
    assert bytes(resp).decode() == (
        "SIP/2.0 180 Ringing\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-p1\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-a1\r\n"
        "Record-Route: <sip:p2.example;lr>\r\n"
        "Record-Route: <sip:p1.example;lr>\r\n"
        "From: Alice <sip:alice@example.com>;tag=a-tag\r\n"
        "To: <sip:bot@example.com>;tag=b-tag\r\n"
        "Call-ID: c1@10.0.0.1\r\n"
        "CSeq: 10 INVITE\r\n"
        "Contact: <sip:bot@10.0.0.2:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def test_secure_only_for_sips_over_tls():
    sips = parse_req(INVITE.replace("INVITE sip:bot@10.0.0.2", "INVITE sips:bot@10.0.0.2"))
    assert DialogState.as_uas(sips, "t", "tls").secure is True
    assert DialogState.as_uas(sips, "t", "tcp").secure is False
