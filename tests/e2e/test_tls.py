"""SIP over TLS with real peers: baresip calls sipbot over TLS, sipbot registers over TLS at
Kamailio (its tls module), and an untrusted registrar certificate ends in a clear failure.

Certificates are self-signed, made by each test with ``openssl req -x509`` for 127.0.0.1
(subjectAltName IP:127.0.0.1); sipbot trusts one of them through ``server.sip.tls.ca_file``.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer
from tests.e2e.peers import audio, baresip, kamailio
from tests.e2e.peers.ports import free_port
from tests.e2e.test_trunk_registration import (
    ECHO_HOLD_S,
    ECHO_MIN_CORRELATION,
    ENV,
    USERS,
    binding,
    reg_lines,
    registered_caller_hears_its_echo,
    trunk,
    wait_until,
)

REFUSED_WITHIN_S = 5.0  # connect + handshake failure is reported at once, never a hang


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (PEM files)."""
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    argv += ["-out", str(cert), "-days", "2", "-subj", f"/CN=127.0.0.1/O={name}"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def tls_config(
    path: Path, tls: str, *, trunks: str = "", routes: str = "  - {answer: echo}"
) -> Path:
    text = f"""\
server:
  sip:
    timers: {{t1_ms: 100}}
    tls: {tls}
agents:
  echo: {{provider: local, local: {{mode: echo}}}}
{"trunks:" if trunks else ""}
{trunks}
routes:
{routes}
"""
    path.write_text(text)
    return path


@pytest.fixture
def registrars() -> Iterator[list[kamailio.Kamailio]]:
    started: list[kamailio.Kamailio] = []
    yield started
    for kam in started:
        kam.stop()


def tls_registrar(
    started: list[kamailio.Kamailio],
    peers_tmp: Path,
    cert: tuple[Path, Path],
    reuse_connection: bool = False,
) -> kamailio.Kamailio:
    log_dir = peers_tmp / "kamailio"
    log_dir.mkdir(exist_ok=True)
    kam = kamailio.start_registrar(
        log_dir, USERS, qop=True, tls=cert, reuse_connection=reuse_connection
    )
    started.append(kam)
    assert kam.tls_port is not None
    return kam


@pytest.mark.requires_peers("baresip", "openssl")
def test_a_call_over_tls_from_baresip_hears_its_echo(
    sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:
    cert, key = make_cert(peers_tmp, "sipbot")
    tls_port = free_port("tcp")
    path = tls_config(peers_tmp / "bot.yaml", f"{{cert_file: {cert}, key_file: {key}}}")
    server = sipbot_server("--config", str(path), "--listen", f"tls:127.0.0.1:{tls_port}")
    caller = baresip.start(
        peers_tmp,
        speech.wav_8k,
        name="alice",
        user="alice",
        dial=f"sip:bot@127.0.0.1:{tls_port};transport=tls",
        duration_s=ECHO_HOLD_S,
        transport="tls",
    )
    assert caller.wait(30) == 0
    heard, rate = caller.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION
    log = server.log()
    assert re.search(r"call \S+ from alice to bot via 127\.0\.0\.1", log), log[-2000:]
    assert '"reason": "bye-received"' in log  # baresip's BYE reached our Contact (;transport=tls)
    assert f"tls:127.0.0.1:{tls_port}" in log.split("sipbot ready", 1)[1].splitlines()[0]
    # only sipbot's TLS listener was on that port: the call was over TLS
    assert re.search(
        rf"Call established: sip:bot@127\.0\.0\.1:{tls_port};transport=tls", caller.log()
    )


@pytest.mark.requires_peers("kamailio", "kamcmd", "kamailio_tls", "baresip", "openssl")
def test_registration_over_tls_and_a_call_on_the_same_connection(
    sipbot_server: StartServer,
    registrars: list[kamailio.Kamailio],
    peers_tmp: Path,
    speech: audio.Speech,
) -> None:
    """sipbot registers over TLS (verifying Kamailio's certificate through ca_file); a caller
    registered at Kamailio calls sipbot's AOR and the INVITE comes back over the connection the
    REGISTER opened: sipbot has no TLS listener here, so no other way exists."""
    cert, key = make_cert(peers_tmp, "registrar")
    kam = tls_registrar(registrars, peers_tmp, (cert, key), reuse_connection=True)
    path = tls_config(
        peers_tmp / "bot.yaml",
        f"{{ca_file: {cert}}}",
        trunks=trunk("pbx", f"sip:127.0.0.1:{kam.tls_port}", transport="tls"),
        routes="  - {match: {trunk: pbx}, answer: echo}",
    )
    server = sipbot_server("--config", str(path), env=ENV)
    assert "tls:" not in server.log().split("sipbot ready", 1)[1].splitlines()[0]
    bound = wait_until(lambda: binding(kam), what="the binding over TLS")
    assert bound["Address"] == f"sip:bot@127.0.0.1:{server.port};transport=tls"
    assert bound["Socket"] == f"tls:127.0.0.1:{kam.tls_port}", bound
    texts = [t for _s, t in reg_lines(server, "pbx")]
    assert texts[-1].startswith("registered code=200"), texts

    registered_caller_hears_its_echo(peers_tmp, speech, kam, kam.uri("bot"))
    log = server.log()
    assert re.search(r"call \S+ from alice to bot via 127\.0\.0\.1 \(trunk pbx\)", log), log
    assert "TLS connect" not in log  # one connection: the registration's, never refused
    # the registration is still up on that connection after the call
    assert [t for _s, t in reg_lines(server, "pbx")][-1].startswith("registered code=200")


@pytest.mark.requires_peers("kamailio", "kamcmd", "kamailio_tls", "openssl")
def test_an_untrusted_registrar_certificate_fails_clearly(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    rogue = make_cert(peers_tmp, "rogue")
    trusted, _ = make_cert(peers_tmp, "trusted")
    kam = tls_registrar(registrars, peers_tmp, rogue)
    path = tls_config(
        peers_tmp / "bot.yaml",
        f"{{ca_file: {trusted}}}",
        trunks=trunk("pbx", f"sip:127.0.0.1:{kam.tls_port}", transport="tls"),
    )
    started = time.monotonic()
    server = sipbot_server("--config", str(path), env=ENV)
    failed = wait_until(
        lambda: [t for _s, t in reg_lines(server, "pbx") if t.startswith("failed")],
        timeout=REFUSED_WITHIN_S + 10,
        what="the failed state",
    )
    assert time.monotonic() - started < REFUSED_WITHIN_S + 10
    assert "code=503" in failed[0]
    assert "TLS certificate not trusted: self-signed certificate" in failed[0], failed
    log = server.log()
    assert re.search(
        rf"TLS connect to 127\.0\.0\.1:{kam.tls_port} failed: TLS certificate not trusted", log
    )
    assert binding(kam) is None
