"""Unit tests of the sans-I/O SIP endpoint: exact messages, fake clock, no sockets."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from sipbot.errors import LocalSipError
from sipbot.sip import core as core_module
from sipbot.sip import endpoint as endpoint_module
from sipbot.sip import uac as uac_module
from sipbot.sip import uas as uas_module
from sipbot.sip.auth import Credentials, DigestVerifier
from sipbot.sip.core import (
    CallAnswered,
    CallConfirmed,
    CallFailed,
    CallLeg,
    CallProgress,
    CallState,
    CallTerminated,
    Core,
    CoreSettings,
    IncomingCall,
    Peer,
    ReofferReceived,
    RequestCompleted,
    RequestReceived,
)
from sipbot.sip.message import SipRequest, SipResponse, make_response, parse_message
from tests.data.rfc4475 import load as load_rfc4475
from tests.data.rfc4475.expected import EXPECTED
from tests.refcount import freed_by_refcount

PHONE = Peer("udp", "10.0.0.1", 5070)
SDP_OFFER = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_ANSWER = b"v=0\r\no=- 2 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


@pytest.fixture(autouse=True)
def deterministic_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    tags = itertools.count(1)
    branches = itertools.count(1)
    for module in (core_module, endpoint_module, uac_module, uas_module):
        if hasattr(module, "generate_tag"):
            monkeypatch.setattr(module, "generate_tag", lambda: f"tag{next(tags)}")
    monkeypatch.setattr(endpoint_module, "generate_branch", lambda: f"z9hG4bK-b{next(branches)}")
    monkeypatch.setattr(uac_module, "generate_call_id", lambda host: f"cid@{host}")


def address_for(transport: str, peer_host: str) -> tuple[str, int]:
    return ("192.0.2.1", 5060 if transport == "udp" else 5062)


class Harness:
    """The core plus a stand-in for the shell: by default it answers re-offers and in-dialog
    requests right after ``feed`` like ``UserAgent`` does (through ``on_reoffer`` /
    ``on_request`` hooks, else the core's defaults); ``app=False`` leaves them to the test."""

    def __init__(self, app: bool = True, **settings: object) -> None:
        self.core = Core(CoreSettings(**settings), address_for)  # type: ignore[arg-type]
        self.app = app
        self.on_reoffer: dict[int, Callable[[bytes], bytes | int]] = {}
        self.on_request: dict[int, Callable[[SipRequest], int]] = {}
        self._held: list[object] = []

    def feed(self, text: str, now: float = 0.0, source: Peer = PHONE, body: bytes = b"") -> None:
        self.core.receive(text.encode() + body, source, now)
        if not self.app:
            return
        for event in self.core.events():
            if isinstance(event, ReofferReceived):
                hook = self.on_reoffer.get(event.call.id)
                answer = hook(event.offer) if hook is not None else None
                self.core.answer_reoffer(event.pending, answer, now=now)
            elif isinstance(event, RequestReceived):
                hook_r = self.on_request.get(event.call.id)
                status = hook_r(event.request) if hook_r is not None else None
                self.core.answer_request(event.pending, status, now=now)
            else:
                self._held.append(event)

    def sent(self) -> list[tuple[SipRequest | SipResponse, Peer]]:
        return [(parse_message(o.data), o.destination) for o in self.core.data_to_send()]

    def sent_raw(self) -> list[str]:
        return [o.data.decode() for o in self.core.data_to_send()]

    def summary(self) -> list[str]:
        """Sent messages as 'METHOD' / 'status' strings."""
        out = []
        for m, _ in self.sent():
            out.append(m.method if isinstance(m, SipRequest) else str(m.status))
        return out

    def events(self) -> list[object]:
        held, self._held = self._held, []
        return held + list(self.core.events())

    def run_until(self, until: float) -> list[tuple[float, list[str]]]:
        out = []
        while (d := self.core.next_deadline()) is not None and d <= until:
            self.core.handle_timers(d)
            out.append((d, self.summary()))
        return out


def request(
    method: str,
    *,
    branch: str = "z9hG4bK-i1",
    cseq: int = 1,
    to_tag: str | None = None,
    call_id: str = "c1",
    from_tag: str = "ft",
    body: bytes = b"",
    content_type: str | None = "application/sdp",
    extra: str = "",
    uri: str = "sip:bot@192.0.2.1",
    via: str = "SIP/2.0/UDP 10.0.0.1:5070;branch={branch};rport",
    cseq_method: str | None = None,
) -> str:
    to = "<sip:bot@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via.format(branch=branch)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@10.0.0.1>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:alice@10.0.0.1:5070>\r\n"
        f"{extra}"
    )
    if body and content_type:
        text += f"Content-Type: {content_type}\r\n"
    return text + f"Content-Length: {len(body)}\r\n\r\n" + body.decode()


def incoming_call(h: Harness, extra: str = "", now: float = 0.0) -> CallLeg:
    h.feed(request("INVITE", body=SDP_OFFER, extra=extra), now)
    events = h.events()
    assert len(events) == 1
    assert isinstance(events[0], IncomingCall)
    return events[0].call


def confirmed_call(h: Harness) -> CallLeg:
    call = incoming_call(h)
    h.core.accept(call, SDP_ANSWER, now=0.0)
    h.feed(request("ACK", branch="z9hG4bK-a1", to_tag=call.local_tag), 0.1)
    assert h.events() == [CallConfirmed(call)]
    h.sent()
    return call


# --------------------------------------------------------------------------- incoming INVITE


