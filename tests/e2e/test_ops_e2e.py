"""Operating a real ``sipbot run``: admission under a burst, ``sipbot status`` with calls up,
and a real Prometheus scraping it (issue 10)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, StartServer
from tests.e2e.emulated import wait_until
from tests.e2e.ops_helpers import echo_config, get_json, start_with_http
from tests.e2e.peers import audio, capture, sipp
from tests.e2e.peers.ports import free_port
from tests.e2e.peers.process import ManagedProcess
from tests.e2e.test_call_path import (
    RATE_PER_S,
    StallWitness,
    assert_steady,
    bot_packets,
    cdr_lines,
    paced_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MAX_CALLS = 5
BURST = 8
HOLD_S = 4.0
PROMETHEUS_READY_S = 30.0
PROMETHEUS_SAMPLE_S = 40.0  # the first sample takes ~6 s even at a 1 s interval


def refused_calls(messages: str) -> dict[str, str]:
    """Call-ID -> Retry-After of every 503 in a SIPp message trace (retransmissions once)."""
    out = {}
    for block in re.split(r"\n-{20,}", messages):
        if re.search(r"^SIP/2\.0 503 ", block, re.M):
            call_id = re.search(r"^Call-ID: *(\S+)", block, re.M | re.I)
            retry = re.search(r"^Retry-After: *(\d+)", block, re.M | re.I)
            assert call_id is not None, block
            out[call_id.group(1)] = retry.group(1) if retry else "0"
    return out


@pytest.mark.requires_peers("sipp", "capture")
def test_a_burst_over_max_calls_gets_503_with_retry_after_and_the_admitted_keep_cadence(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    config = echo_config(peers_tmp / "limits.yaml", {"limits": {"max_calls": MAX_CALLS}})
    server = paced_server(sipbot_server, "-c", str(config))
    witness = StallWitness(peers_tmp)
    scenario = sipp.uac_scenario(
        peers_tmp / "uac.xml", speech.raw_for("PCMU"), "PCMU", hold_s=HOLD_S
    )
    result = sipp.run_uac(
        server.address,
        scenario,
        peers_tmp,
        calls=BURST,
        rate=RATE_PER_S,  # all eight INVITEs arrive together
        limit=BURST,
        timeout_s=HOLD_S + 30,
        capture=True,
    )
    stalls = witness.stalls()
    assert (result.successful, result.failed) == (MAX_CALLS, BURST - MAX_CALLS), result.describe()
    refusals = refused_calls(result.messages())
    assert len(refusals) == BURST - MAX_CALLS, result.messages()[-3000:]
    assert all(int(r) > 0 for r in refusals.values()), refusals
    heard = bot_packets(result)
    streams = capture.stream_stats(heard)
    assert len(streams) == MAX_CALLS, sorted(streams)
    for ssrc in streams:
        assert_steady(
            capture.select(heard, ssrc=ssrc), audio.PT_PCMU, int(HOLD_S * 50) - 10, stalls
        )
    assert [c["reason"] for c in cdr_lines(server)] == ["bye-received"] * MAX_CALLS
    assert server.log().count("refused (capacity)") == BURST - MAX_CALLS


@pytest.mark.requires_peers("sipp")
def test_sipbot_status_prints_both_calls_up(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server, url = start_with_http(sipbot_server)
    scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.raw_for("PCMU"), "PCMU", hold_s=8)
    caller = sipp.start_uac(server.address, scenario, peers_tmp, calls=2, rate=10, timeout_s=40)
    try:
        wait_until(lambda: len(get_json(f"{url}/api/status")["calls"]) == 2, 10, "two calls up")
        out = subprocess.run(
            [sys.executable, "-m", "sipbot", "status", "--url", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=REPO_ROOT,
        ).stdout
    finally:
        result = caller.wait(40)
    result.assert_ok(2)
    assert "accepting calls" in out, out
    assert "calls: 2 up of 500" in out, out
    rows = [line for line in out.splitlines() if line.startswith("echo ")]
    assert len(rows) == 2, out
    for row in rows:
        assert "PCMU" in row, row
        assert "sipp" not in row, row  # the caller is masked ("si…pp")


@pytest.mark.requires_peers("sipp", "prometheus")
def test_prometheus_scrapes_active_calls_and_a_latency_histogram(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server, url = start_with_http(sipbot_server)
    prometheus_port = free_port("tcp")
    scrape = (REPO_ROOT / "deploy" / "prometheus.yml").read_text()
    scrape = scrape.replace("scrape_interval: 5s", "scrape_interval: 1s")
    scrape = scrape.replace("127.0.0.1:8089", url.removeprefix("http://"))
    (peers_tmp / "prometheus.yml").write_text(scrape)
    prometheus = ManagedProcess.start(
        "prometheus",
        [
            "prometheus",
            f"--config.file={peers_tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={peers_tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        peers_tmp,
    )
    api = f"http://127.0.0.1:{prometheus_port}/api/v1/query?query="

    def query(expr: str) -> list[dict[str, object]]:
        try:
            data = get_json(api + urllib.parse.quote(expr))
        except OSError:
            return []
        return list(data["data"]["result"])

    short = sipp.uac_scenario(peers_tmp / "short.xml", speech.raw_for("PCMU"), "PCMU", hold_s=2)
    sipp.run_uac(server.address, short, peers_tmp, calls=1, name="sipp-short").assert_ok(1)
    long = sipp.uac_scenario(peers_tmp / "long.xml", speech.raw_for("PCMU"), "PCMU", hold_s=20)
    caller = sipp.start_uac(
        server.address, long, peers_tmp, calls=1, timeout_s=60, name="sipp-long"
    )
    try:
        active = wait_until(
            lambda: [r for r in query("sum(sipbot_calls_active)") if r["value"][1] == "1"],  # type: ignore[index]
            PROMETHEUS_SAMPLE_S,
            "sipbot_calls_active = 1 in Prometheus",
        )
        p99 = wait_until(
            lambda: query(
                "histogram_quantile(0.99, sum by (le) ("
                'sipbot_call_first_audio_latency_seconds_bucket{stat="p99"}))'
            ),
            PROMETHEUS_SAMPLE_S,
            "the first-audio latency histogram in Prometheus",
        )
        dashboard = json.loads((REPO_ROOT / "deploy" / "grafana-dashboard.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:  # every panel's query is valid PromQL here
                answer = get_json(api + urllib.parse.quote(target["expr"]))
                assert answer["status"] == "success", (panel["title"], answer)
    finally:
        prometheus.stop(timeout=5.0)
        result = caller.wait(60)
    result.assert_ok(1)
    assert len(active) == 1, active
    value = float(p99[0]["value"][1])  # type: ignore[index]
    assert 0.0 < value <= 0.1, p99  # one call's first-audio p99, in seconds


@pytest.mark.requires_peers("sipp")
def test_json_logs_one_object_per_line_with_the_call_id_on_call_lines(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    server = sipbot_server("--log-format", "json")
    scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.raw_for("PCMU"), "PCMU", hold_s=1)
    sipp.run_uac(server.address, scenario, peers_tmp, calls=1).assert_ok(1)
    wait_until(lambda: "sipbot.cdr" in server.log(), 10, "the CDR line")
    lines = server.process.read_log("stderr").splitlines()
    records = [json.loads(line) for line in lines if not line.startswith("sipbot ")]
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    about_the_call = [
        r for r in records if r["msg"].startswith("call ") or r["logger"] == "sipbot.cdr"
    ]
    assert len(about_the_call) >= 3, records
    call_ids = {r.get("call_id") for r in about_the_call}
    assert len(call_ids) == 1, about_the_call
    assert None not in call_ids


@pytest.mark.requires_peers("sipp", "capture")
def test_the_media_keeps_its_cadence_while_the_http_api_is_busy(
    speech: audio.Speech, sipbot_server: StartServer, peers_tmp: Path
) -> None:
    """Scrapes (every second), status polls and two pages' event streams in parallel with two
    calls: the calls' RTP keeps its 20 ms cadence (the judge of "never blocks the loop")."""
    port = free_port("tcp")
    server = paced_server(sipbot_server, "--http", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    served: list[int] = []

    def hammer() -> None:  # bounded: stops with the calls; Prometheus every second (5x usual)
        rounds = 0
        while not stop.is_set():
            paths = ["/api/status", "/api/calls"] + (["/metrics"] if rounds % 2 == 0 else [])
            for path in paths:
                with urllib.request.urlopen(url + path, timeout=5) as response:
                    response.read()
                    served.append(response.status)
            rounds += 1
            time.sleep(0.5)

    def watch_events() -> None:
        with urllib.request.urlopen(url + "/api/events", timeout=5) as response:
            while not stop.is_set() and response.readline():
                pass

    threads = [threading.Thread(target=hammer)]
    threads += [threading.Thread(target=watch_events) for _ in range(2)]  # two open pages
    witness = StallWitness(peers_tmp)
    scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.raw_for("PCMU"), "PCMU", hold_s=6)
    for thread in threads:
        thread.start()
    try:
        result = sipp.run_uac(
            server.address, scenario, peers_tmp, calls=2, limit=2, timeout_s=40, capture=True
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    stalls = witness.stalls()
    result.assert_ok(2)
    assert len(served) >= 15, len(served)
    assert set(served) == {200}
    heard = bot_packets(result)
    streams = capture.stream_stats(heard)
    assert len(streams) == 2, sorted(streams)
    for ssrc in streams:
        assert_steady(capture.select(heard, ssrc=ssrc), audio.PT_PCMU, 6 * 50 - 10, stalls)
