"""Operations cores: admission and drain, loop lag, observation, metrics, status text, JSON
logs, the http config, ``sipbot check``/``--version``, the SIP hooks (OPTIONS 503, counters)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sipbot.cli import main
from sipbot.config import ServerSettings, load_config
from sipbot.errors import ConfigError
from sipbot.logjson import JsonFormatter
from sipbot.media.formats import PCM16_16K, PCMU_8K
from sipbot.media.latency import LatencySummary, MediaLatency
from sipbot.media.session import MediaStats
from sipbot.ops.admission import Admission, Refusal
from sipbot.ops.client import format_status
from sipbot.ops.looplag import LoopLagMonitor
from sipbot.ops.metrics import Gauges, Metrics
from sipbot.ops.observe import (
    SILENCE_DBFS,
    NullSink,
    ObservedProvider,
    ObservedSession,
    RecentCalls,
    SessionWatch,
    level_dbfs,
    mask_number,
)
from sipbot.providers.base import (
    AudioOut,
    CallInfo,
    ProviderEvent,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    Transcript,
)
from sipbot.sip.register import RegistrationState
from tests.unit.test_core import Harness, request

# --------------------------------------------------------------------------- admission


def test_admission_admits_below_the_limits() -> None:
    assert Admission(5, 200.0).decide(4, 10.0) is None


def test_admission_refuses_at_capacity_with_retry_after() -> None:
    assert Admission(5, 200.0, retry_after_s=7).decide(5, 0.0) == Refusal("capacity", 7)


def test_admission_refuses_while_the_loop_lags() -> None:
    assert Admission(5, 200.0).decide(0, 250.0) == Refusal("loop-lag", 5)


def test_draining_wins_over_everything_and_is_one_way() -> None:
    admission = Admission(5, 200.0)
    assert admission.start_drain(100.0) is True
    assert admission.start_drain(200.0) is False
    assert admission.drain_started == 100.0
    assert admission.decide(0, 0.0) == Refusal("draining", 30)
    assert admission.ready(0, 0.0) == (False, "draining")


def test_readiness_follows_capacity() -> None:
    admission = Admission(2, 200.0)
    assert admission.ready(1, 0.0) == (True, "ready")
    assert admission.ready(2, 0.0) == (False, "capacity")


# --------------------------------------------------------------------------- loop lag


def test_loop_lag_reports_a_spike_then_lets_it_fade() -> None:
    samples: list[float] = []
    monitor = LoopLagMonitor(on_sample=samples.append)
    monitor.record(0.300)
    assert monitor.lag_ms == pytest.approx(300.0)
    monitor.record(0.001)
    assert monitor.lag_ms == pytest.approx(150.0)
    monitor.record(-0.002)  # woke early: counts as no lag
    assert monitor.lag_ms == pytest.approx(75.0)
    assert monitor.max_lag_ms == pytest.approx(300.0)
    assert samples == pytest.approx([0.3, 0.001, 0.0])


# --------------------------------------------------------------------------- observation


def test_mask_number_keeps_enough_to_tell_calls_apart() -> None:
    assert mask_number("+4930123456") == "+493…56"
    assert mask_number("1234") == "…"
    assert mask_number("") == ""


def test_level_of_a_full_scale_square_wave_is_0_dbfs_and_silence_is_the_floor() -> None:
    square = (b"\xff\x7f\x01\x80") * 160  # +32767, -32767
    assert level_dbfs(square, PCM16_16K) == pytest.approx(0.0, abs=0.01)
    assert level_dbfs(bytes(640), PCM16_16K) == SILENCE_DBFS
    assert level_dbfs(b"", PCM16_16K) == SILENCE_DBFS


def test_level_of_g711_audio_is_decoded_first() -> None:
    # μ-law 0x80 is +32124 and 0x00 is -32124: a near-full-scale square wave
    level = level_dbfs(b"\x80\x00" * 80, PCMU_8K)
    assert level == pytest.approx(20 * math.log10(32124 / 32768), abs=0.01)


class RecordingSession:
    """A provider session that plays back fixed events and records what it was given."""

    def __init__(self, events: list[ProviderEvent]) -> None:
        self._events = events
        self.audio: list[bytes] = []
        self.results: list[tuple[str, str, Any]] = []

    input_format = PCM16_16K
    output_format = PCM16_16K

    def send_audio(self, audio: bytes) -> None:
        self.audio.append(audio)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        for event in self._events:
            yield event

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        self.results.append((call_id, name, result))

    async def send_text(self, text: str) -> None: ...

    async def truncate(self, item_id: str, played_ms: int) -> None: ...

    async def close(self) -> None: ...


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.tools: list[tuple[str, str]] = []

    def provider_event(self, provider: str, kind: str) -> None:
        self.events.append((provider, kind))

    def tool_done(self, tool: str, seconds: float, outcome: str) -> None:
        self.tools.append((tool, outcome))


def test_the_observed_session_passes_everything_through_and_counts() -> None:
    events: list[ProviderEvent] = [
        AudioOut(b"\x01\x00" * 10, "i1"),
        Transcript("caller", "hel", final=False),
        ProviderNotice("gemini: connection ended (goAway); reconnecting"),
        ProviderNotice("gemini: reconnected (resumed)"),
        ToolCall("t1", "weather", {"city": "Paris"}),
        ToolCall("t2", "slow", {}),
        Transcript("caller", "hello", final=True),
    ]
    inner = RecordingSession(events)
    sink = RecordingSink()
    watch = SessionWatch("gemini")
    session = ObservedSession(inner, watch, sink)

    async def run() -> list[ProviderEvent]:
        seen = [event async for event in session.events()]
        await session.send_tool_result("t1", "weather", {"temp": 20})
        await session.send_tool_result(
            "t2", "slow", {"error": "the tool slow did not answer in time"}
        )
        return seen

    assert asyncio.run(run()) == events
    session.send_audio(b"abc")
    assert inner.audio == [b"abc"]
    assert watch.last_in == b"abc"
    assert watch.last_out == b"\x01\x00" * 10
    assert watch.partial == {}  # the final line replaced the partial one
    assert sink.events == [("gemini", "connection-lost"), ("gemini", "resume")]
    assert sink.tools == [("weather", "ok"), ("slow", "timeout")]
    assert [r[0] for r in inner.results] == ["t1", "t2"]


class RecordingProvider:
    name = "fake"

    async def open(self, call: CallInfo, config: SessionConfig) -> RecordingSession:
        return RecordingSession([])


def test_the_observed_provider_keeps_a_watch_per_call_until_its_session_closes() -> None:
    watches: dict[str, SessionWatch] = {}
    provider = ObservedProvider(RecordingProvider(), watches, NullSink())

    async def run() -> None:
        session = await provider.open(CallInfo("c1"), SessionConfig())
        assert list(watches) == ["c1"]
        assert watches["c1"].provider == "fake"
        await session.close()

    asyncio.run(run())
    assert watches == {}


def test_recent_calls_are_bounded_newest_first() -> None:
    recent = RecentCalls(size=3)
    for i in range(5):
        recent.add({"call_id": str(i)})
    assert [r["call_id"] for r in recent.list()] == ["4", "3", "2"]
    assert recent.get("3") == {"call_id": "3"}
    assert recent.get("0") is None


# --------------------------------------------------------------------------- metrics


def metrics(**extra: Any) -> Metrics:
    return Metrics(
        Gauges(
            active=lambda: {("default", "echo"): 2},
            sip_counts=lambda: {("in", "INVITE", ""): 3, ("out", "INVITE", "503"): 1},
            ticker=lambda: None,
            loop_lag_ms=lambda: 12.0,
            draining=lambda: True,
            max_calls=5,
            **extra,
        )
    )


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_read_the_server_at_scrape_time() -> None:
    got = samples(metrics().exposition().decode())
    assert got['sipbot_calls_active{agent="echo",route="default"}'] == 2
    assert got["sipbot_draining"] == 1
    assert got["sipbot_calls_max"] == 5
    assert got["sipbot_event_loop_lag_recent_seconds"] == pytest.approx(0.012)
    assert got['sipbot_sip_requests_total{direction="in",method="INVITE"}'] == 3
    assert got['sipbot_sip_responses_total{code="503",direction="out",method="INVITE"}'] == 1


def test_registrations_are_gauges_per_trunk() -> None:
    states = {
        "carrier": RegistrationState(phase="registered", code=200),
        "pbx": RegistrationState(phase="failed", code=401, failures=3),
    }
    m = Metrics(
        Gauges(
            active=dict,
            sip_counts=dict,
            ticker=lambda: None,
            loop_lag_ms=lambda: 0.0,
            draining=lambda: False,
            max_calls=5,
            registrations=lambda: states,
        )
    )
    got = samples(m.exposition().decode())
    assert got['sipbot_registration_up{trunk="carrier"}'] == 1
    assert got['sipbot_registration_up{trunk="pbx"}'] == 0
    assert got['sipbot_registration_last_code{trunk="pbx"}'] == 401
    assert got['sipbot_registration_failures{trunk="pbx"}'] == 3
    # no trunk registers: no registration series at all
    assert not [name for name in samples(metrics().exposition().decode()) if "registration" in name]


def test_call_outcomes_are_a_bounded_label_set() -> None:
    m = metrics()
    m.call_ended("default", "echo", "bye-received")
    m.call_ended("default", "echo", "+4930123456 did something")  # never a label
    got = samples(m.exposition().decode())
    key = 'sipbot_calls_total{agent="echo",outcome="%s",route="default"}'
    assert got[key % "bye-received"] == 1
    assert got[key % "other"] == 1
    assert not any("4930123456" in name for name in got)


def test_a_calls_media_figures_are_added_once_at_its_end() -> None:
    m = metrics()
    stats = MediaStats(packets_in=100, packets_out=99, lost=2, late=1, underruns=3)
    latency = MediaLatency(first_audio=LatencySummary(4, 20.0, 40.0, 45.0))
    m.media_ended(stats, latency)
    got = samples(m.exposition().decode())
    assert got['sipbot_rtp_total{kind="packets_in"}'] == 100
    assert got['sipbot_rtp_total{kind="lost"}'] == 2
    hist = 'sipbot_call_first_audio_latency_seconds_bucket{le="0.04",stat="%s"}'
    assert got[hist % "p50"] == 1
    assert got[hist % "p99"] == 1
    assert got[hist % "max"] == 0  # 45 ms is above the 40 ms bucket
    assert not any("barge_in_latency_seconds_bucket" in name for name in got)  # no sample


def test_the_grafana_dashboard_uses_only_metrics_sipbot_exposes() -> None:
    m = metrics()
    m.call_ended("r", "a", "bye-received")
    m.refusal("capacity")
    m.setup_time(0.1)
    one = LatencySummary(1, 1.0, 1.0, 1.0)
    m.media_ended(MediaStats(), MediaLatency(one, one, one))
    m.provider_session("local")
    m.provider_event("local", "reconnect")
    m.tool_done("t", 0.1, "ok")
    m.lag_sample(0.001)
    exposed = {name.split("{")[0] for name in samples(m.exposition().decode())}
    exposed |= {"sipbot_ticker_late_ticks_total", "sipbot_ticker_skipped_frames_total"}
    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"sipbot_[a-z_]+", target["expr"])
    }
    assert used, dashboard
    assert used <= exposed, used - exposed


# --------------------------------------------------------------------------- status text


def test_status_text_lists_each_call() -> None:
    text = format_status(
        {
            "version": "0.1.0",
            "uptime_s": 3725,
            "draining": True,
            "max_calls": 5,
            "calls_total": 9,
            "loop_lag_ms": 1.5,
            "refused": {"capacity": 2},
            "calls": [
                {
                    "agent": "support",
                    "caller": "+4930…56",
                    "did": "100",
                    "duration_s": 65,
                    "codec": "G722",
                    "quality": {"loss_pct": 0.5, "packets_in": 10, "packets_out": 11},
                }
            ],
        }
    )
    lines = text.splitlines()
    assert lines[0] == "sipbot 0.1.0  up 1:02:05  DRAINING"
    assert lines[1] == "calls: 1 up of 5, 9 since start; loop lag 1.5 ms"
    assert lines[2] == "refused: capacity 2"
    assert re.fullmatch(r"support\s+\+4930…56\s+100\s+1:05\s+G722\s+0\.5%\s+10/11", lines[5])


# --------------------------------------------------------------------------- JSON logs


def log_record(message: str, name: str = "sipbot.call") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)


def test_json_log_lines_carry_the_call_id() -> None:
    line = JsonFormatter().format(log_record("call abc@host: answered by agent echo, PCMU"))
    data = json.loads(line)
    assert data["call_id"] == "abc@host"
    assert data["msg"] == "call abc@host: answered by agent echo, PCMU"
    assert data["level"] == "info"
    assert "call_id" not in json.loads(JsonFormatter().format(log_record("shutting down")))


def test_json_cdr_lines_carry_the_call_id() -> None:
    record = log_record(json.dumps({"call_id": "x1", "reason": "bye"}), "sipbot.cdr")
    assert json.loads(JsonFormatter().format(record))["call_id"] == "x1"


# --------------------------------------------------------------------------- config and CLI


def test_http_is_on_loopback_by_default_and_can_be_switched_off() -> None:
    assert ServerSettings().http.listen == ("127.0.0.1", 8089)
    assert ServerSettings.model_validate({"http": "off"}).http.listen is None
    assert ServerSettings.model_validate({"http": False}).http.listen is None


def test_http_on_another_address_needs_a_token(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  http:\n    listen: 0.0.0.0:8089\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (
        f"{path}:2: server.http: http.listen 0.0.0.0 is not loopback: set http.token "
        "(a bearer token)"
    )
    path.write_text("server:\n  http:\n    listen: 0.0.0.0:8089\n    token: ${T_OPS}\n")
    config = load_config(str(path), environ={"T_OPS": "s3cret"})
    assert config.server.http.listen == ("0.0.0.0", 8089)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "sipbot 0.1.0"


def test_check_without_the_secrets_warns_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_OPS_KEY", raising=False)
    path = tmp_path / "d.yaml"
    path.write_text(
        "agents:\n  a:\n    provider: gemini\n    api_key: ${NO_SUCH_OPS_KEY}\n"
        "routes:\n  - name: r\n    answer: a\n"
    )
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: OK" in out
    assert (
        f"{path}: warning: environment variable NO_SUCH_OPS_KEY is not set (checked with a "
        "placeholder; --strict makes this an error)"
    ) in out
    assert main(["check", "--strict", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "environment variable NO_SUCH_OPS_KEY is not set" in err


def test_check_keeps_the_defaults_of_unset_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_OPS_KEY", raising=False)
    monkeypatch.delenv("NO_SUCH_OPS_URL", raising=False)
    path = tmp_path / "d.yaml"
    path.write_text(
        "agents:\n  a:\n    provider: gemini\n    api_key: ${NO_SUCH_OPS_KEY}\n"
        "    base_url: ${NO_SUCH_OPS_URL:-http://127.0.0.1:9}\n"
        "routes:\n  - name: r\n    answer: a\n"
    )
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "NO_SUCH_OPS_KEY is not set" in out
    assert "NO_SUCH_OPS_URL" not in out


def test_check_still_finds_structural_errors_without_the_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("agents:\n  a:\n    provider: gemini\n    api_key: ${NO_SUCH_OPS_KEY}\n")
    path.write_text(path.read_text() + "routes:\n  - name: r\n    answer: nobody\n")
    assert main(["check", "-c", str(path)]) == 2
    assert "nobody" in capsys.readouterr().err


def test_the_units_stop_timeout_covers_the_drain() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy"
    for unit in ("sipbot.service", "sipbot@.service"):
        text = (root / unit).read_text()
        drain = float(re.search(r"--drain-timeout (\d+)", text).group(1))  # type: ignore[union-attr]
        stop = float(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        assert stop >= drain + 3 + 5 + 5, unit  # goodbye, call ends, UA close


# --------------------------------------------------------------------------- SIP hooks


def test_options_get_503_with_retry_after_while_draining() -> None:
    h = Harness()
    h.core.options_status = 503
    h.feed(request("OPTIONS"))
    [raw] = h.sent_raw()
    assert raw.startswith("SIP/2.0 503 Service Unavailable\r\n")
    assert "\r\nRetry-After: 30\r\n" in raw


def test_messages_are_counted_by_direction_method_and_status() -> None:
    h = Harness()
    h.feed(request("OPTIONS"))
    h.feed(request("FOO", branch="z9hG4bK-i2"))
    h.sent()
    assert dict(h.core.message_counts) == {
        ("in", "OPTIONS", ""): 1,
        ("out", "OPTIONS", "200"): 1,
        ("in", "other", ""): 1,
        ("out", "other", "501"): 1,
    }


def test_receive_queue_drops_and_tasks_are_exposed() -> None:
    m = metrics(
        queue_drops=lambda: {("rtp", "full"): 7, ("rtp", "stale"): 2, ("sip", "full"): 0},
        tasks=lambda: 12,
    )
    got = samples(m.exposition().decode())
    assert got["sipbot_asyncio_tasks"] == 12
    assert got['sipbot_receive_queue_dropped_total{path="rtp",reason="full"}'] == 7
    assert got['sipbot_receive_queue_dropped_total{path="rtp",reason="stale"}'] == 2
    assert got['sipbot_receive_queue_dropped_total{path="sip",reason="full"}'] == 0
