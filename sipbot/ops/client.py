"""``sipbot status`` and ``sipbot drain``: ask a running server through its HTTP listener.

Exit codes: 0 success, 1 the server cannot be reached or answered an error (401: a wrong or
missing token).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, TextIO

TIMEOUT_S = 5.0
EXIT_OK = 0
EXIT_FAILURE = 1


def fetch(url: str, token: str | None, method: str = "GET") -> dict[str, Any]:
    """One JSON request.

    Raises:
        OSError: the server cannot be reached, or answered with an error status (as
            ``urllib.error.HTTPError``, whose ``code`` says which).
    """
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        data: dict[str, Any] = json.loads(response.read() or b"{}")
        return data


def status_command(
    url: str, token: str | None, out: TextIO, err: TextIO, *, raw: bool = False
) -> int:
    """Print the server's status (``raw``: its JSON)."""
    try:
        data = fetch(url.rstrip("/") + "/api/status", token)
    except OSError as exc:
        print(f"sipbot status: {url}: {_describe(exc)}", file=err)
        return EXIT_FAILURE
    if raw:
        print(json.dumps(data, indent=2), file=out)
    else:
        print(format_status(data), file=out)
    return EXIT_OK


def drain_command(url: str, token: str | None, out: TextIO, err: TextIO) -> int:
    """Ask the server to drain."""
    try:
        data = fetch(url.rstrip("/") + "/drain", token, "POST")
    except OSError as exc:
        print(f"sipbot drain: {url}: {_describe(exc)}", file=err)
        return EXIT_FAILURE
    state = "draining started" if data.get("started") else "already draining"
    print(f"{state}; {data.get('calls', 0)} call(s) up", file=out)
    return EXIT_OK


def format_status(data: dict[str, Any]) -> str:
    """The status as a few lines and a table of calls, for a terminal."""
    uptime = _duration(float(data.get("uptime_s", 0)))
    state = "DRAINING" if data.get("draining") else "accepting calls"
    calls = data.get("calls", [])
    lines = [
        f"sipbot {data.get('version', '?')}  up {uptime}  {state}",
        f"calls: {len(calls)} up of {data.get('max_calls', '?')}, "
        f"{data.get('calls_total', 0)} since start; loop lag {data.get('loop_lag_ms', 0)} ms",
    ]
    refused = data.get("refused") or {}
    if refused:
        lines.append("refused: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    else:
        lines.append("refused: none")
    if calls:
        rows = [("AGENT", "CALLER", "DID", "DURATION", "CODEC", "LOSS", "RTP IN/OUT")]
        for call in calls:
            quality = call.get("quality") or {}
            rows.append(
                (
                    str(call.get("agent", "")),
                    str(call.get("caller", "")) or "anonymous",
                    str(call.get("did", "")),
                    _duration(float(call.get("duration_s", 0))),
                    str(call.get("codec", "")) or "-",
                    f"{quality.get('loss_pct', 0)}%",
                    f"{quality.get('packets_in', 0)}/{quality.get('packets_out', 0)}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _describe(exc: OSError) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}" + (" (check the token)" if exc.code == 401 else "")
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    return str(exc)
