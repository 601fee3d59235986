"""Faults while ten calls talk, against a real ``sipbot run`` (issue 12).

One server and one set of :data:`~tests.e2e.faults.FAULT_CALLS` SIPp calls (the speech on a
loop, recorded, with records) meet the faults in sequence, each while every call talks:

1. the RFC 4475 torture messages from the trunk's address, each answered as it should be;
2. 10,000 malformed SIP datagrams (1,500/s) from 100 other addresses (random bytes, cut
   messages, lines without a colon, numbers out of range, a Content-Length that lies, 1-60 kB
   headers);
3. an INVITE + OPTIONS flood from one address no trunk trusts (1,500 messages at 500/s): cut
   to the per-source rate, the rest dropped unparsed, the parsed INVITEs refused (403);
4. garbage, foreign SSRCs and payload types and a burst flood at every call's RTP port from a
   foreign source (the bounded inbound queue drops what it cannot take, and says so once);
5. SIGHUP with a broken dialplan: one error line, the previous dialplan kept, calls untouched;
6. SIGTERM (drain): OPTIONS and new INVITEs get 503 at once, the calls go on to their BYE,
   and the server exits 0.

Afterwards, for the ten calls: the outbound cadence held (p99 gap <= 22 ms, continuous
sequence numbers and timestamps), each has its record (CDR line and database row,
``bye-received``), each recording is closed and plays, the log named each kind of problem a
bounded number of times and holds no traceback.

A second server, ten calls to the emulated OpenAI Realtime model (real SDK), one fault per
caller turn: tools that hang (timed out after 2 s, one line per 10 s for all calls), raise (one
traceback per 10 s for all calls)
and return 4 MB; a reply that stalls 2.5 s mid-way, one that answers slowly (600 ms), a 4 MB
frame (over the adapter's 1 MiB limit: the connection ends, the call reconnects and goes on), a
frame that is not JSON, and the socket dropped mid-reply without a close frame (the call
reconnects and goes on); the caller turns are counted per call across its reconnections, so
each fault fires once in every call;
the recordings directory replaced by a file mid-call, and the records database full (a full
disk). The same checks, but the records: each call has its CDR line, the loss is logged once.
"""

from __future__ import annotations

import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bench._calls import CLOCK_TICKS, cpu_ticks
from sipbot.emulators.script import EmulatorScript, ReplyFault, ToolCallRule
from tests.e2e.calls import caller_turns
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.faults import (
    FAULT_CALLS,
    SETTLE_S,
    assert_cadence,
    assert_recordings,
    count_lines,
    live_calls,
    records_of,
    rtp_attack,
    send_malformed,
    sipp_call_ids,
)
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.capture import stream_stats
from tests.e2e.test_call_path import StallWitness, bot_packets, cdr_lines, favour
from tests.e2e.test_hostile_input_e2e import Flood, rtp_ports
from tests.e2e.test_records_e2e import SCHEMA_PAGES
from tests.e2e.test_rfc4475_server import EXPECTED, options, rounds, run_torture, table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HOLD_S = 32.0  # the calls outlast faults 1-5 and the start of the drain
MALFORMED, MALFORMED_RATE = 10_000, 1_500.0
FLOOD_MESSAGES, FLOOD_RATE = 1500, 500.0
SIGTERM_AT_S = 24.0  # after the calls' audio started: the drain begins ~5 s before the BYEs
EXIT_WAIT_S = 15.0
QUIET_S = 2.0  # the calls alone after the faults, before the drain
CONTROL_S = 3.0  # the calls alone, before the first fault: what the machine allows now
DRAIN_MEASURED_S = 3.0  # the cadence is measured this long into the drain (the BYEs come later)


def fault_config(path: Path, recordings: Path) -> Path:
    return write_dialplan(
        path,
        {
            "server": {
                "recordings_dir": str(recordings),
                "limits": {"drain_timeout_s": 30},
            },
            # the callers and the torture set come from the trunk (no per-source limits)
            "trunks": {"pbx": {"source": ["127.0.0.1/32"]}},
            "agents": {"echo": {"provider": "local", "recording": True}},
            "routes": [
                {"name": "pbx", "answer": "echo"},
            ],
        },
    )


