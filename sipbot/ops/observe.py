"""What the operator sees of calls: provider/tool observation, live snapshots, recent calls.

A call's hot path is left alone: the provider each agent uses is wrapped once
(:class:`ObservedProvider`), and its sessions keep only references to the last audio each way
(no copy, no DSP per frame). Levels, transcripts and figures are computed when someone looks
(``/api/calls``, the page's event stream), a few times a second at most.

Rules:

* Rule 1: the wrapper changes nothing a call sees: every event passes through in order, every
  method forwards; it only counts (provider reconnects, resumes, failures; tool latency and
  outcome) and keeps the last frame each way.
* Rule 2: label values are bounded: provider names, tool names of the dialplan, a fixed set of
  outcomes. Caller numbers and call ids are never labels (they appear only in ``/api`` answers,
  the caller masked).
* Rule 3: the recent-calls ring is bounded (:data:`RECENT_CALLS`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipbot.media.codecs import make_decoder
from sipbot.media.formats import AudioFormat
from sipbot.providers.base import (
    AudioOut,
    CallInfo,
    ProviderEvent,
    ProviderFailed,
    ProviderNotice,
    ProviderSession,
    SessionConfig,
    ToolCall,
    Transcript,
)

RECENT_CALLS = 50
SILENCE_DBFS = -90.0
TOOL_TIMEOUT_TEXT = "did not answer in time"  # the runner's timeout message (tools/runner.py)


class Sink(Protocol):
    """Where provider and tool observations go (the metrics; a no-op without them)."""

    def provider_session(self, provider: str) -> None: ...

    def provider_event(self, provider: str, kind: str) -> None: ...

    def tool_done(self, tool: str, seconds: float, outcome: str) -> None: ...


class NullSink:
    """A :class:`Sink` that drops everything."""

    def provider_session(self, provider: str) -> None:
        del provider

    def provider_event(self, provider: str, kind: str) -> None:
        del provider, kind

    def tool_done(self, tool: str, seconds: float, outcome: str) -> None:
        del tool, seconds, outcome


def level_dbfs(audio: bytes, fmt: AudioFormat | None) -> float:
    """RMS level of a chunk in dBFS (:data:`SILENCE_DBFS` for silence or nothing)."""
    if not audio or fmt is None:
        return SILENCE_DBFS
    if fmt.encoding != "pcm16":
        audio = make_decoder(fmt.encoding.upper()).decode(audio)
    import numpy as np

    samples = np.frombuffer(audio[: len(audio) // 2 * 2], dtype="<i2").astype(np.float32)
    if not samples.size:
        return SILENCE_DBFS
    rms = math.sqrt(float(np.mean(samples * samples))) / 32768.0
    return max(SILENCE_DBFS, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


def mask_number(number: str) -> str:
    """``+4930123456`` → ``+493…56``: enough to tell calls apart, not to call back."""
    if len(number) <= 4:
        return "…" if number else ""
    keep = max(2, len(number) // 2 - 1)
    return f"{number[:keep]}…{number[-2:]}"


@dataclass(slots=True)
class SessionWatch:
    """What one provider session showed so far (Rule 1)."""

    provider: str
    last_in: bytes = b""
    in_format: AudioFormat | None = None
    last_out: bytes = b""
    out_format: AudioFormat | None = None
    out_at: float = 0.0
    partial: dict[str, str] = field(default_factory=dict)
    reconnects: int = 0
    tools: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (name, started)


class ObservedSession:
    """A provider session that reports to a :class:`Sink` (Rule 1)."""

    def __init__(
        self,
        inner: ProviderSession,
        watch: SessionWatch,
        sink: Sink,
        forget: Callable[[], None] | None = None,
    ) -> None:
        self._inner = inner
        self.watch = watch
        self._sink = sink
        self._forget = forget
        watch.in_format = inner.input_format
        watch.out_format = inner.output_format

    def __getattr__(self, attr: str) -> Any:  # anything beyond the protocol passes through
        return getattr(self._inner, attr)

    @property
    def input_format(self) -> AudioFormat:
        return self._inner.input_format

    @property
    def output_format(self) -> AudioFormat:
        return self._inner.output_format

    def send_audio(self, audio: bytes) -> None:
        self.watch.last_in = audio
        self._inner.send_audio(audio)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        watch, sink, name = self.watch, self._sink, self.watch.provider
        async for event in self._inner.events():
            if isinstance(event, AudioOut):
                watch.last_out = event.audio
                watch.out_at = time.monotonic()
            elif isinstance(event, Transcript):
                if event.final:
                    watch.partial.pop(event.role, None)
                else:
                    watch.partial[event.role] = event.text
            elif isinstance(event, ToolCall):
                watch.tools[event.id] = (event.name, time.monotonic())
            elif isinstance(event, ProviderNotice):
                kind = _notice_kind(event.message)
                if kind:
                    if kind == "reconnect":
                        watch.reconnects += 1
                    sink.provider_event(name, kind)
            elif isinstance(event, ProviderFailed):
                sink.provider_event(name, "failed")
            yield event

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        started = self.watch.tools.pop(call_id, None)
        if started is not None:
            self._sink.tool_done(name, time.monotonic() - started[1], _tool_outcome(result))
        await self._inner.send_tool_result(call_id, name, result)

    async def send_text(self, text: str) -> None:
        await self._inner.send_text(text)

    async def truncate(self, item_id: str, played_ms: int) -> None:
        await self._inner.truncate(item_id, played_ms)

    async def close(self) -> None:
        if self._forget is not None:  # a session opened after its call ended leaves no watch
            self._forget()
        await self._inner.close()


class ObservedProvider:
    """Wraps an agent's provider; its sessions are :class:`ObservedSession`.

    Args:
        inner: the provider.
        watches: where each call's :class:`SessionWatch` is kept, by call id (the server
            removes it when the call ends).
        sink: the metrics.
    """

    def __init__(self, inner: Any, watches: dict[str, SessionWatch], sink: Sink) -> None:
        self._inner = inner
        self.name: str = inner.name
        self._watches = watches
        self._sink = sink

    def __getattr__(self, attr: str) -> Any:  # provider-specific extras pass through
        return getattr(self._inner, attr)

    async def open(self, call: CallInfo, config: SessionConfig) -> ProviderSession:
        try:
            inner = await self._inner.open(call, config)
        except Exception:
            self._sink.provider_event(self.name, "open-failed")
            raise
        self._sink.provider_session(self.name)
        watches, call_id = self._watches, call.call_id
        watch = watches[call_id] = SessionWatch(self.name)

        def forget() -> None:
            if watches.get(call_id) is watch:
                del watches[call_id]

        return ObservedSession(inner, watch, self._sink, forget)


def _notice_kind(message: str) -> str:
    """``reconnect`` / ``resume`` / ``connection-lost`` from a resilience notice, else ""."""
    if "reconnected (resumed)" in message:
        return "resume"
    if "reconnected" in message:
        return "reconnect"
    if "reconnecting" in message:
        return "connection-lost"
    return ""


def _tool_outcome(result: Any) -> str:
    if isinstance(result, Mapping) and set(result) == {"error"}:
        return "timeout" if TOOL_TIMEOUT_TEXT in str(result["error"]) else "error"
    return "ok"


class RecentCalls:
    """The last :data:`RECENT_CALLS` call records (newest first; Rule 3)."""

    def __init__(self, size: int = RECENT_CALLS) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, record: Mapping[str, Any]) -> None:
        """Keep one record (the CDR fields)."""
        self._ring.appendleft(dict(record))

    def list(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(self._ring)

    def get(self, call_id: str) -> dict[str, Any] | None:
        """One record by call id."""
        return next((r for r in self._ring if r.get("call_id") == call_id), None)
