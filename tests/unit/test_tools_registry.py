"""@tool: signatures and docstrings → exact JSON schemas; argument validation; loading."""

from __future__ import annotations

import enum
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import pytest

from sipbot.domain import CallInfo
from sipbot.errors import ToolDefinitionError, ToolError
from sipbot.tools import PythonTool, ToolContext, load_python_tool, tool
from sipbot.tools.schema import parse_docstring


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(TypedDict):
    """A postal address.

    Attributes:
        street: street and number.
        city: the city.
    """

    street: str
    city: str


@dataclass
class Item:
    sku: str
    quantity: int = 1


@tool
async def lookup_order(order_id: str, context: ToolContext, verbose: bool = False) -> str:
    """Look up an order.

    Longer explanation that spans
    two lines.

    Args:
        order_id: the order number,
            e.g. A1001.
        context: the call (not shown to the model).
        verbose (bool): say more.

    Returns:
        the status.
    """
    return f"{order_id} {context.caller} {verbose}"


def test_schema_of_a_simple_tool_is_exact() -> None:
    assert lookup_order.spec.name == "lookup_order"
    assert lookup_order.spec.description == (
        "Look up an order.\n\nLonger explanation that spans two lines."
    )
    assert lookup_order.spec.parameters == {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "description": "the order number, e.g. A1001."},
            "verbose": {"type": "boolean", "description": "say more."},
        },
        "required": ["order_id"],
    }
    assert lookup_order.context_param == "context"


def test_schema_of_every_supported_type() -> None:
    def everything(
        s: str,
        i: int,
        f: float,
        b: bool,
        lit: Literal["a", "b"],
        num: Literal[1, 2],
        color: Color,
        tags: list[str],
        seq: Sequence[int],
        tup: tuple[float, ...],
        mapping: dict[str, int],
        maybe: str | None,
        maybe_list: list[int] | None,
        either: int | str,
        address: Address,
        item: Item,
        items: list[Item],
    ) -> None:
        """All types."""

    spec = tool(everything).spec
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "f": {"type": "number"},
            "b": {"type": "boolean"},
            "lit": {"type": "string", "enum": ["a", "b"]},
            "num": {"type": "integer", "enum": [1, 2]},
            "color": {"type": "string", "enum": ["red", "green"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "seq": {"type": "array", "items": {"type": "integer"}},
            "tup": {"type": "array", "items": {"type": "number"}},
            "mapping": {"type": "object", "additionalProperties": {"type": "integer"}},
            "maybe": {"type": ["string", "null"]},
            "maybe_list": {
                "anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]
            },
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "description": "street and number."},
                    "city": {"type": "string", "description": "the city."},
                },
                "required": ["street", "city"],
            },
            "item": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["sku"],
            },
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                    "required": ["sku"],
                },
            },
        },
        "required": [
            "s", "i", "f", "b", "lit", "num", "color", "tags", "seq", "tup", "mapping",
            "maybe", "maybe_list", "either", "address", "item", "items",
        ],
    }  # fmt: skip


def test_no_parameters_and_decorator_arguments() -> None:
    @tool(name="ping-2", description="Check the line.", timeout_s=2.5)
    def ping() -> str:
        return "pong"

    assert ping.spec.name == "ping-2"
    assert ping.spec.description == "Check the line."
    assert ping.spec.parameters == {"type": "object", "properties": {}}
    assert ping.timeout_s == 2.5
    assert ping() == "pong"  # still callable as the function


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(x):\n    'Doc.'", "tool f: parameter x: no type annotation"),
        ("def f(*xs: int):\n    'Doc.'", "tool f: parameter xs: *args and **kwargs cannot be"),
        ("def f(x: bytes):\n    'Doc.'", "tool f: parameter x: unsupported type bytes"),
        ("def f(x: list):\n    'Doc.'", "tool f: parameter x: say the item type"),
        ("def f(x: tuple[int, str]):\n    'Doc.'", "tool f: parameter x: use tuple[X, ...]"),
        ("def f(x: dict[int, str]):\n    'Doc.'", "tool f: parameter x: dict keys must be str"),
        ("def f(x: Literal['a', 1]):\n    'Doc.'", "tool f: parameter x: literal values must"),
        ("def f(x: int):\n    pass", "tool f: no description: give the function a docstring"),
        ("def f(x: Missing):\n    'Doc.'", "tool f: cannot read annotations: name 'Missing'"),
    ],
)
def test_definition_errors(source: str, message: str) -> None:
    namespace: dict[str, Any] = {"Literal": Literal}
    exec(compile("from __future__ import annotations\n" + source, "<tool>", "exec"), namespace)
    with pytest.raises(ToolDefinitionError) as info:
        tool(namespace["f"])
    assert str(info.value).startswith(message)


