"""Routing (each matcher, time windows across DST, first match wins, default, 404), the
Python-code API, templates, warnings, and the check/route commands."""

# ruff: noqa: E501  (exact expected output lines are long)

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sipbot.commands import check_command, route_command
from sipbot.dialplan import (
    Agent,
    Answer,
    Dialplan,
    Exact,
    HangUp,
    Match,
    Prefix,
    Regex,
    Reject,
    Route,
    RouteRequest,
    Template,
    TimeRange,
    Transfer,
    dialplan_warnings,
    route,
)
from sipbot.dialplan.agent import BargeIn
from sipbot.dialplan.analysis import covers
from sipbot.dialplan.template import CALL_DATA_NOTE
from sipbot.domain import CallInfo
from sipbot.errors import ConfigError
from sipbot.memory import MEMORY_DATA_NOTE, MEMORY_HEADER
from sipbot.records.store import SqliteStore
from tests.unit.test_memory import stored

FRIDAY_NOON_UTC = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
ECHO = Agent("echo")


def request(
    did: str = "100",
    caller: str = "555",
    *,
    display_name: str = "",
    source_ip: str = "192.0.2.1",
    headers: Mapping[str, str] | None = None,
    now: datetime = FRIDAY_NOON_UTC,
) -> RouteRequest:
    return RouteRequest(did, caller, display_name, source_ip, headers or {}, now)


def decide(match: Match, req: RouteRequest, timezone: str = "UTC") -> bool:
    """True when a dialplan with one route on ``match`` routes ``req`` to it."""
    plan = Dialplan([Route("r", Answer(ECHO), match)], timezone=timezone)
    return route(plan, req).route_name == "r"


# --------------------------------------------------------------------------- matchers


@pytest.mark.parametrize(
    ("did_condition", "did", "expected"),
    [
        ("100", "100", True),
        ("100", "1000", False),
        (Exact("100"), "100", True),
        (Prefix("+4930"), "+4930123", True),
        (Prefix("+4930"), "+4940123", False),
        (Regex(r"^1\d\d$"), "199", True),
        (Regex(r"^1\d\d$"), "1999", False),
        (Regex(r"99"), "1999", True),  # re.search: unanchored finds it anywhere
        (["100", Prefix("2")], "250", True),
        (["100", Prefix("2")], "300", False),
    ],
)
def test_did_matchers(did_condition: object, did: str, expected: bool) -> None:
    assert decide(Match(did=did_condition), request(did=did)) is expected  # type: ignore[arg-type]


def test_caller_display_name_and_headers() -> None:
    assert decide(Match(caller=Prefix("+1")), request(caller="+15551234"))
    assert not decide(Match(caller=Prefix("+1")), request(caller="+4930"))
    assert decide(Match(display_name=Regex("(?i)^ann")), request(display_name="ANNA"))
    gold = Match(headers={"X-Tier": "gold"})
    assert decide(gold, request(headers={"x-tier": "gold"}))  # names are case-insensitive
    assert not decide(gold, request(headers={"X-Tier": "silver"}))
    assert not decide(gold, request(headers={}))  # an absent header never matches
    assert decide(Match(headers={"X-Tier": Regex("^g")}), request(headers={"X-TIER": "gold"}))


def test_source_networks() -> None:
    trunk = Match(source=["192.0.2.10", "10.0.0.0/8", "2001:db8::/32"])
    assert decide(trunk, request(source_ip="192.0.2.10"))
    assert decide(trunk, request(source_ip="10.20.30.40"))
    assert decide(trunk, request(source_ip="2001:db8::1"))
    assert decide(trunk, request(source_ip="[2001:db8::1]"))
    assert not decide(trunk, request(source_ip="192.0.2.11"))
    assert not decide(trunk, request(source_ip="not-an-ip"))


def test_all_conditions_must_hold() -> None:
    both = Match(did="100", caller="555")
    assert decide(both, request("100", "555"))
    assert not decide(both, request("100", "556"))
    assert not decide(both, request("101", "555"))


# --------------------------------------------------------------------------- time windows


