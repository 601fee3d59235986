"""One call attempt's record in the making, from the INVITE to the end of the call.

The server makes an :class:`Attempt` for each INVITE, notes what routing decided, and calls
:meth:`Attempt.finish` once, whatever happened; that builds the :class:`CallRow` and hands it to
the writer.

Rules:

* Rule 1: one INVITE, one record: :meth:`Attempt.finish` submits once; later calls do nothing.
* Rule 2: the final response of an INVITE that was not answered is seen where it is sent
  (``reject`` on the dialog is observed), so every rejection path is covered, including the
  media leg's 488 and 503.
* Rule 3: the call object is read with ``getattr`` defaults: ``record.tools`` and
  ``record.lines`` may be absent (the transcript then comes from ``call.transcript``, without
  times).
* Rule 4: an inbound record carries its caller's key and a summary of its transcript
  (:mod:`sipbot.memory` Rules 1-2), what a returning caller is remembered by.
* Rule 5: a tool call's argument and result values are kept only with ``tool_values``
  (``server.records.tool_values``); else the record has the tool's name, its times, whether it
  failed and the argument names, each value :data:`~sipbot.sensitive.REDACTED`: no transcript
  hook redacts them (:mod:`sipbot.sensitive` Rule 4).
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sipbot.memory import caller_key, summarize
from sipbot.records.model import CallRow, LineRow, as_text, truncate
from sipbot.sensitive import record_arguments, record_output

EPOCH_MIN = 1e9  # below this a time is an offset from the call's start, not an epoch


class Attempt:
    """What is known about one INVITE so far.

    Args:
        dialog: the incoming call (its ``reject`` is observed, Rule 2).
        submit: where the finished record goes (``RecordWriter.submit``).
        call_id, caller, did, source: the INVITE's ids and where it came from.
        truncate_chars: the longest tool argument/result text kept.
        tool_values: keep tool argument and result values (else their names only, the values
            :data:`~sipbot.sensitive.REDACTED`: Rule 5).
    """

    def __init__(
        self,
        dialog: Any,
        submit: Callable[[CallRow], object],
        *,
        call_id: str,
        caller: str,
        did: str,
        source: str | None = None,
        trunk: str | None = None,
        truncate_chars: int = 2000,
        tool_values: bool = False,
    ) -> None:
        self.submit = submit
        self.call_id, self.caller, self.did, self.source = call_id, caller, did, source
        self.trunk = trunk
        self.truncate_chars = truncate_chars
        self.tool_values = tool_values
        self.started = time.time()
        self.route: str | None = None
        self.agent: str | None = None
        self.provider: str | None = None
        self.recording_path: str | None = None
        self.answered: float | None = None
        self.status: int | None = None
        self.sip_reason: str | None = None
        self.outcome: str | None = None
        self.reason: str | None = None
        self.direction = "inbound"
        self.dial_state: str | None = None
        self.ringing: float | None = None
        self.early_media = 0  # ms of early media received (outbound calls)
        self.done = False
        self._observe(dialog)

    def _observe(self, dialog: Any) -> None:
        # Weakly: ``dialog.reject = observed`` holding the bound method would be a cycle
        # (dialog → observed → reject → dialog) that keeps every ended call's objects until a
        # full GC pass. The dialog outlives each call of ``reject`` (the caller holds it).
        reject = weakref.WeakMethod(dialog.reject)

        def observed(status: int, reason: str | None = None, *args: Any, **kwargs: Any) -> None:
            if self.status is None:
                self.status, self.sip_reason = status, reason
            method = reject()
            if method is not None:
                method(status, reason, *args, **kwargs)

        dialog.reject = observed

    def note(self, outcome: str, reason: str) -> None:
        """Say how the attempt went (the first note wins)."""
        if self.outcome is None:
            self.outcome, self.reason = outcome, reason

    def finish(
        self, call: Any = None, *, reason: str | None = None, media: dict[str, Any] | None = None
    ) -> CallRow | None:
        """Build the record and submit it (Rule 1); the row, or None if already finished.

        Args:
            call: the :class:`~sipbot.call.Call`, when one was made.
            reason: why an answered call ended.
            media: the CDR line's media fields.
        """
        if self.done:
            return None
        self.done = True
        row = self._row(call, reason, media)
        self.submit(row)
        return row

    def _row(self, call: Any, reason: str | None, media: dict[str, Any] | None) -> CallRow:
        record = getattr(call, "record", None)
        answered = self.answered is not None
        outcome = self.outcome or ("answered" if answered else "failed")
        if answered and self.outcome is None:
            end = reason or getattr(record, "reason", "") or "unknown"
        else:
            end = self.reason or ("cancelled" if self.status == 487 else "not-answered")
        ended = getattr(record, "ended", None) or time.time()
        started = self.started
        lines = transcript_lines(call, started)
        return CallRow(
            id=uuid.uuid4().hex,
            call_id=self.call_id,
            caller=self.caller,
            did=self.did,
            outcome=outcome,
            started=started,
            route=self.route,
            agent=self.agent,
            provider=self.provider,
            answered=self.answered,
            ended=ended,
            end_reason=end,
            sip_status=(self.status or 200) if answered else self.status,
            sip_reason=(self.sip_reason or "OK") if answered else self.sip_reason,
            turns=int(getattr(record, "turns", 0) or 0),
            tool_calls=int(getattr(record, "tool_calls", 0) or 0),
            barge_ins=int(getattr(record, "interruptions", 0) or 0),
            tools=json.dumps(
                [self._tool(t, started) for t in getattr(record, "tools", None) or ()],
                ensure_ascii=False,
            ),
            media=None if media is None else json.dumps(media, sort_keys=True),
            recording_path=self.recording_path if answered else None,
            source=self.source,
            concealed_frames=int((media or {}).get("rtp_concealed", 0) or 0),
            trunk=self.trunk,
            direction=self.direction,
            dial_state=self.dial_state,
            ringing=self.ringing,
            early_media=self.early_media,
            amd=_amd_json(getattr(record, "amd", None)),
            stalls=int(getattr(record, "stalls", 0) or 0),
            recovery_ms=int(getattr(record, "recovery_ms", 0) or 0),
            switched_to=getattr(record, "switched_to", None),
            caller_key=caller_key(self.caller) if self.direction == "inbound" else None,
            summary=summarize(lines),
            lines=lines,
        )

    def _tool(self, entry: Any, started: float) -> dict[str, Any]:
        limit, keep = self.truncate_chars, self.tool_values  # Rule 5
        error = getattr(entry, "error", None)
        if isinstance(error, str) and error:
            error = record_output(error, keep)  # an error's text may quote the arguments
        return {
            "name": str(getattr(entry, "name", "")),
            "arguments": as_text(record_arguments(getattr(entry, "arguments", None), keep), limit),
            "output": as_text(record_output(getattr(entry, "output", None), keep), limit),
            "started": wall_time(getattr(entry, "started", None), started),
            "ended": wall_time(getattr(entry, "ended", None), started),
            "error": None if error in (None, "") else truncate(str(error), limit),
        }


def _amd_json(report: Any) -> str | None:
    """The call's answering-machine detection as JSON, or None when it had none."""
    return None if not report else json.dumps(report, sort_keys=True, default=str)


def transcript_lines(call: Any, started: float) -> tuple[LineRow, ...]:
    """The call's transcript (Rule 3): ``record.lines`` with times, else ``call.transcript``."""
    if call is None:
        return ()
    lines: Sequence[Any] | None = getattr(getattr(call, "record", None), "lines", None)
    source: Iterable[Any] = lines if lines is not None else getattr(call, "transcript", ()) or ()
    return tuple(
        LineRow(
            seq,
            wall_time(getattr(line, "at", None), started),
            str(getattr(line, "role", "")),
            str(getattr(line, "text", "")),
        )
        for seq, line in enumerate(source)
    )


def wall_time(value: Any, started: float) -> float | None:
    """A time as epoch seconds: epoch floats as they are, datetimes converted, small numbers
    taken as offsets from the call's start; None when unknown."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value >= EPOCH_MIN else started + float(value)
    return None
