"""Static checks of a dialplan that are worth a warning but not an error.

* A route is *unreachable* when an earlier route matches every call it matches (an earlier
  catch-all, or the same DID with fewer conditions, or a wider prefix, network or time window).
  Regexes are compared only by their text: a route behind a different regex is never reported.
* A route's own hours ranges overlap.
* An agent is defined but no route answers with it (not when a trunk has ``outbound:`` keys:
  the dialplan places calls, and any agent may be dialled).
"""

from __future__ import annotations

from collections.abc import Sequence

from sipbot.dialplan.match import Conditions, Exact, Prefix, Regex, TextMatcher
from sipbot.dialplan.model import Answer, Dialplan

Path = tuple[str | int, ...]
Warning_ = tuple[Path, str]  # (field path, message)


def dialplan_warnings(dialplan: Dialplan) -> list[Warning_]:
    """Warnings about ``dialplan``, in route order, as (field path, message)."""
    out: list[Warning_] = []
    routes = dialplan.routes
    for index, later in enumerate(routes):
        for earlier_index, earlier in enumerate(routes[:index]):
            if covers(earlier.match.conditions, later.match.conditions):
                reason = (
                    "it matches every call"
                    if earlier.match.is_catch_all
                    else "it matches every call this one matches"
                )
                out.append(
                    (
                        ("routes", index),
                        f"route {later.name!r} is unreachable: route {earlier.name!r} "
                        f"(routes[{earlier_index}]) comes first and {reason}",
                    )
                )
                break
        hours = later.match.conditions.hours
        for i, first in enumerate(hours):
            for second in hours[i + 1 :]:
                if first.overlaps(second):
                    out.append(
                        (("routes", index, "match", "hours"), f"hours {first} and {second} overlap")
                    )
    used = {r.action.agent.name for r in routes if isinstance(r.action, Answer)}
    if any(trunk.outbound is not None for trunk in dialplan.trunks.values()):
        used = set(dialplan.agents)  # outbound agents are dialled, not routed to
    for name in dialplan.agents:
        if name not in used:
            out.append((("agents", name), f"agent {name!r} is not used by any route"))
    return out


def covers(first: Conditions, second: Conditions) -> bool:
    """True when every call ``second`` matches is also matched by ``first``."""
    second_text = dict(second.text)
    for name, matchers in first.text:
        if not _text_covers(matchers, second_text.get(name, ())):
            return False
    second_headers = dict(second.headers)
    for name, matchers in first.headers:
        if not _text_covers(matchers, second_headers.get(name, ())):
            return False
    if first.trunk and first.trunk != second.trunk:
        return False  # another trunk's calls (a registration trunk has no networks to compare)
    if first.networks and not (
        second.networks
        and all(
            any(n.version == m.version and n.subnet_of(m) for m in first.networks)  # type: ignore[arg-type]
            for n in second.networks
        )
    ):
        return False
    return _time_covers(first, second)


def _time_covers(first: Conditions, second: Conditions) -> bool:
    if not first.is_timed:
        return True
    if first.zone != second.zone:
        return False  # a different timezone may shift any window: assume reachable
    if first.days and not (second.days and set(second.days) <= set(first.days)):
        return False
    if first.hours and not (
        second.hours and all(any(a.covers(b) for a in first.hours) for b in second.hours)
    ):
        return False
    return not first.dates or bool(second.dates and set(second.dates) <= set(first.dates))


def _text_covers(first: Sequence[TextMatcher], second: Sequence[TextMatcher]) -> bool:
    if not second:
        return False  # ``second`` accepts any value; ``first`` does not
    return all(any(_implies(b, a) for a in first) for b in second)


def _implies(narrow: TextMatcher, wide: TextMatcher) -> bool:
    """True when every value ``narrow`` matches is matched by ``wide``."""
    if isinstance(narrow, Exact):
        return wide.matches(narrow.value)
    if isinstance(narrow, Prefix):
        return isinstance(wide, Prefix) and narrow.prefix.startswith(wide.prefix)
    return isinstance(wide, Regex) and wide.pattern == narrow.pattern
