"""gemini_wire: golden setup frames and golden server messages, read through the real SDK.

Server messages are written as they travel on the wire (camelCase JSON) and turned into the
SDK's ``LiveServerMessage`` exactly as ``AsyncSession._receive`` does, so these tests check our
mapping against what the SDK really hands us. The setup is checked twice: the config dict we
build, and the ``setup`` frame the SDK makes of it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from google import genai
from google.genai import _common, types
from google.genai import _live_converters as converters
from google.genai.live import _t_live_connect_config

from sipbot.domain import (
    AudioOut,
    Interrupted,
    ProviderNotice,
    SessionConfig,
    ToolCall,
    ToolCallCancelled,
    ToolSpec,
    Transcript,
    TurnComplete,
    TurnDetection,
)
from sipbot.providers.gemini_wire import (
    INPUT_MIME_TYPE,
    GeminiReceiver,
    connect_config,
    heard_note,
    realtime_audio_message,
    seed_turns,
    tool_response,
    unknown_options,
)

PCM = bytes(range(256)) * 4


def server_message(wire: dict[str, Any]) -> types.LiveServerMessage:
    """Parse a wire frame the way google-genai's AsyncSession._receive does."""
    converted = converters._LiveServerMessage_from_mldev(json.loads(json.dumps(wire)))
    return types.LiveServerMessage._from_response(
        response=converted, kwargs=types.LiveServerMessage().model_dump()
    )


def audio_frame(pcm: bytes) -> dict[str, Any]:
    data = base64.urlsafe_b64encode(pcm).decode()
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
    return {"serverContent": {"modelTurn": {"parts": [part]}}}


def setup_frame(built: dict[str, Any]) -> dict[str, Any]:
    """The first client frame google-genai sends for ``built`` (as in AsyncLive.connect)."""
    client = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url="https://127.0.0.1:1", api_version="v1beta"),
    )
    api = client.aio._api_client

    async def convert() -> dict[str, Any]:
        model = await _t_live_connect_config(api, built)
        params = types.LiveConnectParameters(model="models/m", config=model)
        frame = _common.convert_to_dict(
            converters._LiveConnectParameters_to_mldev(
                api_client=api, from_object=params.model_dump(exclude_none=True)
            )
        )
        del frame["config"]
        return frame  # type: ignore[no-any-return]

    return asyncio.run(convert())


TOOL = ToolSpec(
    "lookup_order",
    "Find an order by number.",
    {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
)


def test_connect_config_full() -> None:
    config = SessionConfig(
        instructions="You are Acme's receptionist.",
        voice="Puck",
        language="en-US",
        temperature=0.6,
        tools=(TOOL,),
        turn_detection=TurnDetection(threshold=0.7, silence_ms=400, prefix_ms=200, barge_in=True),
    )
    assert connect_config(config, resumption_handle="h-1") == {
        "response_modalities": ["AUDIO"],
        "system_instruction": "You are Acme's receptionist.",
        "speech_config": {
            "voice_config": {"prebuilt_voice_config": {"voice_name": "Puck"}},
            "language_code": "en-US",
        },
        "temperature": 0.6,
        "tools": [
            {
                "function_declarations": [
                    {
                        "name": "lookup_order",
                        "description": "Find an order by number.",
                        "parameters_json_schema": dict(TOOL.parameters),
                    }
                ]
            }
        ],
        "session_resumption": {"handle": "h-1"},
        "context_window_compression": {"sliding_window": {}},
        "input_audio_transcription": {},
        "output_audio_transcription": {},
        "realtime_input_config": {
            "automatic_activity_detection": {
                "disabled": False,
                "prefix_padding_ms": 200,
                "silence_duration_ms": 400,
                "start_of_speech_sensitivity": "START_SENSITIVITY_LOW",
            },
            "activity_handling": "START_OF_ACTIVITY_INTERRUPTS",
        },
    }


def test_connect_config_minimal_and_no_barge_in() -> None:
    config = SessionConfig(turn_detection=TurnDetection(threshold=0.3, barge_in=False))
    assert connect_config(config, resumption_handle=None) == {
        "response_modalities": ["AUDIO"],
        "session_resumption": {},
        "context_window_compression": {"sliding_window": {}},
        "input_audio_transcription": {},
        "output_audio_transcription": {},
        "realtime_input_config": {
            "automatic_activity_detection": {
                "disabled": False,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "start_of_speech_sensitivity": "START_SENSITIVITY_HIGH",
            },
            "activity_handling": "NO_INTERRUPTION",
        },
    }


def test_options_merge_recursively_and_disable_compression() -> None:
    config = SessionConfig(
        voice="Kore",
        options={
            "context_window_compression": False,
            "config": {
                "speech_config": {"language_code": "de-DE"},
                "realtime_input_config": {"automatic_activity_detection": {"disabled": True}},
                "thinking_config": {"thinking_budget": 0},
            },
        },
    )
    built = connect_config(config, resumption_handle=None)
    assert "context_window_compression" not in built
    assert built["speech_config"] == {
        "voice_config": {"prebuilt_voice_config": {"voice_name": "Kore"}},
        "language_code": "de-DE",
    }
    assert built["realtime_input_config"]["automatic_activity_detection"]["disabled"] is True
    assert built["thinking_config"] == {"thinking_budget": 0}
    assert unknown_options({"config": {}, "voice_speed": 2}) == ["voice_speed"]


def test_sdk_turns_our_config_into_the_expected_setup_frame() -> None:
    config = SessionConfig(instructions="Be brief.", voice="Puck", tools=(TOOL,))
    frame = setup_frame(connect_config(config, resumption_handle="h-9"))
    setup = frame["setup"]
    assert setup["model"] == "models/m"
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}], "role": "user"}
    assert setup["sessionResumption"] == {"handle": "h-9"}
    assert setup["tools"][0]["functionDeclarations"][0]["parameters_json_schema"] == dict(
        TOOL.parameters
    )
    assert setup["inputAudioTranscription"] == {}
    assert setup["outputAudioTranscription"] == {}
    assert setup["realtimeInputConfig"]["activity_handling"] == "START_OF_ACTIVITY_INTERRUPTS"


