"""The registration client core: digest, 423, refresh, failover, backoff (fake clock, no I/O)."""

from __future__ import annotations

import random

import pytest

from sipbot.sip.auth import Credentials, DigestVerifier
from sipbot.sip.legs import Peer
from sipbot.sip.message import SipRequest, SipResponse, make_response, parse_message
from sipbot.sip.register import (
    KEEPALIVE,
    RegistrationClient,
    RegistrationSettings,
    StateChanged,
    Target,
)
from sipbot.sip.transaction import TimerSettings

A = Target("sip:pbx.test", Peer("udp", "127.0.0.1", 5070))
B = Target("sip:pbx.test", Peer("udp", "127.0.0.2", 5070))
SETTINGS = RegistrationSettings(
    aor="sip:alice@pbx.test",
    credentials=Credentials("alice", "alicepw"),
    contact_user="alice",
    expires_s=600,
    keepalive_s=0,
    retry_min_s=2.0,
    retry_max_s=60.0,
)


def client(targets: list[Target], settings: RegistrationSettings = SETTINGS) -> RegistrationClient:
    c = RegistrationClient(
        settings, lambda t, h: ("127.0.0.9", 5060), TimerSettings(t1=0.5), random.Random(7)
    )
    c.set_targets(targets)
    return c


def sent(c: RegistrationClient) -> list[tuple[SipRequest, Peer]]:
    out = []
    for o in c.data_to_send():
        message = parse_message(o.data)
        assert isinstance(message, SipRequest)
        out.append((message, o.destination))
    return out


def answer(
    c: RegistrationClient, request: SipRequest, status: int, now: float, **headers: str
) -> None:
    response = make_response(request, status, to_tag="t1")
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    raw = parse_message(bytes(response))
    assert isinstance(raw, SipResponse)
    assert c.owns(raw)
    c.receive(raw, now)


def phases(events: list[StateChanged]) -> list[str]:
    return [e.new.phase for e in events]


def test_digest_sha256_register_then_refresh_at_80_percent() -> None:
    verifier = DigestVerifier("pbx.test", algorithm="SHA-256")
    c = client([A])
    c.start(0.0)
    [(first, peer)] = sent(c)
    assert peer == A.peer
    assert first.uri == "sip:pbx.test"
    assert first.headers.get("Expires") == "600"
    assert "Authorization" not in first.headers
    assert first.headers.get("Contact") == "<sip:alice@127.0.0.9:5060>"
    answer(c, first, 401, 0.01, WWW_Authenticate=verifier.challenge(0.0))
    [(second, _)] = sent(c)
    assert second.call_id == first.call_id
    assert second.cseq[0] == first.cseq[0] + 1
    auth = second.headers.get("Authorization") or ""
    assert "algorithm=SHA-256" in auth
    assert "qop=auth" in auth
    assert verifier.verify(auth, "REGISTER", {"alice": "alicepw"}.get, 0.02) == "ok"
    answer(c, second, 200, 0.02, Contact="<sip:alice@127.0.0.9:5060>;expires=300")
    state = c.state
    assert (state.phase, state.code, state.expires_s) == ("registered", 200, 300)
    assert state.next_attempt == pytest.approx(0.02 + 240)  # 80 % of 300 < 300 - 30
    assert phases(c.events()) == ["registering", "registered"]
    c.handle_timers(200.0)
    assert sent(c) == []
    c.handle_timers(240.02)
    [(refresh, _)] = sent(c)
    assert refresh.call_id == first.call_id
    assert refresh.headers.get("Expires") == "600"
    assert c.state.phase == "registered"
    assert c.events() == []


def test_short_expiry_refreshes_30s_early_but_not_before_half() -> None:
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 200, 0.0, Expires="100")
    assert c.state.next_attempt == pytest.approx(70.0)  # 100 - 30 < 80
    c2 = client([A])
    c2.start(0.0)
    [(req2, _)] = sent(c2)
    answer(c2, req2, 200, 0.0, Expires="40")
    assert c2.state.next_attempt == pytest.approx(20.0)  # half of 40


def test_wrong_password_fails_with_the_code_and_backs_off_exponentially() -> None:
    verifier = DigestVerifier("pbx.test")
    c = client([A])
    now = 0.0
    c.start(now)
    waits = []
    for _ in range(5):
        [(req, _)] = sent(c)
        answer(c, req, 401, now, WWW_Authenticate=verifier.challenge(now))
        [(again, _)] = sent(c)
        assert "Authorization" in again.headers
        answer(c, again, 401, now, WWW_Authenticate=verifier.challenge(now))
        assert sent(c) == []  # never a second answer to a refusing realm (Rule 2)
        state = c.state
        assert (state.phase, state.code) == ("failed", 401)
        assert state.reason.startswith("credentials refused; retry in ")
        assert state.next_attempt is not None
        waits.append(state.next_attempt - now)
        c.handle_timers(state.next_attempt - 0.001)
        assert sent(c) == []  # nothing before the backoff ends
        now = state.next_attempt
        c.handle_timers(now)
    caps = [2.0, 4.0, 8.0, 16.0, 32.0]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps, strict=True)), waits
    assert (c.state.phase, c.state.failures) == ("registering", 5)


def test_endless_stale_challenges_end_in_failure() -> None:
    verifier = DigestVerifier("pbx.test")
    c = client([A])
    c.start(0.0)
    answers = 0
    while c.state.phase == "registering":
        [(req, _)] = sent(c)
        answers += "Authorization" in req.headers
        answer(c, req, 401, 0.1, WWW_Authenticate=verifier.challenge(answers, stale=True))
    assert (c.state.phase, c.state.code, answers) == ("failed", 401, 3)


