"""A protocol-faithful emulator of the Gemini Live API (BidiGenerateContent over TLS websockets).

Point the real google-genai SDK at it::

    async with GeminiEmulator(EmulatorScript(reply="echo")) as emulator:
        client = genai.Client(api_key="any", http_options=types.HttpOptions(
            base_url=emulator.base_url, api_version="v1beta",
            async_client_args={"ssl": ssl.create_default_context(cafile=emulator.ca_file)}))
        async with client.aio.live.connect(model="gemini-live", config=...) as session: ...

What it does, like the real service: the first frame must be ``setup`` (answered with
``setupComplete``); the API key is checked after it (a bad or missing key closes with 1008, which
the SDK raises as ``errors.APIError``); caller audio (``realtimeInput.audio``, 16 kHz PCM16 in
URL-safe base64) is cut into turns by server VAD — or by ``activityStart``/``activityEnd`` when
automatic activity detection is disabled — and each turn is answered with 24 kHz audio in
``serverContent.modelTurn``, transcriptions, ``generationComplete`` and ``turnComplete`` with
``usageMetadata``, or with a ``toolCall``. Caller speech during a reply interrupts it
(``interrupted``; ``toolCallCancellation`` for a pending call). With ``sessionResumption`` in the
setup it sends ``sessionResumptionUpdate`` handles; a new connection presenting one continues the
conversation: turn count, pending tool calls and a reply cut off mid-way. A malformed frame
closes the connection with 1007. The connection itself is
:class:`sipbot.emulators.gemini_session.GeminiConnection`.
"""

from __future__ import annotations

import re
from typing import IO, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from sipbot.emulators.common import EmulatedSession, EmulatorServer, ResumptionHandles
from sipbot.emulators.gemini_session import GeminiConnection
from sipbot.emulators.script import EmulatorScript
from sipbot.emulators.tls import LocalCertificate

PATH_RE = re.compile(
    r"/ws/google\.ai\.generativelanguage\.(v1alpha|v1beta)\.GenerativeService\."
    r"(BidiGenerateContent|BidiGenerateContentConstrained)"
)


class GeminiEmulator(EmulatorServer):
    """Gemini Live over ``wss://`` with a run-time certificate for 127.0.0.1.

    Attributes:
        base_url: ``https://HOST:PORT`` for ``HttpOptions(base_url=..., api_version="v1beta")``.
        ca_file: PEM to trust (valid once started, deleted by :meth:`stop`).
        resumable: resumption handles → the conversations they resume.
    """

    scheme = "https"

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
        self._certificate: LocalCertificate | None = None
        self.resumable = ResumptionHandles()

    @property
    def base_url(self) -> str:
        """``https://HOST:PORT`` (no trailing slash, as the SDK wants)."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """The CA certificate (PEM) clients must trust."""
        if self._certificate is None:
            raise RuntimeError("the emulator is not started")
        return self._certificate.ca_file

    def _ssl_context(self) -> Any:
        self._certificate = LocalCertificate()
        return self._certificate.server_context()

    async def stop(self) -> None:
        """Stop serving and delete the certificate files."""
        await super().stop()
        if self._certificate is not None:
            self._certificate.cleanup()

    def _check_request(self, request: Request) -> tuple[int, dict[str, Any]] | None:
        if PATH_RE.fullmatch(urlsplit(request.path).path) is None:
            message = f"The requested URL {urlsplit(request.path).path} was not found."
            return 404, {"error": {"code": 404, "message": message, "status": "NOT_FOUND"}}
        return None

    async def _serve_connection(
        self, connection: ServerConnection, session: EmulatedSession
    ) -> None:
        await GeminiConnection(connection, session, self.resumable).run()
