"""Tests of sipbot.sip.message: strict parsing (RFC 4475 too), serializing, framing, building."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbot.errors import LocalSipError, SipParseError
from sipbot.sip.address import parse_name_addr, parse_uri, parse_via
from sipbot.sip.headers import Headers
from sipbot.sip.message import (
    MAX_BODY_BYTES,
    MAX_HEAD_LINES,
    MAX_MESSAGE_BYTES,
    SipRequest,
    SipResponse,
    StreamFramer,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    parse_cseq,
    parse_message,
    serialize,
)
from tests.data.rfc4475 import load
from tests.data.rfc4475.expected import EXPECTED

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)
CL = b"Content-Length: %d" % len(SDP)
INVITE = (
    b"INVITE sip:bot@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK776asdhds\r\n"
    b"Record-Route: <sip:proxy.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    b"To: <sip:bot@127.0.0.1>\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Content-Type: application/sdp\r\n" + CL + b"\r\n\r\n" + SDP
)


def parse_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def parse_error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    return err.value


# --------------------------------------------------------------------------- golden messages


def test_invite_parses_and_serializes_back_exactly() -> None:
    request = parse_request(INVITE)
    assert (request.method, request.uri, request.version) == (
        "INVITE",
        "sip:bot@127.0.0.1:5080",
        "SIP/2.0",
    )
    assert request.call_id == "a84b4c76e66710@192.0.2.10"
    assert request.cseq == (314159, "INVITE")
    assert request.body == SDP
    # Content-Length is already last here, so the output is byte-identical.
    assert serialize(request) == INVITE == bytes(request)


def test_make_response_200_with_tag_and_record_route_is_exact() -> None:
    response = make_response(parse_request(INVITE), 200, to_tag="bot1", copy_record_route=True)
    assert bytes(response) == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK776asdhds\r\n"
        b"Record-Route: <sip:proxy.example.com;lr>\r\n"
        b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
        b"To: <sip:bot@127.0.0.1>;tag=bot1\r\n"
        b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_make_response_100_keeps_to_without_tag_and_echoes_timestamp() -> None:
    request = parse_request(INVITE.replace(b"Max-Forwards: 70\r\n", b"Timestamp: 54.3\r\n"))
    response = make_response(request, 100, to_tag="bot1", copy_record_route=True)
    assert response.reason == "Trying"
    assert response.headers.items() == [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK776asdhds"),
        ("Record-Route", "<sip:proxy.example.com;lr>"),
        ("From", '"Alice" <sip:alice@example.com>;tag=1928301774'),
        ("To", "<sip:bot@127.0.0.1>"),
        ("Call-ID", "a84b4c76e66710@192.0.2.10"),
        ("CSeq", "314159 INVITE"),
        ("Timestamp", "54.3"),
    ]


def test_make_response_keeps_an_existing_to_tag_and_custom_reason() -> None:
    request = parse_request(INVITE.replace(b"To: <sip:bot@127.0.0.1>", b"To: <sip:b@h>;tag=x"))
    response = make_response(request, 486, "Busy Now", to_tag="other")
    assert response.headers.get("To") == "<sip:b@h>;tag=x"
    assert response.headers.get("Record-Route") is None
    assert (response.status, response.reason) == (486, "Busy Now")
    assert make_response(request, 799).reason == "Unknown"


def test_response_parses() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKabc\r\n"
        b"From: <sip:bot@127.0.0.1>;tag=a\r\nTo: <sip:x@y>;tag=b\r\n"
        b"Call-ID: c1\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    response = parse_message(data)
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason, response.cseq, response.call_id) == (
        180,
        "Ringing",
        (2, "INVITE"),
        "c1",
    )
    assert bytes(response) == data


def test_compact_headers_bare_lf_and_leading_crlf() -> None:
    data = (
        b"\r\n\r\nOPTIONS sip:bot@127.0.0.1 SIP/2.0\n"
        b"v: SIP/2.0/UDP h;branch=z9hG4bK1\nf: <sip:a@b>;tag=1\nt: <sip:bot@127.0.0.1>\n"
        b"i: xyz\nCSeq: 1 OPTIONS\nk: timer, 100rel\nl: 0\n\n"
    )
    request = parse_request(data)
    assert [name for name, _ in request.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Supported",
        "Content-Length",
    ]
    assert request.headers.get_all("Supported") == ["timer", "100rel"]


def test_folded_header_lines_are_joined_with_one_space() -> None:
    request = parse_request(INVITE.replace(b"Max-Forwards: 70\r\n", b"Subject: a\r\n \t b\r\n"))
    assert request.headers.get("Subject") == "a b"


def test_datagram_may_end_right_after_the_last_header() -> None:
    request = parse_request(
        INVITE.split(b"\r\n\r\n")[0].replace(CL, b"Content-Length: 0") + b"\r\n"
    )
    assert request.body == b""


def test_cseq_helper() -> None:
    assert parse_cseq("0009\r\n INVITE") == (9, "INVITE")
    assert parse_cseq(str(2**31 - 1) + " BYE") == (2**31 - 1, "BYE")
    with pytest.raises(SipParseError, match="CSeq number out of range"):
        parse_cseq(str(2**31) + " BYE")
    with pytest.raises(SipParseError, match="Malformed CSeq header"):
        parse_cseq("3e41 INVITE")


# --------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("old", "new", "status", "reason"),
    [
        (
            b"INVITE sip:bot@127.0.0.1:5080 SIP/2.0",
            b"INVITE sip:bot@127.0.0.1:5080 SIP/2.1",
            505,
            "Version Not Supported",
        ),
        (
            b"INVITE sip:bot@127.0.0.1:5080 SIP/2.0",
            b"INVITE sip:bot@127.0.0.1:5080 HTTP/1.1",
            400,
            "Malformed Request-Line",
        ),
        (b"INVITE sip:bot", b"IN VITE sip:bot", 400, "Malformed Request-Line"),
        (
            b"INVITE sip:bot@127.0.0.1:5080",
            b"INVITE sip:bot@127 .0.0.1:5080",
            400,
            "Whitespace in Request-URI",
        ),
        (
            b"INVITE sip:bot@127.0.0.1:5080",
            b"INVITE bot@127.0.0.1:5080",
            400,
            "Malformed Request-URI",
        ),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", 400, "Max-Forwards out of range"),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", 400, "Malformed Max-Forwards header"),
        (b"Max-Forwards: 70", b"Max Forwards: 70", 400, "Malformed header line"),
        (b"Max-Forwards: 70", b"Max-Forwards 70", 400, "Malformed header line"),
        (b"Max-Forwards: 70", b"X-Bin: a\x01b", 400, "Control character in X-Bin header"),
        (b"Max-Forwards: 70", b"X-Bad: a\rb", 400, "Bare CR or LF in message head"),
        (b"Max-Forwards: 70", b"X-Latin: \xe9", 400, "Message head is not UTF-8"),
        (b"Call-ID: a84b4c76e66710@192.0.2.10", b"Call-ID: a b", 400, "Malformed Call-ID header"),
        (b"Call-ID: a84b4c76e66710@192.0.2.10\r\n", b"", 400, "Missing required headers: Call-ID"),
        (b"CSeq: 314159 INVITE", b"CSeq: 3e41 INVITE", 400, "Malformed CSeq header"),
        (
            b"Content-Type: application/sdp",
            b"Content-Type: sdp",
            400,
            "Malformed Content-Type header",
        ),
        (b";tag=1928301774", b";tag", 400, "Empty tag in From"),
        (
            b"Record-Route: <sip:proxy.example.com;lr>",
            b"Record-Route: <sip:p;lr>,,<sip:q>",
            400,
            "Empty element in Record-Route",
        ),
        (
            b"Contact: <sip:alice@192.0.2.10:5060>",
            b"Contact: <sip:alice@192.0.2.10:5060",
            400,
            "Unterminated <URI> in Contact",
        ),
        (b"Max-Forwards: 70", b"Date: Sat, 13 Nov 2010 23:29:00 GMT", 0, ""),
        (b"Max-Forwards: 70", b"Contact: *", 0, ""),
    ],
)
def test_request_faults(old: bytes, new: bytes, status: int, reason: str) -> None:
    assert old in INVITE
    data = INVITE.replace(old, new, 1)
    if status == 0:
        parse_request(data)
        return
    error = parse_error(data)
    assert (error.status, error.reason) == (status, reason)
    assert error.request is not None
    assert error.request.headers.get("CSeq") in ("314159 INVITE", "3e41 INVITE")


def test_control_characters_are_allowed_as_quoted_pairs() -> None:
    request = parse_request(INVITE.replace(b'"Alice"', b'"Al\\\x00ice"'))
    assert parse_name_addr(request.headers.get("From") or "").display_name == "Al\x00ice"


def test_oversize_body_is_413_and_oversize_message_513() -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    data = INVITE.replace(CL, b"Content-Length: %d" % len(body))
    error = parse_error(data.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body)
    assert (error.status, error.reason, error.request is not None) == (
        413,
        "Request Entity Too Large",
        True,
    )
    padding = b"X-Pad: " + b"p" * MAX_MESSAGE_BYTES + b"\r\n"
    error = parse_error(INVITE.replace(b"Max-Forwards: 70\r\n", padding))
    assert (error.status, error.reason) == (513, "Message Too Large")
    assert error.request is not None
    assert error.request.headers.get("Call-ID") == "a84b4c76e66710@192.0.2.10"


def test_garbage_and_empty() -> None:
    assert (parse_error(b"").status, parse_error(b"").reason) == (400, "Empty message")
    assert parse_error(b"\r\n\r\n").reason == "Empty message"
    error = parse_error(b"\x16\x03\x01\x02\x00\x01\x00")
    assert (error.status, error.reason) == (400, "Malformed Request-Line")


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        (b"SIP/2.0 200", "Malformed Status-Line"),
        (b"SIP/2.0 20 OK", "Malformed status code"),
        (b"SIP/2.0 700 Nope", "Malformed status code"),
        (b"SIP/3.0 200 OK", "Version Not Supported"),
    ],
)
def test_response_start_line_faults(start: bytes, reason: str) -> None:
    data = start + b"\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n"
    error = parse_error(data)
    assert error.reason == reason
    assert error.request is None


def test_response_without_to_is_rejected() -> None:
    data = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"Call-ID: c\r\nCSeq: 1 BYE\r\n\r\n"
    )
    assert parse_error(data).reason == "Missing required headers: To"


# --------------------------------------------------------------------------- RFC 4475


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rfc4475_parse_result(name: str) -> None:
    expected = EXPECTED[name].parse
    data = load(name)
    if expected in ("request", "response"):
        message = parse_message(data)
        assert isinstance(message, SipRequest if expected == "request" else SipResponse)
        return
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    assert f"{err.value.status} {err.value.reason}" == expected
    # Requests carry what was read so the core can answer; responses are simply dropped.
    is_response = data.startswith(b"SIP/")
    assert (err.value.request is None) == is_response


def test_rfc4475_wsinv_values() -> None:
    request = parse_request(load("wsinv"))
    h = request.headers
    assert request.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert parse_uri(request.uri).params == (("unknownparam", None),)
    assert parse_name_addr(h.get("To") or "").tag == "1918181833n"
    sender = parse_name_addr(h.get("From") or "")
    assert (sender.display_name, sender.tag) == ('J Rosenberg \\"', "98asjd8")
    assert h.get("Max-Forwards") == "0068"
    assert request.cseq == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in map(parse_via, h.get_all("Via"))] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert h.get("Subject") == ""
    assert h.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert h.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = parse_name_addr(h.get("Contact") or "")
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert parse_name_addr(h.get("Route") or "").uri == (
        "sip:services.example.com;lr;unknownwith=value;unknown-no-value"
    )
    assert len(request.body) == 150
    assert request.body.endswith(b"a=rtpmap:31 LPC\r\n")


def test_rfc4475_intmeth_values() -> None:
    request = parse_request(load("intmeth"))
    assert request.method == "!interesting-Method0123456789_*+`.%indeed'~"
    to = parse_name_addr(request.headers.get("To") or "")
    assert to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    sender = parse_name_addr(request.headers.get("From") or "")
    assert sender.display_name == "token1~` token2'+_ token3*%!.-"
    assert sender.params == (
        ("fromparam''~+*_!.-%", '"работающий"'),
        ("tag", "_token~1'+`*%!-."),
    )
    assert request.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert request.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert parse_via(request.headers.get("Via") or "").branch == "z9hG4bK-.!%66*_+`'~"


def test_rfc4475_other_valid_values() -> None:
    esc02 = parse_request(load("esc02"))
    assert esc02.headers.get_all("Contact") == [
        "<sip:alias1@host1.example.com>",
        "<sip:alias3@host3.example.com>",
    ]
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    longreq = parse_request(load("longreq"))
    vias = [parse_via(v) for v in longreq.headers.get_all("Via")]
    assert [v.host for v in vias[:34]] == [f"sip{i}.example.com" for i in range(33, 0, -1)] + [
        "host.example.com"
    ]
    assert parse_uri(parse_name_addr(longreq.headers.get("To") or "").uri).port == 6000
    assert parse_request(load("dblreq")).body == b""
    semiuri = parse_request(load("semiuri"))
    assert len(semiuri.headers.get_all("Accept")) == 6
    mpart = parse_request(load("mpart01"))
    assert len(mpart.body) == 553
    assert mpart.body.endswith(b"\r\n--7a9cbec02ceef655--\r\n")
    assert b"\x00" in mpart.body
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, SipResponse)
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, SipResponse)
    assert (noreason.status, noreason.reason) == (100, "")
    inv2543 = parse_request(load("inv2543"))
    assert len(inv2543.body) == 105
    assert "Content-Length" not in inv2543.headers
    assert parse_uri(parse_request(load("unkscm")).uri).opaque == "totallyopaquecontent"


def test_rfc4475_error_requests_carry_headers_for_the_answer() -> None:
    with pytest.raises(SipParseError) as err:
        parse_message(load("insuf"))
    request = err.value.request
    assert request is not None
    response = make_response(request, err.value.status, err.value.reason)
    assert bytes(response) == (
        b"SIP/2.0 400 Missing required headers: From, To, Call-ID\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n"
        b"CSeq: 193942 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with pytest.raises(SipParseError) as err:
        parse_message(load("lwsstart"))
    assert err.value.request is not None
    assert err.value.request.call_id == "lwsstart.dfknq234oi243099adsdfnawe3@example.com"


# --------------------------------------------------------------------------- serializing


def test_serialize_rejects_header_injection() -> None:
    request = parse_request(INVITE)
    request.headers.add("Subject", "hi\r\nX-Injected: 1")
    with pytest.raises(LocalSipError, match="CR or LF"):
        serialize(request)
    response = SipResponse(200, "OK\r\nX: y", Headers())
    with pytest.raises(LocalSipError):
        serialize(response)


def test_serialize_replaces_content_length() -> None:
    request = SipRequest("MESSAGE", "sip:a@b", Headers([("l", "999")]), b"hello")
    assert bytes(request) == b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello"


# --------------------------------------------------------------------------- framing


def test_stream_framer_cuts_messages_across_chunks() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + INVITE + b"\r\n" + INVITE
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out += framer.feed(stream[i : i + 7])
    assert out == [INVITE, INVITE]
    assert framer.feed(b"") == []


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (
            b"OPTIONS sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n",
            400,
            "Missing Content-Length on a stream transport",
        ),
        (
            b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 1\r\n\r\n",
            400,
            "Multiple Content-Length headers",
        ),
        (
            b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -5\r\n\r\n",
            400,
            "Malformed Content-Length header",
        ),
        (b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 70000\r\n\r\n", 513, "Message Too Large"),
    ],
)
def test_stream_framer_errors(head: bytes, status: int, reason: str) -> None:
    with pytest.raises(SipParseError) as err:
        StreamFramer().feed(head)
    assert (err.value.status, err.value.reason) == (status, reason)


def test_stream_framer_head_too_large() -> None:
    with pytest.raises(SipParseError, match="513 Message Too Large"):
        StreamFramer().feed(b"x" * (MAX_MESSAGE_BYTES + 1))


# --------------------------------------------------------------------------- generators


def test_generators() -> None:
    tag, branch, call_id = generate_tag(), generate_branch(), generate_call_id("127.0.0.1")
    assert len(tag) == 16
    assert tag != generate_tag()
    assert branch.startswith("z9hG4bK")
    assert len(branch) == 27
    assert call_id.endswith("@127.0.0.1")
    assert len(call_id) == 34


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_rfc4475_request_can_be_answered(name: str) -> None:
    try:
        message = parse_message(load(name))
    except SipParseError as exc:
        if exc.request is None:
            return
        message = exc.request
    if isinstance(message, SipRequest):
        response = make_response(message, 400, "Bad Request", to_tag="t")
        assert bytes(response).startswith(b"SIP/2.0 400 Bad Request\r\nVia: ")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_message(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(EXPECTED)), st.integers(0, 3000), st.binary(max_size=3))
def test_mutated_torture_messages_only_raise_sip_parse_error(
    name: str, cut: int, noise: bytes
) -> None:
    data = load(name)
    cut %= len(data) + 1
    for mutated in (data[:cut], data[:cut] + noise + data[cut:]):
        try:
            message = parse_message(mutated)
        except SipParseError as exc:
            if exc.request is not None:
                make_response(exc.request, exc.status, exc.reason)
            continue
        bytes(message)  # what parses also serializes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 200), max_size=20))
def test_stream_framer_any_chunking(sizes: list[int]) -> None:
    stream = (INVITE + b"\r\n\r\n") * 3
    framer = StreamFramer()
    out: list[bytes] = []
    pos = 0
    for size in [*sizes, len(stream)]:
        out += framer.feed(stream[pos : pos + size])
        pos += size
    assert out == [INVITE, INVITE, INVITE]


@pytest.mark.parametrize("name", ["Route", "Record-Route", "Require", "Proxy-Require", "route"])
def test_an_empty_list_header_that_needs_an_element_is_read_as_absent(name: str) -> None:
    """Rule 9: SIPp's ``[routes]`` sends ``Route:`` with nothing after it."""
    for empty in (b"", b" ", b"\t "):
        line = b"%s:%s\r\nMax-Forwards: 70\r\n" % (name.encode(), empty)
        data = INVITE.replace(b"Max-Forwards: 70\r\n", line)
        request = parse_request(data)
        kept = ["<sip:proxy.example.com;lr>"] if name == "Record-Route" else []
        assert request.headers.get_lines(name) == kept
        assert b": \r\n" not in bytes(request)


def test_empty_accept_allow_supported_keep_their_meaning() -> None:
    """An empty Accept means "no body acceptable" (RFC 3261 §20.1): it is kept, not dropped."""
    extra = b"Accept:\r\nAllow: \r\nSupported:\r\nMax-Forwards: 70\r\n"
    request = parse_request(INVITE.replace(b"Max-Forwards: 70\r\n", extra))
    assert [request.headers.get_lines(n) for n in ("Accept", "Allow", "Supported")] == [[""]] * 3
    assert request.headers.get_all("Accept") == []


def test_a_head_of_too_many_lines_is_400_and_read_no_further() -> None:
    """Rule 10: 3,000 header lines are not parsed one by one; the request can be answered."""
    many = b"X-H: 1\r\n" * 3000
    error = parse_error(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + many))
    assert (error.status, error.reason) == (400, "Too many header lines")
    assert error.request is not None
    assert error.request.headers.get("Via") is not None
    assert len(error.request.headers) == MAX_HEAD_LINES - 1  # the start line was one of them
    lines = b"X-H: 1\r\n" * (MAX_HEAD_LINES - 1 - INVITE.split(b"\r\n\r\n")[0].count(b"\r\n"))
    parse_request(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + lines))
