"""load_config: every error path as its exact one-line message; values, secrets, warnings."""

# ruff: noqa: E501  (the exact one-line messages are long on purpose)

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipbot.config import ListenAddress, load_config, parse_listen, parse_listen_option
from sipbot.dialplan import Answer, Exact, Prefix, Reject, Transfer
from sipbot.errors import ConfigError
from sipbot.secret import Secret
from sipbot.tools import HttpTool, PythonTool

ERROR_CASES = [
    pytest.param(
        "agents:\n  a:\n    provider: local\n    amd: {on_machine: mesage}\n",
        "d.yaml:4: agents.a.amd.on_machine: must be hangup, message or talk, not 'mesage'; did you mean 'message'?",
        id="amd_action",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    amd:\n      on_unknown: message\n",
        "d.yaml:5: agents.a.amd.on_unknown: message needs message: (text the agent says) or message_audio: (a WAV file)",
        id="amd_message",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    amd: {max_wait_s: 45}\n",
        "d.yaml:4: agents.a.amd.max_wait_s: must be between 1 and 30, not 45",
        id="amd_wait",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    amd: {message: 'Hi {nam}'}\n",
        "d.yaml:4: agents.a.amd.message: unknown placeholder {nam} (known: "
        "{caller}, {did}, {display_name}, {call_id}, {direction}, {date}, {time}, {weekday}, "
        "{header.<Name>}, {var.<name>})",
        id="amd_template",
    ),
    pytest.param(
        "agents: [\n",
        "d.yaml:2: invalid YAML: expected the node content, but found '<stream end>'",
        id="yaml",
    ),
    pytest.param(
        "agents:\n  a: {provider: local}\n  a: {provider: local}\n",
        "d.yaml:3: agents.a: duplicate key",
        id="dup",
    ),
    pytest.param(
        "rout: []\n",
        "d.yaml:1: rout: unknown key 'rout'; did you mean 'routes'?",
        id="topkey",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    promt: hi\n",
        "d.yaml:4: agents.a.promt: unknown key 'promt'; did you mean 'prompt'?",
        id="agentkey",
    ),
    pytest.param(
        "agents:\n  a:\n    model: x\n",
        "d.yaml:2: agents.a: missing key 'provider'",
        id="missing",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    max_duration_s: long\n",
        "d.yaml:4: agents.a.max_duration_s: input should be a valid number, unable to parse string as a number",
        id="type",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemeni\n",
        "d.yaml:3: agents.a.provider: unknown provider 'gemeni'; did you mean 'gemini'? (local, gemini, openai)",
        id="provider",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    tools: [hang_up, lookup]\ntools:\n  lookup_order: {python: 'examples.tools:lookup_order'}\n",
        "d.yaml:4: agents.a.tools[1]: unknown tool 'lookup'; did you mean 'lookup_order'? (define it under tools:)",
        id="tool",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - name: x\n    answer: ecco\n",
        "d.yaml:5: routes[0].answer: unknown agent 'ecco'; did you mean 'echo'? (agents: echo)",
        id="routeagent",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {did: {regex: '1(2'}}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.did: bad regex '1(2': missing ), unterminated subpattern at position 1",
        id="regex",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - name: x\n",
        "d.yaml:4: routes[0]: a route needs exactly one of answer, reject, transfer",
        id="noaction",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {name: x, answer: echo, reject: 486}\n",
        "d.yaml:4: routes[0]: a route needs exactly one of answer, reject, transfer (found answer, reject)",
        id="twoaction",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {name: x, reject: 200}\n",
        "d.yaml:4: routes[0].reject: reject status must be 400-699, not 200",
        id="status",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {name: x, reject: {code: 486}}\n",
        "d.yaml:4: routes[0].reject: reject takes a SIP status (e.g. 486) or {status, reason}",
        id="rejectshape",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {name: x, transfer: 'pbx.example.com'}\n",
        "d.yaml:4: routes[0].transfer: bad URI 'pbx.example.com': expected sip:user@host or tel:+number",
        id="uri",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    prompt: 'Hi {caler}'\n",
        "d.yaml:4: agents.a.prompt: unknown placeholder {caler}; did you mean 'caller'? (known: {caller}, {did}, {display_name}, {call_id}, {direction}, {date}, {time}, {weekday}, {header.<Name>}, {var.<name>})",
        id="placeholder",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    prompt: 'JSON {'\n",
        "d.yaml:4: agents.a.prompt: lone '{' at character 5: write {{",
        id="brace",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    api_key: AIzaXYZ\n",
        "d.yaml:4: agents.a.api_key: secrets come from the environment only: write api_key: ${VAR}",
        id="apikey",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: gemini\n    api_key: ${NO_SUCH_VAR_X}\n",
        "d.yaml:4: agents.a.api_key: environment variable NO_SUCH_VAR_X is not set",
        id="env",
    ),
    pytest.param(
        "server:\n  media:\n    codecs: [PCMU, G729]\n",
        "d.yaml:3: server.media.codecs: unknown codec 'G729'; did you mean 'G722'? (supported: G722, PCMU, PCMA)",
        id="codec",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    codecs: [pcmu, opus]\n",
        "d.yaml:4: agents.a.codecs: unknown codec 'opus' (supported: G722, PCMU, PCMA)",
        id="agentcodec",
    ),
    pytest.param(
        "server:\n  sip:\n    listen: ['udp:127.0.0.1:5060', 'sctp:1.2.3.4:5060']\n",
        "d.yaml:3: server.sip.listen[1]: bad listen address 'sctp:1.2.3.4:5060': expected transport:host:port such as udp:127.0.0.1:5060",
        id="listen",
    ),
    pytest.param(
        "server:\n  sip:\n    listen: ['udp:localhost:5060']\n",
        "d.yaml:3: server.sip.listen[0]: bad listen address 'udp:localhost:5060': the host must be an IP address",
        id="listenhost",
    ),
    pytest.param(
        "server:\n  sip:\n    public_address: 0.0.0.0\n",
        "d.yaml:3: server.sip.public_address: public_address must be an address peers can reach, not 0.0.0.0",
        id="public",
    ),
    pytest.param(
        "server:\n  media:\n    rtp_ports: 30000-20000\n",
        "d.yaml:3: server.media.rtp_ports: bad port range '30000-20000': need 1024 <= MIN < MAX <= 65535",
        id="ports",
    ),
    pytest.param(
        "timezone: Europe/Berln\n",
        "d.yaml:1: timezone: unknown timezone 'Europe/Berln': use an IANA name such as Europe/Berlin",
        id="tz",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {hours: '9-17'}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.hours[0]: bad time range '9-17': expected HH:MM-HH:MM such as 09:00-17:00",
        id="hours",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {days: mon-fry}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.days: unknown day 'mon-fry': use mon, tue, wed, thu, fri, sat, sun",
        id="days",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    tools: [transfer_call]\n",
        "d.yaml:4: agents.a.tools[0]: transfer_call needs transfer_allow: the URIs it may use",
        id="transferallow",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    tools: [transfer_call]\n    transfer_allow: [pbx.example.com]\n",
        "d.yaml:5: agents.a.transfer_allow: invalid transfer pattern 'pbx.example.com': expected a URI such as sip:*@pbx.example.com",
        id="badpattern",
    ),
    pytest.param(
        "tools:\n  t: {python: 'no_such_module_q:f'}\n",
        "d.yaml:2: tools.t.python: cannot import no_such_module_q: No module named 'no_such_module_q'",
        id="import",
    ),
    pytest.param(
        "tools:\n  t:\n    http: {url: 'http://127.0.0.1:1/x'}\n",
        "d.yaml:2: tools.t.description: an HTTP tool needs a description for the model",
        id="httpdesc",
    ),
    pytest.param(
        "tools:\n  t:\n    http: {url: 'ftp://x'}\n    description: d\n",
        "d.yaml:3: tools.t.http.url: bad URL 'ftp://x': expected http:// or https://",
        id="httpurl",
    ),
    pytest.param(
        "tools:\n  t:\n    description: d\n",
        "d.yaml:2: tools.t: a tool needs exactly one of python: or http:",
        id="bothkinds",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\ntrunks:\n  pbx: {source: [192.0.2.1]}\nroutes:\n  - match: {trunk: pxb}\n    answer: echo\n",
        "d.yaml:6: routes[0].match.trunk: unknown trunk 'pxb'; did you mean 'pbx'? (trunks: pbx)",
        id="trunk",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\ntrunks:\n  pbx: {source: [192.0.2.300]}\n",
        "d.yaml:4: trunks.pbx.source[0]: bad source address '192.0.2.300': expected an IP address or CIDR",
        id="trunksrc",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {source: [10.0.0.0/8, nope]}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.source[1]: bad source address 'nope': expected an IP address or CIDR",
        id="source",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - answer: echo\n    dtmf: {'0': hang_up, 'X': hang_up}\n",
        "d.yaml:5: routes[0].dtmf.X: bad DTMF key 'X': one of 0-9, *, #, A-D",
        id="dtmfkey",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - answer: echo\n    dtmf: {'0': {call: 'sip:a@b'}}\n",
        "d.yaml:5: routes[0].dtmf.0: a DTMF action is hang_up or {transfer: URI}",
        id="dtmfaction",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {name: a, answer: echo}\n  - {name: a, reject: 404}\n",
        "d.yaml:5: routes[1].name: route name 'a' is used twice",
        id="dupname",
    ),
    pytest.param(
        "tools:\n  hang_up: {python: 'x:y'}\n",
        "d.yaml:2: tools.hang_up: hang_up is a built-in tool: list it in an agent's tools directly",
        id="builtin",
    ),
    pytest.param(
        "server:\n  log_level: verbose\n",
        "d.yaml:2: server.log_level: input should be 'debug', 'info', 'warning' or 'error'",
        id="loglevel",
    ),
    pytest.param(
        "- a\n- b\n",
        "d.yaml: the file must be a mapping (server:, agents:, routes:)",
        id="notmapping",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {dates: [2025-13-01]}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.dates[0]: invalid value '2025-13-01': month must be in 1..12",
        id="dates",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {headers: {X-Tier: {glob: 'a*'}}}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.headers.X-Tier: expected a value, {prefix: ...}, {regex: ...}, {exact: ...} or a list of them",
        id="header",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: openai\n    temperature: 3\n",
        "d.yaml:4: agents.a.temperature: must be between 0 and 2, not 3.0",
        id="temperature",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    turn: {threshold: 1.5}\n",
        "d.yaml:4: agents.a.turn.threshold: must be between 0 and 1, not 1.5",
        id="threshold",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    turn: {silence: 300}\n",
        "d.yaml:4: agents.a.turn.silence: unknown key 'silence'; did you mean 'silence_ms'?",
        id="turnkey",
    ),
    pytest.param(
        "agents:\n  a:\n    provider: local\n    local: {mode: parrot}\n",
        "d.yaml:4: agents.a.local.mode: unknown local mode 'parrot' (echo, loopback)",
        id="localmode",
    ),
    pytest.param(
        "agents:\n  'a b': {provider: local}\n",
        "d.yaml:2: agents.a b.name: invalid agent name 'a b': use letters, digits, _ and -",
        id="agentname",
    ),
    pytest.param(
        "server:\n  limits: {max_calls: 0}\n",
        "d.yaml:2: server.limits.max_calls: input should be greater than or equal to 1",
        id="maxcalls",
    ),
    pytest.param(
        "server:\n  limits: {per_source_calls: 0}\n",
        "d.yaml:2: server.limits.per_source_calls: input should be greater than or equal to 1",
        id="persourcecalls",
    ),
    pytest.param(
        "server:\n  limits: {per_source_rps: 0}\n",
        "d.yaml:2: server.limits.per_source_rps: input should be greater than 0",
        id="persourcerps",
    ),
    pytest.param(
        "server:\n  limits: {per_source_burst: 0.5}\n",
        "d.yaml:2: server.limits.per_source_burst: input should be a valid integer, got a number"
        " with a fractional part",
        id="persourceburst",
    ),
    pytest.param(
        "server:\n  limits: {per_source_cals: 5}\n",
        "d.yaml:2: server.limits.per_source_cals: unknown key 'per_source_cals'; did you mean"
        " 'per_source_calls'?",
        id="persourcetypo",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {name: x, anwser: echo}\n",
        "d.yaml:4: routes[0].anwser: unknown key 'anwser'; did you mean 'answer'?",
        id="routekey",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - {match: {dids: '1'}, answer: echo}\n",
        "d.yaml:4: routes[0].match.dids: unknown key 'dids'; did you mean 'did'?",
        id="matchkey",
    ),
    pytest.param(
        "server:\n  sip:\n    timers: {t1: 500}\n",
        "d.yaml:3: server.sip.timers.t1: unknown key 't1'; did you mean 't1_ms'?",
        id="timerkey",
    ),
    pytest.param(
        "tools:\n  t:\n    http: {url: 'http://127.0.0.1:1/x'}\n    description: d\n    parameters: {type: array}\n",
        "d.yaml:5: tools.t.parameters: parameters must be a JSON schema of type object",
        id="toolparams",
    ),
    pytest.param(
        "tools:\n  t:\n    python: 'examples.tools:lookup_order'\n    parameters: {type: object}\n",
        "d.yaml:4: tools.t.parameters: parameters come from the function's signature",
        id="pyparams",
    ),
    pytest.param(
        "server:\n  media:\n    rtp_address: myhost\n",
        "d.yaml:3: server.media.rtp_address: bad address 'myhost': expected an IP address",
        id="rtpaddr",
    ),
    pytest.param(
        "agents:\n  echo: {provider: local}\nroutes:\n  - match: {hours: '09:00-17:00', timezone: Mars/Base}\n    answer: echo\n",
        "d.yaml:4: routes[0].match.timezone: unknown timezone 'Mars/Base': use an IANA name such as Europe/Berlin",
        id="matchtz",
    ),
    pytest.param(
        "tools:\n  t:\n    http: {url: 'http://127.0.0.1:1/x', headers: {A: [1]}}\n    description: d\n",
        "d.yaml:3: tools.t.http.headers.A: a header value must be a string",
        id="header_val",
    ),
]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(tmp: Path, text: str, name: str = "d.yaml") -> str:
    (tmp / name).write_text(textwrap.dedent(text))
    return name


