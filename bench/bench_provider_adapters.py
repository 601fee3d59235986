"""CPU cost of the Gemini / OpenAI adapters per call, against an emulator in another process.

N sessions are opened through the real SDKs; one ticker hands each a 20 ms frame every 20 ms
(1 s of tone, 1.5 s of silence, repeated, so the emulator answers every 2.5 s with an echo).
Printed: this process's CPU per call-second, ticker lateness, and how long the main thread
waited for a CPU (on a shared machine lateness is mostly that, not the adapters).

    python bench/bench_provider_adapters.py gemini 100 --seconds 10

``--per-message`` instead measures, in this process alone, the CPU each received server message
costs from its frame to sipbot's events (``time.process_time``, best of several rounds), for the
shapes a call receives most: an audio chunk at the emulator's default size (100 ms), transcript
pieces and the end of a turn. Gemini is measured both ways: ``sdk`` is google-genai's own
``AsyncSession._receive`` (a pydantic ``LiveServerMessage`` per message) feeding
``GeminiReceiver.receive``, ``frames`` is ``GeminiReceiver.receive_frame`` on the same bytes.
``--profile`` adds a cProfile of the audio chunk path (top functions by own time).

    python bench/bench_provider_adapters.py gemini --per-message --profile
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from typing import Any

import numpy as np

from sipbot.domain import AudioOut, CallInfo, SessionConfig, TurnDetection


async def serve_emulator(kind: str) -> None:
    """Child process: run an emulator, print its URL and CA file, serve until stdin closes."""
    from sipbot.emulators.script import EmulatorScript

    script = EmulatorScript(speed=4.0, reply="echo", vad_silence_ms=300)
    emulator: Any
    if kind == "gemini":
        from sipbot.emulators.gemini import GeminiEmulator

        emulator = GeminiEmulator(script, port=0)
    else:
        from sipbot.emulators.openai import OpenAIEmulator

        emulator = OpenAIEmulator(script, port=0)
    async with emulator:
        print(emulator.base_url, getattr(emulator, "ca_file", "-"), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def tone(rate_hz: int, ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    return (np.sin(2 * math.pi * hz * t) * 0.3 * 32767).astype("<i2").tobytes()


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / 100.0


def runqueue_wait_s() -> float:
    _, wait, _ = open("/proc/self/schedstat").read().split()  # noqa: SIM115
    return int(wait) / 1e9


async def open_sessions(kind: str, url: str, ca_file: str, count: int) -> tuple[list[Any], int]:
    config = SessionConfig(turn_detection=TurnDetection(silence_ms=300))
    provider: Any
    if kind == "gemini":
        from sipbot.providers.gemini import GeminiProvider

        provider, rate_hz = GeminiProvider("k", base_url=url, ca_file=ca_file), 16_000
    else:
        from sipbot.providers.openai import OpenAIProvider

        provider, rate_hz = OpenAIProvider("k", websocket_base_url=url), 24_000
    sessions = [await provider.open(CallInfo(f"c{i}", codec="G722"), config) for i in range(count)]
    return sessions, rate_hz


async def run(kind: str, count: int, seconds: float, child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    url, ca_file = child.stdout.readline().split()
    sessions, rate_hz = await open_sessions(kind, url, ca_file, count)
    received = [0]

    async def drain(session: Any) -> None:
        async for event in session.events():
            if isinstance(event, AudioOut):
                received[0] += len(event.audio)

    drains = [asyncio.create_task(drain(s)) for s in sessions]
    pattern = tone(rate_hz, 1000) + bytes(2 * rate_hz * 1500 // 1000)
    size = 2 * rate_hz // 50
    frames = [pattern[i : i + size] for i in range(0, len(pattern), size)]
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    emulator_cpu, cpu, waited = cpu_seconds(child.pid), time.process_time(), runqueue_wait_s()
    start, tick = loop.time(), 0
    while loop.time() - start < seconds:
        deadline = start + tick * 0.02
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        lateness.append(loop.time() - deadline)
        for session in sessions:
            session.send_audio(frames[tick % len(frames)])
        tick += 1
    wall = loop.time() - start
    out_rate_hz = 24_000 if kind == "gemini" else rate_hz
    cpu = time.process_time() - cpu
    late_ms = np.array(lateness) * 1000.0
    print(
        f"{kind} calls={count}: adapters CPU {100 * cpu / wall:.1f}% of a core "
        f"({1000 * cpu / wall / count:.2f} ms per call-second); "
        f"emulator CPU {100 * (cpu_seconds(child.pid) - emulator_cpu) / wall:.0f}%; "
        f"ticker lateness p50 {np.percentile(late_ms, 50):.1f} ms "
        f"p99 {np.percentile(late_ms, 99):.1f} ms max {late_ms.max():.1f} ms; "
        f"main thread waited {runqueue_wait_s() - waited:.2f} s for a CPU; "
        f"agent audio received {received[0] // 2 // out_rate_hz} s"
    )
    for session in sessions:
        await session.close()
    for task in drains:
        task.cancel()


# --------------------------------------------------------------------------- per message

ROUNDS = 7  # the best round is reported: the machine may be shared
CHUNK_MS = 100  # EmulatorScript's default chunk_ms


def per_message_us(parse: Any, frame: bytes, count: int) -> float:
    """Best-of-ROUNDS CPU µs for ``parse(frame)``."""
    best = math.inf
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(count):
            parse(frame)
        best = min(best, time.process_time() - start)
    return 1e6 * best / count


def gemini_frames() -> dict[str, bytes]:
    """Server frames as the Gemini emulator writes them."""
    import json

    from sipbot.emulators import gemini_wire as emulator

    chunk = tone(24_000, CHUNK_MS)

    def wire(message: dict[str, Any]) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode()

    return {
        f"audio chunk ({CHUNK_MS} ms)": wire(emulator.audio_content(chunk)),
        "output transcription": wire(emulator.output_transcription("It is noon ")),
        "input transcription": wire({"serverContent": {"inputTranscription": {"text": "What "}}}),
        "turnComplete + usage": wire(emulator.turn_complete(1200, 2000)),
    }


def gemini_parsers() -> dict[str, Any]:
    from google import genai
    from google.genai import types
    from google.genai.live import AsyncSession

    from sipbot.providers.gemini import _warm_up_sdk
    from sipbot.providers.gemini_wire import GeminiReceiver

    class OneFrame:  # the websocket AsyncSession._receive reads: hands it the current frame
        frame = b""

        async def recv(self, decode: bool | None = None) -> bytes:
            return self.frame

    socket = OneFrame()
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url="https://h"))
    session = AsyncSession(api_client=client.aio._api_client, websocket=socket)  # type: ignore[arg-type]
    _warm_up_sdk()
    sdk_receiver, frames_receiver = GeminiReceiver(), GeminiReceiver()

    def sdk(frame: bytes) -> Any:
        socket.frame = frame
        receiving = session._receive()
        try:
            receiving.send(None)
        except StopIteration as done:
            return sdk_receiver.receive(done.value)
        raise AssertionError("AsyncSession._receive suspended")

    parsers: dict[str, Any] = {"sdk": sdk}
    if hasattr(frames_receiver, "receive_frame"):  # not before it existed (a "before" run)
        parsers["frames"] = frames_receiver.receive_frame
    return parsers


def openai_frames() -> dict[str, bytes]:
    """Server events as the OpenAI emulator writes them."""
    import base64
    import json

    common = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "event_id": "event_0123456789abcdef", **fields, **common}
        return json.dumps(body, separators=(",", ":")).encode()

    chunk = base64.b64encode(tone(24_000, CHUNK_MS)).decode()
    return {
        f"audio chunk ({CHUNK_MS} ms)": event("response.output_audio.delta", delta=chunk),
        "output transcription": event("response.output_audio_transcript.delta", delta="It is "),
        "input transcription": event(
            "conversation.item.input_audio_transcription.delta", delta="What "
        ),
    }


def openai_parsers() -> dict[str, Any]:
    from sipbot.domain import PCM16_24K
    from sipbot.providers import openai_wire

    conversation = openai_wire.OpenAIConversation(PCM16_24K)
    clock = time.monotonic

    def frames(frame: bytes) -> Any:  # what OpenAISession.receive does with each frame
        return conversation.receive(openai_wire.decode_server_event(frame), clock())

    return {"frames": frames}


def per_message(kind: str, count: int, profile: bool) -> None:
    frames, parsers = (
        (gemini_frames(), gemini_parsers())
        if kind == "gemini"
        else (openai_frames(), openai_parsers())
    )
    for shape, frame in frames.items():
        figures = ", ".join(
            f"{path} {per_message_us(parse, frame, count):.1f} µs"
            for path, parse in parsers.items()
        )
        print(f"{kind} {shape} [{len(frame)} B]: {figures}")
    if profile:
        import cProfile
        import pstats

        audio = next(iter(frames.values()))
        for path, parse in parsers.items():
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(count):
                parse(audio)
            profiler.disable()
            print(f"--- {kind} {path}: audio chunk x {count}, by own time")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("provider", choices=("gemini", "openai"))
    parser.add_argument("calls", type=int, nargs="?", default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--per-message", action="store_true", help="CPU per received message")
    parser.add_argument("--messages", type=int, default=2000, help="per round, --per-message")
    parser.add_argument("--profile", action="store_true", help="cProfile, with --per-message")
    parser.add_argument("--emulator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulator:
        asyncio.run(serve_emulator(args.provider))
        return
    if args.per_message:
        per_message(args.provider, args.messages, args.profile)
        return
    child = subprocess.Popen(
        [sys.executable, __file__, args.provider, "0", "--emulator"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        asyncio.run(run(args.provider, args.calls, args.seconds, child))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
