"""Benchmark: microseconds per parse and per serialize of typical SIP messages.

Run: ``python bench/bench_sip_parse.py [--loops N]``. Prints one line per case: the best of
five rounds (the least disturbed by the other work on a shared machine), in µs per call.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipbot.sip.message import SipRequest, make_response, parse_message, serialize
from sipbot.sip.sdp import SessionDescription, negotiate, parse_sdp

SDP = (
    b"v=0\r\no=- 1474036213 2960394187 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\nm=audio 10002 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:bot@192.0.2.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK-kamailio-1;rport\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;received=192.0.2.10;rport=5060;branch=z9hG4bKa7f3\r\n"
    b"Record-Route: <sip:192.0.2.20;lr;ftag=as6c2e9a5d>\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=as6c2e9a5d\r\n'
    b"To: <sip:bot@example.com>\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Call-ID: 3c26700ac53a3bfa7e9d5d2e5d1f8a4b@192.0.2.10\r\n"
    b"CSeq: 102 INVITE\r\n"
    b"User-Agent: baresip v1.0.0 (x86_64/linux)\r\n"
    b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REFER, UPDATE, INFO\r\n"
    b"Supported: replaces, norefersub, timer\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def best_us(fn: Callable[[], object], loops: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / loops * 1e6


def answer(offer: SessionDescription) -> bytes:
    result = negotiate(
        offer, ["G722", "PCMU"], address="192.0.2.1", port=20000, session_id=1, session_version=1
    )
    assert result.answer is not None
    return result.answer.serialize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loops", type=int, default=5000)
    loops = parser.parse_args().loops
    request = parse_message(INVITE)
    assert isinstance(request, SipRequest)
    ok = make_response(request, 200, to_tag="9f8e7d6c", copy_record_route=True)
    ok.headers.add("Contact", "<sip:bot@192.0.2.1:5060>")
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = SDP
    ok_bytes = serialize(ok)
    offer = parse_sdp(SDP)
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"parse INVITE with SDP ({len(INVITE)} B)", lambda: parse_message(INVITE)),
        ("serialize INVITE with SDP", lambda: serialize(request)),
        (f"parse 200 OK with SDP ({len(ok_bytes)} B)", lambda: parse_message(ok_bytes)),
        ("serialize 200 OK with SDP", lambda: serialize(ok)),
        (
            "make_response 200 (tag, Record-Route)",
            lambda: make_response(request, 200, to_tag="x", copy_record_route=True),
        ),
        ("parse_sdp offer", lambda: parse_sdp(SDP)),
        ("negotiate + serialize answer", lambda: answer(offer)),
    ]
    print(f"python {sys.version.split()[0]}, best of 5 x {loops} loops")
    for name, fn in cases:
        print(f"{name:42s} {best_us(fn, loops):8.1f} µs")


if __name__ == "__main__":
    main()
