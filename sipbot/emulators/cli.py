"""``sipbot emulate gemini|openai``: run a provider emulator until interrupted.

Usage (``argv`` is what follows ``emulate``)::

    sipbot emulate gemini --port 8443 [--host 127.0.0.1] [--script FILE.yaml|json]
                          [--set FIELD=VALUE ...] [--record FILE.jsonl]

Once listening it prints one line on stderr — ``emulator ready URL`` (for Gemini followed by
``ca_file=PATH``, the certificate to trust) — and serves until SIGINT or SIGTERM. ``--set``
overrides one script field with a YAML value (``--set reply=tone --set speed=0``).
Exit codes: 0 after a signal, 1 for a bad script or an unusable address, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import IO, Any

import yaml

from sipbot.emulators.common import EmulatorServer
from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript, load_script, script_from_mapping
from sipbot.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipbot emulate", description="Run a Gemini Live or OpenAI Realtime emulator."
    )
    parser.add_argument("provider", choices=("gemini", "openai"))
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--script", help="behaviour script (YAML or JSON)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one script field (VALUE is YAML)",
    )
    parser.add_argument("--record", help="append every frame to this JSONL file")
    return parser


def build_script(path: str | None, overrides: Sequence[str]) -> EmulatorScript:
    """The script from ``path`` (or the defaults) with ``FIELD=VALUE`` overrides applied.

    Raises:
        ConfigError: the file or an override is invalid.
    """
    script = load_script(path) if path else EmulatorScript()
    if not overrides:
        return script
    values: dict[str, Any] = asdict(script)
    values["api_keys"] = sorted(script.api_keys)
    values["tool_calls"] = [asdict(rule) for rule in script.tool_calls]
    values["reply_faults"] = [asdict(fault) for fault in script.reply_faults]
    for override in overrides:
        field, sep, text = override.partition("=")
        if not sep or not field:
            raise ConfigError(f"expected FIELD=VALUE, got {override!r}", field="--set")
        try:
            values[field.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not a YAML value: {exc}", field=field.strip()) from None
    return script_from_mapping(values, file="--set")


async def serve(emulator: EmulatorServer, out: IO[str]) -> None:
    """Start ``emulator``, announce it on ``out`` and serve until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await emulator.start()
        line = f"emulator ready {emulator.base_url}"
        if isinstance(emulator, GeminiEmulator):
            line += f" ca_file={emulator.ca_file}"
        print(line, file=out, flush=True)
        await stop.wait()
    finally:
        await emulator.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sipbot emulate``; ``argv`` are the arguments after ``emulate``."""
    args = _parser().parse_args(argv)
    try:
        script = build_script(args.script, args.set)
    except ConfigError as exc:
        print(f"sipbot emulate: {exc}", file=sys.stderr)
        return 1
    recording = open(args.record, "a", encoding="utf-8") if args.record else None  # noqa: SIM115
    with recording if recording is not None else contextlib.nullcontext():
        kind = GeminiEmulator if args.provider == "gemini" else OpenAIEmulator
        # A long-running emulator keeps no frames in memory: --record is the way to see them.
        emulator = kind(script, host=args.host, port=args.port, record=recording, keep_frames=False)
        try:
            asyncio.run(serve(emulator, sys.stderr))
        except OSError as exc:
            where = f"{args.host}:{args.port}"
            print(f"sipbot emulate: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
