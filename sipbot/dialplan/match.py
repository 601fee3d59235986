"""Route conditions: text matchers (exact, prefix, regex), source networks and time windows.

Everything here is pure: a :class:`Match` is tested against a request's values and an aware
``datetime`` it is given; nothing reads a clock.

Rules:

* Rule 1: a :class:`Match` matches when *every* condition it has matches; an empty Match
  matches every call (a default route).
* Rule 2: a condition given as several matchers (``did: ["100", {prefix: "2"}]``) matches when
  *any* of them does.
* Rule 3: regexes use ``re.search``: anchor them (``^1\\d\\d$``) to match the whole value.
* Rule 4: ``days``, ``hours`` and ``dates`` are tested separately on the local time in the
  match's timezone; an hours range whose end is before its start (``22:00-06:00``) wraps
  past midnight, and its early-morning part counts on the weekday it falls on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sipbot.dialplan.fields import with_field
from sipbot.errors import ConfigError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {name: i for names in (WEEKDAYS, _FULL_DAYS) for i, name in enumerate(names)}
MINUTES_PER_DAY = 24 * 60
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Exact:
    """Matches a value equal to ``value``."""

    value: str

    def matches(self, text: str) -> bool:
        return text == self.value

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Prefix:
    """Matches a value that starts with ``prefix``."""

    prefix: str

    def matches(self, text: str) -> bool:
        return text.startswith(self.prefix)

    def __str__(self) -> str:
        return f"{self.prefix}*"


@dataclass(frozen=True, slots=True)
class Regex:
    """Matches a value in which ``pattern`` is found (``re.search``; anchor it yourself).

    Raises:
        ConfigError: the pattern does not compile.
    """

    pattern: str
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "compiled", re.compile(self.pattern))
        except re.error as exc:
            raise ConfigError(f"bad regex {self.pattern!r}: {exc}") from None

    def matches(self, text: str) -> bool:
        return self.compiled.search(text) is not None

    def __str__(self) -> str:
        return f"/{self.pattern}/"


TextMatcher = Exact | Prefix | Regex
TextCondition = str | TextMatcher | Sequence[str | TextMatcher]


def text_matchers(condition: TextCondition | None) -> tuple[TextMatcher, ...]:
    """Normalize a condition (a string is exact) to a tuple of matchers; None → ()."""
    if condition is None:
        return ()
    items = [condition] if isinstance(condition, str | Exact | Prefix | Regex) else condition
    return tuple(Exact(item) if isinstance(item, str) else item for item in items)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Local time of day from ``start`` (inclusive) to ``end`` (exclusive), in minutes."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        """Parse ``"09:00-17:00"`` (``24:00`` allowed as an end).

        Raises:
            ConfigError: not ``HH:MM-HH:MM``, or an empty range.
        """
        start_text, sep, end_text = text.partition("-")
        start, end = _minutes(start_text.strip()), _minutes(end_text.strip())
        if not sep or start is None or end is None or start == MINUTES_PER_DAY:
            raise ConfigError(f"bad time range {text!r}: expected HH:MM-HH:MM such as 09:00-17:00")
        if start == end:
            raise ConfigError(f"empty time range {text!r}")
        return cls(start, end)

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # wraps past midnight

    def covers(self, other: TimeRange) -> bool:
        """True when every minute of ``other`` is in this range."""
        if self.start < self.end:
            return other.start < other.end and self.start <= other.start and other.end <= self.end
        if other.start < other.end:
            return other.start >= self.start or other.end <= self.end
        return other.start >= self.start and other.end <= self.end

    def overlaps(self, other: TimeRange) -> bool:
        """True when some minute is in both ranges."""
        return any(self.contains(m) and other.contains(m) for m in range(MINUTES_PER_DAY))

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _minutes(text: str) -> int | None:
    m = _TIME_RE.fullmatch(text)
    if not m:
        return None
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        return None
    return hours * 60 + minutes


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_days(spec: str | Sequence[str]) -> tuple[int, ...]:
    """``"mon-fri"``, ``"sat,sun"`` or ``["mon", "wed"]`` → sorted weekday numbers (Monday 0).

    Raises:
        ConfigError: an unknown day name.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    days: set[int] = set()
    for item in items:
        first, sep, last = item.strip().lower().partition("-")
        lo, hi = _day(first, item), _day(last, item) if sep else _day(first, item)
        span = range(lo, hi + 1) if lo <= hi else [*range(lo, 7), *range(hi + 1)]
        days.update(span)
    return tuple(sorted(days))


