"""Checking a dial request (sipbot.dial_target.check_request) against a dialplan: targets,
caller ID, headers, credentials and codecs per trunk, and the errors of a bad request."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipbot.config import Config, load_config
from sipbot.dial_limits import OutboundLimits
from sipbot.dial_target import DialTarget, check_request, trunk_caller_id, trunk_hop, trunk_of
from sipbot.dialplan.template import CALL_DATA_NOTE
from sipbot.domain import CallInfo
from sipbot.errors import ConfigError, DialError
from sipbot.outbound import DialRequest

ENV = {"TRUNK_PW": "s3cret", "OUT_PW": "outpw"}
DIALPLAN = """\
agents:
  bot:
    provider: local
    codecs: [PCMA, PCMU]
    prompt: "Remind {var.name} of the {var.slot} appointment ({direction} call to {did})."
trunks:
  carrier:
    registrar: "sip:reg.example.net"
    user: "+4930123"
    auth_user: acct77
    password: ${TRUNK_PW}
    outbound: {caller_id: "+4930999", codecs: [G722, PCMU], ring_timeout_s: 20}
  sbc:
    outbound:
      proxy: "sip:sbc.example.org:5070"
      domain: carrier.example.org
      transport: tcp
      pai: false
      auth_user: out7
      password: ${OUT_PW}
      max_calls: 10
      cps: 2.5
      queue: 30
      queue_timeout_s: 12
routes:
  - name: all
    answer: bot
