"""Tests of sipbot.sip.address: SIP URIs, name-addr values, Via."""

from __future__ import annotations

import pytest

from sipbot.errors import SipParseError
from sipbot.sip.address import (
    NameAddress,
    SipUri,
    Via,
    format_host,
    parse_name_addr,
    parse_uri,
    parse_via,
)


def test_parse_full_sip_uri() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=TCP;lr;Maddr=x?subject=hi&a=b")
    assert uri == SipUri(
        scheme="sips",
        host="2001:db8::1",
        user="alice",
        password="secret",
        port=5061,
        params=(("transport", "TCP"), ("lr", None), ("maddr", "x")),
        headers="subject=hi&a=b",
    )
    assert uri.transport == "tcp"
    assert uri.param("LR") == ""
    assert uri.param("nope") is None
    assert uri.has_param("maddr")
    assert uri.is_sip
    assert (
        str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=TCP;lr;maddr=x?subject=hi&a=b"
    )


def test_parse_uri_without_user_and_with_escapes() -> None:
    assert parse_uri("sip:example.com") == SipUri("sip", "example.com")
    assert parse_uri("sip:bot@sipbot_worker_1:5070").host == "sipbot_worker_1"
    uri = parse_uri("sip:user;par=u%40example.net@example.com")  # RFC 4475 §3.1.1.9
    assert (uri.user, uri.host) == ("user;par=u%40example.net", "example.com")
    uri = parse_uri("sip:+19725552222@gw1.example.net;unknownparam")
    assert (uri.user, uri.params) == ("+19725552222", (("unknownparam", None),))


def test_unusual_but_legal_uri_of_rfc4475_intmeth() -> None:
    uri = parse_uri(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
        "(doesn't-it)@example.com"
    )
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (uri.host, uri.port, uri.params, uri.headers) == ("example.com", None, (), None)