@pytest.mark.parametrize(("text", "message"), ERROR_CASES)
def test_error_is_one_exact_line(in_tmp: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, text), environ={})
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_error_attributes(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, "agents:\n  a:\n    provider: local\n    promt: x\n"))
    error = info.value
    assert (error.file, error.line, error.field) == ("d.yaml", 4, "agents.a.promt")
    assert error.message == "unknown key 'promt'; did you mean 'prompt'?"


def test_a_tool_module_that_raises_gives_one_line(in_tmp: Path) -> None:
    (in_tmp / "raising_tools_mod.py").write_text("raise RuntimeError('first line\\nsecond line')\n")
    text = "tools:\n  t: {python: 'raising_tools_mod:f'}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, text))
    assert str(info.value) == (
        "d.yaml:2: tools.t.python: cannot import raising_tools_mod: first line second line"
    )


def test_missing_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("nope.yaml")
    assert str(info.value) == "nope.yaml: cannot read the file: No such file or directory"


def test_first_error_by_line_wins(in_tmp: Path) -> None:
    text = "server:\n  log_level: loud\nagents:\n  a: {provider: local, promt: x}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, text))
    assert str(info.value) == (
        "d.yaml:2: server.log_level: input should be 'debug', 'info', 'warning' or 'error'"
    )


