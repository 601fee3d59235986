"""The HTTP side listener in the server's own event loop (the only module importing aiohttp).

Routes: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/status``, ``/api/calls``,
``/api/recent``, ``/api/events`` (server-sent events for the page), ``POST /drain``,
``/recordings/{call_id}``, ``POST /calls`` (place an outbound call) and ``GET /calls/{call_id}``
(its state), ``DELETE /api/records?caller=NUMBER`` (erase a caller's records), and the
live-calls page (``/``, ``/static/...``).

Rules:

* Rule 1: every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (or
  ``?token=`` for the page and its event stream, which a browser cannot give headers) when a
  token is configured; the config refuses a non-loopback listener without one.
* Rule 2: handlers never block the loop: they read in-memory state; files go out through
  aiohttp's sendfile path; the live view is built at most every :data:`VIEW_MAX_AGE_S`
  whatever the number of viewers.
* Rule 3: requests are bounded: body size (``max_body_bytes``), handler time
  (``request_timeout_s``, the event stream excepted), event-stream viewers
  (:data:`MAX_EVENT_STREAMS`).
* Rule 4: ``POST /calls`` costs money and reaches people: it needs a configured token (403
  without one, even on loopback) and ``Content-Type: application/json`` (415 otherwise), which
  a web page in a browser cannot send to another origin without a CORS preflight we never
  grant. ``DELETE /api/records`` destroys data: it needs a configured token too (403 without
  one), and DELETE is never sent cross-origin without that preflight either.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sipbot.ops import snapshot
from sipbot.ops.dials import DialBook, dial_fields
from sipbot.ops.observe import mask_number
from sipbot.ops.records_view import RecordsReader
from sipbot.records import default_data_dir
from sipbot.secret import to_secret

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sipbot.config import HttpSettings
    from sipbot.ops.seam import Server

log = logging.getLogger(__name__)

HEALTHZ_MAX_LAG_MS = 1000.0  # /healthz fails when the loop lags more than this
VIEW_MAX_AGE_S = 0.25
EVENT_INTERVAL_S = 0.5
MAX_EVENT_STREAMS = 20
RECORDS_LISTED = 50
OPEN_PATHS = frozenset({"/healthz"})
DIAL_RETRY_AFTER_S = 1  # Retry-After of a dial refused by a trunk limit that names no time
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


class HttpListener:
    """The running listener; :meth:`close` stops it."""

    def __init__(self, runner: web.AppRunner, address: tuple[str, int]) -> None:
        self._runner = runner
        self.address = address

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    async def close(self) -> None:
        """Stop listening and close open connections (event streams included)."""
        await self._runner.cleanup()


async def start_http(server: Server, settings: HttpSettings) -> HttpListener | None:
    """Start the listener at ``settings.listen``.

    Returns None (with a warning) when the default address is taken by another process; an
    address given explicitly that cannot be bound raises.

    Raises:
        OSError: the address cannot be bound.
    """
    assert settings.listen is not None
    api = _Api(server, settings)
    app = web.Application(
        client_max_size=max(1, settings.max_body_bytes),
        middlewares=[api.guard],
    )
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/status", api.status)
    app.router.add_get("/api/calls", api.calls)
    app.router.add_get("/api/recent", api.recent)
    app.router.add_get("/api/records", api.records)
    app.router.add_get("/api/records/{record_id}", api.record)
    app.router.add_delete("/api/records", api.erase_records)
    app.router.add_get("/api/events", api.events)
    app.router.add_post("/drain", api.drain)
    app.router.add_post("/calls", api.place_call)
    app.router.add_get("/calls/{call_id}", api.placed_call)
    app.router.add_get("/recordings/{call_id}", api.recording)
    app.router.add_get("/", api.page)
    app.router.add_get("/static/{name}", api.static)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = settings.listen
    site = web.TCPSite(runner, host, port, backlog=64)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if "listen" not in settings.model_fields_set:  # the default, taken: go on without
            log.warning("HTTP listener not started: %s:%d: %s", host, port, exc.strerror)
            return None
        raise
    bound = _bound_address(runner) or (host, port)
    listener = HttpListener(runner, bound)
    log.info("HTTP listener on %s", listener.url)
    return listener


def _bound_address(runner: web.AppRunner) -> tuple[str, int] | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return str(address[0]), int(address[1])
    return None


class _Api:
    def __init__(self, server: Server, settings: HttpSettings) -> None:
        self.server = server
        self.timeout_s = settings.request_timeout_s
        self.max_body = settings.max_body_bytes
        token = settings.token
        self._token = None if token is None else to_secret(token).reveal().encode()
        self._view: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._streams = 0
        self._reader: RecordsReader | None = None
        self._dials = DialBook()
        records = server.config.server.records
        if server.records is not None:
            data_dir = server.config.server.data_dir or default_data_dir()
            self._reader = RecordsReader(records.url, data_dir)
        web_dir = resources.files("sipbot") / "web"
        self._files = {name: (web_dir / name).read_bytes() for name in WEB_FILES}  # at start

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Rule 1 (token) and Rule 3 (time)."""
        guarded = self._token is not None and request.path not in OPEN_PATHS
        if guarded and not self._authorized(request):
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="sipbot"'},
            )
        length = request.content_length
        if (length is not None and length > self.max_body) or (
            length is None and request.body_exists
        ):
            return web.json_response(
                {"error": f"a body needs Content-Length <= {self.max_body}"}, status=413
            )
        if request.path == "/api/events":
            return await handler(request)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await handler(request)
        except TimeoutError:
            return web.json_response({"error": "request timed out"}, status=503)

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query.get("token")
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    # ------------------------------------------------------------------ health

    async def healthz(self, request: web.Request) -> web.Response:
        lag = self.server.lag.lag_ms
        ok = lag <= HEALTHZ_MAX_LAG_MS
        body = {"status": "ok" if ok else "lagging", "loop_lag_ms": round(lag, 1)}
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        server = self.server
        ready, why = server.admission.ready(len(server.calls), server.lag.lag_ms)
        body = {"ready": ready, "reason": why, "calls": len(server.calls)}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        from sipbot.ops.metrics import CONTENT_TYPE

        parts = []
        for part in self.server.metrics.exposition_parts():  # one metric family at a time
            parts.append(part)
            await asyncio.sleep(0)
        return web.Response(body=b"".join(parts), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------------ the API

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await snapshot.status(self.server))

    async def calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": await self._live()})

    async def recent(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": snapshot.recent_calls(self.server)})

    async def records(self, request: web.Request) -> web.Response:
        """The newest call records of the records database (every worker's, every run's)."""
        if self._reader is None:
            return web.json_response({"calls": [], "enabled": False})
        rows = await self._reader.list(RECORDS_LISTED)
        return web.json_response({"calls": rows, "enabled": True})

    async def record(self, request: web.Request) -> web.Response:
        """One call record with its transcript lines."""
        record_id = request.match_info["record_id"]
        row = None if self._reader is None else await self._reader.get(record_id)
        if row is None:
            return web.json_response({"error": "no such record"}, status=404)
        return web.json_response(row)

    async def erase_records(self, request: web.Request) -> web.Response:
        """``DELETE /api/records?caller=NUMBER``: what ``sipbot calls erase --caller`` does
        (Rule 4); 200 with what was removed (idempotent), 400 without a caller, 404 when
        records are off, 503 when the database cannot be reached."""
        if self._token is None:  # Rule 4
            error = "erasing records over HTTP needs a token: set server.http.token"
            return web.json_response({"error": error}, status=403)
        caller = request.query.get("caller", "")
        if not caller.strip():
            return web.json_response({"error": "give the caller: ?caller=NUMBER"}, status=400)
        if self._reader is None:
            return web.json_response({"error": "call records are off"}, status=404)
        erased = await self._reader.erase(caller)
        if erased is None:
            return web.json_response({"error": "the records database failed"}, status=503)
        log.info("records of caller %s erased over HTTP: %d", mask_number(caller), erased["calls"])
        return web.json_response(erased)

    async def drain(self, request: web.Request) -> web.Response:
        started = self.server.drain()
        body = {"draining": True, "started": started, "calls": len(self.server.calls)}
        return web.json_response(body, status=202)

    async def place_call(self, request: web.Request) -> web.Response:
        """``POST /calls``: 202 with the call id at once; 400 for a bad request (nothing is
        dialled), 403/415 (Rule 4), 429 when a trunk limit refuses it, 503 while draining."""
        from sipbot.outbound import DialError, DialRefused, DialRequest

        if self._token is None:  # Rule 4
            error = "placing calls over HTTP needs a token: set server.http.token"
            return web.json_response({"error": error}, status=403)
        if request.content_type != "application/json":  # Rule 4
            error = "the body must be JSON with Content-Type: application/json"
            return web.json_response({"error": error}, status=415)
        admission = self.server.admission
        if admission.draining:
            return _refusal(503, "the server is draining", admission.drain_retry_after_s)
        try:
            fields = dial_fields(json.loads(await request.read() or b"null"))
        except UnicodeDecodeError:
            return web.json_response({"error": "the body must be UTF-8 JSON"}, status=400)
        except ValueError as exc:  # json.JSONDecodeError included
            text = str(exc) if not isinstance(exc, json.JSONDecodeError) else f"bad JSON: {exc}"
            return web.json_response({"error": text}, status=400)
        try:
            call_id = await self.server.dial(DialRequest(**fields), self._on_dial_status)
        except DialRefused as exc:
            retry = getattr(exc, "retry_after_s", None) or DIAL_RETRY_AFTER_S
            return _refusal(429, str(exc), retry)
        except DialError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._dials.describe(call_id, _public_request(fields))
        view = self._dials.view(call_id) or {}
        body = {"call_id": call_id, "state": view.get("state"), "url": f"/calls/{call_id}"}
        return web.json_response(body, status=202, headers={"Location": f"/calls/{call_id}"})

    async def placed_call(self, request: web.Request) -> web.Response:
        """``GET /calls/{call_id}``: the transitions of a call placed here, and the live view
        of the call while it is up (any call up: inbound ones too)."""
        call_id = request.match_info["call_id"]
        view = self._dials.view(call_id)
        call = self.server.calls.get(call_id)
        live = None if call is None else snapshot.call_view(self.server, call, time.time())
        if view is None and live is None:
            return web.json_response({"error": "no such call"}, status=404)
        if view is None:
            view = {"call_id": call_id, "state": live["state"] if live else None}
        return web.json_response({**view, "call": live})

    def _on_dial_status(self, status: Any) -> None:
        self._dials.add(status.to_json())

    async def recording(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["call_id"]
        record = self.server.recent.get(key)
        path = record.get("recording") if record else None
        if not path and self._reader is not None:  # a record id from /api/records
            row = await self._reader.get(key)
            path = row.get("recording_path") if row else None
        if not path:
            return web.json_response({"error": "no recording"}, status=404)
        return web.FileResponse(path, headers={"Content-Type": "audio/wav"})  # 404 if gone

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``calls`` (live) every half second, ``recent`` when it changes."""
        if self._streams >= MAX_EVENT_STREAMS:
            return web.json_response({"error": "too many viewers"}, status=503)
        self._streams += 1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            last_recent: list[Any] | None = None
            while True:
                live = await self._live()
                payload = json.dumps({"calls": live, "draining": self._draining()})
                await response.write(f"event: calls\ndata: {payload}\n\n".encode())
                recent = snapshot.recent_calls(self.server)
                if recent != last_recent:
                    last_recent = recent
                    data = json.dumps({"calls": recent})
                    await response.write(f"event: recent\ndata: {data}\n\n".encode())
                await asyncio.sleep(EVENT_INTERVAL_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams -= 1
        return response

    # ------------------------------------------------------------------ the page

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        if name not in WEB_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=self._files[name], content_type=WEB_FILES[name], charset="utf-8")

    # ------------------------------------------------------------------ helpers

    async def _live(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        built, view = self._view
        if now - built >= VIEW_MAX_AGE_S:
            self._view = (now, view)  # viewers arriving meanwhile take the previous view
            view = await snapshot.live_calls(self.server)
            self._view = (time.monotonic(), view)
        return view

    def _draining(self) -> bool:
        return self.server.admission.draining


def _refusal(status: int, error: str, retry_after_s: float) -> web.Response:
    retry = max(1, round(retry_after_s))
    return web.json_response(
        {"error": error, "retry_after_s": retry}, status=status, headers={"Retry-After": str(retry)}
    )


def _public_request(fields: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /calls/{id}`` shows of the request: no callback URL (it may carry a
    secret), the names of the variables but not their values."""
    out = {k: v for k, v in fields.items() if k not in ("status_callback", "variables")}
    out["variables"] = sorted(fields.get("variables", {}))
    out["status_callback"] = "status_callback" in fields
    return out