def berlin(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    """A UTC instant given as Berlin local time."""
    local = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin"))
    return local.astimezone(UTC)


def test_business_hours_follow_dst() -> None:
    hours = Match(days="mon-fri", hours="09:00-17:00", timezone="Europe/Berlin")
    # 07:30 UTC is 08:30 in winter (CET, UTC+1): closed; 09:30 in summer (CEST): open
    assert not decide(hours, request(now=datetime(2025, 3, 28, 7, 30, tzinfo=UTC)))
    assert decide(hours, request(now=datetime(2025, 3, 31, 7, 30, tzinfo=UTC)))
    # 15:30 UTC is 16:30 in winter (open), 17:30 in summer (closed)
    assert decide(hours, request(now=datetime(2025, 3, 28, 15, 30, tzinfo=UTC)))
    assert not decide(hours, request(now=datetime(2025, 3, 31, 15, 30, tzinfo=UTC)))
    assert not decide(hours, request(now=datetime(2025, 3, 29, 10, 0, tzinfo=UTC)))  # Saturday


def test_skipped_and_repeated_local_hours() -> None:
    night = Match(hours="02:00-03:00", timezone="Europe/Berlin")
    # spring forward, 2025-03-30: 01:59 CET is followed by 03:00 CEST; 02:xx never happens
    assert not decide(night, request(now=datetime(2025, 3, 30, 0, 59, tzinfo=UTC)))
    assert not decide(night, request(now=datetime(2025, 3, 30, 1, 0, tzinfo=UTC)))
    # fall back, 2025-10-26: 02:30 happens twice (CEST, then CET): both match
    assert decide(night, request(now=datetime(2025, 10, 26, 0, 30, tzinfo=UTC)))
    assert decide(night, request(now=datetime(2025, 10, 26, 1, 30, tzinfo=UTC)))
    assert not decide(night, request(now=datetime(2025, 10, 26, 2, 30, tzinfo=UTC)))


def test_window_past_midnight_and_dialplan_timezone() -> None:
    late = Match(days="fri", hours="22:00-06:00")  # no timezone: the dialplan's
    assert decide(late, request(now=berlin(2025, 3, 14, 23, 0)), "Europe/Berlin")
    # Saturday 01:00: the hours match but the day is Saturday (days and hours are separate)
    assert not decide(late, request(now=berlin(2025, 3, 15, 1, 0)), "Europe/Berlin")
    assert decide(late, request(now=berlin(2025, 3, 14, 5, 59)), "Europe/Berlin")
    assert not decide(late, request(now=berlin(2025, 3, 14, 6, 0)), "Europe/Berlin")
    # the same instant is 22:00 UTC on Friday: also inside the window in UTC
    assert decide(late, request(now=datetime(2025, 3, 14, 22, 0, tzinfo=UTC)))


def test_dates_for_holidays() -> None:
    holiday = Match(dates=["2025-12-25", "2025-12-26"], timezone="America/New_York")
    assert decide(holiday, request(now=datetime(2025, 12, 26, 4, 59, tzinfo=UTC)))  # 23:59 NY
    assert not decide(holiday, request(now=datetime(2025, 12, 27, 5, 0, tzinfo=UTC)))
    assert not decide(holiday, request(now=datetime(2025, 12, 25, 4, 59, tzinfo=UTC)))  # 24th


@pytest.mark.parametrize(
    ("text", "start", "end", "inside", "outside"),
    [
        ("09:00-17:00", 540, 1020, [540, 1019], [539, 1020]),
        ("9:30-10:00", 570, 600, [570], [600]),
        ("22:00-06:00", 1320, 360, [1320, 0, 359], [360, 1319]),
        ("00:00-24:00", 0, 1440, [0, 1439], []),
    ],
)
def test_time_range(text: str, start: int, end: int, inside: list[int], outside: list[int]) -> None:
    time_range = TimeRange.parse(text)
    assert (time_range.start, time_range.end) == (start, end)
    assert all(time_range.contains(m) for m in inside)
    assert not any(time_range.contains(m) for m in outside)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9-17", "bad time range '9-17': expected HH:MM-HH:MM such as 09:00-17:00"),
        ("09:00-24:01", "bad time range '09:00-24:01': expected HH:MM-HH:MM such as 09:00-17:00"),
        ("24:00-01:00", "bad time range '24:00-01:00': expected HH:MM-HH:MM such as 09:00-17:00"),
        ("10:00-10:00", "empty time range '10:00-10:00'"),
    ],
)
def test_time_range_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TimeRange.parse(text)
    assert str(info.value) == message


