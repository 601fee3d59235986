"""openai_wire: golden client events (also validated by the SDK's models) and server events."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from openai.types.realtime import (
    ConversationItemCreateEvent,
    ConversationItemTruncateEvent,
    InputAudioBufferAppendEvent,
    SessionUpdateEvent,
)

from sipbot.domain import (
    PCM16_16K,
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioOut,
    Interrupted,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    ToolSpec,
    Transcript,
    TurnComplete,
    TurnDetection,
)
from sipbot.providers.openai_wire import (
    OpenAIConversation,
    append_audio,
    audio_format_for,
    history_items,
    session_update,
    unknown_options,
    wire_format,
)

TOOL = ToolSpec(
    "lookup_order",
    "Find an order by number.",
    {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
)


def delta(item_id: str, audio: bytes) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "event_id": "ev",
        "response_id": "resp_1",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }


def done(status: str = "completed") -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": "resp_1", "status": status}}


CREATED = {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}
SPEECH = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u1"}


def test_audio_formats() -> None:
    assert audio_format_for("PCMU") == PCMU_8K
    assert audio_format_for("pcma") == PCMA_8K
    assert audio_format_for("G722") == PCM16_24K
    assert wire_format(PCMU_8K) == {"type": "audio/pcmu"}
    assert wire_format(PCMA_8K) == {"type": "audio/pcma"}
    assert wire_format(PCM16_24K) == {"type": "audio/pcm", "rate": 24000}
    with pytest.raises(ValueError, match="OpenAI Realtime has no audio format"):
        wire_format(PCM16_16K)


def test_session_update_full() -> None:
    config = SessionConfig(
        instructions="Be brief.",
        voice="marin",
        language="en-US",
        temperature=0.8,
        tools=(TOOL,),
        turn_detection=TurnDetection(threshold=0.6, silence_ms=400, prefix_ms=200, barge_in=False),
    )
    event = session_update(config, PCMU_8K)
    assert event == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "Be brief.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.6,
                        "prefix_padding_ms": 200,
                        "silence_duration_ms": 400,
                        "create_response": True,
                        "interrupt_response": False,
                    },
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
            "tools": [
                {
                    "type": "function",
                    "name": "lookup_order",
                    "description": "Find an order by number.",
                    "parameters": dict(TOOL.parameters),
                }
            ],
            "tool_choice": "auto",
        },
    }
    SessionUpdateEvent.model_validate(event)


def test_session_update_minimal_with_options() -> None:
    config = SessionConfig(
        options={
            "vad": "semantic_vad",
            "eagerness": "low",
            "transcription_model": "gpt-live-transcribe",
            "noise_reduction": "near_field",
            "session": {"audio": {"output": {"speed": 1.1}}, "max_output_tokens": 500},
        }
    )
    event = session_update(config, PCM16_24K)
    assert event == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "gpt-live-transcribe"},
                    "turn_detection": {
                        "type": "semantic_vad",
                        "eagerness": "low",
                        "create_response": True,
                        "interrupt_response": True,
                    },
                    "noise_reduction": {"type": "near_field"},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "speed": 1.1},
            },
            "max_output_tokens": 500,
        },
    }
    SessionUpdateEvent.model_validate(event)
    assert unknown_options({"vad": 1, "temperature": 2, "b": 3}) == ["b", "temperature"]


def test_append_audio_is_valid_json() -> None:
    raw = append_audio(b"\x00\xff\x10")
    assert json.loads(raw) == {"type": "input_audio_buffer.append", "audio": "AP8Q"}
    InputAudioBufferAppendEvent.model_validate_json(raw)


def test_history_items() -> None:
    items = history_items((Transcript("caller", "hi"), Transcript("agent", "hello")))
    assert items == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            },
        },
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hello"}],
            },
        },
    ]
    for item in items:
        ConversationItemCreateEvent.model_validate(item)


def test_a_response_with_audio_and_transcripts() -> None:
    conv = OpenAIConversation(PCM16_24K)
    events = []
    for event in (
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u1"},
        {"type": "conversation.item.input_audio_transcription.delta", "delta": "What"},
        {"type": "conversation.item.input_audio_transcription.completed", "transcript": "What?"},
        CREATED,
        delta("it_1", b"\x01\x00" * 480),
        {"type": "response.output_audio_transcript.delta", "delta": "Noon"},
        {"type": "response.output_audio_transcript.done", "transcript": "Noon. "},
        done(),
    ):
        events += conv.receive(event, now=0.0)
    assert events == [
        Transcript("caller", "What", final=False),
        Transcript("caller", "What?"),
        AudioOut(b"\x01\x00" * 480, "it_1"),
        Transcript("agent", "Noon", final=False),
        Transcript("agent", "Noon."),
        TurnComplete("it_1"),
    ]
    assert conv.data_to_send() == []


def test_one_response_create_at_a_time() -> None:
    conv = OpenAIConversation(PCM16_24K)
    conv.caller_text("DTMF 5")
    conv.request_response()  # already requested: deferred
    assert conv.data_to_send() == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "DTMF 5"}],
            },
        },
        {"type": "response.create"},
    ]
    conv.receive(CREATED, now=0.0)
    assert conv.data_to_send() == []
    conv.receive(done(), now=0.0)
    assert conv.data_to_send() == [{"type": "response.create"}]


def test_active_response_error_retries_after_done() -> None:
    conv = OpenAIConversation(PCM16_24K)
    conv.receive(CREATED, now=0.0)  # server VAD made a response
    conv.receive(done(), now=0.0)
    conv.request_response()
    assert conv.data_to_send() == [{"type": "response.create"}]
    conv.receive(CREATED, now=0.0)  # a VAD response won the race, ours is refused
    error = {"code": "conversation_already_has_active_response", "message": "busy"}
    assert conv.receive({"type": "error", "error": error}, now=0.0) == [
        ProviderNotice("openai: error conversation_already_has_active_response: busy")
    ]
    conv.receive(done(), now=0.0)
    assert conv.data_to_send() == [{"type": "response.create"}]


def test_tool_results_go_back_together() -> None:
    conv = OpenAIConversation(PCM16_24K)
    conv.receive(CREATED, now=0.0)
    call_a = {"type": "response.function_call_arguments.done", "call_id": "c_a", "name": "f"}
    events = conv.receive({**call_a, "arguments": '{"x": 1}'}, now=0.0)
    assert events == [ToolCall("c_a", "f", {"x": 1})]
    call_b = {**call_a, "call_id": "c_b", "arguments": "not json"}
    assert conv.receive(call_b, now=0.0) == [
        ProviderNotice("openai: tool call f has bad arguments: 'not json'"),
        ToolCall("c_b", "f", {}),
    ]
    assert conv.receive(done(), now=0.0) == [TurnComplete(None)]
    assert conv.tool_result("c_a", {"ok": True})
    assert conv.data_to_send() == [
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c_a", "output": '{"ok": true}'},
        }
    ]
    assert not conv.tool_result("c_zz", 1)
    assert conv.tool_result("c_b", "done")
    sent = conv.data_to_send()
    assert sent == [
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c_b", "output": "done"},
        },
        {"type": "response.create"},
    ]
    ConversationItemCreateEvent.model_validate(sent[0])


def test_a_result_before_the_response_is_done_waits_for_the_other_calls() -> None:
    """Rule 2: a fast tool answered while its response still called tools (seen in the e2e)."""
    conv = OpenAIConversation(PCM16_24K)
    conv.receive(CREATED, now=0.0)
    call_a = {"type": "response.function_call_arguments.done", "call_id": "c_a", "name": "f"}
    conv.receive({**call_a, "arguments": "{}"}, now=0.0)
    assert conv.tool_result("c_a", "quick")  # before the response called its second tool
    conv.receive({**call_a, "call_id": "c_b", "arguments": "{}"}, now=0.0)
    conv.receive(done(), now=0.0)
    sent = conv.data_to_send()
    assert {"type": "response.create"} not in sent  # c_b's result is still missing
    assert conv.tool_result("c_b", "slow")
    assert conv.data_to_send()[-1] == {"type": "response.create"}


def test_barge_in_while_audio_arrives_and_truncate_is_clamped() -> None:
    conv = OpenAIConversation(PCM16_24K)
    conv.receive(CREATED, now=0.0)
    conv.receive(delta("it_1", b"\x00" * 48 * 300), now=0.0)  # 300 ms
    assert conv.receive(SPEECH, now=0.1) == [Interrupted("it_1")]
    assert conv.receive(SPEECH, now=0.2) == []  # reported once
    assert conv.receive(delta("it_1", b"\x00" * 48 * 100), now=0.2) == []  # in flight: dropped
    assert conv.receive(done("cancelled"), now=0.2) == [TurnComplete(None)]
    conv.truncate("it_1", 120)
    conv.truncate("it_1", 400)  # all 400 ms received were heard: nothing to cut
    conv.truncate("unknown", 10)
    sent = conv.data_to_send()
    assert sent == [
        {
            "type": "conversation.item.truncate",
            "item_id": "it_1",
            "content_index": 0,
            "audio_end_ms": 120,
        }
    ]
    ConversationItemTruncateEvent.model_validate(sent[0])


def test_barge_in_after_done_only_while_audio_may_still_play() -> None:
    conv = OpenAIConversation(PCMU_8K)
    conv.receive(CREATED, now=10.0)
    conv.receive(delta("it_1", b"\xff" * 8 * 1000), now=10.0)  # 1 s of G.711 at once
    conv.receive(done(), now=10.05)
    assert conv.receive(SPEECH, now=11.4) == [Interrupted("it_1")]  # 10 + 1 s + 0.5 s margin
    conv.receive(CREATED, now=20.0)
    conv.receive(delta("it_2", b"\xff" * 8 * 1000), now=20.0)
    conv.receive(done(), now=20.05)
    assert conv.receive(SPEECH, now=21.6) == []  # played out


def test_no_barge_in_when_disabled() -> None:
    conv = OpenAIConversation(PCM16_24K, barge_in=False)
    conv.receive(CREATED, now=0.0)
    conv.receive(delta("it_1", b"\x00" * 4800), now=0.0)
    assert conv.receive(SPEECH, now=0.0) == []


def test_session_expired_and_connection_lost() -> None:
    conv = OpenAIConversation(PCM16_24K)
    conv.receive({"type": "session.updated", "session": {}}, now=0.0)
    assert conv.session_updated
    conv.receive(CREATED, now=0.0)
    conv.receive(delta("it_1", b"\x00" * 480), now=0.0)
    expired = {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": "session_expired"},
    }
    assert conv.receive(expired, now=0.0) == [ProviderNotice("openai: error session_expired: ")]
    assert conv.expired
    assert conv.error == ("session_expired", "")
    assert conv.connection_lost() == [TurnComplete("it_1")]
    assert not conv.expired
    assert not conv.session_updated
    conv.truncate("it_1", 1)  # the old session's items are gone
    assert conv.data_to_send() == []
    conv.request_response()
    assert conv.data_to_send() == [{"type": "response.create"}]


def test_failed_response_and_unknown_events() -> None:
    conv = OpenAIConversation(PCM16_24K)
    failed = {
        "type": "response.done",
        "response": {"status": "failed", "status_details": {"type": "failed"}},
    }
    assert conv.receive(failed, now=0.0) == [
        ProviderNotice('openai: response failed: {"type": "failed"}'),
        TurnComplete(None),
    ]
    assert conv.receive({"type": "rate_limits.updated"}, now=0.0) == []
    assert conv.receive({"no": "type"}, now=0.0) == []


def test_barge_in_while_streaming_truncates_even_when_all_received_was_heard() -> None:
    # Real-time streaming: at the barge-in the caller had heard all 300 ms received so far, but
    # the server's item holds what it was still making: it must be cut at 300 ms.
    conv = OpenAIConversation(PCM16_24K)
    conv.receive(CREATED, now=0.0)
    conv.receive(delta("it_1", b"\x00" * 48 * 300), now=0.0)
    assert conv.receive(SPEECH, now=0.3) == [Interrupted("it_1")]
    conv.truncate("it_1", 300)
    conv.truncate("it_1", 300)  # reported once
    assert conv.data_to_send() == [
        {
            "type": "conversation.item.truncate",
            "item_id": "it_1",
            "content_index": 0,
            "audio_end_ms": 300,
        }
    ]
