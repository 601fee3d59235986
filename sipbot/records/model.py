"""What one call attempt's record holds: :class:`CallRow` and its :class:`LineRow` transcript.

Times are wall-clock seconds since the epoch (floats), the same in SQLite and PostgreSQL.
Tool calls are kept as one JSON list per call (``tools``), arguments and results truncated to
``TRUNCATE_CHARS``; the media-quality summary is the CDR line's media fields as JSON (``media``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Outcome = Literal["answered", "rejected", "redirected", "refused", "failed", "crashed"]
OUTCOMES: Final = ("answered", "rejected", "redirected", "refused", "failed", "crashed")
TRUNCATE_CHARS = 2000  # longest tool argument/result text kept per tool call
TRUNCATED_MARK = "…[truncated]"

# The columns of ``calls`` in the order CallRow holds them (schema version 7).
CALL_COLUMNS: Final = (
    "id",
    "call_id",
    "caller",
    "did",
    "trunk",
    "route",
    "agent",
    "provider",
    "outcome",
    "started",
    "answered",
    "ended",
    "end_reason",
    "sip_status",
    "sip_reason",
    "turns",
    "tool_calls",
    "barge_ins",
    "tools",
    "media",
    "recording_path",
    "source",
    "direction",
    "dial_state",
    "ringing",
    "early_media",
    "amd",
    "concealed_frames",
    "stalls",
    "recovery_ms",
    "switched_to",
    "caller_key",
    "summary",
)
LINE_COLUMNS: Final = ("record_id", "seq", "at", "role", "text")


@dataclass(frozen=True, slots=True)
class LineRow:
    """One transcript line: ``seq`` orders the lines of a call; ``at`` is None when unknown."""

    seq: int
    at: float | None
    role: str
    text: str


@dataclass(frozen=True, slots=True)
class CallRow:
    """One call attempt, as stored (see :data:`CALL_COLUMNS`).

    Attributes:
        id: the record's own id (32 hex digits); writes are idempotent on it.
        call_id: the SIP Call-ID.
        outcome: answered, rejected (by a route), redirected (route transfer, 302), refused
            (admission: capacity, shutdown, trust), failed (before answer) or crashed.
        end_reason: why it ended (``bye``, ``agent-hangup``, ``provider-failed``, ``capacity``...).
        sip_status: the final response to the INVITE when it was not answered (else 200).
        tools: JSON list of ``{"name", "arguments", "output", "started", "ended", "error"}``.
        media: JSON object of the CDR line's media fields, or None (never answered).
        concealed_frames: 20 ms frames of lost caller audio concealed (the media's Rule 7).
        direction: ``inbound``, or ``outbound`` for a call sipbot placed.
        dial_state: an outbound call's final dial state (answered, busy, no-answer, rejected,
            failed); ``sip_status``/``sip_reason`` hold the final response and its Reason
            header, ``answered`` the moment of the 2xx.
        ringing: when an outbound call started ringing (the first 180/183), or None.
        early_media: milliseconds of early media (183 with SDP) received before the answer.
        amd: JSON object of the answering-machine detection (``result`` human/machine/unknown,
            ``cause``, ``decision_ms``, ``action``, ``beep_ms``, ``greeting_end_ms``,
            ``message_ms``, ``message_done``; ms of callee audio from its first frame), or None.
        stalls: times the provider stalled and was resumed in place.
        recovery_ms: total time from each stall or provider switch to the next agent audio.
        switched_to: the fallback provider the call switched to, or None.
        caller_key: the caller normalised (:func:`sipbot.memory.caller_key`), None for an
            anonymous caller or an outbound call: what returning callers are matched on.
        summary: JSON summary of what was said (:func:`sipbot.memory.summarize`), or None.
        lines: the transcript.
    """

    id: str
    call_id: str
    caller: str
    did: str
    outcome: str
    started: float
    trunk: str | None = None
    route: str | None = None
    agent: str | None = None
    provider: str | None = None
    answered: float | None = None
    ended: float | None = None
    end_reason: str | None = None
    sip_status: int | None = None
    sip_reason: str | None = None
    turns: int = 0
    tool_calls: int = 0
    barge_ins: int = 0
    tools: str = "[]"
    media: str | None = None
    recording_path: str | None = None
    source: str | None = None
    concealed_frames: int = 0
    direction: str = "inbound"
    dial_state: str | None = None
    ringing: float | None = None
    early_media: int = 0
    amd: str | None = None
    stalls: int = 0
    recovery_ms: int = 0
    switched_to: str | None = None
    caller_key: str | None = None
    summary: str | None = None
    lines: tuple[LineRow, ...] = field(default=())

    def values(self) -> tuple[Any, ...]:
        """The column values in :data:`CALL_COLUMNS` order (NUL characters removed)."""
        return tuple(_clean(getattr(self, name)) for name in CALL_COLUMNS)


def truncate(text: str, limit: int = TRUNCATE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED_MARK))] + TRUNCATED_MARK


def as_text(value: Any, limit: int = TRUNCATE_CHARS) -> str:
    """A tool argument or result as (truncated) text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return truncate(value, limit)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return truncate(text, limit)


def _clean(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL; SQLite can. One rule for both keeps the records equal.
    return value.replace("\x00", "") if isinstance(value, str) else value
