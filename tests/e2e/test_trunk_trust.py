"""Inbound trust on a real server: unknown sources get 403 (or nothing), direct callers a digest
challenge; a refused INVITE reaches no agent and costs one rate-limited log line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sipbot.emulators.script import EmulatorScript
from tests.e2e.calls import caller_turns
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, write_dialplan
from tests.e2e.peers import audio, baresip, sipp, sipp_scenarios
from tests.e2e.peers.ports import free_port

ECHO_MIN_CORRELATION = 0.9
ECHO_HOLD_S = 9.5
ENV = {"CAROL_PW": "carolpw"}
OUTSIDER = "127.0.0.2"  # another address on lo: not in the trunk's allow-list


def write(path: Path, server: str, trunks: str = "") -> Path:
    text = f"""\
server:
{server}
agents:
  echo: {{provider: local, local: {{mode: echo}}}}
{trunks}
routes:
  - {{match: {{did: bot}}, answer: echo}}
"""
    path.write_text(text)
    return path


PBX_ONLY = "trunks:\n  pbx: {source: [127.0.0.1/32]}"
PBX_ONLY_OTHER = "trunks:\n  pbx: {source: [127.0.0.2/32]}"  # the scanner is on 127.0.0.1


@pytest.mark.requires_peers("sipp")
def test_an_unknown_source_gets_403_and_never_reaches_the_model(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    script = EmulatorScript(reply="tone", tone_hz=440.0, reply_ms=800, vad_silence_ms=300)
    with EmulatorThread("openai", script) as model:
        plan = {
            "agents": {"sales": model.agent(prompt="You sell bikes.")},
            "trunks": {"pbx": {"source": ["127.0.0.1/32"]}},
            "routes": [{"match": {"trunk": "pbx"}, "answer": "sales"}],
        }
        config = write_dialplan(peers_tmp / "bot.yaml", plan)
        server = sipbot_server("--config", str(config), env=server_env())
        scenario = sipp_scenarios.reject_scenario(peers_tmp / "r403.xml", 403)
        result = sipp.run_uac(
            server.address, scenario, peers_tmp, calls=5, rate=50, extra_args=["-i", OUTSIDER]
        )
        result.assert_ok(calls=5)
        assert model.session_count == 0  # no provider session for a refused INVITE
        # the control: the same call from the PBX's address reaches the model
        turns = caller_turns(peers_tmp / "turns.ulaw")
        call = sipp_scenarios.uac_scenario(peers_tmp / "call.xml", turns, hold_s=2.0)
        sipp.run_uac(server.address, call, peers_tmp, name="from-pbx").assert_ok(calls=1)
        assert model.session_count == 1
    log = server.log()
    assert len(re.findall(r"call \S+ from", log)) == 1  # the refused ones were never routed
    refused = re.findall(r"refused INVITE from 127\.0\.0\.2: unknown source", log)
    assert len(refused) == 1  # rate-limited: one line for the burst


@pytest.mark.requires_peers("sipp")
def test_drop_policy_answers_unknown_sources_nothing(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    path = write(peers_tmp / "bot.yaml", "  trust: {unknown_sources: drop}", PBX_ONLY)
    server = sipbot_server("--config", str(path))
    scenario = sipp_scenarios.reject_scenario(peers_tmp / "r403.xml", 403)
    result = sipp.run_uac(
        server.address, scenario, peers_tmp, timeout_s=3, extra_args=["-i", OUTSIDER]
    )
    assert result.returncode != 0
    assert result.successful == 0
    assert "INVITE sip:bot@" in result.messages()  # it was sent...
    received = re.findall(r"^SIP/2\.0 \d+", result.messages(), re.MULTILINE)
    assert received == []  # not even a 100 Trying
    assert "dropped (unknown source)" in server.log()


@pytest.mark.requires_peers("baresip")
def test_direct_caller_is_challenged_bad_password_403_good_password_echo(
    sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:
    trust = '  trust: {users: {carol: "${CAROL_PW}"}, realm: bot.test}'
    server = sipbot_server("--config", str(write(peers_tmp / "bot.yaml", trust)), env=ENV)
    wrong = baresip.start(
        peers_tmp,
        speech.wav_8k,
        name="mallory",
        user="carol",
        dial=server.uri(),
        duration_s=4,
        registration=baresip.Registration(server.address, "guess", interval_s=0),
    )
    assert wrong.wait(20) == 0
    assert "403 Forbidden" in wrong.log()
    assert wrong.established() == []
    right = baresip.start(
        peers_tmp,
        speech.wav_8k,
        name="carol",
        user="carol",
        dial=server.uri(),
        duration_s=ECHO_HOLD_S,
        registration=baresip.Registration(server.address, "carolpw", interval_s=0),
    )
    assert right.wait(30) == 0
    heard, rate = right.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION
    log = server.log()
    assert "refused INVITE from 127.0.0.1: digest authentication failed" in log
    assert len(re.findall(r"call \S+ from carol to bot", log)) == 1  # only the right one


def svwar(peers_tmp: Path, port: int, name: str) -> str:
    """Run sipvicious' extension scanner (INVITE method) against 127.0.0.1:``port``."""
    words = peers_tmp / "extensions.txt"
    words.write_text("carol\nbot\nalice\n100\n200\n")
    local = free_port("udp")
    argv = ["svwar", "-m", "INVITE", "-d", str(words), "-P", str(local)]
    argv += ["-b", "127.0.0.1", "-x", "127.0.0.1", f"udp://127.0.0.1:{port}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    (peers_tmp / f"{name}.log").write_text(out.stdout + out.stderr)
    return out.stdout + out.stderr


@pytest.mark.requires_peers("svwar")
def test_an_extension_scanner_learns_nothing(sipbot_server: StartServer, peers_tmp: Path) -> None:
    trunk_only = write(peers_tmp / "trunk.yaml", "  limits: {max_calls: 10}", PBX_ONLY_OTHER)
    server = sipbot_server("--config", str(trunk_only))
    refused = svwar(peers_tmp, server.port, "svwar-403")
    assert "found nothing" in refused
    assert "refused INVITE from 127.0.0.1: unknown source" in server.log()
    trust = '  trust: {users: {carol: "${CAROL_PW}"}}'
    digest = sipbot_server("--config", str(write(peers_tmp / "digest.yaml", trust)), env=ENV)
    challenged = svwar(peers_tmp, digest.port, "svwar-401")
    # every name (carol exists, the others do not) got the same challenge
    assert "authentication request for an unknown extension" in challenged
    assert "found nothing" in challenged
    for log in (server.log(), digest.log()):
        assert not re.search(r"call \S+ from", log)  # nothing was ever routed
