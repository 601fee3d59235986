"""sipbot: answer phone calls with a realtime speech-to-speech AI.

Commands: ``run`` (the server), ``call`` (a test caller), ``check`` (validate a config and print
its routing table), ``route`` (which route and agent a call would get), ``calls`` (list, show,
export and erase call records), ``status``, ``drain`` and ``dial`` (ask a running server through
its HTTP listener; ``dial`` places an outbound call), ``emulate`` (offline Gemini Live / OpenAI
Realtime servers).
Exit codes: 0 success, 1 failure, 2 bad usage, an invalid config file (one line naming file,
line and field) or a records database that cannot be opened at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any

from sipbot.errors import ConfigError

log = logging.getLogger("sipbot")

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_HTTP_URL = "http://127.0.0.1:8089"
MAX_UNSET_VARIABLES = 100  # sipbot check: placeholders tried before giving up
_UNSET_RE = re.compile(r"environment variable ([A-Za-z_][A-Za-z0-9_]*) is not set")


def _run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="answer calls (the server)")
    run.add_argument("-c", "--config", metavar="FILE", help="YAML config (default: embedded)")
    run.add_argument(
        "--listen",
        action="append",
        metavar="[udp:|tcp:]HOST:PORT",
        help="where to listen, replacing the config's list (repeatable; HOST:PORT = UDP and TCP)",
    )
    run.add_argument("--public-address", metavar="HOST[:PORT]", help="advertised address")
    run.add_argument("--rtp-ports", metavar="MIN-MAX", help="RTP port range")
    run.add_argument(
        "--local-mode", choices=("echo", "loopback"), help="mode of every local-provider agent"
    )
    run.add_argument(
        "--answer-after",
        type=float,
        default=0.0,
        metavar="S",
        help="ring (180) for S seconds before answering",
    )
    run.add_argument(
        "--max-duration",
        type=float,
        metavar="S",
        help="end every call after S seconds (overrides agents' max_duration_s)",
    )
    run.add_argument(
        "--http",
        metavar="HOST:PORT|off",
        help="the HTTP side listener (metrics, health, status, live calls), or off",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        help="on SIGTERM let calls finish for up to S seconds (limits.drain_timeout_s)",
    )
    run.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    run.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="json: one object a line"
    )


def _ops_parsers(commands: Any) -> None:
    for name, text in (
        ("status", "show a running server's calls, drain state and refusals"),
        ("drain", "ask a running server to drain (stop admitting, end calls after the timeout)"),
        ("dial", "have a running server call out: prints the call id"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--url",
            default=DEFAULT_HTTP_URL,
            help=f"its HTTP listener (default {DEFAULT_HTTP_URL})",
        )
        sub.add_argument(
            "--token", help="bearer token (default: the SIPBOT_HTTP_TOKEN environment variable)"
        )
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print the raw JSON")
        if name == "dial":
            _dial_arguments(sub)


def _dial_arguments(dial: argparse.ArgumentParser) -> None:
    dial.add_argument("to", help="whom to call: a sip:/sips: URI, or a number for the trunk")
    dial.add_argument("--agent", required=True, metavar="NAME", help="the agent that talks")
    dial.add_argument("--trunk", metavar="NAME", help="place the call through this trunk")
    dial.add_argument("--caller-id", metavar="NUM", help="our number (From, P-Asserted-Identity)")
    dial.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable of the agent's prompt (repeatable)",
    )
    dial.add_argument(
        "--amd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answering-machine detection on/off (default: the agent's setting)",
    )
    dial.add_argument(
        "--ring-timeout",
        type=float,
        metavar="S",
        help="give up (CANCEL) after S seconds of ringing",
    )
    dial.add_argument(
        "--status-callback", metavar="URL", help="POST every state change of the call here"
    )
    dial.add_argument(
        "--wait",
        action="store_true",
        help="print each state until the call ends; exit 1 if busy, unanswered, rejected, failed",
    )


def dial_request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /calls`` body of ``sipbot dial``'s arguments (unset options left out).

    Raises:
        ValueError: a ``--var`` is not ``NAME=VALUE``, or ``--ring-timeout`` is not positive.
    """
    variables: dict[str, str] = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--var needs NAME=VALUE, not {item!r}")
        variables[name.strip()] = value
    if args.ring_timeout is not None and args.ring_timeout <= 0:
        raise ValueError(f"--ring-timeout must be > 0, not {args.ring_timeout:g}")
    fields: dict[str, Any] = {"to": args.to, "agent": args.agent}
    optional = {
        "trunk": args.trunk,
        "caller_id": args.caller_id,
        "variables": variables or None,
        "amd": args.amd,
        "ring_timeout_s": args.ring_timeout,
        "status_callback": args.status_callback,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields


def _call_parser(commands: Any) -> None:
    call = commands.add_parser("call", help="place a test call (plays and records audio)")
    call.add_argument("uri", help="whom to call, e.g. sip:bot@127.0.0.1:5060")
    call.add_argument("--play", metavar="WAV", help="send this audio (any rate, 16-bit)")
    call.add_argument("--record", metavar="WAV", help="write what the far end sent")
    call.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="S",
        help="hang up after S seconds (default 10)",
    )
    call.add_argument("--codec", choices=("pcmu", "pcma", "g722"), default="pcmu")
    call.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    call.add_argument("--bind", default="127.0.0.1", metavar="HOST", help="local address")
    call.add_argument("--from-user", default="sipbot", metavar="USER")
    call.add_argument("--dtmf", metavar="DIGITS", help="send these digits 1 s into the call")
    call.add_argument("--log-level", metavar="LEVEL", default="warning")


