"""End to end: transfers report their outcome (issue 11, Conversation Rule 7).

A baresip caller talks to a real ``sipbot run -c FILE`` whose emulated model calls
``transfer_call`` on the caller's first turn. baresip follows the REFER and calls a SIPp target:
one that answers 486 (the NOTIFY says 486) and one that rings for ever (no final NOTIFY within
the agent's ``transfer_timeout_s``). Either way the caller stays in the call with sipbot and hears
the agent again: the model's only audio is its reply to the tool result (a tone at REPLY_HZ), so
a caller recording that holds that tone proves the agent was unmuted after the failed transfer.
The 2xx case (BYE after the NOTIFY) is ``test_tools_e2e.test_transfer_call_to_an_allowed_uri...``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sipbot.emulators.script import EmulatorScript, ToolCallRule
from tests.e2e.calls import caller_turns, caller_wav, dominant_hz, transferee_scenario
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import audio, baresip, sipp
from tests.e2e.peers.ports import free_port, free_port_block, wait_bound
from tests.e2e.peers.process import ManagedProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SCENARIOS = Path(__file__).parent / "scenarios" / "sip"
REPLY_HZ = 1000.0  # the agent's reply tone (the caller's own turn is 300 Hz)
REPLY_MS = 1500
TRANSFER_TIMEOUT_S = 3.0  # the agent's bound on the NOTIFYs (short: this is a test)


def run_failed_transfer(
    sipbot_server: StartServer, peers_tmp: Path, target_scenario: str
) -> tuple[str, list[dict[str, object]], baresip.Baresip, sipp.SippResult, float]:
    """One call whose transfer to a SIPp target running ``target_scenario`` fails.

    Returns the server log, the tool results the model got, the (stopped) caller, the target's
    result and the seconds from the REFER's acceptance to the outcome (sipbot's log lines).
    """
    target = sipp.start_uas(
        peers_tmp, SCENARIOS / target_scenario, name="target", calls=1, lifetime_s=40
    )
    uri = target.uri("desk")
    script = EmulatorScript(
        tool_calls=(ToolCallRule("transfer_call", {"destination": uri}),),
        reply="tone",
        reply_ms=REPLY_MS,
        tone_hz=REPLY_HZ,
        vad_silence_ms=300,
    )
    with EmulatorThread("gemini", script) as model:
        agent = model.agent(
            prompt="Transfer callers who ask for a human.",
            tools=["transfer_call", "hang_up"],
            transfer_allow=[f"sip:*@127.0.0.1:{target.port}"],
            transfer_timeout_s=TRANSFER_TIMEOUT_S,
        )
        config = {
            "server": {"log_transcripts": True},  # the test waits for the agent's reply line
            "agents": {"desk": agent},
            "routes": [{"match": {"did": "500"}, "answer": "desk"}],
        }
        server = sipbot_server("-c", str(write_dialplan(peers_tmp / "desk.yaml", config)),
                               env=server_env())  # fmt: skip
        caller = baresip.start(
            peers_tmp, caller_wav(peers_tmp / "turn.wav"), dial=server.uri("500"), duration_s=30
        )
        try:
            wait_until(caller.transfers, 15, "baresip to follow the REFER")
            wait_until(lambda: "transfer outcome:" in server.log(), 15, "the transfer outcome")
            wait_until(model.tool_results, 5, "the tool result to reach the model")
            # the agent's reply plays out to the caller (and the call goes on meanwhile)
            wait_until(lambda: "agent: reply 1" in server.log(), 10, "the agent's reply")
            time.sleep(REPLY_MS / 1000 + 0.5)  # its audio plays out in real time
            results = model.tool_results()
            log = server.log()
            assert caller.terminated() == [] or all(
                not peer.startswith("sip:500@") for peer, _ in caller.terminated()
            ), caller.log()[-2000:]
        finally:
            caller.stop()
        target_result = target.wait(15) if target_scenario == "uas_busy.xml" else target.stop()
        wait_until(lambda: '"reason"' in server.log(), 10, "the call record")
    return server.log(), results, caller, target_result, _outcome_delay(log)


def _outcome_delay(log: str) -> float:
    def at(what: str) -> float:
        match = re.search(rf"^\S+ (\d\d):(\d\d):(\d\d),(\d\d\d) .*{what}", log, re.M)
        assert match, log[-3000:]
        h, m, s, ms = (int(g) for g in match.groups())
        return h * 3600 + m * 60 + s + ms / 1000

    return at("transfer outcome: ") - at(r"transfer to \S+ accepted")


def heard_reply(caller: baresip.Baresip) -> tuple[float, float]:
    """(dominant Hz, seconds of audible audio) of what the caller received from sipbot."""
    samples, rate = caller.received_audio()
    frame = rate // 50
    loud = sum(
        1
        for i in range(0, len(samples) - frame + 1, frame)
        if audio.rms_dbfs(samples[i : i + frame]) > -40.0
    )
    return dominant_hz(samples, rate), loud * 0.02


def assert_back_with_agent(
    log: str, results: list[dict[str, object]], caller: baresip.Baresip, outcome: str
) -> None:
    """The transfer failed with ``outcome``: the model was told, sipbot did not hang up, and
    the caller heard the agent's reply to that."""
    assert f"transfer outcome: {outcome}" in log
    [result] = results
    output = result["output"]
    assert isinstance(output, dict)
    assert str(output["output"]).startswith(f"{outcome}: the transfer to sip:desk@")
    assert '"reason": "transferred"' not in log
    assert '"reason": "bye-received"' in log  # the caller hung up, not sipbot
    hz, seconds = heard_reply(caller)
    assert abs(hz - REPLY_HZ) < 20, hz
    assert seconds >= REPLY_MS / 1000 * 0.8, seconds


