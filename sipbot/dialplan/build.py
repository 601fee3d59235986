"""How the YAML models of a dialplan become a :class:`~sipbot.dialplan.model.Dialplan`.

:func:`build_dialplan` resolves names (agents, tools, trunks) and makes the runtime objects,
which check their own values (regexes, URIs, templates, timezones) and raise
:class:`~sipbot.errors.ConfigError` with a field that is prefixed here with its YAML path and
given the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from sipbot.dialplan.agent import Agent, BargeIn, MemorySettings
from sipbot.dialplan.amd import AmdSettings
from sipbot.dialplan.fields import did_you_mean, with_field
from sipbot.dialplan.match import Exact, Match, Prefix, Regex, TextMatcher
from sipbot.dialplan.model import (
    Action,
    Answer,
    Dialplan,
    DtmfAction,
    HangUp,
    Reject,
    Route,
    Transfer,
    check_uri,
)
from sipbot.dialplan.options import OPTION_BLOCKS, ProviderOptions
from sipbot.dialplan.schema import (
    AgentModel,
    DialplanModel,
    FallbackModel,
    MatchModel,
    RouteModel,
    ToolModel,
)
from sipbot.dialplan.trunks import build_trunk
from sipbot.domain import TurnDetection
from sipbot.errors import ConfigError, ToolDefinitionError
from sipbot.secret import EnvString, to_secret
from sipbot.tools.builtin import BUILTIN_NAMES
from sipbot.tools.http import HttpTool
from sipbot.tools.registry import Tool, load_python_tool
from sipbot.yamlsource import Document, Path, source_text

T = TypeVar("T")


def at(doc: Document, path: Path, make: Callable[[], T]) -> T:
    """``make()``, turning a ConfigError it raises into one with ``doc``'s file and line.

    The error's own ``field`` (e.g. ``turn.threshold``) is appended to ``path``.
    """
    try:
        return make()
    except ConfigError as exc:
        if exc.file is not None:
            raise  # already located by an inner ``at``
        full = (*path, *parse_field(exc.field)) if exc.field else path
        raise doc.error(full, exc.message) from None
    except ToolDefinitionError as exc:
        raise doc.error(path, str(exc)) from None


def parse_field(field: str) -> Path:
    """``"tools[2].name"`` → ``("tools", 2, "name")``."""
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def build_dialplan(model: DialplanModel, doc: Document, search_paths: Iterable[str]) -> Dialplan:
    """Resolve names and make the runtime :class:`Dialplan`.

    Raises:
        ConfigError: the first problem, with file, line and field.
    """
    tools: dict[str, Tool] = {}
    for name, spec in model.tools.items():
        tools[name] = at(doc, ("tools", name), partial(_tool, name, spec, search_paths))
    agents = {
        name: _agent(doc, name, spec, tools, model.timezone) for name, spec in model.agents.items()
    }
    for name, agent in agents.items():
        for index, target in enumerate(agent.handoff_allow):
            where = ("agents", name, "handoff_allow", index)
            if target == name:
                raise doc.error(where, "an agent cannot hand a call over to itself")
            if target not in agents:
                hint = did_you_mean(target, agents)
                message = f"unknown agent {target!r}{hint} (another agent of agents:)"
                raise doc.error(where, message)
    built = {
        name: at(doc, ("trunks", name), partial(build_trunk, name, spec))
        for name, spec in model.trunks.items()
    }
    trunks = {name: trunk.source for name, trunk in built.items()}
    routes = [_route(doc, i, r, agents, trunks) for i, r in enumerate(model.routes)]
    return at(doc, (), lambda: Dialplan(routes, agents, model.timezone, built))


def _tool(name: str, spec: ToolModel, search_paths: Iterable[str]) -> Tool:
    if name in BUILTIN_NAMES:
        raise ConfigError(f"{name} is a built-in tool: list it in an agent's tools directly")
    if (spec.python is None) == (spec.http is None):
        raise ConfigError("a tool needs exactly one of python: or http:")
    if spec.python is not None:
        if spec.parameters is not None:
            raise ConfigError("parameters come from the function's signature", field="parameters")
        loaded = at_field("python", lambda: load_python_tool(spec.python or "", search_paths))
        return loaded.renamed(name, spec.description, spec.timeout_s)
    http = spec.http
    assert http is not None
    if not re.match(r"https?://[^/\s]+", http.url):
        raise ConfigError(f"bad URL {http.url!r}: expected http:// or https://", field="http.url")
    if not spec.description:
        raise ConfigError("an HTTP tool needs a description for the model", field="description")
    parameters = spec.parameters or {"type": "object", "properties": {}}
    if parameters.get("type") != "object":
        raise ConfigError("parameters must be a JSON schema of type object", field="parameters")
    for key, value in http.headers.items():
        if not _is_text(value):
            raise ConfigError("a header value must be a string", field=f"http.headers.{key}")
    headers = {k: to_secret(v if isinstance(v, str) else _text(v)) for k, v in http.headers.items()}
    return HttpTool(
        name,
        http.url,
        description=spec.description,
        parameters=parameters,
        timeout_s=http.timeout_s,
        headers=headers,
    )


def at_field(field: str, make: Callable[[], T]) -> T:
    """``make()``, turning a ToolDefinitionError into a ConfigError for ``field``."""
    try:
        return make()
    except ToolDefinitionError as exc:
        raise ConfigError(str(exc), field=field) from None


def _agent(
    doc: Document, name: str, spec: AgentModel, tools: Mapping[str, Tool], timezone: str
) -> Agent:
    path: Path = ("agents", name)
    resolved: list[Tool | str] = []
    for index, tool_name in enumerate(spec.tools):
        if tool_name in BUILTIN_NAMES:
            resolved.append(tool_name)
        elif tool_name in tools:
            resolved.append(tools[tool_name])
        else:
            known = (*BUILTIN_NAMES, *tools)
            hint = did_you_mean(tool_name, known)
            message = f"unknown tool {tool_name!r}{hint} (define it under tools:)"
            raise doc.error((*path, "tools", index), message)
    if spec.api_key is not None and not isinstance(spec.api_key, EnvString):
        message = "secrets come from the environment only: write api_key: ${VAR}"
        raise doc.error((*path, "api_key"), message)
    agent = _agent_alone(doc, path, name, spec, resolved, timezone)
    fallback = spec.fallback
    if fallback is None:
        return agent
    if fallback.api_key is not None and not isinstance(fallback.api_key, EnvString):
        message = "secrets come from the environment only: write api_key: ${VAR}"
        raise doc.error((*path, "fallback", "api_key"), message)
    keys = {key: getattr(fallback, key) for key in type(fallback).model_fields}  # EnvStrings kept
    del keys["gemini"], keys["openai"]
    keys["provider_options"] = _provider_options(doc, (*path, "fallback"), fallback)
    return at(doc, path, lambda: agent.with_fallback(**keys))


def _provider_options(
    doc: Document, path: Path, spec: AgentModel | FallbackModel
) -> ProviderOptions | None:
    """The typed ``gemini:``/``openai:`` block of ``spec``; the agent checks its provider."""
    blocks: list[ProviderOptions] = []
    for name, make in OPTION_BLOCKS.items():
        given = getattr(spec, name)
        if given is not None:
            values = given.model_dump()
            blocks.append(at(doc, (*path, name), lambda: make(**values)))  # noqa: B023
    if len(blocks) > 1:  # keep the wrong one: the agent names it
        blocks = [b for b in blocks if b.provider != spec.provider] or blocks
    return blocks[0] if blocks else None


def _agent_alone(
    doc: Document,
    path: Path,
    name: str,
    spec: AgentModel,
    resolved: list[Tool | str],
    timezone: str,
) -> Agent:
    provider_options = _provider_options(doc, path, spec)
    amd = AmdSettings()
    if spec.amd is not None:
        amd_spec = spec.amd
        amd = at(
            doc,
            (*path, "amd"),
            lambda: AmdSettings(
                enabled=amd_spec.enabled,
                on_machine=amd_spec.on_machine,  # type: ignore[arg-type]  # checked by AmdSettings
                on_unknown=amd_spec.on_unknown,  # type: ignore[arg-type]
                message=amd_spec.message,
                message_audio=amd_spec.message_audio,
                max_wait_s=amd_spec.max_wait_s,
            ),
        )
    return at(
        doc,
        path,
        lambda: Agent(
            name=name,
            provider=spec.provider,  # type: ignore[arg-type]  # checked by Agent
            model=spec.model,
            voice=spec.voice,
            language=spec.language,
            prompt=spec.prompt,
            greeting=spec.greeting,
            tools=resolved,
            transfer_allow=spec.transfer_allow,
            turn=TurnDetection(**spec.turn.model_dump()),
            max_duration_s=spec.max_duration_s,
            recording=spec.recording,
            codecs=spec.codecs,
            temperature=spec.temperature,
            timezone=spec.timezone or timezone,
            api_key=spec.api_key,
            base_url=spec.base_url,
            ca_file=spec.ca_file,
            local_mode=spec.local.mode,  # type: ignore[arg-type]  # checked by Agent
            options=spec.options,
            tool_timeout_s=spec.tool_timeout_s,
            filler_after_ms=spec.filler_after_ms,
            srtp=spec.srtp,
            barge_in=BargeIn(**spec.barge_in.model_dump()),  # mode checked by Agent
            transfer_timeout_s=spec.transfer_timeout_s,
            transfer_briefing=spec.transfer_briefing,
            transfer_hold=spec.transfer_hold,
            amd=amd,
            stall_timeout_ms=spec.stall_timeout_ms,
            handoff_allow=spec.handoff_allow,
            provider_options=provider_options,
            memory=MemorySettings(**spec.memory.model_dump())  # scope checked by Agent
            if spec.memory is not None
            else MemorySettings(),
        ),
    )


def _route(
    doc: Document,
    index: int,
    spec: RouteModel,
    agents: Mapping[str, Agent],
    trunks: Mapping[str, tuple[str, ...]],
) -> Route:
    path: Path = ("routes", index)
    action = _action(doc, path, spec, agents)
    match = _match(doc, (*path, "match"), spec.match, trunks)
    dtmf = {
        key: at(doc, (*path, "dtmf", key), partial(_dtmf_action, value))
        for key, value in spec.dtmf.items()
    }
    name = spec.name or f"route{index + 1}"
    return at(doc, path, lambda: Route(name, action, match, dtmf))


def _action(doc: Document, path: Path, spec: RouteModel, agents: Mapping[str, Agent]) -> Action:
    given = [k for k in ("answer", "reject", "transfer") if getattr(spec, k) is not None]
    if len(given) != 1:
        found = f" (found {', '.join(given)})" if given else ""
        raise doc.error(path, f"a route needs exactly one of answer, reject, transfer{found}")
    if spec.answer is not None:
        agent = agents.get(spec.answer)
        if agent is None:
            hint = did_you_mean(spec.answer, agents)
            known = ", ".join(agents) or "none defined"
            message = f"unknown agent {spec.answer!r}{hint} (agents: {known})"
            raise doc.error((*path, "answer"), message)
        return Answer(agent)
    if spec.transfer is not None:
        uri = at(doc, (*path, "transfer"), partial(check_uri, spec.transfer))
        return Transfer(uri)
    return at(doc, (*path, "reject"), lambda: _reject(spec.reject))


def _reject(value: Any) -> Reject:
    if isinstance(value, bool):
        raise ConfigError("reject takes a SIP status (e.g. 486) or {status, reason}")
    if isinstance(value, int):
        return Reject(_status(value))
    if isinstance(value, dict) and set(value) <= {"status", "reason"} and "status" in value:
        status, reason = value["status"], value.get("reason") or ""
        if isinstance(status, int) and not isinstance(status, bool) and isinstance(reason, str):
            if any(c in reason for c in "\r\n"):
                raise ConfigError("a reason phrase is one line", field="reason")
            return Reject(with_field("status", _status, status), reason)
    raise ConfigError("reject takes a SIP status (e.g. 486) or {status, reason}")


def _status(status: int) -> int:
    if not 400 <= status <= 699:
        raise ConfigError(f"reject status must be 400-699, not {status}")
    return status


def _dtmf_action(value: Any) -> DtmfAction:
    if value == "hang_up" or value == {"hang_up": True}:
        return HangUp()
    if (
        isinstance(value, dict)
        and set(value) == {"transfer"}
        and isinstance(value["transfer"], str)
    ):
        return Transfer(value["transfer"])
    raise ConfigError("a DTMF action is hang_up or {transfer: URI}")


def _match(
    doc: Document, path: Path, spec: MatchModel, trunks: Mapping[str, tuple[str, ...]]
) -> Match:
    source: Any = spec.source
    if spec.trunk is not None:
        if spec.source is not None:
            raise doc.error((*path, "trunk"), "use either trunk or source, not both")
        if spec.trunk not in trunks:
            hint = did_you_mean(spec.trunk, trunks)
            known = ", ".join(trunks) or "none defined"
            raise doc.error(
                (*path, "trunk"), f"unknown trunk {spec.trunk!r}{hint} (trunks: {known})"
            )
        source = trunks[spec.trunk]
    if isinstance(source, str):
        source = [source]

    def text(where: Path, value: Any) -> Any:
        return at(doc, (*path, *where), partial(text_condition, value))

    headers = {k: text(("headers", k), v) for k, v in spec.headers.items()}
    return at(
        doc,
        path,
        lambda: Match(
            did=text(("did",), spec.did),
            caller=text(("caller",), spec.caller),
            display_name=text(("display_name",), spec.display_name),
            source=[] if source is None else [_text(s) for s in source],
            trunk=spec.trunk,
            headers=headers,
            days=spec.days or (),
            hours=spec.hours or (),
            dates=[_text(d) if not hasattr(d, "isoformat") else d for d in spec.dates],
            timezone=spec.timezone,
        ),
    )


def text_condition(value: Any) -> tuple[TextMatcher, ...] | None:
    """YAML text condition → matchers: ``"100"``, ``{prefix: "2"}``, ``{regex: ...}``, a list.

    Raises:
        ConfigError: anything else.
    """
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    out: list[TextMatcher] = []
    for item in items:
        if isinstance(item, dict) and len(item) == 1:
            ((kind, text),) = item.items()
            makers: dict[str, Callable[[str], TextMatcher]] = {
                "exact": Exact,
                "prefix": Prefix,
                "regex": Regex,
            }
            if kind in makers and _is_text(text):
                out.append(makers[kind](_text(text)))
                continue
        elif _is_text(item):
            out.append(Exact(_text(item)))
            continue
        raise ConfigError(
            "expected a value, {prefix: ...}, {regex: ...}, {exact: ...} or a list of them"
        )
    return tuple(out)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _text(value: Any) -> str:
    """A scalar as the text it was written as (``+4930`` stays ``+4930``, not 4930)."""
    written = source_text(value)
    return written if written is not None else str(value)
