"""Unit tests of the four RFC 3261 §17 transaction machines, with a fake clock."""

from __future__ import annotations

import pytest

from sipbot.errors import LocalSipError
from sipbot.sip.message import SipRequest, SipResponse, make_response, parse_message
from sipbot.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    SendMessage,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    Terminated,
    TimedOut,
    TimerSettings,
    TransportFailed,
    build_cancel,
    client_key,
    invite_key_for_cancel,
    server_key,
)

T = TimerSettings()  # T1 0.5, T2 4, T4 5, D 32


def request(method: str = "INVITE", branch: str = "z9hG4bK-1", cseq: int = 1) -> SipRequest:
    data = (
        f"{method} sip:bot@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5070;branch={branch}\r\n"
        "Route: <sip:proxy.example;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@10.0.0.1>;tag=from1\r\n"
        "To: <sip:bot@127.0.0.1>\r\n"
        "Call-ID: call-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def response(req: SipRequest, status: int) -> SipResponse:
    return make_response(req, status, to_tag="totag" if status > 100 else None)


def sent(actions: list[object]) -> list[str]:
    """The sent messages as 'METHOD' or 'status' strings."""
    out = []
    for a in actions:
        if isinstance(a, SendMessage):
            m = a.message
            out.append(m.method if isinstance(m, SipRequest) else str(m.status))
    return out


def fire_times(txn: ClientInviteTransaction | ClientNonInviteTransaction, until: float) -> list:
    """Run the fake clock from deadline to deadline; return (time, sent) pairs."""
    out = []
    while (deadline := txn.next_deadline()) is not None and deadline <= until:
        txn.handle_timer(deadline)
        out.append((deadline, sent(txn.take_actions())))
    return out


# --------------------------------------------------------------------------- matching


def test_server_key_uses_branch_sent_by_and_method_ack_maps_to_invite():
    inv = request("INVITE")
    assert server_key(inv) == ("z9hG4bK-1", "10.0.0.1", "5070", "INVITE")
    assert server_key(request("ACK")) == server_key(inv)
    assert server_key(request("CANCEL")) == ("z9hG4bK-1", "10.0.0.1", "5070", "CANCEL")
    assert invite_key_for_cancel(request("CANCEL")) == server_key(inv)
    assert server_key(request("INVITE", branch="z9hG4bK-2")) != server_key(inv)


def test_server_key_rfc2543_fallback_without_magic_cookie():
    inv = request("INVITE", branch="old-1")
    key = server_key(inv)
    uri = "sip:bot@127.0.0.1"
    assert key == ("2543", "call-1", "from1", "1", "INVITE", uri, "10.0.0.1", "5070")
    ack = request("ACK", branch="old-1")
    ack.headers.set("To", "<sip:bot@127.0.0.1>;tag=totag")
    assert server_key(ack) == key
    assert invite_key_for_cancel(request("CANCEL", branch="old-1")) == key
    assert server_key(request("INVITE", branch="old-1", cseq=2)) != key


def test_client_key_is_branch_and_cseq_method():
    inv = request("INVITE")
    assert client_key(inv) == ("z9hG4bK-1", "INVITE")
    assert client_key(response(inv, 180)) == ("z9hG4bK-1", "INVITE")
    cancel = build_cancel(inv)
    assert client_key(cancel) == ("z9hG4bK-1", "CANCEL")


def test_build_cancel_copies_invite_identity():
    cancel = build_cancel(request("INVITE"))
    assert bytes(cancel).decode() == (
        "CANCEL sip:bot@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1\r\n"
        "Route: <sip:proxy.example;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@10.0.0.1>;tag=from1\r\n"
        "To: <sip:bot@127.0.0.1>\r\n"
        "Call-ID: call-1\r\n"
        "CSeq: 1 CANCEL\r\n"
        "Content-Length: 0\r\n\r\n"
    )


# --------------------------------------------------------------------------- INVITE client


def test_invite_client_timer_a_doubles_without_cap_and_b_times_out_at_64_t1():
    txn = ClientInviteTransaction(request(), False, T, now=100.0)
    assert sent(txn.take_actions()) == ["INVITE"]
    assert txn.state is State.CALLING
    fired = fire_times(txn, 200.0)
    # A at T1, then 2T1, 4T1, ... after each retransmission (no T2 cap for INVITE)
    assert fired[:6] == [
        (100.5, ["INVITE"]),
        (101.5, ["INVITE"]),
        (103.5, ["INVITE"]),
        (107.5, ["INVITE"]),
        (115.5, ["INVITE"]),
        (131.5, ["INVITE"]),
    ]
    assert fired[6] == (132.0, [])
    assert txn.terminated
    txn.handle_timer(300.0)
    assert txn.take_actions() == []


def test_invite_client_timer_b_reports_timeout_then_terminated():
    txn = ClientInviteTransaction(request(), True, T, now=0.0)
    txn.take_actions()
    assert txn.next_deadline() == 32.0  # reliable: no Timer A, only B
    txn.handle_timer(31.999)
    assert txn.take_actions() == []
    txn.handle_timer(32.0)
    assert txn.take_actions() == [TimedOut("B"), Terminated()]


def test_invite_client_provisional_stops_retransmission_and_timer_b():
    inv = request()
    txn = ClientInviteTransaction(inv, False, T, now=0.0)
    txn.take_actions()
    r180 = response(inv, 180)
    txn.receive(r180, 0.2)
    assert txn.state is State.PROCEEDING
    assert txn.take_actions() == [Deliver(r180)]
    assert txn.next_deadline() is None
    txn.receive(r180, 0.3)
    assert txn.take_actions() == [Deliver(r180)]


def test_invite_client_error_response_sends_ack_and_waits_timer_d():
    inv = request()
    txn = ClientInviteTransaction(inv, False, T, now=0.0)
    txn.take_actions()
    r486 = response(inv, 486)
    txn.receive(r486, 1.0)
    actions = txn.take_actions()
    assert sent(actions) == ["ACK"]
    assert actions[1] == Deliver(r486)
    ack = actions[0].message
    assert bytes(ack).decode() == (
        "ACK sip:bot@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1\r\n"
        "Route: <sip:proxy.example;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@10.0.0.1>;tag=from1\r\n"
        "To: <sip:bot@127.0.0.1>;tag=totag\r\n"
        "Call-ID: call-1\r\n"
        "CSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    assert txn.state is State.COMPLETED
    assert txn.next_deadline() == 33.0  # Timer D = 32 s
    txn.receive(r486, 2.0)  # retransmitted final: ACK again, not delivered
    assert sent(txn.take_actions()) == ["ACK"]
    txn.handle_timer(33.0)
    assert txn.take_actions() == [Terminated()]


def test_invite_client_error_response_on_reliable_terminates_at_once():
    inv = request()
    txn = ClientInviteTransaction(inv, True, T, now=0.0)
    txn.take_actions()
    txn.receive(response(inv, 603), 1.0)
    actions = txn.take_actions()
    assert sent(actions) == ["ACK"]
    assert actions[-1] == Terminated()


def test_invite_client_2xx_accepted_passes_retransmissions_until_timer_m():
    inv = request()
    txn = ClientInviteTransaction(inv, False, T, now=0.0)
    txn.take_actions()
    r200 = response(inv, 200)
    txn.receive(r200, 0.1)
    assert txn.state is State.ACCEPTED
    assert txn.take_actions() == [Deliver(r200)]  # no ACK: the TU sends it
    assert txn.next_deadline() == pytest.approx(32.1)
    txn.receive(r200, 0.6)
    assert txn.take_actions() == [Deliver(r200)]
    txn.receive(response(inv, 180), 0.7)
    assert txn.take_actions() == []
    txn.handle_timer(32.1)
    assert txn.take_actions() == [Terminated()]


def test_invite_client_transport_error():
    txn = ClientInviteTransaction(request(), False, T, now=0.0)
    txn.take_actions()
    txn.transport_error(0.0)
    assert txn.take_actions() == [TransportFailed(), Terminated()]
    assert txn.next_deadline() is None


def test_invite_client_custom_t1():
    txn = ClientInviteTransaction(request(), False, TimerSettings(t1=0.1), now=0.0)
    txn.take_actions()
    times = [t for t, _ in fire_times(txn, 100.0)]
    assert times == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 6.4])


