"""Routes, actions and the dialplan; :func:`route` decides what happens to an incoming call.

Routing is pure: ``route(dialplan, request)`` reads only its arguments (the request carries an
aware ``now``), so it is tested with fixed datetimes and called by the server per INVITE.

Rules:

* Rule 1: routes are tried in order; the first whose :class:`~sipbot.dialplan.match.Match`
  holds decides. A route without conditions matches every call (a default route).
* Rule 2: a call no route matches is rejected ``404 Not Found``.
* Rule 3: a route's ``dtmf`` map names digits the *call* handles itself (e.g. ``0`` → transfer
  to the operator); every other digit goes to the model as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sipbot.dialplan.agent import NAME_RE, Agent
from sipbot.dialplan.fields import fail, with_field
from sipbot.dialplan.match import Match, zone
from sipbot.dialplan.trunks import Trunk, trunk_for_source
from sipbot.errors import ConfigError, SipParseError
from sipbot.sip.address import parse_uri

REASONS: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    410: "Gone",
    480: "Temporarily Unavailable",
    484: "Address Incomplete",
    486: "Busy Here",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}
DTMF_KEY_RE = re.compile(r"[0-9*#A-D]")


def check_uri(uri: str) -> str:
    """Return ``uri`` if it is a ``sip:``/``sips:`` URI with a host, or a ``tel:`` URI.

    Raises:
        ConfigError: anything else.
    """
    try:
        parsed = parse_uri(uri)
    except SipParseError:
        parsed = None
    ok = parsed is not None and (
        (parsed.is_sip and bool(parsed.host)) or (parsed.scheme == "tel" and bool(parsed.opaque))
    )
    if not ok:
        raise ConfigError(f"bad URI {uri!r}: expected sip:user@host or tel:+number")
    return uri


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the call with ``agent``."""

    agent: Agent

    def __str__(self) -> str:
        return f"answer {self.agent.name}"


@dataclass(frozen=True, slots=True)
class Reject:
    """Reject the call with a SIP final response (``reason`` defaults to the standard phrase)."""

    status: int = 404
    reason: str = ""

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 699:
            fail("status", f"reject status must be 400-699, not {self.status}")
        if not self.reason:
            object.__setattr__(self, "reason", REASONS.get(self.status, "Rejected"))

    def __str__(self) -> str:
        return f"reject {self.status} {self.reason}"


@dataclass(frozen=True, slots=True)
class Transfer:
    """Send the call to ``uri`` without an agent (unanswered: a redirect; in a call: REFER)."""

    uri: str

    def __post_init__(self) -> None:
        with_field("uri", check_uri, self.uri)

    def __str__(self) -> str:
        return f"transfer {self.uri}"


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the call (a DTMF action)."""

    def __str__(self) -> str:
        return "hang_up"


Action = Answer | Reject | Transfer
DtmfAction = Transfer | HangUp


@dataclass(frozen=True, slots=True)
class Route:
    """A named rule: when ``match`` holds, do ``action``.

    Raises:
        ConfigError: a bad name, DTMF key or action (``field`` set).
    """

    name: str
    action: Action
    match: Match = field(default_factory=Match)
    dtmf: Mapping[str, DtmfAction] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            fail("name", f"invalid route name {self.name!r}: use letters, digits, _ and -")
        if not isinstance(self.action, Answer | Reject | Transfer):
            fail("action", f"not an action: {self.action!r} (Answer, Reject or Transfer)")
        for key, action in self.dtmf.items():
            if not DTMF_KEY_RE.fullmatch(key):
                fail(f"dtmf.{key}", f"bad DTMF key {key!r}: one of 0-9, *, #, A-D")
            if not isinstance(action, Transfer | HangUp):
                fail(f"dtmf.{key}", "a DTMF action is a transfer or hang_up")
        object.__setattr__(self, "dtmf", dict(self.dtmf))


@dataclass(frozen=True, slots=True)
class Dialplan:
    """Routes in order, the agents they use, and the default timezone of time conditions.

    Args:
        routes: tried in order (first match wins).
        agents: every agent by name, including ones no route uses (``sipbot check`` lists
            them); agents of ``Answer`` routes are added automatically.
        timezone: IANA timezone of routes whose match has none.
        trunks: the ``trunks:`` entries by name (source allow-lists, registrations).

    Raises:
        ConfigError: two routes or two different agents with one name, a bad timezone.
    """

    routes: Sequence[Route]
    agents: Mapping[str, Agent] = field(default_factory=dict)
    timezone: str = "UTC"
    trunks: Mapping[str, Trunk] = field(default_factory=dict)
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", tuple(self.routes))
        object.__setattr__(self, "zone", with_field("timezone", zone, self.timezone))
        agents = dict(self.agents)
        for name, agent in agents.items():
            if agent.name != name:
                fail(f"agents.{name}", f"agent named {agent.name!r} is listed as {name!r}")
        seen: dict[str, int] = {}
        for index, route in enumerate(self.routes):
            if route.name in seen:
                fail(f"routes[{index}].name", f"route name {route.name!r} is used twice")
            seen[route.name] = index
            if isinstance(route.action, Answer):
                agent = route.action.agent
                if agents.setdefault(agent.name, agent) is not agent:
                    fail(f"routes[{index}]", f"two different agents are named {agent.name!r}")
        object.__setattr__(self, "agents", agents)


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing may look at of an incoming INVITE.

    Attributes:
        did: the called number (request-URI user, else To user).
        caller: the From user.
        display_name: the From display name.
        source_ip: the address the INVITE came from.
        headers: SIP headers (names case-insensitive).
        now: an aware datetime (the INVITE's arrival).
        trunk: the trunk the call came through, as the server identified it ("" none);
            None: derive it from ``source_ip`` and the dialplan's trunk allow-lists.
    """

    did: str
    caller: str
    display_name: str
    source_ip: str
    headers: Mapping[str, str]
    now: datetime
    trunk: str | None = None

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("RouteRequest.now must be an aware datetime")


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The outcome: which route (None when none matched) and what to do."""

    route_name: str | None
    action: Action
    route: Route | None = None

    @property
    def dtmf(self) -> Mapping[str, DtmfAction]:
        """Digits the call handles itself (see Rule 3)."""
        return self.route.dtmf if self.route is not None else {}


NOT_FOUND = Reject(404, "Not Found")


def route(dialplan: Dialplan, request: RouteRequest) -> RouteDecision:
    """Decide what happens to ``request`` (see the module rules)."""
    values = {
        "did": request.did,
        "caller": request.caller,
        "display_name": request.display_name,
        "source_ip": request.source_ip,
    }
    trunk = request.trunk
    if trunk is None:
        found = trunk_for_source(list(dialplan.trunks.values()), request.source_ip)
        trunk = found.name if found is not None else ""
    values["trunk"] = trunk
    for name, value in request.headers.items():
        values[f"header:{name.lower()}"] = value
    for candidate in dialplan.routes:
        if candidate.match.matches(values, request.now, dialplan.zone):
            return RouteDecision(candidate.name, candidate.action, candidate)
    return RouteDecision(None, NOT_FOUND)