@pytest.mark.requires_peers("sipp", "capture")
def test_ten_calls_keep_talking_through_signalling_media_reload_and_drain_faults(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    recordings = peers_tmp / "recordings"
    recordings.mkdir()
    config = fault_config(peers_tmp / "faults.yaml", recordings)
    good = config.read_text()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the torture calls' RTP goes here
    sink.bind(("127.0.0.1", 0))
    try:
        server = sipbot_server("-c", str(config))
        favour(server.pid)
        witness = StallWitness(peers_tmp)
        started = time.monotonic()
        uac = live_calls(server, speech, peers_tmp, hold_s=HOLD_S, name="faults")
        ports = rtp_ports(server.pid)
        marks = [("control", time.time())]
        cpu = [cpu_ticks(server.pid)]
        time.sleep(CONTROL_S)
        marks.append(("torture", time.time()))
        cpu.append(cpu_ticks(server.pid))
        # 1. the RFC 4475 set (the first round: no two messages are one transaction)
        torture = run_torture(server, rounds(list(EXPECTED))[0], sink.getsockname()[1])
        marks.append(("malformed", time.time()))
        cpu.append(cpu_ticks(server.pid))
        # 2. malformed datagrams
        malformed = send_malformed(server, MALFORMED, MALFORMED_RATE)
        marks.append(("flood", time.time()))
        cpu.append(cpu_ticks(server.pid))
        # 3. INVITE + OPTIONS flood from one source
        flood = Flood(server, FLOOD_MESSAGES, FLOOD_RATE, options_every=2)
        try:
            flood.start()
            flood.join(FLOOD_MESSAGES / FLOOD_RATE + 20)
            flood.drain()
        finally:
            flood.close()
        # 4. RTP garbage, foreign SSRCs, floods at every call's port
        marks.append(("rtp", time.time()))
        cpu.append(cpu_ticks(server.pid))
        rtp_sent = rtp_attack(ports, random.Random(12))
        marks.append(("sighup", time.time()))
        cpu.append(cpu_ticks(server.pid))
        # 5. SIGHUP with a broken dialplan, then the good one back
        config.write_text(good + "\nroutes: [unclosed\n")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the previous dialplan" in server.log(), 5.0, "reload error")
        alive_after_reload = options(server)
        config.write_text(good)
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "dialplan reloaded" in server.log(), 5.0, "reloaded")
        faults_done = time.monotonic() - started
        marks.append(("quiet", time.time()))
        cpu.append(cpu_ticks(server.pid))
        # 6. SIGTERM: drain while the calls talk
        time.sleep(max(QUIET_S, SIGTERM_AT_S - faults_done))
        marks.append(("sigterm", time.time()))
        cpu.append(cpu_ticks(server.pid))
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining:" in server.log(), 5.0, "the drain")
        while_draining = options(server)
        time.sleep(max(0.0, marks[-1][1] + DRAIN_MEASURED_S - time.time()))
        cpu.append(cpu_ticks(server.pid))
        result = uac.wait(HOLD_S + 40)
        code = server.process.wait(EXIT_WAIT_S)
        stalls = witness.stalls()
    finally:
        sink.close()
    result.assert_ok(calls=FAULT_CALLS)
    # each fault's span, the drain's first seconds (the BYEs come later), and the control
    ends = [t for _, t in marks[1:]] + [marks[-1][1] + DRAIN_MEASURED_S]
    phases = [(name, start, end) for (name, start), end in zip(marks, ends, strict=True)]
    heard = bot_packets(result)
    assert len(stream_stats(heard)) == FAULT_CALLS
    summary = (
        f"faults 1-5 took {faults_done:.1f} s; {malformed} malformed, flood {flood.sent} "
        f"({sorted({s for f in flood.finals.values() for s in f})}), {rtp_sent} RTP"
    )
    failed = [r for r in torture if r[4]]
    assert not failed, f"{summary}\n{table(torture)}"
    assert (alive_after_reload, while_draining) == ("200 OK", "503 Service Unavailable")
    assert code == 0, summary
    # every call its record: the CDR line and the database row
    ids = sipp_call_ids(result)
    assert len(ids) == FAULT_CALLS
    cdrs = {c["call_id"]: c["reason"] for c in cdr_lines(server)}
    assert {i: cdrs.get(i) for i in ids} == dict.fromkeys(ids, "bye-received"), cdrs
    rows = records_of(peers_tmp / "data")
    assert {i: rows.get(i) for i in ids} == dict.fromkeys(ids, ("answered", "bye-received"))
    assert_recordings(recordings, ids, HOLD_S - 1.0)
    # the flood: refused by its route while under its rate, the rest dropped unparsed
    assert flood.sent == FLOOD_MESSAGES
    invite_finals = {s for cid, f in flood.finals.items() if "opt" not in cid for s in f}
    assert invite_finals == {403}, summary
    log = server.log()
    assert "Traceback" not in log
    assert count_lines(log, r"keeping the previous dialplan") == 1
    assert 1 <= count_lines(log, r"over the per-source rate from 127\.0\.0\.2") <= 2, summary
    assert count_lines(log, r"RTP receive queue full") <= 2 * FAULT_CALLS
    assert len(log.splitlines()) < 400, f"{len(log.splitlines())} log lines; {summary}"
    # last, the cadence (the checks above hold however loaded the machine is)
    busy = {  # the server's CPU (cores) during each phase
        name: round((b - a) / CLOCK_TICKS / (end - start), 2)
        for (name, start, end), a, b in zip(phases, cpu[:-1], cpu[1:], strict=True)
    }
    try:
        figures = assert_cadence(heard, phases, stalls)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver CPU (cores) per phase: {busy}") from None
    print(f"gap p99 (ms) { ({k: round(v, 1) for k, v in figures.items()}) }; CPU {busy}; {summary}")