def _check_route_parsers(commands: Any) -> None:
    check = commands.add_parser("check", help="validate a config file, print its routing table")
    check.add_argument("-c", "--config", metavar="FILE", help="YAML config (default: embedded)")
    check.add_argument(
        "--strict", action="store_true", help="unset ${VAR}s are errors, not warnings"
    )
    rt = commands.add_parser("route", help="show which route and agent a call would get")
    rt.add_argument("-c", "--config", metavar="FILE", help="YAML config (default: embedded)")
    rt.add_argument("--did", default="", help="the called number")
    rt.add_argument("--caller", default="", help="the caller's number (From user)")
    rt.add_argument("--display-name", default="")
    rt.add_argument("--source-ip", default="127.0.0.1", metavar="IP")
    rt.add_argument("--trunk", metavar="NAME", help="as if it came through this trunk")
    rt.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    rt.add_argument("--at", metavar="ISO-TIME", help="route as if at this time (with offset)")
    rt.add_argument(
        "--memory",
        action="store_true",
        help="read the caller's earlier calls from the records database (agent memory on)",
    )


def _calls_parser(commands: Any) -> None:
    calls = commands.add_parser("calls", help="call records: list, show, export, erase")
    actions = calls.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help)
        parser.add_argument("-c", "--config", metavar="FILE", help="YAML config (its records)")
        parser.add_argument("--url", help="records database URL (instead of the config's)")
        return parser

    action("list", "the newest records").add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N records (default 50)"
    )
    action("show", "one record with its transcript").add_argument("id", help="record id or prefix")
    action("export", "every record (JSON lines or CSV)").add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl"
    )
    action("erase", "delete every record of a caller").add_argument(
        "--caller", required=True, metavar="NUMBER", help="the caller (From user) to erase"
    )


