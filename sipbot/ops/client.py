"""``sipbot status``, ``sipbot drain`` and ``sipbot dial``: ask a running server through its
HTTP listener.

Exit codes: 0 success, 1 the server cannot be reached or answered an error (401: a wrong or
missing token; for ``dial``: a limit refused the call, or with ``--wait`` the call ended busy,
unanswered, rejected or failed), 2 the server called the dial request bad (400).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TextIO

TIMEOUT_S = 5.0
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
POLL_S = 0.25  # sipbot dial --wait: how often the call's state is asked for
POLL_ERRORS_MAX = 8  # consecutive failed polls (about 2 s) before --wait gives up


def fetch(
    url: str, token: str | None, method: str = "GET", body: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One JSON request (``body``: a JSON object to POST).

    Raises:
        OSError: the server cannot be reached, or answered with an error status (as
            ``urllib.error.HTTPError``, whose ``code`` says which).
    """
    payload = json.dumps(body).encode() if body is not None else None
    if payload is None and method == "POST":
        payload = b""
    request = urllib.request.Request(url, method=method, data=payload)
    if body is not None:
        request.add_header("Content-Type", "application/json")
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


def dial_command(
    url: str,
    token: str | None,
    fields: Mapping[str, Any],
    out: TextIO,
    err: TextIO,
    *,
    wait: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """``POST /calls`` with ``fields``; print the call id, and with ``wait`` each state until
    the call ends."""
    base = url.rstrip("/")
    try:
        placed = fetch(base + "/calls", token, "POST", fields)
    except OSError as exc:
        print(f"sipbot dial: {_describe(exc)}", file=err)
        bad = isinstance(exc, urllib.error.HTTPError) and exc.code == 400
        return EXIT_USAGE if bad else EXIT_FAILURE
    call_id = str(placed["call_id"])
    print(call_id, file=out, flush=True)
    if not wait:
        return EXIT_OK
    return _follow(base + "/calls/" + urllib.parse.quote(call_id, safe=""), token, out, err, sleep)


def _follow(
    url: str, token: str | None, out: TextIO, err: TextIO, sleep: Callable[[float], None]
) -> int:
    """Poll the call's state until it is final; print each transition once."""
    shown = 0
    errors = 0
    while True:
        try:
            view = fetch(url, token)
        except OSError as exc:
            errors += 1
            if errors >= POLL_ERRORS_MAX or _http_code(exc) in (401, 404):
                print(f"sipbot dial: following the call: {_describe(exc)}", file=err)
                return EXIT_FAILURE
            sleep(POLL_S)
            continue
        errors = 0
        history = view.get("history") or []
        for status in history[shown:]:
            print(format_dial_status(status), file=out, flush=True)
        shown = len(history)
        if view.get("final"):  # ended without an answer (e.g. stopped while queued) failed too
            return EXIT_OK if view.get("outcome") == "answered" else EXIT_FAILURE
        sleep(POLL_S)


def format_dial_status(status: Mapping[str, Any]) -> str:
    """``answered 200`` / ``rejected 603 Decline``: a state with its SIP code and reason."""
    parts = [str(status.get("state", "?"))]
    if status.get("sip_code") is not None:
        parts.append(str(status["sip_code"]))
    if status.get("reason"):
        parts.append(str(status["reason"]))
    return " ".join(parts)


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


def _http_code(exc: OSError) -> int | None:
    return exc.code if isinstance(exc, urllib.error.HTTPError) else None


def _describe(exc: OSError) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}" + (" (check the token)" if exc.code == 401 else "")
        return text + _error_of(exc)
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    return str(exc)


def _error_of(exc: urllib.error.HTTPError) -> str:
    """``: <the JSON error>`` of an error answer (and when to retry), or nothing."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if not error:
        return ""
    retry = exc.headers.get("Retry-After") if exc.headers else None
    return f": {error}" + (f" (retry after {retry} s)" if retry else "")
