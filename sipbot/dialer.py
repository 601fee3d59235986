"""Placing outbound calls: the asyncio shell around :class:`~sipbot.outbound.DialCore` and the
trunks' :class:`~sipbot.dial_limits.DialGate`.

:meth:`Dialer.dial` checks a :class:`~sipbot.outbound.DialRequest`, queues it behind its
trunk's limits and returns the Call-ID; :class:`OutboundCall` then sends the INVITE (through the
trunk: its proxy resolved per RFC 3263, its credentials for 401/407, its caller ID in From and
P-Asserted-Identity, its codecs and SRTP policy), follows the responses and, once answered, runs
the call like an inbound one (:class:`~sipbot.call.Call` with the agent's provider and tools).

Rules:

* Rule 1: a bad request (a URI that does not parse, an unknown agent or trunk, a number with no
  trunk to send it through) raises :class:`~sipbot.errors.DialError` before anything is sent; a
  full queue raises :class:`~sipbot.errors.DialRefused`.
* Rule 2: every status goes, in order, to ``on_status``, the log, the call record and the
  status webhook (which never delays the call: :mod:`sipbot.webhook`).
* Rule 3: early media (183 with SDP) is received (the media session is configured with the
  early answer) and noted in the record, never passed to the model; the call's audio reaches
  the model only from the 2xx on. An agent with ``recording`` records the call as an inbound
  one (:meth:`sipbot.server.Server.recording_path`), its early media included.
* Rule 4: one call's failure ends that call only (logged, status ``failed``), and its trunk
  slot is given back however it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from sipbot.call import Call, CallPlan, amd_plan
from sipbot.config import Config
from sipbot.consult import next_hop_peer
from sipbot.dial_limits import DialGate, OutboundLimits
from sipbot.dial_target import DialTarget, check_request
from sipbot.dialplan import Agent
from sipbot.dialplan.trunks import Trunk, call_srtp
from sipbot.domain import PCM16_16K, PCM16_24K, CallInfo
from sipbot.errors import (
    ConfigError,
    DialError,
    DialRefused,
    MediaError,
    RequestFailed,
    SipbotError,
)
from sipbot.media.session import MediaEngine, MediaSession
from sipbot.media_leg import resolve_media_host
from sipbot.outbound import DialCore, DialRequest, DialStatus
from sipbot.providers.base import Provider
from sipbot.records import Attempt
from sipbot.sip.dns import SipResolver
from sipbot.sip.legs import Peer
from sipbot.sip.message import SipResponse, generate_call_id
from sipbot.sip.sdp import Negotiated, SdpAnswerer
from sipbot.sip.ua import ClientCall, UserAgent
from sipbot.webhook import StatusWebhook

log = logging.getLogger(__name__)

INVITE_BACKSTOP_S = 5.0  # the UA's own INVITE timeout is later than ours: ours decides
WEBHOOK_CLOSE_S = 30.0  # how long queued statuses may still go after the call ended
FRAME_MS = 20
StatusHook = Callable[[DialStatus], None]


class DialerHost(Protocol):
    """What the dialer uses of the server (:class:`sipbot.server.Server`)."""

    config: Config
    ua: UserAgent
    engine: MediaEngine
    watcher: Any  # a DialplanWatcher: .current is the dialplan new calls use
    admission: Any  # an Admission: .decide(active calls, loop lag)
    lag: Any  # a LoopLagMonitor: .lag_ms
    records: Any  # a RecordWriter (.submit) or None
    calls: dict[str, Call]
    watches: dict[str, Any]
    calls_total: int
    apology: bytes
    filler: bytes
    rtp_host: str

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> Any: ...
    def _agent_overrides(self, agent: Agent) -> Agent: ...
    def _provider(self, agent: Agent) -> Provider: ...
    def _cdr(self, call: Call, reason: str) -> None: ...
    def media_fields(self, call: Call) -> dict[str, Any]: ...
    def recording_path(self, agent: Agent, call_id: str) -> str | None: ...


class _NotInvited:
    """What :class:`~sipbot.records.Attempt` observes on an outbound call: nothing to reject."""

    def reject(self, status: int, reason: str | None = None, *args: Any, **kwargs: Any) -> None:
        """Nothing: an outbound call is never answered by us."""


class Dialer:
    """The outbound calls of one server (see the module rules).

    Args:
        server: the running server (its user agent, media engine, providers, records).
    """

    def __init__(self, server: DialerHost) -> None:
        self.server = server
        self._gates: dict[str, DialGate] = {}
        self._queued: dict[str, OutboundCall] = {}
        self._active: dict[str, OutboundCall] = {}  # every call not finished, by Call-ID
        self._timer: asyncio.TimerHandle | None = None
        sip = server.config.server.sip
        self.resolver = SipResolver(sip.dns_servers, sip.dns_port)
        server.ua.add_response_hook(self._on_response)

    async def dial(self, request: DialRequest, on_status: StatusHook | None = None) -> str:
        """Check and queue ``request``; its Call-ID (see :meth:`sipbot.server.Server.dial`)."""
        server = self.server
        refusal = server.admission.decide(len(server.calls) + len(self._active), server.lag.lag_ms)
        if refusal is not None:  # the server's own admission (limits.max_calls, drain, lag)
            raise DialRefused(f"the server takes no new calls now ({refusal.reason})")
        dialplan = server.watcher.current
        codecs = tuple(server.config.server.media.codecs)
        target = check_request(request, dialplan.agents, dialplan.trunks, codecs)
        host = server.ua.advertised_host()
        call_id = generate_call_id(host)
        gate = self._gate(target.trunk)
        now = server.ua.loop.time()
        if not gate.submit(call_id, now):
            limits = gate.limits
            raise DialRefused(
                f"trunk {target.trunk.name if target.trunk else '-'}: {gate.active} calls up, "
                f"{gate.waiting} waiting (max_calls {limits.max_calls}, queue {limits.queue})"
            )
        call = OutboundCall(self, request, target, call_id, on_status, gate)
        self._queued[call_id] = self._active[call_id] = call
        call.publish(call.core.queued(time.time()))
        task = server._spawn(call.run(), name=f"call:{call_id}")
        task.add_done_callback(partial(self._finished, gate, call_id))
        self._pump()
        return call_id

    def _gate(self, trunk: Trunk | None) -> DialGate:
        key = trunk.name if trunk is not None else ""
        limits = trunk.dial_settings.limits if trunk is not None else OutboundLimits()
        gate = self._gates.get(key)
        if gate is None or gate.limits != limits:  # a reload changed them: new calls use them
            fresh = DialGate(limits)
            if gate is not None:
                fresh.adopt(gate)
            gate = self._gates[key] = fresh
        return gate

    def _pump(self) -> None:
        """Release what the gates allow, drop what waited too long, re-arm the one timer."""
        now = self.server.ua.loop.time()
        deadlines: list[float] = []
        for gate in self._gates.values():
            for ticket in gate.expired(now):
                call = self._queued.pop(ticket, None)
                if call is not None:
                    call.admit(False)
            for ticket in gate.release(now):
                call = self._queued.pop(ticket, None)
                if call is None:
                    gate.finished(ticket)
                else:
                    call.admit(True)
            deadline = gate.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadlines:
            self._timer = self.server.ua.loop.call_at(min(deadlines), self._pump)

    def _finished(self, gate: DialGate, ticket: str, _task: object = None) -> None:
        self._active.pop(ticket, None)
        if self._queued.pop(ticket, None) is not None:
            gate.cancel(ticket)
        gate.finished(ticket)
        self._pump()

    def _on_response(self, response: SipResponse, source: Peer) -> bool:
        """Sees every response first: a 100 Trying to one of our INVITEs is noted (never
        consumed; the core handles it)."""
        if response.status == 100:
            with contextlib.suppress(SipbotError):
                call = self._active.get(response.call_id)
                if call is not None and response.cseq[1] == "INVITE":
                    call.trying()
        return False

    def stop(self) -> None:
        """Drop the queued requests and CANCEL the ringing calls (the server is stopping)."""
        for call_id, call in list(self._queued.items()):
            for gate in self._gates.values():
                gate.cancel(call_id)
            call.admit(False, "the server stopped")
        self._queued.clear()
        for call in list(self._active.values()):
            call.abort("the server stopped")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class OutboundCall:
    """One outbound call from its INVITE to its end (see the module rules)."""

    def __init__(
        self,
        dialer: Dialer,
        request: DialRequest,
        target: DialTarget,
        call_id: str,
        on_status: StatusHook | None,
        gate: DialGate,
    ) -> None:
        self.dialer = dialer
        self.gate = gate
        self.server = dialer.server
        self.request = request
        self.target = target
        self.call_id = call_id
        self.on_status = on_status
        self.core = DialCore(call_id, target.ring_timeout_s)
        self.webhook = StatusWebhook(request.status_callback) if request.status_callback else None
        self.call: Call | None = None
        self.media: MediaSession | None = None
        self.sdp: SdpAnswerer | None = None
        self.early_frames = 0
        self.plan: CallPlan | None = None
        self._admitted: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._invite_task: asyncio.Future[ClientCall] | None = None
        self.attempt = Attempt(
            _NotInvited(),
            self.server.records.submit if self.server.records is not None else _discard,
            call_id=call_id,
            caller=target.caller_id,
            did=target.callee,
            source=None,
            trunk=target.trunk.name if target.trunk is not None else None,
            truncate_chars=self.server.config.server.records.truncate_chars,
            tool_values=self.server.config.server.records.tool_values,
        )
        self.attempt.direction = "outbound"
        self.attempt.agent = target.agent.name
        self.attempt.provider = target.agent.provider

    # ------------------------------------------------------------------ statuses (Rule 2)

    def publish(self, statuses: list[DialStatus]) -> None:
        for status in statuses:
            code = f" {status.sip_code}" if status.sip_code is not None else ""
            why = f" ({status.reason})" if status.reason else ""
            log.info("outbound call %s to %s: %s%s%s", self.call_id, self.target.uri,
                     status.state, code, why)  # fmt: skip
            self._note(status)
            if self.on_status is not None:
                try:
                    self.on_status(status)
                except Exception:
                    log.exception("outbound call %s: on_status failed", self.call_id)
            if self.webhook is not None:
                self.webhook.post(status)

    def _note(self, status: DialStatus) -> None:
        a = self.attempt
        if status.state == "ringing" and a.ringing is None:
            a.ringing = status.at
        elif status.state == "answered":
            a.answered = status.at
            a.dial_state = "answered"
            a.status, a.sip_reason = status.sip_code, status.reason or "OK"
        elif status.state in ("busy", "no-answer", "rejected", "failed"):
            a.dial_state = status.state
            a.status, a.sip_reason = status.sip_code, status.reason
            a.note("failed", status.state)

    def admit(self, admitted: bool, why: str | None = None) -> None:
        """The trunk's gate let the INVITE go (True), or dropped the request (False: it waited
        ``queue_timeout_s``, or the server is stopping)."""
        if not self._admitted.done():
            limits = self.target.trunk.dial_settings.limits if self.target.trunk else None
            waited = limits.queue_timeout_s if limits is not None else 0.0
            refusal = why or f"refused: waited {waited:g} s in the trunk's queue"
            self._admitted.set_result(None if admitted else refusal)

    def abort(self, why: str) -> None:
        """Give up a call not answered yet (its INVITE is CANCELled); answered calls go on."""
        task = self._invite_task
        if task is not None and not task.done():
            self.publish(self.core.failed(why, time.time()))
            task.cancel()

    def trying(self) -> None:
        """A 100 Trying arrived."""
        self.publish(self.core.provisional(100, time.time()))

    def finish_record(self, reason: str | None) -> None:
        self.attempt.early_media = self.early_frames * FRAME_MS
        call = self.call
        try:
            media = (
                self.server.media_fields(call)
                if call is not None and self.attempt.answered
                else None
            )
            self.attempt.finish(call, reason=reason, media=media)
        except Exception:
            log.exception("outbound call %s: its call record failed", self.call_id)
        if self.webhook is not None:
            self.server._spawn(self.webhook.close(WEBHOOK_CLOSE_S), name=f"webhook:{self.call_id}")

    # ------------------------------------------------------------------ the call

    async def run(self) -> None:
        """Send the INVITE, follow it, run the answered call; never raises (Rule 4)."""
        reason: str | None = None
        try:
            reason = await self._run()
        except Exception as exc:
            log.exception("outbound call %s failed", self.call_id)
            self.attempt.note("crashed", "error")
            self.publish(self.core.failed(f"internal error: {exc!r}", time.time()))
            if self.call is not None:
                self.publish(self.core.ended("error", time.time()))
        finally:
            self.server.calls.pop(self.call_id, None)
            self.server.watches.pop(self.call_id, None)
            if self.media is not None and self.call is None:
                await self.media.close()
            self.finish_record(reason)

    async def _run(self) -> str | None:
        try:
            plan = self.plan = self._plan()
        except DialError as exc:
            self.publish(self.core.failed(str(exc), time.time()))
            return None
        peer = await self._resolve()
        if peer is None:
            return None
        await self._open_media(peer)
        assert self.sdp is not None
        offer = self.sdp.offer()
        refusal = await self._admitted  # the trunk's limits (sipbot.dial_limits)
        if refusal is not None:
            self.attempt.note("refused", "queue-timeout" if "queue" in refusal else "shutdown")
            self.publish(self.core.failed(refusal, time.time()))
            return None
        loop = self.server.ua.loop
        # dial_limits Rule 1: a pacing wait, re-checked because another INVITE may move it
        while (wait := self.gate.invite_wait(loop.time())) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        self.gate.invite_sent(loop.time())  # booked now; again when it really leaves
        self.publish(self.core.invite_sent(time.time()))
        answered = await self._invite(peer, offer)
        if answered is None:
            return None
        call = Call(answered, plan)
        self.call = call
        self.server.calls[self.call_id] = call
        self.server.calls_total += 1
        if not await self._answer_media(answered, call):
            return "sdp-error"
        reason = await call.run()
        self.server._cdr(call, reason)
        self.publish(self.core.ended(reason, time.time()))
        return reason

    def _plan(self) -> CallPlan:
        target = self.target
        agent = self.server._agent_overrides(target.agent)
        try:
            provider = self.server._provider(agent)
        except (ConfigError, OSError) as exc:
            raise DialError(f"agent {agent.name} cannot start: {exc}") from exc
        info = CallInfo(
            call_id=self.call_id,
            caller=target.caller_id,
            did=target.callee,
            headers={},
            codec="",
            direction="outbound",
            variables=dict(self.request.variables),
        )
        now = datetime.now(UTC)
        recording = self.server.recording_path(agent, self.call_id)
        self.attempt.recording_path = recording
        try:  # answering-machine detection: the agent's amd:, or what the request says
            amd = amd_plan(agent, info, now, self.request.amd)
        except MediaError as exc:
            raise DialError(f"agent {agent.name}: amd.message_audio: {exc}") from exc
        return CallPlan(
            info=info,
            agent=agent,
            provider=provider,
            session_config=agent.session_config(info, now),
            apology=self.server.apology,
            filler=self.server.filler,
            log_transcripts=self.server.config.server.log_transcripts,
            log_sensitive=self.server.config.server.log_sensitive,
            amd=amd,
            recording_path=recording,
            hooks=getattr(self.server, "hooks", None),  # integrator hooks (sipbot.hooks)
        )

    async def _resolve(self) -> Peer | None:
        """The next hop's address (RFC 3263); None when it cannot be found (``failed``)."""
        try:
            peer = await next_hop_peer(self.dialer.resolver, self.server.ua, self.target.next_hop)
        except SipbotError as exc:
            self.publish(self.core.failed(f"DNS: {exc}", time.time()))
            return None
        self.attempt.source = f"{peer.host}:{peer.port}"  # where the INVITE goes
        return peer

    async def _open_media(self, peer: Peer) -> None:
        server = self.server
        self.media = await server.engine.open_session(
            on_audio=self._on_audio, on_dtmf=self._on_dtmf, on_timeout=self._on_timeout
        )
        self.media.set_formats(PCM16_16K, PCM16_24K)
        public = server.config.server.sip.public_address
        if public is not None:
            address = public[0]
        elif server.rtp_host not in ("0.0.0.0", "::", ""):
            address = server.rtp_host
        else:
            address = server.ua.advertised_host(peer.host)
        srtp = call_srtp(self.target.trunk, self.target.agent.srtp)
        self.sdp = SdpAnswerer(self.target.codecs, address, self.media.local_port, srtp=srtp)

    async def _invite(self, peer: Peer, offer: bytes) -> ClientCall | None:
        """The INVITE until its final response or our ring deadline (then CANCEL)."""
        target = self.target
        invite = self._invite_task = asyncio.ensure_future(
            self._send_invite(
                target.uri,
                offer,
                from_user=target.from_user,
                headers=target.headers,
                credentials=target.credentials,
                transport=peer.transport,
                timeout=target.ring_timeout_s + INVITE_BACKSTOP_S,
                call_id=self.call_id,
                destination=peer,
                on_progress=self._on_progress,
            )
        )
        while not invite.done():
            deadline = self.core.ring_deadline
            wait = None if deadline is None else max(0.0, deadline - time.time())
            await asyncio.wait([invite], timeout=wait)
            if not invite.done():
                self.publish(self.core.timer(time.time()))
                if self.core.cancel:
                    invite.cancel()  # the UA CANCELs the INVITE
                    await asyncio.wait([invite])
        if invite.cancelled():
            return None
        exc = invite.exception()
        if exc is None:
            answered = invite.result()
            self.publish(self.core.final_response(200, time.time(), phrase="OK"))
            return answered
        if isinstance(exc, RequestFailed) and exc.response is not None:
            response = exc.response
            self.publish(
                self.core.final_response(
                    response.status,
                    time.time(),
                    phrase=response.reason,
                    reason_header=response.headers.get("Reason"),
                    retry_after=response.headers.get("Retry-After"),
                )
            )
        else:
            why = self.server.ua.transport_error_reason(peer) or str(exc) or type(exc).__name__
            self.publish(self.core.failed(why, time.time()))
        return None

    async def _send_invite(self, uri: str, offer: bytes, **keys: Any) -> ClientCall:
        """``ua.call``, noting the moment the INVITE leaves (its first step is synchronous)."""
        ua = self.server.ua
        self.gate.invite_sent(ua.loop.time())
        return await ua.call(uri, offer, **keys)

    def _on_progress(self, response: SipResponse) -> None:
        """A 180/183 (Rule 3: a 183's SDP opens early media, received but not passed on)."""
        early = response.status == 183 and bool(response.body)
        self.publish(self.core.provisional(response.status, time.time(), sdp=early))
        if early and self.sdp is not None and self.media is not None:
            try:
                negotiated = self.sdp.take_answer(response.body)
            except SipbotError as exc:
                log.info("outbound call %s: early SDP ignored: %s", self.call_id, exc)
                return
            self.server._spawn(self._early_media(negotiated), name=f"early:{self.call_id}")

    async def _early_media(self, negotiated: Negotiated) -> None:
        media, sdp = self.media, self.sdp
        assert media is not None
        assert sdp is not None
        try:
            host = await resolve_media_host(negotiated.remote_host, sdp.address)
        except OSError:
            return
        if self.call is None:
            _configure(media, negotiated, host, "recvonly")
            path = self.plan.recording_path if self.plan is not None else None
            if path:  # the early media goes into the call's recording (Rule 3)
                try:
                    media.start_recording(path)
                except (OSError, SipbotError) as exc:
                    log.warning("outbound call %s: cannot record: %s", self.call_id, exc)

    async def _answer_media(self, dialog: ClientCall, call: Call) -> bool:
        """Apply the 2xx's SDP answer and start the media; False (and BYE) when unusable."""
        media, sdp = self.media, self.sdp
        assert media is not None
        assert sdp is not None
        try:
            negotiated = sdp.take_answer(dialog.remote_sdp)
            host = await resolve_media_host(negotiated.remote_host, sdp.address)
        except (SipbotError, OSError) as exc:
            log.warning("outbound call %s: unusable answer: %s", self.call_id, exc)
            with contextlib.suppress(SipbotError):
                await dialog.bye()
            self.call = None
            self.publish(self.core.ended("sdp-error", time.time()))
            return False
        _configure(media, negotiated, host, negotiated.direction)
        dialog.on_reoffer = _reoffers(sdp, media)
        media.start()
        call.attach(media, negotiated.codec.name)
        return True

    # ------------------------------------------------------------------ media callbacks

    def _on_audio(self, frame: bytes) -> None:
        call = self.call
        if call is not None and call.media is not None:
            call.on_audio(frame)
        else:
            self.early_frames += 1  # Rule 3: early media never reaches the model

    def _on_dtmf(self, digit: str) -> None:
        if self.call is not None:
            self.call.on_dtmf(digit)

    def _on_timeout(self) -> None:
        if self.call is not None:
            self.call.on_timeout()


def _configure(media: MediaSession, negotiated: Negotiated, host: str, direction: str) -> None:
    media.configure(
        codec=negotiated.codec.name,
        payload_type=negotiated.codec.payload_type,
        dtmf_payload_type=negotiated.dtmf_payload_type,
        remote=(host, negotiated.remote_port),
        direction=direction,
        ptime_ms=negotiated.ptime_ms,
        srtp=negotiated.srtp,
    )


def _reoffers(sdp: SdpAnswerer, media: MediaSession) -> Callable[[bytes], Any]:
    """Answer re-offers (hold, resume) on an outbound call as on an inbound one."""

    async def on_reoffer(offer: bytes) -> bytes | int:
        try:
            negotiated = sdp.answer(offer)
            host = await resolve_media_host(negotiated.remote_host, sdp.address)
        except (SipbotError, OSError):
            return 488
        _configure(media, negotiated, host, negotiated.direction)
        assert negotiated.answer is not None
        return bytes(negotiated.answer)

    return on_reoffer


def _discard(row: object) -> None:
    """Where records go when they are switched off."""
