"""Typed provider options (sipbot/dialplan/options.py): load-time errors, the mapping onto each
provider's setup (the wire modules' output), the barge-in precedence and failover."""

# ruff: noqa: E501  (the exact one-line messages are long on purpose)

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sipbot.config import load_config
from sipbot.dialplan import Agent, Answer
from sipbot.dialplan.agent import BargeIn
from sipbot.dialplan.options import GeminiOptions, OpenAIOptions
from sipbot.domain import PCM16_24K, CallInfo, SessionConfig, TurnDetection
from sipbot.emulators import gemini_wire as emulated_gemini
from sipbot.emulators import openai_wire as emulated_openai
from sipbot.emulators.script import EmulatorScript
from sipbot.errors import ConfigError
from sipbot.providers import gemini_wire, openai_wire

CALL = CallInfo(call_id="c1", caller="alice")
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

GEMINI_FULL = """\
agents:
  a:
    provider: gemini
    language: de-DE
    gemini:
      proactive_audio: true
      affective_dialog: true
      thinking_budget: 512
      activity_handling: no_interruption
"""
OPENAI_FULL = """\
agents:
  a:
    provider: openai
    language: fr-FR
    openai:
      turn_detection: semantic_vad
      eagerness: low
      noise_reduction: far_field
      transcription_model: gpt-4o-transcribe
      interrupt_response: false
"""


def load_agent(tmp_path: Path, text: str, name: str = "a") -> Agent:
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent(text))
    config = load_config(str(path), environ={})
    return config.dialplan.agents[name]


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_agent(tmp_path, text)
    return str(info.value).replace(str(tmp_path) + "/", "")


def session(agent: Agent) -> SessionConfig:
    return agent.session_config(CALL, NOW)


# --------------------------------------------------------------------------- load-time errors

