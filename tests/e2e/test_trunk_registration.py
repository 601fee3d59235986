"""sipbot registers at a real Kamailio registrar (digest MD5, SHA-256) and takes calls through it.

Each test writes a config with a ``trunks:`` entry pointing at Kamailio instances on free
loopback ports, starts ``sipbot run`` and watches both sides: Kamailio's location table
(``kamcmd ul.dump``) and sipbot's one-line-per-change registration log.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.calls import sip_request_times
from tests.e2e.conftest import SipbotServer, StartServer
from tests.e2e.peers import audio, baresip, dnsmasq, kamailio, sipp, sipp_scenarios
from tests.e2e.peers.capture import RtpCapture
from tests.e2e.peers.ports import free_port

T = TypeVar("T")
ECHO_MIN_CORRELATION = 0.9
ECHO_HOLD_S = 9.5  # the echo of the speech fixture has played out ~8 s after the answer
WAIT_S = 30.0
USERS = {"bot": "botpw", "alice": "alicepw", "carol": "carolpw", "600": "pbxpw"}
REPO = Path(__file__).resolve().parents[2]
ENV = {"BOT_PW": "botpw", "WRONG_PW": "not-the-password", "CAROL_PW": "carolpw"}
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def config(path: Path, trunks: str, *, server: str = "", routes: str = "") -> Path:
    text = f"""\
server:
  sip:
    timers: {{t1_ms: 100}}
{server}
agents:
  echo: {{provider: local, local: {{mode: echo}}}}
