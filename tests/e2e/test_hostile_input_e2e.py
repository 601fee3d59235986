"""End to end: hostile and sloppy SIP input against a real ``sipbot run`` (issue 14).

- A flood of 600 well-formed INVITEs that never ACK, from one address (127.0.0.2) at 200/s,
  while a SIPp caller on another address (127.0.0.1) sets up its call: that call is answered and
  keeps its outbound cadence; the flood is cut to ``limits.per_source_rps`` (the rest dropped
  unparsed), gets at most ``limits.per_source_calls`` calls (503 for the rest), opens no
  provider session (the emulator its calls are routed to records none: a session opens only
  after the ACK) and holds at most that many RTP ports, which the ack-timeout (64·T1) releases.
- A flood of 2,000 INVITEs and OPTIONS at 400/s from an address no trunk trusts (issue 9),
  while a trunk's caller talks: the flood's INVITEs are refused (403, or dropped unparsed over
  the per-source rate), none is answered, it opens no provider session and no RTP port, and the
  trunk's call keeps its cadence.
- A caller whose BYE carries an empty ``Route:`` (SIPp's ``[routes]`` with no route set, as a
  public interop suite sends it) gets 200 and the call record says ``bye-received``.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from sipbot.emulators.script import EmulatorScript
from sipbot.sip.message import SipRequest, parse_message
from tests.e2e.conftest import SipbotServer, StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.ports import free_port, udp_ports_of
from tests.e2e.test_call_path import (
    ECHO_HOLD_S,
    StallWitness,
    assert_steady,
    bot_packets,
    cdr_lines,
    favour,
)
from tests.e2e.test_media_robustness import wait_answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FLOOD_HOST = "127.0.0.2"  # another source address on loopback (127.0.0.0/8)
FLOOD_INVITES = 600
FLOOD_RATE = 200.0  # INVITEs per second
PER_SOURCE_CALLS = 5
ACK_TIMEOUT_S = 64 * 0.5  # 64·T1 with the default T1: the flood's answered calls end then
CALL_HOLD_S = 8.0  # the SIPp call outlives the flood (3 s)
RTP_RANGE = (10000, 19999)  # tests.e2e.peers.ports.E2E_RTP_PORTS
FLOOD_SDP = (
    "v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\n"
)


def flood_invite(i: int, host: str, port: int, target: str, media_port: int) -> bytes:
    sdp = FLOOD_SDP.format(host=host, port=media_port)
    return (
        f"INVITE sip:bot@{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-flood-{i};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:scanner@{host}>;tag=f{i}\r\n"
        f"To: <sip:bot@{target}>\r\n"
        f"Call-ID: flood-{i}@{host}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:scanner@{host}:{port}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def flood_options(i: int, host: str, port: int, target: str) -> bytes:
    return (
        f"OPTIONS sip:bot@{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-opt{i}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:scanner@{host}>;tag=o{i}\r\n"
        f"To: <sip:bot@{target}>\r\n"
        f"Call-ID: flood-opt-{i}@{host}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Flood:
    """Sends the INVITEs from :data:`FLOOD_HOST` at a fixed rate in a thread; never ACKs.

    ``options_every``: every n-th message is an OPTIONS instead (0: INVITEs only).

    ``finals`` maps each Call-ID to the final statuses it got; ``max_ports`` is the most RTP
    ports the server held at once while the flood ran (sampled every 20 INVITEs).
    """

    def __init__(
        self,
        server: SipbotServer,
        count: int = FLOOD_INVITES,
        rate: float = FLOOD_RATE,
        options_every: int = 0,
    ) -> None:
        self.server = server
        self.count, self.rate, self.options_every = count, rate, options_every
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((FLOOD_HOST, 0))
        self.sock.setblocking(False)
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # RTP sink, never read
        self.media.bind((FLOOD_HOST, 0))
        self.finals: dict[str, list[int]] = {}
        self.max_ports = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the flood did not finish"

    def close(self) -> None:
        self.sock.close()
        self.media.close()

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            status = re.match(rb"SIP/2\.0 (\d{3}) ", data)
            call_id = re.search(rb"\r\nCall-ID: (\S+)\r\n", data)
            if status and call_id and int(status.group(1)) >= 200:
                self.finals.setdefault(call_id.group(1).decode(), []).append(int(status.group(1)))

    def _run(self) -> None:
        port = self.sock.getsockname()[1]
        media_port = self.media.getsockname()[1]
        start = time.monotonic()
        for i in range(self.count):
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.options_every and i % self.options_every == 0:
                message = flood_options(i, FLOOD_HOST, port, self.server.address)
            else:
                message = flood_invite(i, FLOOD_HOST, port, self.server.address, media_port)
            self.sock.sendto(message, (self.server.host, self.server.port))
            self.sent += 1
            self.drain()
            if i % 20 == 0:
                self.max_ports = max(self.max_ports, len(rtp_ports(self.server.pid)))
        self.drain()


def rtp_ports(pid: int) -> set[int]:
    """The UDP ports in the server's RTP range that process ``pid`` holds sockets on."""
    return {port for port in udp_ports_of(pid) if RTP_RANGE[0] <= port <= RTP_RANGE[1]}


