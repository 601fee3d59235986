"""SDES key exchange in SDP (RFC 4568 ``a=crypto``), sans-I/O: parse, choose, answer.

:mod:`sipbot.sip.sdp` uses it during offer/answer; the keys it yields go to
:mod:`sipbot.media.srtp` (the only module that imports the SRTP library).

Rules:

* Rule 1 (usable): an ``a=crypto`` line is usable when its suite is one of :data:`SUITES`, it
  has exactly one ``inline:`` key whose base64 decodes to 30 bytes (16-byte master key + 14-byte
  salt), no MKI, a lifetime (if any) of at most 2^48, and no session parameters (RFC 4568 §6.3:
  an attribute with a parameter we do not implement, e.g. ``UNENCRYPTED_SRTP``, is not usable).
* Rule 2 (choice): the first usable line of the offer wins (the offerer lists its preference
  first, RFC 4568 §7.1.1); the answer repeats its tag and suite with our own key.
* Rule 3 (secrecy): keys live in :class:`~sipbot.domain.SrtpKeys`, whose repr hides them; no
  error message in this module quotes an attribute's key parameter. The key appears only in
  the SDP body itself, which leaves on the signalling connection and is never logged.
* Rule 4 (our key): one fresh key per call side (``secrets.token_bytes``), kept for the whole
  call so a re-offer answered again keeps our outbound stream's context.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from sipbot.domain import SRTP_KEY_SALT_BYTES as KEY_SALT_BYTES
from sipbot.domain import SRTP_MODES, SrtpKeys, SrtpMode

__all__ = [
    "KEY_SALT_BYTES",
    "SRTP_MODES",
    "SUITES",
    "CryptoAttribute",
    "SrtpKeys",
    "SrtpMode",
    "choose_crypto",
    "new_key",
    "parse_crypto",
]

SUITES: Final = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
MAX_LIFETIME: Final = 2**48
PLAIN_PROFILES: Final = ("RTP/AVP", "RTP/AVPF")
SECURE_PROFILES: Final = ("RTP/SAVP", "RTP/SAVPF")


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One usable ``a=crypto`` line (Rule 1). ``key`` is master key + salt (30 bytes)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)

    def __str__(self) -> str:
        """The attribute value: ``tag suite inline:base64``."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode('ascii')}"


def new_key() -> bytes:
    """A fresh master key + salt for one call side (Rule 4)."""
    return secrets.token_bytes(KEY_SALT_BYTES)


def parse_crypto(value: str) -> CryptoAttribute | None:
    """The attribute in ``value`` (what follows ``a=crypto:``), or None if not usable (Rule 1)."""
    parts = value.split()
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 9:
        return None  # a fourth part is a session parameter (Rule 1)
    tag, suite, params = int(parts[0]), parts[1], parts[2]
    if suite not in SUITES or ";" in params or not params.startswith("inline:"):
        return None  # ";" separates several keys
    key_part, *extras = params[len("inline:") :].split("|")
    if len(extras) > 1 or (extras and not _lifetime_ok(extras[0])):
        return None  # an MKI (or a bad lifetime)
    try:
        key = base64.b64decode(key_part, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != KEY_SALT_BYTES:
        return None
    return CryptoAttribute(tag, suite, key)


def _lifetime_ok(text: str) -> bool:
    if ":" in text:
        return False  # MKI:length
    if text.startswith("2^") and text[2:].isdigit():
        return int(text[2:]) <= 48
    return text.isdigit() and 0 < int(text) <= MAX_LIFETIME


def choose_crypto(values: Sequence[str]) -> CryptoAttribute | None:
    """The first usable attribute among an m-line's ``a=crypto`` values (Rule 2)."""
    for value in values:
        attribute = parse_crypto(value)
        if attribute is not None:
            return attribute
    return None
