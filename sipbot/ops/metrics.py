"""Prometheus metrics (the only module that imports ``prometheus_client``).

Collected cheaply: counters that change on rare events (a call's end, a refusal, a tool result,
a provider reconnect) are incremented then; everything that changes per packet or per message
(active calls, SIP message counts, the ticker's figures) is read from the server's own counters
when Prometheus scrapes (:class:`_ServerCollector`), so nothing is added to the media path.

Rules:

* Rule 1: labels are bounded: route, agent, provider and tool names come from the dialplan; the
  outcome is one of :data:`OUTCOMES`; SIP methods are the known ones or ``other``; no call id,
  no number is ever a label.
* Rule 2: a call's media figures are added once, when it ends (its RTP counters and its latency
  summaries), never per packet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sipbot.media.latency import MediaLatency
from sipbot.media.session import MediaStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
# no *_created series: half the exposition, of no use to dashboards
disable_created_metrics()  # type: ignore[no-untyped-call]
# End reasons and pre-answer outcomes, as labels (anything else counts as "other").
OUTCOMES = frozenset(
    {
        "bye-received",
        "agent-hangup",
        "transferred",
        "dtmf-hangup",
        "rtp-timeout",
        "max-duration",
        "shutdown",
        "drain",
        "cancelled",
        "ack-timeout",
        "provider-unavailable",
        "provider-error",
        "provider-closed",
        "provider-failed",
        "not-answered",
        "rejected",
        "transfer-302",
        "error",
    }
)
LATENCY_MEASURES = ("inbound", "first_audio", "barge_in")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)
SETUP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
TOOL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the server reports at scrape time (all cheap reads of its own state)."""

    active: Callable[[], Mapping[tuple[str, str], int]]  # (route, agent) -> calls up
    sip_counts: Callable[[], Mapping[tuple[str, str, str], int]]
    ticker: Callable[[], Any]  # TickerStats or None
    loop_lag_ms: Callable[[], float]
    draining: Callable[[], bool]
    max_calls: int
    # trunk -> its registration state (phase, code, failures: RegistrationState), if any
    registrations: Callable[[], Mapping[str, Any]] = dict
    # (path, reason) -> datagrams the receive queues dropped ("sip"/"rtp", "full"/"stale")
    queue_drops: Callable[[], Mapping[tuple[str, str], int]] = dict
    tasks: Callable[[], int] = int  # asyncio tasks alive (a leak shows as growth)


class Metrics:
    """Every sipbot metric, in its own registry (one per server)."""

    def __init__(self, gauges: Gauges) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.calls = PromCounter(
            "sipbot_calls",
            "Calls ended, by route, agent and outcome (end reason or pre-answer outcome)",
            ["route", "agent", "outcome"],
            registry=registry,
        )
        self.refused = PromCounter(
            "sipbot_refused_invites",
            "INVITEs refused before routing: trust (403/drop), draining, capacity, loop-lag,"
            " per-source (503); route (rejected)",
            ["reason"],
            registry=registry,
        )
        self.setup = Histogram(
            "sipbot_call_setup_seconds",
            "INVITE received to 200 OK sent (ringing included)",
            registry=registry,
            buckets=SETUP_BUCKETS_S,
        )
        self.latency = {
            measure: Histogram(
                f"sipbot_call_{measure}_latency_seconds",
                f"Per-call {measure.replace('_', '-')} latency from the CDR: each ended call adds "
                "its p50, p99 and max",
                ["stat"],
                registry=registry,
                buckets=LATENCY_BUCKETS_S,
            )
            for measure in LATENCY_MEASURES
        }
        self.rtp = PromCounter(
            "sipbot_rtp",
            "RTP figures of ended calls: packets_in, packets_out, lost, late, underruns, "
            "late_ticks (outbound slots sent late), skipped_frames (outbound gaps)",
            ["kind"],
            registry=registry,
        )
        self.provider_sessions = PromCounter(
            "sipbot_provider_sessions", "Provider sessions opened", ["provider"], registry=registry
        )
        self.provider_events = PromCounter(
            "sipbot_provider_events",
            "Provider connection events: open-failed, connection-lost, reconnect, resume, failed",
            ["provider", "event"],
            registry=registry,
        )
        self.tools = Histogram(
            "sipbot_tool_call_seconds",
            "Tool calls answered to the model, by tool and outcome (ok, error, timeout)",
            ["tool", "outcome"],
            registry=registry,
            buckets=TOOL_BUCKETS_S,
        )
        self.loop_lag = Histogram(
            "sipbot_event_loop_lag_seconds",
            "How late the event loop woke up a periodic probe",
            registry=registry,
            buckets=LAG_BUCKETS_S,
        )
        self.hook_failures = PromCounter(
            "sipbot_hook_failures",
            "Integrator hook runs that failed, by event and outcome (error, timeout, dropped)",
            ["event", "outcome"],
            registry=registry,
        )
        registry.register(_ServerCollector(gauges))

    # ------------------------------------------------------------------ events

    def refusal(self, reason: str) -> None:
        """An INVITE refused before it became a call."""
        self.refused.labels(reason).inc()

    def call_ended(self, route: str, agent: str, outcome: str) -> None:
        """A call (or a call attempt) is over."""
        self.calls.labels(route, agent, outcome if outcome in OUTCOMES else "other").inc()

    def media_ended(self, stats: MediaStats, latency: MediaLatency) -> None:
        """Add an ended call's RTP figures and latency summaries (Rule 2)."""
        rtp = self.rtp
        for kind in ("packets_in", "packets_out", "lost", "late", "underruns", "late_ticks"):
            rtp.labels(kind).inc(getattr(stats, kind))
        rtp.labels("skipped_frames").inc(stats.skipped_frames)
        for measure in LATENCY_MEASURES:
            summary = getattr(latency, measure)
            if summary.count:
                histogram = self.latency[measure]
                for stat in ("p50", "p99", "max"):
                    histogram.labels(stat).observe(getattr(summary, f"{stat}_ms") / 1000.0)

    def setup_time(self, seconds: float) -> None:
        """INVITE → 200 OK of an answered call."""
        self.setup.observe(seconds)

    def lag_sample(self, seconds: float) -> None:
        """One event-loop lag measurement."""
        self.loop_lag.observe(seconds)

    # the observe.Sink protocol
    def provider_session(self, provider: str) -> None:
        """A provider session opened."""
        self.provider_sessions.labels(provider).inc()

    def provider_event(self, provider: str, kind: str) -> None:
        """A provider connection event."""
        self.provider_events.labels(provider, kind).inc()

    def tool_done(self, tool: str, seconds: float, outcome: str) -> None:
        """A tool result went back to the model."""
        self.tools.labels(tool, outcome).observe(seconds)

    def hook_failed(self, event: str, outcome: str) -> None:
        """An integrator hook raised, timed out or was dropped (event names are a fixed set)."""
        self.hook_failures.labels(event, outcome).inc()

    def exposition(self) -> bytes:
        """The text format for ``/metrics``."""
        return b"".join(self.exposition_parts())

    def exposition_parts(self) -> Iterator[bytes]:
        """The text format one metric family at a time (the caller may yield between them:
        formatting all of it at once takes a few ms)."""
        for metric in self.registry.collect():
            yield generate_latest(_One(metric))


