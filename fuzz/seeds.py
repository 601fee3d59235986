"""Write the stored seed corpus, ``fuzz/corpus/TARGET/NAME`` (``python -m fuzz.seeds``).

The seeds are what real peers send: the RFC 4475 torture messages (``tests/data/rfc4475``),
a whole INVITE dialog, the SDP offers of baresip, SIPp, pjsua2, Asterisk and Kamailio (as in
``tests/unit/test_sdp.py``), RTP audio and RFC 4733 events as sipbot's own sender makes them,
the example dialplans, and the server frames the emulators send. Rerun after changing this
file; the output is deterministic.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
from collections.abc import Iterable, Iterator

from fuzz.run import CORPUS_DIR
from fuzz.targets import SEPARATOR, SRTP_KEY
from sipbot.domain import SrtpKeys
from sipbot.media.rtp import OutboundStream
from sipbot.media.srtp import SrtpContext

ROOT = CORPUS_DIR.parent.parent
RFC4475_DIR = ROOT / "tests" / "data" / "rfc4475"
CRLF = "\r\n"


def _sip(lines: Iterable[str], body: bytes = b"") -> bytes:
    head = [*lines, f"Content-Length: {len(body)}"]
    return (CRLF.join(head) + CRLF + CRLF).encode() + body


OFFER = (
    b"v=0\r\no=- 1474036213 2960394187 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 10002 RTP/AVP 9 0 8 101\r\nb=AS:64\r\na=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=sendrecv\r\na=ptime:20\r\n"
)
SAVP_OFFER = (
    b"v=0\r\no=- 1 2 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
    b"m=audio 5000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
    + base64.b64encode(SRTP_KEY)
    + b"|2^31|1:1\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"
    + base64.b64encode(SRTP_KEY)
    + b"\r\n"
)
PJSUA2 = (
    b"v=0\r\no=- 3905403650 3905403650 IN IP4 127.0.0.1\r\ns=pjmedia\r\nb=AS:117\r\nt=0 0\r\n"
    b"a=X-nat:0\r\nm=audio 4000 RTP/AVP 96 9 8 0 101 102\r\nc=IN IP4 127.0.0.1\r\n"
    b"b=TIAS:96000\r\na=rtcp:4001 IN IP4 127.0.0.1\r\na=sendrecv\r\n"
    b"a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\na=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/48000\r\n"
    b"a=fmtp:101 0-16\r\na=rtpmap:102 telephone-event/8000\r\na=fmtp:102 0-16\r\n"
)
HOLD_IPV6 = (
    b"v=0\r\no=sipbot 1 2 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 8 0\r\na=sendonly\r\nm=video 0 RTP/AVP 31\r\n"
)


def _dialog(method_host: str = "192.0.2.1") -> list[bytes]:
    common = [
        'From: "Alice" <sip:alice@127.0.0.1>;tag=ft',
        "Call-ID: c1@127.0.0.1",
        "Max-Forwards: 70",
    ]

    def via(n: int) -> str:
        return f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n};rport"

    to = f"To: <sip:bot@{method_host}>"
    to_tagged = to + ";tag=$tag"
    invite = _sip(
        [
            f"INVITE sip:bot@{method_host} SIP/2.0",
            via(1),
            *common,
            to,
            "CSeq: 1 INVITE",
            "Contact: <sip:alice@127.0.0.1:5070>",
            "Supported: replaces, timer",
            "Content-Type: application/sdp",
        ],
        OFFER,
    )
    ack = _sip([f"ACK sip:bot@{method_host} SIP/2.0", via(1), *common, to_tagged, "CSeq: 1 ACK"])
    reinvite = _sip(
        [
            f"INVITE sip:sipbot@{method_host} SIP/2.0",
            via(2),
            *common,
            to_tagged,
            "CSeq: 2 INVITE",
            "Content-Type: application/sdp",
        ],
        HOLD_IPV6,
    )
    info = _sip(
        [
            f"INFO sip:sipbot@{method_host} SIP/2.0",
            via(3),
            *common,
            to_tagged,
            "CSeq: 3 INFO",
            "Content-Type: application/dtmf-relay",
        ],
        b"Signal=5\r\nDuration=160\r\n",
    )
    bye = _sip([f"BYE sip:sipbot@{method_host} SIP/2.0", via(4), *common, to_tagged, "CSeq: 4 BYE"])
    return [invite, ack, reinvite, info, bye]


def _uac_responses() -> bytes:
    def response(status: str, extra: list[str], body: bytes = b"") -> bytes:
        return _sip(
            [
                f"SIP/2.0 {status}",
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=$branch;received=127.0.0.1;rport=5060",
                "From: <sip:sipbot@192.0.2.1>;tag=$tag",
                "To: <sip:bot@127.0.0.1:5070>;tag=callee",
                "Call-ID: $callid",
                "CSeq: 1 INVITE",
                *extra,
            ],
            body,
        )

    challenge = 'WWW-Authenticate: Digest realm="pbx", nonce="abc", qop="auth", algorithm=MD5'
    steps = [
        response("100 Trying", []),
        response("180 Ringing", ["Contact: <sip:bot@127.0.0.1:5070>"]),
        response("401 Unauthorized", [challenge]),
        response(
            "200 OK",
            ["Contact: <sip:bot@127.0.0.1:5070>", "Content-Type: application/sdp"],
            OFFER,
        ),
    ]
    return b"UAC" + SEPARATOR.join(steps)


def sip_messages() -> Iterator[tuple[str, bytes]]:
    for path in sorted(RFC4475_DIR.glob("*.dat")):
        yield path.stem, path.read_bytes()
    for index, message in enumerate(_dialog()):
        yield f"dialog-{index}", message


def digest_values() -> Iterator[tuple[str, bytes]]:
    yield "md5-qop", b'Digest realm="pbx", nonce="abc", qop="auth,auth-int", algorithm=MD5'
    yield "sha256-sess", b'Digest realm="r", nonce="n", algorithm=SHA-256-sess, opaque="o"'
    yield "stale", b'Digest realm="sipbot", nonce="AAAAAAAAA+gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",'
    yield (
        "authorization",
        (
            b'Digest username="alice", realm="sipbot", nonce="AAAAAAAAA+g=", uri="sip:bot@x", '
            b'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", '
            b"qop=auth, nc=00000001"
        ),
    )


def rtp_streams() -> Iterator[tuple[str, bytes]]:
    audio = OutboundStream(160, ssrc=0x1234, sequence=65533, timestamp=1000)
    packets = [audio.packet(0, b"\xff" * 160, marker=i == 0) for i in range(5)]
    yield "pcmu-wrap", SEPARATOR.join(packets)
    events = OutboundStream(160, ssrc=0x1234, sequence=10, timestamp=2000)
    digit = [
        events.event_packet(101, struct.pack("!BBH", 5, 10 | (0x80 if end else 0), d), 2000, m)
        for d, end, m in ((160, False, True), (320, False, False), (480, True, False))
    ]
    yield "dtmf-5", SEPARATOR.join([*digit, digit[-1]])
    other = OutboundStream(160, ssrc=0x9999, sequence=1, timestamp=1)
    yield "ssrc-change", SEPARATOR.join([packets[0], other.packet(0, b"\x7f" * 160), packets[1]])
    header_ext = bytearray(audio.packet(0, b"\x00" * 16))
    header_ext[0] |= 0x10 | 0x20 | 0x01  # extension, padding, one CSRC
    yield "extended", bytes(header_ext[:12]) + b"\0\0\0\1\xbe\xde\0\1\1\2\3\4" + bytes(16)


def srtp_streams() -> Iterator[tuple[str, bytes]]:
    context = SrtpContext(SrtpKeys("AES_CM_128_HMAC_SHA1_80", SRTP_KEY, SRTP_KEY))
    stream = OutboundStream(160, ssrc=0x4321, sequence=100, timestamp=0)
    packets = [context.protect(stream.packet(0, b"\xff" * 160)) for _ in range(3)]
    yield "protected", SEPARATOR.join([*packets, packets[1]])


def dialplans() -> Iterator[tuple[str, bytes]]:
    for path in sorted((ROOT / "dialplans").glob("*.yaml")):
        yield path.stem, path.read_bytes()
    yield "default", (ROOT / "sipbot" / "data" / "default.yaml").read_bytes()
    yield (
        "anchors",
        (
            b"x-agent: &agent {provider: local, prompt: 'Hi {caller}', tools: [hang_up]}\n"
            b"agents:\n  a: *agent\n  b: {<<: *agent, greeting: hello}\n"
            b"routes:\n  - {name: r1, match: {did: '+4930', caller: {prefix: '0'}}, answer: a}\n"
            b"  - {name: r2, match: {header: {X-Tenant: b}}, reject: 486}\n"
            b"  - {name: r3, transfer: 'sip:desk@pbx.example.com'}\n"
        ),
    )


def openai_frames() -> Iterator[tuple[str, bytes]]:
    audio = base64.b64encode(b"\x00\x01" * 240).decode()
    events: list[dict[str, object]] = [
        {"type": "session.updated", "session": {"type": "realtime"}},
        {"type": "response.created", "response": {"id": "r1"}},
        {"type": "response.output_audio.delta", "item_id": "item1", "delta": audio},
        {"type": "response.output_audio_transcript.delta", "delta": "Hel"},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 10},
        {"type": "conversation.item.input_audio_transcription.completed", "transcript": "hi"},
        {
            "type": "response.function_call_arguments.done",
            "call_id": "c1",
            "name": "hang_up",
            "arguments": '{"reason": "done"}',
        },
        {"type": "response.done", "response": {"status": "failed", "status_details": {}}},
        {"type": "error", "error": {"code": "conversation_already_has_active_response"}},
        {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
    ]
    yield "conversation", SEPARATOR.join(json.dumps(e).encode() for e in events)
    yield "expired", json.dumps({"type": "error", "error": {"code": "session_expired"}}).encode()


def gemini_frames() -> Iterator[tuple[str, bytes]]:
    from sipbot.providers.gemini import _WARM_UP_MESSAGES

    frames = [json.dumps(m).encode() for m in _WARM_UP_MESSAGES]
    yield "session", SEPARATOR.join(frames)
    for index, frame in enumerate(frames):
        yield f"message-{index}", frame


def seeds() -> dict[str, list[tuple[str, bytes]]]:
    """Every target's seeds, ``name -> [(file name, bytes)]``."""
    sip = list(sip_messages())
    dialog = _dialog()
    return {
        "sip_message": sip,
        "sip_stream": [("dialog", b"\r\n\r\n".join(dialog)), ("split", SEPARATOR.join(dialog))],
        "sip_core": [
            *[(n, d) for n, d in sip if not n.startswith("dialog")],
            ("dialog", SEPARATOR.join(dialog)),
            ("uac", _uac_responses()),
        ],
        "digest": list(digest_values()),
        "sdp": [
            ("baresip", b"\0" + OFFER),
            ("savp-required", b"\2" + SAVP_OFFER),
            ("savp-optional", b"\1" + SAVP_OFFER),
            ("pjsua2", b"\0" + PJSUA2),
            ("hold-ipv6", b"\0" + HOLD_IPV6),
        ],
        "rtp": list(rtp_streams()),
        "srtp": list(srtp_streams()),
        "dialplan": list(dialplans()),
        "openai": list(openai_frames()),
        "gemini": list(gemini_frames()),
    }


def main() -> None:
    for target, files in seeds().items():
        directory = CORPUS_DIR / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in files:
            (directory / name).write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
