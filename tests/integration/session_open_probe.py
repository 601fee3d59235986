"""Child process of test_session_open.py: what opening a provider session does on the loop.

Usage: ``python -m tests.integration.session_open_probe openai|gemini KEY URL [CA_FILE]``.

A fresh interpreter (the first call of a server is the one that paid for lazy work), like the
server: the provider is made first, then sessions are opened one after another against the
emulator at URL while a 5 ms ticker measures the loop's lateness. Prints one JSON object:
``imports`` (modules first imported during an open), ``spawns`` (subprocesses started during
an open), ``built`` (pydantic models whose validators were built during an open) and
``late_ms`` (the ticker's worst lateness per open).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pydantic

from sipbot.domain import CallInfo, SessionConfig, ToolSpec, Transcript, TurnDetection

OPENS = 3
TICK_S = 0.005
CONFIG = SessionConfig(
    instructions="You answer the phone.",
    voice="Puck",
    tools=(ToolSpec("lookup", "Find.", {"type": "object", "properties": {}}),),
    history=(Transcript("caller", "hello"),),
    greeting="Hello!",
    turn_detection=TurnDetection(silence_ms=200, prefix_ms=100),
)
SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec"})


def models() -> dict[type, bool]:
    """Every pydantic model class loaded, and whether its validator is built."""
    found: dict[type, bool] = {}
    todo: list[type] = [pydantic.BaseModel]
    while todo:
        cls = todo.pop()
        subclasses: list[type] = cls.__subclasses__()
        for sub in subclasses:
            if sub not in found:
                found[sub] = bool(getattr(sub, "__pydantic_complete__", True))
                todo.append(sub)
    return found


async def probe(kind: str, key: str, url: str, ca_file: str | None) -> dict[str, Any]:
    if kind == "openai":
        from sipbot.providers.openai import OpenAIProvider

        provider: Any = OpenAIProvider(key, websocket_base_url=url)
    else:
        from sipbot.providers.gemini import GeminiProvider

        provider = GeminiProvider(key, base_url=url, ca_file=ca_file)
    spawns: list[str] = []
    opening = False

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if opening and event in SPAWN_EVENTS:
            spawns.append(f"{event} {args[:2]!r}")

    sys.addaudithook(audit)
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        while True:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            worst = max(worst, time.perf_counter() - due)

    ticker = asyncio.create_task(tick())
    imports: list[str] = []
    built: list[str] = []
    late_ms: list[float] = []
    sessions = []
    for n in range(OPENS):
        await asyncio.sleep(0.05)
        modules, complete = set(sys.modules), models()
        worst, opening = 0.0, True
        sessions.append(await provider.open(CallInfo(f"call-{n}", codec="PCMU"), CONFIG))
        await asyncio.sleep(0.02)
        opening = False
        late_ms.append(round(worst * 1000, 1))
        imports += sorted(set(sys.modules) - modules)
        built += [
            f"{cls.__module__}.{cls.__qualname__}"
            for cls, done in models().items()
            if done and not complete.get(cls, False)
        ]
    ticker.cancel()
    for session in sessions:
        await session.close()
    return {"imports": imports, "spawns": spawns, "built": built, "late_ms": late_ms}


def main() -> None:
    kind, key, url = sys.argv[1:4]
    ca_file = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(asyncio.run(probe(kind, key, url, ca_file))))


if __name__ == "__main__":
    main()
