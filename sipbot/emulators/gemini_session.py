"""One Gemini Live connection of the emulator: setup, caller turns, replies, tools, resumption.

Rules:

* Rule 1: the first frame must be ``setup``; the API key is checked after it (close 1008), then
  ``setupComplete`` and, with ``sessionResumption``, a ``sessionResumptionUpdate``.
* Rule 2: replies are queued and played one after the other; caller speech (or
  ``activityStart``) during one interrupts it — ``interrupted`` then ``turnComplete`` — unless
  the script or ``activityHandling: NO_INTERRUPTION`` says otherwise, and cancels pending tool
  calls (``toolCallCancellation``).
* Rule 3: a reply cut off by the end of the connection stays in the conversation and continues
  on the connection that resumes it; unanswered tool calls are asked again there.
* Rule 4: a malformed frame (:class:`~sipbot.emulators.gemini_wire.WireError`) closes the
  connection with 1007 and the error's text as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from sipbot.domain import PCM16_24K
from sipbot.emulators import gemini_wire as wire
from sipbot.emulators.audio import (
    SpeechStarted,
    TurnDetector,
    TurnEvent,
    Utterance,
    reply_audio,
)
from sipbot.emulators.common import (
    Conversation,
    EmulatedSession,
    PendingCall,
    Reply,
    ResumptionHandles,
    chunk_deadline,
    close_reason,
    make_reply,
    sleep_until,
    tool_reply_text,
)
from sipbot.emulators.script import EmulatorScript
from sipbot.prompts import convert_rate

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 30.0
CLOSE_INVALID = 1007  # invalid frame payload data: what the service uses for a bad request
CLOSE_POLICY = 1008  # policy violation: credentials, unknown session
CLOSE_INTERNAL = 1011
NO_KEY_REASON = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API credentials."
)
BAD_KEY_REASON = "API key not valid. Please pass a valid API key."
UNKNOWN_HANDLE_REASON = "Requested entity was not found."
GO_AWAY_CLOSE_REASON = "Deadline expired before operation could complete."


def api_key(request: Request) -> str | None:
    """The API key of a handshake: ``x-goog-api-key``, ``?key=`` or an ``Authorization`` token."""
    key = request.headers.get("x-goog-api-key")
    if key:
        return key
    query = parse_qs(urlsplit(request.path).query)
    if query.get("key"):
        return query["key"][0]
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token if scheme in ("Token", "Bearer") and token else None


class GeminiConnection:
    """One BidiGenerateContent connection: reads frames, answers turns, plays replies."""

    def __init__(
        self,
        ws: ServerConnection,
        session: EmulatedSession,
        resumable: ResumptionHandles,
    ) -> None:
        self.resumable = resumable
        self.ws = ws
        self.session = session
        self.options: wire.SetupOptions | None = None
        self.conversation = Conversation()
        self.detector: TurnDetector | None = None
        self.activity: bytearray | None = None  # caller audio of a manual activity
        self.queue: deque[Reply] = deque()
        self.player: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None
        self.replies_here = 0  # caller-turn replies completed on this connection

    @property
    def script(self) -> EmulatorScript:
        return self.session.script

    async def run(self) -> None:
        try:
            if await self._setup():
                async for raw in self.ws:
                    await self._on_frame(raw)
        except ConnectionClosed:
            pass
        except wire.WireError as exc:
            await self.ws.close(CLOSE_INVALID, close_reason(str(exc)))
        finally:
            for task in (self.player, self.closer):
                if task is not None:
                    task.cancel()

    # ------------------------------------------------------------------ setup

    async def _setup(self) -> bool:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout=SETUP_TIMEOUT_S)
        except TimeoutError:
            await self.ws.close(CLOSE_INVALID, "No setup message received.")
            return False
        message = self._parse(raw)
        assert self.ws.request is not None  # a handler runs after the handshake
        key = api_key(self.ws.request)
        if key is None or (self.script.api_keys and key not in self.script.api_keys):
            reason = NO_KEY_REASON if key is None else BAD_KEY_REASON
            await self.ws.close(CLOSE_POLICY, close_reason(reason))
            return False
        if "setup" not in message:
            raise wire.WireError("Invalid request: the first message must be a setup message.")
        self.options = options = wire.parse_setup(message["setup"])
        if options.resume_handle is not None:
            now = asyncio.get_running_loop().time()
            conversation = self.resumable.get(options.resume_handle, now)
            if conversation is None:
                await self.ws.close(CLOSE_POLICY, UNKNOWN_HANDLE_REASON)
                return False
            self.conversation = conversation
        if options.automatic_activity:
            self.detector = TurnDetector(
                wire.INPUT_RATE_HZ,
                threshold_dbfs=self.script.vad_threshold_dbfs,
                silence_ms=options.silence_ms or self.script.vad_silence_ms,
                prefix_ms=options.prefix_ms if options.prefix_ms is not None else 300,
            )
        await self._send({"setupComplete": {}})
        await self._send_resumption_update()
        await self._resume_pending()
        return True

    async def _resume_pending(self) -> None:
        conversation = self.conversation
        if conversation.pending_calls:
            await self._send(wire.tool_call(list(conversation.pending_calls.values())))
        if conversation.pending_reply is not None:
            self._enqueue(conversation.pending_reply)

    async def _send_resumption_update(self) -> None:
        if self.options is None or not self.options.resumption:
            return
        handle = self.resumable.issue(self.conversation, asyncio.get_running_loop().time())
        await self._send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    # ------------------------------------------------------------------ client frames

    def _parse(self, raw: str | bytes) -> dict[str, Any]:
        try:
            message = wire.parse_client_message(raw)
        except wire.WireError:
            text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
            self.session.record_in({"invalidFrame": text[:2000]})
            raise
        self.session.record_in(message)
        return message

    async def _on_frame(self, raw: str | bytes) -> None:
        message = self._parse(raw)
        kind, body = next(iter(message.items()))
        if kind == "setup":
            raise wire.WireError("Invalid request: setup must be sent only once, first.")
        if kind == "realtimeInput":
            await self._on_realtime_input(wire.check_realtime_input(body))
        elif kind == "clientContent":
            body = wire.check_client_content(body)
            if body.get("turnComplete"):
                await self._text_turn(wire.text_of_turns(body.get("turns") or []))
        elif kind == "toolResponse":
            await self._on_tool_response(wire.parse_function_responses(body))

    async def _on_realtime_input(self, body: dict[str, Any]) -> None:
        for pcm, rate in wire.audio_blobs(body):
            self.session.add_audio_in(pcm)
            await self._on_audio(convert_rate(pcm, rate, wire.INPUT_RATE_HZ))
        if "activityStart" in body or "activityEnd" in body:
            await self._on_activity(start="activityStart" in body)
        if body.get("audioStreamEnd") and self.detector is not None:
            for event in self.detector.flush():
                await self._on_turn_event(event)
        if isinstance(body.get("text"), str):
            await self._text_turn(body["text"])

    async def _on_audio(self, pcm: bytes) -> None:
        if self.detector is not None:
            for event in self.detector.feed(pcm):
                await self._on_turn_event(event)
        elif self.activity is not None:
            self.activity += pcm

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, SpeechStarted):
            await self._barge_in()
        else:
            await self._caller_turn(event.utterance)

    async def _on_activity(self, *, start: bool) -> None:
        if self.detector is not None:
            raise wire.WireError(
                "Invalid request: activity_start/activity_end are only allowed when automatic "
                "activity detection is disabled."
            )
        if start:
            self.activity = bytearray()
            await self._barge_in()
        elif self.activity is not None:
            utterance = Utterance(bytes(self.activity), wire.INPUT_RATE_HZ)
            self.activity = None
            await self._caller_turn(utterance)

    async def _on_tool_response(self, responses: list[dict[str, Any]]) -> None:
        conversation = self.conversation
        for response in responses:
            if response["id"] in conversation.pending_calls:
                conversation.tool_results[response["id"]] = response.get("response")
            else:
                log.info("tool response for unknown or cancelled call %s", response["id"])
        pending = conversation.pending_calls
        if not pending or any(id_ not in conversation.tool_results for id_ in pending):
            return
        turn = next(iter(pending.values())).turn
        results = [conversation.tool_results[id_] for id_ in pending]
        for id_, result in zip(pending, results, strict=True):
            conversation.history.append({"role": "tool", "text": json.dumps({id_: result})})
        pending.clear()
        conversation.tool_results.clear()
        transcript = tool_reply_text(self.script, turn, results)
        self._enqueue(self._plan(turn, transcript, counts=True))

    # ------------------------------------------------------------------ turns

    async def _caller_turn(self, utterance: Utterance) -> None:
        conversation = self.conversation
        conversation.turns += 1
        turn = conversation.turns
        conversation.last_utterance = utterance
        caller_text = self.script.caller_text.format(turn=turn)
        conversation.history.append({"role": "caller", "text": caller_text})
        assert self.options is not None
        if self.options.input_transcription:
            await self._send({"serverContent": {"inputTranscription": {"text": caller_text}}})
        rules = self.script.tool_calls_for(turn)
        if rules:
            calls = [
                PendingCall(f"function-call-{uuid.uuid4().int % 10**19}", r.name, r.arguments, turn)
                for r in rules
            ]
            conversation.pending_calls.update((call.call_id, call) for call in calls)
            await self._send(wire.tool_call(calls))
            return
        self._enqueue(self._plan(turn, self.script.reply_text.format(turn=turn), counts=True))

    async def _text_turn(self, text: str) -> None:
        self.conversation.history.append({"role": "caller", "text": text})
        if self.script.greet:
            turn = self.conversation.turns
            self._enqueue(self._plan(turn, self.script.reply_text.format(turn=turn), counts=False))

    def _plan(self, turn: int, transcript: str, *, counts: bool) -> Reply:
        audio = reply_audio(self.script, self.conversation.last_utterance, PCM16_24K)
        return make_reply(
            audio,
            transcript,
            turn=turn,
            chunk_ms=self.script.chunk_ms,
            bytes_per_ms=PCM16_24K.bytes_per_ms,
            counts=counts,
        )

    async def _barge_in(self) -> None:
        assert self.options is not None
        if not (self.script.interrupt_on_speech and self.options.activity_interrupts):
            return
        conversation = self.conversation
        if self.player is not None and not self.player.done():
            self.player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.player
            self.queue.clear()
            conversation.pending_reply = None
            await self._send({"serverContent": {"interrupted": True}})
            await self._send(wire.turn_complete(0, 0))
        if conversation.pending_calls:
            ids = list(conversation.pending_calls)
            conversation.pending_calls.clear()
            conversation.tool_results.clear()
            await self._send({"toolCallCancellation": {"ids": ids}})

    # ------------------------------------------------------------------ replies

    def _enqueue(self, reply: Reply) -> None:
        self.queue.append(reply)
        if self.player is None or self.player.done():
            self.player = asyncio.create_task(self._play_queue())

    async def _play_queue(self) -> None:
        try:
            while self.queue:
                await self._play(self.queue[0])
                self.queue.popleft()
        except ConnectionClosed:
            pass

    async def _play(self, reply: Reply) -> None:
        loop = asyncio.get_running_loop()
        script, options = self.script, self.options
        assert options is not None
        self.conversation.pending_reply = reply
        delay_s = script.first_audio_delay_ms / 1000.0 if reply.position == 0 else 0.0
        start = loop.time() + delay_s
        if options.text_only:
            await sleep_until(start)
            await self._send(wire.text_content(reply.transcript))
            reply.position = len(reply.chunks)
            first_sent_at, audio_ms = None, 0
        else:
            first_sent_at, audio_ms = await self._stream(reply, start)
        await self._send({"serverContent": {"generationComplete": True}})
        self.conversation.pending_reply = None
        self.conversation.history.append({"role": "agent", "text": reply.transcript})
        if script.playback_wait and first_sent_at is not None:
            await sleep_until(first_sent_at + audio_ms / 1000.0)
        utterance = self.conversation.last_utterance
        prompt_ms = utterance.duration_ms if utterance is not None else 0
        await self._send(wire.turn_complete(prompt_ms, audio_ms))
        await self._send_resumption_update()
        if reply.counts:
            self.replies_here += 1
            await self._after_turn(self.replies_here)

    async def _stream(self, reply: Reply, start: float) -> tuple[float | None, int]:
        """Send the reply's remaining audio, paced; return when it began and its length (ms)."""
        loop = asyncio.get_running_loop()
        assert self.options is not None
        first = reply.position
        first_sent_at: float | None = None
        for index in range(first, len(reply.chunks)):
            await reply.stall_if_due(self.script, self.replies_here, index)
            await sleep_until(
                chunk_deadline(start, index - first, reply.chunk_ms, self.script.speed)
            )
            if first_sent_at is None:
                first_sent_at = loop.time()
            await self._send(wire.audio_content(reply.chunks[index]))
            reply.position = index + 1
            if self.options.output_transcription and reply.texts[index]:
                await self._send(wire.output_transcription(reply.texts[index]))
        audio_ms = sum(len(chunk) for chunk in reply.chunks[first:]) // PCM16_24K.bytes_per_ms
        return first_sent_at, audio_ms

    async def _after_turn(self, count: int) -> None:
        script = self.script
        if script.drop_after_turns == count:
            self.ws.transport.abort()
        elif script.error_after_turns == count:
            await self.ws.close(CLOSE_INTERNAL, "Internal error encountered.")
        elif script.go_away_after_turns == count:
            await self._send({"goAway": {"timeLeft": wire.duration(script.go_away_time_left_ms)}})
            self.closer = asyncio.create_task(self._close_after(script.go_away_time_left_ms))

    async def _close_after(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000.0)
        await self.ws.close(CLOSE_INTERNAL, GO_AWAY_CLOSE_REASON)

    async def _send(self, message: dict[str, Any]) -> None:
        self.session.record_out(message)
        await self.ws.send(json.dumps(message, separators=(",", ":")))
