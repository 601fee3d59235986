"""SRTP protect/unprotect for one call (RFC 3711), the only user of ``pylibsrtp`` (libsrtp 2).

The keys come from the SDES exchange (:class:`sipbot.domain.SrtpKeys`, made by
:mod:`sipbot.sip.sdp_crypto`); the sender protects each outbound packet (audio and
telephone-events alike) and the receiver unprotects each inbound one before parsing it
(:mod:`sipbot.media.sender`, :mod:`sipbot.media.receiver`).

Rules:

* Rule 1: one :class:`SrtpContext` per call and key pair: an outbound libsrtp session keyed
  with our key for any SSRC we send, an inbound one keyed with the peer's key for any SSRC it
  sends (libsrtp keeps per-SSRC state: the rollover counter across sequence-number wraps and
  the replay window).
* Rule 2: a packet that fails authentication or the replay check, or is longer than libsrtp's
  buffer, raises :class:`SrtpError` (the receiver counts and drops it); the message never
  contains key material.
* Rule 3: the repr names only the suite (:class:`SrtpKeys` hides its keys in its own repr).
"""

from __future__ import annotations

from typing import Final

import pylibsrtp

from sipbot.domain import SRTP_KEY_SALT_BYTES as KEY_SALT_BYTES
from sipbot.domain import SrtpKeys
from sipbot.errors import SrtpError

PROFILES: Final = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
TAG_BYTES: Final = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4}


class SrtpContext:
    """Protect what we send and unprotect what we receive, for one call (Rule 1).

    Raises:
        SrtpError: an unknown suite or a key of the wrong length.
    """

    __slots__ = ("_rx", "_tx", "keys", "suite")

    def __init__(self, keys: SrtpKeys) -> None:
        profile = PROFILES.get(keys.suite)
        if profile is None:
            raise SrtpError(f"unsupported SRTP suite {keys.suite!r}")
        if len(keys.local) != KEY_SALT_BYTES or len(keys.remote) != KEY_SALT_BYTES:
            raise SrtpError(f"SRTP master key + salt must be {KEY_SALT_BYTES} bytes")
        self.suite = keys.suite
        self.keys = keys  # compared by the session to keep the context across re-offers
        self._tx = pylibsrtp.Session(
            policy=pylibsrtp.Policy(
                key=keys.local, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
            )
        )
        self._rx = pylibsrtp.Session(
            policy=pylibsrtp.Policy(
                key=keys.remote, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile
            )
        )

    def __repr__(self) -> str:
        return f"<SrtpContext {self.suite}>"

    def protect(self, packet: bytes) -> bytes:
        """The SRTP packet for an RTP ``packet`` we send.

        Raises:
            SrtpError: libsrtp refused it (e.g. a malformed packet).
        """
        try:
            return self._tx.protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:  # ValueError: over its buffer (~1.5 kB)
            raise SrtpError(f"SRTP protect failed: {exc}") from None

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP ``packet`` we received (Rule 2).

        Raises:
            SrtpError: it fails authentication or the replay check, or is not SRTP.
        """
        try:
            return self._rx.unprotect(packet)
        except (pylibsrtp.Error, ValueError) as exc:  # ValueError: over its buffer (~1.5 kB)
            raise SrtpError(f"SRTP unprotect failed: {exc}") from None
