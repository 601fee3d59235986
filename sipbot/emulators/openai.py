"""A protocol-faithful emulator of the OpenAI Realtime API (GA) over websockets.

Point the real openai SDK at it::

    async with OpenAIEmulator(EmulatorScript(reply="echo")) as emulator:
        client = AsyncOpenAI(api_key="any", websocket_base_url=emulator.base_url)
        async with client.realtime.connect(model="gpt-realtime") as connection: ...

What it does, like the real service: the handshake needs ``/v1/realtime?model=...`` and a bearer
key (HTTP 401 otherwise); ``session.created`` comes first; ``session.update`` is validated
(missing ``session.type``, unknown fields or formats → ``error``) and answered with
``session.updated``. Caller audio (PCM 24 kHz, or G.711 μ-law / A-law at 8 kHz) is cut into
turns by server VAD (``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed``)
or committed by the client; each turn becomes a user item and a response streaming audio in the
session's output format with its transcript, or a function call. Speech during a response
cancels it (``response.done`` cancelled / turn_detected); ``conversation.item.truncate`` is
checked against the audio actually sent for the item. The module's event handling lives in
:mod:`sipbot.emulators.openai_session`.
"""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from sipbot.emulators.common import CallTurns, EmulatedSession, EmulatorServer
from sipbot.emulators.openai_session import OpenAIConnection
from sipbot.emulators.script import EmulatorScript

REALTIME_PATH = "/v1/realtime"
KEY_HINT = "You can find your API key at https://platform.openai.com/account/api-keys."


def _error(message: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def _masked(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else "*" * len(key)


class OpenAIEmulator(EmulatorServer):
    """OpenAI Realtime GA over plain ``ws://``.

    Attributes:
        base_url: ``ws://HOST:PORT/v1`` for ``AsyncOpenAI(websocket_base_url=...)``.
    """

    def __init__(
        self,
        script: EmulatorScript = EmulatorScript(),  # noqa: B008 - frozen, shared safely
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: IO[str] | None = None,
        keep_frames: bool = True,
    ) -> None:
        super().__init__(script, host=host, port=port, record=record, keep_frames=keep_frames)
        self.call_turns = CallTurns()  # the script's turns_per_call (its Rule 5)

    @property
    def base_url(self) -> str:
        """``ws://HOST:PORT/v1``."""
        return f"ws://{self.host}:{self.port}/v1"

    def _check_request(self, request: Request) -> tuple[int, dict[str, Any]] | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") != REALTIME_PATH:
            return 404, _error(f"Invalid URL (GET {url.path})", None)
        authorization = request.headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme != "Bearer" or not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
                + KEY_HINT
            )
            return 401, _error(message, "missing_api_key")
        if self.script.api_keys and key not in self.script.api_keys:
            return 401, _error(
                f"Incorrect API key provided: {_masked(key)}. {KEY_HINT}", "invalid_api_key"
            )
        if not parse_qs(url.query).get("model"):
            return 400, _error(
                "Missing required parameter: 'model'.", "missing_required_parameter", "model"
            )
        return None

    async def _serve_connection(
        self, connection: ServerConnection, session: EmulatedSession
    ) -> None:
        assert connection.request is not None  # a handler runs after the handshake
        model = parse_qs(urlsplit(connection.request.path).query)["model"][0]
        await OpenAIConnection(connection, session, model, self.call_turns).run()
