"""One OpenAI Realtime response of the emulator: the event sequence of a reply or function calls.

A response streams, in order: ``response.created``; per output item ``response.output_item.added``
and ``conversation.item.added``; for audio ``response.content_part.added``, paced
``response.output_audio.delta`` with ``response.output_audio_transcript.delta``, then the
``*.done`` events; for a function call ``response.function_call_arguments.delta/done``; finally
``response.done``. A cancelled response closes what it started (item ``incomplete``) and ends
with ``response.done`` ``cancelled`` and the reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sipbot.emulators import openai_wire as wire
from sipbot.emulators.audio import reply_audio
from sipbot.emulators.common import (
    PendingCall,
    Reply,
    b64encode,
    chunk_deadline,
    make_reply,
    sleep_until,
    tool_reply_text,
)

if TYPE_CHECKING:
    from sipbot.emulators.openai_session import OpenAIConnection

Plan = Reply | list[PendingCall] | None


def plan_reply(
    connection: OpenAIConnection, turn: int, *, counts: bool, results: Sequence[Any] | None = None
) -> Reply:
    """The reply to caller turn ``turn`` (after tool ``results`` when given)."""
    script = connection.script
    if results is not None:
        transcript = tool_reply_text(script, turn, results)
    else:
        transcript = script.reply_text.format(turn=turn)
    fmt = wire.output_format(connection.config)
    audio = reply_audio(script, connection.conversation.last_utterance, fmt)
    return make_reply(
        audio,
        transcript,
        turn=turn,
        chunk_ms=script.chunk_ms,
        bytes_per_ms=fmt.bytes_per_ms,
        counts=counts,
    )


DROPPED_WAIT_S = 60.0


class ResponseRun:
    """Streams one response on a connection; :attr:`task` runs :meth:`stream`."""

    task: asyncio.Task[None]

    def __init__(
        self, connection: OpenAIConnection, plan: Plan, modalities: list[str] | None
    ) -> None:
        self.connection = connection
        self.plan = plan
        self.id = wire.new_id("resp")
        self.modalities = modalities or connection.config.get("output_modalities") or ["audio"]
        self.text_only = "audio" not in self.modalities
        self.format = wire.output_format(connection.config)
        self.item: dict[str, Any] | None = None  # the message item being streamed
        self.previous_item_id: str | None = None
        self.transcript_sent = ""
        self.bytes_sent = 0
        self.output: list[dict[str, Any]] = []

    @property
    def counts(self) -> bool:
        """Whether it answers a caller turn (see the script's ``*_after_turns``)."""
        return isinstance(self.plan, Reply) and self.plan.counts

    def _response(self, **fields: Any) -> dict[str, Any]:
        return wire.response_object(
            self.id, self.connection.config, modalities=self.modalities, **fields
        )

    async def stream(self) -> None:
        """Send the whole response."""
        emit = self.connection.emit
        await emit("response.created", response=self._response())
        if isinstance(self.plan, list):
            await self._calls(self.plan)
        elif isinstance(self.plan, Reply):
            await self._message(self.plan)
        await emit(
            "response.done",
            response=self._response(status="completed", output=self.output, usage=self._usage()),
        )

    def _usage(self) -> dict[str, Any]:
        utterance = self.connection.conversation.last_utterance
        input_ms = utterance.duration_ms if utterance is not None else 0
        return wire.usage(input_ms, self.bytes_sent // self.format.bytes_per_ms)

    async def _calls(self, calls: list[PendingCall]) -> None:
        connection, emit = self.connection, self.connection.emit
        for index, call in enumerate(calls):
            connection.known_calls.add(call.call_id)
            connection.conversation.pending_calls[call.call_id] = call
            item_id = wire.new_id("item")
            arguments = json.dumps(dict(call.arguments), separators=(",", ":"))
            item = wire.function_call_item(item_id, call.call_id, call.name, "", "in_progress")
            previous = connection.last_item_id()
            connection.items[item_id] = item
            await emit(
                "response.output_item.added", response_id=self.id, output_index=index, item=item
            )
            await emit("conversation.item.added", item=item, previous_item_id=previous)
            common = {
                "response_id": self.id,
                "item_id": item_id,
                "output_index": index,
                "call_id": call.call_id,
            }
            await emit("response.function_call_arguments.delta", delta=arguments, **common)
            await emit(
                "response.function_call_arguments.done",
                arguments=arguments,
                name=call.name,
                **common,
            )
            done = wire.function_call_item(item_id, call.call_id, call.name, arguments, "completed")
            connection.items[item_id] = done
            self.output.append(done)
            await emit(
                "response.output_item.done", response_id=self.id, output_index=index, item=done
            )
            await emit("conversation.item.done", item=done, previous_item_id=previous)

    def _part(self) -> dict[str, Any]:
        if self.text_only:
            return {"type": "text", "text": self.transcript_sent}
        return {"type": "audio", "transcript": self.transcript_sent}

    async def _message(self, reply: Reply) -> None:
        connection, emit = self.connection, self.connection.emit
        item_id = wire.new_id("item")
        self.previous_item_id = connection.last_item_id()
        self.item = item = wire.assistant_item(item_id, "in_progress", [])
        connection.items[item_id] = item
        if not self.text_only:
            connection.audio_ms_sent[item_id] = 0
        await emit("response.output_item.added", response_id=self.id, output_index=0, item=item)
        await emit("conversation.item.added", item=item, previous_item_id=self.previous_item_id)
        common = {"response_id": self.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await emit("response.content_part.added", part=self._part(), **common)
        if self.text_only:
            self.transcript_sent = reply.transcript
            await emit("response.output_text.delta", delta=reply.transcript, **common)
        else:
            await self._audio(reply, item_id, common)
        connection.conversation.history.append({"role": "agent", "text": reply.transcript})
        await self._close_message("completed")

    async def _audio(self, reply: Reply, item_id: str, common: dict[str, Any]) -> None:
        connection, emit, script = self.connection, self.connection.emit, self.connection.script
        loop = asyncio.get_running_loop()
        start = loop.time() + script.first_audio_delay_ms / 1000.0
        for index, chunk in enumerate(reply.chunks):
            await reply.stall_if_due(script, connection.replies_here, index)
            await sleep_until(chunk_deadline(start, index, reply.chunk_ms, script.speed))
            self.bytes_sent += len(chunk)
            connection.audio_ms_sent[item_id] = self.bytes_sent // self.format.bytes_per_ms
            await emit("response.output_audio.delta", delta=b64encode(chunk), **common)
            reply.position = index + 1
            if index == 0:
                await self._faults(reply.turn)
            if reply.texts[index]:
                self.transcript_sent += reply.texts[index]
                await emit(
                    "response.output_audio_transcript.delta", delta=reply.texts[index], **common
                )

    async def _faults(self, turn: int) -> None:
        """The script's mid-reply faults for caller turn ``turn`` (see ``ReplyFault``)."""
        connection = self.connection
        for fault in connection.script.reply_faults_for(turn):
            if fault.kind == "stall":
                await asyncio.sleep(fault.stall_ms / 1000.0)
            elif fault.kind == "drop":
                connection.ws.transport.abort()
                await asyncio.sleep(DROPPED_WAIT_S)  # the connection's end cancels this task
            elif fault.kind == "malformed":
                await connection.ws.send('{"type": "response.output_audio.delta", "delta": ')
            else:
                padding = "x" * (fault.size_kb * 1024)
                await connection.emit("response.emulator_padding", padding=padding)

    async def _close_message(self, status: str) -> None:
        item = self.item
        assert item is not None
        emit = self.connection.emit
        common = {
            "response_id": self.id,
            "item_id": item["id"],
            "output_index": 0,
            "content_index": 0,
        }
        if self.text_only:
            await emit("response.output_text.done", text=self.transcript_sent, **common)
            content = [{"type": "output_text", "text": self.transcript_sent}]
        else:
            await emit("response.output_audio.done", **common)
            await emit(
                "response.output_audio_transcript.done", transcript=self.transcript_sent, **common
            )
            content = [{"type": "output_audio", "transcript": self.transcript_sent}]
        await emit("response.content_part.done", part=self._part(), **common)
        done = wire.assistant_item(item["id"], status, content)
        self.connection.items[item["id"]] = done
        self.output.append(done)
        await emit("response.output_item.done", response_id=self.id, output_index=0, item=done)
        await emit("conversation.item.done", item=done, previous_item_id=self.previous_item_id)

    async def finish_cancelled(self, reason: str) -> None:
        """After :attr:`task` was cancelled: close the started item and end the response."""
        if self.item is not None and not any(o["id"] == self.item["id"] for o in self.output):
            await self._close_message("incomplete")
        details = {"type": "cancelled", "reason": reason}
        await self.connection.emit(
            "response.done",
            response=self._response(
                status="cancelled", status_details=details, output=self.output, usage=self._usage()
            ),
        )