"""


def load(tmp_path: Path, text: str = DIALPLAN) -> Config:
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path), environ=ENV)


def target(config: Config, **keys: object) -> DialTarget:
    keys.setdefault("agent", "bot")
    request = DialRequest(**keys)  # type: ignore[arg-type]
    plan = config.dialplan
    return check_request(request, plan.agents, plan.trunks, ("G722", "PCMU", "PCMA"))


def test_a_number_through_a_registering_trunk(tmp_path: Path) -> None:
    t = target(load(tmp_path), to="+15551234", trunk="carrier")
    assert t.uri == "sip:+15551234@reg.example.net"
    assert t.next_hop == "sip:reg.example.net"  # no proxy: the registrar
    assert t.route is None
    assert t.from_user == "+4930999@reg.example.net"
    assert t.headers == (("P-Asserted-Identity", "<sip:+4930999@reg.example.net>"),)
    assert t.credentials is not None
    assert (t.credentials.username, t.credentials.password) == ("acct77", "s3cret")
    assert t.codecs == ("G722", "PCMU")  # the trunk's offer wins over the agent's
    assert (t.ring_timeout_s, t.callee) == (20, "+15551234")


def test_a_uri_through_a_proxy_trunk_with_its_own_credentials(tmp_path: Path) -> None:
    t = target(load(tmp_path), to="sip:alice@example.com", trunk="sbc", caller_id="777")
    assert t.uri == "sip:alice@example.com"
    assert t.next_hop == "sip:sbc.example.org:5070;transport=tcp"
    assert t.headers == (("Route", "<sip:sbc.example.org:5070;lr>"),)  # pai: false
    assert t.from_user == "777@carrier.example.org"
    assert t.credentials is not None
    assert t.credentials.username == "out7"
    assert t.codecs == ("PCMA", "PCMU")  # no trunk codecs: the agent's
    assert t.callee == "alice"
    limits = config_limits(tmp_path)
    assert (limits.max_calls, limits.cps, limits.queue, limits.queue_timeout_s) == (10, 2.5, 30, 12)


def config_limits(tmp_path: Path) -> OutboundLimits:
    return load(tmp_path).dialplan.trunks["sbc"].dial_settings.limits


def test_a_uri_without_a_trunk_goes_direct(tmp_path: Path) -> None:
    t = target(load(tmp_path), to="sip:bob@192.0.2.7:5062", ring_timeout_s=1.5)
    assert (t.trunk, t.uri, t.next_hop, t.headers) == (None, t.uri, "sip:bob@192.0.2.7:5062", ())
    assert (t.from_user, t.credentials, t.ring_timeout_s) == ("sipbot", None, 1.5)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"to": "sip:"}, "invalid SIP URI 'sip:'"),
        ({"to": "sips:@"}, "invalid SIP URI 'sips:@'"),
        ({"to": "12 34", "trunk": "sbc"}, "invalid number or user '12 34' (or give a sip: URI)"),
        ({"to": "1234"}, "a number needs a trunk: name one (or dial a sip: URI)"),
        ({"to": "1234", "trunk": "nope"}, "unknown trunk 'nope' (trunks: carrier, sbc)"),
        ({"to": "1234", "agent": "x", "trunk": "sbc"}, "unknown agent 'x' (agents: bot)"),
        ({"to": "1", "trunk": "sbc", "caller_id": "a b"}, "invalid caller_id 'a b'"),
        ({"to": "1", "trunk": "sbc", "ring_timeout_s": 0}, "ring_timeout_s must be > 0, not 0"),
    ],
)
def test_bad_requests_are_dial_errors(
    tmp_path: Path, keys: dict[str, object], message: str
) -> None:
    with pytest.raises(DialError) as caught:
        target(load(tmp_path), **keys)
    assert str(caught.value) == message


def test_the_prompt_knows_the_call_is_outbound_and_has_the_variables(tmp_path: Path) -> None:
    agent = load(tmp_path).dialplan.agents["bot"]
    info = CallInfo(
        "c1", did="+15551234", direction="outbound", variables={"name": "Ann", "slot": "9:00"}
    )
    text = agent.session_config(info, datetime(2026, 12, 1, tzinfo=UTC)).instructions
    assert text.startswith("You placed this phone call to +15551234; the person who answers")
    assert text.endswith(
        'Remind Ann of the 9:00 appointment ("outbound" call to "+15551234").\n\n' + CALL_DATA_NOTE
    )
    inbound = agent.session_config(CallInfo("c2", did="100"), datetime(2026, 12, 1, tzinfo=UTC))
    assert inbound.instructions == (
        'Remind  of the  appointment ("inbound" call to "100").\n\n' + CALL_DATA_NOTE
    )


@pytest.mark.parametrize(
    ("outbound", "error"),
    [
        ("{proxy: 'nope'}", "trunks.t.outbound.proxy: bad SIP URI 'nope'"),
        ("{proxy: 'sip:p', transport: sctp}", "outbound.transport: unknown transport 'sctp'"),
        ("{proxy: 'sip:p', codecs: [OPUS]}", "outbound.codecs: unknown codec 'OPUS'"),
        ("{proxy: 'sip:p', auth_user: u}", "outbound.auth_user: auth_user and password go"),
        ("{proxy: 'sip:p', auth_user: u, password: pw}", "outbound.password: secrets come from"),
        (
            "{caller_id: '1'}",
            "a trunk needs a source (IP allow-list), a registrar or outbound.proxy",
        ),
        ("{proxy: 'sip:p', cps: 0}", "cps"),
    ],
)
def test_bad_outbound_keys_name_the_field(tmp_path: Path, outbound: str, error: str) -> None:
    text = f"agents: {{bot: {{provider: local}}}}\ntrunks:\n  t:\n    outbound: {outbound}\n"
    text += "routes: [{name: r, answer: bot}]\n"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert error in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'd.yaml'}:")


def test_a_bad_var_placeholder_is_refused_at_load(tmp_path: Path) -> None:
    text = (
        "agents: {bot: {provider: local, prompt: 'Hi {var.}'}}\nroutes: [{name: r, answer: bot}]\n"
    )
    with pytest.raises(ConfigError, match=r"invalid variable name in placeholder \{var\.\}"):
        load(tmp_path, text)


def test_a_uri_is_reached_through_the_trunk_of_its_host(tmp_path: Path) -> None:
    trunks = load(tmp_path).dialplan.trunks
    assert trunk_of("sip:200@REG.example.net", trunks) is trunks["carrier"]  # its domain
    assert trunk_of("sip:200@carrier.example.org", trunks) is trunks["sbc"]  # outbound.domain
    assert trunk_of("sip:200@sbc.example.org:5070", trunks) is trunks["sbc"]  # its proxy's host
    assert trunk_of("sip:200@pbx.example.com", trunks) is None
    assert trunk_of("tel:+4930123", trunks) is None
    hop = trunk_hop("sip:200@carrier.example.org", trunks["sbc"], trunk_caller_id(trunks["sbc"]))
    t = target(load(tmp_path), to="sip:200@carrier.example.org", trunk="sbc")
    assert (hop.next_hop, hop.route, hop.from_user, hop.headers, hop.credentials) == (
        t.next_hop, t.route, t.from_user, t.headers, t.credentials
    )  # fmt: skip
    direct = trunk_hop("sip:200@pbx.example.com", None, "sipbot")
    assert (direct.next_hop, direct.headers, direct.credentials) == (
        "sip:200@pbx.example.com", (), None
    )  # fmt: skip