def _day(name: str, item: str) -> int:
    day = _DAY_NAMES.get(name.strip())
    if day is None:
        raise ConfigError(f"unknown day {item.strip()!r}: use mon, tue, wed, thu, fri, sat, sun")
    return day


def format_days(days: Sequence[int]) -> str:
    """``(0, 1, 2, 3, 4)`` → ``mon-fri``; ``(5, 6)`` → ``sat-sun``; ``(0, 2)`` → ``mon,wed``."""
    if days and list(days) == list(range(days[0], days[-1] + 1)) and len(days) > 2:
        return f"{WEEKDAYS[days[0]]}-{WEEKDAYS[days[-1]]}"
    return ",".join(WEEKDAYS[d] for d in days)


def parse_network(text: str) -> IpNetwork:
    """``"192.0.2.10"`` or ``"10.0.0.0/8"`` → a network.

    Raises:
        ConfigError: not an IP address or network.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"bad source address {text!r}: expected an IP address or CIDR") from None


def zone(name: str) -> ZoneInfo:
    """The timezone ``name`` (IANA, e.g. ``Europe/Berlin``).

    Raises:
        ConfigError: an unknown timezone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin"
        ) from None


@dataclass(frozen=True, slots=True)
class Match:
    """The conditions of a route (all must hold; see the module rules).

    Args:
        did: the called number (request-URI user, else To user).
        caller: the caller's number (From user).
        display_name: the caller's display name (From).
        source: IP addresses / CIDR networks the INVITE may come from.
        trunk: the name of a trunk: the call came through it (as the server identified it:
            its source allow-list or its registration); without that value, ``source``
            (the trunk's allow-list, set by the loader) decides.
        headers: SIP header name (case-insensitive) → condition on its value; an absent
            header never matches.
        days: weekdays (``"mon-fri"``, ``["sat", "sun"]``).
        hours: local times of day (``"09:00-17:00"``, several allowed).
        dates: calendar dates (holidays), ``YYYY-MM-DD`` strings or ``date`` objects.
        timezone: IANA timezone of days/hours/dates; None → the dialplan's.

    Raises:
        ConfigError: a bad regex, network, day, time range, date or timezone (``field`` set).
    """

    did: TextCondition | None = None
    caller: TextCondition | None = None
    display_name: TextCondition | None = None
    source: Sequence[str] = ()
    trunk: str | None = None
    headers: Mapping[str, TextCondition] = field(default_factory=dict)
    days: str | Sequence[str] = ()
    hours: str | Sequence[str] = ()
    dates: Sequence[str | date] = ()
    timezone: str | None = None
    conditions: Conditions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        conditions = Conditions.build(self)
        object.__setattr__(self, "conditions", conditions)
        for name, matchers in conditions.text:
            object.__setattr__(self, name, matchers)
        object.__setattr__(self, "source", tuple(str(n) for n in conditions.networks))
        object.__setattr__(self, "headers", {k: v for k, v in conditions.headers})
        if not isinstance(self.days, str):
            object.__setattr__(self, "days", tuple(self.days))
        if not isinstance(self.hours, str):
            object.__setattr__(self, "hours", tuple(self.hours))
        object.__setattr__(self, "dates", conditions.dates)

    def __str__(self) -> str:
        """A compact description: ``did=100|2* days=mon-fri hours=09:00-17:00``."""
        c = self.conditions
        parts = [f"{name}={'|'.join(map(str, m))}" for name, m in c.text]
        parts += [f"header.{name}={'|'.join(map(str, m))}" for name, m in c.headers]
        if self.trunk:
            parts.append(f"trunk={self.trunk}")
        elif c.networks:
            parts.append(f"source={','.join(map(str, c.networks))}")
        if c.days:
            parts.append(f"days={format_days(c.days)}")
        if c.hours:
            parts.append(f"hours={','.join(map(str, c.hours))}")
        if c.dates:
            parts.append(f"dates={','.join(d.isoformat() for d in c.dates)}")
        if c.is_timed and self.timezone:
            parts.append(f"({self.timezone})")
        return " ".join(parts) or "(any call)"

    def matches(self, values: Mapping[str, str], now: datetime, default_zone: ZoneInfo) -> bool:
        """True when every condition holds (see :meth:`Conditions.matches`)."""
        return self.conditions.matches(values, now, default_zone)

    @property
    def is_catch_all(self) -> bool:
        """True when there are no conditions: every call matches."""
        return self.conditions.is_empty


