"""End to end: a provider that stalls is resumed, one that cannot be is replaced mid-call.

SIPp calls a real ``sipbot run`` whose agents use the emulated Gemini Live / OpenAI Realtime
(through the real SDKs). The emulator scripts make a reply stop mid-way (``stall_after_turns``,
``stall_mid_reply_ms``); what the caller heard is read from the RTP captured at SIPp, and what
the fallback model was told from the fallback emulator's record. Also: after a barge-in, the
Gemini model is told in-band what the caller heard of its reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sipbot.emulators.script import EmulatorScript, ToolCallRule
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import Kind, wait_until
from tests.e2e.peers import audio
from tests.e2e.peers.capture import RtpPacket
from tests.e2e.provider_calls import (
    FRAME_MS,
    Heard,
    RecordedEmulator,
    Rig,
    Rigs,
    dominant_hz,
    in_frames,
    loud_runs,
    out_frames,
    pcm_of,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.requires_peers("sipp", "capture"),
]

TEXT = "Hello, what is the weather like today?"
FILLER = Path(__file__).resolve().parents[2] / "sipbot" / "data" / "filler.wav"
CHUNK_MS = 100
REPLY_MS = 2000  # 20 chunks, one word each
WORDS = [f"word{i}" for i in range(1, REPLY_MS // CHUNK_MS + 1)]
STALL_AT_MS = 800  # the first reply stops after 8 chunks (8 words)
STALL_TIMEOUT_MS = 1500
PRIMARY_HZ, FALLBACK_HZ = 700.0, 450.0


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> audio.Speech:
    return audio.make_speech(tmp_path_factory.mktemp("failover"), TEXT, "question")


@pytest.fixture
def rig(sipbot_server: StartServer, peers_tmp: Path) -> Iterator[Rigs]:
    with Rigs(sipbot_server, peers_tmp) as rigs:
        yield rigs


def stalling(hz: float) -> EmulatorScript:
    """Tone replies of WORDS whose first one stalls at STALL_AT_MS."""
    return EmulatorScript(
        reply="tone",
        tone_hz=hz,
        reply_ms=REPLY_MS,
        chunk_ms=CHUNK_MS,
        reply_text=" ".join(WORDS),
        stall_after_turns=0,
        stall_mid_reply_ms=STALL_AT_MS,
    )


def call(r: Rig, speech: audio.Speech, hold_s: float = 7.0) -> Heard:
    parts = [(speech.duration_s, speech.pcm(8000)), (hold_s, None)]
    return r.finish(r.dial("bot", parts, hold_s=speech.duration_s + hold_s))


def run_hz(run: list[RtpPacket]) -> float:
    return dominant_hz(pcm_of(run)[0], 8000)


def filler_score(packets: list[RtpPacket]) -> float:
    filler, rate = audio.read_wav(FILLER)
    pcm, heard_rate = pcm_of(packets)
    return audio.correlation(filler, pcm, rate, heard_rate)


def heard_sequence(heard: Heard, fallback_hz: float) -> tuple[float, float, float]:
    """The caller heard: the stalled reply, the filler, then the reply on ``fallback_hz``.

    Returns (ms of the stalled reply heard, ms of silence after it before the filler, ms from
    the end of the stalled reply to the first packet of the next reply).
    """
    runs = loud_runs(heard.inbound)
    assert len(runs) >= 3, [len(run) for run in runs]
    first, after = runs[0], runs[-1]
    assert abs(run_hz(first) - PRIMARY_HZ) < 30
    assert abs(run_hz(after) - fallback_hz) < 30, run_hz(after)
    between = [p for p in heard.inbound if first[-1].time < p.time < after[0].time]
    assert filler_score(between) >= 0.9  # the filler, whole, between the two
    filler_start = runs[1][0].time
    return (
        len(first) * FRAME_MS,
        (filler_start - first[-1].time) * 1000,
        (after[0].time - first[-1].time) * 1000,
    )


def cdr_number(cdr: str, key: str) -> int:
    found = re.search(rf'"{key}": (\d+)', cdr)
    assert found is not None, cdr
    return int(found.group(1))


# --------------------------------------------------------------------------- stall, resumed


def test_gemini_stall_mid_reply_is_resumed_and_the_caller_hears_filler_then_the_reply(
    rig: Rigs, speech: audio.Speech
) -> None:
    r = rig("gemini", stalling(PRIMARY_HZ), agents={"bot": {"stall_timeout_ms": STALL_TIMEOUT_MS}})
    heard = call(r, speech)

    stalled_ms, silence_ms, gap_ms = heard_sequence(heard, PRIMARY_HZ)
    print(f"gemini stall: heard {stalled_ms} ms, silence {silence_ms:.0f} ms, gap {gap_ms:.0f} ms")
    assert abs(stalled_ms - STALL_AT_MS) <= 3 * FRAME_MS
    assert silence_ms <= STALL_TIMEOUT_MS + 300  # detected within the bound
    # resumed in place: the handle of the stalled connection, and the rest of the same reply
    handles = [
        f.message["sessionResumptionUpdate"]["newHandle"]
        for f in out_frames(r.emu, "sessionResumptionUpdate", session=0)
    ]
    [setup] = [f.message["setup"] for f in in_frames(r.emu, "setup", session=1)]
    assert setup["sessionResumption"]["handle"] == handles[-1]
    rest = len(loud_runs(heard.inbound)[-1]) * FRAME_MS
    assert abs(rest - (REPLY_MS - STALL_AT_MS)) <= 3 * FRAME_MS
    cdr = r.cdr("bot")
    assert cdr_number(cdr, "stalls") == 1
    assert cdr_number(cdr, "recovery_ms") <= 1000  # stall seen → the reply's audio again
    assert '"switched_to": null' in cdr
    assert any("provider stalled: gemini" in line for line in r.call_log("bot"))


# --------------------------------------------------------------------------- failover


def seeded_openai(emu: RecordedEmulator) -> list[tuple[str, str]]:
    return [
        (f.message["item"]["role"], f.message["item"]["content"][0]["text"])
        for f in in_frames(emu, "conversation.item.create", session=0)
    ]


def seeded_gemini(emu: RecordedEmulator, session: int = 0) -> list[tuple[str, str]]:
    [content] = [
        f.message["clientContent"] for f in in_frames(emu, "clientContent", session=session)
    ]
    return [(t["role"], t["parts"][0]["text"]) for t in content["turns"]]


@pytest.mark.parametrize(("primary", "fallback"), [("gemini", "openai"), ("openai", "gemini")])
def test_a_provider_refused_after_a_stall_fails_over_with_the_conversation(
    rig: Rigs, speech: audio.Speech, primary: Kind, fallback: Kind
) -> None:
    backup = rig.emulator(fallback, EmulatorScript(reply="tone", tone_hz=FALLBACK_HZ))
    agent = {"stall_timeout_ms": STALL_TIMEOUT_MS, "fallback": backup.agent()}
    r = rig(primary, stalling(PRIMARY_HZ), agents={"bot": agent})
    hold_s = speech.duration_s + 7.5
    caller = r.dial("bot", [(speech.duration_s, speech.pcm(8000)), (7.5, None)], hold_s=hold_s)
    # the primary refuses our key from now on: resuming after the stall fails
    ready = "setupComplete" if primary == "gemini" else "session.created"
    wait_until(lambda: out_frames(r.emu, ready), 10.0, "the call's provider session")
    r.emu.set_script(replace(r.emu.emulator.script, api_keys=frozenset({"another-key"})))
    heard = r.finish(caller)

    stalled_ms, silence_ms, gap_ms = heard_sequence(heard, FALLBACK_HZ)
    print(
        f"{primary} -> {fallback}: heard {stalled_ms} ms of the stalled reply, "
        f"silence {silence_ms:.0f} ms, failover gap (silence + filler) {gap_ms:.0f} ms"
    )
    assert silence_ms <= STALL_TIMEOUT_MS + 300
    # the fallback session holds the conversation: the caller's turn, what the caller heard of
    # the cut reply (the words of the chunks that played), and the note to carry on
    if fallback == "openai":
        seeded = seeded_openai(backup)
        assert in_frames(backup, "response.create", session=0)
    else:
        seeded = seeded_gemini(backup)
    assert seeded[0] == ("user", "caller turn 1")
    role, text = seeded[1]
    assert role in ("assistant", "model")
    heard_words = text.split()
    assert heard_words == WORDS[: len(heard_words)]
    assert abs(len(heard_words) - stalled_ms / CHUNK_MS) <= 1
    cdr = r.cdr("bot")
    assert f'"switched_to": "{fallback}"' in cdr
    assert '"reason": "bye-received"' in cdr
    assert cdr_number(cdr, "stalls") == 1
    lines = r.call_log("bot")
    assert any(f"switching to {fallback}" in line for line in lines), lines


# --------------------------------------------------------------------------- heard text


def test_gemini_is_told_what_the_caller_heard_of_a_cut_reply(
    rig: Rigs, speech: audio.Speech
) -> None:
    words = [f"word{i}" for i in range(1, 41)]
    script = EmulatorScript(
        reply="tone",
        tone_hz=PRIMARY_HZ,
        reply_ms=4000,
        chunk_ms=CHUNK_MS,
        reply_text=" ".join(words),
    )
    r = rig("gemini", script)
    talk_over_at = speech.duration_s + 1.5  # about 1.5 s into the reply
    parts = [(talk_over_at, speech.pcm(8000)), (speech.duration_s, speech.pcm(8000))]
    heard = r.finish(r.dial("bot", parts, hold_s=talk_over_at + 2.5))

    reply = loud_runs(heard.inbound)[0]
    heard_ms = len(reply) * FRAME_MS
    notes = [
        t["parts"][0]["text"]
        for f in in_frames(r.emu, "clientContent")
        for t in f.message["clientContent"].get("turns", [])
        if t["parts"][0]["text"].startswith("[system note]")
    ]
    assert len(notes) == 1, notes
    quoted = re.search(r'heard only: "([^"]*)"', notes[0])
    assert quoted is not None, notes[0]
    told = quoted.group(1).split()
    played = int(np.ceil(heard_ms / CHUNK_MS))  # one word per chunk: the words whose audio began
    print(f"gemini barge-in: caller heard {heard_ms} ms ({played} words), note has {len(told)}")
    assert told == words[: len(told)]
    assert abs(len(told) - played) <= 1


# --------------------------------------------------------------------------- handoff


def test_a_handoff_continues_the_call_with_the_other_agent_and_the_earlier_turns(
    rig: Rigs, speech: audio.Speech
) -> None:
    handoff = ToolCallRule("handoff", {"agent": "billing", "reason": "an invoice"}, on_turn=1)
    script = EmulatorScript(reply="tone", tone_hz=PRIMARY_HZ, tool_calls=(handoff,))
    agents = {
        "bot": {
            "prompt": "You are the front desk.",
            "tools": ["handoff", "get_caller_info"],
            "handoff_allow": ["billing"],
            "voice": "Kore",
        },
        "billing": {"prompt": "You are billing.", "tools": ["hang_up"], "voice": "Puck"},
    }
    r = rig("gemini", script, agents=agents)
    heard = call(r, speech, hold_s=5.0)

    wait_until(lambda: len(r.emu.sessions) >= 2, 5.0, "the billing session")
    [setup] = [f.message["setup"] for f in in_frames(r.emu, "setup", session=1)]
    text = json.dumps(setup)
    assert "You are billing." in text
    assert "front desk" not in text
    assert "Puck" in text
    assert "Kore" not in text
    declared = [d["name"] for t in setup["tools"] for d in t["functionDeclarations"]]
    assert declared == ["hang_up"]
    seeded = seeded_gemini(r.emu, session=1)
    assert seeded[0] == ("user", "caller turn 1")
    assert any("You called the tool handoff" in text for _, text in seeded[1:])
    notes = [t for t in r.emu.texts(1) if "handed over to you" in t]
    assert len(notes) == 1
    assert "an invoice" in notes[0]
    assert loud_runs(heard.inbound), "billing said nothing"
    assert any("handed off to agent billing" in line for line in r.call_log("bot"))
