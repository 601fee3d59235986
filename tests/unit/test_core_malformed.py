"""Malformed input through the whole SIP core (``Core.receive``), not only the parser.

The shapes of issue 14 (a request with headers missing and no usable Via; an unparsable Via)
are dropped, counted and logged rate-limited; every RFC 4475 message and a few thousand seeded
mutations of valid messages go through ``Core.receive`` and its timers without an exception.
The user agent's last-resort catch-all and its per-source rate limit are checked here too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import deque

import pytest

from sipbot.sip.core import Core
from sipbot.sip.legs import CallConfirmed, CoreSettings, IncomingCall, Peer
from sipbot.sip.limiter import LimiterSettings, SourceLimiter
from sipbot.sip.ua import DRAIN_BUDGET_S, INBOX_MAX, INBOX_MAX_AGE_S, SipSettings, UserAgent
from tests.data.rfc4475 import DATA_DIR
from tests.data.rfc4475 import load as load_rfc4475
from tests.data.rfc4475.expected import EXPECTED

SOURCE = Peer("udp", "127.0.0.1", 5999)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)
ANSWER = b"v=0\r\no=- 2 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
MUTATIONS = 4000


def make_core() -> Core:
    return Core(CoreSettings(), lambda transport, host: ("192.0.2.1", 5060))


def invite(via: str | None = "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-m1;rport") -> bytes:
    lines = ["INVITE sip:bot@192.0.2.1 SIP/2.0"]
    if via is not None:
        lines.append(f"Via: {via}")
    lines += [
        "Max-Forwards: 70",
        "From: <sip:alice@10.0.0.1>;tag=ft",
        "To: <sip:bot@192.0.2.1>",
        "Call-ID: m1@10.0.0.1",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@10.0.0.1:5070>",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + SDP


def headers_missing(via: str | None) -> bytes:
    """The spray's shape: only a request line and a Via (and Content-Length)."""
    lines = ["REGISTER sip:example.com SIP/2.0"]
    if via is not None:
        lines.append(f"Via: {via}")
    return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- exact shapes


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(headers_missing(""), id="headers-missing-empty-via"),
        pytest.param(headers_missing(None), id="headers-missing-no-via"),
        pytest.param(headers_missing(" , ,"), id="headers-missing-only-commas-in-via"),
        pytest.param(headers_missing("SIP/2.0/UDP"), id="headers-missing-via-without-host"),
        pytest.param(invite(""), id="invite-empty-via"),
        pytest.param(invite("garbage"), id="invite-via-garbage"),
        pytest.param(invite("SIP/2.0/UDP"), id="invite-via-without-host"),
        pytest.param(invite("SIP 2.0 UDP 10.0.0.1"), id="invite-via-no-slashes"),
        pytest.param(invite(";branch=z9hG4bK-x"), id="invite-via-params-only"),
        pytest.param(invite(None).replace(b"CSeq: 1 INVITE\r\n", b""), id="invite-no-via-no-cseq"),
    ],
)
def test_a_request_without_a_usable_via_is_dropped_and_counted(data: bytes) -> None:
    core = make_core()
    core.receive(data, SOURCE, 0.0)
    assert core.data_to_send() == []
    assert core.events() == []
    assert core.dropped == 1


def test_a_via_with_a_sent_by_is_still_answered_at_the_source() -> None:
    """Like RFC 4475 §3.1.2.1 (badinv01): empty Via parameters, but protocol and host are
    there, so the 400 can go back (echoing that Via) although From, To, ... are missing."""
    core = make_core()
    core.receive(headers_missing("SIP/2.0/UDP 10.0.0.1;;,;,,"), SOURCE, 0.0)
    [out] = core.data_to_send()
    assert out.data.startswith(
        b"SIP/2.0 400 Missing required headers: From, To, Call-ID, CSeq\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1;;,;,,\r\n"
    )
    assert out.destination == SOURCE
    assert core.dropped == 0


