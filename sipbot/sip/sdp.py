"""SDP offer/answer for sipbot's audio (RFC 3264 over RFC 4566 descriptions).

The model and parser live in :mod:`sipbot.sip.sdp_syntax` and are re-exported here.

Rules of :func:`negotiate` (sipbot answers an offer):

* Rule 1: the answer mirrors the offer's m-lines in order. The first ``audio`` stream with a
  non-zero port, a profile we take (Rule 6) and a codec we support is accepted; every other
  stream (video, a second audio, an unusable audio) gets port 0.
* Rule 2: the codec is the first of *our* preference list that the offer has: static payload
  types 0/8/9 count without an rtpmap; dynamic ones by rtpmap name (case-insensitive) and clock
  rate 8000 (RFC 3551: G.722 says 8000 though it samples at 16 kHz). The answer lists only that
  codec plus ``telephone-event/8000`` (``fmtp 0-16``) when offered and ``dtmf`` is on.
* Rule 3: direction comes from the media level, else the session level, else sendrecv; we
  answer sendonly→recvonly, recvonly→sendonly, inactive→inactive. ``c=0.0.0.0`` (RFC 2543
  hold) counts as sendonly.
* Rule 4: we send at the offer's ``a=ptime`` when it is 10-60 ms in 10 ms steps (else our
  ``ptime_ms``), capped by ``a=maxptime``; the answer asks for our ``ptime_ms``.
* Rule 5: ``t=`` is copied from the offer (§6); ``o=`` carries the caller's session id and
  version: incrementing the version on every new answer is the caller's job (§8).
* Rule 6 (SRTP, RFC 4568 SDES; ``srtp`` is ``off``/``optional``/``required``): ``RTP/SAVP(F)``
  streams are taken only when ``srtp`` is not ``off`` and they carry a usable ``a=crypto``
  (:mod:`sipbot.sip.sdp_crypto`), and are answered ``RTP/SAVP(F)`` with our key; an
  ``RTP/AVP(F)`` stream with a usable ``a=crypto`` is answered with crypto when ``srtp`` is
  ``optional`` (best-effort SRTP, e.g. baresip's ``mediaenc=srtp``), plainly when ``off``; with
  ``required`` a stream without usable crypto is refused. Nothing acceptable → 488. As the
  offerer, ``required`` offers ``RTP/SAVP``, ``optional`` offers ``RTP/AVP`` with crypto, both
  suites with one key; the answer's tag says which suite is used.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sipbot.errors import LocalSipError, SdpError, SdpNegotiationError
from sipbot.sip.sdp_crypto import (
    PLAIN_PROFILES,
    SECURE_PROFILES,
    SUITES,
    CryptoAttribute,
    SrtpKeys,
    SrtpMode,
    choose_crypto,
    new_key,
    parse_crypto,
)
from sipbot.sip.sdp_syntax import (
    DIRECTIONS,
    MediaDescription,
    Origin,
    SessionDescription,
    parse_sdp,
)

__all__ = [
    "DIRECTIONS",
    "Codec",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "SessionDescription",
    "SrtpKeys",
    "SrtpMode",
    "accept_answer",
    "build_offer",
    "negotiate",
    "parse_sdp",
]

RTP_CLOCK_HZ = 8000  # the SDP clock rate of every codec we speak, G.722 included
DTMF_PAYLOAD_TYPE = 101  # what we offer for telephone-event
DTMF_FMTP = "0-16"
AUDIO_PROFILES = PLAIN_PROFILES + SECURE_PROFILES
HOLD_ADDRESS = "0.0.0.0"
_STATIC = {"PCMU": 0, "PCMA": 8, "G722": 9}
_STATIC_BY_PT = {pt: name for name, pt in _STATIC.items()}
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


@dataclass(frozen=True, slots=True)
class Codec:
    """An RTP payload format. ``name``: "PCMU" | "PCMA" | "G722" | "telephone-event"."""

    name: str
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of an offer/answer exchange, from our side.

    ``remote_host``/``remote_port`` say where to send RTP ("0.0.0.0" or port 0: nowhere, the
    peer holds or disabled the stream); ``direction`` is OUR direction; ``answer`` is what we
    send back when we are the answerer, else None; ``srtp`` the SRTP keys (None: plain RTP).
    """

    codec: Codec
    dtmf_payload_type: int | None
    remote_host: str
    remote_port: int
    direction: str
    ptime_ms: int
    answer: SessionDescription | None
    srtp: SrtpKeys | None = None


