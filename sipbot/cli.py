"""The ``sipbot`` command line (a first, minimal version: ``sipbot run``).

``sipbot run [--listen [udp:|tcp:]HOST:PORT ...] [--public-address A] [--answer-after S]
[--hangup-after S]`` binds the listeners,
prints ``sipbot ready udp:H:P tcp:H:P`` on stderr once bound, answers calls until SIGTERM or
SIGINT, then BYEs every call and exits 0. A listen address without a transport binds UDP and
TCP on the same port (port 0: any free port, the same for both when possible).

Exit codes: 0 clean shutdown, 2 bad arguments or an address that cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sipbot.server import Server
from sipbot.sip.ua import SipSettings

log = logging.getLogger("sipbot")

DEFAULT_LISTEN = "127.0.0.1:5060"


def parse_listen(text: str) -> tuple[str | None, str, int]:
    """``[udp:|tcp:]HOST:PORT`` (IPv6 as ``[::1]:5060``) → (transport or None, host, port).

    Raises:
        ValueError: malformed.
    """
    transport = None
    for prefix in ("udp:", "tcp:"):
        if text.lower().startswith(prefix):
            transport, text = prefix[:-1], text[len(prefix) :]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"--listen wants [udp:|tcp:]HOST:PORT, not {text!r}")
    return transport, host, int(port_text)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sipbot", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="answer calls")
    run.add_argument(
        "--listen",
        action="append",
        metavar="[udp:|tcp:]HOST:PORT",
        help=f"where to listen (repeatable; default {DEFAULT_LISTEN}, UDP and TCP)",
    )
    run.add_argument("--public-address", help='"host" or "host:port" to advertise')
    run.add_argument(
        "--answer-after", type=float, default=0.0, metavar="S", help="ring S seconds first"
    )
    run.add_argument(
        "--hangup-after", type=float, metavar="S", help="send BYE S seconds after the ACK"
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    return parser.parse_args(argv)


async def _bind(server: Server, listens: list[tuple[str | None, str, int]]) -> None:
    """Bind each listener; a transport-less one binds UDP then TCP on UDP's port."""
    for transport, host, port in listens:
        if transport is not None:
            await server.ua.listen(transport, host, port)
            continue
        udp = await server.ua.listen("udp", host, port)
        try:
            await server.ua.listen("tcp", host, udp[2])
        except OSError:
            await server.ua.listen("tcp", host, port)  # port 0: TCP's own free port


async def _run(args: argparse.Namespace) -> int:
    try:
        listens = [parse_listen(text) for text in args.listen or [DEFAULT_LISTEN]]
    except ValueError as exc:
        print(f"sipbot: {exc}", file=sys.stderr)
        return 2
    settings = SipSettings(listen=(), public_address=args.public_address)
    server = Server(settings, answer_after=args.answer_after, hangup_after=args.hangup_after)
    await server.start()
    try:
        await _bind(server, listens)
    except OSError as exc:
        print(f"sipbot: cannot listen: {exc}", file=sys.stderr)
        await server.close(0.1)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = " ".join(f"{t}:{h}:{p}" for t, h, p in server.bound)
    print(f"sipbot ready {ready}", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("shutting down: ending %d call(s)", len(server.ua.calls))
    await server.close()
    return 0


def _runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run

    def run(coro: Coroutine[Any, Any, int]) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipbot`` console script; returns the exit code."""
    args = _arguments(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        return _runner()(_run(args))
    return 0