def test_seed_turns_and_tool_response() -> None:
    history = (Transcript("caller", "hi"), Transcript("agent", "hello, how can I help?"))
    assert seed_turns(history, None) == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello, how can I help?"}]},
    ]
    assert seed_turns((), "Welcome to Acme.") == [
        {
            "role": "user",
            "parts": [
                {
                    "text": "The phone call has just been answered. Greet the caller by "
                    'saying: "Welcome to Acme."'
                }
            ],
        }
    ]
    assert tool_response("c1", "f", {"ok": True}) == {
        "id": "c1",
        "name": "f",
        "response": {"ok": True},
    }
    assert tool_response("c2", "f", [1, 2]) == {
        "id": "c2",
        "name": "f",
        "response": {"output": [1, 2]},
    }


def test_a_turn_with_audio_and_transcripts() -> None:
    receiver = GeminiReceiver()
    frames = [
        {"serverContent": {"inputTranscription": {"text": "What time"}}},
        {"serverContent": {"inputTranscription": {"text": " is it?"}}},
        audio_frame(PCM[:512]),
        {"serverContent": {"outputTranscription": {"text": "It is"}}},
        audio_frame(PCM[512:]),
        {"serverContent": {"outputTranscription": {"text": " noon."}}},
        {"serverContent": {"generationComplete": True}},
        {"serverContent": {"turnComplete": True}, "usageMetadata": {"totalTokenCount": 9}},
    ]
    events = [event for frame in frames for event in receiver.receive(server_message(frame))]
    assert events == [
        Transcript("caller", "What time", final=False),
        Transcript("caller", " is it?", final=False),
        Transcript("caller", "What time is it?"),
        AudioOut(PCM[:512], "gemini-turn-1"),
        Transcript("agent", "It is", final=False),
        AudioOut(PCM[512:], "gemini-turn-1"),
        Transcript("agent", " noon.", final=False),
        Transcript("agent", "It is noon."),
        TurnComplete("gemini-turn-1"),
    ]
    assert not receiver.in_turn
    assert receiver.receive(server_message(audio_frame(PCM))) == [AudioOut(PCM, "gemini-turn-2")]


def test_one_message_with_several_fields_keeps_rule_2_order() -> None:
    receiver = GeminiReceiver()
    frame = audio_frame(PCM)
    frame["serverContent"]["inputTranscription"] = {"text": "hi", "finished": True}
    frame["serverContent"]["outputTranscription"] = {"text": "Hello"}
    frame["serverContent"]["turnComplete"] = True
    assert receiver.receive(server_message(frame)) == [
        Transcript("caller", "hi", final=False),
        Transcript("caller", "hi"),
        AudioOut(PCM, "gemini-turn-1"),
        Transcript("agent", "Hello", final=False),
        Transcript("agent", "Hello"),
        TurnComplete("gemini-turn-1"),
    ]


