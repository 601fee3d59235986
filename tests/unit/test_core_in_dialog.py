"""The SIP core's in-dialog events and entry points (Core Rule 5, Uas Rule 4): fake clock."""

from __future__ import annotations

import pytest

from sipbot.errors import LocalSipError
from sipbot.sip.core import (
    CallLeg,
    CallTerminated,
    ReofferReceived,
    RequestReceived,
    ServerRequest,
)
from tests.unit.test_core import (  # noqa: F401 (deterministic_ids is an autouse fixture)
    SDP_ANSWER,
    Harness,
    confirmed_call,
    deterministic_ids,
    request,
)

HOLD = b"v=0 hold\r\n"


def reinvite(call: CallLeg, cseq: int = 2, branch: str = "z9hG4bK-r2", body: bytes = HOLD) -> str:
    return request("INVITE", branch=branch, cseq=cseq, to_tag=call.local_tag, body=body)


def one_event(h: Harness) -> ServerRequest:
    [event] = h.events()
    assert isinstance(event, (ReofferReceived, RequestReceived))
    return event.pending


def test_reoffer_is_an_event_answered_through_the_entry_point():
    h = Harness(app=False)
    call = confirmed_call(h)
    h.feed(reinvite(call), 5.0)
    [event] = h.events()
    assert isinstance(event, ReofferReceived)
    assert (event.call, event.offer) == (call, HOLD)
    assert h.sent() == []  # nothing until the application answers
    assert h.core.answer_reoffer(event.pending, b"v=0 held\r\n", now=5.05)
    [(ok, _)] = h.sent()
    assert (ok.status, ok.body, ok.cseq) == (200, b"v=0 held\r\n", (2, "INVITE"))
    assert (call.local_sdp, call.remote_sdp) == (b"v=0 held\r\n", HOLD)
    assert h.run_until(5.6) == [(5.55, ["200"])]  # the 2xx is retransmitted until the ACK
    assert not h.core.answer_reoffer(event.pending, b"v=0 again\r\n", now=6.0)
    assert h.sent() == []


def test_unanswered_reinvite_gets_100_after_200_ms_then_the_answer():
    h = Harness(app=False)
    call = confirmed_call(h)
    h.feed(reinvite(call), 5.0)
    pending = one_event(h)
    assert h.run_until(5.3) == [(5.2, ["100"])]
    h.feed(reinvite(call), 5.4)  # a retransmission: the 100 again, no second event
    assert h.summary() == ["100"]
    assert h.events() == []
    assert h.core.answer_reoffer(pending, None, now=5.5)
    [(ok, _)] = h.sent()
    assert (ok.status, ok.body) == (200, SDP_ANSWER)  # None: our current SDP


def test_unanswered_reoffer_gets_500_after_the_timeout():
    h = Harness(app=False, request_answer_timeout=4.0)
    call = confirmed_call(h)
    h.feed(request("UPDATE", branch="z9hG4bK-u", cseq=2, to_tag=call.local_tag, body=HOLD), 5.0)
    pending = one_event(h)
    assert h.run_until(9.5) == [(9.0, ["500"])]  # no 100 for an UPDATE
    assert call.remote_sdp != HOLD
    assert not h.core.answer_reoffer(pending, b"v=0 late\r\n", now=9.5)
    assert h.sent() == []
    assert call.local_sdp == SDP_ANSWER


def test_reoffer_status_answer_and_out_of_range_status():
    h = Harness(app=False)
    call = confirmed_call(h)
    h.feed(reinvite(call), 5.0)
    assert h.core.answer_reoffer(one_event(h), 488, now=5.0)
    h.feed(reinvite(call, cseq=3, branch="z9hG4bK-r3"), 6.0)
    assert h.core.answer_reoffer(one_event(h), 200, now=6.0)  # not an error status
    assert [m.status for m, _ in h.sent()] == [488, 500]
    assert call.remote_sdp != HOLD


def test_second_reoffer_while_one_is_unanswered_is_500_with_retry_after():
    h = Harness(app=False)
    call = confirmed_call(h)
    h.feed(reinvite(call), 5.0)
    pending = one_event(h)
    h.feed(request("UPDATE", branch="z9hG4bK-u", cseq=3, to_tag=call.local_tag, body=HOLD), 5.1)
    [(busy, _)] = h.sent()
    assert (busy.status, busy.cseq[1]) == (500, "UPDATE")
    assert busy.headers.get("Retry-After") is not None
    assert h.events() == []
    with pytest.raises(LocalSipError, match="in progress"):
        h.core.request(call, "INVITE", body=b"v=0 ours\r\n", now=5.1)
    assert h.core.answer_reoffer(pending, None, now=5.15)
    assert h.summary() == ["200"]


def test_bye_answers_the_pending_reoffer_487():
    h = Harness(app=False)
    call = confirmed_call(h)
    h.feed(reinvite(call), 5.0)
    pending = one_event(h)
    h.feed(request("BYE", branch="z9hG4bK-b", cseq=3, to_tag=call.local_tag), 5.1)
    assert [(m.status, m.cseq[1]) for m, _ in h.sent()] == [(200, "BYE"), (487, "INVITE")]
    assert h.events() == [CallTerminated(call, "bye-received")]
    assert not h.core.answer_reoffer(pending, b"v=0 late\r\n", now=5.2)
    assert h.sent() == []
    assert not call.pending_in  # no answer timeout left behind


def test_our_bye_answers_pending_requests_487_first():
    h = Harness(app=False)
    call = confirmed_call(h)
    h.feed(request("INFO", branch="z9hG4bK-n1", cseq=2, to_tag=call.local_tag))
    pending = one_event(h)
    assert h.core.bye(call, now=1.0) is not None
    assert h.summary() == ["487", "BYE"]
    assert not h.core.answer_request(pending, 200, now=1.0)


def test_in_dialog_requests_are_events_with_default_and_chosen_status():
    h = Harness(app=False, request_answer_timeout=4.0)
    call = confirmed_call(h)
    for cseq, method in enumerate(("INFO", "NOTIFY", "REFER", "REFER", "INFO"), start=2):
        h.feed(request(method, branch=f"z9hG4bK-n{cseq}", cseq=cseq, to_tag=call.local_tag))
    events = h.events()
    assert [type(e) for e in events] == [RequestReceived] * 5
    assert [e.request.method for e in events if isinstance(e, RequestReceived)] == [
        "INFO",
        "NOTIFY",
        "REFER",
        "REFER",
        "INFO",
    ]
    assert h.sent() == []
    pendings = [e.pending for e in events if isinstance(e, RequestReceived)]
    assert h.core.answer_request(pendings[0], None, now=1.0)
    assert h.core.answer_request(pendings[1], None, now=1.0)
    assert h.core.answer_request(pendings[2], None, now=1.0)
    assert h.core.answer_request(pendings[3], 202, now=1.0)
    assert [m.status for m, _ in h.sent()] == [200, 200, 603, 202]
    assert h.run_until(4.5) == [(4.0, ["500"])]  # the last one was never answered
    assert not h.core.answer_request(pendings[4], 200, now=4.5)