def test_embedded_default() -> None:
    config = load_config(None)
    assert config.source == "sipbot/data/default.yaml"
    assert config.path is None
    assert config.warnings == ()
    assert config.server.sip.listen == (
        ListenAddress("udp", "127.0.0.1", 5060),
        ListenAddress("tcp", "127.0.0.1", 5060),
    )
    assert config.server.media.rtp_ports == (20000, 29999)
    assert config.server.media.codecs == ("G722", "PCMU", "PCMA")
    limits = config.server.limits
    assert (limits.max_calls, limits.per_source_calls) == (500, 100)
    assert (limits.per_source_rps, limits.per_source_burst) == (50.0, 100)
    [route] = config.dialplan.routes
    assert isinstance(route.action, Answer)
    assert (route.action.agent.provider, route.action.agent.local_mode) == ("local", "echo")


def test_dialplans_default_is_the_embedded_default() -> None:
    root = Path(__file__).resolve().parents[2]
    link = root / "dialplans" / "default.yaml"
    assert link.is_symlink()
    assert link.read_text() == (root / "sipbot" / "data" / "default.yaml").read_text()


FULL = """\
server:
  sip:
    listen: ["udp:0.0.0.0:5070", "tcp:[::1]:5071"]
    public_address: "sip.example.com:5070"
    user_agent: test/1
    timers: {t1_ms: 250, t2_ms: 2000, t4_ms: 2500}
  media:
    rtp_address: 127.0.0.1
    rtp_ports: "40000 - 40100"
    codecs: [pcmu, g722]
    inactivity_timeout_s: 12
    prebuffer_ms: 40
  limits: {max_calls: 20, per_source_calls: 5, per_source_rps: 50.5, per_source_burst: 80}
  recordings_dir: /tmp/rec
  log_level: DEBUG
timezone: Europe/Berlin
agents:
  support:
    provider: gemini
    model: m
    voice: Kore
    language: en-US
    prompt: "You help {display_name} ({caller}) about {header.X-Customer-Id} on {weekday}."
    greeting: "Hello {display_name}"
    tools: [hang_up, transfer_call, lookup_order, crm]
    transfer_allow: ["sip:*@pbx.example.com"]
    transfer_timeout_s: 20
    turn: {threshold: 0.6, silence_ms: 700, prefix_ms: 200, barge_in: false}
    max_duration_s: 600
    recording: true
    codecs: [PCMU]
    temperature: 0.7
    api_key: ${GEMINI_API_KEY}
    base_url: http://127.0.0.1:9/
    options: {affective_dialog: true}
tools:
  lookup_order: {python: "examples.tools:lookup_order", description: Find an order., timeout_s: 3}
  crm:
    http:
      url: "${CRM_URL:-http://127.0.0.1:8080/crm}"
      timeout_s: 2
      headers: {Authorization: "Bearer ${CRM_TOKEN}"}
    description: Note something.
    parameters: {type: object, properties: {note: {type: string}}, required: [note]}
routes:
  - name: sales
    match: {did: +4930123, caller: [0044, {prefix: "+1"}]}
    answer: support
    dtmf: {0: {transfer: "sip:operator@pbx.example.com"}, "#": hang_up}
  - name: busy
    match: {did: 200}
    reject: {status: 486, reason: Busy Here Now}
  - name: out
    transfer: "sip:100@pbx.example.com"
"""


