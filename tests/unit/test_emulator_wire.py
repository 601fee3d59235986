"""Emulator wire schemas and shared helpers: pure functions, exact expectations."""

from __future__ import annotations

import base64

import pytest

from sipbot.domain import PCMU_8K
from sipbot.emulators import gemini_wire, openai_wire
from sipbot.emulators.common import (
    Conversation,
    ResumptionHandles,
    b64decode_any,
    chunk_deadline,
    close_reason,
    make_reply,
    split_text,
    summarize,
)
from sipbot.emulators.script import EmulatorScript

# --------------------------------------------------------------------------- common


def test_b64decode_accepts_both_alphabets_with_or_without_padding() -> None:
    data = b"\xfb\xff\xbf"
    assert b64decode_any(base64.b64encode(data).decode()) == data
    assert b64decode_any(base64.urlsafe_b64encode(data).decode()) == data
    assert b64decode_any("-_8") == b"\xfb\xff"  # unpadded URL-safe
    with pytest.raises(ValueError, match=r"^Only base64 data is allowed$"):
        b64decode_any("a*b")


def test_close_reason_fits_a_control_frame() -> None:
    assert close_reason("short") == "short"
    assert len(close_reason("é" * 100).encode()) == 122  # never cuts a character in half


@pytest.mark.parametrize(
    ("text", "count", "pieces"),
    [
        ("reply 1", 2, ["reply ", "1"]),
        ("reply 1", 5, ["reply ", "1", "", "", ""]),
        ("a b c d e", 2, ["a b c ", "d e"]),
        ("one", 1, ["one"]),
    ],
)
def test_split_text_rejoins(text: str, count: int, pieces: list[str]) -> None:
    assert split_text(text, count) == pieces
    assert "".join(pieces) == text


def test_chunk_deadlines() -> None:
    assert chunk_deadline(10.0, 3, 100, 0.0) == 10.0
    assert chunk_deadline(10.0, 3, 100, 1.0) == pytest.approx(10.3)
    assert chunk_deadline(10.0, 4, 100, 4.0) == pytest.approx(10.1)


def test_make_reply_chunks_by_format() -> None:
    reply = make_reply(
        bytes(8 * 250),
        "a b c",
        turn=2,
        chunk_ms=100,
        bytes_per_ms=PCMU_8K.bytes_per_ms,
        counts=True,
    )
    assert [len(c) for c in reply.chunks] == [800, 800, 400]
    assert reply.texts == ["a ", "b ", "c"]
    assert (reply.turn, reply.position, reply.done) == (2, 0, False)


def test_summarize_replaces_audio_payloads_only() -> None:
    gemini = {
        "realtimeInput": {
            "audio": {"data": base64.b64encode(bytes(30)).decode(), "mimeType": "audio/pcm"}
        }
    }
    assert summarize(gemini) == {
        "realtimeInput": {"audio": {"data": {"audio_bytes": 30}, "mimeType": "audio/pcm"}}
    }
    delta = {"type": "response.output_audio.delta", "delta": base64.b64encode(bytes(31)).decode()}
    assert summarize(delta)["delta"] == {"audio_bytes": 31}
    text = {"type": "response.output_audio_transcript.delta", "delta": "hello"}
    assert summarize(text) == text


def test_resumption_handles_lapse_after_their_ttl() -> None:
    handles = ResumptionHandles(ttl_s=10.0)
    first, second = Conversation(), Conversation()
    a = handles.issue(first, now=0.0)
    b = handles.issue(first, now=5.0)
    assert a != b
    assert handles.get(a, now=9.9) is first
    assert handles.get(a, now=10.0) is None
    assert handles.get("unknown", now=0.0) is None
    handles.issue(second, now=12.0)  # forgets the lapsed handle a
    assert len(handles) == 2
    assert handles.get(b, now=12.0) is first


# --------------------------------------------------------------------------- gemini


def test_normalize_renames_keys_but_not_user_data() -> None:
    message = {
        "tool_response": {
            "function_responses": [{"id": "1", "response": {"some_key": {"nested_key": 1}}}]
        },
    }
    assert gemini_wire.normalize(message) == {
        "toolResponse": {
            "functionResponses": [{"id": "1", "response": {"some_key": {"nested_key": 1}}}]
        }
    }