def test_423_retries_with_min_expires() -> None:
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 423, 0.1, Min_Expires="3600")
    [(again, _)] = sent(c)
    assert again.headers.get("Expires") == "3600"
    answer(c, again, 200, 0.2)
    assert (c.state.phase, c.state.expires_s) == ("registered", 3600)
    events = c.events()
    assert [(e.new.phase, e.new.code) for e in events] == [
        ("registering", None),
        ("registering", 423),
        ("registered", 200),
    ]


def test_423_again_and_again_is_a_failure_not_a_loop() -> None:
    c = client([A])
    c.start(0.0)
    for minimum in ("700", "800"):
        [(req, _)] = sent(c)
        answer(c, req, 423, 0.1, Min_Expires=minimum)
    [(req, _)] = sent(c)
    assert req.headers.get("Expires") == "800"
    answer(c, req, 423, 0.1, Min_Expires="900")
    assert (c.state.phase, c.state.code) == ("failed", 423)
    assert sent(c) == []


def test_423_without_a_larger_min_expires_is_a_failure() -> None:
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 423, 0.1, Min_Expires="60")
    assert (c.state.phase, c.state.code) == ("failed", 423)
    assert sent(c) == []


def test_silent_registrar_times_out_then_the_next_target_is_used() -> None:
    c = client([A, B])
    c.start(0.0)
    [(_req, peer)] = sent(c)
    assert peer == A.peer
    now = 0.0
    retransmissions = 0
    while c.state.registrar is not None and now < 32.0:
        deadline = c.next_deadline()
        assert deadline is not None
        now = deadline
        c.handle_timers(now)
        out = sent(c)
        if out and out[0][1] == B.peer:
            break
        retransmissions += len(out)
    assert retransmissions >= 5  # Timer E doubling, capped at T2
    assert now == pytest.approx(32.0)  # Timer F = 64·T1
    assert (c.state.phase, c.state.code) == ("registering", 408)
    assert "127.0.0.1:5070" in c.state.reason


def test_whole_round_failing_waits_then_starts_at_the_first_target() -> None:
    c = client([A, B])
    c.start(0.0)
    [(req, _peer)] = sent(c)
    answer(c, req, 503, 0.1)
    [(req_b, peer_b)] = sent(c)
    assert peer_b == B.peer
    answer(c, req_b, 503, 0.2)
    state = c.state
    assert (state.phase, state.code, state.failures) == ("failed", 503, 1)
    assert state.next_attempt is not None
    assert 0.2 + 1.0 <= state.next_attempt <= 0.2 + 2.0
    c.handle_timers(state.next_attempt)
    [(_, first_again)] = sent(c)
    assert first_again == A.peer


def test_transport_error_while_registered_re_registers_at_once() -> None:
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 200, 0.0, Expires="600")
    c.events()
    c.transport_error(Peer("udp", "127.0.0.1", 5070), 10.0)
    [(again, peer)] = sent(c)
    assert peer == A.peer
    assert again.headers.get("Expires") == "600"
    assert [(e.new.phase, e.new.code) for e in c.events()] == [("registering", 503)]


def test_keepalives_go_to_the_registrar_while_registered() -> None:
    settings = RegistrationSettings(
        aor="sip:alice@pbx.test",
        credentials=Credentials("alice", "pw"),
        contact_user="alice",
        keepalive_s=15.0,
    )
    c = client([A], settings)
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 200, 0.0, Expires="600")
    c.handle_timers(15.0)
    out = c.data_to_send()
    assert [(o.data, o.destination) for o in out] == [(KEEPALIVE, A.peer)]
    assert c.next_deadline() == pytest.approx(30.0)


def test_stop_removes_the_binding_answering_a_challenge() -> None:
    verifier = DigestVerifier("pbx.test")
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 200, 0.0)
    c.stop(5.0)
    [(unregister, _)] = sent(c)
    assert unregister.headers.get("Expires") == "0"
    assert c.state.phase == "unregistering"
    answer(c, unregister, 401, 5.1, WWW_Authenticate=verifier.challenge(5.0))
    [(bye, _)] = sent(c)
    assert bye.headers.get("Expires") == "0"
    assert "Authorization" in bye.headers
    answer(c, bye, 200, 5.1)
    assert str(c.state.phase) == "stopped"
    assert c.next_deadline() is None


def test_a_refused_unregister_just_stops() -> None:
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 200, 0.0)
    c.stop(5.0)
    [(unregister, _)] = sent(c)
    answer(c, unregister, 500, 5.1)
    assert (c.state.phase, c.state.code) == ("stopped", 500)
    assert sent(c) == []
    assert c.next_deadline() is None


def test_no_targets_is_a_failure_with_backoff_not_a_loop() -> None:
    c = client([])
    c.start(0.0)
    assert sent(c) == []
    assert c.state.phase == "failed"
    assert c.state.next_attempt is not None
    assert c.state.next_attempt >= 1.0


def test_proxy_challenge_is_answered_with_proxy_authorization() -> None:
    verifier = DigestVerifier("proxy.test")
    c = client([A])
    c.start(0.0)
    [(req, _)] = sent(c)
    answer(c, req, 407, 0.0, Proxy_Authenticate=verifier.challenge(0.0))
    [(again, _)] = sent(c)
    assert "Proxy-Authorization" in again.headers
    assert "Authorization" not in again.headers
    assert str(c.state) == "registering registrar=sip:pbx.test (starting)"
