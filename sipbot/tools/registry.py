"""Tools as the runner sees them: the :class:`Tool` protocol, ``@tool`` for Python functions, and
loading ``module:function`` references from a dialplan.

A decorated function stays callable as before (``lookup_order("A1")`` still works in your own
tests); the decorator only adds a :class:`~sipbot.domain.ToolSpec` built from its
signature and docstring, and argument validation for calls that come from a model.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, overload

from pydantic import PydanticUserError, TypeAdapter, ValidationError
from typing_extensions import is_typeddict

from sipbot.domain import ToolSpec
from sipbot.errors import ToolDefinitionError, ToolError
from sipbot.suggest import did_you_mean
from sipbot.tools.context import ToolContext
from sipbot.tools.schema import JsonSchema, parse_docstring, schema_for

TOOL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")  # valid for Gemini and OpenAI alike


class Tool(Protocol):
    """Something a model can call: its spec, an optional own timeout, and how to run it."""

    @property
    def spec(self) -> ToolSpec:
        """Name, description and JSON schema of the parameters."""
        ...

    @property
    def timeout_s(self) -> float | None:
        """This tool's timeout, or None for the runner's default."""
        ...

    async def invoke(self, context: ToolContext, arguments: Mapping[str, Any]) -> Any:
        """Run with the model's ``arguments``; return something JSON-serialisable.

        Raises:
            ToolError: bad arguments or a refused action (the model hears the message).
        """
        ...


def check_tool_name(name: str) -> str:
    """Return ``name`` if both providers accept it as a function name.

    Raises:
        ToolDefinitionError: it is not ``[A-Za-z_][A-Za-z0-9_-]{0,63}``.
    """
    if not TOOL_NAME_RE.fullmatch(name):
        raise ToolDefinitionError(
            f"invalid tool name {name!r}: use letters, digits, _ and -, at most 64 characters"
        )
    return name


class PythonTool:
    """A typed Python function (sync or async) exposed to the model. Made by :func:`tool`.

    Sync functions run in a worker thread (``asyncio.to_thread``) so that a blocking call
    (a database driver, ``requests``) never stalls the event loop; they should wait on I/O, not
    compute: a busy thread slows the media path through the GIL. Async functions run on the loop.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.function = function
        self._timeout_s = timeout_s
        self._is_async = inspect.iscoroutinefunction(function)
        tool_name = check_tool_name(name or function.__name__)
        doc_description, doc_params = parse_docstring(function.__doc__)
        text = description or doc_description
        if not text:
            raise ToolDefinitionError(
                f"tool {tool_name}: no description: give the function a docstring"
            )
        self.context_param, parameters, self._adapters = _signature_schema(
            function, tool_name, doc_params
        )
        self._spec = ToolSpec(tool_name, text, parameters)
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", tool_name)

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    @property
    def timeout_s(self) -> float | None:
        return self._timeout_s

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, as if it were not decorated."""
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<PythonTool {self._spec.name}>"

    def renamed(
        self, name: str, description: str | None = None, timeout_s: float | None = None
    ) -> PythonTool:
        """A copy under another name (a dialplan's key), optionally with a new description."""
        return PythonTool(
            self.function,
            name=name,
            description=description or self._spec.description,
            timeout_s=timeout_s if timeout_s is not None else self._timeout_s,
        )

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert the model's arguments to the function's parameter types.

        Raises:
            ToolError: an unknown or missing argument, or a value of the wrong type.
        """
        unknown = sorted(set(arguments) - set(self._adapters))
        if unknown:
            raise ToolError(f"unexpected argument {unknown[0]!r}")
        missing = [n for n in self._spec.parameters.get("required", ()) if n not in arguments]
        if missing:
            raise ToolError(f"missing argument {missing[0]!r}")
        values: dict[str, Any] = {}
        for key, value in arguments.items():
            try:
                values[key] = self._adapters[key].validate_python(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in (key, *first["loc"]))
                raise ToolError(f"invalid argument {where}: {first['msg']}") from None
        return values

    async def invoke(self, context: ToolContext, arguments: Mapping[str, Any]) -> Any:
        kwargs = self.validate(arguments)
        if self.context_param is not None:
            kwargs[self.context_param] = context
        if self._is_async:
            return await self.function(**kwargs)
        return await asyncio.to_thread(self.function, **kwargs)


def _signature_schema(
    function: Callable[..., Any], tool_name: str, descriptions: dict[str, str]
) -> tuple[str | None, JsonSchema, dict[str, TypeAdapter[Any]]]:
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:  # a NameError in a string annotation, say
        raise ToolDefinitionError(f"tool {tool_name}: cannot read annotations: {exc}") from None
    context_param: str | None = None
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    adapters: dict[str, TypeAdapter[Any]] = {}
    for param in inspect.signature(function).parameters.values():
        where = f"tool {tool_name}: parameter {param.name}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"{where}: *args and **kwargs cannot be described")
        if param.name not in hints:
            raise ToolDefinitionError(f"{where}: no type annotation")
        if hints[param.name] is ToolContext:
            context_param = param.name
            continue
        schema = schema_for(hints[param.name], where)
        if param.name in descriptions:
            schema = {**schema, "description": descriptions[param.name]}
        properties[param.name] = schema
        adapters[param.name] = _adapter(hints[param.name], where)
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: JsonSchema = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return context_param, parameters, adapters


def _adapter(annotation: Any, where: str) -> TypeAdapter[Any]:
    try:
        return TypeAdapter(annotation)
    except PydanticUserError as exc:
        if is_typeddict(annotation):
            # typing.TypedDict on Python < 3.12: pydantic cannot validate it; take the dict
            return TypeAdapter(dict[str, Any])
        raise ToolDefinitionError(f"{where}: {exc}") from None


@overload
def tool(function: Callable[..., Any], /) -> PythonTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[Callable[..., Any]], PythonTool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> PythonTool | Callable[[Callable[..., Any]], PythonTool]:
    """Make a typed function a tool: ``@tool`` or ``@tool(name=..., timeout_s=...)``.

    The docstring's first part is the description; ``Args:`` entries describe the parameters.
    A parameter annotated :class:`~sipbot.tools.context.ToolContext` receives the call's context
    and is not shown to the model.

    Raises:
        ToolDefinitionError: a parameter has no annotation or an unsupported type, or there is
            no description.
    """

    def decorate(fn: Callable[..., Any]) -> PythonTool:
        return PythonTool(fn, name=name, description=description, timeout_s=timeout_s)

    return decorate if function is None else decorate(function)


def import_reference(reference: str, search_paths: Iterable[str] = ()) -> Any:
    """Import ``package.module:attribute`` and return the attribute (a tool, a hook).

    ``search_paths`` (e.g. the config file's directory and the working directory) are appended
    to ``sys.path`` when missing, so that a module next to the dialplan imports without
    installing it.

    Raises:
        ToolDefinitionError: a malformed reference, an import error, no such attribute.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ToolDefinitionError(f"{reference!r} is not 'module:function'")
    for path in search_paths:
        if path not in sys.path:
            sys.path.append(path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ToolDefinitionError(f"cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        names = [n for n in vars(module) if not n.startswith("_")]
        hint = did_you_mean(attribute, names)
        raise ToolDefinitionError(f"module {module_name} has no {attribute!r}{hint}") from None


def load_python_tool(reference: str, search_paths: Iterable[str] = ()) -> PythonTool:
    """Import ``package.module:attribute`` (:func:`import_reference`) and return it as a tool.

    A plain function is wrapped with :func:`tool`.

    Raises:
        ToolDefinitionError: a malformed reference, an import error, or not a function.
    """
    target = import_reference(reference, search_paths)
    if isinstance(target, PythonTool):
        return target
    if callable(target):
        return tool(target)
    raise ToolDefinitionError(f"{reference} is not a function")