def test_invalid_tool_name() -> None:
    with pytest.raises(ToolDefinitionError) as info:
        tool(name="has space", description="x")(lambda: None)
    assert str(info.value) == (
        "invalid tool name 'has space': use letters, digits, _ and -, at most 64 characters"
    )


def test_validate_converts_and_rejects() -> None:
    @tool
    def order(color: Color, item: Item, count: int = 1) -> None:
        """Order."""

    values = order.validate({"color": "red", "item": {"sku": "X", "quantity": "3"}, "count": 2})
    assert values == {"color": Color.RED, "item": Item("X", 3), "count": 2}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"item": {"sku": "X"}}, "missing argument 'color'"),
        ({"color": "red", "item": {"sku": "X"}, "extra": 1}, "unexpected argument 'extra'"),
        ({"color": "blue", "item": {"sku": "X"}}, "invalid argument color: Input should be"),
        ({"color": "red", "item": {"quantity": 1}}, "invalid argument item.sku: Field required"),
    ]
    for arguments, message in cases:
        with pytest.raises(ToolError) as info:
            order.validate(arguments)
        assert str(info.value).startswith(message)


class _Control:
    info = CallInfo("c1", caller="+4930555", did="100")


async def test_invoke_async_passes_context_and_sync_runs_in_a_thread() -> None:
    context = ToolContext(_Control())  # type: ignore[arg-type]
    assert await lookup_order.invoke(context, {"order_id": "A1"}) == "A1 +4930555 False"

    import threading

    @tool
    def where() -> str:
        """Which thread."""
        return threading.current_thread().name

    assert await where.invoke(context, {}) != threading.current_thread().name


def test_parse_docstring_sections() -> None:
    description, params = parse_docstring(
        """Summary line.

        Args:
            a: first
              continued.
            b (int): second.
        Raises:
            ValueError: never.
        """
    )
    assert description == "Summary line."
    assert params == {"a": "first continued.", "b": "second."}


def test_load_python_tool(tmp_path: Any) -> None:
    module = tmp_path / "my_tools_mod.py"
    module.write_text(
        textwrap.dedent(
            '''
            from sipbot.tools import tool

            @tool
            def decorated(x: int) -> int:
                """Decorated."""
                return x

            def plain(y: str) -> str:
                """Plain."""
                return y

            NOT_A_FUNCTION = 3
            '''
        )
    )
    try:
        loaded = load_python_tool("my_tools_mod:decorated", [str(tmp_path)])
        assert isinstance(loaded, PythonTool)
        assert loaded.spec.name == "decorated"
        assert load_python_tool("my_tools_mod:plain").spec.description == "Plain."
        for reference, message in [
            ("my_tools_mod", "'my_tools_mod' is not 'module:function'"),
            ("no_such_mod_xyz:f", "cannot import no_such_mod_xyz: No module named"),
            ("my_tools_mod:missing", "module my_tools_mod has no 'missing'"),
            (
                "my_tools_mod:decorate",
                "module my_tools_mod has no 'decorate'; did you mean 'decorated'?",
            ),
            ("my_tools_mod:NOT_A_FUNCTION", "my_tools_mod:NOT_A_FUNCTION is not a function"),
        ]:
            with pytest.raises(ToolDefinitionError) as info:
                load_python_tool(reference)
            assert str(info.value).startswith(message)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_tools_mod", None)


def test_renamed_keeps_function_and_overrides() -> None:
    renamed = lookup_order.renamed("find_order", "Find it.", 3.0)
    assert renamed.spec.name == "find_order"
    assert renamed.spec.description == "Find it."
    assert renamed.spec.parameters == lookup_order.spec.parameters
    assert renamed.timeout_s == 3.0
    assert renamed.function is lookup_order.function