@pytest.mark.requires_peers("sipp", "capture")
def test_an_invite_flood_from_one_source_costs_no_provider_session_and_others_keep_working(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    with EmulatorThread("openai", EmulatorScript(reply="echo", speed=4.0)) as emulator:
        config = write_dialplan(
            peers_tmp / "flood.yaml",
            {
                "server": {"limits": {"max_calls": 100, "per_source_calls": PER_SOURCE_CALLS}},
                # the flood's calls go to the emulated model, whose sessions are counted; the
                # SIPp caller's to the local echo (its cadence is what is measured)
                "agents": {"model": emulator.agent(), "echo": {"provider": "local"}},
                "routes": [
                    {"name": "flood", "match": {"source": [FLOOD_HOST]}, "answer": "model"},
                    {"name": "others", "answer": "echo"},
                ],
            },
        )
        server = sipbot_server("-c", str(config), env=server_env())
        favour(server.pid)
        witness = StallWitness(peers_tmp)
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hold_s=CALL_HOLD_S)
        uac = sipp.start_uac(
            server.address, scenario, peers_tmp, timeout_s=CALL_HOLD_S + 30, capture=True
        )
        wait_answer(uac)
        flood = Flood(server)
        try:
            flood.start()
            flood.join(FLOOD_INVITES / FLOOD_RATE + 20)
            flood_ended = time.monotonic()
            result = uac.wait(CALL_HOLD_S + 40)
            stalls = witness.stalls()
            # the answered flood calls end at their ack-timeout and give their ports back
            wait_until(
                lambda: not rtp_ports(server.pid),
                ACK_TIMEOUT_S + 10.0,
                "the flood calls' RTP ports released at the ack-timeout",
            )
            released_after = time.monotonic() - flood_ended
            flood.drain()
        finally:
            flood.close()
        sessions = emulator.session_count
    result.assert_ok(calls=1)
    assert_steady(bot_packets(result), audio.PT_PCMU, int(CALL_HOLD_S * 40), stalls)
    answered = [cid for cid, finals in flood.finals.items() if 200 in finals]
    refused = [cid for cid, finals in flood.finals.items() if 503 in finals]
    log = server.log()
    summary = (
        f"sent {flood.sent}, answered {len(answered)}, 503 {len(refused)}, "
        f"max RTP ports {flood.max_ports}, released after {released_after:.1f} s"
    )
    assert flood.sent == FLOOD_INVITES, summary
    assert len(answered) <= PER_SOURCE_CALLS, summary
    # the rest: 503 while under the message rate (a burst of 100, then 50/s), else no answer
    assert 100 <= len(refused) <= FLOOD_INVITES - 300, summary
    assert flood.max_ports <= PER_SOURCE_CALLS + 1, summary  # + the SIPp call's
    # one log line per kind and 10 s, never one per INVITE
    call_lines = re.findall(r"calls from 127\.0\.0\.2 rejected: .*per_source_calls", log)
    rate_lines = re.findall(r"over the per-source rate from (\S+)", log)
    assert 1 <= len(call_lines) <= 2, call_lines
    assert 1 <= len(rate_lines) <= 2, rate_lines
    assert set(rate_lines) == {FLOOD_HOST}, rate_lines
    # only the admitted calls have lines of their own (route, RTP, answered, no ACK, CDR)
    assert len(re.findall(r"flood-\d+@", log)) <= 6 * PER_SOURCE_CALLS
    assert "Traceback" not in log
    assert sessions == 0, f"{sessions} provider sessions for the flood's calls; {summary}"


