"""Inbound trust verdicts: trunk allow-lists, digest for direct callers, unknown sources."""

from __future__ import annotations

import ipaddress

from sipbot.sip.auth import Credentials, DigestVerifier, authorization_header, parse_challenge
from sipbot.sip.headers import Headers
from sipbot.sip.message import SipRequest
from sipbot.sip.trust import Admit, Challenge, Drop, Refuse, TrustedSource, TrustPolicy

PBX = TrustedSource("pbx", (ipaddress.ip_network("192.0.2.0/28"),))
CARRIER_A = TrustedSource("carrier_a", (ipaddress.ip_network("198.51.100.7/32"),), "acct-a")
CARRIER_B = TrustedSource("carrier_b", (ipaddress.ip_network("198.51.100.7/32"),), "acct-b")


def invite(uri: str = "sip:200@bot.example", authorization: str | None = None) -> SipRequest:
    h = Headers()
    h.add("From", "<sip:alice@example.com>;tag=1")
    h.add("To", f"<{uri}>")
    if authorization:
        h.add("Authorization", authorization)
    return SipRequest("INVITE", uri, h, b"")


def test_a_source_in_an_allow_list_is_admitted_as_that_trunk() -> None:
    policy = TrustPolicy([PBX])
    assert policy.check_invite(invite(), "192.0.2.9", 0.0) == Admit(trunk="pbx")
    assert policy.check_invite(invite(), "192.0.2.16", 0.0) == Refuse("unknown source 192.0.2.16")


def test_trunks_sharing_a_registrar_are_told_apart_by_the_contact_user() -> None:
    policy = TrustPolicy([CARRIER_A, CARRIER_B])
    assert policy.check_invite(invite("sip:acct-b@10.0.0.1"), "198.51.100.7", 0.0) == Admit(
        trunk="carrier_b"
    )
    assert policy.check_invite(invite("sip:other@10.0.0.1"), "198.51.100.7", 0.0) == Admit(
        trunk="carrier_a"
    )


def test_auto_policy_allows_everyone_only_when_nothing_is_configured() -> None:
    assert TrustPolicy().check_invite(invite(), "203.0.113.5", 0.0) == Admit()
    assert TrustPolicy().effective_unknown == "allow"
    assert TrustPolicy([PBX]).effective_unknown == "reject"
    assert TrustPolicy([PBX], unknown="allow").check_invite(invite(), "203.0.113.5", 0) == Admit()


def test_drop_policy_answers_nothing_and_filters_the_source() -> None:
    policy = TrustPolicy([PBX], unknown="drop")
    assert policy.check_invite(invite(), "203.0.113.5", 0.0) == Drop("unknown source 203.0.113.5")
    assert policy.drops_source("203.0.113.5")
    assert not policy.drops_source("192.0.2.1")
    assert not TrustPolicy([PBX]).drops_source("203.0.113.5")  # reject: answered 403


def test_digest_challenge_then_ok_bad_and_unknown_user_look_the_same() -> None:
    verifier = DigestVerifier("sipbot", secret=b"k" * 32)
    policy = TrustPolicy([PBX], users={"alice": "alicepw"}, verifier=verifier)
    first = policy.check_invite(invite(), "203.0.113.5", 10.0)
    assert isinstance(first, Challenge)
    challenge = parse_challenge(first.www_authenticate)
    assert challenge.qop == ("auth",)

    def answer(user: str, password: str) -> str:
        creds = Credentials(user, password)
        return authorization_header(challenge, creds, "INVITE", "sip:200@bot.example")

    ok = policy.check_invite(invite(authorization=answer("alice", "alicepw")), "203.0.113.5", 11)
    assert ok == Admit(user="alice")
    wrong = policy.check_invite(invite(authorization=answer("alice", "nope")), "203.0.113.5", 11)
    unknown = policy.check_invite(invite(authorization=answer("mallory", "x")), "203.0.113.5", 11)
    assert wrong == unknown == Refuse("digest authentication failed")
    # the PBX needs no password
    assert policy.check_invite(invite(), "192.0.2.3", 11.0) == Admit(trunk="pbx")
    # with users, a digest-less INVITE from anywhere is challenged, never dropped unseen
    assert not TrustPolicy(users={"a": "b"}, unknown="drop", verifier=verifier).drops_source("x")


def test_a_stale_nonce_is_challenged_again() -> None:
    verifier = DigestVerifier("sipbot", secret=b"k" * 32, nonce_ttl_s=30)
    policy = TrustPolicy(users={"alice": "pw"}, verifier=verifier)
    challenge = parse_challenge(verifier.challenge(0.0))
    value = authorization_header(challenge, Credentials("alice", "pw"), "INVITE", "sip:x@y")
    again = policy.check_invite(invite("sip:x@y", value), "203.0.113.5", 100.0)
    assert isinstance(again, Challenge)
    assert "stale=TRUE" in again.www_authenticate