TOOLS_MODULE = '''\
"""Tools that misbehave (the fault suite's own module, next to its dialplan)."""

import asyncio

from sipbot.tools import tool


@tool
async def hang(order_id: str) -> str:
    """Never answers.

    Args:
        order_id: the order number.
    """
    await asyncio.sleep(3600)
    return "never"


@tool
async def explode(order_id: str) -> str:
    """Raises.

    Args:
        order_id: the order number.
    """
    raise RuntimeError("the archive is on fire")


@tool
async def flood(order_id: str) -> str:
    """Returns megabytes.

    Args:
        order_id: the order number.
    """
    return "x" * 4_000_000
'''
PROVIDER_HOLD_S = 24.0
CALLER_TURNS = 8  # a turn every 1.8 s: each fault below has its turn
TOOL_TIMEOUT_S = 2.0
FULL_DB_PAGES = SCHEMA_PAGES  # the empty schema's pages: no record fits


def provider_faults() -> EmulatorScript:
    """One misbehaviour per caller turn, counted for the whole call across its reconnections
    (``turns_per_call``: the prompt names the call), so each fault fires once per call."""
    return EmulatorScript(
        reply="tone",
        reply_ms=800,
        reply_text="y" * 6000,  # a transcript line longer than a page of the full database
        speed=1.0,
        chunk_ms=100,
        vad_silence_ms=300,
        first_audio_delay_ms=600,  # answers slowly, every turn
        tool_calls=(
            ToolCallRule("hang", {"order_id": "1"}, on_turn=1),
            ToolCallRule("explode", {"order_id": "2"}, on_turn=2),
            ToolCallRule("flood", {"order_id": "3"}, on_turn=3),
        ),
        reply_faults=(
            ReplyFault("stall", on_turn=4, stall_ms=2500),
            ReplyFault("oversized", on_turn=5, size_kb=4096),
            ReplyFault("malformed", on_turn=6),
            ReplyFault("drop", on_turn=7),
        ),
        turns_per_call=True,
    )


def session_call(received: list[dict[str, Any]]) -> str | None:
    """The call an OpenAI session served: its instructions (the prompt names the call)."""
    for frame in received:
        if frame.get("type") == "session.update":
            instructions = (frame.get("session") or {}).get("instructions")
            if isinstance(instructions, str):
                return instructions
    return None


