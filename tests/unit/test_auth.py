"""Tests of sipbot.sip.auth: RFC 2617 / RFC 7616 vectors, SIP challenges, the verifier."""

from __future__ import annotations

import pytest

from sipbot.errors import AuthError
from sipbot.sip.auth import (
    Credentials,
    DigestChallenge,
    DigestVerifier,
    authorization_header,
    digest_response,
    parse_auth_params,
    parse_challenge,
    select_challenge,
)

RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
MUFASA = Credentials("Mufasa", "Circle of Life")


def test_rfc2617_section_3_5_vector() -> None:
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    header = authorization_header(
        challenge,
        Credentials("Mufasa", "Circle Of Life"),
        "GET",
        "/dir/index.html",
        cnonce="0a4f113b",
    )
    assert header == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001'
    )


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, response: str) -> None:
    challenge = parse_challenge(RFC7616_CHALLENGE.format(alg=algorithm))
    header = authorization_header(
        challenge, MUFASA, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE
    )
    assert header == (
        'Digest username="Mufasa", realm="http-auth@example.org", '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", uri="/dir/index.html", '
        f'response="{response}", algorithm={algorithm}, cnonce="{RFC7616_CNONCE}", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", qop=auth, nc=00000001'
    )


def test_asterisk_style_challenge_without_qop_uses_rfc2069_form() -> None:
    # The response was cross-checked with urllib.request's digest handler.
    challenge = parse_challenge('Digest algorithm=MD5, realm="asterisk", nonce="1f2e3d4c"')
    assert challenge == DigestChallenge("asterisk", "1f2e3d4c")
    header = authorization_header(
        challenge, Credentials("6001", "s3cret"), "INVITE", "sip:bob@192.0.2.5"
    )
    assert header == (
        'Digest username="6001", realm="asterisk", nonce="1f2e3d4c", uri="sip:bob@192.0.2.5", '
        'response="855211f03e265d5a4ce68987ddf3db91", algorithm=MD5'
    )


def test_sess_and_auth_int_and_nc() -> None:
    common = {
        "username": "Mufasa",
        "realm": "r",
        "password": "p",
        "nonce": "n",
        "method": "INVITE",
        "uri": "sip:a@b",
        "nc": "00000002",
        "cnonce": "c",
    }
    plain = digest_response(algorithm="MD5", qop="auth", **common)  # type: ignore[arg-type]
    sess = digest_response(algorithm="MD5-SESS", qop="auth", **common)  # type: ignore[arg-type]
    integrity = digest_response(
        algorithm="MD5",
        qop="auth-int",
        body=b"v=0\r\n",
        **common,
    )
    assert len({plain, sess, integrity}) == 3
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-int", algorithm=MD5-sess')
    header = authorization_header(
        challenge,
        Credentials("Mufasa", "p", "r"),
        "INVITE",
        "sip:a@b",
        nc=2,
        cnonce="c",
        body=b"v=0\r\n",
    )
    assert header.endswith(', algorithm=MD5-SESS, cnonce="c", qop=auth-int, nc=00000002')
    expected = digest_response(
        algorithm="MD5-SESS",
        qop="auth-int",
        body=b"v=0\r\n",
        **common,
    )
    assert f'response="{expected}"' in header


def test_sess_without_qop_still_sends_cnonce() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256-sess')
    header = authorization_header(challenge, MUFASA, "REGISTER", "sip:r", cnonce="xyz")
    assert header.endswith('algorithm=SHA-256-SESS, cnonce="xyz"')


def test_quotes_in_values_are_escaped() -> None:
    challenge = DigestChallenge('we"ird', "n")
    header = authorization_header(challenge, Credentials('a"b\\c', "p"), "BYE", "sip:x")
    assert header.startswith('Digest username="a\\"b\\\\c", realm="we\\"ird",')
    assert parse_auth_params(header)["username"] == 'a"b\\c'


def test_parse_challenge_details() -> None:
    challenge = parse_challenge(
        'digest  realm = "sip.example.net" ,nonce="x,y", qop="AUTH-INT,auth", stale=true, '
        'algorithm=sha-256, domain="sip:a sip:b"'
    )
    assert challenge == DigestChallenge(
        "sip.example.net", "x,y", "SHA-256", ("auth-int", "auth"), None, True
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('Basic realm="x"', "Unsupported authentication scheme 'Basic'"),
        ('Digest nonce="n"', "Digest challenge without realm"),
        ('Digest realm="r"', "Digest challenge without nonce"),
        ('Digest realm="r", nonce="n", algorithm=SHA-1', "Unsupported digest algorithm 'SHA-1'"),
        ('Digest realm="r", nonce="n", qop="auth-conf"', "Unsupported digest qop 'auth-conf'"),
        ('Digest realm="r" nonce="n"', "Malformed Digest parameters"),
        ('Digest realm="r, nonce="n"', "Malformed Digest parameters"),
    ],
)
def test_parse_challenge_errors(value: str, message: str) -> None:
    with pytest.raises(AuthError) as err:
        parse_challenge(value)
    assert str(err.value) == message