trunks:
{trunks}
routes:
{routes or "  - {match: {did: bot}, answer: echo}"}
"""
    path.write_text(text)
    return path


def trunk(name: str, registrar: str, password: str = "${BOT_PW}", **extra: object) -> str:
    lines = [
        f"  {name}:",
        f'    registrar: "{registrar}"',
        "    user: bot",
        f'    password: "{password}"',
        "    retry_min_s: 1",
        "    retry_max_s: 4",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines)


def wait_until(check: Callable[[], T | None], timeout: float = WAIT_S, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def reg_lines(server: SipbotServer, name: str) -> list[tuple[float, str]]:
    """(unix time, text) of each ``trunk NAME: registration ...`` log line."""
    out = []
    for line in server.log().splitlines():
        m = re.match(r"(\S+ \S+) \S+ \S+: trunk " + re.escape(name) + r": registration (.*)", line)
        if m:
            stamp = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S"))
            out.append((stamp + int(m.group(1)[20:]) / 1000, m.group(2)))
    return out


def binding(kam: kamailio.Kamailio, aor: str = "bot") -> dict[str, str] | None:
    return next((b for b in kam.bindings() if b["AoR"] == aor), None)


def refreshed(kam: kamailio.Kamailio, cseq: int) -> bool:
    return int((binding(kam) or {}).get("CSeq", 0)) >= cseq + 2


@pytest.fixture
def registrars(peers_tmp: Path) -> Iterator[list[kamailio.Kamailio]]:
    started: list[kamailio.Kamailio] = []
    yield started
    for kam in started:
        kam.stop()


def start_registrar(
    started: list[kamailio.Kamailio], peers_tmp: Path, name: str, **kwargs: object
) -> kamailio.Kamailio:
    log_dir = peers_tmp / name
    log_dir.mkdir(exist_ok=True)
    kam = kamailio.start_registrar(log_dir, USERS, **kwargs)  # type: ignore[arg-type]
    started.append(kam)
    return kam


def registered_caller_hears_its_echo(
    peers_tmp: Path, speech: audio.Speech, kam: kamailio.Kamailio, dial: str
) -> None:
    """baresip user ``alice``, registered at ``kam``, dials ``dial`` and hears its speech back."""
    caller = baresip.start(
        peers_tmp,
        speech.wav_8k,
        name="alice",
        user="alice",
        dial=dial,
        duration_s=ECHO_HOLD_S,
        registration=baresip.Registration(kam.address, "alicepw"),
    )
    assert caller.wait(30) == 0
    heard, rate = caller.received_audio()
    assert audio.correlation(speech.pcm(8000), heard, 8000, rate) >= ECHO_MIN_CORRELATION


@pytest.mark.requires_peers("kamailio", "kamcmd", "baresip")
def test_registers_sha256_and_md5_refreshes_and_a_registered_caller_hears_its_echo(
    sipbot_server: StartServer,
    registrars: list[kamailio.Kamailio],
    peers_tmp: Path,
    speech: audio.Speech,
) -> None:
    sha = start_registrar(registrars, peers_tmp, "sha", sha256=True, qop=True, min_expires=10)
    md5 = start_registrar(registrars, peers_tmp, "md5", qop=True, min_expires=10)
    trunks = "\n".join(
        [
            trunk("sha", f"sip:127.0.0.1:{sha.port}", expires=10),
            trunk("md5", f"sip:127.0.0.1:{md5.port}", expires=10),
        ]
    )
    path = config(peers_tmp / "bot.yaml", trunks, routes="  - {match: {trunk: md5}, answer: echo}")
    server = sipbot_server("--config", str(path), env=ENV)
    # the "sha" Kamailio challenges and verifies with SHA-256 only (its algorithm is global),
    # so a binding there proves our SHA-256 answer; the other one proves MD5
    for kam in (sha, md5):
        first = wait_until(partial(binding, kam), what=f"the binding at {kam.port}")
        assert first["Address"].startswith(f"sip:bot@127.0.0.1:{server.port}")
        assert int(first["Expires"]) <= 10
        # a refresh at half of the 10 s granted: the binding's CSeq moves on (+2: a new
        # challenge each time), it never lapses
        wait_until(partial(refreshed, kam, int(first["CSeq"])), timeout=15, what="a refresh")
    for name in ("sha", "md5"):
        assert [t for _s, t in reg_lines(server, name)][-1].startswith("registered code=200")

    registered_caller_hears_its_echo(peers_tmp, speech, md5, md5.uri("bot"))
    assert re.search(r"call \S+ from alice to bot via 127\.0\.0\.1 \(trunk md5\)", server.log())


@pytest.mark.requires_peers("kamailio", "kamcmd")
def test_wrong_password_fails_with_the_code_and_backs_off(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "reg", qop=True)
    path = config(peers_tmp / "bot.yaml", trunk("pbx", f"sip:127.0.0.1:{kam.port}", "${WRONG_PW}"))
    server = sipbot_server("--config", str(path), env=ENV)
    wait_until(
        lambda: sum(t.startswith("failed") for _s, t in reg_lines(server, "pbx")) >= 3,
        timeout=20,
        what="three failed rounds",
    )
    lines = reg_lines(server, "pbx")
    failed = [(s, t) for s, t in lines if t.startswith("failed")]
    assert all("code=401" in t and "credentials refused" in t for _s, t in failed)
    attempts = [s for s, t in lines if t.startswith("registering")]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # backoff: 1 s, 2 s, 4 s caps with jitter in [50 %, 100 %]: never a tight loop
    assert len(gaps) >= 2
    assert all(gap >= 0.45 for gap in gaps), gaps
    assert binding(kam) is None


@pytest.mark.requires_peers("kamailio", "kamcmd")
def test_423_is_retried_with_min_expires(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "reg", min_expires=120)
    path = config(peers_tmp / "bot.yaml", trunk("pbx", f"sip:127.0.0.1:{kam.port}", expires=30))
    server = sipbot_server("--config", str(path), env=ENV)
    bound = wait_until(lambda: binding(kam), what="the binding")
    assert 100 < int(bound["Expires"]) <= 120
    texts = [t for _s, t in reg_lines(server, "pbx")]
    assert texts[1].startswith("registering code=423 registrar=")
    assert "Min-Expires 120" in texts[1]
    assert texts[-1].startswith("registered code=200")
    assert "expires=120s" in texts[-1]
    # a clean stop removes the binding (un-REGISTER, answering the challenge again)
    assert server.process.stop(timeout=10.0, signum=signal.SIGTERM) == 0
    assert binding(kam) is None


@pytest.mark.requires_peers("kamailio", "kamcmd")
def test_silent_registrar_times_out_and_the_next_registrar_is_used(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "reg")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        dead = silent.getsockname()[1]
        both = f'["sip:127.0.0.1:{dead}", "sip:127.0.0.1:{kam.port}"]'
        lines = [
            "  pbx:",
            f"    registrar: {both}",
            "    user: bot",
            '    password: "${BOT_PW}"',
            "    retry_min_s: 1",
        ]
        path = config(peers_tmp / "bot.yaml", "\n".join(lines))
        started = time.monotonic()
        server = sipbot_server("--config", str(path), env=ENV)
        wait_until(lambda: binding(kam), timeout=20, what="the binding at the second registrar")
        took = time.monotonic() - started
        silent.settimeout(0.1)
        received = 0
        try:
            while True:
                silent.recv(4096)
                received += 1
        except TimeoutError:
            pass
    texts = [t for _s, t in reg_lines(server, "pbx")]
    assert "code=408" in texts[1]
    assert f"127.0.0.1:{dead}: trying the next address" in texts[1]
    assert texts[-1].startswith(f"registered code=200 registrar=sip:127.0.0.1:{kam.port}")
    assert received >= 5  # Timer E retransmissions reached the silent one
    assert 6.0 <= took <= 20.0  # Timer F = 64·T1 = 6.4 s, then the next registrar at once


@pytest.mark.requires_peers("kamailio", "kamcmd")
def test_registrar_restarted_then_re_registered(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "first", min_expires=10)
    path = config(peers_tmp / "bot.yaml", trunk("pbx", f"sip:127.0.0.1:{kam.port}", expires=10))
    sipbot_server("--config", str(path), env=ENV)
    wait_until(lambda: binding(kam), what="the first binding")
    port = kam.port
    kam.stop()
    registrars.remove(kam)
    again = start_registrar(registrars, peers_tmp, "second", min_expires=10, port=port)
    assert binding(again) is None  # a fresh location table
    bound = wait_until(lambda: binding(again), timeout=20, what="re-registration")
    assert bound["Address"].startswith("sip:bot@127.0.0.1:")


@pytest.mark.requires_peers("kamailio", "kamcmd", "dnsmasq")
def test_srv_with_two_targets_first_down_second_used(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "reg")
    dead = free_port("udp")
    dns = dnsmasq.start(
        peers_tmp,
        hosts={"sip1.trunk.test": "127.0.0.1", "sip2.trunk.test": "127.0.0.1"},
        srv=[
            ("_sip._udp.trunk.test", "sip1.trunk.test", dead, 10, 50),
            ("_sip._udp.trunk.test", "sip2.trunk.test", kam.port, 20, 50),
        ],
    )
    try:
        server_part = f"    dns_servers: [127.0.0.1]\n    dns_port: {dns.port}"
        path = config(
            peers_tmp / "bot.yaml",
            trunk("carrier", "sip:trunk.test", domain="127.0.0.1"),
            server=server_part,
        )
        server = sipbot_server("--config", str(path), env=ENV)
        wait_until(lambda: binding(kam), timeout=25, what="the binding via SRV")
    finally:
        dns.stop()
    texts = [t for _s, t in reg_lines(server, "carrier")]
    assert f"127.0.0.1:{dead}: trying the next address" in texts[1]
    assert texts[-1].startswith("registered code=200 registrar=sip:trunk.test")


@pytest.mark.requires_peers("kamailio", "kamcmd", "baresip", "sipp")
def test_pbx_trunk_example_registers_and_only_the_pbx_gets_in(
    sipbot_server: StartServer,
    registrars: list[kamailio.Kamailio],
    peers_tmp: Path,
    speech: audio.Speech,
) -> None:
    """dialplans/pbx-trunk.yaml as shipped: sipbot registers as extension 600 at the "PBX",
    a PBX user calling 600 hears the echo route, another source gets 403 before routing."""
    pbx = start_registrar(registrars, peers_tmp, "pbx")
    env = {
        "PBX_REGISTRAR": f"sip:127.0.0.1:{pbx.port}",
        "PBX_USER": "600",
        "PBX_PASSWORD": "pbxpw",
        "GEMINI_API_KEY": "unused",
        "OPENAI_API_KEY": "unused",
    }
    example = str(REPO / "dialplans" / "pbx-trunk.yaml")
    server = sipbot_server("--config", example, "--public-address", "127.0.0.1", env=env)
    bound = wait_until(lambda: binding(pbx, "600"), what="the extension's binding")
    assert bound["Address"].startswith(f"sip:600@127.0.0.1:{server.port}")
    registered_caller_hears_its_echo(peers_tmp, speech, pbx, pbx.uri("600"))
    scenario = sipp_scenarios.reject_scenario(peers_tmp / "r403.xml", 403)
    outsider = sipp.run_uac(
        server.address, scenario, peers_tmp, service="600", extra_args=["-i", "127.0.0.2"]
    )
    outsider.assert_ok(calls=1)
    log = server.log()
    assert re.search(
        r"call \S+ from alice to 600 via 127\.0\.0\.1 \(trunk pbx\): route echo-test", log
    )
    assert "refused INVITE from 127.0.0.2: unknown source" in log


@pytest.mark.requires_peers("kamailio", "kamcmd")
def test_tcp_registration_re_registers_when_the_connection_breaks(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "first")
    path = config(
        peers_tmp / "bot.yaml", trunk("pbx", f"sip:127.0.0.1:{kam.port}", transport="tcp")
    )
    server = sipbot_server("--config", str(path), env=ENV)
    bound = wait_until(lambda: binding(kam), what="the first binding")
    assert bound["Address"].endswith(";transport=tcp")
    port = kam.port
    kam.stop()  # closes our TCP connection: RFC 5626 flow failure
    registrars.remove(kam)
    again = start_registrar(registrars, peers_tmp, "second", port=port)
    # expires is 600 s: only the broken connection can explain a new binding this soon
    wait_until(lambda: binding(again), timeout=15, what="re-registration after the break")
    texts = [t for _s, t in reg_lines(server, "pbx")]
    assert any(t.startswith("registering code=503") and "transport broke" in t for t in texts)


def udp_payload_times(pcap: Path, port: int) -> list[tuple[float, int]]:
    """(epoch s, UDP payload length) of every datagram sent to ``port`` in ``pcap``."""
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-Y",
            f"udp.dstport == {port}",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "udp.length",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    return [(float(t), int(n) - 8) for t, n in rows]


@pytest.mark.requires_peers("kamailio", "kamcmd", "capture", "tshark")
def test_refreshes_and_keepalives_on_the_wire(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "reg", qop=True, min_expires=10)
    capture = RtpCapture.start(peers_tmp, [kam.port], name="sip")
    try:
        path = config(
            peers_tmp / "bot.yaml",
            trunk("pbx", f"sip:127.0.0.1:{kam.port}", expires=10, keepalive_s=2),
        )
        sipbot_server("--config", str(path), env=ENV)
        wait_until(partial(binding, kam), what="the binding")
        time.sleep(11.5)  # two refreshes (every 5 s) and keep-alives (every 2 s) in between
    finally:
        pcap = capture.stop()
    registers = sip_request_times(pcap, kam.port, "REGISTER")
    keepalives = [t for t, size in udp_payload_times(pcap, kam.port) if size == 4]
    # each registration is a challenged REGISTER + its answer: pairs, ~5 s apart
    answered = registers[1::2]
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    assert len(gaps) >= 2, registers
    assert all(4.5 <= gap <= 6.0 for gap in gaps), gaps
    assert len(keepalives) >= 3, keepalives
    assert all(1.5 <= b - a <= 3.5 for a, b in itertools.pairwise(keepalives))


@pytest.mark.requires_peers("kamailio", "kamcmd")
def test_registers_through_an_outbound_proxy(
    sipbot_server: StartServer, registrars: list[kamailio.Kamailio], peers_tmp: Path
) -> None:
    kam = start_registrar(registrars, peers_tmp, "reg", qop=True)
    proxy_dir = peers_tmp / "proxy"
    proxy_dir.mkdir()
    proxy = kamailio.start_proxy(proxy_dir, kam.port)
    registrars.append(proxy)
    path = config(
        peers_tmp / "bot.yaml",
        trunk("pbx", f"sip:127.0.0.1:{kam.port}", outbound_proxy=f'"sip:127.0.0.1:{proxy.port}"'),
    )
    server = sipbot_server("--config", str(path), env=ENV)
    wait_until(partial(binding, kam), what="the binding through the proxy")
    relayed = re.findall(r"initial REGISTER \S+ -> ", proxy.log())
    assert len(relayed) >= 2  # the first REGISTER and its answer to the challenge
    texts = [t for _s, t in reg_lines(server, "pbx")]
    assert texts[-1].startswith(f"registered code=200 registrar=sip:127.0.0.1:{kam.port}")
