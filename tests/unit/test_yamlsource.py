"""YAML with line numbers: lines of keys and items, duplicates, number text, env, merges."""

from __future__ import annotations

import pytest

from sipbot.errors import ConfigError
from sipbot.secret import EnvString
from sipbot.yamlsource import YamlInt, format_path, load_yaml, source_text

TEXT = """\
a:
  b: 1
  list:
    - x
    - {y: +4930}
0: zero
"""


def test_values_and_lines() -> None:
    doc = load_yaml(TEXT, "f.yaml")
    assert doc.data == {"a": {"b": 1, "list": ["x", {"y": 4930}]}, "0": "zero"}
    assert doc.lines == {
        (): 1,
        ("a",): 1,
        ("a", "b"): 2,
        ("a", "list"): 3,
        ("a", "list", 0): 4,
        ("a", "list", 1): 5,
        ("a", "list", 1, "y"): 5,
        ("0",): 6,
    }
    assert doc.line_of(("a", "list", 1, "y", "deeper")) == 5
    number = doc.data["a"]["list"][1]["y"]
    assert isinstance(number, YamlInt)
    assert source_text(number) == "+4930"
    assert source_text("plain") is None


def test_octal_looking_numbers_keep_their_text() -> None:
    doc = load_yaml("did: 0044\nf: 1.50\n", "f.yaml")
    assert doc.data == {"did": 36, "f": 1.5}  # YAML 1.1 reads 0044 as octal...
    assert (source_text(doc.data["did"]), source_text(doc.data["f"])) == ("0044", "1.50")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "f.yaml:2: a: duplicate key"),
        ("a: [1\n", "f.yaml:2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        ("a: ${NOPE_X}\n", "f.yaml:1: a: environment variable NOPE_X is not set"),
        ("a:\n  - <<: 3\n", "f.yaml:2: a[0]: a merge key (<<) needs a mapping"),
        ("? [1]\n: 2\n", "f.yaml:1: a key must be a string"),
        (
            "d: 2025-02-30\n",
            "f.yaml:1: d: invalid value '2025-02-30': day is out of range for month",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "f.yaml", environ={})
    assert str(info.value) == message


def test_env_expansion() -> None:
    env = {"KEY": "s3cret", "EMPTY": ""}
    doc = load_yaml(
        "k: ${KEY}\nmix: 'Bearer ${KEY}'\nd: ${NOPE:-fallback}\ne: ${EMPTY:-x}\nlit: $${KEY}\n",
        "f.yaml",
        environ=env,
    )
    assert doc.data == {
        "k": "s3cret",
        "mix": "Bearer s3cret",
        "d": "fallback",
        "e": "x",
        "lit": "${KEY}",
    }
    assert isinstance(doc.data["k"], EnvString)
    assert repr(doc.data["mix"]) == "EnvString('Bearer ${KEY}')"


def test_merge_keys() -> None:
    doc = load_yaml("base: &b {x: 1, y: 2}\nc:\n  y: 3\n  <<: *b\n", "f.yaml")
    assert doc.data["c"] == {"y": 3, "x": 1}
    assert doc.lines[("c", "y")] == 3
    assert doc.lines[("c", "x")] == 1  # where the merged value was written


def test_empty_document_and_format_path() -> None:
    assert load_yaml("", "f.yaml").data == {}
    assert format_path(("routes", 2, "match", "did")) == "routes[2].match.did"
    assert format_path(()) == ""