def test_drops_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core()
    with caplog.at_level(logging.INFO, logger="sipbot.sip"):
        for i in range(500):
            core.receive(headers_missing(""), SOURCE, i * 0.001)
    assert core.dropped == 500
    assert len(caplog.records) == 10  # LogLimiter: 10 lines per 10 s window
    assert caplog.records[0].getMessage() == (
        "dropped a malformed message from "
        f"{SOURCE}: 400 Missing required headers: From, To, Call-ID, CSeq"
    )


# --------------------------------------------------------------------------- corpus


def drive(core: Core, data: bytes, now: float) -> None:
    """One message through the core the way the user agent does it, the app answering calls."""
    core.receive(data, SOURCE, now)
    for event in core.events():
        if isinstance(event, IncomingCall):
            core.accept(event.call, ANSWER, now=now)
    core.handle_timers(now)
    core.data_to_send()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_rfc4475_message_goes_through_the_core(name: str) -> None:
    core = make_core()
    for step in range(3):  # and again: retransmissions of whatever it was
        drive(core, load_rfc4475(name), step * 0.5)
    for step in range(1, 80):  # every timer the message armed fires (64·T1 = 32 s)
        core.handle_timers(step * 0.5)
        core.data_to_send()


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A byte flip, a truncation, a dropped or doubled line, a wrong version or length."""
    kind = rng.randrange(6)
    if kind == 0:
        out = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 1:
        return data[: rng.randrange(len(data))]
    lines = data.split(b"\r\n")
    i = rng.randrange(len(lines))
    if kind == 2:
        del lines[i]
    elif kind == 3:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif kind == 4:
        lines[i] = lines[i].replace(b"SIP/2.0", rng.choice([b"SIP/3.0", b"SIP/2", b"sip/2.0", b""]))
    else:
        lines[i] = lines[i].split(b":", 1)[0] + b": " + rng.choice([b"", b"-1", b"99999", b","])
    return b"\r\n".join(lines)


def test_seeded_mutations_of_valid_messages_never_raise() -> None:
    rng = random.Random(14)
    seeds = [p.read_bytes() for p in sorted(DATA_DIR.glob("*.dat"))] + [invite()]
    core = make_core()
    for i in range(MUTATIONS):
        drive(core, mutate(rng, rng.choice(seeds)), i * 0.005)
    for step in range(80):
        core.handle_timers(MUTATIONS * 0.005 + step * 0.5)
    assert core.dropped > 0  # the corpus does reach the drop path


# --------------------------------------------------------------------------- empty headers


def test_a_bye_with_an_empty_route_ends_the_call_with_200() -> None:
    """SIPp's [routes] expands to ``Route: `` with nothing after it in a dialog without one."""
    core = make_core()
    core.receive(invite(), SOURCE, 0.0)
    [event] = core.events()
    assert isinstance(event, IncomingCall)
    call = event.call
    core.accept(call, ANSWER, now=0.0)
    tag = f"<sip:bot@192.0.2.1>;tag={call.local_tag}"
    ack = invite().split(b"Content-Type")[0].replace(b"INVITE sip", b"ACK sip", 1)
    ack = ack.replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
    ack = ack.replace(b"<sip:bot@192.0.2.1>", tag.encode())
    core.receive(ack + b"Content-Length: 0\r\n\r\n", SOURCE, 0.1)
    assert core.events() == [CallConfirmed(call)]
    core.data_to_send()
    bye = (
        ack.replace(b"ACK sip", b"BYE sip", 1)
        .replace(b"CSeq: 1 ACK", b"CSeq: 2 BYE")
        .replace(b"z9hG4bK-m1", b"z9hG4bK-m2")
    )
    core.receive(bye + b"Route: \r\nRecord-Route:\r\nContent-Length: 0\r\n\r\n", SOURCE, 1.0)
    [out] = core.data_to_send()
    assert out.data.startswith(b"SIP/2.0 200 OK\r\n")
    [ended] = core.events()
    assert getattr(ended, "reason", None) == "bye-received"


# --------------------------------------------------------------------------- the user agent


class Raising(Core):
    """A core with a bug: every message raises."""

    def receive(self, data: bytes, source: Peer, now: float) -> None:
        raise RuntimeError("a bug")


