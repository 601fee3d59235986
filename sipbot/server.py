"""The composition root: SIP user agent → dialplan → calls (media + provider + tools).

:class:`Server` owns the process-wide pieces — the :class:`~sipbot.sip.ua.UserAgent`, the
:class:`~sipbot.media.session.MediaEngine` (shared 20 ms ticker, RTP ports), the dialplan
watcher and one provider per agent — and makes a :class:`~sipbot.call.Call` for each INVITE the
dialplan answers.

Rules:

* Rule 0: trust before everything: an INVITE the trust policy refuses (unknown source, failed
  digest; see :mod:`sipbot.sip.trust`) gets 403, a 401 challenge or nothing at all, costs no
  provider session and no RTP port, and is logged on a rate-limited line.
* Rule 1: admission first (:mod:`sipbot.ops.admission`): while draining or shutting down, at
  ``limits.max_calls``, while the event loop lags, or when the INVITE's source address already
  has ``limits.per_source_calls`` calls, a new INVITE gets 503 with Retry-After and nothing else
  is allocated (no RTP port, no provider session; per-source refusals are logged rate-limited,
  never one line per call). The call is counted (``_admitted``) before any await. Messages over
  ``limits.per_source_rps`` from one address are dropped by the user agent before they are
  parsed. A trunk's own addresses (its allow-list, its registrars) are exempt from both
  per-source limits: a PBX or a carrier sends every call from one address.
* Rule 2: routing uses the dialplan current when the INVITE arrives; a reload never touches
  calls in progress.
* Rule 3: one call's failure (a bug included) is logged and ends that call only.
* Rule 4: each trunk with a ``registrar`` is registered from start to stop; its registrars'
  addresses join its allow-list, and a call through it is routed with its name (``trunk:``)
  and its DID header.
* Rule 5: every INVITE gets one call record (answered, rejected, refused, failed, crashed),
  handed to the records writer without waiting (:mod:`sipbot.records`).
* Rule 6: drain (SIGTERM, ``sipbot drain``, ``POST /drain``): new INVITEs and OPTIONS get 503,
  calls in progress may finish for ``limits.drain_timeout_s``, then each hears a short goodbye
  and gets BYE.
* Rule 7: call-start hooks (``hooks:``, :mod:`sipbot.hooks`) are asked after routing and before
  anything is allocated for the answer, for at most their timeout: they may reject the call or
  answer it with another agent; no answer in time leaves the dialplan's choice. The end of every
  answered call goes to the ``call.end`` hooks with its record, as its CDR line is logged.
* Rule 8: an agent with ``memory`` gets a returning caller's earlier calls in its prompt,
  looked up before the answer in at most ``Recall.timeout_s`` (:mod:`sipbot.memory`); a failing
  records database only costs the memory. An agent with ``memory`` the call is handed off to
  gets them per its own settings, in the handoff tool (the call's lookup reused when it covers
  them, else one more bounded lookup: memory Rule 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sipbot.call import AgentSetup, Call, CallPlan
from sipbot.config import Config, TrustSettings
from sipbot.consult import HOLD_PERIOD_S, Consulter, hold_pattern
from sipbot.dialer import Dialer
from sipbot.dialplan import Agent, Answer, Reject, RouteDecision, RouteRequest, Transfer, route
from sipbot.dialplan.trunks import Trunk, call_srtp
from sipbot.domain import CallInfo, SessionConfig
from sipbot.errors import ConfigError, SipbotError, SipParseError
from sipbot.hook_events import CALL_END, CALL_START, CallEnd, CallStart, Decision
from sipbot.hooks import Hooks
from sipbot.media.blas import limit_blas_threads
from sipbot.media.formats import PCM16_24K
from sipbot.media.latency import MediaLatency
from sipbot.media.session import MediaEngine, MediaSettings
from sipbot.media_leg import MediaLeg
from sipbot.memory import Lookup, caller_key, memory_note, reused, window_start, with_memory
from sipbot.ops.admission import Admission
from sipbot.ops.looplag import LoopLagMonitor
from sipbot.ops.metrics import Gauges, Metrics
from sipbot.ops.observe import ObservedProvider, RecentCalls, SessionWatch
from sipbot.outbound import DialRequest, DialStatus
from sipbot.prompts import APOLOGY_PROMPT, FILLER_PROMPT, load_prompt, load_wav, render
from sipbot.providers.base import Provider
from sipbot.providers.registry import make_provider
from sipbot.ratelimit import RateLimitedLog
from sipbot.records import Attempt, RecordWriter, default_data_dir, open_store
from sipbot.records.recall import Recall
from sipbot.reload import DialplanWatcher
from sipbot.sip.address import parse_name_addr, parse_uri
from sipbot.sip.auth import DigestVerifier
from sipbot.sip.dns import SipResolver
from sipbot.sip.legs import Peer
from sipbot.sip.limiter import LimiterSettings, SourceLimiter
from sipbot.sip.message import SipRequest
from sipbot.sip.register import RegistrationState
from sipbot.sip.registration import Registration
from sipbot.sip.sdp import SdpAnswerer
from sipbot.sip.transport import TlsSettings
from sipbot.sip.trust import Admit, Challenge, Drop, TrustedSource, TrustPolicy
from sipbot.sip.ua import ServerCall, SipSettings, UserAgent
from sipbot.tools.http import aclose_http_clients

log = logging.getLogger(__name__)
cdr_log = logging.getLogger("sipbot.cdr")

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
STOP_TIMEOUT_S = 5.0
# Headers a prompt template or a route may use ({header.X-Customer-Id}); all are kept.
PROMPT_RATE_HZ = 16_000
GOODBYE_PROMPT = "goodbye.wav"
GOODBYE_MARGIN_S = 0.3  # after the goodbye's length, before BYE


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Command-line overrides of the config file (``sipbot run`` flags)."""

    local_mode: str | None = None  # force every local agent into echo/loopback
    ring_s: float = 0.0  # ring this long (180) before answering
    max_duration_s: float | None = None  # end every call after this long


