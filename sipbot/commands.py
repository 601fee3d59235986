"""``sipbot check`` and ``sipbot route``: validate a config and show what a call would get.

Both print to the streams they are given and return the process exit code: 0 on success,
2 when the config is invalid (its one-line error is printed to ``err``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

from sipbot.config import Config, load_config
from sipbot.dialplan.agent import Agent
from sipbot.dialplan.model import NOT_FOUND, Answer, Route, RouteRequest, route
from sipbot.dialplan.trunks import Trunk, trunk_for_source
from sipbot.domain import CallInfo
from sipbot.errors import ConfigError, SipParseError
from sipbot.sip.address import parse_name_addr, parse_uri

EXIT_OK = 0
EXIT_CONFIG = 2


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
) -> int:
    """Show which route and agent a call would get (``sipbot route --did 100 --caller 555``).

    Args:
        now: the moment to route at (aware); default: the current time.
        trunk: route as if the call came through this trunk (a registration's calls come
            from the registrar); default: the trunk whose allow-list holds ``source_ip``.

    Returns 0, or 2 for an invalid config or an unknown trunk.
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
    if isinstance(decision.action, Answer):
        agent = decision.action.agent
        print(f"agent: {agent.name}  {describe_agent(agent)}", file=out)
        info = CallInfo("(route)", caller, did, display_name, dict(headers))
        session = agent.session_config(info, when)
        if session.instructions:
            print(f"prompt: {session.instructions.rstrip()}", file=out)
        if session.greeting:
            print(f"greeting: {session.greeting}", file=out)
    for key, dtmf_action in decision.dtmf.items():
        print(f"dtmf {key}: {dtmf_action}", file=out)
    return EXIT_OK
