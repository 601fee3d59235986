"""JSON views of a running server for ``/api`` and the live-calls page (no I/O).

Everything here reads public attributes of the server and its calls and returns plain dicts;
a view is built at most a few times a second (the HTTP layer caches it), never per packet, and
gives the loop back every few calls.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from sipbot.ops.observe import level_dbfs, mask_number
from sipbot.version import __version__

if TYPE_CHECKING:
    from sipbot.call import Call
    from sipbot.ops.seam import Server

TRANSCRIPT_LINES = 30  # the last lines of a live call's transcript
VIEW_BATCH = 10  # calls viewed between two yields to the event loop


def call_view(server: Server, call: Call, now: float) -> dict[str, Any]:
    """One live call: who, how long, codec, quality, levels, latency, transcript."""
    info, record = call.info, call.record
    watch = server.watches.get(info.call_id)
    media = call.media
    view: dict[str, Any] = {
        "call_id": info.call_id,
        "agent": call.plan.agent.name,
        "route": server.routes.get(info.call_id, ""),
        "caller": mask_number(info.caller),
        "did": info.did,
        "started": round(record.started, 3),
        "duration_s": round(max(0.0, now - record.started), 1),
        "state": "up" if media is not None else "ringing",
        "codec": info.codec,
        "turns": record.turns,
        "tool_calls": record.tool_calls,
        "interruptions": record.interruptions,
    }
    if media is not None:
        stats = media.stats
        expected = stats.packets_in + stats.lost
        view["quality"] = {
            "packets_in": stats.packets_in,
            "packets_out": stats.packets_out,
            "lost": stats.lost,
            "late": stats.late,
            "underruns": stats.underruns,
            "late_ticks": stats.late_ticks,
            "skipped_frames": stats.skipped_frames,
            "loss_pct": round(100.0 * stats.lost / expected, 2) if expected else 0.0,
        }
        view["latency_ms"] = media.latency.as_dict()
    if watch is not None:
        view["level_in_db"] = round(level_dbfs(watch.last_in, watch.in_format), 1)
        speaking = time.monotonic() - watch.out_at < 0.5 if watch.out_at else False
        out = level_dbfs(watch.last_out, watch.out_format) if speaking else -90.0
        view["level_out_db"] = round(out, 1)
        view["partial"] = dict(watch.partial)
        view["provider"] = watch.provider
        view["reconnects"] = watch.reconnects
    view["transcript"] = [
        {"role": t.role, "text": t.text} for t in call.transcript[-TRANSCRIPT_LINES:]
    ]
    return view


async def live_calls(server: Server) -> list[dict[str, Any]]:
    """Every call up now, oldest first; yields to the loop every :data:`VIEW_BATCH` calls so
    that a view of hundreds of calls never holds the media path up."""
    now = time.time()
    out = []
    for index, call in enumerate(list(server.calls.values()), 1):
        out.append(call_view(server, call, now))
        if index % VIEW_BATCH == 0:
            await asyncio.sleep(0)
    return out


def recent_calls(server: Server) -> list[dict[str, Any]]:
    """Ended calls, newest first, callers masked, with a recording link when there is one."""
    out = []
    for record in server.recent.list():
        item = dict(record)
        item["caller"] = mask_number(str(item.get("caller", "")))
        item["recording_url"] = f"recordings/{item['call_id']}" if item.get("recording") else None
        item.pop("recording", None)
        out.append(item)
    return out


async def status(server: Server) -> dict[str, Any]:
    """``/api/status``: what ``sipbot status`` prints."""
    admission = server.admission
    refused: Counter[str] = Counter()
    for metric in server.metrics.refused.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                refused[sample.labels["reason"]] += int(sample.value)
    return {
        "version": __version__,
        "uptime_s": round(time.time() - server.started_at, 1),
        "draining": admission.draining,
        "drain_started": admission.drain_started,
        "max_calls": admission.max_calls,
        "calls_total": server.calls_total,
        "loop_lag_ms": round(server.lag.lag_ms, 1),
        "refused": dict(refused),
        "calls": await live_calls(server),
    }
