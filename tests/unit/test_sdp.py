"""Tests of sipbot.sip.sdp: parsing, serializing and offer/answer with real-world offers."""

from __future__ import annotations

import pytest

from sipbot.errors import LocalSipError, SdpError, SdpNegotiationError
from sipbot.sip.sdp import (
    Codec,
    Negotiated,
    SdpAnswerer,
    accept_answer,
    build_offer,
    negotiate,
    parse_sdp,
)
from tests.data.rfc4475 import load

# Offers as these peers send them (baresip 1.0, SIPp 3.6 with our uac.xml, pjsua2 2.15,
# Asterisk 20 chan_pjsip, a desk phone relayed by Kamailio with rtpproxy).
BARESIP = (
    b"v=0\r\n"
    b"o=- 1474036213 2960394187 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 10002 RTP/AVP 9 0 8 101\r\n"
    b"b=AS:64\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
    b"a=label:1\r\n"
    b"a=ssrc:2754131238 cname:3b2d4c1e-5f6a-4b7c-8d9e-0f1a2b3c4d5e\r\n"
    b"a=rtcp-rsize\r\n"
    b"a=ptime:20\r\n"
)
SIPP = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8 9 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=ptime:20\r\n"
)
PJSUA2 = (
    b"v=0\r\n"
    b"o=- 3905403650 3905403650 IN IP4 127.0.0.1\r\n"
    b"s=pjmedia\r\n"
    b"b=AS:117\r\n"
    b"t=0 0\r\n"
    b"a=X-nat:0\r\n"
    b"m=audio 4000 RTP/AVP 96 9 8 0 101 102\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"b=TIAS:96000\r\n"
    b"a=rtcp:4001 IN IP4 127.0.0.1\r\n"
    b"a=sendrecv\r\n"
    b"a=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 useinbandfec=1\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/48000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=rtpmap:102 telephone-event/8000\r\n"
    b"a=fmtp:102 0-16\r\n"
    b"a=ssrc:1029384756 cname:6c0f5a1e2b3d4c5f\r\n"
)
ASTERISK = (
    b"v=0\r\n"
    b"o=- 1880447516 1880447516 IN IP4 192.0.2.20\r\n"
    b"s=Asterisk\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 18234 RTP/AVP 8 0 3 111 101\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:3 GSM/8000\r\n"
    b"a=rtpmap:111 G726-32/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:30\r\n"
    b"a=maxptime:150\r\n"
    b"a=sendrecv\r\n"
)
KAMAILIO = (
    b"v=0\r\n"
    b"o=- 20045 20046 IN IP4 10.0.0.5\r\n"
    b"s=SDP data\r\n"
    b"c=IN IP4 203.0.113.7\r\n"
    b"t=0 0\r\n"
    b"m=audio 30000 RTP/AVP 18 0 8 101\r\n"
    b"a=rtpmap:18 G729/8000\r\n"
    b"a=fmtp:18 annexb=no\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
    b"a=rtcp:30001\r\n"
    b"a=ptime:20\r\n"
    b"a=nortpproxy:yes\r\n"
)

OURS = ["G722", "PCMU", "PCMA"]


def answer_for(offer: bytes, codecs: list[str] = OURS, **kwargs: object) -> Negotiated:
    return negotiate(
        parse_sdp(offer),
        codecs,
        address="127.0.0.1",
        port=20000,
        session_id=42,
        session_version=1,
        **kwargs,  # type: ignore[arg-type]
    )


def answer_text(media: str, head: str = "") -> bytes:
    return (
        "v=0\r\no=sipbot 42 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        + head
        + media
    ).encode()


def audio(pt: int, name: str, dtmf: int | None = 101, direction: str = "sendrecv") -> str:
    text = f"m=audio 20000 RTP/AVP {pt}{f' {dtmf}' if dtmf is not None else ''}\r\n"
    text += f"a=rtpmap:{pt} {name}/8000\r\n"
    if dtmf is not None:
        text += f"a=rtpmap:{dtmf} telephone-event/8000\r\na=fmtp:{dtmf} 0-16\r\n"
    return text + f"a=ptime:20\r\na={direction}\r\n"


@pytest.mark.parametrize("offer", [BARESIP, SIPP, PJSUA2, ASTERISK, KAMAILIO])
def test_real_offers_round_trip_exactly(offer: bytes) -> None:
    assert parse_sdp(offer).serialize() == offer
    assert bytes(parse_sdp(offer)) == offer


def test_baresip_offer_gets_g722() -> None:
    result = answer_for(BARESIP)
    assert result == Negotiated(
        Codec("G722", 9, 8000), 101, "127.0.0.1", 10002, "sendrecv", 20, result.answer
    )
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(9, "G722"))