def test_invite_gets_100_with_received_rport_and_an_incoming_call():
    h = Harness()
    h.feed(request("INVITE", body=SDP_OFFER), source=Peer("udp", "203.0.113.5", 40000))
    [(trying, dest)] = h.sent()
    assert isinstance(trying, SipResponse)
    assert bytes(trying).decode() == (
        "SIP/2.0 100 Trying\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-i1;rport=40000;received=203.0.113.5\r\n"
        "From: <sip:alice@10.0.0.1>;tag=ft\r\n"
        "To: <sip:bot@192.0.2.1>\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Server: sipbot/0.1\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    assert dest == Peer("udp", "203.0.113.5", 40000)  # RFC 3581: received:rport
    [event] = h.events()
    assert isinstance(event, IncomingCall)
    call = event.call
    assert call.state is CallState.INCOMING
    assert call.remote_sdp == SDP_OFFER
    assert call.source == Peer("udp", "203.0.113.5", 40000)


def test_response_without_rport_goes_to_source_port_with_force_rport():
    h = Harness()
    via = "SIP/2.0/UDP 10.0.0.1:5070;branch={branch}"
    h.feed(request("OPTIONS", via=via), source=Peer("udp", "203.0.113.5", 40000))
    [(ok, dest)] = h.sent()
    assert (
        ok.headers.get("Via") == "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-i1;received=203.0.113.5"
    )
    assert dest == Peer("udp", "203.0.113.5", 40000)


def test_response_without_rport_goes_to_received_and_via_port():
    h = Harness(force_rport=False)
    via = "SIP/2.0/UDP 10.0.0.1:5070;branch={branch}"
    h.feed(request("OPTIONS", via=via), source=Peer("udp", "203.0.113.5", 40000))
    [(ok, dest)] = h.sent()
    assert (
        ok.headers.get("Via") == "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-i1;received=203.0.113.5"
    )
    assert dest == Peer("udp", "203.0.113.5", 5070)


def test_response_same_host_no_received_and_default_port():
    h = Harness(force_rport=False)
    via = "SIP/2.0/UDP 10.0.0.1;branch={branch}"
    h.feed(request("OPTIONS", via=via))
    [(ok, dest)] = h.sent()
    assert ok.headers.get("Via") == "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-i1"
    assert dest == Peer("udp", "10.0.0.1", 5060)


def test_accept_sends_200_with_tag_record_route_contact_sdp():
    h = Harness()
    extra = "Record-Route: <sip:proxy.example;lr>\r\n"
    call = incoming_call(h, extra=extra)
    h.sent()
    assert h.core.progress(call, 180, now=0.1)
    assert h.core.accept(call, SDP_ANSWER, now=0.2)
    raw = h.sent_raw()
    assert raw[0].startswith("SIP/2.0 180 Ringing\r\n")
    assert "Record-Route: <sip:proxy.example;lr>\r\n" in raw[0]
    assert "To: <sip:bot@192.0.2.1>;tag=tag1\r\n" in raw[0]
    assert raw[1] == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-i1;rport=5070;received=10.0.0.1\r\n"
        "Record-Route: <sip:proxy.example;lr>\r\n"
        "From: <sip:alice@10.0.0.1>;tag=ft\r\n"
        "To: <sip:bot@192.0.2.1>;tag=tag1\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:bot@192.0.2.1:5060>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY, REFER\r\n"
        "Server: sipbot/0.1\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP_ANSWER)}\r\n\r\n" + SDP_ANSWER.decode()
    )
    assert call.state is CallState.ACCEPTED
    assert not h.core.accept(call, SDP_ANSWER, now=0.3)  # once only


def test_2xx_retransmitted_t1_doubling_to_t2_until_ack():
    h = Harness()
    call = incoming_call(h)
    h.core.accept(call, SDP_ANSWER, now=10.0)
    h.sent()
    fired = h.run_until(20.0)
    assert fired == [
        (10.5, ["200"]),
        (11.5, ["200"]),
        (13.5, ["200"]),
        (17.5, ["200"]),
    ]
    h.feed(request("ACK", branch="z9hG4bK-a1", to_tag="tag1"), 18.0)
    assert h.events() == [CallConfirmed(call)]
    assert call.state is CallState.CONFIRMED
    h.run_until(60.0)
    assert h.summary() == []  # no more 200s, no BYE


def test_2xx_without_ack_gives_up_at_64_t1_and_sends_bye():
    h = Harness()
    call = incoming_call(h)
    h.core.accept(call, SDP_ANSWER, now=0.0)
    h.sent()
    fired = h.run_until(32.0)
    times = [t for t, _ in fired]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert fired[-1][1] == ["BYE"]
    assert h.events() == [CallTerminated(call, "ack-timeout")]
    assert call.state is CallState.TERMINATING


def test_retransmitted_invite_is_absorbed_never_a_second_call():
    h = Harness()
    call = incoming_call(h)
    h.core.progress(call, 180, now=0.1)
    assert h.summary() == ["100", "180"]
    h.feed(request("INVITE", body=SDP_OFFER), 0.5)
    assert h.events() == []
    assert h.summary() == ["180"]  # last provisional resent
    h.core.accept(call, SDP_ANSWER, now=1.0)
    h.sent()
    h.feed(request("INVITE", body=SDP_OFFER), 1.2)
    assert h.events() == []
    assert h.summary() == []  # RFC 6026 "Accepted": absorbed
    assert len(h.core.calls) == 1


