"""Tests of sipbot.sip.headers: names, compact forms, the ordered multi-map, list splitting."""

from __future__ import annotations

import pytest

from sipbot.sip.headers import Headers, canonical_name, split_list


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("v", "Via"),
        ("V", "Via"),
        ("i", "Call-ID"),
        ("I", "Call-ID"),
        ("l", "Content-Length"),
        ("m", "Contact"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("t", "To"),
        ("f", "From"),
        ("cseq", "CSeq"),
        ("CALL-ID", "Call-ID"),
        ("www-authenticate", "WWW-Authenticate"),
        ("X-Custom-Header", "X-Custom-Header"),
        ("C%6Fntact", "C%6Fntact"),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def test_split_list_respects_quotes_and_angle_brackets() -> None:
    value = '"Doe, John" <sip:a@b;x=1,2>;q=1, <sip:c@d>  ,sip:e@f'
    assert split_list(value) == ['"Doe, John" <sip:a@b;x=1,2>;q=1', "<sip:c@d>", "sip:e@f"]


def test_split_list_escaped_quote_inside_quoted_string() -> None:
    assert split_list(r'"a \", b" <sip:x@y>, <sip:z@w>') == [r'"a \", b" <sip:x@y>', "<sip:z@w>"]


def test_split_list_drops_empty_elements_unless_strict() -> None:
    assert split_list("a,,b, ") == ["a", "b"]
    with pytest.raises(ValueError, match="empty list element"):
        split_list("a,,b", strict=True)
    with pytest.raises(ValueError, match="empty list element"):
        split_list("  ", strict=True)
    assert split_list("a, b", strict=True) == ["a", "b"]


def make() -> Headers:
    return Headers(
        [
            ("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP c;branch=z9hG4bK3"),
            ("f", "<sip:x@y>;tag=1"),
            ("Subject", "a, b"),
            ("Subject", "c"),
        ]
    )


def test_get_returns_first_list_element_and_whole_value_otherwise() -> None:
    h = make()
    assert h.get("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get("v") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get("Subject") == "a, b"  # not a list header
    assert h.get("From") == "<sip:x@y>;tag=1"
    assert h.get("To") is None
    assert h.get("To", "dflt") == "dflt"


def test_get_all_splits_list_headers_only() -> None:
    h = make()
    assert h.get_all("VIA") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1",
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert h.get_all("subject") == ["a, b", "c"]
    assert h.get_all("To") == []


def test_get_lines_and_count_see_lines_not_elements() -> None:
    h = make()
    assert h.count("Via") == 2
    assert h.get_lines("v") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert h.count("To") == 0


def test_names_are_canonical_in_items() -> None:
    assert [name for name, _ in make().items()] == ["Via", "Via", "From", "Subject", "Subject"]


def test_add_prepend_set_remove_replace_all() -> None:
    h = make()
    h.prepend("v", "SIP/2.0/UDP top;branch=z9hG4bK0")
    assert h.items()[0] == ("Via", "SIP/2.0/UDP top;branch=z9hG4bK0")
    h.set("subject", "only")
    assert h.get_all("Subject") == ["only"]
    assert [n for n, _ in h.items()].index("Subject") == 4  # kept where the first one stood
    h.add("To", "<sip:t@u>")
    h.replace_all("Via", ["SIP/2.0/TCP n1", "SIP/2.0/TCP n2"])
    assert h.items() == [
        ("Via", "SIP/2.0/TCP n1"),
        ("Via", "SIP/2.0/TCP n2"),
        ("From", "<sip:x@y>;tag=1"),
        ("Subject", "only"),
        ("To", "<sip:t@u>"),
    ]
    h.remove("via")
    assert "Via" not in h
    assert "v" not in h
    h.set("Max-Forwards", "70")  # absent: appended
    assert h.items()[-1] == ("Max-Forwards", "70")
    h.replace_all("Route", ["<sip:r1;lr>"])  # absent: appended
    assert h.items()[-1] == ("Route", "<sip:r1;lr>")


def test_copy_is_independent_and_equal() -> None:
    h = make()
    c = h.copy()
    assert c == h
    c.add("To", "<sip:t@u>")
    assert "To" not in h
    assert c != h
    assert len(h) == 5
    assert list(h) == h.items()


def test_contains_with_non_string() -> None:
    assert 3 not in make()
    assert "from" in make()
    assert "F" in make()


def test_counts_per_canonical_name() -> None:
    assert make().counts() == {"via": 2, "from": 1, "subject": 2}
    assert Headers([("I", "a"), ("call-id", "b"), ("X-Y", "c")]).counts() == {
        "call-id": 2,
        "x-y": 1,
    }