def test_baresip_offer_with_our_g711_preference() -> None:
    result = answer_for(BARESIP, ["PCMA", "PCMU"])
    assert result.codec == Codec("PCMA", 8, 8000)
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(8, "PCMA"))


def test_sipp_offer() -> None:
    result = answer_for(SIPP, ["PCMU", "G722"])
    assert (result.codec, result.dtmf_payload_type, result.remote_port) == (
        Codec("PCMU", 0, 8000),
        101,
        6000,
    )
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(0, "PCMU"))


def test_pjsua2_offer_media_level_c_and_two_telephone_events() -> None:
    result = answer_for(PJSUA2)
    assert result.codec == Codec("G722", 9, 8000)
    assert result.dtmf_payload_type == 102  # the 8 kHz one, not telephone-event/48000
    assert (result.remote_host, result.remote_port) == ("127.0.0.1", 4000)
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(9, "G722", dtmf=102))


def test_asterisk_offer_ptime_30_and_no_g722() -> None:
    result = answer_for(ASTERISK)
    assert result.codec == Codec("PCMU", 0, 8000)  # our order wins over Asterisk's PCMA-first
    assert (result.remote_host, result.remote_port, result.ptime_ms) == ("192.0.2.20", 18234, 30)
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(0, "PCMU"))


def test_kamailio_relayed_offer_skips_g729() -> None:
    result = answer_for(KAMAILIO, ["PCMA", "PCMU"])
    assert result.codec == Codec("PCMA", 8, 8000)
    assert (result.remote_host, result.remote_port) == ("203.0.113.7", 30000)
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(8, "PCMA"))


def test_no_dtmf_when_disabled_or_not_offered() -> None:
    result = answer_for(SIPP, ["PCMU"], dtmf=False)
    assert result.dtmf_payload_type is None
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(0, "PCMU", dtmf=None))
    offer = SIPP.replace(b" 101\r\n", b"\r\n").replace(
        b"a=rtpmap:101 telephone-event/8000\r\n", b""
    )
    assert answer_for(offer, ["PCMU"]).dtmf_payload_type is None


def test_rfc4475_offer_audio_accepted_video_rejected() -> None:
    body = load("esc01").split(b"\r\n\r\n", 1)[1]
    result = answer_for(body)
    assert (result.codec, result.dtmf_payload_type) == (Codec("PCMU", 0, 8000), None)
    assert (result.remote_host, result.remote_port) == ("192.0.2.1", 49217)
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(
        audio(0, "PCMU", dtmf=None) + "m=video 0 RTP/AVP 31\r\n"
    )


@pytest.mark.parametrize(
    ("session_attr", "media_attr", "ours"),
    [
        ("", "a=sendonly\r\n", "recvonly"),
        ("", "a=recvonly\r\n", "sendonly"),
        ("", "a=inactive\r\n", "inactive"),
        ("a=sendonly\r\n", "", "recvonly"),
        ("a=sendonly\r\n", "a=sendrecv\r\n", "sendrecv"),  # media level wins
    ],
)
def test_directions(session_attr: str, media_attr: str, ours: str) -> None:
    offer = (
        "v=0\r\no=- 1 2 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
        + session_attr
        + "m=audio 5004 RTP/AVP 0\r\n"
        + media_attr
    ).encode()
    result = answer_for(offer)
    assert result.direction == ours
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(0, "PCMU", dtmf=None, direction=ours))


def test_rfc2543_hold_with_zero_address() -> None:
    offer = SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0")
    result = answer_for(offer, ["PCMU"])
    assert (result.remote_host, result.direction) == ("0.0.0.0", "recvonly")
    assert result.answer is not None
    assert b"a=recvonly\r\n" in result.answer.serialize()


def test_dynamic_payload_type_by_name_case_insensitive() -> None:
    offer = SIPP.replace(b"RTP/AVP 0 8 9 101", b"RTP/AVP 96 101").replace(
        b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:96 pcmu/8000"
    )
    result = answer_for(offer)
    assert result.codec == Codec("PCMU", 96, 8000)
    assert result.answer is not None
    assert result.answer.serialize() == answer_text(audio(96, "PCMU"))


def test_g722_at_16000_in_rtpmap_is_not_g722() -> None:
    offer = SIPP.replace(b"a=rtpmap:9 G722/8000", b"a=rtpmap:9 G722/16000")
    assert answer_for(offer, ["G722", "PCMA"]).codec == Codec("PCMA", 8, 8000)


def test_fmtp_of_the_chosen_codec_is_reported() -> None:
    offer = SIPP + b"a=fmtp:0 custom=1\r\n"
    assert answer_for(offer, ["PCMU"]).codec == Codec("PCMU", 0, 8000, fmtp="custom=1")


