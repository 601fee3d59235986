"""Self-check of the e2e peer library: real peers against each other, no sipbot involved.

Each test proves one piece the sipbot end-to-end tests rely on: ports, processes, audio proof,
SIPp scenarios (UDP/TCP, three codecs, DTMF, both hangup directions), Kamailio as proxy /
registrar / dispatcher, baresip and pjsua2 with recordings, RTP capture statistics, and the
``sipbot_server`` fixture (against a stand-in server). Deselect with ``-m "not peers_selfcheck"``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e import conftest as e2e_conftest
from tests.e2e.peers import audio, baresip, capture, kamailio, linphone, pjsua2_peer, ports, sipp
from tests.e2e.peers.process import ManagedProcess, PeerError

pytestmark = [pytest.mark.e2e, pytest.mark.peers_selfcheck, pytest.mark.timeout(120)]

ECHO_MIN_CORRELATION = 0.9
UNRELATED_MAX_CORRELATION = 0.2


# --- ports, processes, audio -----------------------------------------------------------------


def test_ports_are_distinct_blocks_and_locked_across_processes() -> None:
    singles = [ports.free_port() for _ in range(20)]
    blocks = [ports.reserve(ports.SIPP_MEDIA_BLOCK, "udp") for _ in range(5)]
    every = singles + [p for b in blocks for p in b.ports]
    assert len(set(every)) == len(every)
    for block in blocks:
        assert block.ports == tuple(range(block.port, block.port + 4))
    taken = blocks[0].port
    probe = (
        "import sys; from tests.e2e.peers import ports; "
        f"print(ports._lock_all(range({taken}, {taken + 1})) is None)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "True", out.stderr
    blocks[0].release()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_process_waits_for_ready_line_and_kills_a_stubborn_child(peers_tmp: Path) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('warming up', flush=True)\n"
        "time.sleep(0.2)\n"
        "print('ready on 42', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = ManagedProcess.start("stubborn", [sys.executable, "-c", script], peers_tmp)
    match = proc.wait_for_line(r"^ready on (\d+)", 10.0, stream="stderr")
    assert match.group(1) == "42"
    with pytest.raises(PeerError, match=r"stubborn did not print 'never' on stdout within 0.2 s"):
        proc.wait_for_line("never", 0.2)
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -9  # SIGTERM ignored → SIGKILL
    assert time.monotonic() - started < 3.0
    assert (peers_tmp / "stubborn.stdout.log").read_text() == "warming up\n"


def test_process_that_exits_early_is_reported(peers_tmp: Path) -> None:
    proc = ManagedProcess.start("quitter", [sys.executable, "-c", "raise SystemExit(3)"], peers_tmp)
    with pytest.raises(PeerError, match=r"quitter exited with 3 before printing"):
        proc.wait_for_line("ready", 10.0)


def test_correlation_accepts_codec_copies_and_rejects_other_audio(
    speech: audio.Speech, other_speech: audio.Speech
) -> None:
    ref = speech.pcm(8000)
    ulaw = audio.decode_ulaw(speech.ulaw.read_bytes())
    alaw = audio.decode_alaw(speech.alaw.read_bytes())
    g722 = audio.decode_g722(speech.g722.read_bytes())
    delayed = np.concatenate([np.zeros(2345, np.int16), (ulaw // 4).astype(np.int16)])
    assert audio.correlation(ref, ulaw, 8000) >= 0.99
    assert audio.correlation(ref, alaw, 8000) >= 0.99
    assert audio.correlation(ref, g722, 8000, recorded_rate=16000) >= 0.99
    assert audio.correlation(speech.pcm(16000), g722, 16000) >= 0.99
    assert audio.correlation(ref, delayed, 8000) >= 0.99  # delay and gain do not matter
    assert audio.correlation(ref, other_speech.pcm(8000), 8000) < UNRELATED_MAX_CORRELATION
    assert audio.correlation(ref, audio.tone(440.0, 3.0), 8000) < UNRELATED_MAX_CORRELATION
    noise = np.random.default_rng(7).normal(0, 3000, 30000).astype(np.int16)
    assert audio.correlation(ref, noise, 8000) < UNRELATED_MAX_CORRELATION
    assert audio.correlation(ref, np.zeros(8000, np.int16), 8000) == 0.0
    half = audio.correlation(ref, ulaw[: len(ulaw) // 2], 8000)
    assert 0.5 < half < 0.9  # a partial recording scores lower


def test_tone_rms_and_g711_tables() -> None:
    assert audio.rms(audio.tone(1000.0, 1.0, 8000, 0.5)) == pytest.approx(
        0.5 * 32767 / 2**0.5, abs=1
    )
    assert audio.rms_dbfs(np.zeros(10, np.int16)) == float("-inf")
    # ITU-T G.711 reference points.
    assert audio.decode_ulaw(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    assert audio.decode_alaw(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]


# --- SIPp ------------------------------------------------------------------------------------


@pytest.mark.requires_peers("sipp", "capture")
@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_sipp_uac_hears_its_speech_echoed_by_sipp_uas(
    codec: str, speech: audio.Speech, peers_tmp: Path
) -> None:
    uas_xml = sipp.uas_scenario(peers_tmp / "uas.xml", codecs=[codec])
    uas = sipp.start_uas(peers_tmp, uas_xml, calls=1)
    uac_xml = sipp.uac_scenario(
        peers_tmp / "uac.xml", speech.raw_for(codec), codec, hold_s=speech.duration_s + 0.3
    )
    result = sipp.run_uac(uas.address, uac_xml, peers_tmp, capture=True, timeout_s=30)
    result.assert_ok(calls=1)
    uas.wait(10).assert_ok(calls=1)

    assert result.capture is not None
    packets = result.capture.packets()
    sent = capture.select(packets, src_port=result.capture.ports[0])
    echoed = capture.select(packets, dst_port=result.capture.ports[0])
    stats = capture.stream_stats(sent)
    assert list(stats) == [sipp.SIPP_RTP_SSRC_BASE]  # one stream: call 0's rtp_stream
    out = stats[sipp.SIPP_RTP_SSRC_BASE]
    assert out.packets >= 50 * speech.duration_s - 5
    assert 19.0 < out.gap_mean_ms < 21.0
    assert out.seq_missing == 0
    assert out.seq_out_of_order == 0
    assert out.timestamp_steps == {160: out.packets - 1}

    pcm, rate = capture.received_audio(echoed)
    assert (
        audio.correlation(speech.pcm(8000), pcm, 8000, recorded_rate=rate) >= ECHO_MIN_CORRELATION
    )
    first = capture.first_audible(echoed)
    assert first is not None
    # The speech file starts with 0.3 s of silence.
    assert 0.2 < first.time - echoed[0].time < 0.5


@pytest.mark.requires_peers("sipp")
def test_sipp_over_tcp(speech: audio.Speech, peers_tmp: Path) -> None:
    uas = sipp.start_uas(peers_tmp, sipp.uas_scenario(peers_tmp / "uas.xml"), transport="tcp")
    uac_xml = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hold_s=0.5)
    result = sipp.run_uac(uas.address, uac_xml, peers_tmp, transport="tcp", calls=2, timeout_s=20)
    result.assert_ok(calls=2)
    assert "TCP message sent" in result.messages()
    assert "UDP message" not in result.messages()
    assert uas.stop().successful == 2


@pytest.mark.requires_peers("sipp", "capture", "dtmf_pcap")
def test_sipp_dtmf_pcap_reaches_the_far_end(speech: audio.Speech, peers_tmp: Path) -> None:
    uas = sipp.start_uas(peers_tmp, sipp.uas_scenario(peers_tmp / "uas.xml"), calls=1, capture=True)
    uac_xml = sipp.uac_scenario(
        peers_tmp / "uac.xml", speech.ulaw, hold_s=0.5, dtmf_pcap=sipp.dtmf_pcap("1")
    )
    sipp.run_uac(uas.address, uac_xml, peers_tmp, timeout_s=20).assert_ok(calls=1)
    result = uas.wait(10)
    assert result.capture is not None
    arrived = capture.select(result.capture.packets(), dst_port=uas.media_port)
    events = [p for p in arrived if p.payload_type == audio.PT_TELEPHONE_EVENT]
    assert len(events) == 10
    assert {p.payload[0] for p in events} == {1}  # RFC 4733 event code of digit 1
    assert events[-1].payload[1] & 0x80  # end bit


# --- Kamailio --------------------------------------------------------------------------------


@pytest.mark.requires_peers("sipp", "kamailio")
@pytest.mark.parametrize("hangup", ["caller", "callee"])
def test_kamailio_proxy_keeps_ack_and_bye_on_the_recorded_route(
    hangup: sipp.Hangup, speech: audio.Speech, peers_tmp: Path
) -> None:
    uas_xml = sipp.uas_scenario(peers_tmp / "uas.xml", hangup=hangup, hold_s=1.0)
    uas = sipp.start_uas(peers_tmp, uas_xml, calls=1)
    proxy = kamailio.start_proxy(peers_tmp, uas.port)
    try:
        uac_xml = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hangup=hangup, hold_s=1.0)
        result = sipp.run_uac(proxy.address, uac_xml, peers_tmp, timeout_s=20)
        result.assert_ok(calls=1)
        uas.wait(10).assert_ok(calls=1)
    finally:
        proxy.stop()
    route = re.compile(rf"^Route: <sip:127\.0\.0\.1:{proxy.port};lr=on", re.M)
    caller_trace, callee_trace = result.messages(), uas.stop().messages()
    assert f"Record-Route: <sip:127.0.0.1:{proxy.port};lr=on" in caller_trace
    assert len(route.findall(caller_trace)) == (2 if hangup == "caller" else 1)  # ACK (+ BYE)
    assert len(route.findall(callee_trace)) == (1 if hangup == "callee" else 0)  # its BYE
    log = proxy.log()
    assert "in-dialog ACK" in log
    assert "in-dialog BYE" in log


@pytest.mark.requires_peers("sipp", "kamailio")
def test_kamailio_dispatcher_balances_and_fails_over(speech: audio.Speech, peers_tmp: Path) -> None:
    uas_xml = sipp.uas_scenario(peers_tmp / "uas.xml")
    backends = [sipp.start_uas(peers_tmp, uas_xml, name=f"backend{i}") for i in range(2)]
    uris = [f"sip:127.0.0.1:{b.port}" for b in backends]
    dispatcher = kamailio.start_dispatcher(peers_tmp, uris)
    try:
        uac_xml = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, hold_s=0.3)
        first = sipp.run_uac(dispatcher.address, uac_xml, peers_tmp, calls=4, rate=20, name="uac1")
        first.assert_ok(calls=4)
        log = dispatcher.log()
        assert [log.count(f"-> {uri}") for uri in uris] == [2, 2]

        backends[1].stop()
        second = sipp.run_uac(dispatcher.address, uac_xml, peers_tmp, calls=4, rate=20, name="uac2")
        second.assert_ok(calls=4)  # a call sent to the dead backend fails over after fr_timer
        deadline = time.monotonic() + 10.0
        while dispatcher.dispatcher_states().get(uris[1], "").startswith("A"):
            assert time.monotonic() < deadline, dispatcher.dispatcher_states()
            time.sleep(0.2)
        states = dispatcher.dispatcher_states()
        assert states[uris[0]].startswith("A")
        assert states[uris[1]].startswith("I")
        assert "failed, trying the next one" in dispatcher.log()
    finally:
        dispatcher.stop()
    assert backends[0].stop().successful == 2 + 4


@pytest.mark.requires_peers("baresip", "kamailio")
def test_kamailio_registrar_routes_between_registered_baresips(
    speech: audio.Speech, other_speech: audio.Speech, peers_tmp: Path
) -> None:
    registrar = kamailio.start_registrar(
        peers_tmp, {"alice": "alice-pw", "bob": "bob-pw"}, auth_invites=True
    )
    try:
        with pytest.raises(PeerError, match="did not print"):
            baresip.start(
                peers_tmp,
                speech.wav_8k,
                name="intruder",
                user="alice",
                registration=baresip.Registration(registrar.address, "wrong"),
                ready_timeout=2.0,
            )
        alice = baresip.start(
            peers_tmp,
            speech.wav_8k,
            name="alice",
            user="alice",
            answer=True,
            registration=baresip.Registration(registrar.address, "alice-pw"),
        )
        try:
            assert list(registrar.registered()) == ["alice"]
            bob = baresip.start(
                peers_tmp,
                other_speech.wav_8k,
                name="bob",
                user="bob",
                dial=registrar.uri("alice"),
                duration_s=speech.duration_s + 1.5,
                registration=baresip.Registration(registrar.address, "bob-pw"),
            )
            assert bob.wait(30) == 0
        finally:
            assert alice.stop() == 0  # before the registrar: baresip un-registers on exit
    finally:
        registrar.stop()
    assert [uri.split(";")[0] for uri in alice.answered_from()] == [f"sip:bob@{registrar.address}"]
    log = registrar.log()
    assert "challenging INVITE from bob" in log
    assert log.index("challenging INVITE from bob") < log.index("authenticated INVITE from bob")
    heard, rate = bob.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION
    assert audio.correlation(other_speech.pcm(8000), heard, 8000, rate) < UNRELATED_MAX_CORRELATION


@pytest.mark.requires_peers("sipp", "kamailio")
def test_sipp_reject_scenario_expects_the_exact_status(peers_tmp: Path) -> None:
    registrar = kamailio.start_registrar(peers_tmp, {})
    try:
        expect_404 = sipp.reject_scenario(peers_tmp / "reject404.xml", 404)
        result = sipp.run_uac(
            registrar.address, expect_404, peers_tmp, service="nobody", name="r404"
        )
        result.assert_ok(calls=1)
        expect_486 = sipp.reject_scenario(peers_tmp / "reject486.xml", 486)
        wrong = sipp.run_uac(
            registrar.address, expect_486, peers_tmp, service="nobody", name="r486"
        )
    finally:
        registrar.stop()
    assert (wrong.returncode, wrong.successful, wrong.failed) == (1, 0, 1)
    assert "SIP/2.0 404 Not Registered" in result.messages()


# --- baresip and pjsua2 callers --------------------------------------------------------------


@pytest.mark.requires_peers("sipp", "baresip")
def test_baresip_g722_caller_records_the_echo(speech: audio.Speech, peers_tmp: Path) -> None:
    uas = sipp.start_uas(peers_tmp, sipp.uas_scenario(peers_tmp / "uas.xml", ["G722"]), calls=1)
    caller = baresip.start(
        peers_tmp,
        speech.wav_16k,  # baresip's own 8→16 kHz resampler costs ~0.1 of correlation
        codecs=["G722"],
        dial=uas.uri("echo"),
        duration_s=speech.duration_s + 1.5,
    )
    assert caller.wait(30) == 0
    uas.wait(10).assert_ok(calls=1)
    assert caller.established() == [uas.uri("echo")]
    heard, rate = caller.received_audio()
    assert rate == 16000
    assert audio.correlation(speech.pcm(16000), heard, 16000, rate) >= ECHO_MIN_CORRELATION


@pytest.mark.requires_peers("sipp", "pjsua2")
def test_pjsua2_caller_records_the_echo(speech: audio.Speech, peers_tmp: Path) -> None:
    uas = sipp.start_uas(peers_tmp, sipp.uas_scenario(peers_tmp / "uas.xml", ["PCMA"]), calls=1)
    result = pjsua2_peer.run_call(
        peers_tmp, uas.uri("echo"), speech.wav_8k, codec="PCMA", duration_s=speech.duration_s + 0.5
    )
    assert result.ok, result.describe()
    assert result.summary["codec"] == "PCMA"
    assert result.summary["confirmed"] is True
    uas.wait(10).assert_ok(calls=1)
    heard, rate = result.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION


# --- the sipbot_server fixture, proven with a stand-in ---------------------------------------

STAND_IN_SERVER = textwrap.dedent(
    """
    import signal, socket, sys
    host, port = sys.argv[sys.argv.index("--listen") + 1].rsplit(":", 1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((host, int(port)))
    tcp = socket.socket(); tcp.bind((host, int(port))); tcp.listen()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"sipbot ready udp:{host}:{port} tcp:{host}:{port}", file=sys.stderr, flush=True)
    while True:
        data, addr = udp.recvfrom(65535)
        udp.sendto(b"SIP/2.0 200 OK\\r\\n\\r\\n", addr)
    """
)


def test_sipbot_server_fixture_with_a_stand_in(
    sipbot_server: e2e_conftest.StartServer, peers_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = peers_tmp / "stand_in.py"
    script.write_text(STAND_IN_SERVER)
    monkeypatch.setattr(e2e_conftest, "SERVER_COMMAND", [sys.executable, str(script)])
    server = sipbot_server("--extra", "arg")
    assert ports.is_bound(server.port, "udp")
    assert ports.is_bound(server.port, "tcp")
    assert server.uri("alice") == f"sip:alice@127.0.0.1:{server.port}"
    assert server.uri("bob", "tcp") == f"sip:bob@127.0.0.1:{server.port};transport=tcp"
    assert server.log_path.read_text().startswith(f"sipbot ready udp:127.0.0.1:{server.port}")


@pytest.mark.requires_peers("sipp", "linphonec", "capture")
def test_linphone_callee_answers_and_talks(speech: audio.Speech, peers_tmp: Path) -> None:
    callee = linphone.start(peers_tmp, speech.wav_8k, codecs=["PCMA"], answer=True, user="agent")
    uac_xml = sipp.uac_scenario(
        peers_tmp / "uac.xml",
        speech.alaw,
        "PCMA",
        offer=["PCMU", "PCMA", "G722"],
        hold_s=speech.duration_s + 0.3,
        caller="+15551234",
    )
    result = sipp.run_uac(
        f"127.0.0.1:{callee.port}", uac_xml, peers_tmp, service="agent", capture=True, timeout_s=20
    )
    result.assert_ok(calls=1)
    assert callee.stop() == 0
    assert [uri.split("@")[0] for uri in callee.incoming_from()] == ["sip:+15551234"]
    assert re.search(r"^m=audio \d+ RTP/AVP 8 101$", result.messages(), re.M)  # its answer
    assert result.capture is not None
    heard_by_caller = capture.select(result.capture.packets(), dst_port=result.capture.ports[0])
    pcm, rate = capture.received_audio(heard_by_caller)
    assert audio.correlation(speech.pcm(8000), pcm, 8000, rate) >= ECHO_MIN_CORRELATION
    # linphonec's jitter buffer slips ~10 ms early in a call: judge its recording per segment.
    heard, rate = callee.received_audio()
    scores = audio.segment_correlations(speech.pcm(8000), heard, 8000, rate)
    loud = [s for s in scores if s is not None]
    assert len(loud) >= 5
    assert sum(s >= 0.95 for s in loud) >= len(loud) - 1  # all but the segment with the slip


@pytest.mark.requires_peers("sipp", "baresip")
def test_baresip_caller_follows_a_blind_transfer(speech: audio.Speech, peers_tmp: Path) -> None:
    target = baresip.start(peers_tmp, speech.wav_8k, name="operator", user="operator", answer=True)
    uas_xml = sipp.uas_scenario(peers_tmp / "uas.xml", refer_to=target.uri, hold_s=1.0)
    uas = sipp.start_uas(peers_tmp, uas_xml, calls=1)
    caller = baresip.start(
        peers_tmp, speech.wav_8k, name="alice", user="alice", dial=uas.uri("bot"), duration_s=4
    )
    assert caller.wait(20) == 0
    uas.wait(10).assert_ok(calls=1)
    assert target.stop() == 0
    assert caller.transfers() == [target.uri]
    assert target.answered_from() == ["sip:alice@127.0.0.1"]
    assert [uri for uri, _ in caller.terminated()] == [uas.uri("bot"), target.uri]
    assert "REFER sip:alice" in uas.stop().messages()
