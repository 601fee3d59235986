"""sipbot: answer phone calls with a realtime speech-to-speech AI.

Commands: ``run`` (the server), ``call`` (a test caller), ``check`` (validate a config and print
its routing table), ``route`` (which route and agent a call would get), ``calls`` (list, show,
export and erase call records), ``emulate`` (offline Gemini Live / OpenAI Realtime servers).
Exit codes: 0 success, 1 failure, 2 bad usage, an invalid config file (one line naming file,
line and field) or a records database that cannot be opened at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any

from sipbot.errors import ConfigError

log = logging.getLogger("sipbot")

EXIT_FAILURE = 1
EXIT_USAGE = 2


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
    run.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")


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
    rt = commands.add_parser("route", help="show which route and agent a call would get")
    rt.add_argument("-c", "--config", metavar="FILE", help="YAML config (default: embedded)")
    rt.add_argument("--did", default="", help="the called number")
    rt.add_argument("--caller", default="", help="the caller's number (From user)")
    rt.add_argument("--display-name", default="")
    rt.add_argument("--source-ip", default="127.0.0.1", metavar="IP")
    rt.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    rt.add_argument("--at", metavar="ISO-TIME", help="route as if at this time (with offset)")


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
    parser = argparse.ArgumentParser(prog="sipbot", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands)
    _call_parser(commands)
    _check_route_parsers(commands)
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
        from sipbot.commands import check_command

        return check_command(args.config, sys.stdout, sys.stderr)
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
    return run_config(config, options, log_level=args.log_level)


def run_config(config: Any, options: Any = None, *, log_level: str | None = None) -> int:
    """Run a server for a loaded :class:`~sipbot.config.Config` until SIGTERM/SIGINT."""
    _logging(log_level or config.server.log_level)
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
    except ValueError as exc:
        raise ConfigError(str(exc), field="command line") from None
    server = config.server.model_copy(update={"sip": sip, "media": media})
    return replace(config, server=server)


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


def _logging(level: str | None) -> None:
    logging.basicConfig(
        level=getattr(logging, str(level or "info").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
