"""Python type annotations and Google-style docstrings → the JSON schema both providers read.

Supported parameter types: ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, ``Enum``
subclasses, ``list[X]`` / ``Sequence[X]`` / ``tuple[X, ...]``, ``dict[str, X]``, ``X | None``,
unions, ``TypedDict`` and dataclasses (nested objects). Anything else is a
:class:`~sipbot.errors.ToolDefinitionError` at decoration time, not a surprise during a call.

Rules of the generated schema (tests pin them exactly):

* Rule 1: no ``$ref``, no ``title``: nested objects are inlined (both providers accept that).
* Rule 2: ``X | None`` is ``{"type": [T, "null"]}`` for a scalar ``X``, else ``anyOf``.
* Rule 3: ``required`` lists parameters without a default, and is omitted when empty.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from typing_extensions import is_typeddict

from sipbot.errors import ToolDefinitionError

JsonSchema = dict[str, Any]

_SCALARS: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_SECTIONS = "Args|Arguments|Parameters|Attributes|Returns|Yields|Raises|Examples?|Notes?"
_SECTION_RE = re.compile(rf"^({_SECTIONS}):\s*$")
_ARG_RE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def schema_for(annotation: Any, where: str) -> JsonSchema:
    """The JSON schema of one annotation.

    Raises:
        ToolDefinitionError: the type cannot be expressed (``where`` names the parameter).
    """
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if annotation in (list, tuple, set, frozenset, dict):
        raise ToolDefinitionError(f"{where}: say the item type (list[str], not list)")
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return schema_for(get_args(annotation)[0], where)
    if origin is Literal:
        return _literal_schema(get_args(annotation), where)
    if origin in (Union, types.UnionType):
        return _union_schema(get_args(annotation), where)
    if origin in (list, tuple, collections.abc.Sequence, set, frozenset):
        return _array_schema(origin, get_args(annotation), where)
    if origin in (dict, collections.abc.Mapping):
        key, value = get_args(annotation) or (str, Any)
        if key is not str:
            raise ToolDefinitionError(f"{where}: dict keys must be str")
        return {"type": "object", "additionalProperties": schema_for(value, where)}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _literal_schema(tuple(member.value for member in annotation), where)
    if is_typeddict(annotation):
        return _typeddict_schema(annotation, where)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass_schema(annotation, where)
    raise ToolDefinitionError(f"{where}: unsupported type {_type_name(annotation)}")


def _literal_schema(values: tuple[Any, ...], where: str) -> JsonSchema:
    kinds = {type(value) for value in values}
    if len(kinds) != 1 or next(iter(kinds)) not in _SCALARS:
        raise ToolDefinitionError(f"{where}: literal values must all be str, int, float or bool")
    return {"type": _SCALARS[next(iter(kinds))], "enum": list(values)}


def _union_schema(args: tuple[Any, ...], where: str) -> JsonSchema:
    members = [arg for arg in args if arg is not type(None)]
    nullable = len(members) < len(args)
    schemas = [schema_for(member, where) for member in members]
    if len(schemas) == 1:
        schema = schemas[0]
        if not nullable:
            return schema
        if schema.get("type") in _SCALARS.values() and "enum" not in schema:
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}
    if nullable:
        schemas.append({"type": "null"})
    return {"anyOf": schemas}


def _array_schema(origin: Any, args: tuple[Any, ...], where: str) -> JsonSchema:
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        raise ToolDefinitionError(f"{where}: use tuple[X, ...] or list[X], not a fixed tuple")
    if not args:
        raise ToolDefinitionError(f"{where}: say the item type (list[str], not list)")
    return {"type": "array", "items": schema_for(args[0], where)}


def _object_schema(
    fields: list[tuple[str, Any, bool]], where: str, descriptions: dict[str, str]
) -> JsonSchema:
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    for name, annotation, is_required in fields:
        schema = schema_for(annotation, f"{where}.{name}")
        if name in descriptions:
            schema = {**schema, "description": descriptions[name]}
        properties[name] = schema
        if is_required:
            required.append(name)
    out: JsonSchema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def _typeddict_schema(cls: Any, where: str) -> JsonSchema:
    hints = typing.get_type_hints(cls, include_extras=True)
    required_keys = getattr(cls, "__required_keys__", frozenset(hints))
    fields = [(name, hint, name in required_keys) for name, hint in hints.items()]
    return _object_schema(fields, where, parse_docstring(cls.__doc__)[1])


def _dataclass_schema(cls: type, where: str) -> JsonSchema:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for f in dataclasses.fields(cls):
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append((f.name, hints[f.name], missing))
    return _object_schema(fields, where, parse_docstring(cls.__doc__)[1])


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {parameter: description}).

    The description is the text before the first section (``Args:``, ``Returns:``, ...), with
    paragraphs joined by a blank line and lines within a paragraph joined by spaces. Parameter
    descriptions come from ``Args:`` (also ``Attributes:`` for TypedDict/dataclass fields) and
    may continue on more-indented lines.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    params_indent = 0
    for raw in lines:
        stripped = raw.strip()
        header = _SECTION_RE.match(stripped)
        if header and not raw.startswith((" ", "\t")):
            section, current = header.group(1), None
            continue
        if section is None:
            description.append(stripped)
        elif section in ("Args", "Arguments", "Parameters", "Attributes") and stripped:
            indent = len(raw) - len(raw.lstrip())
            match = _ARG_RE.match(stripped)
            if match and (current is None or indent <= params_indent):
                current, params_indent = match.group(1).lstrip("*"), indent
                params[current] = match.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {stripped}".strip()
    return _join_paragraphs(description), params


def _join_paragraphs(lines: list[str]) -> str:
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return "\n\n".join(paragraphs)