def test_full_config_values(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    env = {"GEMINI_API_KEY": "AIza-secret", "CRM_TOKEN": "crm-secret"}
    config = load_config(write(in_tmp, FULL), environ=env)
    server = config.server
    assert server.sip.listen == (
        ListenAddress("udp", "0.0.0.0", 5070),
        ListenAddress("tcp", "::1", 5071),
    )
    assert str(server.sip.listen[1]) == "tcp:[::1]:5071"
    assert server.sip.public_address == ("sip.example.com", 5070)
    assert (server.sip.timers.t1_ms, server.sip.timers.t2_ms, server.sip.timers.t4_ms) == (
        250, 2000, 2500,
    )  # fmt: skip
    assert server.media.rtp_address == "127.0.0.1"
    assert server.media.rtp_ports == (40000, 40100)
    assert server.media.codecs == ("PCMU", "G722")
    assert (server.media.inactivity_timeout_s, server.media.prebuffer_ms) == (12.0, 40)
    assert (server.limits.max_calls, server.recordings_dir, server.log_level) == (
        20, "/tmp/rec", "debug",
    )  # fmt: skip
    limits = server.limits
    per_source = (limits.per_source_calls, limits.per_source_rps, limits.per_source_burst)
    assert per_source == (5, 50.5, 80)

    sales, busy, out = config.dialplan.routes
    assert isinstance(sales.action, Answer)
    agent = sales.action.agent
    assert agent.api_key == Secret("AIza-secret")
    assert agent.turn.threshold == 0.6
    assert agent.turn.barge_in is False
    assert agent.transfer_timeout_s == 20.0
    assert agent.codecs == ("PCMU",)
    assert [t.spec.name for t in agent.resolved_tools] == [
        "hang_up", "transfer_call", "lookup_order", "crm",
    ]  # fmt: skip
    lookup, crm = agent.resolved_tools[2:]
    assert isinstance(lookup, PythonTool)
    assert lookup.timeout_s == 3
    assert lookup.spec.description == "Find an order."
    assert isinstance(crm, HttpTool)
    assert crm.url == "http://127.0.0.1:8080/crm"
    assert crm.headers["Authorization"].reveal() == "Bearer crm-secret"
    # numbers keep their written text: +4930123 and 0044 are not 4930123 and 36
    assert sales.match.did == (Exact("+4930123"),)
    assert sales.match.caller == (Exact("0044"), Prefix("+1"))
    assert sales.dtmf == {"0": Transfer("sip:operator@pbx.example.com"), "#": sales.dtmf["#"]}
    assert str(sales.dtmf["#"]) == "hang_up"
    assert busy.action == Reject(486, "Busy Here Now")
    assert busy.match.did == (Exact("200"),)
    assert out.action == Transfer("sip:100@pbx.example.com")
    assert config.warnings == ()


def test_secrets_never_show(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    env = {"GEMINI_API_KEY": "AIza-secret", "CRM_TOKEN": "crm-secret"}
    config = load_config(write(in_tmp, FULL), environ=env)
    text = repr(config) + str(config)
    for agent in config.dialplan.agents.values():
        text += repr(agent) + repr([repr(t) for t in agent.resolved_tools])
        text += repr([getattr(t, "headers", None) for t in agent.resolved_tools])
    assert "AIza-secret" not in text
    assert "crm-secret" not in text
    assert "Secret('${GEMINI_API_KEY}')" in text


def test_session_config_fills_the_prompt(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sipbot.dialplan.template import CALL_DATA_NOTE
    from sipbot.domain import CallInfo

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    config = load_config(write(in_tmp, FULL), environ={"GEMINI_API_KEY": "k", "CRM_TOKEN": "t"})
    agent = config.dialplan.agents["support"]
    call = CallInfo("c1", "+4930555", "100", "Ann", {"x-customer-id": "C-42"})
    session = agent.session_config(call, datetime(2025, 3, 14, 23, 30, tzinfo=UTC))
    # 23:30 UTC on Friday is Saturday 00:30 in Berlin (the dialplan's timezone)
    assert session.instructions == (
        f'You help "Ann" ("+4930555") about "C-42" on Saturday.\n\n{CALL_DATA_NOTE}'
    )
    assert session.greeting == 'Hello "Ann"'
    assert (session.model, session.voice, session.language, session.temperature) == (
        "m", "Kore", "en-US", 0.7,
    )  # fmt: skip
    assert [t.name for t in session.tools] == [
        "hang_up", "transfer_call", "lookup_order", "crm",
    ]  # fmt: skip
    assert session.turn_detection.silence_ms == 700
    assert session.options == {"affective_dialog": True}


def test_warnings_are_one_line_each(in_tmp: Path) -> None:
    text = """\
        agents:
          echo: {provider: local}
          spare: {provider: local}
        routes:
          - {name: hundred, match: {did: "100"}, answer: echo}
          - name: hundred-late
            match: {did: "100", hours: ["18:00-23:00", "22:00-02:00"]}
            answer: echo
          - {name: all, answer: echo}
          - {name: never, match: {caller: "1"}, reject: 403}
        """
    config = load_config(write(in_tmp, text))
    assert config.warnings == (
        "d.yaml:6: routes[1]: warning: route 'hundred-late' is unreachable: route 'hundred' "
        "(routes[0]) comes first and it matches every call this one matches",
        "d.yaml:7: routes[1].match.hours: warning: hours 18:00-23:00 and 22:00-02:00 overlap",
        "d.yaml:10: routes[3]: warning: route 'never' is unreachable: route 'all' (routes[2]) "
        "comes first and it matches every call",
        "d.yaml:3: agents.spare: warning: agent 'spare' is not used by any route",
    )


def test_unused_tools_and_trunks_warnings(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    text = """\
        tools:
          spare: {python: "examples.tools:lookup_order"}
        trunks:
          pbx: {source: [192.0.2.1]}
        agents:
          a: {provider: local}
        routes:
          - {answer: a}
        """
    config = load_config(write(in_tmp, text))
    assert config.warnings == (
        "d.yaml:2: tools.spare: warning: tool 'spare' is not used by any agent",
        "d.yaml:4: trunks.pbx: warning: trunk 'pbx' is not used by any route",
    )


def test_agents_and_trunks_for_placing_calls_need_no_route(in_tmp: Path) -> None:
    text = """\
        trunks:
          carrier: {source: [192.0.2.1], outbound: {cps: 1}}
        agents:
          a: {provider: local}
          reminder: {provider: local}
        routes:
          - {answer: a}
        """
    assert load_config(write(in_tmp, text)).warnings == ()


def test_no_routes_warning(in_tmp: Path) -> None:
    config = load_config(write(in_tmp, "agents: {}\n"))
    assert config.warnings == ("d.yaml:1: warning: no routes: every call is rejected with 404",)


def test_parse_listen_option() -> None:
    assert parse_listen_option("0.0.0.0:5080") == (
        ListenAddress("udp", "0.0.0.0", 5080),
        ListenAddress("tcp", "0.0.0.0", 5080),
    )
    assert parse_listen_option("[::1]:5080") == (
        ListenAddress("udp", "::1", 5080),
        ListenAddress("tcp", "::1", 5080),
    )
    assert parse_listen_option("tcp:127.0.0.1:0") == (ListenAddress("tcp", "127.0.0.1", 0),)
    with pytest.raises(ValueError, match="bad listen address"):
        parse_listen_option("localhost:5060")


def test_parse_listen_directly() -> None:
    assert parse_listen("UDP:10.0.0.1:5060") == ListenAddress("udp", "10.0.0.1", 5060)
    with pytest.raises(ValueError, match=r"bad listen address '10\.0\.0\.1:5060'"):
        parse_listen("10.0.0.1:5060")


def test_merge_keys_and_anchors(in_tmp: Path) -> None:
    text = """\
        x-base: &base {provider: local, max_duration_s: 60}
        agents:
          a: {<<: *base, max_duration_s: 30}
          b: *base
        routes:
          - {answer: a}
          - {match: {did: "2"}, answer: b}
        """
    config = load_config(write(in_tmp, text))
    agents = config.dialplan.agents
    assert (agents["a"].provider, agents["a"].max_duration_s) == ("local", 30.0)
    assert (agents["b"].provider, agents["b"].max_duration_s) == ("local", 60.0)


def test_merged_key_errors_point_at_the_anchor(in_tmp: Path) -> None:
    text = """\
        x-base: &base {provider: local, max_duration_s: -1}
        agents:
          a: {<<: *base}
        """
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, text))
    assert str(info.value) == "d.yaml:1: agents.a.max_duration_s: must be > 0"


def test_barge_in_guard_loads_and_a_bad_mode_says_where(in_tmp: Path) -> None:
    text = (
        "agents:\n  a:\n    provider: local\n    barge_in: {mode: guard, min_speech_ms: 600}\n"
        "routes:\n  - {name: r, answer: a}\n"
    )
    agent = load_config(write(in_tmp, text)).dialplan.routes[0].action.agent  # type: ignore[attr-defined]
    assert (agent.barge_in.mode, agent.barge_in.min_speech_ms) == ("guard", 600)
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, text.replace("mode: guard", "mode: nope")))
    assert str(info.value) == (
        "d.yaml:4: agents.a.barge_in.mode: unknown mode 'nope' (guard, provider, off)"
    )