def _check_codecs(codecs: Sequence[str]) -> list[str]:
    names = [c.upper() for c in codecs]
    unknown = [c for c in names if c not in _STATIC]
    if unknown or not names:
        raise LocalSipError(f"Unsupported codec list {list(codecs)!r} (use PCMU, PCMA, G722)")
    return names


def _rtpmaps(m: MediaDescription) -> dict[str, tuple[str, int, int]]:
    """payload type → (upper-cased name, clock rate, channels) from ``a=rtpmap``."""
    out: dict[str, tuple[str, int, int]] = {}
    for value in m.attribute_values("rtpmap"):
        pt, _, encoding = value.partition(" ")
        parts = encoding.strip().split("/")
        if len(parts) >= 2 and parts[1].isdigit():
            channels = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
            out[pt] = (parts[0].upper(), int(parts[1]), channels)
    return out


def _fmtp(m: MediaDescription, pt: str) -> str | None:
    for value in m.attribute_values("fmtp"):
        key, _, params = value.partition(" ")
        if key == pt:
            return params.strip()
    return None


def _find_codec(m: MediaDescription, names: list[str]) -> Codec | None:
    """The first of ``names`` the m-line offers, with the offer's payload type."""
    maps = _rtpmaps(m)
    offered: dict[str, int] = {}
    for fmt in m.formats:
        if not fmt.isdigit() or int(fmt) > 127:
            continue
        if fmt in maps:
            name, rate, channels = maps[fmt]
            if name in _STATIC and rate == RTP_CLOCK_HZ and channels == 1:
                offered.setdefault(name, int(fmt))
        elif int(fmt) in _STATIC_BY_PT:
            offered.setdefault(_STATIC_BY_PT[int(fmt)], int(fmt))
    for name in names:
        if name in offered:
            return Codec(name, offered[name], RTP_CLOCK_HZ, fmtp=_fmtp(m, str(offered[name])))
    return None


def _find_dtmf(m: MediaDescription) -> int | None:
    maps = _rtpmaps(m)
    for fmt in m.formats:
        entry = maps.get(fmt)
        if entry and entry[0] == "TELEPHONE-EVENT" and entry[1] == RTP_CLOCK_HZ:
            return int(fmt)
    return None


def _direction(offer: SessionDescription, m: MediaDescription, host: str) -> str:
    direction = m.direction or offer.direction or "sendrecv"
    if host == HOLD_ADDRESS and direction == "sendrecv":
        return "sendonly"  # RFC 2543 hold: c=0.0.0.0 means "do not send to me"
    return direction