@pytest.mark.parametrize(
    ("ptime", "maxptime", "expected"),
    [
        (b"a=ptime:40", b"", 40),
        (b"a=ptime:25", b"", 20),
        (b"a=ptime:40", b"a=maxptime:30", 30),
        (b"a=ptime:20", b"a=maxptime:10", 10),
        (b"a=ptime:x", b"", 20),
    ],
)
def test_send_ptime(ptime: bytes, maxptime: bytes, expected: int) -> None:
    offer = SIPP.replace(b"a=ptime:20", ptime + (b"\r\n" + maxptime if maxptime else b""))
    assert answer_for(offer).ptime_ms == expected


def test_unusable_streams_get_port_zero_and_first_audio_wins() -> None:
    offer = (
        b"v=0\r\no=- 1 2 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=3149328700 0\r\n"
        b"m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n"
        b"m=audio 0 RTP/AVP 8\r\n"
        b"m=audio 5004 RTP/AVP 18 8\r\na=rtpmap:18 G729/8000\r\n"
        b"m=audio 5006 RTP/AVP 0\r\n"
        b"m=text 5008 RTP/AVP 98\r\n"
    )
    result = answer_for(offer, ["PCMU", "PCMA"])
    assert (result.codec, result.remote_port) == (Codec("PCMA", 8, 8000), 5004)
    assert result.answer is not None
    assert (
        result.answer.serialize()
        == (
            "v=0\r\no=sipbot 42 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            "t=3149328700 0\r\n"
            "m=audio 0 RTP/SAVP 0\r\n"
            "m=audio 0 RTP/AVP 8\r\n" + audio(8, "PCMA", dtmf=None) + "m=audio 0 RTP/AVP 0\r\n"
            "m=text 0 RTP/AVP 98\r\n"
        ).encode()
    )


def test_ipv6_answer_address() -> None:
    result = negotiate(
        parse_sdp(SIPP), ["PCMU"], address="2001:db8::5", port=7000, session_id=1, session_version=2
    )
    assert result.answer is not None
    assert result.answer.serialize().startswith(
        b"v=0\r\no=sipbot 1 2 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\n"
    )


def test_no_common_codec_is_488_material() -> None:
    offer = KAMAILIO.replace(b"RTP/AVP 18 0 8 101", b"RTP/AVP 18 101")
    with pytest.raises(SdpNegotiationError) as err:
        answer_for(offer)
    assert str(err.value) == "No common audio codec in the offer (we have G722, PCMU, PCMA)"


def test_our_codec_list_is_checked() -> None:
    with pytest.raises(LocalSipError, match="Unsupported codec list \\['opus'\\]"):
        answer_for(SIPP, ["opus"])
    with pytest.raises(LocalSipError):
        answer_for(SIPP, [])


def test_build_offer_exact() -> None:
    offer = build_offer(
        ["G722", "pcmu", "PCMA"], address="192.0.2.1", port=40000, session_id=7, session_version=8
    )
    assert offer.serialize() == (
        b"v=0\r\no=sipbot 7 8 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 9 0 8 101\r\n"
        b"a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\na=sendrecv\r\n"
    )
    held = build_offer(
        ["PCMU"],
        address="192.0.2.1",
        port=40000,
        session_id=7,
        session_version=9,
        dtmf=False,
        direction="sendonly",
        ptime_ms=30,
    )
    assert held.serialize().endswith(
        b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:30\r\na=sendonly\r\n"
    )
    assert held.with_version(10).origin.session_version == "10"
    with pytest.raises(LocalSipError, match="Unknown SDP direction 'hold'"):
        build_offer(
            ["PCMU"], address="a", port=1, session_id=1, session_version=1, direction="hold"
        )


def test_accept_answer_uses_their_first_codec_and_combines_directions() -> None:
    offer = build_offer(OURS, address="192.0.2.1", port=40000, session_id=7, session_version=8)
    answer = parse_sdp(
        b"v=0\r\no=- 5 5 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n"
        b"m=audio 3456 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=ptime:30\r\na=recvonly\r\n"
    )
    assert accept_answer(offer, answer) == Negotiated(
        Codec("PCMA", 8, 8000), 101, "198.51.100.2", 3456, "sendonly", 30, None
    )