def test_days_spellings() -> None:
    assert Match(days="mon-fri").conditions.days == (0, 1, 2, 3, 4)
    assert Match(days="fri-mon").conditions.days == (0, 4, 5, 6)
    assert Match(days=["Saturday", "sun"]).conditions.days == (5, 6)
    assert Match(days="mon,wed").conditions.days == (0, 2)


# --------------------------------------------------------------------------- routing order


def test_first_match_wins_then_default_then_404() -> None:
    support, after = Agent("support"), Agent("after")
    plan = Dialplan(
        [
            Route("blocked", Reject(403), Match(caller=Prefix("+1900"))),
            Route("open", Answer(support), Match(did="100", hours="09:00-17:00")),
            Route("closed", Answer(after), Match(did="100")),
            Route("operator", Transfer("sip:op@pbx.example.com"), Match(did="0")),
        ]
    )
    assert route(plan, request("100", "+19005550100")).action == Reject(403, "Forbidden")
    assert route(plan, request("100")).action == Answer(support)
    evening = FRIDAY_NOON_UTC + timedelta(hours=8)
    assert route(plan, request("100", now=evening)).action == Answer(after)
    assert route(plan, request("0")).action == Transfer("sip:op@pbx.example.com")
    unmatched = route(plan, request("999"))
    assert (unmatched.route_name, unmatched.route) == (None, None)
    assert unmatched.action == Reject(404, "Not Found")
    assert unmatched.dtmf == {}

    with_default = Dialplan([*plan.routes, Route("default", Answer(after))])
    decision = route(with_default, request("999"))
    assert (decision.route_name, decision.action) == ("default", Answer(after))


def test_dtmf_actions_travel_with_the_decision() -> None:
    menu: dict[str, Transfer | HangUp] = {
        "0": Transfer("sip:operator@pbx.example.com"),
        "#": HangUp(),
    }
    plan = Dialplan([Route("r", Answer(ECHO), dtmf=menu)])
    assert route(plan, request()).dtmf == menu


def test_route_request_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        request(now=datetime(2025, 3, 14, 12, 0))


# --------------------------------------------------------------------------- Python API errors