@pytest.mark.requires_peers("baresip", "sipp")
def test_a_busy_target_leaves_the_caller_with_the_agent(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    log, results, caller, target, waited = run_failed_transfer(
        sipbot_server, peers_tmp, "uas_busy.xml"
    )
    assert waited < 2.0, waited  # at the NOTIFY, not at the bound
    target.assert_ok(calls=1)  # the target really was called, and said 486
    assert "transfer target answered 486" in log  # the NOTIFY's sipfrag said 486
    assert_back_with_agent(log, results, caller, "busy (486)")


@pytest.mark.requires_peers("baresip", "sipp")
def test_no_final_notify_leaves_the_caller_with_the_agent_after_the_bound(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    log, results, caller, _, waited = run_failed_transfer(
        sipbot_server, peers_tmp, "uas_ring_forever.xml"
    )
    assert "transfer target answered" not in log  # only 180 came: no final NOTIFY
    assert TRANSFER_TIMEOUT_S - 0.05 <= waited <= TRANSFER_TIMEOUT_S + 1.0, waited
    outcome = f"no final NOTIFY within {TRANSFER_TIMEOUT_S:g} s"
    assert_back_with_agent(log, results, caller, outcome)


@pytest.mark.requires_peers("sipp", "dtmf_pcap")
def test_a_keypress_transfer_to_a_busy_target_is_told_to_the_model(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    operator = "sip:operator@pbx.example.com"
    with EmulatorThread("gemini", EmulatorScript(vad_silence_ms=300)) as model:
        config = {
            "agents": {"ivr": model.agent(prompt="Callers press keys.")},
            "routes": [{"answer": "ivr", "dtmf": {"0": {"transfer": operator}}}],
        }
        server = sipbot_server("-c", str(write_dialplan(peers_tmp / "ivr.yaml", config)),
                               env=server_env())  # fmt: skip
        quiet = caller_turns(peers_tmp / "quiet.ulaw", turns=0, tail_ms=6000)
        # the caller's NOTIFY says the operator was busy; sipbot must not hang up on it
        transferee = transferee_scenario(
            peers_tmp / "transferee.xml",
            quiet,
            dtmf_pcap=sipp.dtmf_pcap("0"),
            notify="486 Busy Here",
            stay_s=2.0,
        )
        result = sipp.run_uac(server.address, transferee, peers_tmp, service="1", timeout_s=20)
        texts = model.texts()
    result.assert_ok(calls=1)  # REFER, NOTIFY 486, no BYE from sipbot, the caller's BYE
    assert texts == [
        f"The caller pressed a key to be transferred to {operator}, but the transfer did not "
        "happen: busy (486). The caller is still on the line with you; tell them."
    ]
    log = server.log()
    assert "transfer outcome: busy (486)" in log
    assert '"reason": "bye-received"' in log


@pytest.mark.requires_peers("sipp")
def test_a_refused_refer_leaves_the_caller_with_the_agent(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    desk = "sip:desk@127.0.0.1:5999"  # never called: the caller refuses the REFER
    script = EmulatorScript(
        tool_calls=(ToolCallRule("transfer_call", {"destination": desk}),), vad_silence_ms=300
    )
    with EmulatorThread("gemini", script) as model:
        agent = model.agent(tools=["transfer_call"], transfer_allow=["sip:*@127.0.0.1:5999"])
        config = {"agents": {"desk": agent}, "routes": [{"answer": "desk"}]}
        server = sipbot_server("-c", str(write_dialplan(peers_tmp / "desk.yaml", config)),
                               env=server_env())  # fmt: skip
        turn = caller_turns(peers_tmp / "turn.ulaw", turns=1, tail_ms=3000)
        # the caller answers the REFER 403; sipbot must not hang up on it
        transferee = transferee_scenario(
            peers_tmp / "transferee.xml", turn, refer_status="403 Forbidden", stay_s=1.5
        )
        result = sipp.run_uac(server.address, transferee, peers_tmp, service="1", timeout_s=20)
        wait_until(model.tool_results, 5, "the tool result to reach the model")
        results = model.tool_results()
    result.assert_ok(calls=1)  # the REFER refused, no BYE from sipbot, the caller's BYE
    [tool] = results
    output = tool["output"]
    assert isinstance(output, dict)
    assert str(output["output"]).startswith(f"refused (403): the transfer to {desk}")
    log = server.log()
    assert "transfer outcome: refused (403)" in log
    assert '"reason": "bye-received"' in log  # the caller hung up, not sipbot


# --------------------------------------------------------------------------- warm transfer

WARM_SCRIPT = Path(__file__).parent / "peers" / "pjsua2_warm.py"
CALLER_TONE_HZ = 500.0  # the caller's voice: bursts of this
TARGET_TONE_HZ = 1300.0  # the target's
BRIEFING_HZ = 1700.0  # the briefing prompt sipbot plays to the target
WARM_RUN_S = 13.0  # each pjsua2 party's life (the join comes ~3 s after the start)
LAST_S = 5.0  # the end of each party's recording: the two are joined by then


def bursts(path: Path, hz: float, on_s: float, off_s: float) -> Path:
    """An 8 kHz WAV of one tone burst and a pause (the party loops it: turns of speech)."""
    pcm = np.concatenate([audio.tone(hz, on_s, 8000, 0.3), np.zeros(round(off_s * 8000))])
    return audio.write_wav(path, pcm.astype(np.int16), 8000)


def start_party(peers_tmp: Path, name: str, play: Path, *args: str) -> ManagedProcess:
    argv = [sys.executable, str(WARM_SCRIPT), "--play", str(play), "--duration", f"{WARM_RUN_S:g}"]
    argv += ["--record", str(peers_tmp / f"{name}.wav"), "--rtp-port", str(free_port_block())]
    return ManagedProcess.start(name, [*argv, "--user", name, *args], peers_tmp)


def events(party: ManagedProcess) -> list[dict[str, object]]:
    lines = [ln for ln in party.read_log("stdout").splitlines() if ln.startswith("{")]
    assert lines, party.read_log("stderr")[-3000:]
    found: list[dict[str, object]] = json.loads(lines[-1])["events"]
    return found


def tone_seconds(path: Path, hz: float, *, last_s: float | None = None) -> float:
    """Seconds of audible 20 ms frames whose strongest frequency is ``hz`` (±30 Hz) in the
    recording at ``path`` (in its last ``last_s`` seconds only, when given)."""
    samples, rate = audio.read_wav(path)
    frame = rate // 50
    count = 0
    first = 0 if last_s is None else max(0, len(samples) - round(last_s * rate))
    for i in range(first, len(samples) - frame + 1, frame):
        chunk = samples[i : i + frame]
        if audio.rms_dbfs(chunk) > -40.0 and abs(dominant_hz(chunk, rate) - hz) <= 30:
            count += 1
    return count * 0.02


@pytest.mark.requires_peers("pjsua2")
def test_a_warm_transfer_joins_the_caller_and_the_target(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    target_port = free_port("udp")
    target_uri = f"sip:desk@127.0.0.1:{target_port}"
    briefing = peers_tmp / "briefing.wav"
    audio.write_wav(briefing, audio.tone(BRIEFING_HZ, 1.5, 16000, 0.3), 16000)
    rule = ToolCallRule("transfer_call", {"destination": target_uri, "warm": True})
    script = EmulatorScript(tool_calls=(rule,), reply="tone", reply_ms=500, vad_silence_ms=300)
    with EmulatorThread("gemini", script) as model:
        agent = model.agent(
            prompt="Transfer callers who ask for a human, warm.",
            tools=["transfer_call"],
            transfer_allow=[f"sip:*@127.0.0.1:{target_port}"],
            transfer_briefing=str(briefing),
        )
        config = {"agents": {"desk": agent}, "routes": [{"answer": "desk"}]}
        server = sipbot_server("-c", str(write_dialplan(peers_tmp / "desk.yaml", config)),
                               env=server_env())  # fmt: skip
        target_wav = bursts(peers_tmp / "target-voice.wav", TARGET_TONE_HZ, 0.6, 0.4)
        target = start_party(
            peers_tmp, "target", target_wav, "--answer", "--port", str(target_port)
        )
        assert wait_bound(target_port, "udp", 15), target.read_log("stderr")[-2000:]
        caller_voice = bursts(peers_tmp / "caller-voice.wav", CALLER_TONE_HZ, 0.6, 0.9)
        caller = start_party(peers_tmp, "caller", caller_voice, "--call", server.uri("500"))
        try:
            wait_until(lambda: "transfer outcome:" in server.log(), 12, "the transfer outcome")
            wait_until(lambda: "consultation call ended" in server.log(), 8, "the target's BYE")
            for party in (caller, target):
                party.wait(WARM_RUN_S + 15)
        finally:
            caller.stop(timeout=3.0)
            target.stop(timeout=3.0)
    log = server.log()
    assert "transfer outcome: transferred" in log, log[-3000:]
    assert '"reason": "transferred"' in log  # the call record: our leg with the caller ended
    # the target ended our consultation call itself when the caller's INVITE replaced it
    assert re.search(r"consultation call ended \(bye-received\)", log), log[-3000:]
    caller_events, target_events = events(caller), events(target)
    [request] = [e for e in caller_events if e["event"] == "transfer-request"]
    assert str(request["target"]).startswith(f"<{target_uri}?Replaces="), request
    assert "transfer target answered 200" in log  # the caller's NOTIFY: it reached the target
    assert any(e["event"] == "replaced" for e in target_events), target_events
    # the target heard the briefing; then, joined without sipbot, each hears the other: the
    # last LAST_S of each party's recording (its life ends WARM_RUN_S after start, ~10 s after
    # the join) holds the other's bursts (measured 3.2 s and 0.7 s of 5 s with 60 % and 20 %
    # duty), and nobody hears its own voice
    assert tone_seconds(peers_tmp / "target.wav", TARGET_TONE_HZ) == 0
    assert tone_seconds(peers_tmp / "target.wav", BRIEFING_HZ) >= 1.0
    heard_target = tone_seconds(peers_tmp / "caller.wav", TARGET_TONE_HZ, last_s=LAST_S)
    heard_caller = tone_seconds(peers_tmp / "target.wav", CALLER_TONE_HZ, last_s=LAST_S)
    assert heard_target >= 0.6 * LAST_S * 0.6, heard_target  # bursts 60 % of the time
    assert heard_caller >= 0.4 * LAST_S * 0.6, heard_caller  # bursts 40 % of the time
