"""RFC 4475 torture messages and a malformed-message barrage against a real ``sipbot run``.

Each ``tests/data/rfc4475/<name>.dat`` goes to the server in one UDP datagram from a socket of
its own, and the final answer (or its absence within a bounded wait) is compared with
``tests/data/rfc4475/expected.py``. Nothing is rewritten to reach the server (it accepts any
Request-URI host and answers at the datagram's source); only the SDP's ``c=`` address
(192.0.2.x → 127.0.0.x, same length) and audio port (49217 → a port of ours, same length) are
changed so that the RTP of the INVITEs it answers stays on loopback. Answered INVITEs are ACKed
and hung up; other INVITE finals are ACKed.

The barrage sends random bytes, truncated valid messages, the invalid set again and oversize
datagrams while a SIPp call is up: the server keeps answering what deserves an answer, the call
keeps its echo and cadence and ends with a clean BYE.
"""

from __future__ import annotations

import random
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.data.rfc4475 import load
from tests.data.rfc4475.expected import EXPECTED, Expected
from tests.e2e.conftest import SipbotServer, StartServer
from tests.e2e.limits import one_source_config
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.test_call_path import (
    ECHO_HOLD_S,
    ECHO_MIN_CORRELATION,
    StallWitness,
    assert_steady,
    bot_packets,
    echo_score,
    paced_server,
)
from tests.e2e.test_media_robustness import wait_answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FINAL_WAIT_S = 3.0  # longest wait for a final answer that should come (normally < 10 ms)
SILENCE_WAIT_S = 1.0  # how long "no response" is watched for
RTP_PORT_IN_SDP = b"49217"  # every torture SDP offers audio on this port


@dataclass
class Exchange:
    """What came back for one datagram."""

    responses: list[str] = field(default_factory=list)  # raw response texts, in order

    @property
    def final(self) -> str | None:
        return next((r for r in self.responses if status_of(r) >= 200), None)

    def describe(self) -> str:
        final = self.final
        if final is None:
            return "no response" if not self.responses else f"only {status_of(self.responses[0])}"
        return final.split("\r\n", 1)[0].removeprefix("SIP/2.0 ")


def status_of(response: str) -> int:
    match = re.match(r"SIP/2\.0 (\d{3}) ", response)
    return int(match.group(1)) if match else 0


def header(message: str, name: str) -> str | None:
    """The first value of header ``name`` (long form, case-insensitive) in our server's output."""
    match = re.search(rf"^{re.escape(name)}[ \t]*:[ \t]*(.*?)\r?$", message, re.M | re.I)
    return match.group(1) if match else None


def rtp_on_loopback(data: bytes, rtp_port: int) -> bytes:
    """The message with its SDP media on 127.0.0.x:``rtp_port`` (same length: Content-Length)."""
    data = re.sub(rb"(?m)^(c=IN IP4 )192\.0\.2\.", rb"\g<1>127.0.0.", data)
    port = str(rtp_port).encode()
    assert len(port) == len(RTP_PORT_IN_SDP)
    return data.replace(b"m=audio " + RTP_PORT_IN_SDP, b"m=audio " + port)


