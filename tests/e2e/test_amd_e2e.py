"""End to end: sipbot dials a voicemail (a SIPp UAS playing a greeting and its beep) and leaves
the agent's message after the beep; the record says machine.

The server runs in the test's event loop (``Server.dial``, the fixtures of
:mod:`tests.e2e.test_outbound_e2e`); the agent's model is the OpenAI emulator, which says the
message as a 600 Hz tone (streamed 4x faster than real time, as cloud models do). Both
directions of RTP are captured at the callee's media port, so the beep's end and the message's
start are compared on the wire.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from sipbot.emulators.script import EmulatorScript
from tests.e2e.emulated import server_env
from tests.e2e.peers import audio
from tests.e2e.peers.amd_corpus import speak
from tests.e2e.peers.capture import RtpPacket, select
from tests.e2e.provider_calls import RecordedEmulator, dominant_hz, encode_ulaw, loud_runs, pcm_of
from tests.e2e.test_outbound_e2e import StartBot, bot, states, trunk_to, uas

__all__ = ["bot"]  # the fixture, used by name

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(60),
    pytest.mark.requires_peers("sipp", "espeak-ng", "capture"),
]

GREETING = "Hi, you have reached John. I can't take your call right now. Please leave a message."
BEEP_HZ = 1000.0
MESSAGE_HZ = 600.0  # the emulator's "speech"
MESSAGE_MS = 1500
MESSAGE_START_BOUND_S = 3.0  # the message begins this soon after the beep ends (provider open)


def voicemail(dest: Path, cache: Path) -> tuple[Path, float]:
    """A greeting, 0.4 s of pause, a 0.5 s beep, 6 s of silence, as raw PCMU; the beep's end (s)."""
    speech, rate = speak(cache, GREETING, "en-us", 175)
    voice = audio.resample(speech, rate, 8000).astype(np.float64)
    voice *= 32768 * 10 ** (-22 / 20) / max(1.0, float(np.sqrt(np.mean(voice * voice))))
    parts = [
        np.zeros(2400),  # 0.3 s before the greeting
        voice,
        np.zeros(3200),
        audio.tone(BEEP_HZ, 0.5, 8000, amplitude=0.3).astype(np.float64),
        np.zeros(48000),
    ]
    beep_end_s = (2400 + voice.size + 3200 + 4000) / 8000
    pcm = np.clip(np.round(np.concatenate(parts)), -32768, 32767).astype(np.int16)
    dest.write_bytes(encode_ulaw(pcm))
    return dest, beep_end_s


def beep_end(packets: list[RtpPacket]) -> float:
    """Capture time at which the last packet of the beep (a loud 1 kHz packet) ended."""
    tonal = []
    for packet in packets:
        pcm, rate = pcm_of([packet])
        if audio.rms_dbfs(pcm) > -30 and abs(dominant_hz(pcm, rate) - BEEP_HZ) < 60:
            tonal.append(packet.time)
    assert tonal, "no beep in the callee's stream"
    return tonal[-1] + 0.02


async def test_a_voicemail_gets_the_message_after_the_beep_and_the_record_says_machine(
    bot: StartBot, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    greeting, beep_end_s = voicemail(
        tmp_path / "voicemail.ulaw", request.config.cache.mkdir("amd-corpus")
    )
    script = EmulatorScript(reply="tone", tone_hz=MESSAGE_HZ, reply_ms=MESSAGE_MS, speed=4.0)
    with RecordedEmulator("openai", script) as emu:
        callee = uas(tmp_path, "machine", capture=True, GREETING=str(greeting))
        amd = {"on_machine": "message", "message": "Your bike is ready, {var.name}."}
        b = await bot(
            trunk_to(callee),
            emu.agent(greeting="Hello!", max_duration_s=30, amd=amd),
            server_env(),
        )
        call_id = await b.dial("john", variables={"name": "John"})
        got = await b.ended(call_id, bound_s=30.0)
        result = await asyncio.to_thread(callee.stop)
        record = await b.record(call_id)
        opened = emu.session_count
        received = emu.received(0)
    assert states(got) == ["queued", "trying", "ringing", "answered", "ended"]
    # one model session, opened for the message: it was told to say the message, not to greet
    assert opened == 1
    texts = [str(f) for f in received if f.get("type") == "conversation.item.create"]
    assert any("Your bike is ready, John." in t for t in texts), texts
    assert not any("Hello!" in t for t in texts)
    assert result.capture is not None
    packets = result.capture.packets()
    from_callee = select(packets, src_port=callee.media_port, audio_only=True)
    to_callee = select(packets, dst_port=callee.media_port, audio_only=True)
    beep_over = beep_end(from_callee)
    # the beep is where the file put it (the stream starts with the callee's first packet)
    assert beep_over - from_callee[0].time == pytest.approx(beep_end_s, abs=0.1)
    runs = loud_runs(to_callee)
    assert runs, "the callee heard nothing"
    assert all(run[0].time >= beep_over for run in runs), "agent audio during the greeting"
    message = [packet for run in runs for packet in run]  # a loaded machine may split it
    delay = message[0].time - beep_over
    print(f"the message began {1000 * delay:.0f} ms after the beep ended (on the wire)")
    assert delay <= MESSAGE_START_BOUND_S, f"the message began {delay:.3f} s after the beep"
    heard, rate = pcm_of(message)
    assert abs(dominant_hz(heard, rate) - MESSAGE_HZ) < 30
    assert len(message) * 20 >= MESSAGE_MS * 2 // 3  # most of it (a loaded machine may drop some)
    # the record: a machine, the message left after the beep, the call ended by us
    assert record["end_reason"] == "amd-message"
    report = record["amd"]
    assert isinstance(report, str)
    amd_found = json.loads(report)
    assert (amd_found["result"], amd_found["action"], amd_found["message_done"]) == (
        "machine",
        "message",
        True,
    )
    assert amd_found["decision_ms"] <= 5000
    assert amd_found["beep_ms"] == pytest.approx(beep_end_s * 1000, abs=100)
