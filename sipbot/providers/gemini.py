"""Gemini Live provider: the asyncio shell around ``google-genai`` (the only module importing it).

One :class:`GeminiSession` per call, a :class:`ResilientSession` (uplink batching, event queue,
reconnection) whose server messages become events through :class:`GeminiReceiver`.

* Rule 1: ``goAway`` lets the current model turn finish, then the session reconnects with the
  latest resumption handle; a dropped socket reconnects the same way at once. Caller audio is
  buffered meanwhile and sent when the new connection is up.
* Rule 2: without a handle, or after resuming with one failed, the new session is seeded with
  the transcript so far instead.
* Rule 3: SDK quirks handled here: ``receive()`` ends at every turnComplete (it is looped);
  every close, even 1000, surfaces as ``errors.APIError`` (a reason to reconnect, like any
  receive error); ``send_realtime_input`` takes one argument per call; the 1 MiB incoming frame
  cap is raised to ``MAX_MESSAGE_BYTES``.
* Rule 4: output is due (``StallWatch``) after a caller transcript, a text, a tool result or the
  greeting, and until ``generationComplete``; a stall resumes with the handle (the service
  continues the conversation). A barge-in sends what the caller heard as a system note
  (:func:`wire.heard_note`).
* Rule 5: server frames are read from the SDK session's websocket and parsed by
  :meth:`wire.GeminiReceiver.receive_frame`, with no ``LiveServerMessage`` per message (its
  pydantic costs 130-190 µs per 100 ms audio chunk, against ≈ 9 µs: bench/README.md); a close
  raises the SDK's ``APIError`` as its own ``receive()`` does. An SDK whose session has no
  websocket we know (:func:`_frame_socket`) logs an error once and is read through
  ``receive()`` instead.
* Rule 6: what the SDK builds lazily on the first connection (the pydantic validators of the
  connect parameters and of the seeding turns, ~100 ms on the event loop every call shares) is
  built when the provider is made (:func:`_warm_up_connect`, before ``sipbot ready``).
  Providers with the same key, URL and CA file share the SDK client (:func:`_client_for`): a
  config reload makes new providers on the loop, and making a client (its HTTP clients and TLS
  contexts) costs 200-400 ms there; a reload that changes the key gets a new client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import OrderedDict
from typing import Any, NoReturn, Protocol, cast

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.genai.live import AsyncSession
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CLOSE_CODE_EXPLANATIONS

from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    CallInfo,
    ProviderEvent,
    SessionConfig,
    ToolSpec,
    Transcript,
)
from sipbot.errors import ConfigError, ProviderConnectError, ProviderProtocolError
from sipbot.providers import gemini_wire as wire
from sipbot.providers.resilience import CLOSE_TIMEOUT_S, ResilientSession, bounded, describe

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-3.8-live"
CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + websocket handshake + setupComplete
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the SDK's websocket default (1 MiB) is too small
MAX_ATTEMPTS = 5
# One message of each shape the live API sends: parsing a shape the first time builds the
# SDK's pydantic validators (~10 ms each), which must happen at start, not during calls.
_WARM_UP_MESSAGES: tuple[dict[str, Any], ...] = (
    {"setupComplete": {}},
    {"serverContent": {"inputTranscription": {"text": "a"}}},
    {"serverContent": {"outputTranscription": {"text": "a"}}},
    {
        "serverContent": {
            "modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm", "data": "AAAA"}}]}
        }
    },
    {"serverContent": {"interrupted": True, "turnComplete": True, "generationComplete": True}},
    {"toolCall": {"functionCalls": [{"id": "1", "name": "f", "args": {"a": 1}}]}},
    {"toolCallCancellation": {"ids": ["1"]}},
    {"goAway": {"timeLeft": "1s"}},
    {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True}},
    {"usageMetadata": {"promptTokenCount": 1}},
)
_warmed_up = False
_warned_no_frames = False  # the SDK-shape error is logged once a process (Rule 5)
# A session using every part of the connect message and of the seeding turns (Rule 6).
_WARM_UP_CONFIG = SessionConfig(
    instructions="a",
    voice="Puck",
    language="en-US",
    temperature=0.5,
    tools=(ToolSpec("f", "f", {"type": "object", "properties": {"a": {"type": "string"}}}),),
    greeting="hi",
    history=(Transcript("caller", "a"), Transcript("agent", "b")),
)
MAX_CLIENTS = 16  # shared clients kept (one per key, URL and CA file; old keys age out)
_clients: OrderedDict[tuple[object, ...], genai.Client] = OrderedDict()


class GeminiProvider:
    """Opens Gemini Live sessions, one per call (see the module docstring).

    Args:
        api_key: the Gemini API key.
        model: model id, used when ``SessionConfig.model`` is not set.
        base_url: service root (``https://127.0.0.1:PORT`` for the emulator); None for Google's.
        ca_file: PEM bundle to trust instead of the default one (the emulator's certificate).
        api_version: API version in the websocket path.
        connect_timeout_s: bound on one connection attempt, setup included.
        max_attempts: consecutive failed reconnections before a session gives up.

    Raises:
        ConfigError: ``api_key`` is empty.
    """

    name = "gemini"

    def __init__(
        self,
        api_key: str,
        *,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        ca_file: str | None = None,
        api_version: str = "v1beta",
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not api_key:
            raise ConfigError("gemini: no API key (set GEMINI_API_KEY)")
        self._client = _client_for(api_key, base_url, ca_file, api_version, connect_timeout_s)
        _warm_up_sdk()
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.max_attempts = max_attempts

    async def open(self, call: CallInfo, config: SessionConfig) -> GeminiSession:
        """Connect a session for ``call`` (history and greeting sent).

        Raises:
            ProviderConnectError: unreachable, key refused, or no setupComplete in time.
        """
        for key in wire.unknown_options(config.options):
            logger.warning("call %s: gemini: unknown option %r ignored", call.call_id, key)
        session = GeminiSession(self, call, config)
        await session.start()
        return session

    async def connect(
        self, config: SessionConfig, handle: str | None
    ) -> tuple[contextlib.AsyncExitStack, AsyncSession]:
        """One connection, set up; close it by closing the returned stack.

        Raises:
            ProviderConnectError: the attempt failed (nothing is left open).
        """
        stack = contextlib.AsyncExitStack()
        live = self._client.aio.live.connect(
            model=config.model or self.model,
            config=wire.connect_config(config, resumption_handle=handle),  # type: ignore[arg-type]
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                session = await stack.enter_async_context(live)
            if session.setup_complete is None:
                raise ProviderConnectError("gemini: no setupComplete from the server")
        except ProviderConnectError:
            await bounded(stack.aclose())
            raise
        except Exception as error:  # the SDK and websockets raise many kinds; all mean this
            await bounded(stack.aclose())
            raise ProviderConnectError(f"gemini: cannot connect: {describe(error)}") from error
        return stack, session


def _client_for(
    api_key: str,
    base_url: str | None,
    ca_file: str | None,
    api_version: str,
    connect_timeout_s: float,
) -> genai.Client:
    """The shared SDK client for these settings (Rule 6); a rewritten CA file makes a new one.

    Raises:
        OSError: ``ca_file`` cannot be read.
    """
    ca_version = os.stat(ca_file).st_mtime_ns if ca_file is not None else None
    key = (api_key, base_url, ca_file, ca_version, api_version, connect_timeout_s)
    client = _clients.get(key)
    if client is not None:
        _clients.move_to_end(key)
        return client
    # google-genai passes the entries websockets' connect() accepts through to it.
    socket_args: dict[str, Any] = {
        "open_timeout": connect_timeout_s,
        "close_timeout": CLOSE_TIMEOUT_S,
        "max_size": MAX_MESSAGE_BYTES,
    }
    if ca_file is not None:
        socket_args["ssl"] = ssl.create_default_context(cafile=ca_file)
    options = types.HttpOptions(
        base_url=base_url, api_version=api_version, async_client_args=socket_args
    )
    client = _clients[key] = genai.Client(api_key=api_key, http_options=options)
    _warm_up_connect(client)  # costly only the first time: the SDK keeps what it built
    while len(_clients) > MAX_CLIENTS:
        _clients.popitem(last=False)
    return client


def _warm_up_sdk() -> None:
    """Parse one message of each shape the way ``AsyncSession.receive`` does (once a process).

    Uses the SDK's private converter; any failure only means no warm-up.
    """
    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    try:
        from google.genai import _live_converters as converters

        blank = types.LiveServerMessage().model_dump()
        for message in _WARM_UP_MESSAGES:
            converted = converters._LiveServerMessage_from_mldev(message)
            types.LiveServerMessage._from_response(response=converted, kwargs=blank)
        types.LiveSendRealtimeInputParameters(audio=types.Blob(data=b"", mime_type="audio/pcm"))
    except Exception as error:  # the SDK's internals moved: lose the warm-up, nothing else
        logger.debug("gemini: SDK warm-up skipped: %r", error)


def _warm_up_connect(client: genai.Client) -> None:
    """Build the connect parameters and seeding turns the way ``live.connect`` and
    ``send_client_content`` do (Rule 6).

    Uses the SDK's private converters; any failure only means no warm-up.
    """
    try:
        from google.genai import _live_converters as converters
        from google.genai import _transformers as transformers

        built = wire.connect_config(_WARM_UP_CONFIG, resumption_handle="h")
        live_config = types.LiveConnectConfig(**built)
        live_config.system_instruction = transformers.t_content(built["system_instruction"])
        parameters = types.LiveConnectParameters(model="models/warm-up", config=live_config)
        converters._LiveConnectParameters_to_mldev(
            api_client=client._api_client, from_object=parameters.model_dump(exclude_none=True)
        )
        turns: Any = wire.seed_turns(_WARM_UP_CONFIG.history, _WARM_UP_CONFIG.greeting)
        content = transformers.t_client_content(turns, True).model_dump(
            mode="json", exclude_none=True
        )
        converters._LiveClientContent_to_mldev(from_object=content)
        # built on first use during a connection, not by the calls above
        types.FunctionDeclaration(name="f")
        types.ModalityTokenCount(token_count=1)
        "a".encode("idna")  # TLS server_hostname: imports the codec (and stringprep)
    except Exception as error:  # the SDK's internals moved: lose the warm-up, nothing else
        logger.debug("gemini: SDK connect warm-up skipped: %r", error)


class GeminiSession(ResilientSession):
    """One call's Gemini Live conversation (a ``ProviderSession``)."""

    def __init__(self, provider: GeminiProvider, call: CallInfo, config: SessionConfig) -> None:
        super().__init__(
            "gemini", call, config, PCM16_16K, PCM16_24K, max_attempts=provider.max_attempts
        )
        self._provider = provider
        self._receiver = wire.GeminiReceiver()
        self._stack: contextlib.AsyncExitStack | None = None
        self._session: AsyncSession | None = None
        self._socket: _TextSocket | None = None  # the SDK session's websocket (audio fast path)
        self._frames: Connection | None = None  # the same, to read raw frames (Rule 5)
        self._handle_failed = False

    # ----------------------------------------------------------------- ProviderSession

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        response = types.FunctionResponse(**wire.tool_response(call_id, name, result))
        session = self._live("tool result")
        if session is not None:
            sending = session.send_tool_response(function_responses=response)
            self.expect_output()
            await self._guard("tool result", sending)

    async def send_text(self, text: str) -> None:
        session = self._live("text")
        if session is not None:
            self.expect_output()
            await self._guard("text", session.send_realtime_input(text=text))

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Tell the model, in-band, what the caller heard of ``item_id`` (Rule 4)."""
        heard = self.heard_part(item_id, played_ms)
        session = self._live("heard note")
        if heard is None or session is None:
            return
        turns: Any = wire.heard_note(heard)
        await self._guard(
            "heard note", session.send_client_content(turns=turns, turn_complete=False)
        )

    # ----------------------------------------------------------------- ResilientSession

    async def connect(self, first: bool) -> str:
        handle = None if first or self._handle_failed else self._receiver.resumption_handle
        if first:
            seed = self.config.history
        else:
            seed = () if handle is not None else self.transcript.history()
        try:
            self._stack, self._session = await self._provider.connect(self.config, handle)
            self._socket = _text_socket(self._session)
            self._frames = _frames_or_none(self._session)
        except ProviderConnectError:
            # The handle may be why (expired, unknown): the next attempt starts afresh, seeded.
            self._handle_failed = handle is not None
            raise
        self._handle_failed = False
        greeting = self.config.greeting if first else None
        turns = wire.seed_turns(seed, greeting)
        if turns:
            # History alone is context (the model waits for the caller); with a greeting the
            # last turn asks for it, and completing the turn makes the model speak.
            try:
                await self._session.send_client_content(
                    turns=turns,  # type: ignore[arg-type]
                    turn_complete=greeting is not None,
                )
                if greeting is not None:
                    self.expect_output()
            except Exception as error:
                await bounded(self.disconnect())
                raise ProviderConnectError(f"gemini: cannot seed: {describe(error)}") from error
        return "resumed" if handle is not None else f"new session seeded with {len(seed)} turns"

    async def disconnect(self) -> None:
        stack, self._stack, self._session = self._stack, None, None
        self._socket = None
        self._frames = None
        if stack is not None:
            await stack.aclose()

    async def send_batch(self, audio: bytes) -> None:
        assert self._session is not None
        if self._socket is not None:
            # the same frame send_realtime_input would send, on the SDK's own connection
            await self._socket.send(wire.realtime_audio_message(audio))
            return
        blob = types.Blob(data=audio, mime_type=wire.INPUT_MIME_TYPE)
        await self._session.send_realtime_input(audio=blob)

    async def receive(self) -> str:
        assert self._session is not None
        frames, receiver = self._frames, self._receiver
        if frames is None:
            return await self._receive_messages()
        while True:
            try:
                frame = await frames.recv(decode=False)
            except ConnectionClosed as closed:
                _raise_closed(closed)
            for event in receiver.receive_frame(frame):
                self.emit(event)
            if receiver.generation_complete:
                self.watch.settle()  # the rest is playback time: nothing more is due
            if receiver.go_away and not receiver.in_turn:
                return "goAway"

    async def _receive_messages(self) -> str:
        """``receive()`` through the SDK's parse (an SDK whose websocket we cannot reach)."""
        assert self._session is not None
        session, receiver = self._session, self._receiver
        while True:  # receive() ends at each turnComplete
            async for message in session.receive():
                for event in receiver.receive(message):
                    self.emit(event)
                if receiver.generation_complete:
                    self.watch.settle()
                if receiver.go_away and not receiver.in_turn:
                    return "goAway"

    def connection_lost(self) -> list[ProviderEvent]:
        return self._receiver.connection_lost()

    # ----------------------------------------------------------------- helpers

    def _live(self, what: str) -> AsyncSession | None:
        if self._session is None:
            logger.warning(
                "call %s: gemini: %s dropped while reconnecting", self.call.call_id, what
            )
        return self._session

    async def _guard(self, what: str, sending: Any) -> None:
        try:
            await sending
        except Exception as error:  # a dead socket: the receiver notices and reconnects
            logger.warning(
                "call %s: gemini: %s not sent: %s", self.call.call_id, what, describe(error)
            )


class _TextSocket(Protocol):
    async def send(self, message: str) -> None: ...


def _text_socket(session: AsyncSession) -> _TextSocket | None:
    """The websocket inside an SDK session, if this SDK version has the one we know.

    Only caller audio takes this path (see :func:`wire.realtime_audio_message`); everything
    else, and every SDK that lays its session out differently, goes through the public API.
    """
    socket = getattr(session, "_ws", None)
    send = getattr(socket, "send", None)
    return cast(_TextSocket, socket) if callable(send) else None


# What this relies on, read in google-genai 3.6.1's live.py (the version installed when it was
# written; pyproject allows >= 1.20): AsyncSession keeps the websockets (>= 13, asyncio
# implementation) connection it reads in ``_ws`` and reads it with
# ``_ws.recv(decode=False)``, one JSON server message per frame; a close becomes
# ``errors.APIError.raise_error(code, reason, None)``. tests/unit/test_gemini_parse.py fails
# when an SDK upgrade breaks any of this.


def _frame_socket(session: AsyncSession) -> Connection:
    """The websocket an SDK session reads its server messages from (Rule 5).

    Raises:
        ProviderProtocolError: this SDK version lays its session out differently.
    """
    socket = getattr(session, "_ws", None)
    if not isinstance(socket, Connection):
        raise ProviderProtocolError(
            f"gemini: google-genai {_sdk_version()}: AsyncSession._ws is "
            f"{type(socket).__name__}, not a websockets.asyncio Connection (the SDK changed: "
            "see _frame_socket in sipbot/providers/gemini.py)"
        )
    return socket


def _frames_or_none(session: AsyncSession) -> Connection | None:
    """:func:`_frame_socket`, or None (the error logged once a process) to use ``receive()``."""
    global _warned_no_frames
    try:
        return _frame_socket(session)
    except ProviderProtocolError as error:
        if not _warned_no_frames:
            _warned_no_frames = True
            logger.error("%s; reading through the SDK's receive() instead (slower)", error)
        return None


def _raise_closed(closed: ConnectionClosed) -> NoReturn:
    """Raise what ``AsyncSession._receive`` raises for a closed socket (Rule 3)."""
    if closed.rcvd is not None:
        code, reason = closed.rcvd.code, closed.rcvd.reason
    else:
        code, reason = 1006, CLOSE_CODE_EXPLANATIONS.get(1006, "Abnormal closure.")
    genai_errors.APIError.raise_error(code, reason, None)
    raise closed  # raise_error always raises; this keeps the type checker sure of it


def _sdk_version() -> str:
    return str(getattr(genai, "__version__", "?"))
