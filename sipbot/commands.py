"""``sipbot check`` and ``sipbot route``: validate a config and show what a call would get.

Both print to the streams they are given and return the process exit code: 0 on success,
2 when the config is invalid (its one-line error is printed to ``err``). ``sipbot route``
reads no database unless asked to (``memory=True``: the caller's earlier calls, as the call's
prompt would get them); then 1 when the records cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, TextIO

from sipbot.config import Config, load_config
from sipbot.dialplan.agent import Agent
from sipbot.dialplan.model import NOT_FOUND, Answer, Route, RouteRequest, route
from sipbot.dialplan.options import ProviderOptions
from sipbot.dialplan.trunks import Trunk, trunk_for_source
from sipbot.domain import CallInfo, SessionConfig
from sipbot.errors import ConfigError, RecordsUnavailable, SipParseError
from sipbot.memory import caller_key, memory_note, window_start, with_memory
from sipbot.sip.address import parse_name_addr, parse_uri

EXIT_OK = 0
EXIT_RECORDS = 1  # route --memory: the records could not be read
EXIT_CONFIG = 2
TYPED_OPTIONS = ("gemini", "openai")  # the providers with a typed options block


def _load(path: str | None, err: TextIO, environ: Mapping[str, str] | None = None) -> Config | None:
    try:
        return load_config(path, environ=environ)
    except ConfigError as exc:
        print(exc, file=err)
        return None


def check_command(
    path: str | None,
    out: TextIO,
    err: TextIO | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Validate the config at ``path`` (None: the embedded default), print its warnings and
    routing table. Returns 0, or 2 for an invalid config. ``environ``: where ``${VAR}``s are
    looked up (default ``os.environ``)."""
    config = _load(path, err or out, environ)
    if config is None:
        return EXIT_CONFIG
    for warning in config.warnings:
        print(warning, file=out)
    print(f"{config.source}: OK", file=out)
    sip, media = config.server.sip, config.server.media
    listen = ", ".join(str(a) for a in sip.listen)
    rtp = f"{media.rtp_ports[0]}-{media.rtp_ports[1]}"
    print(f"server: listen {listen}; rtp ports {rtp}; codecs {', '.join(media.codecs)}", file=out)
    dialplan = config.dialplan
    print("agents:", file=out)
    width = max((len(name) for name in dialplan.agents), default=0)
    for name, agent in dialplan.agents.items():
        print(f"  {name:<{width}}  {describe_agent(agent)}", file=out)
    if dialplan.trunks:
        print("trunks:", file=out)
        width = max(len(name) for name in dialplan.trunks)
        for name, trunk in dialplan.trunks.items():
            print(f"  {name:<{width}}  {describe_trunk(trunk)}", file=out)
    print(f"routes (first match wins; timezone {dialplan.timezone}):", file=out)
    print(routing_table(dialplan.routes), file=out)
    return EXIT_OK


def describe_agent(agent: Agent) -> str:
    """``gemini model=... voice=... tools: a, b``, one line."""
    parts: list[str] = [agent.provider]
    if agent.provider == "local":
        parts.append(f"mode={agent.local_mode}")
    for key in ("model", "voice", "language"):
        value = getattr(agent, key)
        if value:
            parts.append(f"{key}={value}")
    if agent.resolved_tools:
        parts.append("tools: " + ", ".join(t.spec.name for t in agent.resolved_tools))
    if agent.transfer_allow:
        parts.append("transfer to: " + ", ".join(agent.transfer_allow))
    return "  ".join(parts)


def describe_options(block: ProviderOptions | None) -> str:
    """``eagerness=low  noise_reduction=near_field``: the keys a ``gemini:`` / ``openai:``
    block sets, one line; ``(none set: the provider's defaults)`` without any."""
    parts = []
    if block is not None:
        for item in fields(block):
            value = getattr(block, item.name)
            if value is not None:
                shown = str(value).lower() if isinstance(value, bool) else value
                parts.append(f"{item.name}={shown}")
    return "  ".join(parts) or "(none set: the provider's defaults)"


def describe_memory(agent: Agent, records: bool) -> str:
    """``on  days=30  max_calls=3  max_chars=600  scope=agent``, or ``off``; ``records``:
    whether the server keeps call records (memory needs them)."""
    settings = agent.memory
    if not settings.enabled:
        return "off"
    line = (
        f"on  days={settings.days}  max_calls={settings.max_calls}  "
        f"max_chars={settings.max_chars}  scope={settings.scope}"
    )
    return line if records else f"{line}  (server.records is off: nothing is remembered)"


def describe_trunk(trunk: Trunk) -> str:
    """``registers bot@pbx.example.com at sip:pbx... ; source 192.0.2.10; DID from X``."""
    parts = []
    reg = trunk.registration
    if reg is not None:
        parts.append(f"registers {reg.user}@{reg.domain} at {', '.join(reg.registrars)}")
    if trunk.source:
        parts.append("source " + ", ".join(trunk.source))
    if trunk.did_header:
        parts.append(f"DID from {trunk.did_header}")
    return "; ".join(parts)


def _header(headers: Mapping[str, str], name: str | None) -> str | None:
    if not name:
        return None
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _uri_user(value: str) -> str | None:
    try:
        return parse_uri(parse_name_addr(value.split(",")[0]).uri).user
    except SipParseError:
        return None


def routing_table(routes: Sequence[Route]) -> str:
    """The routes, one per line, numbered, with the unmatched-call row last."""
    rows = [(f"{i + 1}.", r.name, str(r.match), str(r.action)) for i, r in enumerate(routes)]
    rows.append(("", "(no match)", "", str(NOT_FOUND)))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    lines = []
    for number, name, match, action in rows:
        line = f"  {number:>{widths[0]}} {name:<{widths[1]}}  {match:<{widths[2]}}  → {action}"
        lines.append(line)
    for index, r in enumerate(routes):
        for key, dtmf_action in r.dtmf.items():
            lines.append(f"  route {index + 1} DTMF {key} → {dtmf_action}")
    return "\n".join(lines)