class Server:
    """A running sipbot: answers calls per the dialplan until stopped.

    Args:
        config: the loaded configuration.
        options: command-line overrides.
    """

    def __init__(self, config: Config, options: RunOptions | None = None) -> None:
        self.config = config
        self.options = options or RunOptions()
        settings = config.server
        timers = settings.sip.timers
        public = settings.sip.public_address
        limits = settings.limits
        self.limiter = SourceLimiter(
            LimiterSettings(
                rate=limits.per_source_rps,
                burst=limits.per_source_burst,
                max_calls=min(limits.per_source_calls, limits.max_calls),
            )
        )
        self._refusals = RateLimitedLog(log)
        self.ua = UserAgent(
            SipSettings(
                listen=(),  # bound in start(): TCP shares UDP's port when both ask for 0
                public_address=None if public is None else _join_hostport(*public),
                user_agent=settings.sip.user_agent,
                t1=timers.t1_ms / 1000,
                t2=timers.t2_ms / 1000,
                t4=timers.t4_ms / 1000,
                tls=TlsSettings(
                    cert_file=settings.sip.tls.cert_file,
                    key_file=settings.sip.tls.key_file,
                    ca_file=settings.sip.tls.ca_file,
                    verify=settings.sip.tls.verify,
                ),
            ),
            self._on_invite,
            self.limiter,
        )
        low, high = settings.media.rtp_ports
        self.rtp_host = settings.media.rtp_address or _first_listen_host(config)
        self.engine = MediaEngine(
            MediaSettings(
                rtp_host=self.rtp_host,
                port_min=low,
                port_max=high,
                inactivity_timeout_s=settings.media.inactivity_timeout_s,
                prebuffer_ms=settings.media.prebuffer_ms,
            )
        )
        self.watcher = DialplanWatcher(config, on_reload=self._on_reload)
        self.calls: dict[str, Call] = {}
        self._providers: dict[tuple[object, ...], Provider] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self.apology = load_prompt(APOLOGY_PROMPT, PROMPT_RATE_HZ)
        self.filler = load_prompt(FILLER_PROMPT, PROMPT_RATE_HZ)
        # warm transfers (Conversation Rule 9): the consultation calls and their audio
        public_host = settings.sip.public_address
        self.consulter = Consulter(
            self.ua,
            self.engine,
            settings.media.codecs,
            address=public_host[0] if public_host else None,
            trunks=lambda: self.watcher.current.trunks,  # consult Rule 1: through a trunk
            resolver=SipResolver(settings.sip.dns_servers, settings.sip.dns_port),
        )
        self.hold = hold_pattern(HOLD_PERIOD_S, PROMPT_RATE_HZ)  # one period: it loops
        self._wavs: dict[str, bytes] = {}  # agents' transfer prompts, PCM16 16 kHz, by path
        self.calls_total = 0
        limits = settings.limits
        self.admission = Admission(limits.max_calls, limits.max_loop_lag_ms, limits.retry_after_s)
        self._admitted = 0  # INVITEs admitted and not finished (Rule 1: counted before awaits)
        self.started_at = time.time()
        self.watches: dict[str, SessionWatch] = {}
        self.routes: dict[str, str] = {}  # call id -> route name (a metric label)
        self.recent = RecentCalls()
        self.metrics = Metrics(
            Gauges(
                active=self._active_by_route,
                sip_counts=lambda: self.ua.message_counts,
                ticker=lambda: self.engine.ticker.stats,
                loop_lag_ms=lambda: self.lag.lag_ms,
                draining=lambda: self.admission.draining,
                max_calls=limits.max_calls,
                registrations=lambda: self.registration_states,
                queue_drops=lambda: {
                    ("sip", "full"): self.ua.inbox_dropped,
                    ("sip", "stale"): self.ua.inbox_stale,
                    ("rtp", "full"): self.engine.inbox_dropped,
                    ("rtp", "stale"): self.engine.inbox_stale,
                },
                tasks=lambda: len(asyncio.all_tasks()),
            )
        )
        self.lag = LoopLagMonitor(on_sample=self.metrics.lag_sample)
        self.hooks = Hooks(
            config.hooks,
            on_failure=self.metrics.hook_failed,
            log_sensitive=config.server.log_sensitive,
        )  # Rule 7
        self._old_hooks: list[Hooks] = []  # replaced by a reload, still used by their calls
        self.goodbye = load_prompt(GOODBYE_PROMPT, PROMPT_RATE_HZ)
        self.drained = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self.http: Any = None  # the side listener (sipbot.ops.http), once started
        self.records = make_records(config)
        self.recall = make_recall(config)
        self.registrations: dict[str, Registration] = {}
        trust = settings.trust
        self._verifier = DigestVerifier(trust.realm) if trust.users else None
        self._trust_key: tuple[object, ...] | None = None
        self._trust = TrustPolicy()
        self._refused_log = RateLimitedLog(log, trust.refused_log_interval_s)
        self.refused_total = 0
        self._dialer: Dialer | None = None  # made by the first dial()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the records database, bind the SIP transports, start watching the dialplan.

        Raises:
            ConfigError: the records database cannot be opened or reached.
            OSError: an address cannot be bound.
        """
        limit_blas_threads()  # blas Rule 1: before the first call multiplies anything
        if self.records is not None:
            await self.records.start()
        await self.ua.start()
        await bind_listeners(self.ua, self.config.server.sip.listen)
        self.ua.request_filter = self._source_filter
        self.ua.rate_exempt = self._is_trunk_source
        self._start_registrations()
        if self.config.server.http.listen is not None:
            from sipbot.ops.http import start_http  # before the gc.freeze() in _warm_providers

            self.http = await start_http(self, self.config.server.http)
        self._warm_providers()
        self._spawn(self.watcher.run())
        self.lag.start()
        for warning in self.config.warnings:
            log.warning("%s", warning)

    @property
    def ready_line(self) -> str:
        """``sipbot ready udp:H:P tcp:H:P`` — printed once the server is bound."""
        bound = " ".join(f"{t}:{h}:{p}" for t, h, p in self.ua.bound)
        return f"sipbot ready {bound}"

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """End every call with BYE (bounded), then close everything. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.admission.draining = True
        if self._dialer is not None:
            self._dialer.stop()
        log.info("shutting down: ending %d call(s)", len(self.calls))
        for call in list(self.calls.values()):
            call.hang_up_now("shutdown")
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_wait_all(self._call_tasks()), STOP_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        if self.registrations:
            await _wait_all([asyncio.ensure_future(r.stop()) for r in self.registrations.values()])
        await self.ua.close(STOP_TIMEOUT_S)
        await self.lag.stop()
        if self.http is not None:
            await self.http.close()
        await self.engine.close()
        await aclose_http_clients()
        for hooks in (*self._old_hooks, self.hooks):
            await hooks.aclose(STOP_TIMEOUT_S)
        if self.records is not None:
            await self.records.aclose(STOP_TIMEOUT_S)
        if self.recall is not None:
            await self.recall.aclose()
        self._stopped.set()

    # ------------------------------------------------------------------ calls

    def _on_invite(self, dialog: ServerCall) -> None:
        trunk = self._admit(dialog)
        if trunk is None:
            return
        refusal = self.admission.decide(self._admitted, self.lag.lag_ms)
        if refusal is not None:  # Rule 1
            log.warning(
                "call %s refused (%s): %d calls in progress, loop lag %.0f ms",
                dialog.call_id,
                refusal.reason,
                self._admitted,
                self.lag.lag_ms,
            )
            self.metrics.refusal(refusal.reason)
            retry = [("Retry-After", str(refusal.retry_after_s))]
            dialog.reject(refusal.status, "Service Unavailable", retry)
            self._refused(dialog, refusal.reason)
            return
        source = dialog.source[1]
        arrived = self.ua.loop.time()
        # a trusted trunk (PBX, carrier) sends every call from one address: no per-source limit
        if not trunk and not self.limiter.open_call(source):
            # 503, not 486: the caller's callee is not busy, this server refuses the load from
            # that address; 503 + Retry-After makes a proxy in front fail over or back off,
            # where 486 would be relayed to the caller as "busy".
            self.metrics.refusal("per-source")
            self._refusals.warning(
                "per-source-calls",
                arrived,
                "calls from %s rejected: %d in progress (limits.per_source_calls); %d refused",
                source,
                self.limiter.open_calls(source),
                self.limiter.refused_calls,
            )
            dialog.reject(503, "Service Unavailable", [("Retry-After", "5")])
            self._refused(dialog, "per-source")
            return
        self._admitted += 1  # Rule 1: counted before any await
        task = self._spawn(self._handle(dialog, trunk, arrived), name=f"call:{dialog.call_id}")
        # the counts are given back however the task ends, even cancelled before it started
        task.add_done_callback(lambda _: self._call_done(source if not trunk else None))

    async def dial(
        self, request: DialRequest, on_status: Callable[[DialStatus], None] | None = None
    ) -> str:
        """Place an outbound call; return its Call-ID at once (the call runs as a task).

        The request is checked (agent, trunk, URI or number) and queued behind its trunk's
        limits (``outbound:`` in docs/CONFIG.md); every state it goes through (queued, trying,
        ringing, answered | busy | no-answer | rejected | failed, ended) goes to ``on_status``,
        the log, the call record and the request's status webhook (:mod:`sipbot.dialer`).

        Raises:
            DialError: the request is invalid (nothing is sent).
            DialRefused: the trunk's queue is full, or the server is draining.
        """
        if self._dialer is None:
            self._dialer = Dialer(self)
        return await self._dialer.dial(request, on_status)

    def media_fields(self, call: Call) -> dict[str, Any]:
        """The CDR line's media fields of ``call`` (also its record's ``media``)."""
        return cdr_media(call)

    def _call_done(self, limited_source: str | None) -> None:
        self._admitted -= 1
        if limited_source is not None:
            self.limiter.close_call(limited_source)

    async def _handle(self, dialog: ServerCall, trunk_name: str, arrived: float) -> None:
        trunk = self.watcher.current.trunks.get(trunk_name)
        did_header = trunk.did_header if trunk is not None else None
        info = call_info(dialog.invite, dialog.source, did_header)
        attempt = self._attempt(dialog, info, trunk_name)
        call: Call | None = None
        reason: str | None = None
        outcome = "error"
        try:
            try:
                decided = await self._call_start(dialog, info, trunk_name)
                plan = self._plan(dialog, info, attempt, trunk_name, decided)
            except Exception:
                log.exception("call %s: routing failed", info.call_id)
                dialog.reject(500, "Server Internal Error")
                attempt.note("failed", "routing-error")
                return
            if plan is None:
                return
            plan = await self._remember(plan)
            call = Call(dialog, plan)
            self.calls[info.call_id] = call
            self.calls_total += 1
            outcome = "not-answered"
            try:
                answerer = self._answerer(plan, dialog, trunk)
                leg = MediaLeg(dialog, answerer, info.call_id)
                answered = await call.answer(leg, self.engine, ring_s=self.options.ring_s)
                if answered:
                    attempt.answered = time.time()
                    self.metrics.setup_time(self.ua.loop.time() - arrived)
                    reason = outcome = await call.run()
                    self._cdr(call, reason)
            except Exception:  # Rule 3
                log.exception("call %s failed", info.call_id)
                attempt.note("crashed", "error")
                outcome = "error"
                with contextlib.suppress(Exception):
                    await call.dialog.bye()
        finally:
            self.calls.pop(info.call_id, None)
            self.watches.pop(info.call_id, None)
            route_name = self.routes.pop(info.call_id, "")
            if call is not None:
                self.metrics.call_ended(route_name, call.plan.agent.name, outcome)
            try:  # Rule 4 (and Rule 3: a bad record must not escape the call's task)
                media = cdr_media(call) if attempt.answered is not None and call else None
                attempt.finish(call, reason=reason, media=media)
            except Exception:
                log.exception("call %s: its call record failed", info.call_id)

    def _attempt(self, dialog: ServerCall, info: CallInfo, trunk: str = "") -> Attempt:
        _, host, port = dialog.source
        settings = self.config.server.records
        return Attempt(
            dialog,
            self.records.submit if self.records is not None else _discard,
            call_id=info.call_id,
            caller=info.caller,
            did=info.did,
            source=_join_hostport(host, port),
            trunk=trunk or None,
            truncate_chars=settings.truncate_chars,
            tool_values=settings.tool_values,
        )

    def _refused(
        self, dialog: ServerCall, reason: str, status: int = 503, text: str = "Service Unavailable"
    ) -> None:
        """Record an INVITE refused before routing (admission: shutdown, capacity, trust)."""
        if self.records is not None:
            attempt = self._attempt(dialog, call_info(dialog.invite, dialog.source))
            attempt.status, attempt.sip_reason = status, text
            attempt.note("refused", reason)
            attempt.finish()

    def _route_request(
        self, dialog: ServerCall, info: CallInfo, trunk: str, now: datetime
    ) -> RouteRequest:
        return RouteRequest(
            info.did, info.caller, info.display_name, dialog.source[1], info.headers, now, trunk
        )

    async def _call_start(
        self, dialog: ServerCall, info: CallInfo, trunk: str
    ) -> RouteDecision | None:
        """Rule 7: the route, as the call-start hooks change it; None when no hook asks."""
        if not self.hooks.wants(CALL_START):
            return None
        dialplan = self.watcher.current
        decision = route(dialplan, self._route_request(dialog, info, trunk, datetime.now(UTC)))
        action = decision.action
        _, host, port = dialog.source
        event = CallStart(
            info.call_id,
            time.time(),
            info.caller,
            info.did,
            info.display_name,
            _join_hostport(host, port),
            trunk,
            info.headers,
            decision.route_name or "",
            action.agent.name if isinstance(action, Answer) else "",
        )
        hooks = self.hooks
        answer = await hooks.call_start(event, dialplan.agents)
        return decision if answer is None else _decided(decision, answer, dialplan.agents, info)

    def _plan(
        self,
        dialog: ServerCall,
        info: CallInfo,
        attempt: Attempt,
        trunk: str = "",
        decided: RouteDecision | None = None,
    ) -> CallPlan | None:
        """Route the call (unless the call-start hooks ``decided``); answer non-agent outcomes
        here. None: nothing more to do."""
        now = datetime.now(UTC)
        request = self._route_request(dialog, info, trunk, now)
        decision = decided if decided is not None else route(self.watcher.current, request)
        action = decision.action
        self.routes[info.call_id] = decision.route_name or ""
        log.info(
            "call %s from %s to %s via %s%s: route %s → %s",
            info.call_id,
            info.caller,
            info.did,
            dialog.source[1],
            f" (trunk {trunk})" if trunk else "",
            decision.route_name,
            action,
        )
        attempt.route = decision.route_name
        if isinstance(action, Reject):
            self.metrics.refusal("route")
            self.metrics.call_ended(decision.route_name or "", "", "rejected")
            dialog.reject(action.status, action.reason)
            attempt.note("rejected", "route")
            return None
        if isinstance(action, Transfer):
            self.metrics.call_ended(decision.route_name or "", "", "transfer-302")
            dialog.reject(302, "Moved Temporarily", [("Contact", f"<{action.uri}>")])
            attempt.note("redirected", "route")
            return None
        assert isinstance(action, Answer)
        agent = self._agent_overrides(action.agent)
        attempt.agent, attempt.provider = agent.name, agent.provider
        try:
            provider = self._provider(agent)
        except (ConfigError, OSError) as exc:
            log.error("call %s: agent %s cannot start: %s", info.call_id, agent.name, exc)
            dialog.reject(503, "Service Unavailable")
            attempt.note("failed", "agent-unavailable")
            return None
        fallback, fallback_config = self._fallback_of(agent, info, now)
        recording = self.recording_path(agent, info.call_id)
        attempt.recording_path = recording
        return CallPlan(
            info=info,
            agent=agent,
            provider=provider,
            session_config=agent.session_config(info, now),
            dtmf=decision.dtmf,
            recording_path=recording,
            apology=self.apology,
            filler=self.filler,
            log_transcripts=self.config.server.log_transcripts,
            log_sensitive=self.config.server.log_sensitive,
            consulter=self.consulter,
            hold=self._wav(agent.transfer_hold) if agent.transfer_hold else self.hold,
            briefing=self._wav(agent.transfer_briefing) if agent.transfer_briefing else b"",
            fallback=fallback,
            fallback_config=fallback_config,
            handoff_to=partial(self._handoff_to, info, now) if agent.handoff_allow else None,
            hooks=self.hooks,
        )

    async def _remember(self, plan: CallPlan) -> CallPlan:
        """``plan`` with the caller's earlier calls in its prompts, when its agent has
        ``memory`` on and the caller called within ``memory.days`` (Rule 8); an agent the call
        is handed off to gets them per its own ``memory`` (:mod:`sipbot.memory` Rule 5)."""
        key = caller_key(plan.info.caller)
        if self.recall is None or key is None:
            return plan
        now = time.time()
        lookup: Lookup | None = None
        if plan.agent.memory.enabled:
            rows, lookup = await self._earlier_calls(key, plan.agent, now)
            note = agent_memory_note(plan.agent, rows, now)
            if note is not None:
                log.info(
                    "call %s: returning caller, %d earlier calls", plan.info.call_id, len(rows)
                )
                fallback = plan.fallback_config
                plan = replace(
                    plan,
                    session_config=with_memory(plan.session_config, note),
                    fallback_config=None if fallback is None else with_memory(fallback, note),
                )
        if plan.handoff_to is not None:
            setup = partial(self._remembering, plan.handoff_to, plan.info.call_id, key, now, lookup)
            plan = replace(plan, handoff_to=setup)
        return plan

    async def _earlier_calls(
        self, key: str, agent: Agent, now: float, known: Lookup | None = None
    ) -> tuple[Sequence[Mapping[str, Any]], Lookup | None]:
        """The caller's earlier calls per ``agent``'s ``memory``, counted back from ``now`` (the
        call's start): the rows of ``known`` when it holds them all, else one bounded lookup
        (Rule 8, :mod:`sipbot.memory` Rule 5). Returns them and the lookup they come from
        (None: the store gave no answer; then there are none). Never raises."""
        settings = agent.memory
        scope = agent.name if settings.scope == "agent" else None
        since = window_start(now, settings.days)
        rows = reused(known, since=since, limit=settings.max_calls, agent=scope)
        if rows is not None:
            return rows, known
        assert self.recall is not None
        answer = await self.recall.query(key, since, settings.max_calls, scope)
        if answer is None:
            return [], None
        return answer, Lookup(now, since, settings.max_calls, scope, tuple(answer))

    async def _remembering(
        self,
        setup: Callable[[str], Awaitable[AgentSetup]],
        call_id: str,
        key: str,
        now: float,
        lookup: Lookup | None,
        name: str,
    ) -> AgentSetup:
        """Agent ``name`` set up by ``setup`` for a handoff, with the caller's earlier calls in
        its prompts when it has ``memory`` on (Rule 8, :mod:`sipbot.memory` Rule 5). The handoff
        tool awaits this, so the lookup is off the media path, bounded like the first one.

        Raises:
            KeyError, ConfigError, OSError: as ``setup`` (the agent cannot take the call).
        """
        target = await setup(name)
        agent = target.agent
        if not agent.memory.enabled:
            return target
        rows, used = await self._earlier_calls(key, agent, now, lookup)
        note = agent_memory_note(agent, rows, now)
        if note is None:
            return target
        how = "the call's lookup" if lookup is not None and used is lookup else "a new lookup"
        log.info(
            "call %s: returning caller, %d earlier calls for agent %s (handoff; %s)",
            call_id,
            len(rows),
            agent.name,
            how,
        )
        fallback = target.fallback_config
        return replace(
            target,
            session_config=with_memory(target.session_config, note),
            fallback_config=None if fallback is None else with_memory(fallback, note),
        )

    def recording_path(self, agent: Agent, call_id: str) -> str | None:
        """Where call ``call_id`` is recorded (inbound or outbound), None when it is not: the
        agent's ``recording`` and the server's ``recordings_dir`` both say so."""
        recordings = self.config.server.recordings_dir
        if not (agent.recording and recordings):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return os.path.join(recordings, f"{stamp}-{_safe(call_id)}.wav")

    def _wav(self, path: str) -> bytes:
        """A transfer prompt of an agent, PCM16 16 kHz (read once; the dialplan checked it)."""
        pcm = self._wavs.get(path)
        if pcm is None:
            try:
                pcm = self._wavs[path] = load_wav(path, PROMPT_RATE_HZ)
            except (OSError, SipbotError) as exc:
                log.warning("cannot read %s: %s", path, exc)
                pcm = b""
        return pcm

    def _fallback_of(
        self, agent: Agent, info: CallInfo, now: datetime
    ) -> tuple[Provider | None, SessionConfig | None]:
        """The agent's fallback provider and its settings for the call, if it has one."""
        if agent.fallback is None:
            return None, None
        try:
            return self._provider(agent.fallback), agent.fallback.session_config(info, now)
        except (ConfigError, OSError) as exc:  # the call goes on without one
            log.error("call %s: agent %s has no fallback: %s", info.call_id, agent.name, exc)
            return None, None

    async def _handoff_to(self, info: CallInfo, now: datetime, name: str) -> AgentSetup:
        """Agent ``name`` of the current dialplan, set up for call ``info`` (a handoff).

        Raises:
            KeyError: no such agent (any more: the dialplan was reloaded).
            ConfigError: its provider cannot be made.
        """
        agent = self._agent_overrides(self.watcher.current.agents[name])
        provider = self._provider(agent)
        fallback, fallback_config = self._fallback_of(agent, info, now)
        config = agent.session_config(info, now)
        return AgentSetup(agent, provider, config, fallback, fallback_config)

    def _agent_overrides(self, agent: Agent) -> Agent:
        if self.options.max_duration_s is not None:
            agent = replace(agent, max_duration_s=self.options.max_duration_s)
        if self.options.local_mode and agent.provider == "local":
            agent = replace(agent, local_mode=self.options.local_mode)  # type: ignore[arg-type]
        return agent

    def _provider(self, agent: Agent) -> Provider:
        """One provider per agent (providers are factories; sessions are per call)."""
        key = _provider_key(agent)
        provider = self._providers.get(key)
        if provider is None:
            observed = ObservedProvider(make_provider(agent), self.watches, self.metrics)
            provider = self._providers[key] = observed
        return provider

    def _warm_providers(self) -> None:
        """Make every agent's provider now: importing an SDK takes ~0.3 s, which must not
        happen on the event loop while calls are flowing."""
        for route_ in self.watcher.current.routes:
            action = route_.action
            if isinstance(action, Answer):
                try:
                    agent = self._agent_overrides(action.agent)
                    self._provider(agent)
                    if agent.fallback is not None:
                        self._provider(agent.fallback)
                except (ConfigError, OSError) as exc:
                    log.error("agent %s cannot start: %s", action.agent.name, exc)
        # Move everything imported so far out of the collector's reach: with the SDKs loaded a
        # full (generation 2) pass over ~150k objects took 40-57 ms, stalling every call's RTP
        # (gaps of 60-80 ms); frozen, a pass scans only what calls made since. (freeze() is
        # cheap; the collect() before it is not, so only at start, before any call.)
        if not self.calls:
            gc.collect()
        gc.freeze()

    def _answerer(self, plan: CallPlan, dialog: ServerCall, trunk: Trunk | None) -> SdpAnswerer:
        codecs = plan.agent.codecs or self.config.server.media.codecs
        srtp = call_srtp(trunk, plan.agent.srtp)
        public = self.config.server.sip.public_address
        if public is not None:
            address = public[0]
        elif self.rtp_host not in WILDCARDS:
            address = self.rtp_host
        else:
            address = self.ua.advertised_host(dialog.source[1])
        return SdpAnswerer(codecs, address, srtp=srtp)

    def _on_reload(self, config: Config) -> None:
        log.info("dialplan reloaded from %s: new calls use it", config.source)
        if not self.hooks.same(config.hooks):
            self._old_hooks.append(self.hooks)  # its calls keep it; closed at stop
            self.hooks = Hooks(
                config.hooks,
                on_failure=self.metrics.hook_failed,
                log_sensitive=config.server.log_sensitive,
            )
        self._providers.clear()
        self._warm_providers()

    def _cdr(self, call: Call, reason: str) -> None:
        """Log the call's record as one JSON line on ``sipbot.cdr``.

        ``latency_ms`` holds ``inbound``, ``first_audio`` and ``barge_in``, each ``{"n", "p50",
        "p99", "max"}`` in ms (see :mod:`sipbot.media.latency` for what each measures).
        """
        r = call.record
        if call.media is not None:
            self.metrics.media_ended(call.media.stats, call.media.latency)
        record = {
            "call_id": r.call_id,
            "caller": r.caller,
            "did": r.did,
            "agent": r.agent,
            "start": round(r.started, 3),
            "duration_s": round((r.ended or time.time()) - r.started, 3),
            "reason": reason,
            "turns": r.turns,
            "tool_calls": r.tool_calls,
            "interruptions": r.interruptions,
            "stalls": r.stalls,
            "recovery_ms": r.recovery_ms,
            "switched_to": r.switched_to,
            **cdr_media(call),
            **({"amd": r.amd} if r.amd else {}),
        }
        cdr_log.info(json.dumps(record))
        if call.plan.hooks is not None and call.plan.hooks.wants(CALL_END):  # Rule 7
            call.plan.hooks.emit(
                CallEnd(r.call_id, time.time(), reason, call_end_record(call, record))
            )
        self.recent.add(
            {
                **record,
                "route": self.routes.get(r.call_id, ""),
                "codec": call.info.codec,
                "recording": call.plan.recording_path,
                "transcript": [{"role": t.role, "text": t.text} for t in call.transcript],
            }
        )

    # ------------------------------------------------------------------ trunks and trust

    def _start_registrations(self) -> None:
        """Rule 4: one :class:`Registration` per trunk with a registrar (read at start)."""
        sip = self.config.server.sip
        resolver = SipResolver(sip.dns_servers, sip.dns_port) if sip.dns_servers else None
        for trunk in self.config.dialplan.trunks.values():
            reg = trunk.registration
            if reg is None:
                continue
            registration = Registration(
                trunk.name,
                self.ua,
                reg.settings(sip.user_agent),
                reg.registrars,
                outbound_proxy=reg.outbound_proxy,
                transport=reg.transport,
                resolver=resolver,
            )
            self.registrations[trunk.name] = registration
            # in the background: a slow DNS must not delay taking calls
            self._spawn(registration.start(), name=f"register:{trunk.name}")

    @property
    def registration_states(self) -> dict[str, RegistrationState]:
        """Each registering trunk's current state (for status pages and metrics)."""
        return {name: r.state for name, r in self.registrations.items()}

    def trust_policy(self) -> TrustPolicy:
        """The trust policy for the current dialplan and registrar addresses (cached)."""
        trunks = self.watcher.current.trunks
        learned = {name: frozenset(r.addresses) for name, r in self.registrations.items()}
        key = (id(self.watcher.current), tuple(sorted(learned.items())))
        if key != self._trust_key:
            self._trust = _policy(trunks, learned, self.config.server.trust, self._verifier)
            self._trust_key = key
        return self._trust

    def _is_trunk_source(self, host: str) -> bool:
        """True for an address in a trunk's allow-list (exempt from the per-source limits)."""
        if not self.watcher.current.trunks:
            return False
        return self.trust_policy().trunk_for(host) is not None

    def _source_filter(self, peer: Peer) -> bool:
        """False: drop this request unseen (policy ``drop``, unknown source)."""
        if not self.trust_policy().drops_source(peer.host):
            return True
        self._refused_by_trust("drop", peer.host, "dropped (unknown source)")
        return False

    def _admit(self, dialog: ServerCall) -> str | None:
        """Rule 0: the trunk name ("" none) when the INVITE may go on, else None (answered)."""
        _transport, source, port = dialog.source
        now = self.ua.loop.time()
        verdict = self.trust_policy().check_invite(dialog.invite, source, now, port)
        if isinstance(verdict, Admit):
            return verdict.trunk or ""
        if isinstance(verdict, Challenge):
            dialog.reject(401, "Unauthorized", [("WWW-Authenticate", verdict.www_authenticate)])
            return None
        self.metrics.refusal("trust")
        if isinstance(verdict, Drop):  # the source filter normally drops it before the core
            dialog.reject(403, "Forbidden")
            self._refused_by_trust("drop", source, verdict.why)
            self._refused(dialog, "trust", 403, "Forbidden")
            return None
        dialog.reject(verdict.status, "Forbidden")
        self._refused_by_trust("refuse", source, verdict.why)
        self._refused(dialog, "trust", verdict.status, "Forbidden")
        return None

    def _refused_by_trust(self, kind: str, source: str, why: str) -> None:
        self.refused_total += 1
        now = time.monotonic()
        self._refused_log.warning(kind, now, "refused INVITE from %s: %s", source, why)

    # ------------------------------------------------------------------ drain (Rule 6)

    def drain(self) -> bool:
        """Stop admitting calls; end the ones up after ``drain_timeout_s`` (Rule 6).

        Returns False when already draining. :attr:`drained` is set once no call is left.
        """
        if not self.admission.start_drain(time.time()):
            return False
        self.ua.refuse_options(True)
        timeout = self.config.server.limits.drain_timeout_s
        log.info("draining: %d call(s) up, ending them after %.0f s", len(self.calls), timeout)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(timeout))
        return True

    async def _drain(self, timeout_s: float) -> None:
        calls = self._call_tasks()
        if calls:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_wait_all(calls), timeout_s)
        left = list(self.calls.values())
        if left:
            log.info("drain timeout: ending %d call(s) with a goodbye", len(left))
            await asyncio.gather(*(self._say_goodbye(c) for c in left), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_wait_all(self._call_tasks()), STOP_TIMEOUT_S)
        log.info("drained")
        self.drained.set()

    async def _say_goodbye(self, call: Call) -> None:
        """The goodbye prompt, then BYE (a call not answered yet just ends)."""
        media = call.media
        if media is not None and self.goodbye:
            watch = self.watches.get(call.info.call_id)
            fmt = watch.out_format if watch is not None and watch.out_format else PCM16_24K
            media.flush()
            media.play(render(self.goodbye, PROMPT_RATE_HZ, fmt), "goodbye")
            await asyncio.sleep(len(self.goodbye) / 2 / PROMPT_RATE_HZ + GOODBYE_MARGIN_S)
        call.hang_up_now("drain")

    def _active_by_route(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for call_id, call in list(self.calls.items()):
            key = (self.routes.get(call_id, ""), call.plan.agent.name)
            out[key] = out.get(key, 0) + 1
        return out

    # ------------------------------------------------------------------ helpers

    def _spawn(
        self, coro: Coroutine[Any, Any, None], name: str | None = None
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _call_tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in self._tasks if t.get_name().startswith("call:")]


def cdr_media(call: Call) -> dict[str, Any]:
    """The media-quality fields of the CDR line (also the call record's ``media``); with the
    barge-in guard, what it did (``barge_in_guard``: suspected, confirmed, cleared = false
    alarms)."""
    stats = call.media.stats if call.media is not None else None
    latency = call.media.latency if call.media is not None else MediaLatency()
    guard = call.guard.stats if call.guard is not None else None
    extra: dict[str, Any] = {}
    if guard is not None:
        extra["barge_in_guard"] = {
            "suspected": guard.suspected,
            "confirmed": guard.confirmed,
            "cleared": guard.cleared,
        }
    return {
        **extra,
        "rtp_in": stats.packets_in if stats else 0,
        "rtp_out": stats.packets_out if stats else 0,
        "rtp_lost": stats.lost if stats else 0,
        "rtp_underruns": stats.underruns if stats else 0,
        "rtp_concealed": stats.concealed_frames if stats else 0,
        "latency_ms": latency.as_dict(),
    }


def call_end_record(call: Call, cdr: Mapping[str, Any]) -> dict[str, Any]:
    """The record a ``call.end`` hook gets: the CDR fields, the transcript as stored (redacted)
    and the tool calls."""
    r = call.record
    return {
        **cdr,
        "transcript": [{"at": ln.at, "role": ln.role, "text": ln.text} for ln in r.lines],
        "tools": [
            {"name": t.name, "output": t.output, "error": t.error, "started": t.started}
            for t in r.tools
        ],
    }


def _decided(
    decision: RouteDecision, answer: Decision, agents: Mapping[str, Agent], info: CallInfo
) -> RouteDecision:
    """The route changed by a call-start hook's answer (Rule 7)."""
    if answer.reject is not None:
        log.info("call %s: a call-start hook rejects it (%d)", info.call_id, answer.reject)
        return replace(decision, action=Reject(answer.reject, answer.reason))
    assert answer.agent is not None
    log.info("call %s: a call-start hook chose agent %s", info.call_id, answer.agent)
    return replace(decision, action=Answer(agents[answer.agent]))


def make_records(config: Config) -> RecordWriter | None:
    """The records writer the config asks for (not connected yet), or None when disabled.

    Raises:
        ConfigError: the records URL names no supported database.
    """
    settings = config.server.records
    if not settings.enabled:
        return None
    data_dir = config.server.data_dir or default_data_dir()
    store = open_store(settings.url, data_dir, max_size_mb=settings.max_size_mb)
    return RecordWriter(store, queue_max=settings.queue_max, keep_days=settings.keep_days)


def agent_memory_note(agent: Agent, rows: Sequence[Mapping[str, Any]], now: float) -> str | None:
    """The note of ``rows`` for ``agent``'s prompt, per its ``memory`` (:mod:`sipbot.memory`)."""
    settings = agent.memory
    return memory_note(
        rows, now=now, days=settings.days, zone=agent.zone, max_chars=settings.max_chars
    )


def make_recall(config: Config) -> Recall | None:
    """The returning callers' lookup (its own connection, made on first use), or None when
    records are disabled.

    Raises:
        ConfigError: the records URL names no supported database.
    """
    settings = config.server.records
    if not settings.enabled:
        return None
    return Recall(open_store(settings.url, config.server.data_dir or default_data_dir()))


def _discard(row: object) -> None:
    """Where records go when they are switched off."""


def _policy(
    trunks: Mapping[str, Trunk],
    learned: Mapping[str, frozenset[tuple[str, int]]],
    trust: TrustSettings,
    verifier: DigestVerifier | None,
) -> TrustPolicy:
    """The trust policy: each trunk's allow-list plus its registrars' addresses (Rule 4)."""
    sources = []
    for name, trunk in trunks.items():
        networks = list(trunk.networks)
        endpoints = learned.get(name, frozenset())
        for address in sorted({host for host, _port in endpoints}):
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.ip_network(address))
        sources.append(TrustedSource(name, tuple(networks), trunk.contact_user, endpoints))
    users = {user: str.__str__(password) for user, password in trust.users.items()}
    return TrustPolicy(sources, trust.unknown_sources, users, verifier)


