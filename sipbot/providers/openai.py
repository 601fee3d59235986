"""OpenAI Realtime (GA) provider: the asyncio shell around ``openai`` (the only importer of it).

One :class:`OpenAISession` per call, a :class:`ResilientSession` (uplink batching, event queue,
reconnection) whose protocol state lives in :class:`OpenAIConversation`.

* Rule 1: a PCMU/PCMA call uses ``audio/pcmu``/``audio/pcma`` both ways, so its audio is never
  resampled; any other call uses PCM16 24 kHz both ways.
* Rule 2: ``session_expired`` or a dropped socket opens a new session, configured the same way
  and seeded with the transcript so far (no greeting again).
* Rule 3: events go out with the SDK's ``send_raw`` and come in with ``recv_bytes``: the SDK's
  ``send``/``recv`` validate and build models per event (~90 µs per audio append), which at
  hundreds of calls costs a CPU; the wire module already produces and reads the GA shapes.
* Rule 4: output is due (``StallWatch``) from ``input_audio_buffer.committed`` or
  ``response.created`` until ``response.done`` (caller transcripts may come after the reply, so
  they do not count); a stall opens a new session seeded with the transcript that asks for the
  owed answer again (``response.create``).
* Rule 5: opening a session does no one-off or avoidable work on the event loop, which every
  call's audio shares: what the SDK does lazily on its first connection (importing its
  websocket and anyio modules, ``platform.platform()`` running ``uname -p`` in a subprocess for
  its headers) is done when the provider is made (:func:`_warm_up_sdk`, before ``sipbot
  ready``), and a ``wss://`` connection uses one TLS context per provider instead of the one
  websockets would build per connection (loading the CA bundle: 50-130 ms on a busy host).
  Providers with the same key and URL share the client and that context (:func:`_client_for`):
  a config reload makes new providers on the loop, and making a client costs 70-400 ms there;
  a reload that changes the key gets a new client with the new key.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import ssl
from collections import OrderedDict
from typing import Any

from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from sipbot.domain import CallInfo, ProviderEvent, SessionConfig
from sipbot.errors import ConfigError, ProviderConnectError
from sipbot.providers import openai_wire as wire
from sipbot.providers.resilience import CLOSE_TIMEOUT_S, ResilientSession, bounded, describe

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-realtime"
CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + websocket handshake + session.updated
MAX_ATTEMPTS = 5
DUE_EVENTS = frozenset({"input_audio_buffer.committed", "response.created"})  # an answer is owed
MAX_FRAME_BYTES = 1 << 20  # one server event (5 s of 24 kHz audio is 320 kB in base64)
# Imported by the SDK on its first connection and first send, and by TLS for the host name's
# idna codec (Rule 5).
_LAZY_MODULES = (
    "openai.lib._websocket",
    "websockets.asyncio.client",
    "anyio._backends._asyncio",
    "encodings.idna",
)
_warmed_up = False
MAX_CLIENTS = 16  # shared clients kept (one per key and URL; old keys age out)
_clients: OrderedDict[tuple[str, str | None], tuple[AsyncOpenAI, ssl.SSLContext | None]] = (
    OrderedDict()
)


class OpenAIProvider:
    """Opens OpenAI Realtime sessions, one per call (see the module docstring).

    Args:
        api_key: the OpenAI API key.
        model: model id, used when ``SessionConfig.model`` is not set.
        websocket_base_url: e.g. ``ws://127.0.0.1:PORT/v1`` for the emulator; None for OpenAI's.
        connect_timeout_s: bound on one connection attempt, configuration included.
        max_attempts: consecutive failed reconnections before a session gives up.

    Raises:
        ConfigError: ``api_key`` is empty.
    """

    name = "openai"

    def __init__(
        self,
        api_key: str,
        *,
        model: str = DEFAULT_MODEL,
        websocket_base_url: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not api_key:
            raise ConfigError("openai: no API key (set OPENAI_API_KEY)")
        self._client, self._tls = _client_for(api_key, websocket_base_url)  # Rule 5
        _warm_up_sdk(self._client)
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.max_attempts = max_attempts

    async def open(self, call: CallInfo, config: SessionConfig) -> OpenAISession:
        """Connect a configured session for ``call`` (history and greeting sent).

        Raises:
            ProviderConnectError: unreachable, key refused, or session not configured in time.
        """
        for key in wire.unknown_options(config.options):
            logger.warning("call %s: openai: unknown option %r ignored", call.call_id, key)
        session = OpenAISession(self, call, config)
        await session.start()
        return session

    async def connect(self, model: str) -> AsyncRealtimeConnection:
        """One websocket connection (not yet configured).

        Raises:
            ProviderConnectError: the attempt failed.
        """
        # Passed through to websockets' connect(); the SDK's TypedDict does not list them all.
        socket_options: Any = {
            "open_timeout": self.connect_timeout_s,
            "close_timeout": CLOSE_TIMEOUT_S,
            # the SDK lifts websockets' frame limit (max_size None): a 4 MB frame was read and
            # parsed in one go on the event loop, a gap in every call's audio; one over the
            # limit now ends the connection (1009), and the session reconnects
            "max_size": MAX_FRAME_BYTES,
            "compression": None,  # what the SDK sets when it lifts the limit: keep it
        }
        if self._tls is not None:
            socket_options["ssl"] = self._tls  # one per provider, not one per connection
        manager = self._client.realtime.connect(
            model=model, websocket_connection_options=socket_options
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await manager.enter()
        except Exception as error:  # the SDK and websockets raise many kinds; all mean this
            raise ProviderConnectError(f"openai: cannot connect: {describe(error)}") from error


def _client_for(
    api_key: str, websocket_base_url: str | None
) -> tuple[AsyncOpenAI, ssl.SSLContext | None]:
    """The shared client for this key and URL, and its TLS context (Rule 5)."""
    key = (api_key, websocket_base_url)
    entry = _clients.get(key)
    if entry is None:
        client = AsyncOpenAI(api_key=api_key, websocket_base_url=websocket_base_url, max_retries=0)
        entry = _clients[key] = (client, _tls_context(client))
        while len(_clients) > MAX_CLIENTS:
            _clients.popitem(last=False)
    else:
        _clients.move_to_end(key)
    return entry


def _tls_context(client: AsyncOpenAI) -> ssl.SSLContext | None:
    """The TLS context for the client's websocket URL (None for ``ws://``): the default one
    websockets would make per connection, made once (Rule 5)."""
    if client.websocket_base_url is not None:
        secure = str(client.websocket_base_url).startswith(("wss:", "https:"))
    else:
        secure = client.base_url.scheme != "http"  # the SDK's rule for its own base URL
    return ssl.create_default_context() if secure else None


def _warm_up_sdk(client: AsyncOpenAI) -> None:
    """Do now, once a process, what the SDK would do lazily in the first call (Rule 5).

    Any failure only means no warm-up.
    """
    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    try:
        for name in _LAZY_MODULES:
            importlib.import_module(name)
        _ = client.default_headers  # platform headers: cached by the SDK once computed
    except Exception as error:  # the SDK's internals moved: lose the warm-up, nothing else
        logger.debug("openai: SDK warm-up skipped: %r", error)


class OpenAISession(ResilientSession):
    """One call's OpenAI Realtime conversation (a ``ProviderSession``)."""

    caller_text_due = False  # input transcription is asynchronous (Rule 4)

    def __init__(self, provider: OpenAIProvider, call: CallInfo, config: SessionConfig) -> None:
        audio_format = wire.audio_format_for(call.codec)
        super().__init__(
            "openai", call, config, audio_format, audio_format, max_attempts=provider.max_attempts
        )
        self._provider = provider
        self._conversation = wire.OpenAIConversation(
            audio_format, barge_in=config.turn_detection.barge_in
        )
        self._connection: AsyncRealtimeConnection | None = None

    # ----------------------------------------------------------------- ProviderSession

    async def send_tool_result(self, call_id: str, name: str, result: Any) -> None:
        if self._conversation.tool_result(call_id, result):
            if not self._conversation.waiting_for_results:
                self.expect_output()
        else:
            logger.warning(
                "call %s: openai: result of unknown tool call %s (%s) dropped",
                self.call.call_id,
                call_id,
                name,
            )
        await self._flush()

    async def send_text(self, text: str) -> None:
        self._conversation.caller_text(text)
        self.expect_output()
        await self._flush()

    async def truncate(self, item_id: str, played_ms: int) -> None:
        self.heard_part(item_id, played_ms)
        self._conversation.truncate(item_id, played_ms)
        await self._flush()

    # ----------------------------------------------------------------- ResilientSession

    async def connect(self, first: bool) -> str:
        conversation = self._conversation
        connection = await self._provider.connect(self.config.model or self._provider.model)
        self._connection = connection
        try:
            async with asyncio.timeout(self._provider.connect_timeout_s):
                await self._configure(connection)
        except Exception as error:
            await bounded(self.disconnect())
            if isinstance(error, ProviderConnectError):
                raise
            raise ProviderConnectError(f"openai: cannot configure: {describe(error)}") from error
        seed = self.config.history if first else self.transcript.history()
        for event in wire.history_items(seed):
            conversation.send(event)
        if first and self.config.greeting:
            conversation.greet(self.config.greeting)
            self.expect_output()
        if self.stall_recovery:
            conversation.request_response()  # the answer the stalled session owed
        await self._flush()
        return f"new session seeded with {len(seed)} turns"

    async def _configure(self, connection: AsyncRealtimeConnection) -> None:
        """Send session.update and read events until the server accepts it."""
        update = wire.session_update(self.config, self.input_format)
        await connection.send_raw(json.dumps(update))
        conversation = self._conversation
        while not conversation.session_updated:
            event = wire.decode_server_event(await connection.recv_bytes())
            if event.get("type") == "error":
                error = event.get("error")
                error = error if isinstance(error, dict) else {}
                raise ProviderConnectError(
                    f"openai: session.update refused: {error.get('code')}: {error.get('message')}"
                )
            conversation.receive(event, self.now())

    async def disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            finally:
                _release(connection)

    async def send_batch(self, audio: bytes) -> None:
        assert self._connection is not None
        await self._connection.send_raw(wire.append_audio(audio))

    async def receive(self) -> str:
        assert self._connection is not None
        connection, conversation = self._connection, self._conversation
        while True:
            event = wire.decode_server_event(await connection.recv_bytes())
            if event.get("type") in DUE_EVENTS:
                self.expect_output()
            for out in conversation.receive(event, self._loop.time()):
                self.emit(out)
            if conversation.expired:
                return "session expired"
            for request in conversation.data_to_send():
                await connection.send_raw(json.dumps(request))

    def connection_lost(self) -> list[ProviderEvent]:
        return self._conversation.connection_lost()

    # ----------------------------------------------------------------- helpers

    async def _flush(self) -> None:
        requests = self._conversation.data_to_send()
        connection = self._connection
        if not requests:
            return
        if connection is None:
            logger.warning(
                "call %s: openai: %d events dropped while reconnecting",
                self.call.call_id,
                len(requests),
            )
            return
        try:
            for request in requests:
                await connection.send_raw(json.dumps(request))
        except Exception as error:  # a dead socket: the receiver notices and reconnects
            logger.warning("call %s: openai: not sent: %s", self.call.call_id, describe(error))


def _release(connection: AsyncRealtimeConnection) -> None:
    """Break the SDK connection's reference cycle once it is closed (issue 12).

    ``AsyncRealtimeConnection`` makes one resource object per event family (``session``,
    ``response``, ...), each holding the connection: every closed connection, its websocket and
    buffers included, waited for a full cyclic GC pass (after hundreds of calls, one long
    stall). A closed connection is never used again, so its attributes are dropped.
    """
    vars(connection).clear()
