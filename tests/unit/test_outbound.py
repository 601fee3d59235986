"""The outbound call-state core (sipbot.outbound.DialCore) and DialStatus JSON: no sockets."""

from __future__ import annotations

import pytest

from sipbot.errors import DialError, DialRefused, SipbotError
from sipbot.outbound import DialCore, DialRequest, DialStatus, reason_text

CID = "c1@host"
T0 = 1_800_000_000.0


def core(ring_s: float = 2.0) -> DialCore:
    return DialCore(CID, ring_s)


def states(statuses: list[DialStatus]) -> list[str]:
    return [s.state for s in statuses]


def placed(ring_s: float = 2.0) -> DialCore:
    c = core(ring_s)
    assert states(c.queued(T0)) == ["queued"]
    assert states(c.invite_sent(T0 + 0.1)) == ["trying"]
    return c


def test_the_happy_path_is_queued_trying_ringing_answered_ended() -> None:
    c = placed()
    assert c.provisional(100, T0 + 0.11) == []  # 100 is not ringing
    [ringing] = c.provisional(180, T0 + 0.2)
    assert (ringing.state, ringing.sip_code, ringing.at) == ("ringing", 180, T0 + 0.2)
    assert c.provisional(180, T0 + 0.3) == []  # Rule 1: a second 180 says nothing new
    assert c.provisional(183, T0 + 0.35, sdp=True) == []
    assert c.early_media
    [answered] = c.final_response(200, T0 + 1.0, phrase="OK")
    assert (answered.state, answered.sip_code, answered.at) == ("answered", 200, T0 + 1.0)
    assert c.answered_at == T0 + 1.0
    assert c.ring_deadline is None
    assert c.timer(T0 + 100) == []  # answered: the ring deadline is gone
    [ended] = c.ended("bye", T0 + 9.0)
    assert (ended.state, ended.reason, ended.sip_code) == ("ended", "bye", 200)
    assert c.ended("bye", T0 + 9.5) == []


@pytest.mark.parametrize("status", [486, 600])
def test_486_and_600_are_busy_then_ended(status: int) -> None:
    c = placed()
    got = c.final_response(status, T0 + 0.5, phrase="Busy Here", reason_header="Q.850;cause=17")
    assert states(got) == ["busy", "ended"]
    assert [(s.sip_code, s.reason) for s in got] == [(status, "Q.850;cause=17")] * 2


def test_other_final_responses_are_rejected_with_phrase_and_retry_after() -> None:
    c = placed()
    [rejected, ended] = c.final_response(
        503, T0 + 0.5, phrase="Service Unavailable", retry_after="30"
    )
    assert (rejected.state, rejected.sip_code) == ("rejected", 503)
    assert rejected.reason == "Service Unavailable; retry after 30 s"
    assert ended.state == "ended"
    assert c.final_response(200, T0 + 0.6) == []  # Rule 1: a late 2xx after the end


def test_the_ring_timeout_after_ringing_is_no_answer_and_asks_for_cancel() -> None:
    c = placed(ring_s=1.5)
    c.provisional(180, T0 + 0.2)
    assert c.ring_deadline == pytest.approx(T0 + 1.6)
    assert c.timer(T0 + 1.59) == []
    assert not c.cancel
    got = c.timer(T0 + 1.6)
    assert states(got) == ["no-answer", "ended"]
    assert got[0].reason == "no answer in 1.5 s"
    assert c.cancel
    assert c.final_response(487, T0 + 1.7, phrase="Request Terminated") == []


def test_a_100_alone_is_enough_for_no_answer() -> None:
    c = placed(ring_s=1.0)
    c.provisional(100, T0 + 0.2)
    assert states(c.timer(T0 + 1.1)) == ["no-answer", "ended"]


def test_no_response_at_all_is_failed() -> None:
    c = placed(ring_s=1.0)
    got = c.timer(T0 + 1.1)
    assert states(got) == ["failed", "ended"]
    assert got[0].reason == "no response in 1 s"
    assert got[0].sip_code is None
    assert c.cancel


def test_transport_or_dns_failure_is_failed_with_why() -> None:
    c = core()
    c.queued(T0)
    got = c.failed("DNS: cannot resolve 'carrier.test'", T0 + 0.1)
    assert states(got) == ["failed", "ended"]
    assert got[0].reason == "DNS: cannot resolve 'carrier.test'"
    assert c.invite_sent(T0 + 0.2) == []  # nothing after the end
    assert c.failed("again", T0 + 0.3) == []


def test_ended_before_answer_says_nothing() -> None:
    c = placed()
    assert c.ended("bye", T0 + 1) == []


def test_status_json() -> None:
    status = DialStatus(CID, "busy", T0, 486, "Busy Here")
    assert status.to_json() == {
        "call_id": CID,
        "state": "busy",
        "at": T0,
        "sip_code": 486,
        "reason": "Busy Here",
    }


def test_reason_text_prefers_the_reason_header() -> None:
    assert reason_text(480, "Temporarily Unavailable", None, None) == "Temporarily Unavailable"
    assert reason_text(480, "x", ' SIP;cause=480;text="Away" ', None) == 'SIP;cause=480;text="Away"'
    assert reason_text(503, "", None, "120;duration=10") == "503; retry after 120 s"


def test_request_defaults_and_errors_are_in_the_tree() -> None:
    request = DialRequest(to="sip:a@b", agent="bot")
    assert (request.trunk, request.caller_id, dict(request.variables)) == (None, None, {})
    assert issubclass(DialRefused, DialError)
    assert issubclass(DialError, SipbotError)
