"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Client side: :func:`parse_challenge` reads a ``WWW-Authenticate``/``Proxy-Authenticate`` value,
:func:`select_challenge` picks the strongest one we support, :func:`authorization_header`
answers it. Server side: :class:`DigestVerifier` issues stateless nonces (a timestamp signed
with HMAC-SHA-256, so any worker holding the secret can check them) and verifies answers.

Supported: algorithms MD5, MD5-sess, SHA-256, SHA-256-sess, SHA-512-256(-sess); qop ``auth``,
``auth-int`` (client side; it needs the body) and the RFC 2069 form without qop. Pure
functions: nothing here reads a clock or the network (``now`` and ``cnonce`` are arguments).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from sipbot.errors import AuthError

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data).hexdigest(),
}
# Strongest first: the order select_challenge() prefers (RFC 8760 §2.4).
ALGORITHMS = ("SHA-512-256", "SHA-256", "MD5", "SHA-512-256-SESS", "SHA-256-SESS", "MD5-SESS")
_PARAM_RE = re.compile(r"\s*([A-Za-z0-9\-_.!%*+`'~]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s,\"]+)\s*")
NONCE_MAC_BYTES = 16


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password; ``realm`` None means "answer any realm"."""

    username: str
    password: str
    realm: str | None = None


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A parsed Digest challenge. ``algorithm`` is upper-cased; ``qop`` lower-cased options."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_auth_params(value: str, scheme: str = "Digest") -> dict[str, str]:
    """The parameters of a ``<scheme> a=b, c="d"`` header value, names lower-cased, unquoted.

    Raises:
        AuthError: another scheme, or text that is not a comma-separated parameter list.
    """
    found, _, rest = value.strip().partition(" ")
    if found.lower() != scheme.lower():
        raise AuthError(f"Unsupported authentication scheme {found!r}")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m:
            raise AuthError(f"Malformed {scheme} parameters")
        params[m.group(1).lower()] = _unquote(m.group(2))
        pos = m.end()
        if pos < len(rest):
            if rest[pos] != ",":
                raise AuthError(f"Malformed {scheme} parameters")
            pos += 1
    return params


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a ``WWW-Authenticate`` or ``Proxy-Authenticate`` value.

    Raises:
        AuthError: not Digest, no realm or nonce, an algorithm we do not implement, or qop
            options of which none is ``auth``/``auth-int``.
    """
    params = parse_auth_params(value)
    for name in ("realm", "nonce"):
        if name not in params:
            raise AuthError(f"Digest challenge without {name}")
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise AuthError(f"Unsupported digest algorithm {params['algorithm']!r}")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    if qop and not {"auth", "auth-int"} & set(qop):
        raise AuthError(f"Unsupported digest qop {params['qop']!r}")
    return DigestChallenge(
        params["realm"],
        params["nonce"],
        algorithm,
        qop,
        params.get("opaque"),
        params.get("stale", "").lower() == "true",
    )


def select_challenge(values: Iterable[str]) -> DigestChallenge:
    """The challenge with the strongest algorithm we support among several header values.

    Raises:
        AuthError: none of them can be answered (the first one's reason).
    """
    usable: list[DigestChallenge] = []
    first_error: AuthError | None = None
    for value in values:
        try:
            usable.append(parse_challenge(value))
        except AuthError as exc:
            first_error = first_error or exc
    if not usable:
        raise first_error or AuthError("No authentication challenge")
    return min(usable, key=lambda c: ALGORITHMS.index(c.algorithm))


def _hash(algorithm: str) -> Callable[[str], str]:
    digest = _HASHES[algorithm.removesuffix("-SESS")]
    return lambda text: digest(text.encode("utf-8"))


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str = "00000001",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1-3.4.3; RFC 2069 form when ``qop`` is None)."""
    h = _hash(algorithm)
    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        body_hash = _HASHES[algorithm.removesuffix("-SESS")](body)
        ha2 = h(f"{method}:{uri}:{body_hash}")
    else:
        ha2 = h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def authorization_header(
    challenge: DigestChallenge,
    credentials: Credentials,
    method: str,
    uri: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge``.

    ``qop=auth`` is used when offered, else ``auth-int`` (over ``body``), else none. ``cnonce``
    defaults to 16 random hex digits; pass it for reproducible output.

    Raises:
        AuthError: the credentials are for another realm.
    """
    if credentials.realm is not None and credentials.realm != challenge.realm:
        raise AuthError(f"No credentials for realm {challenge.realm!r}")
    qop = "auth" if "auth" in challenge.qop else ("auth-int" if challenge.qop else None)
    needs_cnonce = qop is not None or challenge.algorithm.endswith("-SESS")
    cnonce = (cnonce or secrets.token_hex(8)) if needs_cnonce else None
    nc_text = f"{nc:08x}"
    response = digest_response(
        algorithm=challenge.algorithm,
        username=credentials.username,
        realm=challenge.realm,
        password=credentials.password,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce or "",
        body=body,
    )
    parts = [
        f"username={_quote(credentials.username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if cnonce is not None:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}"]
    return "Digest " + ", ".join(parts)


