"""End to end: sipbot places calls (``Server.dial``) to real callees on loopback.

The server runs in the test's event loop (the Python API is what is tested: ``await
server.dial(...)``); the callees are SIPp UAS processes playing the scenarios in
``tests/e2e/scenarios/outbound/`` (busy, no answer, early media, digest challenge, 503), a
plain UDP socket that never answers, and, for the greeting, a SIPp UAS whose RTP is captured.
Blocking peer calls run in threads so the server keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbot.config import load_config
from sipbot.emulators.script import EmulatorScript
from sipbot.errors import DialError, DialRefused
from sipbot.outbound import DialRequest, DialStatus
from sipbot.server import Server
from tests.e2e.emulated import ToolService, server_env, write_dialplan
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.capture import RtpCapture, select
from tests.e2e.peers.ports import free_port
from tests.e2e.provider_calls import RecordedEmulator, encode_ulaw, loud_runs, pcm_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60), pytest.mark.requires_peers("sipp")]

SCENARIOS = Path(__file__).parent / "scenarios" / "outbound"
RING_S = 1.5  # the ring timeout of these tests
END_BOUND_S = 10.0  # every call below ends within this
CALLER_ID = "+15550100"


@dataclass
class Bot:
    """A sipbot server in this event loop, and the statuses of the calls it placed."""

    server: Server
    statuses: dict[str, list[DialStatus]] = field(default_factory=dict)

    def on_status(self, status: DialStatus) -> None:
        self.statuses.setdefault(status.call_id, []).append(status)

    async def dial(self, to: str, **keys: Any) -> str:
        keys.setdefault("agent", "bot")
        return await self.server.dial(DialRequest(to=to, **keys), on_status=self.on_status)

    async def ended(self, call_id: str, bound_s: float = END_BOUND_S) -> list[DialStatus]:
        """The call's statuses once it reached ``ended`` (bounded)."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            got = self.statuses.get(call_id, [])
            if got and got[-1].state == "ended":
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{call_id} did not end in {bound_s} s: {self.statuses.get(call_id)}")

    async def record(self, call_id: str) -> dict[str, Any]:
        """The call's record, once the writer stored it (bounded)."""
        writer = self.server.records
        assert writer is not None
        for _ in range(100):
            await writer.flush()
            found = [r for r in writer.store.list_calls() if r["call_id"] == call_id]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no record for {call_id}")


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def bot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartBot]:
    """``await bot(trunk_keys, agent_keys, env, t1_ms)``: a started server with trunk
    ``carrier``."""
    started: list[Server] = []
    recordings = tmp_path / "recordings"  # agents with ``recording: true`` record here
    recordings.mkdir()

    async def start(
        trunk: dict[str, Any] | None = None,
        agent: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        t1_ms: int = 500,
    ) -> Bot:
        config = {
            "server": {
                "sip": {
                    "listen": [f"udp:127.0.0.1:{free_port('udp')}"],
                    "timers": {"t1_ms": t1_ms},
                },
                "media": {"rtp_ports": "10000-19999", "codecs": ["PCMU"]},
                "data_dir": str(tmp_path / "data"),
                "recordings_dir": str(recordings),
                "http": False,
            },
            "agents": {"bot": {"provider": "local", "max_duration_s": 2, **(agent or {})}},
            "routes": [{"name": "default", "answer": "bot"}],
        }
        if trunk is not None:
            config["trunks"] = {"carrier": trunk}
        path = write_dialplan(tmp_path / f"sipbot-{len(started)}.yaml", config)
        server = Server(load_config(str(path), environ={**(env or {})}))
        await server.start()
        started.append(server)
        return Bot(server)

    yield start
    for server in started:
        await server.stop()


def uas(
    tmp: Path, scenario: str, *, capture: bool = False, calls: int | None = None, **values: str
) -> sipp.Sipp:
    """A SIPp UAS playing ``scenarios/outbound/<scenario>.xml`` (``@@KEY@@`` from ``values``)."""
    text = (SCENARIOS / f"{scenario}.xml").read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    path = tmp / f"{scenario}.xml"
    path.write_text(text)
    name = f"uas-{scenario}"
    return sipp.start_uas(tmp, path, rtp_echo=False, capture=capture, calls=calls, name=name)