class _One:
    """A registry of one collected metric family (to format families one by one)."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]


class _ServerCollector:
    """Reads the server's own counters at scrape time (nothing per packet; module docstring)."""

    def __init__(self, gauges: Gauges) -> None:
        self._g = gauges

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        g = self._g
        active = GaugeMetricFamily("sipbot_calls_active", "Calls up now", labels=["route", "agent"])
        per_key: Counter[tuple[str, str]] = Counter(g.active())
        for (route, agent), count in sorted(per_key.items()):
            active.add_metric([route, agent], count)
        yield active
        yield GaugeMetricFamily("sipbot_calls_max", "limits.max_calls", value=g.max_calls)
        yield GaugeMetricFamily(
            "sipbot_draining", "1 while draining (new calls refused)", value=int(g.draining())
        )
        registrations = g.registrations()
        if registrations:
            up = GaugeMetricFamily(
                "sipbot_registration_up", "1 while the trunk is registered", labels=["trunk"]
            )
            code = GaugeMetricFamily(
                "sipbot_registration_last_code",
                "The last final status of the trunk's REGISTER (0: none yet)",
                labels=["trunk"],
            )
            failures = GaugeMetricFamily(
                "sipbot_registration_failures",
                "Consecutive failed registration rounds",
                labels=["trunk"],
            )
            for trunk, state in sorted(registrations.items()):
                up.add_metric([trunk], int(state.phase == "registered"))
                code.add_metric([trunk], state.code or 0)
                failures.add_metric([trunk], state.failures)
            yield up
            yield code
            yield failures
        yield GaugeMetricFamily(
            "sipbot_event_loop_lag_recent_seconds",
            "Recent event-loop lag (what admission and /healthz use)",
            value=g.loop_lag_ms() / 1000.0,
        )
        requests = CounterMetricFamily(
            "sipbot_sip_requests",
            "SIP requests by direction and method",
            labels=["direction", "method"],
        )
        responses = CounterMetricFamily(
            "sipbot_sip_responses",
            "SIP responses by direction, method (CSeq) and status code",
            labels=["direction", "method", "code"],
        )
        for (direction, method, status), count in sorted(g.sip_counts().items()):
            if status:
                responses.add_metric([direction, method, status], count)
            else:
                requests.add_metric([direction, method], count)
        yield requests
        yield responses
        stats = g.ticker()
        if stats is not None:
            yield CounterMetricFamily(
                "sipbot_ticker_ticks",
                "Outbound 20 ms ticks (all calls share them)",
                value=stats.ticks,
            )
            yield CounterMetricFamily(
                "sipbot_ticker_late_ticks",
                "Ticks more than 5 ms behind their deadline (an outbound gap risk)",
                value=stats.late_ticks,
            )
            yield CounterMetricFamily(
                "sipbot_ticker_skipped_frames",
                "Outbound frame slots dropped after a stall (an outbound gap)",
                value=stats.skipped_frames,
            )
            yield GaugeMetricFamily(
                "sipbot_ticker_max_lateness_seconds",
                "The latest tick ever ran behind its deadline (the worst outbound gap)",
                value=stats.max_lateness_s,
            )
        drops = CounterMetricFamily(
            "sipbot_receive_queue_dropped",
            "Datagrams dropped by a bounded receive queue (full, or waited too long)",
            labels=["path", "reason"],
        )
        for (path, reason), count in sorted(g.queue_drops().items()):
            drops.add_metric([path, reason], count)
        yield drops
        yield GaugeMetricFamily("sipbot_asyncio_tasks", "asyncio tasks alive", value=g.tasks())