def test_other_schemes_are_opaque() -> None:
    assert parse_uri("tel:+1-201-555-0123") == SipUri("tel", opaque="+1-201-555-0123")
    assert parse_uri("soap.beep://192.0.2.103:3002").opaque == "//192.0.2.103:3002"
    assert not parse_uri("http://www.example.com").is_sip
    assert str(parse_uri("isbn:2983792873")) == "isbn:2983792873"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Malformed URI ''"),
        ("example.com", "Malformed URI 'example.com'"),
        (" sip:a@b", "Malformed URI ' sip:a@b'"),
        ("sip:a b@c", "Malformed URI 'sip:a b@c'"),
        ("<sip:a@b>", "Malformed URI '<sip:a@b>'"),
        ("sip:", "Malformed host in URI 'sip:'"),
        ("sip:a@", "Malformed host in URI 'sip:a@'"),
        ("sip:a@b-", "Malformed host in URI 'sip:a@b-'"),
        ("sip:a@b!c", "Malformed host in URI 'sip:a@b!c'"),
        ("sip:a@b:0", "Port out of range in URI 'sip:a@b:0'"),
        ("sip:a@b:65536", "Port out of range in URI 'sip:a@b:65536'"),
        ("sip:a@b:x", "Malformed host in URI 'sip:a@b:x'"),
        ("sip:a%zz@b", "Malformed user part in URI 'sip:a%zz@b'"),
        ('sip:a"b@c', "Malformed user part in URI 'sip:a\"b@c'"),
        ("sip:a@b;;lr", "Malformed parameter in URI 'sip:a@b;;lr'"),
        ("sip:a@b;x=<y>", "Malformed URI 'sip:a@b;x=<y>'"),
        ('sip:a@b?x=""', "Malformed headers in URI 'sip:a@b?x=\"\"'"),
        ("nobody:", "Malformed URI 'nobody:'"),
    ],
)
def test_parse_uri_rejects(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as err:
        parse_uri(text)
    assert (err.value.status, err.value.reason) == (400, reason)


def test_with_params_replaces_and_adds() -> None:
    uri = parse_uri("sip:a@b;transport=udp;lr")
    assert str(uri.with_params(transport="tcp", ob=None)) == "sip:a@b;lr;transport=tcp;ob"


def test_format_host() -> None:
    assert format_host("::1") == "[::1]"
    assert format_host("[::1]") == "[::1]"
    assert format_host("10.0.0.1") == "10.0.0.1"


def test_name_addr_forms() -> None:
    assert parse_name_addr('"Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423') == (
        NameAddress("sip:a.g.bell@example.com", "Bell, Alexander", (("tag", "433423"),))
    )
    addr = parse_name_addr("caller<sip:caller@example.com>;tag=323")  # RFC 4475 §3.1.1.6
    assert (addr.display_name, addr.uri, addr.tag) == ("caller", "sip:caller@example.com", "323")
    addr = parse_name_addr("A.  Bell <sip:a@b>")
    assert addr.display_name == "A. Bell"
    addr = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")  # §3.3.12
    assert (addr.uri, addr.params) == (
        "sip:+19725552222@gw1.example.net",
        (("unknownparam", None),),
    )
    addr = parse_name_addr('"J Rosenberg \\\\\\""  <sip:jdrosen@example.com>\r\n ; tag = 98asjd8')
    assert (addr.display_name, addr.tag) == ('J Rosenberg \\"', "98asjd8")
    addr = parse_name_addr('<sip:a@b>;q=0.5;x="a;b";y=[::1]')
    assert addr.params == (("q", "0.5"), ("x", '"a;b"'), ("y", "[::1]"))
    assert parse_name_addr("<name:John_Smith>").uri == "name:John_Smith"
    assert parse_name_addr("<sip:a@b>").parsed_uri == SipUri("sip", "b", "a")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('"Mr. J. User <sip:j.user@example.com>', "Unterminated quoted string in To"),
        ('"x" sip:a@b', "Malformed To: quoted display name without <URI>"),
        ("Watson, Thomas <sip:t.watson@example.org>", "Malformed display name in To"),
        ('"x" y <sip:a@b>', "Malformed To: quoted display name without <URI>"),
        ("<sip:a@b", "Unterminated <URI> in To"),
        ("<sip:a@b> x", "Malformed To: text after the address"),
        ("< sip:t.watson@example.org >", "Malformed URI in To"),
        (
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "Malformed To: a URI with spaces or headers needs <>",
        ),
        ("<sip:a@b>;;;;", "Empty parameter in To"),
        ("<sip:a@b>;=x", "Malformed parameter in To"),
        ('<sip:a@b>;x="open', "Unterminated quoted string in To"),
        ("<sip:a@b>;x=a b", "Malformed parameter in To"),
        ("", "Malformed URI in To"),
    ],
)
def test_name_addr_rejects(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as err:
        parse_name_addr(text, "To")
    assert (err.value.status, err.value.reason) == (400, reason)


def test_name_addr_str_and_with_param() -> None:
    addr = parse_name_addr('"Quoted \\"x\\"" <sip:a@b>;q=1')
    assert str(addr) == '"Quoted \\"x\\"" <sip:a@b>;q=1'
    assert str(addr.with_param("tag", "abc")) == '"Quoted \\"x\\"" <sip:a@b>;q=1;tag=abc'
    assert str(parse_name_addr("Alice <sip:a@b>")) == "Alice <sip:a@b>"
    assert str(parse_name_addr("sip:a@b;lr")) == "<sip:a@b>;lr"
    assert parse_name_addr("<sip:a@b>").tag is None
    assert parse_name_addr("<sip:a@b>;tag").tag == ""


def test_parse_via_with_lws_and_params() -> None:
    via = parse_via("SIP  / 2.0  / tcp     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
    assert via == Via("TCP", "spindle.example.com", None, (("branch", "z9hG4bK9ikj8"),))
    via = parse_via("SIP/2.0/UDP [2001:db8::9]:5070;rport;received=192.0.2.1;branch=z9hG4bKx")
    assert (via.host, via.port, via.branch) == ("2001:db8::9", 5070, "z9hG4bKx")
    assert via.has_param("rport")
    assert via.param("rport") == ""
    assert via.sent_by == ("2001:db8::9", 5070)
    assert str(via) == "SIP/2.0/UDP [2001:db8::9]:5070;rport;received=192.0.2.1;branch=z9hG4bKx"
    updated = via.with_param("rport", "40000").with_param("alias", None)
    assert str(updated) == (
        "SIP/2.0/UDP [2001:db8::9]:5070;rport=40000;received=192.0.2.1;branch=z9hG4bKx;alias"
    )
    assert parse_via("SIP/2.0/UDP iftgw.example.com").branch is None
    assert parse_via("SIP/2.0/TCP sipbot_worker_1:5070").sent_by == ("sipbot_worker_1", 5070)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw", "Malformed Via header"),
        ("SIP/2.0/UDP", "Malformed Via header"),
        ("SIP/2.0/UDP host x", "Malformed Via: text after the address"),
        ("SIP/2.0/UDP 192.0.2.15;;", "Empty parameter in Via"),
        (";", "Malformed Via header"),
        ("SIP/2.0/UDP h:70000", "Via port out of range"),
        ("SIP/2.0/UDP h;branch=a b", "Malformed parameter in Via"),
    ],
)
def test_parse_via_rejects(text: str, reason: str) -> None:
    with pytest.raises(SipParseError) as err:
        parse_via(text)
    assert (err.value.status, err.value.reason) == (400, reason)