def _read_recording(path: Path) -> tuple[int, int, np.ndarray[Any, Any]]:
    """A call recording's permissions, rate and frames (caller, bot); it must be a 16-bit
    stereo WAV."""
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
        return path.stat().st_mode & 0o777, wav.getframerate(), frames


def _peak_hz(samples: np.ndarray[Any, Any], rate: int) -> float:
    """The loudest frequency of ``samples``."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


def states(statuses: list[DialStatus]) -> list[str]:
    return [s.state for s in statuses]


def trunk_to(callee: sipp.Sipp, **keys: Any) -> dict[str, Any]:
    return {"outbound": {"proxy": f"sip:{callee.address}", "caller_id": CALLER_ID, **keys}}


# --------------------------------------------------------------------------- answered


def sip_capture(tmp: Path, callee: sipp.Sipp) -> RtpCapture:
    """dumpcap on the callee's SIP port (kernel timestamps: what left and arrived when)."""
    return RtpCapture.start(tmp, [callee.port], name="sip")


def wire_messages(capture: RtpCapture, port: int) -> list[tuple[float, str]]:
    """(epoch seconds, "INVITE"/"ACK"/"100"/"180"/...) of every SIP message to or from
    ``port`` in the (stopped) capture, in order (tshark decodes it)."""
    fields = ["frame.time_epoch", "sip.Method", "sip.Status-Code"]
    argv = ["tshark", "-r", str(capture.stop()), "-d", f"udp.port=={port},sip", "-Y", "sip"]
    argv += ["-T", "fields", *(x for f in fields for x in ("-e", f))]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return [(float(when), method or status) for when, method, status in rows]


@pytest.mark.requires_peers("capture", "tshark")
async def test_the_callee_hears_the_greeting_and_the_record_says_answered(
    bot: StartBot, tmp_path: Path
) -> None:
    script = EmulatorScript(reply="tone", tone_hz=600.0, reply_ms=900, speed=1.0)
    with RecordedEmulator("openai", script) as emu:
        callee = uas(tmp_path, "answer", capture=True)
        wire = sip_capture(tmp_path, callee)
        b = await bot(
            trunk_to(callee),
            emu.agent(greeting="Hello {var.name}, this is the clinic.", max_duration_s=3),
            server_env(),
        )
        call_id = await b.dial("alice", variables={"name": "Alice"})
        got = await b.ended(call_id)
        result = await asyncio.to_thread(callee.stop)
        record = await b.record(call_id)
        sent = emu.sent(0)
        instructions = next(
            f["session"]["instructions"] for f in emu.received(0) if f["type"] == "session.update"
        )
    assert states(got) == ["queued", "trying", "ringing", "answered", "ended"]
    answered = got[3]
    assert (answered.sip_code, got[2].sip_code) == (200, 180)
    # the model knows it placed the call, and to whom; the greeting has the variable
    assert "You placed this phone call to alice" in instructions
    # what the callee heard is what the emulator sent (G.711 pass-through)
    deltas = [f["delta"] for f in sent if f.get("type") == "response.output_audio.delta"]
    spoken = audio.decode_ulaw(b"".join(base64.b64decode(d) for d in deltas))
    assert result.capture is not None
    inbound = select(result.capture.packets(), dst_port=callee.media_port, audio_only=True)
    runs = loud_runs(inbound)
    assert runs, "the callee heard nothing"
    heard, rate = pcm_of(runs[0])
    assert audio.correlation(spoken, heard, 8000, rate) >= 0.9
    # the record: outbound, answered at the moment of the 2xx
    assert record["direction"] == "outbound"
    assert record["dial_state"] == "answered"
    assert record["outcome"] == "answered"
    assert record["sip_status"] == 200
    assert record["answered"] == pytest.approx(answered.at)
    assert record["ringing"] == pytest.approx(got[2].at)
    assert record["did"] == "alice"
    assert record["caller"] == CALLER_ID
    # on the wire: INVITE -> 100 -> 180 -> 200 -> ACK; "answered" is the moment of the 2xx
    timeline = wire_messages(wire, callee.port)
    assert [m for _, m in timeline[:5]] == ["INVITE", "100", "180", "200", "ACK"], timeline
    t0 = timeline[0][0]
    print("dial-to-answer on the wire (s):", [(m, round(t - t0, 4)) for t, m in timeline[:5]])
    assert 0 <= answered.at - timeline[3][0] < 0.1