class DigestVerifier:
    """Server side of Digest: challenges and verification with stateless nonces.

    A nonce is ``base64(issue time in ms, 8 bytes || HMAC-SHA-256(secret, time)[:16])``: it
    needs no table and survives a restart only if ``secret`` does. Replayed nonce counts are
    not tracked (that needs state per nonce); the TTL bounds a replay's window.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes | None = None,
        nonce_ttl_s: float = 300.0,
        *,
        algorithm: str = "MD5",
    ) -> None:
        if algorithm.upper() not in ALGORITHMS:
            raise AuthError(f"Unsupported digest algorithm {algorithm!r}")
        self.realm = realm
        self.algorithm = algorithm.upper()
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._ttl_ms = int(nonce_ttl_s * 1000)

    def _nonce(self, issued_ms: int) -> str:
        stamp = issued_ms.to_bytes(8, "big", signed=True)
        mac = hmac.new(self._secret, stamp, hashlib.sha256).digest()[:NONCE_MAC_BYTES]
        return base64.b64encode(stamp + mac).decode("ascii")

    def challenge(self, now: float, *, stale: bool = False) -> str:
        """A ``WWW-Authenticate`` (or ``Proxy-Authenticate``) value with a fresh nonce."""
        value = (
            f"Digest realm={_quote(self.realm)}, nonce={_quote(self._nonce(int(now * 1000)))}, "
            f'algorithm={self.algorithm}, qop="auth"'
        )
        return value + (", stale=TRUE" if stale else "")

    def _nonce_age_ms(self, nonce: str, now: float) -> int | None:
        """Age of a nonce we issued, or None if we did not issue it."""
        try:
            raw = base64.b64decode(nonce, validate=True)
        except ValueError:
            return None
        if len(raw) != 8 + NONCE_MAC_BYTES or not hmac.compare_digest(
            self._nonce(int.from_bytes(raw[:8], "big", signed=True)), nonce
        ):
            return None
        return int(now * 1000) - int.from_bytes(raw[:8], "big", signed=True)

    def verify(
        self,
        authorization: str,
        method: str,
        password_for: Callable[[str], str | None],
        now: float,
    ) -> Literal["ok", "stale", "bad"]:
        """Check an ``Authorization`` value for a request of ``method``.

        Returns:
            "ok"; "stale" when the digest is right but the nonce expired (challenge again with
            ``stale=True``: the client retries without asking its user); "bad" otherwise
            (unknown user, wrong password, foreign nonce, other realm, malformed header).
        """
        try:
            p = parse_auth_params(authorization)
        except AuthError:
            return "bad"
        needed = ("username", "realm", "nonce", "uri", "response")
        if any(k not in p for k in needed) or p["realm"] != self.realm:
            return "bad"
        algorithm = p.get("algorithm", "MD5").upper()
        qop = p.get("qop")
        if algorithm != self.algorithm or qop not in (None, "auth"):
            return "bad"
        if qop and ("cnonce" not in p or "nc" not in p):
            return "bad"
        if algorithm.endswith("-SESS") and "cnonce" not in p:
            return "bad"
        age = self._nonce_age_ms(p["nonce"], now)
        password = password_for(p["username"])
        if age is None or age < -1000 or password is None:
            return "bad"
        expected = digest_response(
            algorithm=algorithm,
            username=p["username"],
            realm=self.realm,
            password=password,
            nonce=p["nonce"],
            method=method,
            uri=p["uri"],
            qop=qop,
            nc=p.get("nc", ""),
            cnonce=p.get("cnonce", ""),
        )
        if not hmac.compare_digest(expected, p["response"].lower()):
            return "bad"
        return "stale" if age > self._ttl_ms else "ok"
