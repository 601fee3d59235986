"""A dialplan written in Python instead of YAML, served with ``sipbot.serve``.

Run it from the repository root (the Gemini agent needs ``GEMINI_API_KEY``)::

    GEMINI_API_KEY=... python -m examples.serve_in_code

The objects are the same ones a YAML dialplan loads into (``Agent``, ``Route``, ``Match``,
``Dialplan``), so everything ``sipbot check`` verifies in a file is verified here when the
objects are made: a bad regex, URI, timezone or prompt placeholder raises ``ConfigError``.
"""

from __future__ import annotations

import os

from examples.tools import lookup_order
from sipbot.dialplan import Agent, Answer, Dialplan, HangUp, Match, Prefix, Reject, Route, Transfer
from sipbot.tools import ToolContext, tool


@tool
async def opening_hours(day: str, context: ToolContext) -> str:
    """Tell the caller when the shop is open.

    Args:
        day: the weekday the caller asks about, e.g. Saturday.
    """
    closed = day.strip().lower() in ("sunday", "sun")
    return f"closed on {day}" if closed else f"open 9:00-18:00 on {day}"


def build_dialplan() -> Dialplan:
    """Two numbers, two agents; a blocked prefix; everything else gets the echo test."""
    shop = Agent(
        "shop",
        provider="gemini",
        model="gemini-live-2.5-flash-native-audio",
        voice="Kore",
        prompt="You answer the phone for a bike shop. The caller is {caller}. It is {weekday}.",
        greeting="Hello, bike shop, how can I help?",
        tools=[lookup_order, opening_hours, "transfer_call", "hang_up"],
        transfer_allow=["sip:*@pbx.example.com"],
        timezone="Europe/Berlin",
        api_key=os.environ.get("GEMINI_API_KEY"),
    )
    echo = Agent("echo", provider="local", local_mode="echo")
    return Dialplan(
        [
            Route("spam", Reject(403), Match(caller=Prefix("+1900"))),
            Route(
                "shop",
                Answer(shop),
                Match(did=["100", "+4930123456100"]),
                dtmf={"0": Transfer("sip:staff@pbx.example.com"), "#": HangUp()},
            ),
            Route("echo-test", Answer(echo), Match(did="600")),
            Route("default", Answer(echo)),
        ],
        timezone="Europe/Berlin",
    )


def main() -> int:
    """Serve the dialplan on loopback (``sipbot.serve`` returns the exit code)."""
    from sipbot import serve

    return int(serve(build_dialplan(), listen=["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]))


if __name__ == "__main__":
    raise SystemExit(main())