# --------------------------------------------------------------------------- fallback, stalls

FALLBACK = """\
agents:
  bot:
    provider: gemini
    api_key: ${GEMINI_API_KEY}
    voice: Kore
    prompt: You help.
    tools: [hang_up]
    stall_timeout_ms: 2500
    fallback:
      provider: openai
      model: gpt-realtime
      voice: marin
      api_key: ${OPENAI_API_KEY}
routes:
  - {answer: bot}
"""


def test_a_fallback_is_the_agent_on_another_provider(in_tmp: Path) -> None:
    from sipbot.domain import CallInfo

    environ = {"GEMINI_API_KEY": "g", "OPENAI_API_KEY": "o"}
    agent = load_config(write(in_tmp, FALLBACK), environ=environ).dialplan.agents["bot"]
    fallback = agent.fallback
    assert fallback is not None
    assert (fallback.provider, fallback.model, fallback.voice) == (
        "openai",
        "gpt-realtime",
        "marin",
    )
    assert fallback.api_key == Secret("o")
    assert (fallback.name, fallback.prompt, fallback.fallback) == ("bot", "You help.", None)
    now = datetime(2025, 3, 14, tzinfo=UTC)
    config = fallback.session_config(CallInfo("c1"), now)
    assert [t.name for t in config.tools] == ["hang_up"]  # the same tools
    assert agent.session_config(CallInfo("c1"), now).stall_timeout_s == 2.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("provider: openai\n      model", "provider: opnai\n      model"),
            "d.yaml:10: agents.bot.fallback.provider: unknown provider 'opnai'; "
            "did you mean 'openai'? (local, gemini, openai)",
        ),
        (
            ("api_key: ${OPENAI_API_KEY}", "api_key: plain"),
            "d.yaml:13: agents.bot.fallback.api_key: secrets come from the environment only: "
            "write api_key: ${VAR}",
        ),
        (
            ("provider: openai\n      model: gpt-realtime", "provider: gemini\n      model: null"),
            "d.yaml:9: agents.bot.fallback: the fallback is the agent's own provider, model "
            "and endpoint",
        ),
        (
            ("stall_timeout_ms: 2500", "stall_timeout_ms: 0"),
            "d.yaml:8: agents.bot.stall_timeout_ms: must be > 0",
        ),
        (
            ("      voice: marin", "      voice: marin\n      prompt: x"),
            "d.yaml:13: agents.bot.fallback.prompt: unknown key 'prompt'",
        ),
    ],
)
def test_fallback_errors(in_tmp: Path, change: tuple[str, str], message: str) -> None:
    text = FALLBACK.replace(*change)
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, text), environ={"GEMINI_API_KEY": "g", "OPENAI_API_KEY": "o"})
    assert str(info.value) == message


HANDOFF = """\
agents:
  desk:
    provider: local
    tools: [handoff]
    handoff_allow: [billing]
  billing: {provider: local}
"""


def test_handoff_allow_names_other_agents(in_tmp: Path) -> None:
    agent = load_config(write(in_tmp, HANDOFF), environ={}).dialplan.agents["desk"]
    assert agent.handoff_allow == ("billing",)
    assert [t.spec.name for t in agent.resolved_tools] == ["handoff"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[billing]", "[biling]"),
            "d.yaml:5: agents.desk.handoff_allow[0]: unknown agent 'biling'; did you mean "
            "'billing'? (another agent of agents:)",
        ),
        (
            ("[billing]", "[desk]"),
            "d.yaml:5: agents.desk.handoff_allow[0]: an agent cannot hand a call over to itself",
        ),
        (
            ("    handoff_allow: [billing]\n", ""),
            "d.yaml:4: agents.desk.tools[0]: handoff needs handoff_allow: the agents it may use",
        ),
    ],
)
def test_handoff_errors(in_tmp: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(in_tmp, HANDOFF.replace(*change)), environ={})
    assert str(info.value) == message