def _parser() -> argparse.ArgumentParser:
    from sipbot.version import __version__

    parser = argparse.ArgumentParser(prog="sipbot", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"sipbot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands)
    _call_parser(commands)
    _check_route_parsers(commands)
    _ops_parsers(commands)
    _calls_parser(commands)
    commands.add_parser(
        "emulate", help="run a Gemini Live or OpenAI Realtime emulator", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipbot`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulate"]:
        from sipbot.emulators.cli import main as emulate_main

        return emulate_main(args_list[1:])
    args = _parser().parse_args(args_list)
    if args.command == "check":
        return _check(args)
    if args.command in ("status", "drain", "dial"):
        from sipbot.ops.client import dial_command, drain_command, status_command

        token = args.token or os.environ.get("SIPBOT_HTTP_TOKEN")
        if args.command == "dial":
            try:
                fields = dial_request_fields(args)
            except ValueError as exc:
                print(f"sipbot dial: {exc}", file=sys.stderr)
                return EXIT_USAGE
            return dial_command(args.url, token, fields, sys.stdout, sys.stderr, wait=args.wait)
        if args.command == "drain":
            return drain_command(args.url, token, sys.stdout, sys.stderr)
        return status_command(args.url, token, sys.stdout, sys.stderr, raw=args.json)
    if args.command == "route":
        return _route(args)
    if args.command == "calls":
        return _calls(args)
    if args.command == "call":
        _logging(args.log_level)
        from sipbot.caller import place_call

        return _run_async(
            place_call(
                args.uri,
                play=args.play,
                record=args.record,
                duration_s=args.duration,
                codec=args.codec,
                transport=args.transport,
                bind=args.bind,
                from_user=args.from_user,
                dtmf=args.dtmf,
            )
        )
    return _serve(args)


def _check(args: argparse.Namespace) -> int:
    """``sipbot check [--strict]``: unset ${VAR}s are warnings unless --strict.

    Without --strict, each variable the file needs (one without a ``:-default``) and the
    environment lacks is set to a placeholder ``unset-NAME`` for the check, and reported.
    """
    from sipbot.commands import check_command
    from sipbot.config import load_config

    if args.strict:
        return check_command(args.config, sys.stdout, sys.stderr)
    environ = dict(os.environ)
    missing: list[str] = []
    for _ in range(MAX_UNSET_VARIABLES):
        try:
            load_config(args.config, environ=environ)
        except ConfigError as exc:
            match = _UNSET_RE.search(str(exc))
            if match is None or match.group(1) in environ:
                break
            missing.append(match.group(1))
            environ[match.group(1)] = f"unset-{match.group(1)}"
            continue
        break
    code = check_command(args.config, sys.stdout, sys.stderr, environ=environ)
    for name in missing:
        print(
            f"{args.config or 'the default config'}: warning: environment variable {name} is not "
            "set (checked with a placeholder; --strict makes this an error)",
            file=sys.stdout,
        )
    return code


def _route(args: argparse.Namespace) -> int:
    from sipbot.commands import route_command

    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"sipbot route: --header needs NAME=VALUE, not {item!r}", file=sys.stderr)
            return EXIT_USAGE
        headers[name] = value
    now = None
    if args.at:
        try:
            now = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"sipbot route: --at needs an ISO time, not {args.at!r}", file=sys.stderr)
            return EXIT_USAGE
    return route_command(
        args.config,
        args.did,
        args.caller,
        headers,
        args.source_ip,
        sys.stdout,
        display_name=args.display_name,
        now=now,
        err=sys.stderr,
        trunk=args.trunk,
        memory=args.memory,
    )


def _calls(args: argparse.Namespace) -> int:
    from sipbot.config import load_config
    from sipbot.errors import RecordsError
    from sipbot.records import commands, default_data_dir, open_store

    try:
        server = load_config(args.config).server
        store = open_store(args.url or server.records.url, server.data_dir or default_data_dir())
        if getattr(store, "path", None) is not None and not _exists(store):
            print(f"sipbot calls: no records database at {store.label}", file=sys.stderr)
            return EXIT_FAILURE
        connect = getattr(store, "connect", None)
        if connect is not None:
            connect()
        store.migrate()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.action == "list":
            return commands.list_command(store, sys.stdout, args.limit)
        if args.action == "show":
            return commands.show_command(store, sys.stdout, sys.stderr, args.id)
        if args.action == "export":
            return commands.export_command(store, sys.stdout, args.format)
        return commands.erase_command(store, sys.stdout, args.caller)
    except RecordsError as exc:
        print(f"sipbot calls: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close()


def _exists(store: Any) -> bool:
    import os

    return os.path.exists(store.path)


def _serve(args: argparse.Namespace) -> int:
    from sipbot.config import load_config

    try:
        config = _apply_overrides(load_config(args.config), args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    from sipbot.server import RunOptions

    options = RunOptions(
        local_mode=args.local_mode, ring_s=args.answer_after, max_duration_s=args.max_duration
    )
    return run_config(config, options, log_level=args.log_level, log_format=args.log_format)


def run_config(
    config: Any, options: Any = None, *, log_level: str | None = None, log_format: str = "text"
) -> int:
    """Run a server for a loaded :class:`~sipbot.config.Config` until stopped.

    SIGTERM drains when ``limits.drain_timeout_s`` > 0 (new calls refused, calls up end after it
    with a goodbye); otherwise, on a second SIGTERM, or on SIGINT, every call ends at once.
    """
    _logging(log_level or config.server.log_level, log_format, config.server.log_sensitive)
    return _run_async(_run_server(config, options))


def _apply_overrides(config: Any, args: argparse.Namespace) -> Any:
    """``--listen`` / ``--public-address`` / ``--rtp-ports`` over the file's values."""
    from dataclasses import replace

    from sipbot.config import parse_listen_option, parse_port_range, parse_public_address

    sip, media = config.server.sip, config.server.media
    try:
        if args.listen:
            listen = tuple(a for text in args.listen for a in parse_listen_option(text))
            sip = sip.model_copy(update={"listen": listen})
        if args.public_address:
            sip = sip.model_copy(
                update={"public_address": parse_public_address(args.public_address)}
            )
        if args.rtp_ports:
            media = media.model_copy(update={"rtp_ports": parse_port_range(args.rtp_ports)})
        http, limits = config.server.http, config.server.limits
        if getattr(args, "http", None):
            http = _http_override(http, args.http)
        if getattr(args, "drain_timeout", None) is not None:
            if args.drain_timeout < 0:
                raise ValueError("--drain-timeout must be >= 0")
            limits = limits.model_copy(update={"drain_timeout_s": args.drain_timeout})
    except ValueError as exc:
        raise ConfigError(str(exc), field="command line") from None
    update = {"sip": sip, "media": media, "http": http, "limits": limits}
    server = config.server.model_copy(update=update)
    return replace(config, server=server)


def _http_override(http: Any, text: str) -> Any:
    """``--http HOST:PORT|off`` over ``server.http`` (validated again: a token rule)."""
    from pydantic import ValidationError

    from sipbot.config import HttpSettings

    data = http.model_dump()
    data["listen"] = text
    try:
        return HttpSettings.model_validate(data)
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"--http: {message}") from None


async def _run_server(config: Any, options: Any) -> int:
    from sipbot.server import Server

    try:
        server = Server(config, options)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        await server.start()
    except ConfigError as exc:  # the records database: checked first, nothing else is started
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"sipbot: cannot listen: {exc}", file=sys.stderr)
        await server.stop()
        return EXIT_FAILURE
    print(server.ready_line, file=sys.stderr, flush=True)
    if server.http is not None:
        print(f"sipbot http {server.http.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        if config.server.limits.drain_timeout_s <= 0 or not server.drain():
            stop.set()  # no drain configured, or a second SIGTERM: end every call at once

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    drained = loop.create_task(server.drained.wait())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({drained, stopping}, return_when=asyncio.FIRST_COMPLETED)
    drained.cancel()
    stopping.cancel()
    await server.stop()
    return 0


def _logging(level: str | None, log_format: str = "text", sensitive: bool = False) -> None:
    """Log to stderr at ``level``; other libraries' DEBUG lines only when ``sensitive``
    (``server.log_sensitive``): a websocket library logs each frame to and from the model at
    DEBUG, keypresses and tool results included (:mod:`sipbot.sensitive` Rule 5)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from sipbot.logjson import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    value = getattr(logging, str(level or "info").upper(), logging.INFO)
    logging.basicConfig(level=value if sensitive else max(value, logging.INFO), handlers=[handler])
    logging.getLogger("sipbot").setLevel(value)


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop (a dependency on Linux; the default loop elsewhere)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    else:
        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
    return EXIT_FAILURE
