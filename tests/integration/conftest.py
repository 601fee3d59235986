"""Helpers for the provider integration tests: caller audio, event collection, frequency checks.

These tests run the real SDKs (google-genai, openai) inside sipbot's adapters against the
project's emulators on 127.0.0.1; nothing is mocked. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

import numpy as np

from sipbot.domain import ProviderEvent
from sipbot.providers.base import ProviderSession

EVENT_TIMEOUT_S = 5.0


async def eventually(condition: Callable[[], bool], within_s: float = 2.0) -> None:
    """Wait until ``condition()`` holds (emulator records have no event to wait on)."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - polling a plain attribute
            await asyncio.sleep(0.01)


def sine(hz: float, ms: int, rate_hz: int, amplitude: float = 0.3) -> bytes:
    """PCM16 sine (loud enough for the emulators' VAD)."""
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    return (np.sin(2 * math.pi * hz * t) * amplitude * 32767).astype("<i2").tobytes()


def silence(ms: int, rate_hz: int) -> bytes:
    return b"\x00\x00" * (rate_hz * ms // 1000)


def feed(session: ProviderSession, audio: bytes, frame_bytes: int) -> None:
    """Hand ``audio`` to the session in 20 ms frames, as the media path does."""
    for start in range(0, len(audio), frame_bytes):
        session.send_audio(audio[start : start + frame_bytes])


def dominant_hz(pcm: bytes, rate_hz: int) -> float:
    """Frequency of the strongest FFT bin of PCM16 audio."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate_hz / samples.size)


class EventLog:
    """Reads a session's events in the background and lets a test wait for one."""

    def __init__(self, session: ProviderSession) -> None:
        self.events: list[ProviderEvent] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(session.events()))

    async def _read(self, stream: AsyncIterator[ProviderEvent]) -> None:
        try:
            async for event in stream:
                self.events.append(event)
                self._changed.set()
        finally:
            self.ended.set()
            self._changed.set()

    async def wait_for(
        self,
        predicate: Callable[[ProviderEvent], bool],
        *,
        after: int = 0,
        within_s: float = EVENT_TIMEOUT_S,
    ) -> ProviderEvent:
        """The first event at index >= ``after`` matching ``predicate`` (waits for it)."""
        async with asyncio.timeout(within_s):
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                if self.ended.is_set():
                    raise AssertionError(f"events ended without a match: {self.events}")
                self._changed.clear()
                await self._changed.wait()

    def of_type(self, kind: type) -> list[ProviderEvent]:
        return [event for event in self.events if isinstance(event, kind)]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class FreezingProxy:
    """A TCP proxy on 127.0.0.1 that can freeze: keep the sockets open but pass nothing on.

    It stands for a provider that stops answering without closing the connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # hold everything, forever
            sink.write(data)
            await sink.drain()
