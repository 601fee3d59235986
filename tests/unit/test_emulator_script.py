"""The emulator behaviour script: defaults, YAML/JSON loading, and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipbot.emulators.cli import build_script
from sipbot.emulators.script import (
    EmulatorScript,
    ReplyFault,
    ToolCallRule,
    load_script,
    script_from_mapping,
)
from sipbot.errors import ConfigError


def test_defaults() -> None:
    script = EmulatorScript()
    assert (script.reply, script.reply_ms, script.chunk_ms, script.speed) == (
        "echo",
        1000,
        100,
        4.0,
    )
    assert (script.interrupt_on_speech, script.greet, script.playback_wait) == (True, True, True)
    assert script.api_keys == frozenset()
    assert script.go_away_time_left_ms == 1000


def test_tool_calls_for_picks_the_rules_of_one_turn() -> None:
    a = ToolCallRule("a", on_turn=1)
    b = ToolCallRule("b", {"x": 1}, on_turn=2)
    c = ToolCallRule("c", on_turn=2)
    script = EmulatorScript(tool_calls=(a, b, c))
    assert script.tool_calls_for(1) == (a,)
    assert script.tool_calls_for(2) == (b, c)
    assert script.tool_calls_for(3) == ()


def test_load_yaml(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(
        "reply: tone\n"
        "tone_hz: 1000\n"
        "speed: 0\n"
        "go_away_after_turns: 2\n"
        "api_keys: [k1, k2]\n"
        "tool_calls:\n"
        "  - name: get_weather\n"
        "    arguments: {city: Paris}\n"
        "    on_turn: 2\n"
        "  - name: hang_up\n"
    )
    assert load_script(path) == EmulatorScript(
        reply="tone",
        tone_hz=1000.0,
        speed=0.0,
        go_away_after_turns=2,
        api_keys=frozenset({"k1", "k2"}),
        tool_calls=(
            ToolCallRule("get_weather", {"city": "Paris"}, 2),
            ToolCallRule("hang_up", {}, 1),
        ),
    )


def test_load_json(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text('{"reply_ms": 250, "interrupt_on_speech": false, "expire_after_turns": null}')
    assert load_script(path) == EmulatorScript(reply_ms=250, interrupt_on_speech=False)


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_script(path) == EmulatorScript()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reply: echo\nrepy: tone\n", "{f}:2: repy: unknown field (known: reply, reply_ms, "),
        ("speed: fast\n", '{f}:1: speed: expected a number, got "fast"'),
        ("speed: -1\n", "{f}:1: speed: must not be negative, got -1"),
        ("chunk_ms: 0\n", "{f}:1: chunk_ms: must be at least 1, got 0"),
        ("chunk_ms: 6000\n", "{f}:1: chunk_ms: must be at most 5000, got 6000"),
        ("reply_ms: 1.5\n", "{f}:1: reply_ms: expected an integer, got 1.5"),
        ("greet: yes please\n", '{f}:1: greet: expected true or false, got "yes please"'),
        ("reply: beep\n", '{f}:1: reply: expected "echo" or "tone", got "beep"'),
        ("api_keys: k1\n", "{f}:1: api_keys: expected a list of strings"),
        ("tool_calls: [{arguments: {}}]\n", "{f}:1: tool_calls: item 0: expected a mapping"),
        (
            "tool_calls: [{name: f, on_turn: 0}]\n",
            "{f}:1: tool_calls: item 0: 'on_turn' must be at least 1, got 0",
        ),
        ("tool_calls: [{name: f, turn: 2}]\n", "{f}:1: tool_calls: item 0: unknown key 'turn'"),
        ("- reply\n", "{f}: a script must be a mapping of field names to values"),
        ("reply: [\n", "{f}:2: not valid YAML/JSON: "),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_script(path)
    assert str(error.value).startswith(message.format(f=path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_script(tmp_path / "nope.yaml")
    assert (
        str(error.value)
        == f"{tmp_path / 'nope.yaml'}: cannot read script: No such file or directory"
    )


def test_from_mapping_without_a_file() -> None:
    with pytest.raises(ConfigError) as error:
        script_from_mapping({"vad_silence_ms": "long"})
    assert str(error.value) == 'vad_silence_ms: expected an integer, got "long"'


def test_cli_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text("reply: tone\ntool_calls: [{name: f, on_turn: 2}]\napi_keys: [k]\n")
    script = build_script(str(path), ["speed=0", "reply_text=hi {turn}"])
    assert script == EmulatorScript(
        reply="tone",
        speed=0.0,
        reply_text="hi {turn}",
        tool_calls=(ToolCallRule("f", {}, 2),),
        api_keys=frozenset({"k"}),
    )


def test_cli_override_errors() -> None:
    with pytest.raises(ConfigError) as error:
        build_script(None, ["speed"])
    assert str(error.value) == "--set: expected FIELD=VALUE, got 'speed'"
    with pytest.raises(ConfigError) as error:
        build_script(None, ["sped=1"])
    assert str(error.value).startswith("--set: sped: unknown field")


def test_a_stall_is_due_after_n_replies_at_a_point_of_the_reply() -> None:
    assert not EmulatorScript().stalls(0, 10_000)  # off by default
    script = script_from_mapping({"stall_after_turns": 1, "stall_mid_reply_ms": 300})
    assert not script.stalls(0, 500)  # the reply after one completed reply stalls, not the first
    assert not script.stalls(1, 200)
    assert script.stalls(1, 300)
    with pytest.raises(ConfigError) as info:
        script_from_mapping({"stall_mid_reply_ms": -1})
    assert str(info.value) == "stall_mid_reply_ms: must be at least 0, got -1"


def test_reply_faults_load_and_pick_their_turn() -> None:
    script = script_from_mapping(
        {
            "reply_faults": [
                {"kind": "stall", "on_turn": 2, "stall_ms": 1500},
                {"kind": "oversized", "size_kb": 64},
                {"kind": "drop", "on_turn": 2},
            ]
        }
    )
    assert script.reply_faults_for(2) == (
        ReplyFault("stall", 2, stall_ms=1500),
        ReplyFault("drop", 2),
    )
    assert script.reply_faults_for(1) == (ReplyFault("oversized", 1, size_kb=64),)
    assert script.reply_faults_for(3) == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"kind": "explode"}], "reply_faults: item 0: expected a mapping with 'kind' one of "
         "('stall', 'drop', 'malformed', 'oversized')"),
        ([{"kind": "stall", "when": 1}], "reply_faults: item 0: unknown key 'when'"),
        ([{"kind": "stall", "stall_ms": 0}], "reply_faults: item 0: must be at least 1, got 0"),
        ({"kind": "stall"}, "reply_faults: expected a list of {kind, on_turn, stall_ms, size_kb} "
         "mappings"),
    ],
)  # fmt: skip
def test_reply_fault_errors(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        script_from_mapping({"reply_faults": value})
    assert str(error.value) == message