class Client:
    """A UDP socket of its own for one request and whatever follows it (ACK, BYE)."""

    def __init__(self, server: SipbotServer) -> None:
        self.server = (server.host, server.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self, until_final: bool, wait_s: float) -> Exchange:
        """Collect responses for ``wait_s`` or, with ``until_final``, until a final one."""
        exchange = Exchange()
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65_535)
            except TimeoutError:
                break
            exchange.responses.append(data.decode("utf-8", "replace"))
            if until_final and status_of(exchange.responses[-1]) >= 200:
                break
        return exchange

    def in_dialog(self, method: str, final: str, cseq: int) -> bytes:
        """ACK or BYE within the dialog a 2xx set up (straight to the server's Contact)."""
        contact = header(final, "Contact") or ""
        target = contact.strip("<>").split(">")[0]
        lines = [
            f"{method} {target} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: {header(final, 'From')}",
            f"To: {header(final, 'To')}",
            f"Call-ID: {header(final, 'Call-ID')}",
            f"CSeq: {cseq} {method}",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ack_for_failure(request: bytes, final: str) -> bytes:
    """The ACK of a non-2xx final to an INVITE (RFC 3261 §17.1.1.3: same branch, hop by hop)."""
    request_line = request.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    uri = request_line.split(" ")[1]
    cseq = (header(final, "CSeq") or "0").split()[0]
    lines = [
        f"ACK {uri} SIP/2.0",
        f"Via: {header(final, 'Via')}",
        "Max-Forwards: 70",
        f"From: {header(final, 'From')}",
        f"To: {header(final, 'To')}",
        f"Call-ID: {header(final, 'Call-ID')}",
        f"CSeq: {cseq} ACK",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def is_invite(data: bytes) -> bool:
    return data.startswith(b"INVITE ")


def exchange(server: SipbotServer, data: bytes, expect_answer: bool) -> tuple[Exchange, str]:
    """Send one torture message; complete what it started. Returns (what came back, problems)."""
    client = Client(server)
    try:
        client.send(data)
        got = client.receive(
            until_final=expect_answer, wait_s=FINAL_WAIT_S if expect_answer else SILENCE_WAIT_S
        )
        final = got.final
        if final is None or not is_invite(data):
            return got, ""
        if status_of(final) >= 300:
            client.send(ack_for_failure(data, final))
            return got, ""
        cseq = int((header(final, "CSeq") or "1").split()[0])
        client.send(client.in_dialog("ACK", final, cseq))
        client.send(client.in_dialog("BYE", final, cseq + 1))
        bye = client.receive(until_final=True, wait_s=FINAL_WAIT_S)
        answered = [status_of(r) for r in bye.responses if "BYE" in (header(r, "CSeq") or "")]
        return got, "" if 200 in answered else f"BYE answered {answered or 'never'}"
    finally:
        client.close()


def verdict(expected: Expected, got: Exchange, problem: str) -> str:
    """'' when ``got`` is what ``expected`` says, else what is wrong."""
    final = got.final
    if expected.answer is None:
        return "" if not got.responses else "answered"
    if final is None or status_of(final) != expected.answer:
        return "wrong answer"
    missing = [h for h in expected.headers if header(final, h) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    return problem


Row = tuple[str, str, str, str, str]  # name, section, expected, got, problem ('' = as expected)


def table(rows: list[Row]) -> str:
    head = ("name", "RFC 4475", "expected", "got", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *rows]
    )


def run_torture(server: SipbotServer, names: list[str], rtp_port: int) -> list[Row]:
    """Send each message in turn; the rows of the results table (last column: '' = as expected)."""
    rows: list[Row] = []
    for name in names:
        expected = EXPECTED[name]
        data = rtp_on_loopback(load(name), rtp_port)
        got, problem = exchange(server, data, expect_answer=expected.answer is not None)
        want = "no response" if expected.answer is None else str(expected.answer)
        if expected.headers:
            want += " + " + ", ".join(expected.headers)
        rows.append((name, expected.section, want, got.describe(), verdict(expected, got, problem)))
    return rows


def out_of_dialog(uri: str, local_port: int, body: bytes = b"") -> bytes:
    """A well-formed OPTIONS to ``uri`` from 127.0.0.1:``local_port``."""
    lines = [
        f"OPTIONS {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@127.0.0.1:{local_port}>;tag={secrets.token_hex(4)}",
        f"To: <{uri}>",
        f"Call-ID: {secrets.token_hex(8)}@127.0.0.1",
        "CSeq: 1 OPTIONS",
        *(["Content-Type: text/plain"] if body else []),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def options(server: SipbotServer, body: bytes = b"") -> str:
    """The final answer to an OPTIONS from a fresh socket, e.g. ``200 OK`` (or no response)."""
    client = Client(server)
    try:
        client.send(out_of_dialog(server.uri(), client.port, body))
        return client.receive(until_final=True, wait_s=FINAL_WAIT_S).describe()
    finally:
        client.close()


@pytest.fixture
def rtp_sink() -> Iterator[int]:
    """A reserved loopback port that takes the RTP of the INVITEs the server answers."""
    port = free_port("udp")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    yield port
    sink.close()


def transaction_key(data: bytes) -> tuple[str, str, str] | None:
    """(branch, sent-by, method) of a request's top Via: its server transaction (RFC 3261
    §17.2.3). None when there is no branch (RFC 2543 matching)."""
    text = data.decode("latin-1")
    via = re.search(r"(?im)^(?:via|v)[ \t]*:[ \t]*(.*(?:\r\n[ \t].*)*)", text)
    if via is None:
        return None
    top = via.group(1).split(",")[0]
    branch = re.search(r"branch\s*=\s*([^;,\s]+)", top, re.I)
    sent_by = re.search(r"SIP\s*/\s*2\.0\s*/\s*\w+\s+([^;,\s]+)", top)
    if branch is None or sent_by is None:
        return None
    return branch.group(1), sent_by.group(1).lower(), text.split(" ", 1)[0]


def rounds(names: list[str]) -> list[list[str]]:
    """Split the messages so that no two in a round are one transaction.

    Three pairs (escnull/regescrt, unkscm/novelsc, cparam01/cparam02) share branch, sent-by
    and method: to one server the second is a retransmission of the first while that
    transaction lives (Timer J, 32 s), so it gets no answer of its own. Each round goes to a
    fresh server.
    """
    result: list[tuple[set[tuple[str, str, str]], list[str]]] = []
    for name in names:
        key = transaction_key(load(name)) if EXPECTED[name].parse == "request" else None
        slot = next((r for r in result if key is None or key not in r[0]), None)
        if slot is None:
            slot = (set(), [])
            result.append(slot)
        if key is not None:
            slot[0].add(key)
        slot[1].append(name)
    return [names for _, names in result]


def test_every_rfc4475_message_gets_the_expected_answer(
    sipbot_server: StartServer, rtp_sink: int, peers_tmp: Path
) -> None:
    rows: list[Row] = []
    servers = []
    config = one_source_config(peers_tmp / "config.yaml")  # one client address sends them all
    for names in rounds(list(EXPECTED)):
        servers.append(server := sipbot_server("-c", str(config)))
        rows += run_torture(server, names, rtp_sink)
    rows.sort(key=lambda row: list(EXPECTED).index(row[0]))
    failed = [r for r in rows if r[4]]
    assert not failed, f"{len(failed)} of {len(rows)} differ:\n{table(rows)}"
    assert len(rows) == len(EXPECTED) == 49
    for server in servers:
        assert options(server) == "200 OK"
        assert "Traceback" not in server.log()


# --- barrage during a call -------------------------------------------------------------------


def barrage(server: SipbotServer, rtp_port: int, rng: random.Random) -> int:
    """Random bytes, truncations of valid messages and oversize datagrams (no answers checked).

    INVITEs are only cut inside a body that Content-Length announces (→ 400): a cut elsewhere
    can leave a complete INVITE that sets up a call whose far end is a torture message's
    example.com Contact.
    """
    client = Client(server)
    sent = 0
    try:
        for i in range(300):
            data = rng.randbytes(rng.randrange(1, 2000))
            if i % 3 == 1:
                data = b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\n" + data
            elif i % 3 == 2:
                data = b"SIP/2.0 200 OK\r\n" + data
            client.send(data)
            sent += 1
            if i % 25 == 24:  # no faster than the server reads: nothing dropped unread
                time.sleep(0.02)
        valid = [n for n, e in EXPECTED.items() if e.parse in ("request", "response")]
        for name in valid:
            data = rtp_on_loopback(load(name), rtp_port)
            low = 1
            if is_invite(data):
                if not re.search(rb"(?im)^(content-length|l)[ \t]*:[ \t]*[1-9]", data):
                    continue  # inv2543 (RFC 2543): no Content-Length, any cut may be complete
                low = data.find(b"\r\n\r\n") + 5
            for cut in sorted(rng.sample(range(low, len(data)), min(5, len(data) - low))):
                client.send(data[:cut])
                sent += 1
            time.sleep(0.02)
        client.send(rng.randbytes(60_000))
        client.send(rng.randbytes(65_507))  # the largest UDP datagram
        sent += 2
    finally:
        client.close()
    return sent


@pytest.mark.requires_peers("sipp", "capture")
def test_a_malformed_message_barrage_leaves_a_live_call_and_the_answers_intact(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path, rtp_sink: int
) -> None:
    # the barrage, the torture set and the SIPp call all come from 127.0.0.1: no per-source
    # limit may drop the answers under test (a flood throttled by them: test_hostile_input_e2e)
    config = one_source_config(peers_tmp / "config.yaml")
    server = paced_server(sipbot_server, "-c", str(config))
    witness = StallWitness(peers_tmp)
    scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hold_s=ECHO_HOLD_S)
    uac = sipp.start_uac(server.address, scenario, peers_tmp, capture=True)
    wait_answer(uac)
    sent = barrage(server, rtp_sink, random.Random(4475))
    invalid = [n for n, e in EXPECTED.items() if e.section.startswith("3.1.2")]
    rows = run_torture(server, invalid, rtp_sink)  # the answers are still right, mid-call
    too_big = options(server, body=b"x" * 40_000)  # over sipbot's 32 kB body limit
    alive = options(server)
    result = uac.wait(ECHO_HOLD_S + 30)
    stalls = witness.stalls()
    result.assert_ok(calls=1)  # SIPp's BYE got its 200
    heard = bot_packets(result)
    assert_steady(heard, audio.PT_PCMU, int(ECHO_HOLD_S * 50) - 10, stalls)
    assert echo_score(speech, heard) >= ECHO_MIN_CORRELATION
    failed = [r for r in rows if r[4]]
    assert not failed, f"after {sent} bad datagrams:\n{table(rows)}"
    assert too_big == "413 Request Entity Too Large"
    assert alive == "200 OK"
    log = server.log()
    assert "Traceback" not in log
    assert len(log.splitlines()) < 100, "per-packet problems must be rate-limited"
