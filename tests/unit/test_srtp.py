"""SRTP (RFC 4568 SDES + RFC 3711): a=crypto parsing and offer/answer, the srtp setting, and
protect/unprotect round trips on the media cores (pylibsrtp, real libsrtp)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from sipbot.config import load_config
from sipbot.dialplan.trunks import Trunk, call_srtp
from sipbot.domain import SrtpKeys, SrtpMode
from sipbot.errors import ConfigError, SdpNegotiationError, SrtpError
from sipbot.media.codecs import PCMU
from sipbot.media.receiver import NOTHING, Digit, RtpReceiver
from sipbot.media.rtp import RtpPacket, parse_rtp
from sipbot.media.sender import RtpSender
from sipbot.media.srtp import SrtpContext
from sipbot.ratelimit import RateLimitedLog
from sipbot.sip.sdp import (
    MediaDescription,
    Negotiated,
    SdpAnswerer,
    accept_answer,
    build_offer,
    negotiate,
    parse_sdp,
)
from sipbot.sip.sdp_crypto import choose_crypto, new_key, parse_crypto

KEY_A = bytes(range(30))
KEY_B = bytes(range(100, 130))
B64_A = base64.b64encode(KEY_A).decode()
B64_B = base64.b64encode(KEY_B).decode()
SUITE80, SUITE32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"


def offer(proto: str = "RTP/SAVP", crypto: tuple[str, ...] = ()) -> bytes:
    """An offer as baresip 1.0 sends it with mediaenc=srtp (AVP) or srtp-mand (SAVP)."""
    lines = [
        "v=0",
        "o=- 1474036213 2960394187 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio 10002 {proto} 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=sendrecv",
        *(f"a=crypto:{c}" for c in crypto),
        "a=ptime:20",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


BARESIP_CRYPTO = (f"1 {SUITE32} inline:{B64_A}", f"2 {SUITE80} inline:{B64_B}")


def answer_offer(sdp: bytes, srtp: SrtpMode, key: bytes = KEY_B) -> Negotiated:
    return negotiate(
        parse_sdp(sdp),
        ["PCMU"],
        address="127.0.0.1",
        port=20000,
        session_id=1,
        session_version=1,
        srtp=srtp,
        srtp_key=key,
    )


def answered_media(result: Negotiated) -> MediaDescription:
    assert result.answer is not None
    return result.answer.media[0]


# ------------------------------------------------------------------ a=crypto parsing


def test_parse_crypto_takes_both_suites_and_a_lifetime() -> None:
    attr = parse_crypto(f"1 {SUITE80} inline:{B64_A}|2^31")
    assert attr is not None
    assert (attr.tag, attr.suite, attr.key) == (1, SUITE80, KEY_A)
    attr32 = parse_crypto(f"7 {SUITE32} inline:{B64_B}")
    assert attr32 is not None
    assert (attr32.tag, attr32.suite, attr32.key) == (7, SUITE32, KEY_B)
    assert str(attr32) == f"7 {SUITE32} inline:{B64_B}"
    assert B64_A not in repr(attr)
    assert str(KEY_A) not in repr(attr)


@pytest.mark.parametrize(
    "value",
    [
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{B64_A}",  # a suite we do not do
        f"1 {SUITE80} inline:{base64.b64encode(KEY_A[:20]).decode()}",  # short key
        f"1 {SUITE80} inline:{B64_A}|2^20|1:4",  # MKI
        f"1 {SUITE80} inline:{B64_A}|2^49",  # lifetime above 2^48
        f"1 {SUITE80} inline:{B64_A};inline:{B64_B}",  # two keys
        f"1 {SUITE80} inline:{B64_A} UNENCRYPTED_SRTP",  # a session parameter
        f"1 {SUITE80} inline:!!notbase64!!",
        f"x {SUITE80} inline:{B64_A}",
        f"1 {SUITE80}",
    ],
)
def test_unusable_crypto_lines_are_skipped(value: str) -> None:
    assert parse_crypto(value) is None
    assert choose_crypto([value, f"9 {SUITE32} inline:{B64_B}"]) is not None  # the next one


def test_keys_are_fresh_and_hidden() -> None:
    assert len(new_key()) == 30
    assert new_key() != new_key()
    keys = SrtpKeys(SUITE80, KEY_A, KEY_B)
    assert str(KEY_A) not in repr(keys)
    assert str(KEY_B) not in repr(keys)


# ------------------------------------------------------------------ offer/answer (Rule 6)


def test_savp_offer_is_answered_savp_with_our_key_and_its_first_suite() -> None:
    result = answer_offer(offer("RTP/SAVP", BARESIP_CRYPTO), "optional")
    assert result.srtp == SrtpKeys(SUITE32, KEY_B, KEY_A)
    m = answered_media(result)
    assert (m.proto, m.port) == ("RTP/SAVP", 20000)
    assert m.attribute_values("crypto") == [f"1 {SUITE32} inline:{B64_B}"]


def test_avp_offer_with_crypto_under_optional_gets_crypto() -> None:
    result = answer_offer(offer("RTP/AVP", BARESIP_CRYPTO[1:]), "optional")
    assert result.srtp == SrtpKeys(SUITE80, KEY_B, KEY_B)
    m = answered_media(result)
    assert m.proto == "RTP/AVP"
    assert m.attribute_values("crypto") == [f"2 {SUITE80} inline:{B64_B}"]


def test_srtp_off_answers_plain_and_refuses_savp() -> None:
    plain = answer_offer(offer("RTP/AVP", BARESIP_CRYPTO), "off")
    assert plain.srtp is None
    assert not answered_media(plain).attribute_values("crypto")
    with pytest.raises(SdpNegotiationError, match="SRTP"):
        answer_offer(offer("RTP/SAVP", BARESIP_CRYPTO), "off")


def test_required_refuses_a_plain_offer_and_unusable_crypto() -> None:
    with pytest.raises(SdpNegotiationError, match="SRTP is required") as info:
        answer_offer(offer("RTP/AVP"), "required")
    with pytest.raises(SdpNegotiationError, match="SRTP is required"):
        answer_offer(offer("RTP/SAVP", (f"1 AES_256_CM_HMAC_SHA1_80 inline:{B64_A}",)), "required")
    assert B64_A not in str(info.value)
    ok = answer_offer(offer("RTP/AVP", BARESIP_CRYPTO), "required")
    assert ok.srtp is not None


def test_optional_takes_a_plain_offer_plainly() -> None:
    result = answer_offer(offer("RTP/AVP"), "optional")
    assert result.srtp is None
    assert answered_media(result).proto == "RTP/AVP"


def test_answerer_keeps_its_key_across_reoffers() -> None:
    answerer = SdpAnswerer(["PCMU"], "127.0.0.1", 20000, srtp="optional")
    first = answerer.answer(offer("RTP/SAVP", BARESIP_CRYPTO))
    again = answerer.answer(offer("RTP/SAVP", BARESIP_CRYPTO))
    assert first.srtp is not None
    assert first.srtp == again.srtp
    assert first.srtp.remote == KEY_A
    assert len(first.srtp.local) == 30


def test_our_offer_and_the_answer_to_it() -> None:
    ours = build_offer(
        ["PCMU"],
        address="127.0.0.1",
        port=20000,
        session_id=1,
        session_version=1,
        srtp="required",
        srtp_key=KEY_A,
    )
    m = ours.media[0]
    assert m.proto == "RTP/SAVP"
    assert m.attribute_values("crypto") == [
        f"1 {SUITE80} inline:{B64_A}",
        f"2 {SUITE32} inline:{B64_A}",
    ]
    text = bytes(ours).decode()
    their = text.replace("RTP/SAVP 0 101", "RTP/SAVP 0").replace(
        f"a=crypto:1 {SUITE80} inline:{B64_A}\r\na=crypto:2 {SUITE32} inline:{B64_A}",
        f"a=crypto:2 {SUITE32} inline:{B64_B}",
    )
    got = accept_answer(ours, parse_sdp(their.encode()))
    assert got.srtp == SrtpKeys(SUITE32, KEY_A, KEY_B)
    no_crypto = text.replace(f"a=crypto:1 {SUITE80} inline:{B64_A}\r\n", "").replace(
        f"a=crypto:2 {SUITE32} inline:{B64_A}\r\n", ""
    )
    with pytest.raises(SdpNegotiationError, match="crypto"):
        accept_answer(ours, parse_sdp(no_crypto.encode()))
    wrong_tag = text.replace(
        f"a=crypto:1 {SUITE80} inline:{B64_A}\r\na=crypto:2 {SUITE32} inline:{B64_A}",
        f"a=crypto:5 {SUITE32} inline:{B64_B}",
    )
    with pytest.raises(SdpNegotiationError, match="tag"):
        accept_answer(ours, parse_sdp(wrong_tag.encode()))


# ------------------------------------------------------------------ the srtp setting


def config_text(agent_srtp: str, trunk_srtp: str) -> str:
    return (
        "agents:\n"
        f"  echo: {{provider: local{agent_srtp}}}\n"
        "trunks:\n"
        "  pbx:\n"
        f"    source: [192.0.2.10]{trunk_srtp}\n"
        "routes:\n"
        "  - name: all\n"
        "    answer: echo\n"
    )


def test_srtp_setting_on_agent_and_trunk_trunk_wins(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(config_text(", srtp: required", "\n    srtp: off"))
    plan = load_config(str(path), environ={}).dialplan
    agent, trunk = plan.agents["echo"], plan.trunks["pbx"]
    assert (agent.srtp, trunk.srtp) == ("required", "off")  # bare YAML off is false → off
    assert call_srtp(trunk, agent.srtp) == "off"  # the trunk's word wins
    assert call_srtp(None, agent.srtp) == "required"
    assert call_srtp(Trunk("t", source=("192.0.2.1",)), agent.srtp) == "required"  # unset
    assert call_srtp(None, None) == "off"


@pytest.mark.parametrize(
    ("agent_srtp", "trunk_srtp"), [(", srtp: yes", ""), ("", "\n    srtp: must")]
)
def test_bad_srtp_settings_are_config_errors(
    tmp_path: Path, agent_srtp: str, trunk_srtp: str
) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(config_text(agent_srtp, trunk_srtp))
    with pytest.raises(ConfigError, match="srtp must be off, optional or required"):
        load_config(str(path), environ={})


# ------------------------------------------------------------------ protect / unprotect


def rtp(seq: int, pt: int = 0, ssrc: int = 7, payload: bytes = b"\x55" * 160) -> bytes:
    return RtpPacket(pt, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc, payload).serialize()


@pytest.mark.parametrize(("suite", "tag"), [(SUITE80, 10), (SUITE32, 4)])
def test_round_trip_both_suites_and_tamper(suite: str, tag: int) -> None:
    ours, theirs = (
        SrtpContext(SrtpKeys(suite, KEY_A, KEY_B)),
        SrtpContext(SrtpKeys(suite, KEY_B, KEY_A)),
    )
    packet = rtp(1)
    protected = ours.protect(packet)
    assert len(protected) == len(packet) + tag
    assert protected[12:172] != packet[12:]
    assert protected[:12] == packet[:12]
    assert theirs.unprotect(protected) == packet
    with pytest.raises(SrtpError):
        theirs.unprotect(protected)  # a replay
    tampered = bytearray(ours.protect(rtp(2)))
    tampered[20] ^= 1
    with pytest.raises(SrtpError):
        theirs.unprotect(bytes(tampered))
    with pytest.raises(SrtpError):
        ours.unprotect(ours.protect(rtp(3)))  # our own key does not open our packets
    assert "KEY" not in repr(ours)
    assert suite in repr(ours)


def test_rollover_counter_across_a_sequence_wrap() -> None:
    """Sequence numbers wrap at 65536: the ROC moves on in both directions (RFC 3711 §3.3.1),
    so packets after the wrap still authenticate and decrypt to the plaintext."""
    tx, rx = (
        SrtpContext(SrtpKeys(SUITE80, KEY_A, KEY_B)),
        SrtpContext(SrtpKeys(SUITE80, KEY_B, KEY_A)),
    )
    for seq in range(65_530, 65_546):  # 65530..65535, then 0..9 with ROC 1
        packet = rtp(seq, payload=seq.to_bytes(4, "big") * 40)
        assert rx.unprotect(tx.protect(packet)) == packet
    # a receiver that never saw the wrap cannot open a post-wrap packet the same way: the
    # keystream depends on the ROC (proof that the counter took part)
    fresh = SrtpContext(SrtpKeys(SUITE80, KEY_B, KEY_A))
    after = tx.protect(rtp(65_546))
    with pytest.raises(SrtpError):
        fresh.unprotect(after)


def test_receiver_and_sender_protect_audio_and_telephone_events() -> None:
    tx = RtpSender(prebuffer_ms=0, max_hold_ms=40)
    tx.configure(PCMU, 0, 101)
    tx.srtp = SrtpContext(SrtpKeys(SUITE80, KEY_A, KEY_B))
    rx = RtpReceiver(log=RateLimitedLog(logging.getLogger("test")))
    rx.configure(0, 101, ("127.0.0.1", 4000))
    rx.srtp = SrtpContext(SrtpKeys(SUITE80, KEY_B, KEY_A))
    tx.send_dtmf("5", 60)
    check = SrtpContext(SrtpKeys(SUITE80, KEY_B, KEY_A))  # a second pair of eyes on the wire
    digits: list[str] = []
    events = 0
    for index in range(6):
        packet = tx.next_packet()
        plain = check.unprotect(packet)
        assert len(packet) == len(plain) + 10
        assert packet[12 : len(plain)] != plain[12:]
        events += parse_rtp(plain).payload_type == 101
        for item in rx.receive(packet, ("127.0.0.1", 4000), index * 0.02):
            if isinstance(item, Digit):
                digits.append(item.digit)
    assert events >= 3  # the event packets went through protect too
    assert digits == ["5"]
    assert rx.stats.dtmf_in == 1
    assert rx.stats.srtp_failures == 0
    # a plain RTP packet (or one with a wrong key) is dropped and counted, and latches nothing
    assert rx.receive(rtp(99), ("127.0.0.1", 4000), 0.2) == NOTHING
    assert rx.stats.srtp_failures == 1
    assert rx.receive(rtp(100), ("127.0.0.9", 1), 5.0) == NOTHING  # after the relatch delay
    assert rx.stats.srtp_failures == 2
    assert rx.peer == ("127.0.0.1", 4000)


def test_late_offer_round_trip_through_the_answerer() -> None:
    """An INVITE without SDP: our offer (200 OK) carries crypto, the ACK's answer picks one."""
    ours = SdpAnswerer(["PCMU"], "127.0.0.1", 20000, srtp="required")
    offered = parse_sdp(ours.offer())
    assert offered.media[0].proto == "RTP/SAVP"
    theirs = SdpAnswerer(["PCMU"], "127.0.0.1", 30000, srtp="optional")
    answer = theirs.answer(bytes(offered))
    assert answer.answer is not None
    assert answer.srtp is not None
    got = ours.take_answer(bytes(answer.answer))
    assert got.srtp is not None
    assert (got.srtp.local, got.srtp.remote) == (answer.srtp.remote, answer.srtp.local)
    assert got.srtp.suite == answer.srtp.suite == SUITE80  # the offer's first