# --------------------------------------------------------------------------- INVITE server


def test_invite_server_retransmitted_invite_resends_last_provisional():
    inv = request()
    txn = ServerInviteTransaction(inv, False, T, now=0.0)
    assert txn.state is State.PROCEEDING
    txn.receive(inv, 0.1)  # nothing sent yet: nothing to resend
    assert txn.take_actions() == []
    txn.send_response(response(inv, 100), 0.0)
    txn.send_response(response(inv, 180), 0.2)
    assert sent(txn.take_actions()) == ["100", "180"]
    txn.receive(inv, 0.5)
    assert sent(txn.take_actions()) == ["180"]
    assert txn.next_deadline() is None


def test_invite_server_error_response_timer_g_capped_at_t2_and_timer_h():
    inv = request()
    txn = ServerInviteTransaction(inv, False, T, now=0.0)
    txn.send_response(response(inv, 486), 10.0)
    assert sent(txn.take_actions()) == ["486"]
    assert txn.state is State.COMPLETED
    fired = []
    while (d := txn.next_deadline()) is not None:
        txn.handle_timer(d)
        fired.append((d, sent(txn.take_actions())))
    times = [t for t, _ in fired]
    # G: 0.5, 1, 2, 4, 4, 4 ... after each retransmission; H at 64*T1 = 32 s
    assert times[:7] == [10.5, 11.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert fired[-1] == (42.0, [])
    assert all(s == ["486"] for _, s in fired[:-1])
    assert txn.terminated


def test_invite_server_timer_h_reports_timeout():
    inv = request()
    txn = ServerInviteTransaction(inv, True, T, now=0.0)
    txn.send_response(response(inv, 487), 0.0)
    txn.take_actions()
    assert txn.next_deadline() == 32.0  # reliable: no G
    txn.handle_timer(32.0)
    assert txn.take_actions() == [TimedOut("H"), Terminated()]


def test_invite_server_ack_confirms_then_timer_i():
    inv = request()
    txn = ServerInviteTransaction(inv, False, T, now=0.0)
    txn.send_response(response(inv, 487), 0.0)
    txn.take_actions()
    txn.receive(inv, 0.2)  # retransmitted INVITE in Completed: final resent
    assert sent(txn.take_actions()) == ["487"]
    ack = request("ACK")
    txn.receive(ack, 0.7)
    assert txn.state is State.CONFIRMED
    assert txn.take_actions() == []  # ACK for a non-2xx is absorbed
    assert txn.next_deadline() == 5.7  # Timer I = T4
    txn.receive(ack, 1.0)
    txn.receive(inv, 1.1)
    assert txn.take_actions() == []
    txn.handle_timer(5.7)
    assert txn.take_actions() == [Terminated()]


def test_invite_server_ack_on_reliable_terminates_at_once():
    inv = request()
    txn = ServerInviteTransaction(inv, True, T, now=0.0)
    txn.send_response(response(inv, 404), 0.0)
    txn.take_actions()
    txn.receive(request("ACK"), 0.1)
    assert txn.take_actions() == [Terminated()]


def test_invite_server_2xx_accepted_delivers_ack_absorbs_invite_timer_l():
    inv = request()
    txn = ServerInviteTransaction(inv, False, T, now=0.0)
    r200 = response(inv, 200)
    txn.send_response(r200, 1.0)
    assert sent(txn.take_actions()) == ["200"]
    assert txn.state is State.ACCEPTED
    assert txn.next_deadline() == 33.0  # Timer L = 64*T1
    txn.receive(inv, 1.2)
    assert txn.take_actions() == []  # RFC 6026: retransmitted INVITE absorbed
    txn.send_response(r200, 1.5)  # the TU's 2xx retransmission
    assert sent(txn.take_actions()) == ["200"]
    ack = request("ACK")
    txn.receive(ack, 1.6)
    assert txn.take_actions() == [Deliver(ack)]
    txn.handle_timer(33.0)
    assert txn.take_actions() == [Terminated()]


def test_invite_server_rejects_second_final():
    inv = request()
    txn = ServerInviteTransaction(inv, False, T, now=0.0)
    txn.send_response(response(inv, 486), 0.0)
    with pytest.raises(LocalSipError, match="cannot send 200 in state completed"):
        txn.send_response(response(inv, 200), 0.1)


# --------------------------------------------------------------------------- non-INVITE client


def test_non_invite_client_timer_e_doubles_to_t2_and_f_times_out():
    txn = ClientNonInviteTransaction(request("BYE"), False, T, now=0.0)
    assert sent(txn.take_actions()) == ["BYE"]
    fired = []
    while (d := txn.next_deadline()) is not None:
        txn.handle_timer(d)
        fired.append((d, txn.take_actions()))
    times = [t for t, _ in fired]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert fired[-1][1] == [TimedOut("F"), Terminated()]


def test_non_invite_client_proceeding_retransmits_every_t2():
    req = request("BYE")
    txn = ClientNonInviteTransaction(req, False, T, now=0.0)
    txn.take_actions()
    txn.handle_timer(0.5)  # E: next in 1.0
    txn.take_actions()
    r100 = response(req, 100)
    txn.receive(r100, 0.6)
    assert txn.state is State.PROCEEDING
    assert txn.take_actions() == [Deliver(r100)]
    txn.handle_timer(1.5)
    assert sent(txn.take_actions()) == ["BYE"]
    assert txn.next_deadline() == 5.5  # T2 in Proceeding


def test_non_invite_client_final_then_timer_k_absorbs_retransmissions():
    req = request("BYE")
    txn = ClientNonInviteTransaction(req, False, T, now=0.0)
    txn.take_actions()
    r200 = response(req, 200)
    txn.receive(r200, 0.1)
    assert txn.take_actions() == [Deliver(r200)]
    assert txn.state is State.COMPLETED
    assert txn.next_deadline() == 5.1  # Timer K = T4
    txn.receive(r200, 0.2)
    assert txn.take_actions() == []
    txn.handle_timer(5.1)
    assert txn.take_actions() == [Terminated()]


def test_non_invite_client_reliable_no_timer_e_and_k_zero():
    req = request("BYE")
    txn = ClientNonInviteTransaction(req, True, T, now=0.0)
    txn.take_actions()
    assert txn.next_deadline() == 32.0
    r481 = response(req, 481)
    txn.receive(r481, 1.0)
    assert txn.take_actions() == [Deliver(r481), Terminated()]


# --------------------------------------------------------------------------- non-INVITE server


def test_non_invite_server_trying_discards_retransmission_then_resends_final():
    req = request("BYE")
    txn = ServerNonInviteTransaction(req, False, T, now=0.0)
    assert txn.state is State.TRYING
    txn.receive(req, 0.1)
    assert txn.take_actions() == []
    txn.send_response(response(req, 200), 0.2)
    assert sent(txn.take_actions()) == ["200"]
    assert txn.state is State.COMPLETED
    txn.receive(req, 0.7)
    assert sent(txn.take_actions()) == ["200"]
    assert txn.next_deadline() == 32.2  # Timer J = 64*T1
    txn.handle_timer(32.2)
    assert txn.take_actions() == [Terminated()]


def test_non_invite_server_proceeding_resends_provisional():
    req = request("OPTIONS")
    txn = ServerNonInviteTransaction(req, False, T, now=0.0)
    txn.send_response(response(req, 100), 0.0)
    txn.take_actions()
    assert txn.state is State.PROCEEDING
    txn.receive(req, 0.5)
    assert sent(txn.take_actions()) == ["100"]


def test_non_invite_server_reliable_timer_j_zero():
    req = request("BYE")
    txn = ServerNonInviteTransaction(req, True, T, now=0.0)
    txn.send_response(response(req, 200), 0.0)
    assert sent(txn.take_actions()) == ["200"]
    assert txn.terminated


def test_non_invite_server_rejects_second_final():
    req = request("BYE")
    txn = ServerNonInviteTransaction(req, False, T, now=0.0)
    txn.send_response(response(req, 200), 0.0)
    with pytest.raises(LocalSipError, match="cannot send 200 in state completed"):
        txn.send_response(response(req, 200), 0.0)
