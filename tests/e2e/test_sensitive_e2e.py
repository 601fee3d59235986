"""End to end: a card number typed on the keypad and passed by the model to a tool stays out of
the server's log, at every level, unless the operator opts in (:mod:`sipbot.sensitive`).

A real ``sipbot run -c FILE --log-level debug`` answers a SIPp caller who types a card number
as RFC 4733 DTMF (SIPp replays one event pcap per key) while it speaks; the OpenAI emulator,
behind the real SDK, calls two tools with the card number on the caller's turn: one echoes it in
its result, one refuses quoting it. As in ``test_hooks_e2e``, a transcript hook redacts card
numbers (the emulated agent's reply quotes the tool results). The model still gets every key and
both results; the log says that keys were pressed and which tools ran, by name; the SQLite call
record keeps the argument names, not the values. A second call with ``server.log_sensitive:
true`` shows the digits and values at DEBUG — the opt-in is what lets them through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sipbot.emulators.script import EmulatorScript, ToolCallRule
from sipbot.records import open_store
from sipbot.records.commands import rows_of
from sipbot.sensitive import REDACTED
from tests.e2e.calls import caller_turns
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, wait_until, write_dialplan
from tests.e2e.peers import sipp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

# A Luhn-valid test number whose digits never repeat within 9 keys: the receiver tells repeated
# events apart by RTP timestamp, and SIPp's pcap of a digit always carries the same one.
CARD = "4012537698401253"
KEY_GAP_MS = 180  # each pcap is 140 ms of events
RECORDS_TIMEOUT_S = 15.0
TOOLS_MODULE = """
from sipbot.errors import ToolError
from sipbot.tools import tool


@tool
async def charge_card(card_number: str, amount: str) -> dict[str, str]:
    \"\"\"Charge a card.

    Args:
        card_number: the card number.
        amount: how much.
    \"\"\"
    return {"status": "approved", "card_number": card_number, "amount": amount}


@tool
async def verify_card(card_number: str) -> str:
    \"\"\"Check a card.

    Args:
        card_number: the card number.
    \"\"\"
    raise ToolError(f"card {card_number} has expired")
"""
REDACT_MODULE = """
import re

CARD = re.compile(r"\\b\\d(?:[ -]?\\d){12,18}\\b")


def redact(event):
    return CARD.sub("[card]", event.text)
"""


def type_keys(scenario: Path, keys: str) -> None:
    """Make the scenario's one DTMF pcap replay ``keys``, one every KEY_GAP_MS."""
    text = scenario.read_text()
    one = re.search(
        r"[ \t]*<nop>\s*<action>\s*<exec play_pcap_audio=\"[^\"]+\"/>\s*</action>"
        r"\s*</nop>\n",
        text,
    )
    assert one, text
    plays = "".join(
        f'  <nop><action><exec play_pcap_audio="{sipp.dtmf_pcap(key)}"/></action></nop>\n'
        f'  <pause milliseconds="{KEY_GAP_MS}"/>\n'
        for key in keys
    )
    scenario.write_text(text[: one.start()] + plays + text[one.end() :])


