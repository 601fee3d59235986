"""The barge-in guard in a real call: a SIPp caller, ``sipbot run``, the OpenAI emulator.

The caller asks a question; the emulated model answers with a long tone; over it the caller
says "okay" (a backchannel: the guard ducks the agent and restores it), then a full sentence (a
real interruption: the guard cuts the agent). The provider's own interruption is off on the
wire (``interrupt_response: false`` in the session the emulator received), so every cut is the
guard's: the record counts exactly one. (The same call with ``mode: provider`` counts two: the
emulator's VAD cuts the agent at "okay" too; checked by hand on 2026-12-02.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from sipbot.emulators.script import EmulatorScript
from sipbot.media.codecs import make_encoder
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import audio, sipp
from tests.e2e.test_call_path import cdr_lines

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RATE = 8_000


def spoken(text: str, directory: Path) -> np.ndarray:
    wav = directory / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    pcm8k = directory / f"{abs(hash(text))}-8k.wav"
    subprocess.run(["sox", str(wav), "-r", "8000", "-c", "1", "-b", "16", str(pcm8k)], check=True)
    samples, _ = audio.read_wav(pcm8k)
    loud = np.flatnonzero(np.abs(samples) > 300)
    return samples[loud[0] : loud[-1] + 1]


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(round(RATE * seconds), dtype=np.int16)


def caller_audio(directory: Path) -> Path:
    """Question, 2 s (the reply starts), "okay", 2 s, an interruption, 3 s."""
    pcm = np.concatenate(
        [
            spoken("What is the weather in Paris today?", directory),
            quiet(2.0),
            spoken("okay", directory),
            quiet(2.0),
            spoken("Sorry, wait, I need to change the delivery address please.", directory),
            quiet(3.0),
        ]
    )
    path = directory / "caller.ulaw"
    path.write_bytes(make_encoder("PCMU").encode(pcm.tobytes()))
    return path


@pytest.mark.requires_peers("sipp", "espeak-ng", "sox")
def test_a_backchannel_does_not_cut_the_agent_and_a_sentence_does(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    # The emulator cannot transcribe: with its default "caller turn N" every turn would carry
    # words, and the transcript of "okay" would confirm a barge-in (Rule 3 of sipbot.bargein).
    # With no words reported, only the acoustic rule decides, which is what is tested here.
    script = EmulatorScript(reply="tone", reply_ms=9000, speed=4.0, caller_text="")
    with EmulatorThread("openai", script) as emu:
        agent = emu.agent(codecs=["PCMU"], barge_in={"mode": "guard", "min_speech_ms": 800})
        plan = {"agents": {"bot": agent}, "routes": [{"name": "main", "answer": "bot"}]}
        config = write_dialplan(peers_tmp / "guard.yaml", plan)
        server = sipbot_server("-c", str(config), env=server_env())
        caller = caller_audio(peers_tmp)
        seconds = len(caller.read_bytes()) / RATE
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", caller, hold_s=seconds + 0.5)
        sipp.run_uac(server.address, scenario, peers_tmp, timeout_s=60).assert_ok(calls=1)
        updates = [f for f in emu.received(0) if f.get("type") == "session.update"]
    detection = updates[0]["session"]["audio"]["input"]["turn_detection"]
    assert detection["interrupt_response"] is False
    [cdr] = wait_until(lambda: cdr_lines(server), 10.0, "the call record")
    assert cdr["interruptions"] == 1, cdr
    # "okay": ducked, then restored (a false alarm); the sentence: ducked, then cut
    assert cdr["barge_in_guard"] == {"suspected": 2, "confirmed": 1, "cleared": 1}, cdr
    confirmed = server.log().count("barge-in confirmed by the guard")
    assert confirmed == 1