def test_retransmitted_bye_gets_200_again_and_ends_the_call_once():
    h = Harness()
    call = confirmed_call(h)
    bye = request("BYE", branch="z9hG4bK-y1", cseq=2, to_tag=call.local_tag)
    h.feed(bye, 1.0)
    assert h.summary() == ["200"]
    assert h.events() == [CallTerminated(call, "bye-received")]
    h.feed(bye, 1.5)
    assert h.summary() == ["200"]
    assert h.events() == []
    assert h.core.calls == []


@pytest.mark.parametrize("ours", [False, True], ids=["their-bye", "our-bye"])
def test_an_ended_call_is_freed_once_its_transactions_have_ended(ours: bool) -> None:
    """Issue 12: the call's leg and its INVITE's transaction entry held each other (and the leg
    and our BYE's request), so every ended call's leg, INVITE and dialog state waited for a full
    GC pass."""
    h = Harness()
    call = confirmed_call(h)
    if ours:
        h.core.bye(call, now=1.0)
        [(bye, _)] = h.sent()
        h.feed(response_to(bye, 200), 1.1)
        del bye
    else:
        h.feed(request("BYE", branch="z9hG4bK-y1", cseq=2, to_tag=call.local_tag), 1.0)
    assert isinstance(h.events()[0], CallTerminated)
    h.run_until(100.0)  # every transaction's wait timer (32 s at most)
    h.sent()
    assert h.core.next_deadline() is None
    held: list[object] = [call]
    del call
    assert freed_by_refcount(held)


def test_cancel_gets_200_and_487_retransmitted_until_ack():
    h = Harness()
    call = incoming_call(h)
    h.sent()
    h.feed(request("CANCEL", branch="z9hG4bK-i1"), 1.0)
    sent = h.sent()
    assert [(m.status, m.cseq[1]) for m, _ in sent] == [(200, "CANCEL"), (487, "INVITE")]
    assert sent[1][0].headers.get("To") == "<sip:bot@192.0.2.1>;tag=tag1"
    assert sent[0][0].headers.get("To") == "<sip:bot@192.0.2.1>;tag=tag1"
    assert h.events() == [CallTerminated(call, "cancelled")]
    assert [t for t, _ in h.run_until(4.0)] == [1.5, 2.5]  # Timer G: T1, 2T1
    h.feed(request("ACK", branch="z9hG4bK-i1", to_tag="tag1"), 4.0)
    # Timer I (T4) ends the INVITE transaction, Timer J the CANCEL's: no more 487
    assert h.run_until(100.0) == [(9.0, []), (33.0, [])]
    assert not h.core.accept(call, SDP_ANSWER, now=5.0)


def test_cancel_without_invite_is_481():
    h = Harness()
    h.feed(request("CANCEL", branch="z9hG4bK-zz"))
    [(resp, _)] = h.sent()
    assert resp.status == 481


def test_cancel_after_200_is_200_only():
    h = Harness()
    call = incoming_call(h)
    h.core.accept(call, SDP_ANSWER, now=0.0)
    h.sent()
    h.feed(request("CANCEL", branch="z9hG4bK-i1"), 0.1)
    assert h.summary() == ["200"]
    assert call.state is CallState.ACCEPTED


def test_merged_request_is_482():
    h = Harness()
    incoming_call(h)
    h.sent()
    h.feed(request("INVITE", branch="z9hG4bK-other", body=SDP_OFFER), 0.1)
    [(resp, _)] = h.sent()
    assert (resp.status, resp.reason) == (482, "Loop Detected")
    assert h.events() == []


def test_in_dialog_request_without_dialog_is_481():
    h = Harness()
    h.feed(request("BYE", to_tag="nope", cseq=2))
    [(resp, _)] = h.sent()
    assert (resp.status, resp.reason) == (481, "Call/Transaction Does Not Exist")
    h.feed(request("INFO", branch="z9hG4bK-x2"))
    [(resp, _)] = h.sent()
    assert resp.status == 481


def test_stray_ack_is_dropped():
    h = Harness()
    h.feed(request("ACK", to_tag="nope"))
    assert h.sent() == []


def test_options_out_of_dialog():
    h = Harness()
    h.feed(request("OPTIONS"))
    [raw] = h.sent_raw()
    assert raw == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-i1;rport=5070;received=10.0.0.1\r\n"
        "From: <sip:alice@10.0.0.1>;tag=ft\r\n"
        "To: <sip:bot@192.0.2.1>;tag=tag1\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Server: sipbot/0.1\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY, REFER\r\n"
        "Accept: application/sdp\r\n"
        "Supported: \r\n"
        "Content-Length: 0\r\n\r\n"
    )


def test_unknown_method_is_501_known_unsupported_405_with_allow():
    h = Harness()
    h.feed(request("FOO"))
    [(resp, _)] = h.sent()
    assert (resp.status, resp.headers.get_all("Allow")[:2]) == (501, ["INVITE", "ACK"])
    h.feed(request("REGISTER", branch="z9hG4bK-r"))
    [(resp, _)] = h.sent()
    assert resp.status == 405
    assert "Allow" in resp.headers


def test_unsupported_uri_scheme_is_416():
    h = Harness()
    h.feed(request("INVITE", uri="http://example.com/", body=SDP_OFFER))
    [(resp, _)] = h.sent()
    assert resp.status == 416
    assert h.events() == []


def test_tel_uri_is_accepted():
    h = Harness()
    h.feed(request("INVITE", uri="tel:+15551234567", body=SDP_OFFER))
    assert h.summary() == ["100"]


def test_require_unknown_option_is_420_with_unsupported():
    h = Harness()
    h.feed(request("INVITE", body=SDP_OFFER, extra="Require: 100rel, foo\r\n"))
    [(resp, _)] = h.sent()
    assert resp.status == 420
    assert resp.headers.get_all("Unsupported") == ["100rel", "foo"]


