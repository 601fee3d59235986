"""Helpers for end-to-end calls routed to the emulated Gemini Live / OpenAI Realtime providers.

The emulator runs inside the test process, on its own event loop in a background thread
(:class:`EmulatorThread`), so a test can read what it received (``sessions[i].received``) and
when each frame went in or out (:attr:`EmulatorThread.frames`, wall-clock times comparable with
an RTP capture's). The sipbot server is a real ``python -m sipbot run -c FILE`` whose agents
point at the emulator (:func:`write_config`); the real google-genai / openai SDKs inside
sipbot's adapters speak to it. Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from sipbot.emulators.common import EmulatedSession, EmulatorServer
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript

Kind = Literal["gemini", "openai"]
T = TypeVar("T")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
KEY_ENV = {"gemini": "E2E_GEMINI_KEY", "openai": "E2E_OPENAI_KEY"}
KEYS = {"gemini": "e2e-gemini-key", "openai": "sk-e2e-openai-key"}


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame the emulator received (``in``) or sent (``out``), audio summarised."""

    time: float  # epoch seconds, when the emulator recorded it
    session: int
    direction: str  # "in", "out" or "event"
    message: dict[str, Any]


class _FrameLog:
    """A text file stand-in for the emulator's JSONL recorder that timestamps every line."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        now = time.time()
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                frame = Frame(now, record["session"], record["direction"], record["message"])
                with self._lock:
                    self.frames.append(frame)
        return len(text)

    def flush(self) -> None:
        pass

    def snapshot(self) -> list[Frame]:
        with self._lock:
            return list(self.frames)


class EmulatorThread:
    """A Gemini or OpenAI emulator serving from a background thread (its own event loop).

    Use as a context manager. ``script`` applies to sessions opened later; ``set_script``
    also changes the sessions already open (from their next decision on).
    """

    def __init__(self, kind: Kind, script: EmulatorScript) -> None:
        self.kind = kind
        self._log = _FrameLog()
        cls = GeminiEmulator if kind == "gemini" else OpenAIEmulator
        self.emulator: EmulatorServer = cls(script, port=0, record=self._log)  # type: ignore[arg-type]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"emu-{kind}")

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self.call(self.emulator.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.emulator.stop(), STOP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
            self._loop.close()

    def call(self, coro: Any, timeout: float = START_TIMEOUT_S) -> Any:
        """Run a coroutine on the emulator's loop and return its result (bounded)."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    @property
    def ca_file(self) -> str | None:
        return self.emulator.ca_file if isinstance(self.emulator, GeminiEmulator) else None

    @property
    def sessions(self) -> list[EmulatedSession]:
        return list(self.emulator.sessions)

    def set_script(self, script: EmulatorScript) -> None:
        """Give ``script`` to new sessions and to every open one."""

        async def apply() -> None:
            self.emulator.script = script
            for session in self.emulator.sessions:
                session.script = script

        self.call(apply())

    def frames(self, session: int | None = None, direction: str | None = None) -> list[Frame]:
        """Recorded frames so far (optionally one session's, one direction's)."""
        return [
            f
            for f in self._log.snapshot()
            if (session is None or f.session == session)
            and (direction is None or f.direction == direction)
        ]

    def agent_config(self, **extra: Any) -> dict[str, Any]:
        """An agent of this provider pointing at the emulator (key from the environment)."""
        agent: dict[str, Any] = {
            "provider": self.kind,
            "api_key": "${" + KEY_ENV[self.kind] + "}",
            "base_url": self.base_url,
        }
        if self.ca_file is not None:
            agent["ca_file"] = self.ca_file
        agent.update(extra)
        return agent


# --------------------------------------------------------------------------- reading frames


def message_type(frame: Frame) -> str:
    """A frame's kind: OpenAI ``type``, or Gemini's top-level key (``serverContent``, ...)."""
    message = frame.message
    if "type" in message:
        return str(message["type"])
    return next(iter(message), "")


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy (bounded); returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- configuration


def write_config(
    path: Path,
    agents: Mapping[str, Mapping[str, Any]],
    *,
    tools: Mapping[str, Any] | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """A ``sipbot run -c`` file: each agent answers the calls to the DID of its name."""
    config: dict[str, Any] = {
        "server": {"media": {"codecs": ["PCMU", "PCMA", "G722"]}, "log_level": "info"},
        "agents": {name: dict(agent) for name, agent in agents.items()},
        "routes": list(routes)
        if routes is not None
        else [{"name": name, "match": {"did": name}, "answer": name} for name in agents],
    }
    if tools:
        config["tools"] = dict(tools)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def server_env() -> dict[str, str]:
    """Environment variables holding the emulators' keys (the config names them)."""
    return {KEY_ENV[kind]: KEYS[kind] for kind in KEY_ENV}