def _send_ptime(m: MediaDescription, session: SessionDescription, ours: int) -> int:
    value = m.attribute("ptime") or session.attribute("ptime")
    ptime = ours
    if value and value.strip().isdigit():
        wanted = int(value.strip())
        if 10 <= wanted <= 60 and wanted % 10 == 0:
            ptime = wanted
    cap = m.attribute("maxptime") or session.attribute("maxptime")
    if cap and cap.strip().isdigit() and int(cap.strip()) >= 10:
        ptime = min(ptime, int(cap.strip()) // 10 * 10)
    return ptime


def _audio_media(
    codec: Codec,
    dtmf_pt: int | None,
    port: int,
    proto: str,
    ptime_ms: int,
    direction: str,
    crypto: CryptoAttribute | None = None,
) -> MediaDescription:
    formats = [str(codec.payload_type)]
    attributes: list[tuple[str, str | None]] = [
        ("rtpmap", f"{codec.payload_type} {codec.name}/{codec.clock_rate}")
    ]
    if dtmf_pt is not None:
        formats.append(str(dtmf_pt))
        attributes += [
            ("rtpmap", f"{dtmf_pt} telephone-event/{RTP_CLOCK_HZ}"),
            ("fmtp", f"{dtmf_pt} {DTMF_FMTP}"),
        ]
    if crypto is not None:
        attributes.append(("crypto", str(crypto)))
    attributes += [("ptime", str(ptime_ms)), (direction, None)]
    return MediaDescription("audio", port, proto, tuple(formats), attributes=tuple(attributes))


def _usable_crypto(m: MediaDescription, srtp: SrtpMode) -> tuple[bool, CryptoAttribute | None]:
    """Whether the m-line's profile can be taken under ``srtp``, and the crypto to use (Rule 6)."""
    crypto = choose_crypto(m.attribute_values("crypto")) if srtp != "off" else None
    if m.proto in SECURE_PROFILES:
        return crypto is not None, crypto
    if srtp == "required":
        return crypto is not None, crypto
    return True, crypto


def _session(
    media: Sequence[MediaDescription],
    *,
    address: str,
    session_id: int,
    session_version: int,
    username: str,
    timing: str = "0 0",
) -> SessionDescription:
    kind = "IP6" if ":" in address else "IP4"
    origin = Origin(username, str(session_id), str(session_version), address, kind)
    return SessionDescription(origin, "-", address, kind, timing, (), tuple(media))


def negotiate(
    offer: SessionDescription,
    codecs: Sequence[str],
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    username: str = "sipbot",
    ptime_ms: int = 20,
    dtmf: bool = True,
    srtp: SrtpMode = "off",
    srtp_key: bytes | None = None,
) -> Negotiated:
    """Answer ``offer`` (rules in the module docstring).

    Args:
        offer: the parsed offer.
        codecs: our codecs in preference order, e.g. ``["G722", "PCMU", "PCMA"]``.
        address, port: where we receive RTP (never 0.0.0.0: the advertised address).
        session_id, session_version: our ``o=`` values.
        srtp: the SRTP policy (Rule 6); ``srtp_key``: our master key + salt (needed unless
            ``srtp`` is ``off``).

    Raises:
        SdpNegotiationError: no audio stream we can accept (answer 488).
        LocalSipError: ``codecs`` names a codec sipbot does not have.
    """
    names = _check_codecs(codecs)
    if srtp != "off" and srtp_key is None:
        raise LocalSipError("SRTP needs our key (srtp_key)")
    chosen: tuple[MediaDescription, Codec, CryptoAttribute | None] | None = None
    answer_media: list[MediaDescription] = []
    refused_for_srtp = False
    for m in offer.media:
        codec = None
        crypto: CryptoAttribute | None = None
        if chosen is None and m.media == "audio" and m.port != 0 and m.proto in AUDIO_PROFILES:
            usable, crypto = _usable_crypto(m, srtp)
            if usable:
                codec = _find_codec(m, names)
            else:
                refused_for_srtp = True
        if codec is None:
            answer_media.append(MediaDescription(m.media, 0, m.proto, m.formats[:1]))
            continue
        chosen = (m, codec, crypto)
        host = m.connection or offer.connection or HOLD_ADDRESS
        direction = _ANSWER_DIRECTION[_direction(offer, m, host)]
        dtmf_pt = _find_dtmf(m) if dtmf else None
        ours = None
        if crypto is not None:
            assert srtp_key is not None
            ours = CryptoAttribute(crypto.tag, crypto.suite, srtp_key)
        answer_media.append(_audio_media(codec, dtmf_pt, port, m.proto, ptime_ms, direction, ours))
    if chosen is None:
        if refused_for_srtp and srtp == "required":
            raise SdpNegotiationError(
                f"SRTP is required and the offer has no usable a=crypto ({', '.join(SUITES)})"
            )
        if refused_for_srtp:
            raise SdpNegotiationError(
                "The offer asks for SRTP (RTP/SAVP) without a usable a=crypto, or srtp is off"
            )
        raise SdpNegotiationError(
            f"No common audio codec in the offer (we have {', '.join(names)})"
        )
    m, codec, crypto = chosen
    keys = None
    if crypto is not None:
        assert srtp_key is not None
        keys = SrtpKeys(crypto.suite, local=srtp_key, remote=crypto.key)
    answer = _session(
        answer_media,
        address=address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        timing=offer.timing,
    )
    host = m.connection or offer.connection or HOLD_ADDRESS
    return Negotiated(
        codec,
        _find_dtmf(m) if dtmf else None,
        host,
        m.port,
        _ANSWER_DIRECTION[_direction(offer, m, host)],
        _send_ptime(m, offer, ptime_ms),
        answer,
        keys,
    )


def build_offer(
    codecs: Sequence[str],
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    ptime_ms: int = 20,
    dtmf: bool = True,
    direction: str = "sendrecv",
    username: str = "sipbot",
    srtp: SrtpMode = "off",
    srtp_key: bytes | None = None,
) -> SessionDescription:
    """An audio offer listing ``codecs`` in order (static payload types) and telephone-event;
    with ``srtp`` on, ``a=crypto`` lines for both suites with ``srtp_key`` (Rule 6).

    Raises:
        LocalSipError: an unknown codec or direction.
    """
    if direction not in DIRECTIONS:
        raise LocalSipError(f"Unknown SDP direction {direction!r}")
    names = _check_codecs(codecs)
    formats = [str(_STATIC[n]) for n in names]
    attributes: list[tuple[str, str | None]] = [
        ("rtpmap", f"{_STATIC[n]} {n}/{RTP_CLOCK_HZ}") for n in names
    ]
    if dtmf:
        formats.append(str(DTMF_PAYLOAD_TYPE))
        attributes += [
            ("rtpmap", f"{DTMF_PAYLOAD_TYPE} telephone-event/{RTP_CLOCK_HZ}"),
            ("fmtp", f"{DTMF_PAYLOAD_TYPE} {DTMF_FMTP}"),
        ]
    if srtp != "off":
        if srtp_key is None:
            raise LocalSipError("SRTP needs our key (srtp_key)")
        attributes += [
            ("crypto", str(CryptoAttribute(tag, suite, srtp_key)))
            for tag, suite in enumerate(SUITES, start=1)
        ]
    attributes += [("ptime", str(ptime_ms)), (direction, None)]
    proto = "RTP/SAVP" if srtp == "required" else "RTP/AVP"
    media = MediaDescription("audio", port, proto, tuple(formats), attributes=tuple(attributes))
    return _session(
        [media],
        address=address,
        session_id=session_id,
        session_version=session_version,
        username=username,
    )


def accept_answer(offer: SessionDescription, answer: SessionDescription) -> Negotiated:
    """Read the peer's answer to our ``offer`` (we are the offerer).

    The codec is the answer's first format that we offered (the answerer lists its preference
    first, RFC 3264 §6.1); our direction follows from both directions.

    Raises:
        SdpNegotiationError: the answer rejects our audio, names a codec we did not offer, or
            does not mirror our m-lines.
    """
    if len(answer.media) != len(offer.media):
        raise SdpNegotiationError("The SDP answer does not mirror the offer's m-lines")
    for ours, theirs in zip(offer.media, answer.media, strict=True):
        if ours.media != "audio" or ours.port == 0 or theirs.port == 0:
            continue
        offered = _offered_names(ours)
        codec = _find_codec(theirs, [n for n in _offered_names(theirs) if n in offered])
        if codec is None:
            raise SdpNegotiationError("The SDP answer has no codec we offered")
        host = theirs.connection or answer.connection or HOLD_ADDRESS
        their_direction = _direction(answer, theirs, host)
        our_direction = ours.direction or offer.direction or "sendrecv"
        keys = _answered_keys(ours, theirs)
        return Negotiated(
            codec,
            _find_dtmf(theirs) if _find_dtmf(ours) is not None else None,
            host,
            theirs.port,
            _combine(our_direction, their_direction),
            _send_ptime(theirs, answer, _ptime_or(ours, 20)),
            None,
            keys,
        )
    raise SdpNegotiationError("The SDP answer rejected our audio stream")


def _answered_keys(ours: MediaDescription, theirs: MediaDescription) -> SrtpKeys | None:
    """The SRTP keys from the answer's ``a=crypto`` to our offered ones (Rule 6).

    Raises:
        SdpNegotiationError: we offered RTP/SAVP and the answer has no matching crypto, or it
            answers with a tag or suite we did not offer.
    """
    offered = {a.tag: a for a in map(parse_crypto, ours.attribute_values("crypto")) if a}
    if not offered:
        return None  # a plain offer: an a=crypto in the answer means nothing
    answered = choose_crypto(theirs.attribute_values("crypto"))
    if answered is None:
        if ours.proto in SECURE_PROFILES or theirs.attribute_values("crypto"):
            raise SdpNegotiationError("The SDP answer has no usable a=crypto for our SRTP offer")
        return None
    mine = offered.get(answered.tag)
    if mine is None or mine.suite != answered.suite:
        raise SdpNegotiationError("The SDP answer's a=crypto matches no tag/suite we offered")
    return SrtpKeys(mine.suite, local=mine.key, remote=answered.key)


def _offered_names(m: MediaDescription) -> list[str]:
    """The supported codec names an m-line lists, in its order."""
    maps = _rtpmaps(m)
    names = []
    for fmt in m.formats:
        name = maps.get(fmt, (_STATIC_BY_PT.get(int(fmt), ""),))[0] if fmt.isdigit() else ""
        if name in _STATIC:
            names.append(name)
    return names


def _ptime_or(m: MediaDescription, default: int) -> int:
    value = m.attribute("ptime")
    return int(value) if value and value.isdigit() else default


def _combine(ours: str, theirs: str) -> str:
    """Our effective direction given what we offered and what they answered."""
    we_send = ours in ("sendrecv", "sendonly") and theirs in ("sendrecv", "recvonly")
    we_receive = ours in ("sendrecv", "recvonly") and theirs in ("sendrecv", "sendonly")
    if we_send and we_receive:
        return "sendrecv"
    if we_send:
        return "sendonly"
    return "recvonly" if we_receive else "inactive"


class SdpAnswerer:
    """Our side of one call's offer/answer exchanges (the INVITE, then re-INVITEs/UPDATEs).

    Keeps the ``o=`` session id, bumps the version for every answer (RFC 3264 §8), and prefers
    the codec already in use when a re-offer still contains it, so a hold/resume never switches
    codecs under the media session.

    Args:
        codecs: our codecs in preference order.
        address: the address we advertise for RTP.
        port: our RTP port (set once the media session is bound).
        srtp: the call's SRTP policy (Rule 6); our key is made here, once per call.
    """

    def __init__(
        self, codecs: Sequence[str], address: str, port: int = 0, srtp: SrtpMode = "off"
    ) -> None:
        self.codecs = tuple(codecs)
        self.srtp: SrtpMode = srtp
        self._key = new_key() if srtp != "off" else None
        self.address = address
        self.port = port
        self.session_id = secrets.randbelow(2**31)
        self.version = 0
        self.current: Codec | None = None
        self._offer: SessionDescription | None = None

    def answer(self, offer: bytes) -> Negotiated:
        """Answer an SDP offer.

        Raises:
            SdpError: the offer cannot be parsed.
            SdpNegotiationError: nothing in it we can accept.
        """
        codecs = list(self.codecs)
        if self.current is not None and self.current.name in codecs:
            codecs.remove(self.current.name)
            codecs.insert(0, self.current.name)
        negotiated = negotiate(
            parse_sdp(offer),
            codecs,
            address=self.address,
            port=self.port,
            session_id=self.session_id,
            session_version=self.version + 1,
            srtp=self.srtp,
            srtp_key=self._key,
        )
        self.version += 1
        self.current = negotiated.codec
        return negotiated

    def offer(self) -> bytes:
        """Our offer, for an INVITE that came without SDP (late offer: the answer is in the ACK)."""
        self.version += 1
        self._offer = build_offer(
            self.codecs,
            address=self.address,
            port=self.port,
            session_id=self.session_id,
            session_version=self.version,
            srtp=self.srtp,
            srtp_key=self._key,
        )
        return bytes(self._offer)

    def take_answer(self, answer: bytes) -> Negotiated:
        """The peer's answer to :meth:`offer`.

        Raises:
            SdpError: no offer was made, or the answer cannot be parsed.
            SdpNegotiationError: the answer accepts nothing we offered.
        """
        if self._offer is None:
            raise SdpError("no offer was made")
        negotiated = accept_answer(self._offer, parse_sdp(answer))
        self.current = negotiated.codec
        return negotiated
