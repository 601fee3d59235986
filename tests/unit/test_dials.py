"""The dial request body (POST /calls) checked field by field, and the book of transitions."""

from __future__ import annotations

from typing import Any

import pytest

from sipbot.ops.dials import DialBook, dial_fields
from sipbot.outbound import DialRequest, DialStatus


def test_a_full_body_becomes_the_request_fields() -> None:
    body = {
        "to": "sip:alice@127.0.0.1:5062",
        "agent": "reminder",
        "trunk": "carrier",
        "caller_id": "+4930123",
        "variables": {"name": "Ada", "slot": 10, "price": 9.5},
        "status_callback": "https://hooks.example.com/sipbot",
        "amd": True,
        "ring_timeout_s": 20,
    }
    fields = dial_fields(body)
    assert fields == {**body, "variables": {"name": "Ada", "slot": "10", "price": "9.5"}}
    assert isinstance(fields["ring_timeout_s"], float)
    request = DialRequest(**fields)
    assert (request.trunk, request.amd, request.ring_timeout_s) == ("carrier", True, 20.0)


def test_nulls_and_absent_optionals_keep_the_defaults() -> None:
    fields = dial_fields({"to": "100", "agent": "a", "trunk": None, "amd": None})
    assert fields == {"to": "100", "agent": "a"}
    assert DialRequest(**fields) == DialRequest("100", "a")


OK = {"to": "x", "agent": "a"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body must be a JSON object"),
        (None, "the body must be a JSON object"),
        ({"agent": "a"}, "'to' is required"),
        ({"to": "sip:x@h", "agent": None}, "'agent' is required"),
        ({"to": 5, "agent": "a"}, "'to' must be a string, not a number"),
        ({"to": "  ", "agent": "a"}, "'to' must not be empty"),
        ({"to": "x", "agent": ["a"]}, "'agent' must be a string, not an array"),
        ({**OK, "trunk": {}}, "'trunk' must be a string, not an object"),
        ({**OK, "caller_id": True}, "'caller_id' must be a string, not a boolean"),
        ({**OK, "amd": "yes"}, "'amd' must be true, false or null"),
        ({**OK, "ring_timeout_s": "10"}, "'ring_timeout_s' must be a number, not a string"),
        ({**OK, "ring_timeout_s": True}, "'ring_timeout_s' must be a number, not a boolean"),
        ({**OK, "ring_timeout_s": 0}, "'ring_timeout_s' must be > 0 and <= 3600, not 0"),
        ({**OK, "variables": ["a"]}, "'variables' must be an object of strings, not an array"),
        ({**OK, "variables": {"n": None}}, "'variables.n' must be a string or a number, not null"),
        (
            {**OK, "variables": {"n": {}}},
            "'variables.n' must be a string or a number, not an object",
        ),
        ({**OK, "variables": {"": "v"}}, "'variables' has an empty name"),
        (
            {**OK, "status_callback": "ftp://h/x"},
            "'status_callback' must be an http(s) URL, not 'ftp://h/x'",
        ),
        (
            {**OK, "status_callback": "http://"},
            "'status_callback' must be an http(s) URL, not 'http://'",
        ),
        (
            {**OK, "callback": "http://h"},
            "unknown field 'callback' (known: agent, amd, caller_id, ring_timeout_s, "
            "status_callback, to, trunk, variables)",
        ),
        ({"to": "x" * 2049, "agent": "a"}, "'to' is longer than 2048 characters"),
    ],
)
def test_a_bad_body_names_the_field_and_the_problem(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"^.") as caught:
        dial_fields(body)
    assert str(caught.value) == message


def test_too_many_variables_are_refused() -> None:
    variables = {f"v{i}": "x" for i in range(101)}
    with pytest.raises(ValueError, match=r"^'variables' has more than 100 entries$"):
        dial_fields({**OK, "variables": variables})


def status(call_id: str, state: str, code: int | None = None, reason: str | None = None) -> Any:
    return DialStatus(call_id, state, 1.0, code, reason).to_json()  # type: ignore[arg-type]


def test_the_book_keeps_every_transition_and_says_when_it_is_final() -> None:
    book = DialBook()
    book.add(status("c1", "queued"))  # may come before dial() returns the id
    book.describe("c1", {"to": "sip:a@h", "agent": "x"})
    assert book.view("c1") == {
        "call_id": "c1",
        "state": "queued",
        "sip_code": None,
        "reason": None,
        "outcome": None,
        "final": False,
        "request": {"to": "sip:a@h", "agent": "x"},
        "history": [status("c1", "queued")],
    }
    book.add(status("c1", "ringing", 180))
    book.add(status("c1", "busy", 486, "Busy Here"))
    view = book.view("c1")
    assert view is not None
    assert (view["state"], view["sip_code"], view["reason"], view["final"]) == (
        "busy", 486, "Busy Here", True,
    )  # fmt: skip
    book.add(status("c1", "ended", 486, "Busy Here"))  # what follows a failure at once
    view = book.view("c1")
    assert view is not None
    assert (view["state"], view["outcome"], view["final"]) == ("ended", "busy", True)
    assert [h["state"] for h in view["history"]] == ["queued", "ringing", "busy", "ended"]


def test_the_outcome_of_an_answered_call_stays_until_it_ends() -> None:
    book = DialBook()
    for state in ("trying", "ringing", "answered"):
        book.add(status("c1", state))
        view = book.view("c1")
        assert view is not None
        assert view["final"] is False
        assert view["outcome"] == ("answered" if state == "answered" else None)
    book.add(status("c1", "ended"))
    view = book.view("c1")
    assert view is not None
    assert (view["outcome"], view["final"]) == ("answered", True)
    assert book.view("c2") is None


def test_a_call_described_before_its_first_transition_has_no_state() -> None:
    book = DialBook()
    book.describe("c1", {"to": "x"})
    view = book.view("c1")
    assert view is not None
    assert (view["state"], view["final"], view["history"]) == (None, False, [])


def test_the_book_drops_the_oldest_call_beyond_its_size() -> None:
    book = DialBook(size=2)
    for call_id in ("a", "b", "c"):
        book.add(status(call_id, "trying"))
    assert "a" not in book
    assert "b" in book
    assert "c" in book
    book.add(status("b", "answered", 200))  # a known call is not moved or dropped
    book.add(status("d", "trying"))
    assert ["b" in book, "c" in book, "d" in book] == [False, True, True]