def test_invite_with_non_sdp_body_is_415():
    h = Harness()
    h.feed(request("INVITE", body=b"hello", content_type="text/plain"))
    [(resp, _)] = h.sent()
    assert resp.status == 415
    assert resp.headers.get("Accept") == "application/sdp"


def test_parse_error_is_answered_with_the_parser_reason():
    h = Harness()
    text = request("OPTIONS").replace("Content-Length: 0", "Content-Length: 9")
    h.feed(text)
    [raw] = h.sent_raw()
    assert raw.startswith("SIP/2.0 400 Content-Length larger than message\r\n")
    assert "To: <sip:bot@192.0.2.1>;tag=tag1\r\n" in raw


def test_other_version_is_505():
    h = Harness()
    h.feed(request("OPTIONS").replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1))
    [(resp, _)] = h.sent()
    assert (resp.status, resp.reason) == (505, "Version Not Supported")


def test_unanswerable_garbage_is_dropped():
    h = Harness()
    h.feed("\x00\x01garbage")
    h.feed(
        request("OPTIONS").replace("Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-i1;rport\r\n", "")
    )
    h.feed(request("ACK", to_tag="x").replace("CSeq: 1 ACK", "CSeq: x ACK"))
    h.feed("SIP/2.0 2000 OK\r\n" + request("OPTIONS").split("\r\n", 1)[1])  # bad response
    assert h.sent() == []


def test_malformed_via_is_echoed_and_answered_at_the_source():
    h = Harness(force_rport=False)
    h.feed(request("OPTIONS", via="SIP/2.0/UDP 10.0.0.1:5999;;branch={branch}"))
    [out] = h.core.data_to_send()
    raw = out.data.decode()
    assert raw.startswith("SIP/2.0 400 Empty parameter in Via\r\n")
    assert "Via: SIP/2.0/UDP 10.0.0.1:5999;;branch=z9hG4bK-i1\r\n" in raw
    assert out.destination == PHONE


def test_request_without_from_to_call_id_gets_400_with_what_there_is():
    h = Harness()
    text = request("OPTIONS")
    for name in ("From", "To", "Call-ID"):
        text = "\r\n".join(line for line in text.split("\r\n") if not line.startswith(name + ":"))
    h.feed(text)
    [raw] = h.sent_raw()
    assert raw.startswith("SIP/2.0 400 Missing required headers: From, To, Call-ID\r\n")
    assert "CSeq: 1 OPTIONS\r\n" in raw
    assert "From:" not in raw


def test_invite_accepting_no_sdp_is_406():
    h = Harness()
    h.feed(request("INVITE", body=SDP_OFFER, extra="Accept: text/nobodyKnowsThis\r\n"))
    [(resp, _)] = h.sent()
    assert (resp.status, resp.reason) == (406, "Not Acceptable")
    accept = "Accept: application/sdp;level=1, application/isup\r\n"
    h.feed(request("INVITE", branch="z9hG4bK-2", call_id="c2", body=SDP_OFFER, extra=accept))
    assert h.summary() == ["100"]


def test_no_answer_from_app_is_480_at_answer_timeout():
    h = Harness(answer_timeout=10.0)
    call = incoming_call(h)
    h.sent()
    fired = h.run_until(10.0)
    assert fired == [(10.0, ["480"])]
    assert h.events() == [CallTerminated(call, "timeout")]


def test_reject_sends_final_and_reports_rejected():
    h = Harness()
    call = incoming_call(h)
    h.sent()
    assert h.core.reject(call, 486, headers=[("Retry-After", "30")], now=1.0)
    [(resp, _)] = h.sent()
    assert (resp.status, resp.headers.get("Retry-After")) == (486, "30")
    assert resp.headers.get("To") == "<sip:bot@192.0.2.1>;tag=tag1"
    assert h.events() == [CallTerminated(call, "rejected")]
    with pytest.raises(LocalSipError, match="300-699"):
        h.core.reject(call, 200, now=1.0)


# --------------------------------------------------------------------------- in dialog


def test_reinvite_answered_by_hook_and_2xx_retransmitted_until_ack():
    h = Harness()
    call = confirmed_call(h)
    offers = []

    def reoffer(offer: bytes) -> bytes:
        offers.append(offer)
        return b"v=0 new answer\r\n"

    h.on_reoffer[call.id] = reoffer
    reinvite = request(
        "INVITE", branch="z9hG4bK-r2", cseq=2, to_tag=call.local_tag, body=b"v=0 hold\r\n"
    )
    h.feed(reinvite.replace("10.0.0.1:5070>", "10.0.0.9:5999>"), 5.0)
    [(ok, _)] = h.sent()
    assert ok.status == 200
    assert ok.body == b"v=0 new answer\r\n"
    assert offers == [b"v=0 hold\r\n"]
    assert call.remote_sdp == b"v=0 hold\r\n"
    assert call.dialog is not None
    assert call.dialog.remote_target == "sip:alice@10.0.0.9:5999"
    assert h.run_until(6.0) == [(5.5, ["200"])]
    h.feed(request("ACK", branch="z9hG4bK-a2", cseq=2, to_tag=call.local_tag), 6.0)
    assert all(sent == [] for _, sent in h.run_until(100.0))  # no more 200s
    assert h.events() == []


def test_reinvite_without_hook_answers_with_current_sdp():
    h = Harness()
    call = confirmed_call(h)
    h.feed(request("INVITE", branch="z9hG4bK-r2", cseq=2, to_tag=call.local_tag, body=b"v=0\r\n"))
    [(ok, _)] = h.sent()
    assert (ok.status, ok.body) == (200, SDP_ANSWER)