def test_parse_setup_options() -> None:
    setup = gemini_wire.normalize(
        {
            "model": "models/m",
            "generation_config": {"response_modalities": ["TEXT"]},
            "session_resumption": {"handle": "h1"},
            "input_audio_transcription": {},
            "realtime_input_config": {
                "automatic_activity_detection": {"disabled": True, "silence_duration_ms": 800},
                "activity_handling": "NO_INTERRUPTION",
            },
        }
    )
    assert gemini_wire.parse_setup(setup) == gemini_wire.SetupOptions(
        model="models/m",
        text_only=True,
        input_transcription=True,
        output_transcription=False,
        resumption=True,
        resume_handle="h1",
        automatic_activity=False,
        activity_interrupts=False,
        silence_ms=800,
        prefix_ms=None,
    )


def test_audio_blobs_read_rates_and_skip_video() -> None:
    data = base64.urlsafe_b64encode(b"\xfb\xff").decode()
    body = {
        "audio": {"data": data, "mimeType": "audio/pcm;rate=24000"},
        "mediaChunks": [
            {"data": data, "mimeType": "audio/pcm"},
            {"data": "", "mimeType": "image/jpeg"},
        ],
    }
    assert gemini_wire.audio_blobs(body) == [(b"\xfb\xff", 24000), (b"\xfb\xff", 16000)]
    with pytest.raises(gemini_wire.WireError) as error:
        gemini_wire.audio_blobs({"audio": {"data": data, "mimeType": "audio/wav"}})
    assert str(error.value) == 'Unsupported mime type "audio/wav" for realtime_input.audio.'


def test_server_messages() -> None:
    assert gemini_wire.duration(1000) == "1s"
    assert gemini_wire.duration(250) == "0.250s"
    assert gemini_wire.turn_complete(1000, 500)["usageMetadata"]["totalTokenCount"] == 48
    assert gemini_wire.output_transcription("hi") == {
        "serverContent": {"outputTranscription": {"text": "hi"}}
    }
    content = gemini_wire.audio_content(b"\x00\x01")
    assert content == {
        "serverContent": {
            "modelTurn": {
                "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAE="}}]
            }
        }
    }


# --------------------------------------------------------------------------- openai


def test_merge_session_merges_audio_sides_field_by_field() -> None:
    current = openai_wire.default_session("gpt-realtime", EmulatorScript(vad_silence_ms=700))
    assert current["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
    merged = openai_wire.merge_session(
        current,
        {
            "type": "realtime",
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "audio": {
                "input": {"turn_detection": None},
                "output": {"format": {"type": "audio/pcma"}},
            },
        },
    )
    assert merged["audio"]["input"]["turn_detection"] is None
    assert merged["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert openai_wire.output_format(merged) == openai_wire.FORMATS["audio/pcma"]
    assert merged["audio"]["output"]["voice"] == "alloy"
    assert current["audio"]["input"]["turn_detection"] is not None  # not modified in place


@pytest.mark.parametrize(
    ("update", "code", "param"),
    [
        (None, "missing_required_parameter", "session"),
        (
            {"type": "realtime", "tools": [{"type": "function"}]},
            "missing_required_parameter",
            "session.tools[0].name",
        ),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
            "invalid_value",
            "session.audio.input.turn_detection.type",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": "pcm16"}}},
            "invalid_type",
            "session.audio.input.format",
        ),
    ],
)
def test_merge_session_errors(update: object, code: str, param: str) -> None:
    current = openai_wire.default_session("m", EmulatorScript())
    with pytest.raises(openai_wire.EventError) as error:
        openai_wire.merge_session(current, update)
    assert (error.value.code, error.value.param) == (code, param)


def test_invalid_value_messages() -> None:
    assert openai_wire.invalid("p", "x").message == "Invalid value: 'x'."
    assert openai_wire.invalid("p", "x", ("a",)).message == (
        "Invalid value: 'x'. Supported values are: 'a'."
    )
    assert openai_wire.invalid("p", "x", ("a", "b", "c")).message == (
        "Invalid value: 'x'. Supported values are: 'a', 'b' and 'c'."
    )