@pytest.mark.parametrize(
    ("make", "field", "message"),
    [
        (lambda: Agent("a b"), "name", "invalid agent name 'a b': use letters, digits, _ and -"),
        (lambda: Agent("a", provider="gemeni"), "provider",  # type: ignore[arg-type]
         "unknown provider 'gemeni'; did you mean 'gemini'? (local, gemini, openai)"),
        (lambda: Agent("a", tools=["hang_upp"]), "tools[0]",
         "unknown tool 'hang_upp'; did you mean 'hang_up'?"),
        (lambda: Agent("a", tools=["hang_up", "hang_up"]), "tools[1]",
         "tool 'hang_up' is listed twice"),
        (lambda: Agent("a", codecs=["PCMU", "pcmu"]), "codecs", "codec PCMU is listed twice"),
        (lambda: Agent("a", timezone="Nowhere"), "timezone",
         "unknown timezone 'Nowhere': use an IANA name such as Europe/Berlin"),
        (lambda: Agent("a", max_duration_s=0), "max_duration_s", "must be > 0"),
        (lambda: Agent("a", transfer_timeout_s=61), "transfer_timeout_s",
         "must be > 0 and at most 60"),
        (lambda: Regex("("), None,
         "bad regex '(': missing ), unterminated subpattern at position 0"),
        (lambda: Match(source=["1.2.3"]), "source[0]",
         "bad source address '1.2.3': expected an IP address or CIDR"),
        (lambda: Match(dates=["2025-02-30"]), "dates[0]",
         "bad date '2025-02-30': expected YYYY-MM-DD"),
        (lambda: Reject(302), "status", "reject status must be 400-699, not 302"),
        (lambda: Transfer("operator"), "uri",
         "bad URI 'operator': expected sip:user@host or tel:+number"),
        (lambda: Route("r", ECHO), "action",  # type: ignore[arg-type]
         "not an action: Agent(name='echo', provider='local', model=None, voice=None, "
         "language=None, prompt='', greeting=None, tools=(), transfer_allow=(), "
         "turn=TurnDetection(threshold=0.5, silence_ms=500, prefix_ms=300, barge_in=True), "
         "max_duration_s=3600.0, recording=False, codecs=(), temperature=None, "
         "timezone='UTC', api_key=None, base_url=None, ca_file=None, local_mode='echo', "
         "options={}, tool_timeout_s=10.0, filler_after_ms=None, srtp=None, "
         "transfer_timeout_s=10.0, transfer_briefing=None, transfer_hold=None, "
         "amd=AmdSettings(enabled=False, on_machine='hangup', on_unknown='talk', message=None, "
         "message_audio=None, max_wait_s=5.0), "
         "stall_timeout_ms=None, fallback=None, handoff_allow=(), provider_options=None) "
         "(Answer, Reject or Transfer)"),
        (lambda: Route("r", Answer(ECHO), dtmf={"5": Reject(486)}), "dtmf.5",  # type: ignore[dict-item]
         "a DTMF action is a transfer or hang_up"),
        (lambda: Dialplan([Route("a", Reject()), Route("a", Reject())]), "routes[1].name",
         "route name 'a' is used twice"),
        (lambda: Dialplan([Route("a", Answer(Agent("x"))), Route("b", Answer(Agent("x")))]),
         "routes[1]", "two different agents are named 'x'"),
    ],
)  # fmt: skip
def test_python_api_errors(make: object, field: str | None, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert (info.value.field, info.value.message) == (field, message)
    assert info.value.file is None


def test_python_built_dialplan_collects_agents() -> None:
    support = Agent("support", provider="gemini", tools=["hang_up"], api_key="k")
    plan = Dialplan([Route("r", Answer(support))], agents={"echo": ECHO})
    assert list(plan.agents) == ["echo", "support"]
    assert repr(support.api_key) == "Secret('****')"


# --------------------------------------------------------------------------- templates


def test_template_fill_and_escapes() -> None:
    template = Template.parse(
        "{{literal}} {caller}/{did}/{display_name}/{call_id} {header.X-Customer-Id} "
        "[{header.Missing}] {date} {time} {weekday}"
    )
    call = CallInfo("c-1", "555", "100", "Ann", {"x-customer-id": "C42"})
    now = datetime(2025, 3, 14, 9, 5, tzinfo=ZoneInfo("Europe/Berlin"))
    assert template.fill(call, now) == (
        '{literal} "555"/"100"/"Ann"/"c-1" "C42" [""] 2025-03-14 09:05 Friday'
    )
    assert template.placeholders == (
        "caller", "did", "display_name", "call_id", "header.X-Customer-Id", "header.Missing",
        "date", "time", "weekday",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{name}", "unknown placeholder {name}"),
        ("{header.}", "invalid header name in placeholder {header.}"),
        ("a } b", "lone '}' at character 2: write }}"),
    ],
)
def test_template_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Template.parse(text)
    assert str(info.value).startswith(message)


# --------------------------------------------------------------------------- warnings


def test_covers() -> None:
    def c(**kwargs: object) -> object:
        return Match(**kwargs).conditions  # type: ignore[arg-type]

    assert covers(c(), c(did="1"))  # type: ignore[arg-type]
    assert covers(c(did="1"), c(did="1", caller="2"))  # type: ignore[arg-type]
    assert not covers(c(did="1", caller="2"), c(did="1"))  # type: ignore[arg-type]
    assert covers(c(did=Prefix("1")), c(did=["10", Prefix("12")]))  # type: ignore[arg-type]
    assert not covers(c(did=Prefix("12")), c(did=Prefix("1")))  # type: ignore[arg-type]
    assert covers(c(did=Regex("^1")), c(did="123"))  # type: ignore[arg-type]
    assert not covers(c(did=Regex("^1")), c(did=Regex("^12")))  # type: ignore[arg-type]
    assert covers(c(source=["10.0.0.0/8"]), c(source=["10.1.0.0/16"]))  # type: ignore[arg-type]
    assert not covers(c(source=["10.1.0.0/16"]), c(source=["10.0.0.0/8"]))  # type: ignore[arg-type]
    assert covers(c(hours="08:00-18:00"), c(hours="09:00-17:00"))  # type: ignore[arg-type]
    assert covers(c(hours="22:00-06:00"), c(hours="23:00-01:00"))  # type: ignore[arg-type]
    assert not covers(c(hours="09:00-17:00"), c(hours="16:00-18:00"))  # type: ignore[arg-type]
    assert covers(c(days="mon-fri"), c(days="tue"))  # type: ignore[arg-type]
    assert not covers(c(days="mon-fri", timezone="UTC"), c(days="tue"))  # type: ignore[arg-type]