TRUST_FLOOD_MESSAGES = 2000
TRUST_FLOOD_RATE = 400.0  # messages per second: 5 s of flood


@pytest.mark.requires_peers("sipp", "capture")
def test_a_flood_from_an_untrusted_source_is_refused_while_a_trunk_call_keeps_its_cadence(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    """Issue 9: 2,000 INVITEs and OPTIONS from an address no trunk trusts, during a call from
    the trunk's address (exempt from the per-source limits)."""
    with EmulatorThread("openai", EmulatorScript(reply="echo", speed=4.0)) as emulator:
        config = write_dialplan(
            peers_tmp / "trust-flood.yaml",
            {
                "server": {"trust": {"unknown_sources": "reject"}},
                "trunks": {"pbx": {"source": ["127.0.0.1/32"]}},
                # were the flood admitted, its calls would reach the emulated model
                "agents": {"model": emulator.agent(), "echo": {"provider": "local"}},
                "routes": [
                    {"name": "flood", "match": {"source": [FLOOD_HOST]}, "answer": "model"},
                    {"name": "pbx", "match": {"trunk": "pbx"}, "answer": "echo"},
                ],
            },
        )
        server = sipbot_server("-c", str(config), env=server_env())
        favour(server.pid)
        witness = StallWitness(peers_tmp)
        hold_s = TRUST_FLOOD_MESSAGES / TRUST_FLOOD_RATE + 5.0
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hold_s=hold_s)
        uac = sipp.start_uac(
            server.address, scenario, peers_tmp, timeout_s=hold_s + 30, capture=True
        )
        wait_answer(uac)
        flood = Flood(server, TRUST_FLOOD_MESSAGES, TRUST_FLOOD_RATE, options_every=2)
        try:
            flood.start()
            flood.join(TRUST_FLOOD_MESSAGES / TRUST_FLOOD_RATE + 20)
            result = uac.wait(hold_s + 40)
            stalls = witness.stalls()
            flood.drain()
        finally:
            flood.close()
        sessions = emulator.session_count
    result.assert_ok(calls=1)
    packets = bot_packets(result)
    assert_steady(packets, audio.PT_PCMU, int(hold_s * 40), stalls)
    invite_finals = [
        status
        for cid, finals in flood.finals.items()
        if not cid.startswith("flood-opt-")
        for status in finals
    ]
    summary = (
        f"sent {flood.sent}, INVITE finals {sorted(set(invite_finals))} x{len(invite_finals)},"
        f" max RTP ports {flood.max_ports}"
    )
    assert flood.sent == TRUST_FLOOD_MESSAGES, summary
    assert invite_finals, summary  # those under the per-source rate were parsed and refused
    assert set(invite_finals) == {403}, summary
    assert flood.max_ports <= 1, summary  # the trunk call's own port only
    log = server.log()
    assert len(re.findall(r"refused INVITE from 127\.0\.0\.2", log)) <= 2, summary
    assert "Traceback" not in log
    assert sessions == 0, f"{sessions} provider sessions for the flood; {summary}"


@pytest.mark.requires_peers("sipp")
def test_a_bye_with_an_empty_route_header_ends_the_call(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server = sipbot_server()
    scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hold_s=ECHO_HOLD_S)
    text = scenario.read_text()
    bye = "CSeq: 2 BYE\n      [routes]\n"
    assert bye in text
    scenario.write_text(text.replace(bye, "CSeq: 2 BYE\n      Route: \n"))
    result = sipp.run_uac(server.address, scenario, peers_tmp, timeout_s=ECHO_HOLD_S + 20)
    result.assert_ok(calls=1)  # SIPp expects the 200 to its BYE; a 400 fails the call
    assert re.search(r"^Route: *\r?$", result.messages(), re.M), "SIPp sent no empty Route"
    records = wait_until(lambda: cdr_lines(server), 5.0, "the call record")
    assert [r["reason"] for r in records] == ["bye-received"]


def test_flood_invites_are_well_formed() -> None:
    """The flood's INVITE parses as one (so the server's refusals are about load, not syntax)."""
    port = free_port("udp")
    message = parse_message(flood_invite(7, FLOOD_HOST, port, "127.0.0.1:5060", port + 2))
    assert isinstance(message, SipRequest)
    assert (message.method, message.call_id) == ("INVITE", f"flood-7@{FLOOD_HOST}")
