"""What both emulators share: sessions and their records, reply plans and pacing, the server shell.

An emulator is a websockets server (:class:`EmulatorServer`) that makes one
:class:`EmulatedSession` per connection and keeps them in order in ``sessions`` so tests can
assert on what the client sent (``received``), what it got (``sent``) and the caller audio
(``audio_in``). With a ``record`` path every frame is also appended to a JSONL file, audio
payloads summarised by their length.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from sipbot.emulators.audio import Utterance
from sipbot.emulators.script import EmulatorScript

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE_BYTES = 16 * 1024 * 1024  # both services take multi-MB audio appends
CLOSE_REASON_BYTES = 123  # RFC 6455: a close reason fits in a control frame


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame (123 bytes of UTF-8)."""
    data = text.encode("utf-8")[:CLOSE_REASON_BYTES]
    return data.decode("utf-8", errors="ignore")


def b64decode_any(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not.

    The real services parse bytes fields as protobuf JSON does, which accepts both alphabets;
    the google-genai SDK sends URL-safe base64.

    Raises:
        ValueError: ``text`` is not base64.
    """
    normalized = text.strip().replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def b64encode(data: bytes) -> str:
    """Standard base64 text (what both services send)."""
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- recording

AUDIO_KEYS = frozenset({"data", "audio", "delta"})


def summarize(message: Any, *, audio_delta: bool = False) -> Any:
    """A copy of ``message`` with base64 audio payloads replaced by ``{"audio_bytes": n}``.

    Audio payloads are ``data`` next to an ``audio/*`` MIME type (Gemini), ``audio`` strings and
    the ``delta`` of ``response.output_audio.delta`` (OpenAI).
    """
    if isinstance(message, list):
        return [summarize(item) for item in message]
    if not isinstance(message, Mapping):
        return message
    mime = str(message.get("mimeType", message.get("mime_type", "")))
    is_audio_delta = audio_delta or str(message.get("type", "")).endswith("output_audio.delta")
    out: dict[str, Any] = {}
    for key, value in message.items():
        audio = (
            (key == "data" and mime.startswith("audio/"))
            or key == "audio"
            or (key == "delta" and is_audio_delta)
        )
        if audio and isinstance(value, str):
            out[key] = {"audio_bytes": len(value) * 3 // 4 - value.count("=")}
        else:
            out[key] = summarize(value)
    return out


class Recorder:
    """Appends one JSON line per frame: ``{"t", "session", "direction", "message"}``.

    ``t`` is seconds since the recorder was made; ``direction`` is ``"in"`` (from the client),
    ``"out"`` (to the client) or ``"event"`` (connect, close).
    """

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self._start = time.monotonic()

    def write(self, session: int, direction: str, message: Any) -> None:
        """Record one frame (summarised)."""
        line = {
            "t": round(time.monotonic() - self._start, 4),
            "session": session,
            "direction": direction,
            "message": summarize(message),
        }
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()


# --------------------------------------------------------------------------- sessions


class EmulatedSession:
    """One client connection as the emulator saw it.

    Attributes:
        index: position in the emulator's ``sessions`` (from 0).
        received: every client frame / event, parsed, in order.
        sent: every server frame / event, in order.
        closed: set when the connection has ended.
        script: the behaviour of this session; tests may replace it mid-call (it applies from
            the next decision the emulator takes).
        close_code: the close code the connection ended with (None while open or on a drop).
        keep_frames: whether ``received``, ``sent`` and ``audio_in`` are kept in memory (a
            long-running ``sipbot emulate`` keeps nothing and records to a file instead).
    """

    def __init__(
        self,
        index: int,
        script: EmulatorScript,
        recorder: Recorder | None,
        *,
        keep_frames: bool = True,
    ) -> None:
        self.index = index
        self.keep_frames = keep_frames
        self.script = script
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._audio_in = bytearray()
        self._recorder = recorder

    @property
    def audio_in(self) -> bytes:
        """All caller audio received, decoded (as sent: PCM16 or G.711 bytes)."""
        return bytes(self._audio_in)

    def add_audio_in(self, audio: bytes) -> None:
        """Account for decoded caller audio."""
        if self.keep_frames:
            self._audio_in += audio

    def record_in(self, message: dict[str, Any]) -> None:
        """Keep a client frame."""
        if self.keep_frames:
            self.received.append(message)
        if self._recorder is not None:
            self._recorder.write(self.index, "in", message)

    def record_out(self, message: dict[str, Any]) -> None:
        """Keep a server frame."""
        if self.keep_frames:
            self.sent.append(message)
        if self._recorder is not None:
            self._recorder.write(self.index, "out", message)

    def record_event(self, event: dict[str, Any]) -> None:
        """Record a connection event (connect, close) in the JSONL file only."""
        if self._recorder is not None:
            self._recorder.write(self.index, "event", event)


# --------------------------------------------------------------------------- replies


def split_chunks(audio: bytes, chunk_bytes: int) -> list[bytes]:
    """``audio`` cut into chunks of ``chunk_bytes`` (the last may be shorter)."""
    return [audio[i : i + chunk_bytes] for i in range(0, len(audio), chunk_bytes)] or [b""]


def split_text(text: str, count: int) -> list[str]:
    """``text`` cut at word boundaries into ``count`` pieces that join back to ``text``.

    Later pieces are empty when there are fewer words than pieces.
    """
    words = text.split(" ")
    pieces = [word + " " for word in words[:-1]] + [words[-1]]
    if count <= 0:
        return []
    per = -(-len(pieces) // count)  # ceiling division
    out = ["".join(pieces[i * per : (i + 1) * per]) for i in range(count)]
    return out


def chunk_deadline(start: float, index: int, chunk_ms: int, speed: float) -> float:
    """When chunk ``index`` of a reply is due (``speed`` 0: all at ``start``)."""
    if speed <= 0:
        return start
    return start + index * chunk_ms / 1000.0 / speed


@dataclass(slots=True)
class Reply:
    """A reply being sent: its audio chunks, the transcript piece sent with each, and progress.

    Attributes:
        turn: the caller turn it answers (0 for a greeting).
        chunks: encoded audio, one server message each.
        texts: transcript piece per chunk (same length as ``chunks``).
        transcript: the whole transcript.
        chunk_ms: audio per full chunk.
        position: chunks already sent (a resumed reply continues from here).
        counts: whether it answers a caller turn (counts towards the ``*_after_turns`` events).
        stalled: it has stalled once (script ``stall_after_turns``); it does not again.
    """

    turn: int
    chunks: list[bytes]
    texts: list[str]
    transcript: str
    chunk_ms: int
    counts: bool = True
    position: int = 0
    stalled: bool = False

    async def stall_if_due(self, script: EmulatorScript, replies_here: int, index: int) -> None:
        """Before chunk ``index``: stall for good when the script says so (its Rule 4)."""
        if self.counts and not self.stalled and script.stalls(replies_here, index * self.chunk_ms):
            self.stalled = True
            log.info("emulator: reply to turn %d stalls at chunk %d", self.turn, index)
            await asyncio.get_running_loop().create_future()  # until the connection ends

    @property
    def done(self) -> bool:
        """Whether every chunk has been sent."""
        return self.position >= len(self.chunks)


def make_reply(
    audio: bytes, transcript: str, *, turn: int, chunk_ms: int, bytes_per_ms: int, counts: bool
) -> Reply:
    """Plan a reply: ``audio`` in chunks of ``chunk_ms`` with the transcript spread over them."""
    chunks = split_chunks(audio, max(1, chunk_ms * bytes_per_ms))
    return Reply(turn, chunks, split_text(transcript, len(chunks)), transcript, chunk_ms, counts)


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A tool call the model made and awaits the result of."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]
    turn: int


@dataclass(slots=True)
class Conversation:
    """What the emulated model remembers across a session (and across a resumed Gemini one).

    Attributes:
        turns: caller turns so far.
        last_utterance: the caller's latest utterance (what an echo reply plays).
        history: the transcript, ``{"role": "caller"|"agent"|"tool", "text": ...}`` dicts.
        pending_reply: a reply cut off by the end of a connection, to finish on resumption.
        pending_calls: tool calls awaiting results, by call id.
        tool_results: results received so far for the pending calls: id → response.
    """

    turns: int = 0
    last_utterance: Utterance | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    pending_reply: Reply | None = None
    pending_calls: dict[str, PendingCall] = field(default_factory=dict)
    tool_results: dict[str, Any] = field(default_factory=dict)


class CallTurns:
    """Caller turns so far by call (``instructions``) for ``turns_per_call`` (script Rule 5).

    Bounded: past ``max_calls`` keys, the least recently counted call is forgotten.
    """

    def __init__(self, max_calls: int = 1024) -> None:
        self.max_calls = max_calls
        self._turns: dict[str, int] = {}

    def get(self, call: str) -> int:
        """The caller turns counted for ``call`` so far (0 for a new call)."""
        return self._turns.get(call, 0)

    def set(self, call: str, turns: int) -> None:
        """Record that ``call`` has had ``turns`` caller turns."""
        self._turns.pop(call, None)
        self._turns[call] = turns
        while len(self._turns) > self.max_calls:
            del self._turns[next(iter(self._turns))]


class ResumptionHandles:
    """Resumption handles → the conversation each resumes; a handle lapses after ``ttl_s``.

    Handles are random and unguessable; several may name one conversation (one is issued at
    every resumable point). Time is passed in (``now``, seconds, monotonic).
    """

    def __init__(self, ttl_s: float = 2 * 3600.0) -> None:
        self.ttl_s = ttl_s  # the real service keeps a handle valid for two hours
        self._entries: dict[str, tuple[float, Conversation]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, conversation: Conversation, now: float) -> str:
        """A new handle for ``conversation``; lapsed handles are forgotten."""
        while self._entries:
            oldest = next(iter(self._entries))
            if now - self._entries[oldest][0] < self.ttl_s:
                break
            del self._entries[oldest]
        handle = secrets.token_hex(16)
        self._entries[handle] = (now, conversation)
        return handle

    def get(self, handle: str, now: float) -> Conversation | None:
        """The conversation ``handle`` resumes, or None (unknown or lapsed)."""
        entry = self._entries.get(handle)
        if entry is None or now - entry[0] >= self.ttl_s:
            return None
        return entry[1]


def tool_reply_text(script: EmulatorScript, turn: int, results: Sequence[Any]) -> str:
    """Transcript of the reply after tool results: ``reply_text`` then each result's JSON."""
    parts = [script.reply_text.format(turn=turn)]
    parts += [json.dumps(result, sort_keys=True, separators=(",", ":")) for result in results]
    return " ".join(parts)


# --------------------------------------------------------------------------- the server shell


class EmulatorServer:
    """A websockets server making one :class:`EmulatedSession` per connection.

    Subclasses implement :meth:`_serve_connection` (the protocol) and may refuse handshakes in
    :meth:`_check_request`. Usable as ``async with``.

    Args:
        record: a text file to append every frame to (JSONL, audio summarised).
        keep_frames: keep every session's frames and audio in memory (for tests).

    Attributes:
        script: the behaviour given to new sessions.
        sessions: one per connection, in order.
        host, port: where it listens (``port`` is the bound port once started).
    """

    scheme = "ws"

    def __init__(
        self,
        script: EmulatorScript,
        *,
        host: str,
        port: int,
        record: IO[str] | None = None,
        keep_frames: bool = True,
    ) -> None:
        self.script = script
        self.keep_frames = keep_frames
        self.host = host
        self.port = port
        self.sessions: list[EmulatedSession] = []
        self._recorder = Recorder(record) if record is not None else None
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        """The URL clients are given (each protocol says what shape)."""
        raise NotImplementedError

    def _ssl_context(self) -> Any:
        return None

    async def start(self) -> None:
        """Listen; ``port`` 0 binds a free port (read it back from :attr:`port`)."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self._ssl_context(),
            process_request=self._process_request,
            max_size=MAX_CLIENT_MESSAGE_BYTES,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening (idempotent, bounded)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5.0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        refusal = self._check_request(request)
        if refusal is None:
            return None
        status, body = refusal
        response = connection.respond(status, json.dumps(body, indent=2) + "\n")
        response.headers["Content-Type"] = "application/json"
        return response

    def _check_request(self, request: Request) -> tuple[int, dict[str, Any]] | None:
        """Refuse a handshake: return (HTTP status, JSON body), or None to accept."""
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        session = EmulatedSession(
            len(self.sessions), self.script, self._recorder, keep_frames=self.keep_frames
        )
        self.sessions.append(session)
        path = connection.request.path if connection.request is not None else ""
        session.record_event({"event": "connect", "path": path})
        try:
            await self._serve_connection(connection, session)
        except Exception:
            log.exception("emulator session %d failed", session.index)
            await connection.close(1011, "Internal error encountered.")
        finally:
            await connection.wait_closed()
            session.close_code = connection.close_code
            session.record_event({"event": "close", "code": connection.close_code})
            session.closed.set()

    async def _serve_connection(
        self, connection: ServerConnection, session: EmulatedSession
    ) -> None:
        raise NotImplementedError


async def sleep_until(deadline: float) -> None:
    """Sleep until the loop clock reaches ``deadline`` (returns at once if it has)."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
