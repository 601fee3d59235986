"""End to end, when things go wrong: barge-in, reconnection mid-call, unusable providers.

SIPp calls a real ``sipbot run`` whose agents use the emulated Gemini Live / OpenAI Realtime
(through the real SDKs); see ``test_providers_e2e`` for the set-up. Timing claims are measured
on the RTP captured at the caller, independently of sipbot's own logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sipbot.emulators.script import EmulatorScript
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import Kind, wait_until
from tests.e2e.peers import audio
from tests.e2e.peers.ports import free_port
from tests.e2e.provider_calls import (
    FRAME_MS,
    RecordedEmulator,
    Rigs,
    in_frames,
    loud_runs,
    max_gap,
    out_frames,
    pcm_of,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.requires_peers("sipp", "capture"),
]

KINDS = ["gemini", "openai"]
SHORT_TEXT = "Hello, what is the weather like today?"
SECOND_TEXT = "Seven elephants crossed the old stone bridge."
APOLOGY = Path(__file__).resolve().parents[2] / "sipbot" / "data" / "apology.wav"


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> audio.Speech:
    return audio.make_speech(tmp_path_factory.mktemp("short"), SHORT_TEXT, "short")


@pytest.fixture(scope="module")
def second_speech(tmp_path_factory: pytest.TempPathFactory) -> audio.Speech:
    return audio.make_speech(tmp_path_factory.mktemp("second"), SECOND_TEXT, "second")


@pytest.fixture
def rig(sipbot_server: StartServer, peers_tmp: Path) -> Iterator[Rigs]:
    """``rig(kind, script, agents=None, tools=None, env=None) -> Rig`` (see ``Rigs``)."""
    with Rigs(sipbot_server, peers_tmp) as rigs:
        yield rigs


# --------------------------------------------------------------------------- barge-in

REPLY_MS = 4000
FLUSH_SLACK_S = 0.015  # scheduling and loopback delivery on a busy machine


def interruption_time(emu: RecordedEmulator, kind: str, after: float) -> float:
    """When the emulator told sipbot that the caller interrupted (epoch seconds)."""
    if kind == "gemini":
        frames = [
            f
            for f in out_frames(emu, "serverContent")
            if f.message["serverContent"].get("interrupted")
        ]
    else:
        frames = out_frames(emu, "input_audio_buffer.speech_started")
    times = [f.time for f in frames if f.time > after]
    assert times, f"the emulator saw no interruption after {after}"
    return times[0]


@pytest.mark.parametrize(
    ("kind", "speed"),
    [
        ("gemini", 4.0),
        # the response is over when the caller interrupts (sipbot knows what is still playing)
        ("openai", 4.0),
        # the response is still streaming: the emulator cancels it, sipbot drops what is in flight
        ("openai", 1.0),
    ],
)
def test_barge_in_stops_the_agent_and_reports_what_was_heard(
    rig: Rigs, short_speech: audio.Speech, second_speech: audio.Speech, kind: Kind, speed: float
) -> None:
    r = rig(kind, EmulatorScript(reply="tone", tone_hz=700.0, reply_ms=REPLY_MS, speed=speed))
    talk_over_at = short_speech.duration_s + 1.5  # about 1.5 s into the agent's reply
    parts = [
        (talk_over_at, short_speech.pcm(8000)),
        (second_speech.duration_s, second_speech.pcm(8000)),
    ]
    heard = r.finish(r.dial("bot", parts, hold_s=talk_over_at + 1.2))

    runs = loud_runs(heard.inbound)
    assert runs, "the caller heard no reply"
    reply = runs[0]
    interrupted_at = interruption_time(r.emu, kind, after=reply[0].time)
    heard_ms = len(reply) * FRAME_MS  # what the caller heard of the reply, from its capture
    stop_delay = reply[-1].time - interrupted_at
    print(f"{kind}: heard {heard_ms} ms, last loud packet {stop_delay * 1000:+.1f} ms")
    assert 500 <= heard_ms <= REPLY_MS - 1000  # cut well before its end
    # The pacer was flushed: at most the packet already on its way follows the interruption
    # (plus the length of a stall of the whole machine right then, if the capture shows one).
    stall = max_gap(heard.inbound, interrupted_at - 0.1, interrupted_at + 0.1)
    assert stop_delay <= FRAME_MS / 1000 + FLUSH_SLACK_S + max(0.0, stall - FRAME_MS / 1000)
    later = [p for p in heard.inbound if p.time > reply[-1].time]
    assert len(later) >= 25  # a good half second of the call after it, and all of it silent
    assert loud_runs(later) == [], "the reply went on after the barge-in"
    assert '"interruptions": 1' in r.cdr("bot")
    if kind == "openai":
        [truncate] = [f.message for f in in_frames(r.emu, "conversation.item.truncate")]
        items = {f.message["item_id"] for f in out_frames(r.emu, "response.output_audio.delta")}
        assert {truncate["item_id"]} == items
        assert truncate["content_index"] == 0
        print(f"openai: audio_end_ms {truncate['audio_end_ms']}, caller heard {heard_ms} ms")
        assert abs(truncate["audio_end_ms"] - heard_ms) <= 20
        [truncated] = [f.message for f in out_frames(r.emu, "conversation.item.truncated")]
        [done] = [f.message["response"] for f in out_frames(r.emu, "response.done")]
        cancelled = {"type": "cancelled", "reason": "turn_detected"}
        assert (done["status"], done.get("status_details")) == (
            ("cancelled", cancelled) if speed == 1.0 else ("completed", None)
        )
        assert truncated["audio_end_ms"] == truncate["audio_end_ms"]
        assert out_frames(r.emu, "error") == []


# --------------------------------------------------------------------------- continuity


def reconnection_checks(emu: RecordedEmulator, kind: str) -> None:
    """The second session continues the first: resumed (Gemini) or seeded (OpenAI)."""
    if kind == "gemini":
        assert len(out_frames(emu, "goAway", session=0)) == 1
        handles = [
            f.message["sessionResumptionUpdate"]["newHandle"]
            for f in out_frames(emu, "sessionResumptionUpdate", session=0)
        ]
        [setup] = [f.message["setup"] for f in in_frames(emu, "setup", session=1)]
        assert setup["sessionResumption"]["handle"] == handles[-1]
        assert in_frames(emu, "clientContent", session=1) == []  # resumed, not re-seeded
    else:
        expired = [f for f in out_frames(emu, "error", session=0)]
        assert [f.message["error"]["code"] for f in expired] == ["session_expired"]
        seeded = [
            (f.message["item"]["role"], f.message["item"]["content"][0]["text"])
            for f in in_frames(emu, "conversation.item.create", session=1)
        ]
        assert seeded == [("user", "caller turn 1"), ("assistant", "reply 1")]
        assert in_frames(emu, "response.create", session=1) == []  # no second greeting


@pytest.mark.parametrize("kind", KINDS)
def test_reconnects_mid_call_and_the_conversation_goes_on(
    rig: Rigs, short_speech: audio.Speech, second_speech: audio.Speech, kind: Kind
) -> None:
    if kind == "gemini":
        script = EmulatorScript(reply="echo", go_away_after_turns=1, go_away_time_left_ms=500)
    else:
        script = EmulatorScript(reply="echo", expire_after_turns=1)
    r = rig(kind, script)
    second_at = short_speech.duration_s + 2.8  # as reply 1 ends (and goAway comes)
    parts = [
        (second_at, short_speech.pcm(8000)),
        (second_speech.duration_s, second_speech.pcm(8000)),
        (3.0, None),
    ]
    heard = r.finish(r.dial("bot", parts, hold_s=second_at + second_speech.duration_s + 3.0))

    # (reply 2 ends its connection too: the script's limit is per connection)
    assert len(r.emu.sessions) >= 2
    reconnection_checks(r.emu, kind)
    # reply 1 is heard whole (an OpenAI session expires while its audio still plays), and
    # the reply to what the caller said across the reconnection is its own words back
    spoke_again = heard.start + second_at
    before = [p for p in heard.inbound if p.time < spoke_again]
    after = [p for p in heard.inbound if p.time > spoke_again]
    assert audio.correlation(short_speech.pcm(8000), pcm_of(before)[0], 8000) >= 0.9
    assert audio.correlation(second_speech.pcm(8000), pcm_of(after)[0], 8000) >= 0.9
    reconnected = min(f.time for f in r.emu.frames(session=1))
    assert reconnected < spoke_again + 1.0  # the caller spoke while (or just after) it happened
    lines = r.call_log("bot")
    assert sum("answered by agent bot" in line for line in lines) == 1
    assert any("provider: " + kind + ": reconnected" in line for line in lines), lines
    cdr = r.cdr("bot")
    assert '"reason": "bye-received"' in cdr
    assert '"turns": 2' in cdr


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", KINDS)
def test_unreachable_provider_and_bad_key_apologise_and_hang_up(
    rig: Rigs, short_speech: audio.Speech, kind: Kind
) -> None:
    closed = free_port("tcp")  # reserved for us and never bound: connections are refused
    scheme = "https" if kind == "gemini" else "ws"
    suffix = "" if kind == "gemini" else "/v1"
    r = rig(
        kind,
        EmulatorScript(reply="echo"),
        agents={
            "bot": {},
            "down": {"base_url": f"{scheme}://127.0.0.1:{closed}{suffix}"},
            "badkey": {"api_key": "${E2E_BAD_KEY}"},
        },
        env={"E2E_BAD_KEY": "not-the-key"},
    )
    # the working call speaks once the failing calls have failed, and must still be answered
    speak_at = 4.0
    working = r.dial(
        "bot",
        [(speak_at, None), (short_speech.duration_s, short_speech.pcm(8000)), (3.5, None)],
        hold_s=speak_at + short_speech.duration_s + 3.5,
    )
    failing = {
        did: r.dial(did, [(12.0, None)], hold_s=12.0, hangup="callee") for did in ("down", "badkey")
    }
    heard_failing = {did: r.finish(caller) for did, caller in failing.items()}
    heard_working = r.finish(working)

    apology, apology_rate = audio.read_wav(APOLOGY)
    for did, heard in heard_failing.items():
        pcm, rate = heard.pcm()
        assert audio.correlation(apology, pcm, apology_rate, rate) >= 0.9, did
        # BYE (SIPp waited for it) once the apology was over
        assert '"reason": "provider-unavailable"' in r.cdr(did)
    pcm, rate = heard_working.pcm()
    assert audio.correlation(short_speech.pcm(8000), pcm, 8000, rate) >= 0.9
    assert '"reason": "bye-received"' in r.cdr("bot")
    # the logs say why
    down = " ".join(r.call_log("down"))
    bad = " ".join(r.call_log("badkey"))
    assert f"provider {kind} unavailable" in down
    assert "Connection refused" in down
    assert f"provider {kind} unavailable" in bad
    assert ("HTTP 401" if kind == "openai" else "API key not valid") in bad


@pytest.mark.parametrize("kind", KINDS)
def test_provider_lost_for_good_mid_call_apologises_and_hangs_up(
    rig: Rigs, short_speech: audio.Speech, kind: Kind
) -> None:
    # the socket drops after reply 1, and from then on the service refuses our key
    script = EmulatorScript(reply="echo", drop_after_turns=1)
    r = rig(kind, script)
    caller = r.dial(
        "bot",
        [(short_speech.duration_s, short_speech.pcm(8000)), (20.0, None)],
        hold_s=20.0,
        hangup="callee",
    )
    # set up, not only connected: Gemini checks the key of a connection at its setup message
    ready = "setupComplete" if kind == "gemini" else "session.created"
    wait_until(lambda: out_frames(r.emu, ready), 10.0, "the call's provider session")
    r.emu.set_script(replace(r.emu.emulator.script, api_keys=frozenset({"another-key"})))
    heard = r.finish(caller)

    pcm, rate = heard.pcm()
    assert audio.correlation(short_speech.pcm(8000), pcm, 8000, rate) >= 0.9  # reply 1
    apology, apology_rate = audio.read_wav(APOLOGY)
    assert audio.correlation(apology, pcm, apology_rate, rate) >= 0.9  # then the apology
    assert '"reason": "provider-failed"' in r.cdr("bot")  # and BYE (SIPp waited for it)
    lines = r.call_log("bot")
    assert any(f"provider failed: {kind}: gave up reconnecting" in line for line in lines)
    attempts = [line for line in lines if f"resilience: call {r.call_ids()['bot']}" in line]
    assert len(attempts) == 5, lines  # the adapters' MAX_ATTEMPTS, each refused