ERRORS = [
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    gemini: {proactive_audio: true}\n",
        "d.yaml:4: agents.a.gemini: options for provider gemini, but this agent's provider is openai",
        id="wrong_provider",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    openai: {eagerness: low}\n",
        "d.yaml:4: agents.a.openai.eagerness: eagerness needs turn_detection: semantic_vad",
        id="eagerness_without_semantic",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    openai: {noise_reduction: near_field}\n",
        "d.yaml:4: agents.a.openai: options for provider openai, but this agent's provider is gemini",
        id="wrong_provider_openai",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    gemini:\n      thinking_budget: 30000\n",
        "d.yaml:5: agents.a.gemini.thinking_budget: must be -1 (dynamic), 0 (off) or up to 24576, not 30000",
        id="budget_range",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    gemini:\n      thinking_budget: -2\n",
        "d.yaml:5: agents.a.gemini.thinking_budget: must be -1 (dynamic), 0 (off) or up to 24576, not -2",
        id="budget_negative",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    gemini:\n      activity_handling: no_interupt\n",
        "d.yaml:5: agents.a.gemini.activity_handling: unknown value 'no_interupt'; did you mean 'no_interruption'? (start_of_activity_interrupts, no_interruption)",
        id="activity_enum",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    gemini:\n      proactive_audio: [yes]\n",
        "d.yaml:5: agents.a.gemini.proactive_audio: input should be a valid boolean",
        id="bool_type",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    gemini:\n      proactiv_audio: true\n",
        "d.yaml:5: agents.a.gemini.proactiv_audio: unknown key 'proactiv_audio'; did you mean 'proactive_audio'?",
        id="unknown_key",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    openai:\n      turn_detection: semantic_vad\n      eagerness: eager\n",
        "d.yaml:6: agents.a.openai.eagerness: unknown value 'eager' (low, medium, high, auto)",
        id="eagerness_enum",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    openai: {noise_reduction: near}\n",
        "d.yaml:4: agents.a.openai.noise_reduction: unknown value 'near'; did you mean 'near_field'? (near_field, far_field)",
        id="noise_enum",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    openai: {turn_detection: semantic}\n",
        "d.yaml:4: agents.a.openai.turn_detection: unknown value 'semantic'; did you mean 'semantic_vad'? (server_vad, semantic_vad)",
        id="vad_enum",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    options: {eagerness: high}\n",
        "d.yaml:4: agents.a.options.eagerness: eagerness needs turn_detection: semantic_vad",
        id="free_options_checked",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    options: {vad: semantic_vad}\n    openai: {turn_detection: server_vad}\n",
        "d.yaml:4: agents.a.options.vad: openai.turn_detection is also set: give it once",
        id="given_twice",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    barge_in: {mode: guard}\n    openai: {interrupt_response: true}\n",
        "d.yaml:5: agents.a.openai.interrupt_response: turns the provider's interruption on, but barge_in.mode is guard: the provider's interruption is off there",
        id="guard_precedence_openai",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    barge_in: {mode: 'off'}\n    gemini: {activity_handling: start_of_activity_interrupts}\n",
        "d.yaml:5: agents.a.gemini.activity_handling: turns the provider's interruption on, but barge_in.mode is off: the provider's interruption is off there",
        id="off_precedence_gemini",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    turn: {barge_in: false}\n    gemini: {activity_handling: start_of_activity_interrupts}\n",
        "d.yaml:5: agents.a.gemini.activity_handling: turns the provider's interruption on, but turn.barge_in is false",
        id="turn_precedence",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    language: eng-US\n",
        "d.yaml:4: agents.a.language: openai transcribes with an ISO-639-1 language: 'eng' is not a two-letter code",
        id="openai_language",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    language: en_US\n",
        "d.yaml:4: agents.a.language: not a language tag such as en or en-US: 'en_US'",
        id="language_tag",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    fallback:\n      provider: openai\n      gemini: {affective_dialog: true}\n",
        "d.yaml:6: agents.a.fallback.gemini: options for provider gemini, but this agent's provider is openai",
        id="fallback_wrong_provider",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    fallback:\n      provider: openai\n      openai: {noise_reduction: close}\n",
        "d.yaml:6: agents.a.fallback.openai.noise_reduction: unknown value 'close' (near_field, far_field)",
        id="fallback_value",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_load_errors(tmp_path: Path, text: str, message: str) -> None:
    assert load_error(tmp_path, text) == message


def test_python_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        GeminiOptions(thinking_budget=True)
    assert (info.value.field, info.value.message) == (
        "thinking_budget",
        "must be a whole number of tokens, not True",
    )
    with pytest.raises(ConfigError) as info:
        OpenAIOptions(transcription_model=" ")
    assert info.value.field == "transcription_model"
    with pytest.raises(ConfigError) as info:
        Agent("a", provider="local", provider_options=GeminiOptions())
    assert str(info.value) == (
        "gemini: options for provider gemini, but this agent's provider is local"
    )


# --------------------------------------------------------------------------- Gemini on the wire


def test_gemini_block_maps_onto_live_connect_config(tmp_path: Path) -> None:
    agent = load_agent(tmp_path, GEMINI_FULL)
    assert agent.provider_options == GeminiOptions(True, True, 512, "no_interruption")
    built = gemini_wire.connect_config(session(agent), resumption_handle=None)
    assert built["proactivity"] == {"proactive_audio": True}
    assert built["enable_affective_dialog"] is True
    assert built["thinking_config"] == {"thinking_budget": 512}
    assert built["speech_config"] == {"language_code": "de-DE"}
    assert built["realtime_input_config"]["activity_handling"] == "NO_INTERRUPTION"
    assert gemini_wire.unknown_options(session(agent).options) == []


def test_gemini_config_is_accepted_by_the_sdk(tmp_path: Path) -> None:
    """The dict is a valid ``types.LiveConnectConfig`` (field names and types, per the SDK)."""
    from google.genai import types

    built = gemini_wire.connect_config(
        session(load_agent(tmp_path, GEMINI_FULL)), resumption_handle=None
    )
    config = types.LiveConnectConfig(**built)
    assert config.proactivity == types.ProactivityConfig(proactive_audio=True)
    assert config.thinking_config == types.ThinkingConfig(thinking_budget=512)
    assert config.enable_affective_dialog is True
    assert config.realtime_input_config is not None
    assert config.realtime_input_config.activity_handling == types.ActivityHandling.NO_INTERRUPTION


def test_gemini_unset_options_are_not_sent() -> None:
    agent = Agent("a", provider="gemini", provider_options=GeminiOptions(thinking_budget=0))
    built = gemini_wire.connect_config(session(agent), resumption_handle=None)
    assert built["thinking_config"] == {"thinking_budget": 0}  # 0 (off) is a value
    assert "proactivity" not in built
    assert "enable_affective_dialog" not in built
    plain = gemini_wire.connect_config(
        session(Agent("a", provider="gemini")), resumption_handle=None
    )
    assert not {"proactivity", "enable_affective_dialog", "thinking_config"} & set(plain)
    assert plain["realtime_input_config"]["activity_handling"] == "START_OF_ACTIVITY_INTERRUPTS"


# --------------------------------------------------------------------------- OpenAI on the wire


def test_openai_block_maps_onto_session_update(tmp_path: Path) -> None:
    agent = load_agent(tmp_path, OPENAI_FULL)
    update = openai_wire.session_update(session(agent), PCM16_24K)
    audio_in = update["session"]["audio"]["input"]
    assert audio_in["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": True,
        "interrupt_response": False,
    }
    assert audio_in["noise_reduction"] == {"type": "far_field"}
    assert audio_in["transcription"] == {"model": "gpt-4o-transcribe", "language": "fr"}
    assert openai_wire.unknown_options(session(agent).options) == []


def test_openai_session_update_is_accepted_by_the_sdk(tmp_path: Path) -> None:
    """The event validates as the SDK's ``SessionUpdateEvent`` (field names, enums)."""
    from openai.types.realtime import SessionUpdateEvent

    update = openai_wire.session_update(session(load_agent(tmp_path, OPENAI_FULL)), PCM16_24K)
    event = SessionUpdateEvent.model_validate(update)
    dumped: Any = event.model_dump(exclude_none=True)
    assert dumped["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    assert dumped["session"]["audio"]["input"]["noise_reduction"] == {"type": "far_field"}


def test_openai_free_options_still_work() -> None:
    agent = Agent("a", provider="openai", options={"vad": "semantic_vad", "eagerness": "HIGH"})
    assert agent.provider_options == OpenAIOptions(turn_detection="semantic_vad", eagerness="high")
    detection = openai_wire.session_update(session(agent), PCM16_24K)["session"]["audio"]["input"]
    assert detection["turn_detection"]["eagerness"] == "high"


def test_agent_copies_keep_their_options() -> None:
    """``replace`` (server overrides, ``with_fallback``) checks the agent again: same result."""
    agent = Agent("a", provider="openai", options={"vad": "semantic_vad", "eagerness": "HIGH"})
    copied = replace(agent, max_duration_s=5.0).with_fallback("gemini")
    assert copied.provider_options == agent.provider_options
    assert session(copied).options == session(agent).options


# --------------------------------------------------------------------------- barge-in precedence


@pytest.mark.parametrize(
    ("mode", "turn_barge_in", "block", "interrupts"),
    [
        ("provider", True, None, True),
        ("provider", True, OpenAIOptions(interrupt_response=True), True),
        ("provider", True, OpenAIOptions(interrupt_response=False), False),
        ("provider", False, None, False),
        ("guard", True, None, False),
        ("guard", True, OpenAIOptions(interrupt_response=False), False),
        ("off", True, None, False),
    ],
)
def test_openai_interrupt_response_precedence(
    mode: str, turn_barge_in: bool, block: OpenAIOptions | None, interrupts: bool
) -> None:
    agent = Agent(
        "a",
        provider="openai",
        barge_in=BargeIn(mode=mode),  # type: ignore[arg-type]
        turn=TurnDetection(barge_in=turn_barge_in),
        provider_options=block,
    )
    config = session(agent)
    assert config.turn_detection.barge_in is interrupts
    update = openai_wire.session_update(config, PCM16_24K)
    assert update["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is interrupts


@pytest.mark.parametrize(
    ("mode", "block", "handling"),
    [
        ("provider", None, "START_OF_ACTIVITY_INTERRUPTS"),
        ("provider", GeminiOptions(activity_handling="no_interruption"), "NO_INTERRUPTION"),
        ("guard", None, "NO_INTERRUPTION"),
        ("guard", GeminiOptions(activity_handling="no_interruption"), "NO_INTERRUPTION"),
    ],
)
def test_gemini_activity_handling_precedence(
    mode: str, block: GeminiOptions | None, handling: str
) -> None:
    agent = Agent("a", provider="gemini", barge_in=BargeIn(mode=mode), provider_options=block)  # type: ignore[arg-type]
    built = gemini_wire.connect_config(session(agent), resumption_handle=None)
    assert built["realtime_input_config"]["activity_handling"] == handling


# --------------------------------------------------------------------------- failover and handoff


FAILOVER = """\
agents:
  a:
    provider: gemini
    language: de-DE
    gemini: {proactive_audio: true, thinking_budget: 0}
    fallback:
      provider: openai
      openai: {turn_detection: semantic_vad, eagerness: high, noise_reduction: near_field}
  b:
    provider: openai
    fallback:
      provider: gemini
"""


def test_failover_uses_the_fallbacks_own_options(tmp_path: Path) -> None:
    agent = load_agent(tmp_path, FAILOVER)
    assert agent.fallback is not None
    assert agent.fallback.provider_options == OpenAIOptions(
        turn_detection="semantic_vad", eagerness="high", noise_reduction="near_field"
    )
    primary, fallback = session(agent), session(agent.fallback)
    assert primary.options == {"proactive_audio": True, "thinking_budget": 0}
    assert fallback.options == {
        "vad": "semantic_vad",
        "eagerness": "high",
        "noise_reduction": "near_field",
    }
    update = openai_wire.session_update(fallback, PCM16_24K)
    assert update["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert update["session"]["audio"]["input"]["transcription"]["language"] == "de"  # the agent's
    # the other way: an OpenAI agent's Gemini fallback without a block sends none of the extras
    other = load_agent(tmp_path, FAILOVER, "b")
    assert other.fallback is not None
    assert other.fallback.provider_options is None
    built = gemini_wire.connect_config(session(other.fallback), resumption_handle=None)
    assert not {"proactivity", "enable_affective_dialog", "thinking_config"} & set(built)


def test_python_fallback_does_not_inherit_options() -> None:
    agent = Agent(
        "a", provider="gemini", provider_options=GeminiOptions(affective_dialog=True)
    ).with_fallback("openai")
    assert agent.fallback is not None
    assert agent.fallback.provider_options is None
    assert session(agent.fallback).options == {}
    with pytest.raises(ConfigError) as info:
        Agent("a", provider="gemini").with_fallback(
            "openai", provider_options=GeminiOptions(proactive_audio=True)
        )
    assert (info.value.field, info.value.message) == (
        "fallback.gemini",
        "options for provider gemini, but this agent's provider is openai",
    )


def test_handoff_target_brings_its_own_options(tmp_path: Path) -> None:
    text = """\
    agents:
      desk:
        provider: gemini
        tools: [handoff]
        handoff_allow: [billing]
        gemini: {affective_dialog: true}
      billing:
        provider: openai
        openai: {noise_reduction: far_field}
    routes:
      - answer: desk
    """
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent(text))
    dialplan = load_config(str(path), environ={}).dialplan
    assert isinstance(dialplan.routes[0].action, Answer)
    billing = session(dialplan.agents["billing"])
    assert billing.options == {"noise_reduction": "far_field"}
    assert session(dialplan.agents["desk"]).options == {"affective_dialog": True}


# --------------------------------------------------------------------------- the emulators check them

GEMINI_SETUP = {
    "model": "models/m",
    "generationConfig": {
        "responseModalities": ["AUDIO"],
        "speechConfig": {"languageCode": "de-DE"},
        "thinkingConfig": {"thinkingBudget": 512},
        "enableAffectiveDialog": True,
    },
    "proactivity": {"proactiveAudio": True},
    "realtimeInputConfig": {"activityHandling": "NO_INTERRUPTION"},
}


def test_gemini_emulator_records_the_options() -> None:
    options = emulated_gemini.parse_setup(GEMINI_SETUP)
    assert (
        options.proactive_audio,
        options.affective_dialog,
        options.thinking_budget,
        options.language_code,
        options.activity_interrupts,
    ) == (True, True, 512, "de-DE", False)
    plain = emulated_gemini.parse_setup({"model": "models/m"})
    assert (plain.proactive_audio, plain.affective_dialog, plain.thinking_budget) == (
        False,
        False,
        None,
    )


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    setup: Any = json.loads(json.dumps(GEMINI_SETUP))
    node = setup
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return dict(setup)


ENUM = "type.googleapis.com/google.ai.generativelanguage.v1beta."


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (
            ("realtimeInputConfig", "activityHandling"),
            "NO_INTERRUPT",
            f"Invalid value at 'setup.realtime_input_config.activity_handling' ({ENUM}ActivityHandling), \"NO_INTERRUPT\"",
        ),
        (
            ("generationConfig", "thinkingConfig", "thinkingBudget"),
            "lots",
            "Invalid value at 'setup.generation_config.thinking_config.thinking_budget' (TYPE_INT32), \"lots\"",
        ),
        (
            ("proactivity", "proactiveAudio"),
            "yes",
            "Invalid value at 'setup.proactivity.proactive_audio' (TYPE_BOOL), \"yes\"",
        ),
        (
            ("generationConfig", "enableAffectiveDialog"),
            1,
            "Invalid value at 'setup.generation_config.enable_affective_dialog' (TYPE_BOOL), 1",
        ),
        (
            ("proactivity", "proactiveSpeech"),
            True,
            "Invalid JSON payload received. Unknown name \"proactive_speech\" at 'setup.proactivity': Cannot find field.",
        ),
        (
            ("generationConfig", "affectiveDialog"),
            True,
            "Invalid JSON payload received. Unknown name \"affective_dialog\" at 'setup.generation_config': Cannot find field.",
        ),
        (
            ("generationConfig", "thinkingConfig", "budget"),
            1,
            "Invalid JSON payload received. Unknown name \"budget\" at 'setup.generation_config.thinking_config': Cannot find field.",
        ),
    ],
)
def test_gemini_emulator_refuses_like_the_service(
    path: tuple[str, ...], value: Any, reason: str
) -> None:
    with pytest.raises(emulated_gemini.WireError) as info:
        emulated_gemini.parse_setup(_with(path, value))
    assert str(info.value) == reason


def test_gemini_emulator_takes_protobuf_json_spellings() -> None:
    """Enums by number, int32 as a string: what protobuf JSON allows."""
    setup = _with(("realtimeInputConfig", "activityHandling"), 2)
    setup["generationConfig"]["thinkingConfig"]["thinkingBudget"] = "-1"
    options = emulated_gemini.parse_setup(setup)
    assert (options.activity_interrupts, options.thinking_budget) == (False, -1)


def _openai_update(audio_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "realtime", "audio": {"input": audio_input}}


def test_openai_emulator_takes_the_options() -> None:
    current = emulated_openai.default_session("gpt-realtime", EmulatorScript())
    update = _openai_update(
        {
            "turn_detection": {
                "type": "semantic_vad",
                "eagerness": "low",
                "interrupt_response": False,
            },
            "noise_reduction": {"type": "near_field"},
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "de"},
        }
    )
    merged = emulated_openai.merge_session(current, update)
    assert merged["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    assert merged["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    off = emulated_openai.merge_session(merged, _openai_update({"noise_reduction": None}))
    assert off["audio"]["input"]["noise_reduction"] is None


@pytest.mark.parametrize(
    ("audio_input", "code", "param", "message"),
    [
        (
            {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}},
            "invalid_value",
            "session.audio.input.turn_detection.eagerness",
            "Invalid value: 'eager'. Supported values are: 'low', 'medium', 'high' and 'auto'.",
        ),
        (
            {"noise_reduction": {"type": "near"}},
            "invalid_value",
            "session.audio.input.noise_reduction.type",
            "Invalid value: 'near'. Supported values are: 'near_field' and 'far_field'.",
        ),
        (
            {"noise_reduction": {}},
            "missing_required_parameter",
            "session.audio.input.noise_reduction.type",
            "Missing required parameter: 'session.audio.input.noise_reduction.type'.",
        ),
        (
            {"transcription": {"model": "gpt-4o-mini-transcribe", "language": "de-DE"}},
            "invalid_value",
            "session.audio.input.transcription.language",
            "Invalid language 'de-DE'. Language parameter must be specified in ISO-639-1 format.",
        ),
        (
            {"turn_detection": {"type": "server_vad", "interrupt_response": "no"}},
            "invalid_type",
            "session.audio.input.turn_detection.interrupt_response",
            "Invalid type for 'session.audio.input.turn_detection.interrupt_response': expected a boolean.",
        ),
    ],
)
def test_openai_emulator_refuses_like_the_service(
    audio_input: dict[str, Any], code: str, param: str, message: str
) -> None:
    current = emulated_openai.default_session("gpt-realtime", EmulatorScript())
    with pytest.raises(emulated_openai.EventError) as info:
        emulated_openai.merge_session(current, _openai_update(audio_input))
    assert (info.value.code, info.value.param, info.value.message) == (code, param, message)


# --------------------------------------------------------------------------- the documented examples

CONFIG_MD = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_config_md_examples_load_and_map(tmp_path: Path) -> None:
    text = CONFIG_MD.read_text(encoding="utf-8")
    section = text[text.index("### Provider options") : text.index("### The barge-in guard")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    first = load_agent(tmp_path, blocks[0], "concierge")
    assert first.provider_options == GeminiOptions(True, True, 0, "no_interruption")
    desk = load_agent(tmp_path, blocks[0], "desk")
    assert desk.provider_options == OpenAIOptions(
        "semantic_vad", "low", "far_field", "gpt-4o-mini-transcribe", False
    )
    support = load_agent(tmp_path, blocks[1], "support")
    assert support.fallback is not None
    assert session(support.fallback).options["eagerness"] == "high"