def test_dialplan_warnings_as_paths() -> None:
    plan = Dialplan(
        [Route("all", Answer(ECHO)), Route("later", Reject(), Match(did="1"))],
        agents={"spare": Agent("spare")},
    )
    assert dialplan_warnings(plan) == [
        (
            ("routes", 1),
            "route 'later' is unreachable: route 'all' (routes[0]) comes first and it matches "
            "every call",
        ),
        (("agents", "spare"), "agent 'spare' is not used by any route"),
    ]


# --------------------------------------------------------------------------- commands

PLAN = """\
timezone: Europe/Berlin
agents:
  support:
    provider: local
    prompt: "Caller {caller} on {weekday} at {time}"
    greeting: Hello {display_name}
    tools: [hang_up, transfer_call]
    transfer_allow: ["sip:*@pbx.example.com"]
  echo: {provider: local, local: {mode: loopback}}
routes:
  - name: open
    match: {did: "100", days: mon-fri, hours: "09:00-17:00"}
    answer: support
    dtmf: {"0": {transfer: "sip:op@pbx.example.com"}}
  - {name: test, match: {did: {prefix: "9"}, caller: {regex: "^\\\\+49"}}, answer: echo}
"""


def test_check_command_prints_the_routing_table(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    out = io.StringIO()
    assert check_command(str(path), out) == 0
    assert out.getvalue() == textwrap.dedent(
        f"""\
        {path}: OK
        server: listen udp:127.0.0.1:5060, tcp:127.0.0.1:5060; rtp ports 20000-29999; codecs G722, PCMU, PCMA
        agents:
          support  local  mode=echo  tools: hang_up, transfer_call  transfer to: sip:*@pbx.example.com
          echo     local  mode=loopback
        routes (first match wins; timezone Europe/Berlin):
          1. open        did=100 days=mon-fri hours=09:00-17:00  → answer support
          2. test        did=9* caller=/^\\+49/                   → answer echo
             (no match)                                          → reject 404 Not Found
          route 1 DTMF 0 → transfer sip:op@pbx.example.com
        """
    )


def test_check_command_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("agents:\n  a: {provider: local, promt: x}\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_command(str(path), out, err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"{path}:2: agents.a.promt: unknown key 'promt'; did you mean 'prompt'?\n"
    )


def test_route_command(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    out = io.StringIO()
    monday_ten = datetime(2025, 3, 17, 9, 0, tzinfo=UTC)
    code = route_command(
        str(path), "100", "555", {"X-A": "1"}, "192.0.2.1", out,
        display_name="Ann", now=monday_ten,
    )  # fmt: skip
    assert code == 0
    assert out.getvalue() == (
        "route: open (routes[0]: did=100 days=mon-fri hours=09:00-17:00)\n"
        "action: answer support\n"
        "agent: support  local  mode=echo  tools: hang_up, transfer_call  "
        "transfer to: sip:*@pbx.example.com\n"
        "memory: off\n"
        f'prompt: Caller "555" on Monday at 10:00\n\n{CALL_DATA_NOTE}\n'
        'greeting: Hello "Ann"\n'
        "dtmf 0: transfer sip:op@pbx.example.com\n"
    )
    out = io.StringIO()
    assert (
        route_command(
            str(path), "100", "555", {}, "192.0.2.1", out, now=monday_ten.replace(hour=20)
        )
        == 0
    )
    assert out.getvalue() == "route: (none matched)\naction: reject 404 Not Found\n"


OPTIONS_PLAN = """\
server: {records: {url: "sqlite:///RECORDS"}}
agents:
  support:
    provider: gemini
    prompt: You answer for ACME.
    gemini: {affective_dialog: true, thinking_budget: 0}
    fallback:
      provider: openai
      openai: {turn_detection: semantic_vad, eagerness: high}
    memory: {days: 7, max_calls: 2, scope: all}
  plain: {provider: openai, prompt: Hi}
routes:
  - {match: {did: "1"}, answer: support}
  - {answer: plain}
"""


def routed(tmp_path: Path, did: str, plan: str = OPTIONS_PLAN, **keys: Any) -> tuple[int, str, str]:
    """``sipbot route`` of a call from +4930555 to ``did``: exit code, output, errors."""
    path = tmp_path / "plan.yaml"
    path.write_text(plan.replace("RECORDS", str(tmp_path / "records.sqlite3")))
    out, err = io.StringIO(), io.StringIO()
    code = route_command(
        str(path), did, "+4930555", {}, "192.0.2.1", out, err=err, now=FRIDAY_NOON_UTC, **keys
    )
    return code, out.getvalue(), err.getvalue()


def test_route_shows_the_provider_options_the_fallback_and_memory_offline(
    tmp_path: Path,
) -> None:
    code, out, _ = routed(tmp_path, "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[2:7] == [
        "agent: support  gemini",
        "gemini: affective_dialog=true  thinking_budget=0",
        "fallback: openai",
        "fallback openai: turn_detection=semantic_vad  eagerness=high",
        "memory: on  days=7  max_calls=2  max_chars=600  scope=all",
    ]
    assert lines[7] == "prompt: You answer for ACME."
    assert not (tmp_path / "records.sqlite3").exists()  # nothing read without --memory
    code, out, _ = routed(tmp_path, "2")
    assert out.splitlines()[2:5] == [
        "agent: plain  openai",
        "openai: (none set: the provider's defaults)",
        "memory: off",
    ]
    off = OPTIONS_PLAN.replace('url: "sqlite:///RECORDS"', "enabled: false")
    code, out, _ = routed(tmp_path, "1", off)
    assert "memory: on  days=7  max_calls=2  max_chars=600  scope=all  (server.records is off: " \
        "nothing is remembered)\n" in out  # fmt: skip


def test_route_memory_reads_the_callers_earlier_calls_only_when_asked(tmp_path: Path) -> None:
    code, out, err = routed(tmp_path, "1", memory=True)
    assert code == 1  # no records yet: the preview says so, and creates no database
    assert err == f"memory lookup: cannot read the records: no records database at " \
        f"sqlite:///{tmp_path / 'records.sqlite3'}\n"  # fmt: skip
    assert "prompt: You answer for ACME.\n" in out
    assert not (tmp_path / "records.sqlite3").exists()
    store = SqliteStore(str(tmp_path / "records.sqlite3"))
    store.migrate()
    earlier = FRIDAY_NOON_UTC.timestamp() - 3600
    store.write([stored(1, "+49 30 555", earlier, agent="desk")])
    store.close()
    code, out, err = routed(tmp_path, "1", memory=True)
    assert (code, err) == (0, "")
    assert "memory lookup: 1 earlier calls of caller +4930555\n" in out
    prompt = out.split("prompt: ", 1)[1]
    assert prompt.startswith(f"You answer for ACME.\n\n{MEMORY_HEADER}\n- 2025-03-14 11:00 UTC")
    assert 'the caller said "question 1"' in prompt
    assert prompt.rstrip("\n").endswith(MEMORY_DATA_NOTE)
    code, out, _ = routed(tmp_path, "1")  # offline again: the same prompt without memory
    assert "memory lookup" not in out
    assert "prompt: You answer for ACME.\n" in out


# --------------------------------------------------------------------------- barge_in


def test_barge_in_defaults_to_the_provider() -> None:
    agent = Agent("a")
    assert (agent.barge_in.mode, agent.barge_in.min_speech_ms) == ("provider", 800)
    config = agent.session_config(CallInfo("c"), datetime(2026, 1, 1, tzinfo=UTC))
    assert config.turn_detection.barge_in is True


@pytest.mark.parametrize("mode", ["guard", "off"])
def test_guard_and_off_turn_the_providers_own_interruption_off(mode: str) -> None:
    agent = Agent("a", barge_in=BargeIn(mode, 500))  # type: ignore[arg-type]
    config = agent.session_config(CallInfo("c"), datetime(2026, 1, 1, tzinfo=UTC))
    assert config.turn_detection.barge_in is False
    assert config.turn_detection.silence_ms == agent.turn.silence_ms


@pytest.mark.parametrize(
    ("barge_in", "field", "message"),
    [
        (BargeIn("gaurd", 500), "barge_in.mode",  # type: ignore[arg-type]
         "unknown mode 'gaurd'; did you mean 'guard'? (guard, provider, off)"),
        (BargeIn("guard", 50), "barge_in.min_speech_ms", "must be between 100 and 5000, not 50"),
    ],
)  # fmt: skip
def test_barge_in_errors(barge_in: BargeIn, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Agent("a", barge_in=barge_in)
    assert (info.value.field, info.value.message) == (field, message)
