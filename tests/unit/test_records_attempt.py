"""Building one call attempt's record: outcomes, SIP status, tools, transcript, times."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sipbot.records import Attempt, CallRow
from sipbot.records.attempt import transcript_lines, wall_time
from tests.refcount import freed_by_refcount

T0 = 1_750_000_000.0


class Dialog:
    """Records what ``reject`` was called with (the part of ServerCall an Attempt touches)."""

    def __init__(self) -> None:
        self.rejected: list[tuple[Any, ...]] = []

    def reject(self, status: int, reason: str | None = None, headers: Any = ()) -> None:
        self.rejected.append((status, reason, headers))


@dataclass
class ToolLogEntry:
    name: str
    arguments: dict[str, Any]
    output: Any
    started: float
    ended: float
    error: str | None = None


@dataclass
class TranscriptLine:
    at: float
    role: str
    text: str


@dataclass
class Record:
    reason: str = "bye"
    ended: float = T0 + 30
    turns: int = 2
    tool_calls: int = 1
    interruptions: int = 1
    stalls: int = 0
    recovery_ms: int = 0
    switched_to: str | None = None
    tools: list[ToolLogEntry] = field(default_factory=list)
    lines: list[TranscriptLine] = field(default_factory=list)
    amd: dict[str, Any] | None = None


@dataclass
class OldRecord:
    """A CallRecord from before ``tools`` and ``lines`` existed."""

    reason: str = "bye"
    ended: float = T0 + 30
    turns: int = 1
    tool_calls: int = 0
    interruptions: int = 0


@dataclass
class Transcript:
    role: str
    text: str
    final: bool = True


@dataclass
class Call:
    record: Any
    transcript: list[Transcript] = field(default_factory=list)


def attempt(rows: list[CallRow], dialog: Dialog | None = None) -> Attempt:
    made = Attempt(
        dialog or Dialog(),
        rows.append,
        call_id="abc@host",
        caller="+4930555",
        did="100",
        source="127.0.0.1:5062",
        truncate_chars=40,
        tool_values=True,  # the values' truncation is checked (kept only when asked)
    )
    made.started = T0
    return made


def test_a_route_rejection_records_the_status_the_caller_got() -> None:
    rows: list[CallRow] = []
    dialog = Dialog()
    a = attempt(rows, dialog)
    a.route = "closed"
    dialog.reject(486, "Busy Here")
    a.note("rejected", "route")
    a.finish()
    assert dialog.rejected == [(486, "Busy Here", ())]  # the real reject still ran
    (r,) = rows
    assert (r.outcome, r.end_reason, r.sip_status, r.sip_reason) == (
        "rejected",
        "route",
        486,
        "Busy Here",
    )
    assert (r.route, r.agent, r.answered, r.media, r.lines) == ("closed", None, None, None, ())
    assert (r.call_id, r.caller, r.did, r.source) == (
        "abc@host",
        "+4930555",
        "100",
        "127.0.0.1:5062",
    )
    assert len(r.id) == 32


def test_observing_reject_leaves_no_reference_cycle_through_the_dialog() -> None:
    """The wrapper holds the dialog weakly: a dialog (and what it holds) is freed by reference
    counting when its call ends, without a full GC pass (issue 12, the soak's RSS growth)."""
    rows: list[CallRow] = []
    dialog = Dialog()
    a = attempt(rows, dialog)
    dialog.reject(486, "Busy Here")
    a.finish()
    assert (rows[0].sip_status, dialog.rejected) == (486, [(486, "Busy Here", ())])
    held: list[object] = [dialog]
    del dialog
    assert freed_by_refcount(held)


def test_one_record_per_attempt() -> None:
    rows: list[CallRow] = []
    a = attempt(rows)
    assert a.finish() is not None
    assert a.finish() is None
    assert len(rows) == 1


def test_a_call_cancelled_while_ringing_is_failed_with_487() -> None:
    rows: list[CallRow] = []
    dialog = Dialog()
    a = attempt(rows, dialog)
    dialog.reject(487, "Request Terminated")
    a.finish(Call(OldRecord()))
    assert (rows[0].outcome, rows[0].end_reason, rows[0].sip_status) == (
        "failed",
        "cancelled",
        487,
    )


def test_an_answered_call_keeps_tools_transcript_and_media() -> None:
    rows: list[CallRow] = []
    a = attempt(rows)
    a.agent, a.provider, a.route, a.recording_path = "support", "gemini", "shop", "/r/x.wav"
    a.answered = T0 + 1
    record = Record(
        tools=[
            ToolLogEntry(
                "lookup_order", {"order": "A" * 100}, {"status": "shipped"}, T0 + 5, T0 + 6
            ),
            ToolLogEntry("transfer_call", {"to": "desk"}, None, T0 + 7, T0 + 8, "refused"),
        ],
        lines=[TranscriptLine(T0 + 2, "agent", "Hello"), TranscriptLine(T0 + 4, "caller", "Hi")],
    )
    a.finish(Call(record), reason="bye", media={"rtp_in": 10, "latency_ms": {}})
    (r,) = rows
    assert (r.outcome, r.end_reason, r.sip_status, r.sip_reason) == ("answered", "bye", 200, "OK")
    assert (r.started, r.answered, r.ended) == (T0, T0 + 1, T0 + 30)
    assert (r.turns, r.tool_calls, r.barge_ins) == (2, 1, 1)
    assert (r.agent, r.provider, r.route, r.recording_path) == (
        "support",
        "gemini",
        "shop",
        "/r/x.wav",
    )
    assert json.loads(r.media or "") == {"latency_ms": {}, "rtp_in": 10}
    tools = json.loads(r.tools)
    assert tools[0]["name"] == "lookup_order"
    assert tools[0]["arguments"] == '{"order": "' + "A" * 17 + "…[truncated]"
    assert len(tools[0]["arguments"]) == 40
    assert tools[0]["output"] == '{"status": "shipped"}'
    assert (tools[0]["started"], tools[0]["ended"], tools[0]["error"]) == (T0 + 5, T0 + 6, None)
    assert (tools[1]["output"], tools[1]["error"]) == ("null", "refused")
    assert [(ln.seq, ln.at, ln.role, ln.text) for ln in r.lines] == [
        (0, T0 + 2, "agent", "Hello"),
        (1, T0 + 4, "caller", "Hi"),
    ]


def test_without_record_lines_the_transcript_comes_from_the_call_without_times() -> None:
    call = Call(OldRecord(), [Transcript("caller", "hello"), Transcript("agent", "hi there")])
    lines = transcript_lines(call, T0)
    assert [(ln.seq, ln.at, ln.role, ln.text) for ln in lines] == [
        (0, None, "caller", "hello"),
        (1, None, "agent", "hi there"),
    ]
    rows: list[CallRow] = []
    a = attempt(rows)
    a.answered = T0
    a.finish(call, reason="bye")
    assert (rows[0].tools, rows[0].turns) == ("[]", 1)


def test_a_crash_after_answer_is_recorded_as_crashed() -> None:
    rows: list[CallRow] = []
    a = attempt(rows)
    a.answered = T0 + 1
    a.note("crashed", "error")
    a.finish(Call(OldRecord()))
    assert (rows[0].outcome, rows[0].end_reason, rows[0].sip_status) == ("crashed", "error", 200)


def test_wall_time_reads_epochs_datetimes_and_offsets() -> None:
    assert wall_time(T0 + 3, T0) == T0 + 3
    assert wall_time(2.5, T0) == T0 + 2.5
    assert wall_time(datetime.fromtimestamp(T0, UTC), 0.0) == T0
    assert wall_time(None, T0) is None
    assert wall_time(True, T0) is None


def test_the_answering_machine_detection_goes_to_the_record_as_json() -> None:
    rows: list[CallRow] = []
    a = attempt(rows)
    a.answered = T0 + 1
    record = Record()
    record.amd = {"result": "machine", "cause": "long-greeting", "decision_ms": 2440}
    a.finish(Call(record), reason="amd-message")
    assert json.loads(rows[0].amd or "") == {
        "cause": "long-greeting",
        "decision_ms": 2440,
        "result": "machine",
    }
    a = attempt(rows)
    a.answered = T0 + 1
    a.finish(Call(OldRecord()), reason="bye")  # no detection on the call: no value
    assert rows[1].amd is None


def test_stalls_recovery_and_the_provider_switched_to_are_recorded() -> None:
    rows: list[CallRow] = []
    a = attempt(rows)
    a.answered = T0 + 1
    a.finish(Call(Record(stalls=2, recovery_ms=1840, switched_to="openai")), reason="bye")
    old: list[CallRow] = []
    b = attempt(old)
    b.answered = T0 + 1
    b.finish(Call(OldRecord()), reason="bye")  # a record from before these fields
    assert [(r.stalls, r.recovery_ms, r.switched_to) for r in rows + old] == [
        (2, 1840, "openai"),
        (0, 0, None),
    ]