def test_reinvite_hook_status_is_sent():
    h = Harness()
    call = confirmed_call(h)
    h.on_reoffer[call.id] = lambda offer: 488
    h.feed(request("INVITE", branch="z9hG4bK-r2", cseq=2, to_tag=call.local_tag, body=b"v=0\r\n"))
    [(resp, _)] = h.sent()
    assert resp.status == 488
    assert call.remote_sdp == SDP_OFFER  # unchanged


def test_reinvite_while_ours_is_pending_is_491():
    h = Harness()
    call = confirmed_call(h)
    h.core.request(call, "INVITE", body=b"v=0 ours\r\n", now=1.0)
    h.sent()
    h.feed(request("INVITE", branch="z9hG4bK-r2", cseq=2, to_tag=call.local_tag, body=b"v=0\r\n"))
    [(resp, _)] = h.sent()
    assert (resp.status, resp.reason) == (491, "Request Pending")


def test_update_answered_by_hook():
    h = Harness()
    call = confirmed_call(h)
    h.on_reoffer[call.id] = lambda offer: b"v=0 updated\r\n"
    h.feed(request("UPDATE", branch="z9hG4bK-u", cseq=2, to_tag=call.local_tag, body=b"v=0 u\r\n"))
    [(ok, _)] = h.sent()
    assert (ok.status, ok.body, ok.cseq) == (200, b"v=0 updated\r\n", (2, "UPDATE"))
    assert h.run_until(100.0) == [(32.0, [])]  # no 2xx retransmission for UPDATE; Timer J


def test_info_and_notify_default_200_or_hook():
    h = Harness()
    call = confirmed_call(h)
    h.feed(request("INFO", branch="z9hG4bK-n1", cseq=2, to_tag=call.local_tag))
    h.feed(request("NOTIFY", branch="z9hG4bK-n2", cseq=3, to_tag=call.local_tag))
    assert h.summary() == ["200", "200"]
    seen = []
    h.on_request[call.id] = lambda req: seen.append(req.method) or 202
    h.feed(request("REFER", branch="z9hG4bK-n3", cseq=4, to_tag=call.local_tag))
    assert h.summary() == ["202"]
    assert seen == ["REFER"]


def test_lower_cseq_in_dialog_is_500():
    h = Harness()
    call = confirmed_call(h)
    h.feed(request("INFO", branch="z9hG4bK-n1", cseq=5, to_tag=call.local_tag))
    h.feed(request("INFO", branch="z9hG4bK-n2", cseq=4, to_tag=call.local_tag))
    assert [(m.status, m.reason) for m, _ in h.sent()] == [(200, "OK"), (500, "CSeq out of order")]