def route_command(
    path: str | None,
    did: str,
    caller: str,
    headers: Mapping[str, str],
    source_ip: str,
    out: TextIO,
    *,
    display_name: str = "",
    now: datetime | None = None,
    err: TextIO | None = None,
    trunk: str | None = None,
    memory: bool = False,
) -> int:
    """Show which route and agent a call would get (``sipbot route --did 100 --caller 555``):
    the agent, its provider options block and its fallback's, its memory settings, its prompt.

    Args:
        now: the moment to route at (aware); default: the current time.
        trunk: route as if the call came through this trunk (a registration's calls come
            from the registrar); default: the trunk whose allow-list holds ``source_ip``.
        memory: read the caller's earlier calls from the records database, as a call's
            lookup would (the agent's memory on), and show them in the prompt. Without it
            nothing is read.

    Returns 0; 1 when ``memory`` asked for records that cannot be read; 2 for an invalid
    config or an unknown trunk.
    """
    config = _load(path, err or out)
    if config is None:
        return EXIT_CONFIG
    trunks = config.dialplan.trunks
    if trunk is not None and trunk not in trunks:
        known = ", ".join(trunks) or "none defined"
        print(f"unknown trunk {trunk!r} (trunks: {known})", file=err or out)
        return EXIT_CONFIG
    if trunk is None:
        found = trunk_for_source(list(trunks.values()), source_ip)
        trunk = found.name if found is not None else ""
    if trunk:
        through = trunks[trunk]
        print(f"trunk: {trunk}  {describe_trunk(through)}", file=out)
        carried = _header(headers, through.did_header)
        if carried:
            did = _uri_user(carried) or did
    when = now or datetime.now(UTC)
    request = RouteRequest(did, caller, display_name, source_ip, dict(headers), when, trunk)
    decision = route(config.dialplan, request)
    if decision.route is None:
        print("route: (none matched)", file=out)
    else:
        index = config.dialplan.routes.index(decision.route)
        print(f"route: {decision.route_name} (routes[{index}]: {decision.route.match})", file=out)
    print(f"action: {decision.action}", file=out)
    code = EXIT_OK
    if isinstance(decision.action, Answer):
        agent = decision.action.agent
        print(f"agent: {agent.name}  {describe_agent(agent)}", file=out)
        if agent.provider in TYPED_OPTIONS:
            print(f"{agent.provider}: {describe_options(agent.provider_options)}", file=out)
        fallback = agent.fallback
        if fallback is not None:
            print(f"fallback: {describe_agent(fallback)}", file=out)
            block = describe_options(fallback.provider_options)
            print(f"fallback {fallback.provider}: {block}", file=out)
        records = config.server.records.enabled
        print(f"memory: {describe_memory(agent, records)}", file=out)
        info = CallInfo("(route)", caller, did, display_name, dict(headers))
        session = agent.session_config(info, when)
        if memory:
            session, code = _remembered(config, agent, info, session, when, out, err or out)
        if session.instructions:
            print(f"prompt: {session.instructions.rstrip()}", file=out)
        if session.greeting:
            print(f"greeting: {session.greeting}", file=out)
    for key, dtmf_action in decision.dtmf.items():
        print(f"dtmf {key}: {dtmf_action}", file=out)
    return code


def _remembered(
    config: Config,
    agent: Agent,
    info: CallInfo,
    session: SessionConfig,
    when: datetime,
    out: TextIO,
    err: TextIO,
) -> tuple[SessionConfig, int]:
    """``route --memory``: ``session`` with the caller's earlier calls, read as a call's
    lookup reads them (:mod:`sipbot.memory`), and the exit code."""
    settings = agent.memory
    key = caller_key(info.caller)
    if not settings.enabled or not config.server.records.enabled:
        return session, EXIT_OK  # the memory line said why nothing is looked up
    if key is None:
        print(f"memory lookup: caller {info.caller!r} is anonymous: never remembered", file=out)
        return session, EXIT_OK
    try:
        rows = _earlier_calls(config, agent, key, when.timestamp())
    except Exception as exc:  # any database error: the call would go on without memory
        print(f"memory lookup: cannot read the records: {exc}", file=err)
        return session, EXIT_RECORDS
    now = when.timestamp()
    zone, chars = agent.zone, settings.max_chars
    note = memory_note(rows, now=now, days=settings.days, zone=zone, max_chars=chars)
    print(f"memory lookup: {len(rows)} earlier calls of caller {key}", file=out)
    return with_memory(session, note), EXIT_OK


def _earlier_calls(config: Config, agent: Agent, key: str, now: float) -> list[dict[str, Any]]:
    """The caller's earlier calls per ``agent``'s memory, from the config's records database
    (read only: a missing SQLite file is not created).

    Raises:
        ConfigError: the records URL names no supported database.
        RecordsUnavailable: there is no SQLite file (none is created).
        Exception: the database driver's error (it cannot be read).
    """
    from sipbot.records import default_data_dir, open_store

    server = config.server
    store = open_store(server.records.url, server.data_dir or default_data_dir())
    path = getattr(store, "path", None)
    if path is not None and not os.path.exists(path):
        raise RecordsUnavailable(f"no records database at {store.label}")
    settings = agent.memory
    scope = agent.name if settings.scope == "agent" else None
    try:
        since = window_start(now, settings.days)
        return store.recent_calls(key, since, settings.max_calls, scope)
    finally:
        store.close()
