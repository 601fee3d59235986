"""Packet-loss concealment end to end: a caller's stream with 5 % random loss and a silence-
suppressed gap reaches the model as continuous audio, and the record counts what was concealed.

SIPp places the call (signalling only: its ``rtp_stream`` is taken out of the scenario); the
test itself sends the caller's RTP from one UDP socket, in real time, dropping 5 % of the
packets at random (seeded) and leaving a 500 ms timestamp gap with the marker bit (silence
suppression) in the middle. The model is the OpenAI emulator (PCMU: G.711 passed through,
concealment re-encoded) or the Gemini one (G.722: PCM16 16 kHz); what it received
(``audio_in``) must last as long as the stream's timestamps span, within one 20 ms frame: no
frame-count jumps. The call record (SQLite) holds ``concealed_frames`` = the frames dropped.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import pytest

from sipbot.emulators.script import EmulatorScript
from sipbot.records import open_store
from sipbot.records.commands import rows_of
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.test_media_robustness import wait_answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

LOSS = 0.05
SEED = 1515
FRAME_S = 0.02
UNITS = 160  # timestamp units and payload bytes per 20 ms, PCMU and G.722 alike
DTX_FRAMES = 25  # 500 ms not sent, timestamps jump (silence suppression)
BYTES_PER_MS = {"openai": 8, "gemini": 32}  # what the emulator keeps: G.711 / PCM16 16 kHz
RECORDS_TIMEOUT_S = 10.0
SETTLE_S = 0.3


def ready(emu: EmulatorThread) -> bool:
    """The emulator has answered the session setup (sipbot starts the session right after)."""
    done = {"session.updated", "setupComplete"}
    return any(done & {str(f.get("type")), *f} for f in emu.sent())


def payloads(speech: audio.Speech, codec: str) -> list[bytes]:
    raw = speech.raw_for(codec).read_bytes()
    return [raw[i : i + UNITS] for i in range(0, len(raw) - UNITS + 1, UNITS)]


def send_stream(
    frames: list[bytes], pt: int, target: tuple[str, int]
) -> tuple[int, int, list[int]]:
    """Send ``frames`` in real time: 5 % lost, a DTX gap after the first half.

    Returns (packets sent, timestamp units spanned, indices of the frames lost).
    """
    rng = random.Random(SEED)
    half = len(frames) // 2
    lost = [i for i in range(1, len(frames) - 1) if i != half and rng.random() < LOSS]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", free_port("udp")))
    start, seq, sent = time.monotonic(), 1000, 0
    try:
        for i, payload in enumerate(frames):
            slot = i + (DTX_FRAMES if i >= half else 0)
            delay = start + slot * FRAME_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if i not in lost:
                marker = 0x80 if i in (0, half) else 0
                header = struct.pack("!BBHII", 0x80, marker | pt, seq & 0xFFFF, slot * UNITS, 7)
                sock.sendto(header + payload, target)
                sent += 1
            seq += 1
    finally:
        sock.close()
    return sent, (len(frames) + DTX_FRAMES) * UNITS, lost


@pytest.mark.requires_peers("sipp", "espeak-ng", "ffmpeg")
@pytest.mark.parametrize(("codec", "kind"), [("PCMU", "openai"), ("G722", "gemini")])
def test_a_lossy_stream_reaches_the_model_whole_and_the_record_counts_the_concealment(
    codec: str, kind: str, speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    db = peers_tmp / "records.sqlite3"
    with EmulatorThread(kind, EmulatorScript(reply="tone", reply_ms=200)) as emu:  # type: ignore[arg-type]
        plan = {
            "server": {"records": {"url": f"sqlite:///{db}"}},
            "agents": {"bot": emu.agent(codecs=[codec])},
            "routes": [{"name": "main", "answer": "bot"}],
        }
        config = write_dialplan(peers_tmp / "plc.yaml", plan)
        server = sipbot_server("-c", str(config), env=server_env())
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.raw_for(codec), codec, hold_s=7)
        text = scenario.read_text()
        start = text.index("  <nop>\n    <action>\n      <exec rtp_stream")
        scenario.write_text(text[:start] + text[text.index("</nop>", start) + len("</nop>") :])
        uac = sipp.start_uac(server.address, scenario, peers_tmp, timeout_s=40)
        _, rtp_port = wait_answer(uac)
        # audio that comes before the session is set up is buffered in PCM16 16 kHz only
        wait_until(lambda: emu.session_count >= 1 and ready(emu), 10.0, "the model session")
        time.sleep(SETTLE_S)
        frames = payloads(speech, codec)
        pt = audio.PT_PCMU if codec == "PCMU" else audio.PT_G722
        sent, units, lost = send_stream(frames, pt, ("127.0.0.1", rtp_port))
        assert len(lost) >= 3, "the seed must drop some packets"
        expected_ms = units * 1000 // 8000
        per_ms = BYTES_PER_MS[kind]
        received = wait_until(
            lambda: (
                (n := len(emu.emulator.sessions[0].audio_in)) >= (expected_ms - 20) * per_ms and n
            ),
            5.0,
            "the model to receive the whole stream",
        )
        time.sleep(0.2)  # nothing more may come
        received = len(emu.emulator.sessions[0].audio_in)
        uac.wait(30).assert_ok(calls=1)
    received_ms = received / per_ms
    assert abs(received_ms - expected_ms) <= 20, (received_ms, expected_ms, sent, lost)
    store = open_store(f"sqlite:///{db}", "unused")
    records = wait_until(lambda: rows_of(store.export()), RECORDS_TIMEOUT_S, "the call record")
    assert records[0]["concealed_frames"] == len(lost)
    media = records[0]["media"]
    assert media["rtp_concealed"] == len(lost)
    assert media["rtp_lost"] == len(lost)