def test_our_bye_is_retransmitted_and_times_out_ending_the_dialog():
    h = Harness()
    call = confirmed_call(h)
    h.run_until(99.0)  # the INVITE transaction's Timer L
    handle = h.core.bye(call, now=100.0)
    assert handle is not None
    [(bye, dest)] = h.sent()
    assert bytes(bye).decode() == (
        "BYE sip:alice@10.0.0.1:5070 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-b1;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:bot@192.0.2.1>;tag=tag1\r\n"
        "To: <sip:alice@10.0.0.1>;tag=ft\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 BYE\r\n"
        "User-Agent: sipbot/0.1\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    assert dest == Peer("udp", "10.0.0.1", 5070)
    assert h.events() == [CallTerminated(call, "bye-sent")]
    fired = h.run_until(200.0)
    assert [t for t, _ in fired] == [
        100.5,
        101.5,
        103.5,
        107.5,
        111.5,
        115.5,
        119.5,
        123.5,
        127.5,
        131.5,
        132.0,
    ]
    assert h.events() == [RequestCompleted(handle, None)]
    assert call.state is CallState.TERMINATED
    assert h.core.calls == []


def test_our_bye_answered():
    h = Harness()
    call = confirmed_call(h)
    handle = h.core.bye(call, now=1.0)
    [(bye, _)] = h.sent()
    h.events()
    h.feed(response_to(bye, 200), 1.1)
    [done] = h.events()
    assert isinstance(done, RequestCompleted)
    assert (done.request, done.response.status) == (handle, 200)
    assert call.state is CallState.TERMINATED
    assert h.core.calls == []
    h.feed(request("INFO", branch="z9hG4bK-late", cseq=3, to_tag=call.local_tag), 1.2)
    assert h.summary() == ["481"]


def test_bye_before_ack_waits_for_the_ack():
    h = Harness()
    call = incoming_call(h)
    h.core.accept(call, SDP_ANSWER, now=0.0)
    h.sent()
    h.core.bye(call, now=0.1)
    assert h.summary() == []
    h.feed(request("ACK", branch="z9hG4bK-a1", to_tag=call.local_tag), 0.2)
    assert h.summary() == ["BYE"]
    assert h.events() == [CallConfirmed(call), CallTerminated(call, "bye-sent")]


def test_bye_crossing_ours_ends_once():
    h = Harness()
    call = confirmed_call(h)
    h.core.bye(call, now=1.0)
    h.sent()
    h.feed(request("BYE", branch="z9hG4bK-y1", cseq=2, to_tag=call.local_tag), 1.1)
    assert h.summary() == ["200"]
    assert h.events() == [CallTerminated(call, "bye-sent")]


# --------------------------------------------------------------------------- TCP


def test_tcp_responses_on_the_connection_contact_transport_tcp_no_timer_g():
    h = Harness()
    conn = Peer("tcp", "10.0.0.1", 40001, connection=7)
    via = "SIP/2.0/TCP 10.0.0.1:5070;branch={branch}"
    h.feed(request("INVITE", body=SDP_OFFER, via=via), source=conn)
    [event] = h.events()
    call = event.call
    [(_trying, dest)] = h.sent()
    assert dest == Peer("tcp", "10.0.0.1", 5070, connection=7)
    h.core.accept(call, SDP_ANSWER, now=0.0)
    [(ok, _)] = h.sent()
    assert ok.headers.get("Contact") == "<sip:bot@192.0.2.1:5062;transport=tcp>"
    assert h.run_until(0.6) == [(0.5, ["200"])]  # the UAS core retransmits 2xx on TCP too
    h.core.bye(call, now=1.0)  # bye waits for the ACK
    h.feed(request("ACK", branch="z9hG4bK-a1", to_tag="tag1", via=via), 1.0, source=conn)
    [(bye, dest)] = h.sent()
    assert bye.headers.get("Via").startswith("SIP/2.0/TCP 192.0.2.1:5062;")
    assert dest == Peer("tcp", "10.0.0.1", 5070, connection=7)
    # no Timer E on TCP: only Timer L of the INVITE (32) and Timer F of the BYE (1 + 32)
    assert h.run_until(100.0) == [(32.0, []), (33.0, [])]


def test_tcp_rejected_invite_no_timer_g():
    h = Harness()
    conn = Peer("tcp", "10.0.0.1", 40001, connection=7)
    via = "SIP/2.0/TCP 10.0.0.1:5070;branch={branch}"
    h.feed(request("INVITE", body=SDP_OFFER, via=via), source=conn)
    call = h.events()[0].call
    h.core.reject(call, 486, now=0.0)
    h.sent()
    assert h.run_until(100.0) == [(32.0, [])]  # only Timer H


# --------------------------------------------------------------------------- outgoing calls


def response_to(
    req: SipRequest,
    status: int,
    *,
    tag: str = "rt",
    body: bytes = b"",
    extra: tuple[tuple[str, str], ...] = (),
) -> str:
    resp = make_response(req, status, to_tag=tag)
    for name, value in extra:
        resp.headers.add(name, value)
    if body:
        resp.headers.add("Content-Type", "application/sdp")
        resp.body = body
    return bytes(resp).decode()


SERVER = Peer("udp", "10.0.0.2", 5080)


def outgoing(h: Harness, now: float = 0.0, timeout: float = 32.0) -> tuple[CallLeg, SipRequest]:
    call = h.core.invite(
        "sip:echo@10.0.0.2:5080",
        SDP_OFFER,
        destination=SERVER,
        now=now,
        timeout=timeout,
        headers=[("X-Test", "1")],
    )
    [(inv, dest)] = h.sent()
    assert dest == SERVER
    assert isinstance(inv, SipRequest)
    return call, inv


def test_invite_request_is_well_formed():
    h = Harness()
    h.core.invite("sip:echo@10.0.0.2:5080", SDP_OFFER, destination=SERVER, now=0.0)
    [raw] = h.sent_raw()
    assert raw == (
        "INVITE sip:echo@10.0.0.2:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-b1;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:sipbot@192.0.2.1>;tag=tag1\r\n"
        "To: <sip:echo@10.0.0.2:5080>\r\n"
        "Call-ID: cid@192.0.2.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:sipbot@192.0.2.1:5060>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY, REFER\r\n"
        "User-Agent: sipbot/0.1\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP_OFFER)}\r\n\r\n" + SDP_OFFER.decode()
    )


def test_outgoing_call_answered_acks_the_2xx_and_reacks_retransmissions():
    h = Harness()
    call, inv = outgoing(h)
    h.feed(response_to(inv, 180), 0.1, source=SERVER)
    [progress] = h.events()
    assert isinstance(progress, CallProgress)
    assert progress.response.status == 180
    rr = (("Record-Route", "<sip:10.0.0.3;lr>"), ("Contact", "<sip:echo@10.0.0.2:5080>"))
    ok = response_to(inv, 200, body=SDP_ANSWER, extra=rr)
    h.feed(ok, 0.2, source=SERVER)
    [(ack, dest)] = h.sent()
    assert bytes(ack).decode() == (
        "ACK sip:echo@10.0.0.2:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-b2;rport\r\n"
        "Route: <sip:10.0.0.3;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:sipbot@192.0.2.1>;tag=tag1\r\n"
        "To: <sip:echo@10.0.0.2:5080>;tag=rt\r\n"
        "Call-ID: cid@192.0.2.1\r\n"
        "CSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    assert dest == Peer("udp", "10.0.0.3", 5060)  # the first route
    [answered] = h.events()
    assert isinstance(answered, CallAnswered)
    assert call.state is CallState.CONFIRMED
    assert call.remote_sdp == SDP_ANSWER
    h.feed(ok, 0.7, source=SERVER)  # retransmitted 2xx (transaction "Accepted")
    assert h.sent_raw() == [bytes(ack).decode()]
    h.run_until(40.0)  # Timer M ends the transaction
    h.feed(ok, 41.0, source=SERVER)  # stray 2xx matched by dialog
    assert h.summary() == ["ACK"]
    assert h.events() == []


def test_outgoing_call_rejected():
    h = Harness()
    _call, inv = outgoing(h)
    resp = response_to(inv, 486)
    h.feed(resp, 0.1, source=SERVER)
    assert h.summary() == ["ACK"]  # by the transaction
    [failed] = h.events()
    assert isinstance(failed, CallFailed)
    assert (failed.reason, failed.response.status) == ("rejected", 486)
    assert h.core.calls == []


def test_outgoing_call_timer_b():
    h = Harness()
    call, _ = outgoing(h, timeout=100.0)
    fired = h.run_until(40.0)
    assert fired[-1] == (32.0, [])
    assert h.events() == [CallFailed(call, "timeout", None)]


def test_outgoing_cancel_waits_for_provisional_then_487():
    h = Harness()
    call, inv = outgoing(h)
    h.core.cancel(call, now=0.1)
    assert h.summary() == []  # §9.1: no CANCEL before a provisional response
    assert h.events() == [CallFailed(call, "cancelled", None)]
    h.feed(response_to(inv, 180), 0.2, source=SERVER)
    [(cancel, dest)] = h.sent()
    assert (cancel.method, cancel.cseq) == ("CANCEL", (1, "CANCEL"))
    assert cancel.headers.get("Via") == inv.headers.get("Via")
    assert dest == SERVER
    h.feed(response_to(cancel, 200), 0.3, source=SERVER)
    h.feed(response_to(inv, 487), 0.3, source=SERVER)
    assert h.summary() == ["ACK"]
    assert h.events() == []  # reported once
    assert h.core.calls == []


def test_outgoing_timeout_cancels_and_answer_after_cancel_is_acked_and_byed():
    h = Harness()
    call, inv = outgoing(h, timeout=5.0)
    h.feed(response_to(inv, 100, tag=""), 0.1, source=SERVER)
    assert h.events() == []  # 100 is not progress
    assert h.run_until(5.0) == [(5.0, ["CANCEL"])]  # Proceeding: no more INVITE retransmissions
    assert h.events() == [CallFailed(call, "timeout", None)]
    h.feed(response_to(inv, 200, body=SDP_ANSWER), 5.1, source=SERVER)
    assert h.summary() == ["ACK", "BYE"]
    assert h.events() == []


def test_outgoing_cancel_gives_up_after_64_t1_without_final():
    h = Harness()
    call, inv = outgoing(h)
    h.feed(response_to(inv, 180), 0.1, source=SERVER)
    h.events()
    h.core.cancel(call, now=1.0)
    h.sent()
    h.run_until(33.0)
    assert h.core.calls == []


def test_reinvite_from_us_acks_the_2xx_and_updates_sdp():
    h = Harness()
    call, inv = outgoing(h)
    h.feed(
        response_to(inv, 200, body=SDP_ANSWER, extra=(("Contact", "<sip:echo@10.0.0.2:5080>"),)),
        0.1,
        source=SERVER,
    )
    h.sent()
    h.events()
    h.core.request(call, "INVITE", body=b"v=0 hold\r\n", now=1.0)
    [(reinv, _)] = h.sent()
    assert (reinv.cseq, reinv.headers.get("Contact")) == (
        (2, "INVITE"),
        "<sip:sipbot@192.0.2.1:5060>",
    )
    with pytest.raises(LocalSipError, match="already in progress"):
        h.core.request(call, "INVITE", body=b"v=0\r\n", now=1.0)
    ok = response_to(reinv, 200, body=b"v=0 held\r\n")
    h.feed(ok, 1.1, source=SERVER)
    [(ack, _)] = h.sent()
    assert (ack.method, ack.cseq) == ("ACK", (2, "ACK"))
    [done] = h.events()
    assert isinstance(done, RequestCompleted)
    assert done.response.status == 200
    assert call.remote_sdp == b"v=0 held\r\n"
    assert call.local_sdp == b"v=0 hold\r\n"
    h.feed(ok, 1.5, source=SERVER)
    assert h.summary() == ["ACK"]


def test_in_dialog_request_481_ends_the_dialog():
    h = Harness()
    call = confirmed_call(h)
    h.core.request(call, "INFO", body=b"x", content_type="application/x", now=1.0)
    [(info, _)] = h.sent()
    assert info.headers.get("Content-Type") == "application/x"
    h.feed(response_to(info, 481), 1.1)
    [done, ended] = h.events()
    assert isinstance(done, RequestCompleted)
    assert done.response.status == 481
    assert ended == CallTerminated(call, "timeout")
    assert call.state is CallState.TERMINATING
    assert h.summary() == ["BYE"]


def test_shutdown_ends_every_call():
    h = Harness()
    incoming = incoming_call(h)
    h.feed(request("INVITE", branch="z9hG4bK-i2", call_id="c2", from_tag="f2", body=SDP_OFFER))
    confirmed = h.events()[0].call
    h.core.accept(confirmed, SDP_ANSWER, now=0.0)
    h.feed(
        request(
            "ACK", branch="z9hG4bK-a2", call_id="c2", from_tag="f2", to_tag=confirmed.local_tag
        ),
        0.1,
    )
    h.sent()
    h.events()
    h.core.shutdown(now=1.0)
    assert sorted(h.summary()) == ["503", "BYE"]
    assert h.events() == [
        CallTerminated(incoming, "shutdown"),
        CallTerminated(confirmed, "shutdown"),
    ]


# --------------------------------------------------------------------------- RFC 4475


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rfc4475_answers(name: str):
    """Each torture message gets the final answer in tests/data/rfc4475/expected.py, at the
    datagram's source; INVITEs the app would take are accepted (200)."""
    expected = EXPECTED[name]
    h = Harness()
    source = Peer("udp", "127.0.0.1", 5999)
    h.core.receive(load_rfc4475(name), source, 0.0)
    for event in h.events():
        if isinstance(event, IncomingCall):
            h.core.accept(event.call, SDP_ANSWER, now=0.0)
    # raw bytes: a 400 echoes the malformed headers, so our answer may not parse either
    finals = [o for o in h.core.data_to_send() if not o.data.startswith(b"SIP/2.0 100 ")]
    if expected.answer is None:
        assert finals == []
        return
    [out] = finals
    assert out.data.startswith(f"SIP/2.0 {expected.answer} ".encode())
    assert out.destination == source
    names = {line.split(b":", 1)[0].decode() for line in out.data.split(b"\r\n")[1:]}
    assert set(expected.headers) <= names


# --------------------------------------------------------------------------- digest


def challenged(h: Harness, inv: SipRequest, status: int, verifier: DigestVerifier) -> SipRequest:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    h.feed(response_to(inv, status, extra=((name, verifier.challenge(0.0)),)), 0.1, source=SERVER)
    sent = h.sent()
    assert [m.method for m, _ in sent] == ["ACK", "INVITE"]
    retry = sent[1][0]
    assert isinstance(retry, SipRequest)
    return retry


@pytest.mark.parametrize(
    ("status", "header"), [(401, "Authorization"), (407, "Proxy-Authorization")]
)
def test_digest_challenge_answered_once(status: int, header: str):
    h = Harness()
    verifier = DigestVerifier("sipbot.test")
    call = h.core.invite(
        "sip:echo@10.0.0.2:5080",
        SDP_OFFER,
        destination=SERVER,
        now=0.0,
        credentials=Credentials("alice", "secret"),
    )
    [(inv, _)] = h.sent()
    retry = challenged(h, inv, status, verifier)
    assert retry.cseq == (2, "INVITE")
    assert retry.call_id == inv.call_id
    assert retry.headers.get("From") == inv.headers.get("From")
    assert retry.headers.get("Via") != inv.headers.get("Via")  # a new transaction
    assert retry.body == SDP_OFFER
    answer = retry.headers.get(header) or ""
    assert verifier.verify(answer, "INVITE", {"alice": "secret"}.get, 0.5) == "ok"
    assert h.events() == []
    # refused again (wrong password, same realm): no second answer, the call fails
    h.feed(
        response_to(
            retry,
            status,
            extra=(
                ("WWW-Authenticate", verifier.challenge(0.6)),
                ("Proxy-Authenticate", verifier.challenge(0.6)),
            ),
        ),
        0.6,
        source=SERVER,
    )
    assert h.summary() == ["ACK"]
    [failed] = h.events()
    assert isinstance(failed, CallFailed)
    assert (failed.reason, failed.response.status) == ("rejected", status)
    assert call.state is CallState.TERMINATED


def test_digest_answered_invite_is_acked_with_credentials():
    h = Harness()
    verifier = DigestVerifier("sipbot.test")
    h.core.invite(
        "sip:echo@10.0.0.2:5080",
        SDP_OFFER,
        destination=SERVER,
        now=0.0,
        credentials=Credentials("alice", "secret"),
    )
    [(inv, _)] = h.sent()
    retry = challenged(h, inv, 401, verifier)
    h.feed(response_to(retry, 200, body=SDP_ANSWER), 0.2, source=SERVER)
    [(ack, _)] = h.sent()
    assert ack.cseq == (2, "ACK")
    assert ack.headers.get("Authorization") == retry.headers.get("Authorization")
    [answered] = h.events()
    assert isinstance(answered, CallAnswered)


def test_digest_without_credentials_or_for_another_realm_fails():
    h = Harness()
    verifier = DigestVerifier("sipbot.test")
    _call, inv = outgoing(h)  # no credentials
    h.feed(
        response_to(inv, 401, extra=(("WWW-Authenticate", verifier.challenge(0.0)),)),
        0.1,
        source=SERVER,
    )
    assert h.summary() == ["ACK"]
    assert [e.reason for e in h.events()] == ["rejected"]
    h.core.invite(
        "sip:echo@10.0.0.2:5080",
        SDP_OFFER,
        destination=SERVER,
        now=1.0,
        credentials=Credentials("alice", "secret", realm="elsewhere"),
    )
    [(inv, _)] = h.sent()
    h.feed(
        response_to(inv, 401, extra=(("WWW-Authenticate", verifier.challenge(1.0)),)),
        1.1,
        source=SERVER,
    )
    assert h.summary() == ["ACK"]
    assert [e.reason for e in h.events()] == ["rejected"]


def test_stale_nonce_is_answered_again():
    h = Harness()
    verifier = DigestVerifier("sipbot.test")
    h.core.invite(
        "sip:echo@10.0.0.2:5080",
        SDP_OFFER,
        destination=SERVER,
        now=0.0,
        credentials=Credentials("alice", "secret"),
    )
    [(inv, _)] = h.sent()
    retry = challenged(h, inv, 401, verifier)
    stale = verifier.challenge(0.3, stale=True)
    h.feed(response_to(retry, 401, extra=(("WWW-Authenticate", stale),)), 0.3, source=SERVER)
    sent = h.sent()
    assert [m.method for m, _ in sent] == ["ACK", "INVITE"]
    assert sent[1][0].cseq == (3, "INVITE")


def test_garbage_flood_is_logged_rate_limited(caplog: pytest.LogCaptureFixture):
    h = Harness()
    with caplog.at_level("INFO", logger="sipbot.sip"):
        for i in range(50):
            h.feed("\x00garbage", now=i * 0.01)
        h.feed("\x00garbage", now=20.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 12  # 10, then the summary, then the first of the next window
    assert lines[10] == "40 similar messages suppressed"
