"""``trunks:`` in a config file: registration settings, errors with file:line, routing by trunk."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipbot.config import Config, load_config
from sipbot.dialplan import RouteRequest, route
from sipbot.errors import ConfigError

ENV = {"TRUNK_PW": "s3cret", "BOT_PW": "botpw"}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

BASE = """\
agents:
  echo: {provider: local}
trunks:
  carrier:
    registrar: ["sip:reg1.example.net", "sip:reg2.example.net:5080"]
    user: "+4930123"
    auth_user: acct77
    password: ${TRUNK_PW}
    expires: 300
    did_header: P-Called-Party-ID
    contact_user: bot77
  pbx:
    source: ["192.0.2.10"]
routes:
  - name: carrier-calls
    match: {trunk: carrier}
    answer: echo
  - name: pbx-calls
    match: {trunk: pbx}
    answer: echo
  - name: others
    reject: 403
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path), environ=ENV)


def test_registration_settings_come_from_the_trunk(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    carrier = config.dialplan.trunks["carrier"]
    reg = carrier.registration
    assert reg is not None
    assert reg.registrars == ("sip:reg1.example.net", "sip:reg2.example.net:5080")
    assert reg.aor == "sip:+4930123@reg1.example.net"
    assert (reg.auth_user, reg.expires_s, reg.contact_user) == ("acct77", 300, "bot77")
    assert str(reg.password) == "${TRUNK_PW}"  # masked
    assert "s3cret" not in repr(carrier)
    settings = reg.settings("sipbot/test")
    assert settings.credentials.password == "s3cret"
    assert settings.credentials.username == "acct77"
    assert carrier.did_header == "P-Called-Party-ID"
    assert carrier.contact_user == "bot77"
    assert config.dialplan.trunks["pbx"].registration is None


def test_routes_match_the_trunk_the_server_identified(tmp_path: Path) -> None:
    plan = load(tmp_path, BASE).dialplan

    def decide(source: str, trunk: str | None) -> str | None:
        request = RouteRequest("100", "555", "", source, {}, NOW, trunk)
        return route(plan, request).route_name

    assert decide("203.0.113.1", "carrier") == "carrier-calls"
    assert decide("203.0.113.1", "") == "others"  # a registration trunk needs the server's word
    assert decide("192.0.2.10", None) == "pbx-calls"  # derived from the allow-list
    assert decide("192.0.2.10", "") == "pbx-calls"
    assert decide("192.0.2.11", None) == "others"


@pytest.mark.parametrize(
    ("trunk", "error"),
    [
        pytest.param(
            "{registrar: 'sip:r.example', user: bob, password: hunter2}",
            "d.yaml:4: trunks.t.password: secrets come from the environment only: "
            "write password: ${VAR}",
            id="plain-password",
        ),
        pytest.param(
            "{registrar: 'http://r.example', user: bob, password: '${TRUNK_PW}'}",
            "d.yaml:4: trunks.t.registrar: bad SIP URI 'http://r.example': "
            "expected sip:host[:port] such as sip:pbx.example.com",
            id="uri",
        ),
        pytest.param(
            "{registrar: 'sip:r.example', user: bob, password: '${TRUNK_PW}', transport: sctp}",
            "d.yaml:4: trunks.t.transport: unknown transport 'sctp': udp, tcp or tls",
            id="transport",
        ),
        pytest.param(
            "{registrar: 'sip:r.example', password: '${TRUNK_PW}'}",
            "d.yaml:4: trunks.t.user: a registration needs user (a SIP user name)",
            id="user",
        ),
        pytest.param(
            "{description: nothing}",
            "d.yaml:4: trunks.t: a trunk needs a source (IP allow-list) or a registrar",
            id="empty",
        ),
        pytest.param(
            "{source: [192.0.2.1], user: bob}",
            "d.yaml:4: trunks.t.user: user needs a registrar",
            id="user-without-registrar",
        ),
    ],
)
def test_bad_trunks_name_file_line_and_field(tmp_path: Path, trunk: str, error: str) -> None:
    text = f"agents:\n  echo: {{provider: local}}\ntrunks:\n  t: {trunk}\n"
    text += "routes:\n  - {match: {trunk: t}, answer: echo}\n"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert str(info.value) == f"{tmp_path}/{error}"


def test_trust_users_need_environment_passwords(tmp_path: Path) -> None:
    text = "server:\n  trust:\n    users: {alice: plain}\nagents: {echo: {provider: local}}\n"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert "the password of 'alice' must come from the environment" in str(info.value)
    ok = "server:\n  trust:\n    users: {alice: '${BOT_PW}'}\n    unknown_sources: drop\n"
    config = load(tmp_path, ok + "agents: {echo: {provider: local}}\n")
    assert config.server.trust.unknown_sources == "drop"
    assert str.__str__(config.server.trust.users["alice"]) == "botpw"


def test_route_command_shows_the_trunk_and_its_did_header(tmp_path: Path) -> None:
    import io

    from sipbot.commands import route_command

    path = tmp_path / "d.yaml"
    path.write_text(BASE)
    out = io.StringIO()
    headers = {"P-Called-Party-ID": "<sip:+4930999@carrier.example>"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        code = route_command(
            str(path), "bot77", "555", headers, "203.0.113.1", out, now=NOW, trunk="carrier"
        )
        assert code == 0
        lines = out.getvalue().splitlines()
        assert lines[0] == (
            "trunk: carrier  registers +4930123@reg1.example.net at sip:reg1.example.net, "
            "sip:reg2.example.net:5080; DID from P-Called-Party-ID"
        )
        assert lines[1] == "route: carrier-calls (routes[0]: trunk=carrier)"
        err = io.StringIO()
        assert route_command(str(path), "1", "2", {}, "x", out, err=err, trunk="nope") == 2
        assert err.getvalue() == "unknown trunk 'nope' (trunks: carrier, pbx)\n"


def test_routes_of_two_registration_trunks_do_not_shadow_each_other(tmp_path: Path) -> None:
    text = """\
agents:
  echo: {provider: local}
trunks:
  a: {registrar: "sip:r1.example", user: bot, password: "${TRUNK_PW}"}
  b: {registrar: "sip:r2.example", user: bot, password: "${TRUNK_PW}"}
routes:
  - {match: {trunk: a}, answer: echo}
  - {match: {trunk: b}, answer: echo}
  - {match: {trunk: b, did: "100"}, answer: echo}
"""
    warnings = load(tmp_path, text).warnings
    assert warnings == (
        f"{tmp_path}/d.yaml:9: routes[2]: warning: route 'route3' is unreachable: route "
        "'route2' (routes[1]) comes first and it matches every call this one matches",
    )