class Slow(Core):
    """A core that takes ``cost_s`` of CPU per message and counts them."""

    cost_s = 0.001
    received = 0

    def receive(self, data: bytes, source: Peer, now: float) -> None:
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:
            pass
        self.received += 1


def agent(limiter: SourceLimiter | None = None) -> UserAgent:
    return UserAgent(SipSettings(listen=()), lambda call: None, limiter)


async def drained(ua: UserAgent) -> None:
    for _ in range(1000):
        if not ua._inbox and not ua._draining:
            return
        await asyncio.sleep(0)
    raise AssertionError("the receive queue was not drained")


async def test_the_catch_all_counts_and_logs_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ua = agent()
    ua._core = Raising(CoreSettings(), lambda transport, host: ("127.0.0.1", 5060))
    with caplog.at_level(logging.ERROR, logger="sipbot.sip.ua"):
        for _ in range(100):
            ua._on_message(b"OPTIONS", SOURCE)
        await drained(ua)
    assert ua.core_failures == 100
    [record] = caplog.records  # one line per 10 s, with its traceback
    assert record.getMessage() == "SIP core failed on a message from 127.0.0.1:5999"
    assert record.exc_info is not None


async def test_messages_over_the_source_rate_never_reach_the_core(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = SourceLimiter(LimiterSettings(rate=1.0, burst=3, max_calls=1))
    ua = agent(limiter)
    ua._core = Raising(CoreSettings(), lambda transport, host: ("127.0.0.1", 5060))
    with caplog.at_level(logging.WARNING, logger="sipbot.sip.ua"):
        for _ in range(50):
            ua._on_message(b"OPTIONS", SOURCE)
        await drained(ua)
    assert (ua.core_failures, limiter.refused_messages) == (3, 47)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "dropping SIP messages over the per-source rate from 127.0.0.1 (1 dropped in total)"
    ]
    ua._on_message(b"OPTIONS", Peer("udp", "127.0.0.2", 5999))  # another source gets through
    await drained(ua)
    assert ua.core_failures == 4


async def test_the_drain_steps_aside_for_the_loops_timers() -> None:
    """Rule 5: 40 messages of 1 ms each are not fed in one go: a timer due meanwhile runs
    after at most the budget's worth of them."""
    ua = agent()
    core = ua._core = Slow(CoreSettings(), lambda transport, host: ("127.0.0.1", 5060))
    loop = asyncio.get_running_loop()
    seen: list[int] = []
    loop.call_later(0.0, lambda: seen.append(core.received))  # a tick due at once
    for _ in range(40):
        ua._on_message(b"OPTIONS", SOURCE)
    await drained(ua)
    assert core.received == 40
    budget_messages = DRAIN_BUDGET_S / Slow.cost_s
    assert len(seen) == 1
    assert seen[0] <= budget_messages + 1, seen


async def test_a_full_receive_queue_drops_and_counts() -> None:
    ua = agent()
    core = ua._core = Slow(CoreSettings(), lambda transport, host: ("127.0.0.1", 5060))
    core.cost_s = 0.0
    for _ in range(INBOX_MAX + 10):
        ua._on_message(b"OPTIONS", SOURCE)
    assert ua.inbox_dropped == 10
    await drained(ua)
    assert core.received == INBOX_MAX


async def test_messages_that_waited_too_long_are_dropped_unprocessed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rule 7: a starved loop answers what just came, not what waited past its peers' timers."""
    ua = agent()
    core = ua._core = Slow(CoreSettings(), lambda transport, host: ("127.0.0.1", 5060))
    core.cost_s = 0.0
    for _ in range(5):
        ua._on_message(b"OPTIONS", SOURCE)
    old = ua.loop.time() - INBOX_MAX_AGE_S - 0.5  # as if the loop had been starved meanwhile
    ua._inbox = deque((data, peer, old) for data, peer, _ in ua._inbox)
    ua._on_message(b"OPTIONS", SOURCE)
    with caplog.at_level(logging.WARNING, logger="sipbot.sip.ua"):
        await drained(ua)
    assert (core.received, ua.inbox_stale) == (1, 5)
    [line] = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(
        r"SIP receive queue 1\.\d s behind: dropping stale messages \(1 dropped in total\)", line
    )