@dataclass(frozen=True, slots=True)
class Conditions:
    """A :class:`Match` compiled: matchers, networks, weekday numbers, time ranges, dates."""

    text: tuple[tuple[str, tuple[TextMatcher, ...]], ...]  # ("did" | "caller" | ..., matchers)
    headers: tuple[tuple[str, tuple[TextMatcher, ...]], ...]  # lower-cased names
    networks: tuple[IpNetwork, ...]
    days: tuple[int, ...]
    hours: tuple[TimeRange, ...]
    dates: tuple[date, ...]
    zone: ZoneInfo | None
    trunk: str | None = None

    @classmethod
    def build(cls, match: Match) -> Conditions:
        text = []
        for name in ("did", "caller", "display_name"):
            matchers = with_field(name, text_matchers, getattr(match, name))
            if matchers:
                text.append((name, matchers))
        headers = tuple(
            (key.lower(), with_field(f"headers.{key}", text_matchers, value))
            for key, value in match.headers.items()
        )
        networks = tuple(
            with_field(f"source[{i}]", parse_network, s)
            for i, s in enumerate([match.source] if isinstance(match.source, str) else match.source)
        )
        hours_spec = [match.hours] if isinstance(match.hours, str) else list(match.hours)
        return cls(
            text=tuple(text),
            headers=headers,
            networks=networks,
            days=with_field("days", parse_days, match.days) if match.days else (),
            hours=tuple(
                with_field(f"hours[{i}]", TimeRange.parse, h) for i, h in enumerate(hours_spec)
            ),
            dates=tuple(with_field(f"dates[{i}]", _date, d) for i, d in enumerate(match.dates)),
            zone=None if match.timezone is None else with_field("timezone", zone, match.timezone),
            trunk=match.trunk,
        )

    @property
    def is_empty(self) -> bool:
        return not (self.text or self.headers or self.networks or self.is_timed or self.trunk)

    @property
    def is_timed(self) -> bool:
        return bool(self.days or self.hours or self.dates)

    def matches(self, values: Mapping[str, str], now: datetime, default_zone: ZoneInfo) -> bool:
        """True when every condition holds.

        Args:
            values: ``did``, ``caller``, ``display_name``, ``source_ip`` of the call, and its
                headers under ``header:<lower-case name>``.
            now: an aware datetime.
            default_zone: the timezone used when the match has none.
        """
        for name, matchers in self.text:
            if not any(m.matches(values.get(name, "")) for m in matchers):
                return False
        for name, matchers in self.headers:
            value = values.get(f"header:{name}")
            if value is None or not any(m.matches(value) for m in matchers):
                return False
        if self.trunk and values.get("trunk"):
            if values["trunk"] != self.trunk:
                return False
        elif self.trunk and not self.networks:
            return False  # a registration trunk: only the server's identification counts
        elif self.networks and not _in_networks(values.get("source_ip", ""), self.networks):
            return False
        if self.is_timed:
            local = now.astimezone(self.zone or default_zone)
            if self.days and local.weekday() not in self.days:
                return False
            minute = local.hour * 60 + local.minute
            if self.hours and not any(r.contains(minute) for r in self.hours):
                return False
            if self.dates and local.date() not in self.dates:
                return False
        return True


def _in_networks(address: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _date(value: str | date) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"bad date {value!r}: expected YYYY-MM-DD") from None