# --------------------------------------------------------------------------- not answered


async def test_busy_is_busy_with_its_reason(bot: StartBot, tmp_path: Path) -> None:
    callee = uas(tmp_path, "busy")
    b = await bot(trunk_to(callee))
    started = time.time()
    call_id = await b.dial("bob")
    got = await b.ended(call_id)
    await asyncio.to_thread(callee.stop)
    assert states(got) == ["queued", "trying", "busy", "ended"]
    assert got[2].sip_code == 486
    assert got[2].reason == 'Q.850;cause=17;text="User busy"'
    assert got[-1].at - started < 2.0
    record = await b.record(call_id)
    assert (record["dial_state"], record["sip_status"]) == ("busy", 486)
    assert record["sip_reason"] == 'Q.850;cause=17;text="User busy"'
    assert record["answered"] is None


async def test_no_answer_is_cancelled_after_the_ring_timeout(bot: StartBot, tmp_path: Path) -> None:
    callee = uas(tmp_path, "no_answer", calls=1)
    b = await bot(trunk_to(callee, ring_timeout_s=RING_S))
    call_id = await b.dial("carol")
    got = await b.ended(call_id)
    result = await asyncio.to_thread(callee.wait, 10.0)
    assert states(got) == ["queued", "trying", "ringing", "no-answer", "ended"]
    assert RING_S - 0.05 <= got[3].at - got[1].at <= RING_S + 0.5
    assert result.ok, result.describe()  # SIPp got the CANCEL, answered 487 and got its ACK
    record = await b.record(call_id)
    assert (record["dial_state"], record["outcome"]) == ("no-answer", "failed")