def test_interrupted_closes_the_turn() -> None:
    receiver = GeminiReceiver()
    receiver.receive(server_message(audio_frame(PCM)))
    receiver.receive(server_message({"serverContent": {"outputTranscription": {"text": "Sure"}}}))
    assert receiver.receive(server_message({"serverContent": {"interrupted": True}})) == [
        Interrupted("gemini-turn-1"),
        Transcript("agent", "Sure"),
    ]
    assert receiver.receive(server_message({"serverContent": {"turnComplete": True}})) == [
        TurnComplete(None)
    ]


def test_tool_call_and_cancellation() -> None:
    receiver = GeminiReceiver()
    call = {"id": "fc-1", "name": "lookup_order", "args": {"order_id": "A_12"}}
    assert receiver.receive(server_message({"toolCall": {"functionCalls": [call]}})) == [
        ToolCall("fc-1", "lookup_order", {"order_id": "A_12"})
    ]
    cancel = {"toolCallCancellation": {"ids": ["fc-1"]}}
    assert receiver.receive(server_message(cancel)) == [ToolCallCancelled(("fc-1",))]


def test_resumption_handles_and_go_away() -> None:
    receiver = GeminiReceiver()
    update = {"sessionResumptionUpdate": {"newHandle": "h-1", "resumable": True}}
    assert receiver.receive(server_message(update)) == []
    assert receiver.resumption_handle == "h-1"
    not_resumable = {"sessionResumptionUpdate": {"resumable": False}}
    receiver.receive(server_message(not_resumable))
    assert receiver.resumption_handle == "h-1"
    assert receiver.receive(server_message({"goAway": {"timeLeft": "1s"}})) == [
        ProviderNotice("gemini: goAway, time left 1s")
    ]
    assert receiver.go_away


def test_connection_lost_closes_open_turn_and_keeps_numbering() -> None:
    receiver = GeminiReceiver()
    receiver.receive(server_message({"serverContent": {"inputTranscription": {"text": "hey"}}}))
    receiver.receive(server_message(audio_frame(PCM)))
    receiver.receive(server_message({"serverContent": {"outputTranscription": {"text": "Hi"}}}))
    receiver.receive(server_message({"goAway": {"timeLeft": "0s"}}))
    assert receiver.connection_lost() == [Transcript("agent", "Hi"), TurnComplete("gemini-turn-1")]
    assert not receiver.go_away
    assert receiver.connection_lost() == []
    assert receiver.receive(server_message(audio_frame(PCM))) == [AudioOut(PCM, "gemini-turn-2")]


def test_setup_complete_and_empty_parts_make_no_events() -> None:
    receiver = GeminiReceiver()
    assert receiver.receive(server_message({"setupComplete": {}})) == []
    empty = {"serverContent": {"modelTurn": {"parts": [{"text": "thinking..."}]}}}
    assert receiver.receive(server_message(empty)) == []
    assert not receiver.in_turn


@pytest.mark.parametrize("audio", [b"", b"\x01\x02\xff\xfe", PCM], ids=["empty", "4", "1k"])
def test_realtime_audio_message_is_the_frame_the_sdk_sends(audio: bytes) -> None:
    # What AsyncSession.send_realtime_input(audio=Blob(...)) puts on the socket (google-genai's
    # own conversion, as in its send_realtime_input), compared with the fast path's text.
    blob = types.Blob(data=audio, mime_type=INPUT_MIME_TYPE)
    params = types.LiveSendRealtimeInputParameters.model_validate({"audio": blob})
    converted = converters._LiveSendRealtimeInputParameters_to_mldev(from_object=params)
    converted = _common.encode_unserializable_types(_common.convert_to_dict(converted))
    assert realtime_audio_message(audio) == json.dumps({"realtime_input": converted})


def test_what_the_caller_heard_is_a_system_note_turn() -> None:
    assert heard_note("It is sunny") == [
        {
            "role": "user",
            "parts": [
                {
                    "text": "[system note] The caller interrupted your last reply; they heard "
                    'only: "It is sunny". They did not hear the rest.'
                }
            ],
        }
    ]
    [turn] = heard_note("")
    assert turn["parts"][0]["text"] == (
        "[system note] The caller interrupted your last reply before hearing any of it."
    )