def test_select_challenge_prefers_strongest() -> None:
    values = [
        'Digest realm="r", nonce="a", algorithm=MD5, qop="auth"',
        'Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth"',
        'Bearer realm="r"',
    ]
    assert select_challenge(values).nonce == "b"
    with pytest.raises(AuthError, match="Unsupported authentication scheme 'Bearer'"):
        select_challenge(values[2:])
    with pytest.raises(AuthError, match="No authentication challenge"):
        select_challenge([])


def test_credentials_for_another_realm() -> None:
    with pytest.raises(AuthError, match="No credentials for realm 'r'"):
        authorization_header(DigestChallenge("r", "n"), Credentials("u", "p", "other"), "BYE", "x")


# --------------------------------------------------------------------------- server side


def passwords(username: str) -> str | None:
    return {"alice": "wonderland"}.get(username)


def answer(
    verifier: DigestVerifier,
    now: float,
    user: str = "alice",
    pw: str = "wonderland",
    method: str = "REGISTER",
) -> str:
    challenge = parse_challenge(verifier.challenge(now))
    return authorization_header(
        challenge, Credentials(user, pw), method, "sip:example.com", cnonce="cn"
    )


def test_verifier_challenge_text_is_stable_for_a_secret() -> None:
    verifier = DigestVerifier("example.com", secret=b"k" * 32)
    assert verifier.challenge(100.0) == (
        'Digest realm="example.com", nonce="AAAAAAABhqBzcBtdYqjE3UqnvgiwG3RE", '
        'algorithm=MD5, qop="auth"'
    )
    assert verifier.challenge(100.0, stale=True).endswith(', qop="auth", stale=TRUE')


def test_verifier_accepts_rejects_and_expires() -> None:
    verifier = DigestVerifier("example.com", secret=b"s" * 32, nonce_ttl_s=300.0)
    good = answer(verifier, 1000.0)
    assert verifier.verify(good, "REGISTER", passwords, 1000.0) == "ok"
    assert verifier.verify(good, "REGISTER", passwords, 1300.0) == "ok"
    assert verifier.verify(good, "REGISTER", passwords, 1300.5) == "stale"
    assert verifier.verify(good, "INVITE", passwords, 1000.0) == "bad"  # method is signed
    assert verifier.verify(answer(verifier, 1000.0, pw="x"), "REGISTER", passwords, 1000.0) == "bad"
    assert (
        verifier.verify(answer(verifier, 1000.0, user="bob"), "REGISTER", passwords, 1.0) == "bad"
    )
    other = DigestVerifier("example.com", secret=b"t" * 32)
    assert other.verify(good, "REGISTER", passwords, 1000.0) == "bad"  # nonce not ours
    assert (
        verifier.verify(good.replace("example.com", "evil.com", 1), "REGISTER", passwords, 1000.0)
        == "bad"
    )
    assert verifier.verify("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "REGISTER", passwords, 1.0) == "bad"
    assert verifier.verify(good.replace(", qop=auth", ""), "REGISTER", passwords, 1000.0) == "bad"
    assert verifier.verify(good, "REGISTER", passwords, 990.0) == "bad"  # issued in the future


def test_verifier_sha256_and_legacy_clients() -> None:
    verifier = DigestVerifier("example.com", secret=b"s" * 32, algorithm="sha-256")
    assert "algorithm=SHA-256" in verifier.challenge(5.0)
    assert verifier.verify(answer(verifier, 5.0), "REGISTER", passwords, 6.0) == "ok"
    # A client that ignores qop (RFC 2069 form) is still verified.
    nonce = parse_challenge(verifier.challenge(5.0)).nonce
    legacy = authorization_header(
        DigestChallenge("example.com", nonce, "SHA-256"),
        Credentials("alice", "wonderland"),
        "REGISTER",
        "sip:example.com",
    )
    assert "qop" not in legacy
    assert verifier.verify(legacy, "REGISTER", passwords, 6.0) == "ok"
    with pytest.raises(AuthError, match="Unsupported digest algorithm 'SHA-1'"):
        DigestVerifier("r", algorithm="SHA-1")