async def test_early_media_is_accepted_then_the_call_is_answered(
    bot: StartBot, tmp_path: Path
) -> None:
    tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000)).astype(np.int16)
    early = tmp_path / "early.ulaw"
    early.write_bytes(encode_ulaw(tone))
    callee = uas(tmp_path, "early_media", EARLY_AUDIO=str(early))
    with RecordedEmulator("openai", EmulatorScript(reply="tone")) as emu:
        agent = emu.agent(max_duration_s=1.5, recording=True, greeting="Hello, the clinic.")
        b = await bot(trunk_to(callee), agent, server_env())
        call_id = await b.dial("dave")
        got = await b.ended(call_id)
        model_heard = emu.emulator.sessions[0].audio_in  # μ-law: G.711 pass-through
    await asyncio.to_thread(callee.stop)
    assert states(got) == ["queued", "trying", "ringing", "answered", "ended"]
    assert got[2].sip_code == 183
    assert got[3].at - got[2].at >= 0.9  # answered after the second of early media
    record = await b.record(call_id)
    assert record["dial_state"] == "answered"
    assert 500 <= record["early_media"] <= 1200  # ms of early audio received...
    # ... and none of it reached the model (the callee sends nothing after its 200)
    assert len(model_heard) < 800 or audio.rms_dbfs(audio.decode_ulaw(model_heard)) < -45
    # the agent records outbound calls as inbound ones: the early media, then the agent
    path = Path(record["recording_path"])
    assert path.parent == tmp_path / "recordings"
    mode, rate, frames = _read_recording(path)
    assert mode == 0o600
    callee_side, agent_side = frames[:, 0], frames[:, 1]
    assert _peak_hz(callee_side[: rate // 2], rate) == pytest.approx(1000, abs=20)  # early media
    assert audio.rms_dbfs(agent_side[: rate // 2]) < -60  # the agent was silent before the 2xx
    assert _peak_hz(agent_side, rate) == pytest.approx(440, abs=20)  # the agent's greeting
    assert audio.rms_dbfs(agent_side) > -30


async def test_a_407_challenge_is_answered_with_the_trunk_credentials(
    bot: StartBot, tmp_path: Path
) -> None:
    callee = uas(tmp_path, "auth")
    trunk = trunk_to(callee, auth_user="bot7", password="${CARRIER_PW}")
    b = await bot(trunk, env={"CARRIER_PW": "s3cret"})
    call_id = await b.dial("erin")
    got = await b.ended(call_id)
    result = await asyncio.to_thread(callee.stop)
    assert states(got) == ["queued", "trying", "ringing", "answered", "ended"]
    # the retried INVITE's digest (RFC 2617, MD5, no qop) is right for bot7 / s3cret
    log = result.messages_path.read_text()
    header = re.findall(r"^Proxy-Authorization: Digest (.*)$", log, re.M)[0]
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header))
    assert (fields["username"], fields["realm"], fields["uri"]) == (
        "bot7",
        "carrier.test",
        "sip:erin@127.0.0.1",
    )
    ha1 = hashlib.md5(b"bot7:carrier.test:s3cret").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:erin@127.0.0.1").hexdigest()
    expected = hashlib.md5(f"{ha1}:a1b2c3d4e5f60718:{ha2}".encode()).hexdigest()
    assert fields["response"] == expected


async def test_503_is_rejected_with_retry_after(bot: StartBot, tmp_path: Path) -> None:
    callee = uas(tmp_path, "unavailable")
    b = await bot(trunk_to(callee))
    call_id = await b.dial("frank")
    got = await b.ended(call_id)
    await asyncio.to_thread(callee.stop)
    assert states(got) == ["queued", "trying", "rejected", "ended"]
    assert (got[2].sip_code, got[2].reason) == (503, "Service Unavailable; retry after 30 s")


async def test_no_response_at_all_fails_after_the_ring_timeout(
    bot: StartBot, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:  # reads, never answers
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        trunk = {"outbound": {"proxy": f"sip:127.0.0.1:{port}", "ring_timeout_s": RING_S}}
        b = await bot(trunk, t1_ms=40)  # the unanswered INVITE's Timer B: 2.6 s, not 32 s
        call_id = await b.dial("grace")
        got = await b.ended(call_id)
        hole.settimeout(0.5)
        first, _ = hole.recvfrom(65535)
    assert first.startswith(b"INVITE sip:grace@127.0.0.1 SIP/2.0\r\n")
    assert states(got) == ["queued", "trying", "failed", "ended"]
    assert got[2].reason == f"no response in {RING_S:g} s"
    assert RING_S - 0.05 <= got[2].at - got[1].at <= RING_S + 0.5
    record = await b.record(call_id)
    assert (record["dial_state"], record["sip_status"]) == ("failed", None)


# --------------------------------------------------------------------------- bad input, limits


async def test_an_invalid_uri_is_refused_and_nothing_is_sent(bot: StartBot, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        b = await bot({"outbound": {"proxy": f"sip:127.0.0.1:{port}"}})
        for bad, message in [
            ("sip:", "invalid SIP URI 'sip:'"),
            ("sip:bob@", "invalid SIP URI 'sip:bob@'"),
            ("not a number", "invalid number or user 'not a number' (or give a sip: URI)"),
        ]:
            with pytest.raises(DialError) as caught:
                await b.dial(bad)
            assert str(caught.value) == message
        with pytest.raises(DialError, match="unknown agent 'nobody'"):
            await b.dial("sip:x@127.0.0.1", agent="nobody")
        with pytest.raises(DialError, match="unknown trunk 'nope'"):
            await b.dial("100", trunk="nope")
        hole.settimeout(0.5)
        with pytest.raises(TimeoutError):
            hole.recvfrom(65535)
    assert b.statuses == {}


@pytest.mark.requires_peers("capture", "tshark")
async def test_cps_and_concurrency_limits_hold_on_the_wire(bot: StartBot, tmp_path: Path) -> None:
    callee = uas(tmp_path, "ring_busy")
    wire = sip_capture(tmp_path, callee)
    limits = {"cps": 5, "max_calls": 4, "queue": 20, "queue_timeout_s": 30}
    b = await bot(trunk_to(callee, **limits))
    active = peak = 0

    def watch(status: DialStatus) -> None:
        nonlocal active, peak
        b.on_status(status)
        if status.state == "trying":
            active += 1
            peak = max(peak, active)
        elif status.state == "ended":
            active -= 1

    requests = [b.server.dial(DialRequest(to=f"{100 + i}", agent="bot"), watch) for i in range(20)]
    call_ids = await asyncio.gather(*requests)
    for call_id in call_ids:
        await b.ended(call_id, bound_s=30.0)
    await asyncio.to_thread(callee.stop)
    invites = [t for t, m in wire_messages(wire, callee.port) if m == "INVITE"]
    assert len(invites) == 20  # (each sent once: the 100 Trying stops retransmissions)
    # Rule 1 of sipbot.dial_limits: no window of one second on the wire holds more than 5
    per_second = [sum(1 for u in invites if t <= u < t + 1.0) for t in invites]
    assert max(per_second) <= 5, np.diff(invites)
    gaps = np.diff(invites)
    print(f"INVITE gaps on the wire: min {gaps.min():.4f} s, mean {gaps.mean():.4f} s")
    assert peak == 4
    assert all(states(b.statuses[c])[-2] == "busy" for c in call_ids)


# --------------------------------------------------------------------------- the status webhook


async def test_the_webhook_gets_every_status_in_order(bot: StartBot, tmp_path: Path) -> None:
    callee = uas(tmp_path, "busy")
    b = await bot(trunk_to(callee))
    with ToolService(response={"ok": True}) as hook:
        call_id = await b.dial("henry", status_callback=hook.url("/status"))
        got = await b.ended(call_id)
        deadline = time.monotonic() + 5.0
        while len(hook.requests) < len(got) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.to_thread(callee.stop)
    assert [r.body for r in hook.requests] == [s.to_json() for s in got]
    assert {r.path for r in hook.requests} == {"/status"}


async def test_a_webhook_that_is_down_costs_the_call_nothing(bot: StartBot, tmp_path: Path) -> None:
    callee = uas(tmp_path, "busy")
    b = await bot(trunk_to(callee))
    down = f"http://127.0.0.1:{free_port('tcp')}/status"  # nothing listens there
    started = time.time()
    call_id = await b.dial("ivy", status_callback=down)
    got = await b.ended(call_id)
    await asyncio.to_thread(callee.stop)
    assert states(got) == ["queued", "trying", "busy", "ended"]
    assert got[-1].at - started < 2.0  # as fast as without a webhook
    record = await b.record(call_id)
    assert record["dial_state"] == "busy"


async def test_a_full_trunk_refuses_and_stopping_cancels_a_ringing_call(
    bot: StartBot, tmp_path: Path
) -> None:
    callee = uas(tmp_path, "no_answer", calls=1)
    b = await bot(trunk_to(callee, max_calls=1, ring_timeout_s=10))
    call_id = await b.dial("jack")
    deadline = time.monotonic() + 5.0
    while "ringing" not in states(b.statuses[call_id]) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    with pytest.raises(DialRefused) as caught:
        await b.dial("kim")  # max_calls 1, queue 0
    assert str(caught.value) == ("trunk carrier: 1 calls up, 0 waiting (max_calls 1, queue 0)")
    await b.server.stop()
    got = b.statuses[call_id]
    assert states(got) == ["queued", "trying", "ringing", "failed", "ended"]
    assert got[3].reason == "the server stopped"
    result = await asyncio.to_thread(callee.wait, 10.0)
    assert result.ok, result.describe()  # SIPp got the CANCEL, answered 487 and got its ACK


async def test_a_queued_request_is_dropped_after_the_queue_timeout(
    bot: StartBot, tmp_path: Path
) -> None:
    callee = uas(tmp_path, "no_answer", calls=1)
    limits = {"max_calls": 1, "queue": 1, "queue_timeout_s": 0.5, "ring_timeout_s": RING_S}
    b = await bot(trunk_to(callee, **limits))
    first = await b.dial("lea")
    second = await b.dial("max")  # waits for the first one's slot
    got = await b.ended(second)
    assert states(got) == ["queued", "failed", "ended"]
    assert got[1].reason == "refused: waited 0.5 s in the trunk's queue"
    assert 0.45 <= got[1].at - got[0].at <= 1.0
    assert states(await b.ended(first))[-2] == "no-answer"
    record = await b.record(second)
    assert (record["outcome"], record["end_reason"], record["dial_state"]) == (
        "refused",
        "queue-timeout",
        "failed",
    )
    await asyncio.to_thread(callee.wait, 10.0)