@pytest.mark.requires_peers("sipp", "capture")
def test_ten_calls_keep_talking_through_provider_tool_and_storage_faults(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    """A model that stalls, answers slowly, sends a broken and a 4 MB frame and drops the socket
    mid-reply; tools that hang, raise and return 4 MB; the recordings directory gone mid-call."""
    (peers_tmp / "fault_tools.py").write_text(TOOLS_MODULE)
    recordings = peers_tmp / "recordings"
    recordings.mkdir()
    turns = caller_turns(peers_tmp / "turns.ulaw", CALLER_TURNS, tail_ms=4000)
    with EmulatorThread("openai", provider_faults()) as model:
        agent = model.agent(
            prompt="Orders. Call {call_id}.",  # one turn count per call (turns_per_call)
            tools=["hang", "explode", "flood"],
            tool_timeout_s=TOOL_TIMEOUT_S,
            recording=True,
        )
        config = write_dialplan(
            peers_tmp / "provider-faults.yaml",
            {
                "server": {
                    "recordings_dir": str(recordings),
                    # the records database is full from the start (a full disk)
                    "records": {
                        "url": f"sqlite:///{peers_tmp / 'full.sqlite3'}",
                        "max_size_mb": FULL_DB_PAGES * 4096 / 2**20,
                    },
                },
                "agents": {"model": agent},
                "tools": {
                    name: {"python": f"fault_tools:{name}"} for name in ("hang", "explode", "flood")
                },
                "routes": [{"answer": "model"}],
            },
        )
        server = sipbot_server("-c", str(config), env=server_env())
        server.check_exit = False  # the broken tool's traceback is expected: checked below
        favour(server.pid)
        witness = StallWitness(peers_tmp)
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", turns, hold_s=PROVIDER_HOLD_S)
        uac = sipp.start_uac(
            server.address, scenario, peers_tmp, calls=FAULT_CALLS, rate=50.0,
            timeout_s=PROVIDER_HOLD_S + 40, capture=True, name="model-calls",
        )  # fmt: skip
        wait_until(lambda: len(rtp_ports(server.pid)) >= FAULT_CALLS, 15.0, "the calls up")
        time.sleep(SETTLE_S)  # setting up ten calls at once is no fault
        started = time.time()
        time.sleep(CONTROL_S)  # the control: the calls' first seconds
        # the recordings directory goes away mid-call (the open files keep being written)
        recordings.rename(peers_tmp / "recordings-moved")
        recordings.write_text("not a directory")
        result = uac.wait(PROVIDER_HOLD_S + 40)
        stalls = witness.stalls()
        sessions = model.session_count
        code = server.process.stop(timeout=15.0, signum=signal.SIGTERM)
        closes = model.close_codes()
        calls_of = [session_call(model.received(i)) for i in range(len(closes))]
        outputs = [r["output"] for i in range(len(closes)) for r in model.tool_results(i)]
    result.assert_ok(calls=FAULT_CALLS)
    assert code == 0
    ids = sipp_call_ids(result)
    cdrs = {c["call_id"]: c["reason"] for c in cdr_lines(server)}
    assert {i: cdrs.get(i) for i in ids} == dict.fromkeys(ids, "bye-received"), cdrs
    assert_recordings(peers_tmp / "recordings-moved", ids, PROVIDER_HOLD_S - 1.0)
    assert sessions >= FAULT_CALLS, sessions
    log = server.log()
    # the tools: each call's hang timed out, its explode and 4 MB flood were answered; the
    # timeout and the explode traceback are each logged once per 10 s for all calls, and no
    # other traceback
    timed_out = {"error": "the tool hang did not answer in time"}
    assert outputs.count(timed_out) == FAULT_CALLS, outputs.count(timed_out)
    timeouts = count_lines(log, r"tool hang \(\S+\) timed out after 2\.0 s")
    assert 1 <= timeouts <= 3, timeouts
    raised = count_lines(log, r"tool explode \(\S+\) raised")
    assert 1 <= raised <= 3, raised
    assert log.count("Traceback") == raised
    assert count_lines(log, r"tool flood \(\S+\) called with") >= FAULT_CALLS
    # the full records database: every call still has its CDR line; the loss is said once
    assert 1 <= log.count("call records lost") <= 2, log.count("call records lost")
    # the 4 MB frame is over the adapter's frame limit: the connection ends, the call reconnects
    assert count_lines(log, r"connection ended \(.*1009 \(message too big\)") >= 1
    # every call's socket was dropped mid-reply once (no close frame) and the call reconnected
    dropped = [calls_of[i] for i, c in enumerate(closes) if c == 1006]
    assert None not in dropped, calls_of
    assert len(set(dropped)) == len(dropped) == FAULT_CALLS, closes
    for call in dropped:
        later = [i for i, c in enumerate(calls_of) if c == call]
        assert closes[later[-1]] != 1006, (call, [closes[i] for i in later])
    assert sessions >= 3 * FAULT_CALLS, sessions  # the first, after the 4 MB frame, after the drop
    heard = bot_packets(result)
    phases = [
        ("control", started, started + CONTROL_S),
        ("faults", started + CONTROL_S, started + 16.0),
    ]
    figures = assert_cadence(heard, phases, stalls)
    print(f"gap p99 (ms) {figures}; provider sessions {sessions}; {len(log.splitlines())} lines")
