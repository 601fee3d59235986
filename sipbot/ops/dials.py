"""``POST /calls`` and ``GET /calls/{id}`` without the HTTP: the JSON body checked field by
field, and the state of the calls placed through the listener (no I/O).

Rules:

* Rule 1: a body is checked completely before anything is dialled: a JSON object with ``to``
  and ``agent``, only the known fields, each of its type; the first problem is the error, with
  the field's name (:func:`dial_fields` raises ``ValueError`` with that text, the listener answers
  400 with it). Whether the agent, trunk and URI exist is ``Server.dial``'s to say.
* Rule 2: :class:`DialBook` keeps every transition of the last :data:`DIALS_KEPT` calls placed
  through the listener, oldest dropped first, so ``GET /calls/{id}`` (and ``sipbot dial
  --wait``, which polls it) sees each state, also one that came and went between two polls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

DIALS_KEPT = 1000
FAILED_STATES = frozenset({"busy", "no-answer", "rejected", "failed"})
OUTCOMES = FAILED_STATES | {"answered"}
FINAL_STATES = FAILED_STATES | {"ended"}
MAX_VARIABLES = 100
MAX_TEXT = 2048  # characters of any one string field or variable value

_TEXT_FIELDS = ("to", "agent", "trunk", "caller_id", "status_callback")
FIELDS = frozenset({*_TEXT_FIELDS, "variables", "amd", "ring_timeout_s"})


def dial_fields(body: object) -> dict[str, Any]:
    """The keyword arguments of a ``DialRequest`` from a decoded JSON body (Rule 1).

    Absent and ``null`` optional fields are left out (the request's defaults apply).

    Raises:
        ValueError: the body is not a valid dial request; the message says which field and why.
    """
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
    for name in ("to", "agent"):
        if body.get(name) is None:
            raise ValueError(f"{name!r} is required")
    out: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = body.get(name)
        if value is not None:
            out[name] = _text(name, value)
    if "status_callback" in out:
        _check_callback(out["status_callback"])
    if body.get("variables") is not None:
        out["variables"] = _variables(body["variables"])
    if body.get("amd") is not None:
        if not isinstance(body["amd"], bool):
            raise ValueError("'amd' must be true, false or null")
        out["amd"] = body["amd"]
    if body.get("ring_timeout_s") is not None:
        out["ring_timeout_s"] = _seconds(body["ring_timeout_s"])
    return out


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string, not {_json_type(value)}")
    if not value.strip():
        raise ValueError(f"{name!r} must not be empty")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{name!r} is longer than {MAX_TEXT} characters")
    return value


def _check_callback(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'status_callback' must be an http(s) URL, not {url!r}")


def _variables(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"'variables' must be an object of strings, not {_json_type(value)}")
    if len(value) > MAX_VARIABLES:
        raise ValueError(f"'variables' has more than {MAX_VARIABLES} entries")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not key:
            raise ValueError("'variables' has an empty name")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValueError(
                f"'variables.{key}' must be a string or a number, not {_json_type(item)}"
            )
        text = str(item)
        if len(text) > MAX_TEXT:
            raise ValueError(f"'variables.{key}' is longer than {MAX_TEXT} characters")
        out[str(key)] = text
    return out


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'ring_timeout_s' must be a number, not {_json_type(value)}")
    if not 0 < value <= 3600:
        raise ValueError(f"'ring_timeout_s' must be > 0 and <= 3600, not {value}")
    return float(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class DialBook:
    """The transitions of the calls placed through the listener (Rule 2)."""

    def __init__(self, size: int = DIALS_KEPT) -> None:
        self._size = size
        self._calls: OrderedDict[str, tuple[dict[str, Any], list[dict[str, object]]]] = (
            OrderedDict()
        )

    def add(self, status: Mapping[str, object]) -> None:
        """One transition (a ``DialStatus.to_json()``); the first one opens the call."""
        self._entry(str(status.get("call_id", "")))[1].append(dict(status))

    def describe(self, call_id: str, request: Mapping[str, Any]) -> None:
        """Keep what was asked for ``call_id`` (its transitions may have begun already)."""
        self._entry(call_id)[0].update(request)

    def _entry(self, call_id: str) -> tuple[dict[str, Any], list[dict[str, object]]]:
        entry = self._calls.get(call_id)
        if entry is None:
            entry = self._calls[call_id] = ({}, [])
            while len(self._calls) > self._size:
                self._calls.popitem(last=False)
        return entry

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def view(self, call_id: str) -> dict[str, Any] | None:
        """``{call_id, state, sip_code, reason, outcome, final, request, history}``; None if
        unknown.

        ``state`` is None until the first transition arrives; ``outcome`` is the last of
        ``answered``/``busy``/``no-answer``/``rejected``/``failed`` seen (a failed call goes on
        to ``ended`` at once: the outcome keeps what happened), else None.
        """
        entry = self._calls.get(call_id)
        if entry is None:
            return None
        request, history = entry
        last: Mapping[str, object] = history[-1] if history else {}
        state = last.get("state")
        outcomes = [h.get("state") for h in history if h.get("state") in OUTCOMES]
        return {
            "call_id": call_id,
            "state": state,
            "sip_code": last.get("sip_code"),
            "reason": last.get("reason"),
            "outcome": outcomes[-1] if outcomes else None,
            "final": state in FINAL_STATES,
            "request": dict(request),
            "history": list(history),
        }