def call_info(
    invite: SipRequest, source: tuple[str, str, int], did_header: str | None = None
) -> CallInfo:
    """What providers, prompts and tools may know about an incoming call.

    Args:
        invite: the INVITE.
        source: (transport, host, port) it came from.
        did_header: a header whose URI user is the called number (the trunk's ``did_header``);
            when absent from the INVITE, the Request-URI user, else the To user.
    """
    caller = display = did = ""
    with contextlib.suppress(SipParseError):
        sender = parse_name_addr(invite.headers.get("From") or "")
        display = sender.display_name or ""
        caller = parse_uri(sender.uri).user or ""
    with contextlib.suppress(SipParseError):
        did = parse_uri(invite.uri).user or ""
    if not did:
        with contextlib.suppress(SipParseError):
            did = parse_uri(parse_name_addr(invite.headers.get("To") or "").uri).user or ""
    carried = invite.headers.get(did_header) if did_header else None
    if carried:
        with contextlib.suppress(SipParseError):
            did = parse_uri(parse_name_addr(carried.split(",")[0]).uri).user or did
    headers: dict[str, str] = {}
    for name, value in invite.headers.items():
        headers.setdefault(name, value)
    _, host, port = source
    return CallInfo(
        call_id=invite.call_id,
        caller=caller,
        did=did,
        display_name=display,
        headers=headers,
        codec="",  # set once the offer is answered
        remote_address=f"{host}:{port}",
    )


def _provider_key(agent: Agent) -> tuple[object, ...]:
    key = agent.api_key if isinstance(agent.api_key, str | None) else agent.api_key.reveal()
    return (
        agent.name,
        agent.provider,
        agent.model,
        agent.base_url,
        agent.ca_file,
        agent.local_mode,
        key,
    )


async def bind_listeners(ua: UserAgent, listen: Sequence[tuple[str, str, int]]) -> None:
    """Bind each listen address; TCP asking for port 0 takes UDP's port on the same host.

    Raises:
        OSError: an address cannot be bound.
    """
    udp_ports: dict[str, int] = {}
    for transport, host, port in listen:
        if transport == "tcp" and port == 0 and host in udp_ports:
            with contextlib.suppress(OSError):
                await ua.listen("tcp", host, udp_ports[host])
                continue
        bound = await ua.listen(transport, host, port)
        if transport == "udp":
            udp_ports[host] = bound[2]


async def _wait_all(tasks: list[asyncio.Task[None]]) -> None:
    if tasks:
        await asyncio.wait(tasks)


def _first_listen_host(config: Config) -> str:
    return config.server.sip.listen[0].host if config.server.sip.listen else "127.0.0.1"


def _join_hostport(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64]
