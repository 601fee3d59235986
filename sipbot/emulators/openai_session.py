"""One OpenAI Realtime connection of the emulator: client events in, server events out.

Rules:

* Rule 1: every server event gets a fresh ``event_id``; client mistakes are answered with an
  ``error`` event naming the client's ``event_id`` and the session stays open.
* Rule 2: one response at a time (``response.create`` during one is an error); a caller turn
  that ends while a response is running is answered when it finishes.
* Rule 3: caller speech during a response cancels it when the turn detection's
  ``interrupt_response`` (default true) and the script's ``interrupt_on_speech`` allow it;
  a response that has finished is never cancelled — the client truncates what it did not play.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sipbot.emulators import openai_wire as wire
from sipbot.emulators.audio import SpeechStarted, SpeechStopped, TurnDetector, Utterance, decode
from sipbot.emulators.common import (
    CallTurns,
    Conversation,
    EmulatedSession,
    PendingCall,
    b64decode_any,
)
from sipbot.emulators.openai_response import Plan, ResponseRun, plan_reply
from sipbot.emulators.script import EmulatorScript

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]
VAD_BUFFER_S = 60  # input audio kept for a manual commit while server VAD is on


class OpenAIConnection:
    """Serves one realtime session on ``ws`` and records it in ``session``."""

    def __init__(
        self,
        ws: ServerConnection,
        session: EmulatedSession,
        model: str,
        call_turns: CallTurns | None = None,
    ) -> None:
        self.ws = ws
        self.session = session
        self.config = wire.default_session(model, session.script)
        self.conversation = Conversation()
        self.call_turns = call_turns if call_turns is not None else CallTurns()
        self.items: dict[str, dict[str, Any]] = {}  # the conversation's items, in order
        self.audio_ms_sent: dict[str, int] = {}  # assistant item id → audio ms sent
        self.known_calls: set[str] = set()
        self.buffer = bytearray()  # PCM16 since the last commit
        self.detector: TurnDetector | None = None
        self._detector_key: tuple[Any, ...] | None = None
        self.detector_offset_ms = 0
        self.input_ms = 0
        self.speech_item: str | None = None
        self.active: ResponseRun | None = None
        self.unanswered_turn: int | None = None
        self.replies_here = 0
        self.handlers: dict[str, Handler] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "output_audio_buffer.clear": self._on_output_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }

    @property
    def script(self) -> EmulatorScript:
        return self.session.script

    async def run(self) -> None:
        try:
            self._configure_detector()
            await self.emit("session.created", session=self.config)
            async for raw in self.ws:
                await self._on_message(raw)
        except ConnectionClosed:
            pass
        finally:
            if self.active is not None:
                self.active.task.cancel()

    async def emit(self, kind: str, **fields: Any) -> None:
        """Send one server event (with a fresh ``event_id``)."""
        event = {"type": kind, "event_id": wire.new_id("event"), **fields}
        self.session.record_out(event)
        await self.ws.send(json.dumps(event, separators=(",", ":")))

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
            self.session.record_in({"invalid_frame": text[:2000]})
            await self._error(wire.EventError("invalid_json", "Invalid JSON in the event."), None)
            return
        if not isinstance(event, dict):
            self.session.record_in({"invalid_frame": str(raw)[:2000]})
            await self._error(wire.EventError("invalid_type", "An event must be an object."), None)
            return
        self.session.record_in(event)
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            kind = wire.require(event, "type")
            handler = self.handlers.get(kind)
            if handler is None:
                raise wire.invalid("type", kind, wire.CLIENT_EVENTS)
            await handler(event)
        except wire.EventError as error:
            await self._error(error, event_id)

    async def _error(self, error: wire.EventError, event_id: str | None) -> None:
        await self.emit("error", error=wire.error_body(error, event_id))

    # ------------------------------------------------------------------ session

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        self.config = wire.merge_session(self.config, event.get("session"))
        self._configure_detector()
        call = self._call_key()
        if call is not None:  # the same call reconnecting continues its count (script Rule 5)
            turns = max(self.conversation.turns, self.call_turns.get(call))
            self.conversation.turns = turns
        await self.emit("session.updated", session=self.config)

    def _configure_detector(self) -> None:
        detection = self.config["audio"]["input"]["turn_detection"]
        fmt = wire.input_format(self.config)
        if detection is None:
            self.detector, self._detector_key = None, None
            return
        silence = detection.get("silence_duration_ms") or self.script.vad_silence_ms
        prefix = detection.get("prefix_padding_ms")
        key = (fmt, silence, prefix, self.script.vad_threshold_dbfs)
        if key == self._detector_key:
            return
        self._detector_key = key
        self.detector_offset_ms = self.input_ms
        self.detector = TurnDetector(
            fmt.rate_hz,
            threshold_dbfs=self.script.vad_threshold_dbfs,
            silence_ms=int(silence),
            prefix_ms=int(prefix) if prefix is not None else 300,
        )

    # ------------------------------------------------------------------ input audio

    async def _on_append(self, event: dict[str, Any]) -> None:
        audio = wire.require(event, "audio")
        try:
            data = b64decode_any(audio) if isinstance(audio, str) else None
        except ValueError:
            data = None
        if data is None:
            raise wire.EventError(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio.", "audio"
            )
        fmt = wire.input_format(self.config)
        pcm = decode(data, fmt)
        self.session.add_audio_in(data)
        self.buffer += pcm
        self.input_ms += len(pcm) * 1000 // (2 * fmt.rate_hz)
        if self.detector is None:
            return
        # With server VAD the buffer only serves a manual commit: keep its last minute.
        excess = len(self.buffer) - 2 * fmt.rate_hz * VAD_BUFFER_S
        if excess > 0:
            del self.buffer[:excess]
        for turn_event in self.detector.feed(pcm):
            if isinstance(turn_event, SpeechStarted):
                await self._speech_started(turn_event)
            else:
                await self._speech_stopped(turn_event)

    async def _speech_started(self, event: SpeechStarted) -> None:
        self.speech_item = wire.new_id("item")
        start_ms = self.detector_offset_ms + event.audio_start_ms
        await self.emit(
            "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self.speech_item
        )
        detection = self.config["audio"]["input"]["turn_detection"] or {}
        if self.script.interrupt_on_speech and detection.get("interrupt_response", True):
            await self._cancel_active("turn_detected")

    async def _speech_stopped(self, event: SpeechStopped) -> None:
        item_id = self.speech_item or wire.new_id("item")
        self.speech_item = None
        end_ms = self.detector_offset_ms + event.audio_end_ms
        await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        self.buffer.clear()
        turn = await self._commit(event.utterance, item_id)
        detection = self.config["audio"]["input"]["turn_detection"] or {}
        if detection.get("create_response", True):
            self.unanswered_turn = turn
            if self.active is None:
                await self._start_response(self._next_plan())

    async def _on_commit(self, event: dict[str, Any]) -> None:
        fmt = wire.input_format(self.config)
        buffered_ms = len(self.buffer) * 1000 / (2 * fmt.rate_hz)
        if buffered_ms < wire.MIN_COMMIT_MS:
            raise wire.EventError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{wire.MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms "
                "of audio.",
            )
        utterance = Utterance(bytes(self.buffer), fmt.rate_hz)
        self.buffer.clear()
        self.unanswered_turn = await self._commit(utterance, wire.new_id("item"))

    async def _on_clear(self, event: dict[str, Any]) -> None:
        self.buffer.clear()
        await self.emit("input_audio_buffer.cleared")

    async def _on_output_clear(self, event: dict[str, Any]) -> None:
        raise wire.EventError(
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            "type",
        )

    async def _commit(self, utterance: Utterance, item_id: str) -> int:
        """Turn the buffered caller audio into a user item; return the caller turn number."""
        previous = self.last_item_id()
        await self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = wire.user_audio_item(item_id)
        self.items[item_id] = item
        await self.emit("conversation.item.added", item=item, previous_item_id=previous)
        await self.emit("conversation.item.done", item=item, previous_item_id=previous)
        conversation = self.conversation
        conversation.turns += 1
        conversation.last_utterance = utterance
        call = self._call_key()
        if call is not None:
            self.call_turns.set(call, conversation.turns)
        text = self.script.caller_text.format(turn=conversation.turns)
        conversation.history.append({"role": "caller", "text": text})
        if self.config["audio"]["input"].get("transcription") is not None:
            common = {"item_id": item_id, "content_index": 0}
            await self.emit(
                "conversation.item.input_audio_transcription.delta", delta=text, **common
            )
            seconds = utterance.duration_ms / 1000.0
            await self.emit(
                "conversation.item.input_audio_transcription.completed",
                transcript=text,
                usage={"type": "duration", "seconds": seconds},
                **common,
            )
        return conversation.turns

    def _call_key(self) -> str | None:
        """The call this session belongs to, when the script counts turns per call."""
        instructions = self.config.get("instructions")
        if not self.script.turns_per_call or not isinstance(instructions, str):
            return None
        return instructions

    def last_item_id(self) -> str | None:
        """The id of the newest conversation item, if any."""
        return next(reversed(self.items), None)

    # ------------------------------------------------------------------ items

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = wire.require(event, "item")
        if not isinstance(item, dict):
            raise wire.EventError(
                "invalid_type", "Invalid type for 'item': expected an object.", "item"
            )
        kind = wire.require(item, "type", "item.")
        if kind == "function_call_output":
            self._take_tool_output(item)
        elif kind == "function_call":
            self.known_calls.add(wire.require(item, "call_id", "item."))
            wire.require(item, "name", "item.")
        elif kind == "message":
            role = wire.require(item, "role", "item.")
            if role not in ("user", "assistant", "system"):
                raise wire.invalid("item.role", role, ("user", "assistant", "system"))
            content = wire.require(item, "content", "item.")
            if not isinstance(content, list):
                raise wire.EventError(
                    "invalid_type",
                    "Invalid type for 'item.content': expected an array.",
                    "item.content",
                )
            texts = [c.get("text", "") for c in content if isinstance(c, dict) and c.get("text")]
            if texts:
                self.conversation.history.append(
                    {"role": "caller" if role == "user" else role, "text": " ".join(texts)}
                )
        else:
            raise wire.invalid(
                "item.type", kind, ("message", "function_call", "function_call_output")
            )
        stored = {**item, "object": "realtime.item"}
        stored.setdefault("id", wire.new_id("item"))
        stored.setdefault("status", "completed")
        previous = event.get("previous_item_id") or self.last_item_id()
        self.items[stored["id"]] = stored
        await self.emit("conversation.item.added", item=stored, previous_item_id=previous)
        await self.emit("conversation.item.done", item=stored, previous_item_id=previous)

    def _take_tool_output(self, item: dict[str, Any]) -> None:
        call_id = wire.require(item, "call_id", "item.")
        output = wire.require(item, "output", "item.")
        if call_id not in self.known_calls:
            raise wire.EventError(
                "invalid_value",
                f"Tool call ID '{call_id}' not found in conversation.",
                "item.call_id",
            )
        if call_id in self.conversation.pending_calls:
            try:
                result: Any = json.loads(output)
            except (TypeError, ValueError):
                result = output
            self.conversation.tool_results[call_id] = result
            self.conversation.history.append({"role": "tool", "text": str(output)})

    def _item(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        item_id = wire.require(event, "item_id")
        item = self.items.get(item_id)
        if item is None:
            raise wire.EventError(
                "invalid_value", f"Item with item_id '{item_id}' not found.", "item_id"
            )
        return item_id, item

    async def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        _, item = self._item(event)
        await self.emit("conversation.item.retrieved", item=item)

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id, _ = self._item(event)
        del self.items[item_id]
        await self.emit("conversation.item.deleted", item_id=item_id)

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        item_id, item = self._item(event)
        content_index = wire.require(event, "content_index")
        audio_end_ms = wire.require(event, "audio_end_ms")
        if item.get("role") != "assistant" or item_id not in self.audio_ms_sent:
            raise wire.EventError(
                "invalid_value", "Only assistant messages with audio can be truncated.", "item_id"
            )
        if content_index != 0:
            raise wire.invalid("content_index", content_index)
        if not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise wire.invalid("audio_end_ms", audio_end_ms)
        sent_ms = self.audio_ms_sent[item_id]
        if audio_end_ms > sent_ms:
            raise wire.EventError(
                "invalid_value",
                f"Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
            )
        for part in item.get("content", []):
            part["transcript"] = None  # the server forgets text the caller never heard
        await self.emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )

    # ------------------------------------------------------------------ responses

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        if self.active is not None:
            raise wire.EventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = event.get("response") or {}
        modalities = params.get("output_modalities") if isinstance(params, dict) else None
        await self._start_response(self._next_plan(), modalities=modalities)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted and wanted != self.active.id):
            raise wire.EventError(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        await self._cancel_active("client_cancelled")

    def _next_plan(self) -> Plan:
        """What the next response says: tool follow-up, a caller turn, or a greeting."""
        conversation, script = self.conversation, self.script
        answered = [
            c for c in conversation.pending_calls.values() if c.call_id in conversation.tool_results
        ]
        if answered:
            results = [conversation.tool_results.pop(c.call_id) for c in answered]
            for call in answered:
                del conversation.pending_calls[call.call_id]
            return plan_reply(self, answered[0].turn, counts=True, results=results)
        if self.unanswered_turn is not None:
            turn, self.unanswered_turn = self.unanswered_turn, None
            rules = script.tool_calls_for(turn)
            if rules:
                return [PendingCall(wire.new_id("call"), r.name, r.arguments, turn) for r in rules]
            return plan_reply(self, turn, counts=True)
        if script.greet:
            return plan_reply(self, conversation.turns, counts=False)
        return None

    async def _start_response(self, plan: Plan, modalities: list[str] | None = None) -> None:
        run = ResponseRun(self, plan, modalities)
        self.active = run
        run.task = asyncio.create_task(self._drive(run))

    async def _drive(self, run: ResponseRun) -> None:
        try:
            await run.stream()
        except ConnectionClosed:
            return
        self.active = None
        if run.counts:
            self.replies_here += 1
            if await self._after_turn(self.replies_here):
                return
        if self.unanswered_turn is not None:
            await self._start_response(self._next_plan())

    async def _cancel_active(self, reason: str) -> None:
        run = self.active
        if run is None:
            return
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task
        self.active = None
        await run.finish_cancelled(reason)

    async def _after_turn(self, count: int) -> bool:
        """Scripted end-of-turn events; True when the connection is going away."""
        script = self.script
        if script.drop_after_turns == count:
            self.ws.transport.abort()
            return True
        if script.expire_after_turns == count:
            await self._error(
                wire.EventError(
                    "session_expired", "Your session hit the maximum duration of 60 minutes."
                ),
                None,
            )
            await self.ws.close(1000, "session expired")
            return True
        if script.error_after_turns == count:
            await self._error(
                wire.EventError(
                    "server_error",
                    "The server had an error while processing your request. Sorry about that!",
                    type="server_error",
                ),
                None,
            )
        return False
