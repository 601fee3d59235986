"""Helpers for end-to-end tests of dialplans and tools: emulated models and a tool HTTP service.

A real ``sipbot run`` process talks to the emulators (real google-genai / openai SDKs inside
sipbot, protocol-faithful servers here) and to the test's HTTP tool service. Both servers run in
background threads of the test process, so the (synchronous) peer helpers can block while the
emulators keep serving.

- :class:`EmulatorThread`: a :class:`~sipbot.emulators.gemini.GeminiEmulator` or
  :class:`~sipbot.emulators.openai.OpenAIEmulator` on its own event loop;
  :meth:`EmulatorThread.agent` gives the dialplan keys that point an agent at it, and
  :meth:`EmulatorThread.received` what the model received (parsed client frames).
- :class:`ToolService`: an HTTP server recording each POST (JSON body, headers) and answering
  with a fixed JSON result.
- :func:`write_dialplan`: a config dict dumped as YAML.
- :func:`wait_until`: bounded polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, TypeVar

import yaml

from sipbot.emulators.common import EmulatorServer
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript

Kind = Literal["gemini", "openai"]
T = TypeVar("T")

API_KEY_ENV = "SIPBOT_E2E_KEY"  # the dialplans read the emulators' key from here
API_KEY = "e2e-key"
START_TIMEOUT_S = 10.0
POLL_S = 0.05


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` every 50 ms until it returns something truthy; return that.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


class EmulatorThread:
    """An emulated Gemini Live or OpenAI Realtime service on a background event loop.

    Use as a context manager; every accessor is safe to call from the test's thread.

    Args:
        kind: ``gemini`` (TLS, own CA file) or ``openai`` (plain ws).
        script: what the emulated model does (replies, tool calls).
        record: a text file the emulator appends every frame to (JSONL, see its ``Recorder``).
    """

    def __init__(self, kind: Kind, script: EmulatorScript, record: IO[str] | None = None) -> None:
        self.kind = kind
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        keyed = replace(script, api_keys=frozenset({API_KEY}))
        self.emulator: EmulatorServer = (
            GeminiEmulator(keyed, record=record)
            if kind == "gemini"
            else OpenAIEmulator(keyed, record=record)
        )

    def __enter__(self) -> Self:
        self._thread.start()
        self._run(self.emulator.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._run(self.emulator.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_S)
            self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(START_TIMEOUT_S)

    def _call(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        result: T = self._run(call())
        return result

    def agent(self, **keys: Any) -> dict[str, Any]:
        """Dialplan keys of an agent served by this emulator, plus ``keys``."""
        agent: dict[str, Any] = {
            "provider": self.kind,
            "api_key": "${" + API_KEY_ENV + "}",
            "base_url": self.emulator.base_url,
        }
        if isinstance(self.emulator, GeminiEmulator):
            agent["ca_file"] = self.emulator.ca_file
        agent.update(keys)
        return agent

    @property
    def session_count(self) -> int:
        """Connections so far (one per call, unless a session was resumed)."""
        return self._call(lambda: len(self.emulator.sessions))

    def received(self, index: int = -1) -> list[dict[str, Any]]:
        """A copy of the frames session ``index`` received from sipbot (parsed JSON)."""
        return self._call(lambda: list(self.emulator.sessions[index].received))

    def sent(self, index: int = -1) -> list[dict[str, Any]]:
        """A copy of the frames session ``index`` sent to sipbot (parsed JSON)."""
        return self._call(lambda: list(self.emulator.sessions[index].sent))

    def closed(self, index: int = -1) -> bool:
        """Whether session ``index`` has ended."""
        return self._call(lambda: self.emulator.sessions[index].closed.is_set())

    def close_codes(self) -> list[int | None]:
        """Each session's close code, in order (None while open; 1006 for a dropped socket)."""
        return self._call(lambda: [s.close_code for s in self.emulator.sessions])

    def tool_results(self, index: int = -1) -> list[dict[str, Any]]:
        """The tool results sipbot sent in session ``index``: ``{"id", "name", "output"}``.

        ``output`` is the result as the model got it (Gemini ``response``, OpenAI's ``output``
        parsed from its JSON text when it is JSON).
        """
        return tool_results(self.kind, self.received(index))

    def texts(self, index: int = -1) -> list[str]:
        """Text turns sipbot sent in session ``index`` (e.g. the caller's DTMF as words)."""
        return texts(self.kind, self.received(index))


def tool_results(kind: Kind, received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results among a session's received frames (see :meth:`EmulatorThread.tool_results`)."""
    results: list[dict[str, Any]] = []
    for frame in received:
        if kind == "gemini":
            for response in (frame.get("toolResponse") or {}).get("functionResponses") or []:
                results.append(
                    {
                        "id": response.get("id"),
                        "name": response.get("name"),
                        "output": response.get("response"),
                    }
                )
        elif frame.get("type") == "conversation.item.create":
            item = frame.get("item") or {}
            if item.get("type") == "function_call_output":
                output = item.get("output")
                with contextlib.suppress(TypeError, ValueError):
                    output = json.loads(str(output))
                results.append({"id": item.get("call_id"), "name": None, "output": output})
    return results


def texts(kind: Kind, received: list[dict[str, Any]]) -> list[str]:
    """Text turns among a session's received frames (Gemini realtimeInput.text, OpenAI
    ``input_text`` user messages)."""
    out: list[str] = []
    for frame in received:
        if kind == "gemini":
            text = (frame.get("realtimeInput") or {}).get("text")
            if isinstance(text, str):
                out.append(text)
        elif frame.get("type") == "conversation.item.create":
            item = frame.get("item") or {}
            if item.get("type") == "message" and item.get("role") == "user":
                out += [
                    c["text"]
                    for c in item.get("content") or []
                    if isinstance(c, dict) and c.get("type") == "input_text"
                ]
    return out


# --------------------------------------------------------------------------- HTTP tool service


@dataclass
class ToolRequest:
    """One POST the tool service received."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ToolService:
    """An HTTP service for HTTP tools: records each POST, answers ``response`` as JSON.

    Use as a context manager; ``url(path)`` is where a dialplan's ``http: {url: ...}`` points.

    Attributes:
        response: the JSON body of every answer.
        delay_s: how long each answer takes.
        requests: what it received, in order.
    """

    response: Any = field(default_factory=lambda: {"ticket": "T-42", "status": "noted"})
    delay_s: float = 0.0
    requests: list[ToolRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                service.requests.append(ToolRequest(self.path, dict(self.headers), body))
                time.sleep(service.delay_s)
                data = json.dumps(service.response).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/tool") -> str:
        """``http://127.0.0.1:PORT<path>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(START_TIMEOUT_S)


# --------------------------------------------------------------------------- dialplans


def write_dialplan(path: Path, config: Mapping[str, Any]) -> Path:
    """Dump ``config`` (a dialplan as plain data) to ``path`` as YAML; return ``path``."""
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


def server_env() -> dict[str, str]:
    """Environment for a sipbot whose agents use :class:`EmulatorThread` emulators."""
    return {API_KEY_ENV: API_KEY}