def test_accept_answer_rejections() -> None:
    offer = build_offer(["PCMU"], address="192.0.2.1", port=40000, session_id=7, session_version=8)
    head = b"v=0\r\no=- 5 5 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n"
    with pytest.raises(SdpNegotiationError, match="rejected our audio stream"):
        accept_answer(offer, parse_sdp(head + b"m=audio 0 RTP/AVP 0\r\n"))
    with pytest.raises(SdpNegotiationError, match="no codec we offered"):
        accept_answer(offer, parse_sdp(head + b"m=audio 3456 RTP/AVP 8\r\n"))
    with pytest.raises(SdpNegotiationError, match="does not mirror"):
        accept_answer(offer, parse_sdp(head))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Empty SDP"),
        (b"\xff", "SDP is not UTF-8"),
        (b"v=1\r\n", "SDP line 1: must be v=0"),
        (b"v=0\r\no = x\r\n", "SDP line 2: not <type>=<value>"),
        (b"v=0\r\ns=-\r\nt=0 0\r\n", "SDP has no o= (origin) line"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nt=0 0\r\n", "SDP has no s= (session name) line"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n", "SDP has no t= (timing) line"),
        (b"v=0\r\no=- x 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n", "SDP line 2: malformed o= line"),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP9 h\r\nt=0 0\r\n",
            "SDP line 4: malformed c= line",
        ),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n",
            "SDP line 5: malformed m= line",
        ),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5 RTP/AVP\r\n",
            "SDP line 5: malformed m= line",
        ),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5 RTP/AVP 0\r\n",
            "SDP m=audio has no c= line",
        ),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5 RTP/AVP 0\r\nt=0 0\r\n",
            "SDP line 6: t= is not allowed in a media section",
        ),
    ],
)
def test_parse_errors(body: bytes, message: str) -> None:
    with pytest.raises(SdpError) as err:
        parse_sdp(body)
    assert str(err.value) == message


def test_parse_details_bare_lf_port_count_and_flags() -> None:
    sdp = parse_sdp(
        b"v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 224.2.1.1/127/3\nt=0 0\na=recvonly\n"
        b"m=audio 49170/2 RTP/AVP 0\nb=AS:64\na=ptime:20\na=rtcp-mux\n"
    )
    assert (sdp.connection, sdp.direction, sdp.attribute("recvonly")) == (
        "224.2.1.1",
        "recvonly",
        "",
    )
    m = sdp.media[0]
    assert (m.port, m.port_count, m.lines, m.direction) == (49170, 2, (("b", "AS:64"),), None)
    assert (m.attribute("rtcp-mux"), m.attribute("ptime"), m.attribute("nope")) == ("", "20", None)
    assert sdp.serialize().endswith(
        b"m=audio 49170/2 RTP/AVP 0\r\nb=AS:64\r\na=ptime:20\r\na=rtcp-mux\r\n"
    )


# ---------------------------------------------------------------------------- SdpAnswerer


def test_answerer_bumps_the_version_and_keeps_the_session_id() -> None:
    answerer = SdpAnswerer(["G722", "PCMU"], "192.0.2.10", 40000)
    first = answerer.answer(BARESIP)
    second = answerer.answer(BARESIP)
    assert first.answer is not None
    assert second.answer is not None
    o1, o2 = first.answer.origin, second.answer.origin
    assert (o1.session_id, o1.session_version) == (str(answerer.session_id), "1")
    assert (o2.session_id, o2.session_version) == (str(answerer.session_id), "2")
    assert b"m=audio 40000 RTP/AVP 9 101" in bytes(second.answer)
    assert b"c=IN IP4 192.0.2.10" in bytes(second.answer)


def test_answerer_keeps_the_codec_in_use_on_a_reoffer() -> None:
    answerer = SdpAnswerer(["G722", "PCMU", "PCMA"], "192.0.2.10", 40000)
    pcmu_only = SIPP.replace(b"RTP/AVP 0 8 9 101", b"RTP/AVP 0 101")
    assert answerer.answer(pcmu_only).codec.name == "PCMU"
    # the re-offer has G722 too (our first preference), but switching codecs mid-call is avoided
    assert answerer.answer(SIPP).codec.name == "PCMU"


def test_answerer_late_offer_takes_the_answer_from_the_ack() -> None:
    answerer = SdpAnswerer(["G722", "PCMU", "PCMA"], "192.0.2.10", 40000)
    offer = answerer.offer()
    assert b"m=audio 40000 RTP/AVP 9 0 8 101" in offer
    answer = SIPP.replace(b"RTP/AVP 0 8 9 101", b"RTP/AVP 0 101")
    negotiated = answerer.take_answer(answer)
    assert negotiated.codec.name == "PCMU"
    assert (negotiated.remote_host, negotiated.remote_port) == ("127.0.0.1", 6000)
    assert negotiated.dtmf_payload_type == 101


def test_answerer_without_an_offer_refuses_an_answer() -> None:
    with pytest.raises(SdpError, match="no offer was made"):
        SdpAnswerer(["PCMU"], "192.0.2.10").take_answer(SIPP)