def call(
    server_keys: dict[str, Any], sipbot_server: StartServer, tmp: Path, keys: str = CARD
) -> tuple[str, list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """One call that types ``keys``; returns the server log, the tool results and texts the
    model got, the records."""
    tmp.mkdir()
    (tmp / "pay_tools.py").write_text(TOOLS_MODULE)
    (tmp / "redact_cards.py").write_text(REDACT_MODULE)
    rules = (
        ToolCallRule("charge_card", {"card_number": CARD, "amount": "12.50"}),
        ToolCallRule("verify_card", {"card_number": CARD}),
    )
    script = EmulatorScript(tool_calls=rules, reply="tone", reply_ms=600, vad_silence_ms=300)
    url = f"sqlite:///{tmp}/records.sqlite3"
    with EmulatorThread("openai", script) as model:
        config = {
            "server": {"log_transcripts": True, "records": {"url": url}, **server_keys},
            "agents": {"pay": model.agent(tools=["charge_card", "verify_card"])},
            "tools": {
                "charge_card": {"python": "pay_tools:charge_card"},
                "verify_card": {"python": "pay_tools:verify_card"},
            },
            "routes": [{"answer": "pay"}],
            "hooks": [{"python": "redact_cards:redact", "events": ["transcript"]}],
        }
        path = write_dialplan(tmp / "pay.yaml", config)
        server = sipbot_server("-c", str(path), "--log-level", "debug", env=server_env())
        turn = caller_turns(tmp / "turn.ulaw", tail_ms=4000)
        scenario = sipp.uac_scenario(
            tmp / "uac.xml", turn, dtmf_pcap=sipp.dtmf_pcap("0"), dtmf_delay_s=0.2, hold_s=1.0
        )
        type_keys(scenario, keys)
        result = sipp.run_uac(server.address, scenario, tmp, service="pay", timeout_s=20)
        result.assert_ok(calls=1)
        results = [r["output"] for r in model.tool_results()]
        texts = model.texts()
    found = wait_until(lambda: records(url), RECORDS_TIMEOUT_S, "the call record")
    return server.log(), results, texts, found


def records(url: str) -> list[dict[str, Any]]:
    store = open_store(url, "unused")
    try:
        return rows_of(store.export())
    finally:
        store.close()


def card_lines(log: str) -> list[str]:
    """Log lines that show the card, a key the caller pressed or the text the model got."""
    shown = re.compile(rf"{CARD}|DTMF [0-9]|pressed the key")
    return [line for line in log.splitlines() if shown.search(line)]


@pytest.mark.requires_peers("sipp", "dtmf_pcap")
def test_a_typed_card_and_a_tool_argument_stay_out_of_the_log(
    sipbot_server: StartServer, peers_tmp: Path
) -> None:
    log, results, texts, found = call({}, sipbot_server, peers_tmp / "default")

    # the model got every key and both results, values and all (nothing it receives changes)
    assert texts == [f"The caller pressed the key {key}." for key in CARD]
    assert results == [
        {"status": "approved", "card_number": CARD, "amount": "12.50"},
        {"error": f"card {CARD} has expired"},
    ]
    # the log, at DEBUG: keypresses counted, tools by name and argument names
    assert card_lines(log) == []
    presses = [int(n) for n in re.findall(r"DTMF \* \((\d+) so far\)$", log, re.M)]
    assert presses == list(range(1, len(CARD) + 1))
    assert re.search(r"tool charge_card \(\S+\) called with card_number, amount$", log, re.M)
    assert re.search(r"tool charge_card \(\S+\) ok in \d+ ms$", log, re.M)
    assert re.search(r"tool verify_card \(\S+\) refused \(ToolError\)$", log, re.M)
    assert re.search(r"tool verify_card \(\S+\) error in \d+ ms$", log, re.M)
    # the record: the tools by name with argument names, the transcript redacted by the hook
    [record] = found
    assert CARD not in json.dumps(record)
    tools = {t["name"]: t for t in record["tools"]}
    assert json.loads(tools["charge_card"]["arguments"]) == {
        "card_number": REDACTED,
        "amount": REDACTED,
    }
    assert tools["verify_card"]["output"] == REDACTED

    # opted in (a shorter call: four keys), the digits and values are shown at DEBUG
    opt_in = {"log_sensitive": True}
    log, _, _, found = call(opt_in, sipbot_server, peers_tmp / "opted-in", CARD[:4])
    assert re.findall(r"DEBUG sipbot\.call: call \S+: DTMF ([0-9])$", log, re.M) == list(CARD[:4])
    assert re.search(rf"DEBUG sipbot\.call: .*tool charge_card\(.*{CARD}", log)
    assert re.search(rf"DEBUG sipbot\.call: .*tool verify_card \(\S+\) result: .*{CARD}", log)
    assert all(" DEBUG " in line for line in card_lines(log))
    assert CARD not in json.dumps(found)  # the record's tool values need their own opt-in
