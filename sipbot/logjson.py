"""``--log-format json``: one JSON object per log line, the call id on every call line.

Call lines name their call as ``call <id>`` at the start of the message (``call %s: ...``, the
convention across sipbot), so the id is taken from there when the record has no ``call_id``
attribute of its own.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

_CALL_RE = re.compile(r"^call (\S+?):? ")


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "logger", "msg", ["call_id"], ["exc"]}``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        call_id = getattr(record, "call_id", None)
        if call_id is None:
            match = _CALL_RE.match(message)
            if match:
                call_id = match.group(1)
            elif record.name == "sipbot.cdr" and message.startswith("{"):
                try:
                    call_id = json.loads(message).get("call_id")
                except ValueError:
                    call_id = None
        if call_id is not None:
            out["call_id"] = call_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)
