"""The fuzz targets: bytes in, nothing out; only sipbot's own errors may escape.

Rules:

* Rule 1: a target raises only the errors listed in its :class:`Target` (``allowed``; every
  one a class of :mod:`sipbot.errors`); :func:`check` swallows those and lets anything else
  out, which the fuzzer reports as a crash. A target whose shell catches everything (the SIP
  core, the RTP receiver) allows nothing.
* Rule 2: multi-message targets cut their input at :data:`SEPARATOR`, so one input is a
  whole exchange (an INVITE, its ACK, a re-INVITE, a BYE) and the transaction and dialog
  states are reached, not only the first parse.
* Rule 3: ``$tag`` in a SIP core input is replaced by our tag of the first call (the To tag
  we gave an incoming INVITE, the From tag of our own), ``$branch`` and ``$callid`` by the
  values of our own outgoing INVITE (input starting ``UAC``), so in-dialog requests and
  responses match; random values could never be guessed.
* Rule 4: targets have no side effect outside the process but the dialplan loader's temporary
  file; the dialplan target refuses to import any module that is not already loaded
  (:class:`_NoNewImports`), so a mutated ``python: module:function`` cannot run foreign code.
* Rule 5: each target is deterministic for a given input (its clock is a value), so a crash
  reproduces with ``python -m fuzz.run TARGET --replay FILE``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from sipbot.config import load_config
from sipbot.domain import PCM16_24K, SrtpKeys
from sipbot.errors import (
    AuthError,
    ConfigError,
    ProviderProtocolError,
    RtpParseError,
    SdpError,
    SipbotError,
    SipParseError,
    SrtpError,
)
from sipbot.media.receiver import RtpReceiver
from sipbot.media.rtp import parse_rtp, serialize_rtp
from sipbot.media.srtp import SrtpContext
from sipbot.providers import openai_wire
from sipbot.providers.gemini_wire import GeminiReceiver
from sipbot.ratelimit import RateLimitedLog
from sipbot.sip.auth import Credentials, DigestVerifier, authorization_header, parse_challenge
from sipbot.sip.core import Core
from sipbot.sip.legs import (
    CoreSettings,
    IncomingCall,
    Peer,
    ReofferReceived,
    RequestReceived,
)
from sipbot.sip.message import StreamFramer, parse_message, serialize
from sipbot.sip.sdp import SdpAnswerer, SrtpMode

SEPARATOR = b"\x00\x00\x00\x00"  # Rule 2
SOURCE = Peer("udp", "127.0.0.1", 5070)
OUR_ADDRESS = ("192.0.2.1", 5060)
ANSWER_SDP = b"v=0\r\no=- 2 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
OFFER_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 5000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)
TIMERS_RUN_S = 70.0  # after the last message: every SIP timer (64·T1 = 32 s) fires
MAX_TIMER_FIRINGS = 1000  # more deadlines than that after the input ends is a timer loop
CODECS = ("G722", "PCMU", "PCMA")
SRTP_MODES: tuple[SrtpMode, ...] = ("off", "optional", "required")
SRTP_KEY = bytes(range(30))  # 16-byte key + 14-byte salt, fixed (Rule 5)
QUIET = logging.getLogger("fuzz.quiet")
QUIET.disabled = True


@dataclass(frozen=True, slots=True)
class Target:
    """One fuzz target.

    Attributes:
        name: as given to ``scripts/fuzz``.
        run: feeds one input to the code under test.
        allowed: the sipbot errors that may come out (Rule 1).
        max_len: the longest input the fuzzer makes (bytes).
        what: the code under test, for ``--list`` and the report.
    """

    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[SipbotError], ...]
    max_len: int
    what: str


def check(target: Target, data: bytes) -> None:
    """Run ``target`` on ``data``; an error outside ``target.allowed`` propagates (Rule 1)."""
    with contextlib.suppress(*target.allowed):
        target.run(data)


def split(data: bytes) -> list[bytes]:
    """The messages of a multi-message input (Rule 2)."""
    return data.split(SEPARATOR)


# --------------------------------------------------------------------------- SIP


def sip_message(data: bytes) -> None:
    """``parse_message``; a message that parses also serializes and parses again."""
    message = parse_message(data)
    parse_message(serialize(message))


def sip_stream(data: bytes) -> None:
    """The TCP framer, fed in pieces; every framed message is parsed."""
    framer = StreamFramer()
    for piece in split(data):
        for message in framer.feed(piece):
            with contextlib.suppress(SipParseError):
                parse_message(message)


_UAC_PREFIX = b"UAC"
_BRANCH_RE = re.compile(rb"branch=([^;\s,]+)")
_CALL_ID_RE = re.compile(rb"\r\nCall-ID: *([^\r\n]+)", re.IGNORECASE)


def sip_core(data: bytes) -> None:
    """Messages through ``Core.receive``, the application answering; every timer fires.

    Nothing may come out: the core answers (or drops) what it cannot parse.
    """
    core = Core(CoreSettings(), lambda transport, host: OUR_ADDRESS)
    values: dict[bytes, bytes] = {}
    if data.startswith(_UAC_PREFIX):  # Rule 3
        data = data[len(_UAC_PREFIX) :]
        core.invite("sip:bot@127.0.0.1:5070", OFFER_SDP, destination=SOURCE, now=0.0)
        [sent] = core.data_to_send()
        for name, pattern in ((b"$branch", _BRANCH_RE), (b"$callid", _CALL_ID_RE)):
            found = pattern.search(sent.data)
            values[name] = found.group(1) if found else b""
    now = 0.0
    for message in split(data):
        calls = core.calls
        if calls:
            values[b"$tag"] = calls[0].local_tag.encode()
        for name, value in values.items():
            message = message.replace(name, value)
        now += 0.05
        core.receive(message, SOURCE, now)
        _answer_events(core, now)
        core.handle_timers(now)
        core.data_to_send()
    for call in core.calls:
        core.bye(call, now=now, why="fuzz")
    end = now + TIMERS_RUN_S
    for _ in range(MAX_TIMER_FIRINGS):  # every timer armed fires, in order
        deadline = core.next_deadline()
        if deadline is None or deadline > end:
            break
        core.handle_timers(deadline)
        _answer_events(core, deadline)
        core.data_to_send()
    else:
        raise AssertionError(f"timers still firing after {MAX_TIMER_FIRINGS} deadlines")


def _answer_events(core: Core, now: float) -> None:
    for event in core.events():
        if isinstance(event, IncomingCall):
            core.accept(event.call, ANSWER_SDP, now=now)
        elif isinstance(event, ReofferReceived):
            core.answer_reoffer(event.pending, ANSWER_SDP, now=now)
        elif isinstance(event, RequestReceived):
            core.answer_request(event.pending, 200, now=now)


def digest(data: bytes) -> None:
    """A challenge (``WWW-Authenticate``) and an ``Authorization`` value, both sides."""
    text = data.decode("utf-8", "replace")
    verifier = DigestVerifier("sipbot", secret=b"fuzz", algorithm="MD5")
    verdict = verifier.verify(text, "INVITE", lambda user: "secret", 1.0)
    assert verdict in ("ok", "stale", "bad"), verdict
    challenge = parse_challenge(text)
    authorization_header(
        challenge, Credentials("alice", "secret"), "REGISTER", "sip:x", cnonce="00"
    )


# --------------------------------------------------------------------------- SDP


def sdp(data: bytes) -> None:
    """The SDP parser and negotiator, both roles, each SRTP policy (first byte picks it)."""
    mode: SrtpMode = SRTP_MODES[data[0] % len(SRTP_MODES)] if data else "off"
    body = data[1:]
    answerer = SdpAnswerer(CODECS, "192.0.2.1", 4000, srtp=mode)
    try:
        answerer.answer(body)
        answerer.answer(body)  # a re-offer: the codec in use is preferred
    except SdpError:
        pass
    offerer = SdpAnswerer(CODECS, "192.0.2.1", 4000, srtp=mode)
    offerer.offer()
    offerer.take_answer(body)


# --------------------------------------------------------------------------- media


def rtp(data: bytes) -> None:
    """Datagrams through ``parse_rtp`` and an :class:`RtpReceiver` (RFC 4733 events included)."""
    receiver = RtpReceiver(log=RateLimitedLog(QUIET), name="fuzz")
    receiver.configure(0, 101, ("127.0.0.1", 4000))
    now = 0.0
    for index, datagram in enumerate(split(data)):
        now += 0.02
        try:
            packet = parse_rtp(datagram)
        except RtpParseError:
            pass
        else:
            parse_rtp(serialize_rtp(packet))
        source = ("127.0.0.1", 4000 + index % 2)
        receiver.receive(datagram, source, now)
        receiver.poll(now + 0.05)


def srtp(data: bytes) -> None:
    """Datagrams through SRTP unprotect (fixed keys), then the RTP parser."""
    context = SrtpContext(SrtpKeys("AES_CM_128_HMAC_SHA1_80", SRTP_KEY, SRTP_KEY))
    for datagram in split(data):
        with contextlib.suppress(SrtpError, RtpParseError):
            parse_rtp(context.unprotect(datagram))


# --------------------------------------------------------------------------- dialplan


class _NoNewImports(MetaPathFinder):
    """Refuses modules not loaded yet, outside sipbot (Rule 4)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "sipbot" or fullname.startswith("sipbot."):
            return None
        raise ImportError(f"fuzz: import of {fullname!r} refused")


_BLOCKER = _NoNewImports()
_DIALPLAN_DIR = tempfile.mkdtemp(prefix="sipbot-fuzz-")
_DIALPLAN_FILE = os.path.join(_DIALPLAN_DIR, "dialplan.yaml")
_ENVIRON = {"API_KEY": "k", "GEMINI_API_KEY": "k", "OPENAI_API_KEY": "k"}


def dialplan(data: bytes) -> None:
    """YAML text through ``load_config`` (YAML, schema, dialplan build, warnings)."""
    with open(_DIALPLAN_FILE, "wb") as file:
        file.write(data)
    if _BLOCKER not in sys.meta_path:
        sys.meta_path.insert(0, _BLOCKER)
    try:
        load_config(_DIALPLAN_FILE, environ=_ENVIRON)
    finally:
        sys.meta_path.remove(_BLOCKER)


# --------------------------------------------------------------------------- providers


def openai_events(data: bytes) -> None:
    """Server frames through ``decode_server_event`` and :class:`OpenAIConversation`."""
    conversation = openai_wire.OpenAIConversation(PCM16_24K)
    now = 0.0
    for frame in split(data):
        now += 0.1
        event = openai_wire.decode_server_event(frame)
        conversation.receive(event, now)
        conversation.truncate("item1", 100)
        conversation.data_to_send()
    conversation.connection_lost()


def _gemini_parse() -> Callable[[dict[str, Any]], Any]:
    from google.genai import _live_converters as converters
    from google.genai import types

    blank = types.LiveServerMessage().model_dump()

    def parse(message: dict[str, Any]) -> Any:
        converted = converters._LiveServerMessage_from_mldev(message)
        return types.LiveServerMessage._from_response(response=converted, kwargs=blank)

    return parse


_gemini: list[Callable[[dict[str, Any]], Any]] = []


def gemini_messages(data: bytes) -> None:
    """Server frames parsed by the SDK as ``AsyncSession.receive`` does, then our receiver.

    What the SDK itself refuses (not JSON, not its schema) never reaches that receiver and ends
    the connection inside the SDK, so it is skipped there. The same frames also go through
    ``receive_frame`` (what sipbot runs), which may refuse a frame only with
    ProviderProtocolError.
    """
    if not _gemini:
        _gemini.append(_gemini_parse())
    receiver, frames = GeminiReceiver(), GeminiReceiver()
    for frame in split(data):
        with contextlib.suppress(ProviderProtocolError):  # what sipbot reads: receive_frame
            frames.receive_frame(frame)
        try:
            raw = json.loads(frame)
            if not isinstance(raw, dict):
                continue
            message = _gemini[0](raw)
        except Exception:  # the SDK's domain (pydantic, its converters): see the docstring
            continue
        receiver.receive(message)
    receiver.connection_lost()
    frames.connection_lost()


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("sip_message", sip_message, (SipParseError,), 8192, "sip/message.py parse"),
        Target("sip_stream", sip_stream, (SipParseError,), 4096, "sip/message.py StreamFramer"),
        Target("sip_core", sip_core, (), 8192, "sip/core.py + transactions, UAS and UAC"),
        Target("digest", digest, (AuthError,), 1024, "sip/auth.py both sides"),
        Target("sdp", sdp, (SdpError,), 4096, "sip/sdp.py, sdp_syntax.py, sdp_crypto.py"),
        Target("rtp", rtp, (), 2048, "media/rtp.py, receiver.py, jitter.py, dtmf.py"),
        Target("srtp", srtp, (), 2048, "media/srtp.py unprotect + rtp.py"),
        Target("dialplan", dialplan, (ConfigError,), 4096, "yamlsource.py, config.py, dialplan/"),
        Target(
            "openai",
            openai_events,
            (ProviderProtocolError,),
            4096,
            "providers/openai_wire.py server events",
        ),
        Target("gemini", gemini_messages, (), 4096, "providers/gemini_wire.py GeminiReceiver"),
    )
}
ORDER = tuple(TARGETS)  # the first byte of an ``all`` input picks ORDER[byte % len(ORDER)]


def pick(data: bytes) -> tuple[Target, bytes]:
    """The target and input an ``all`` input means (one process fuzzes every target)."""
    if not data:
        return TARGETS[ORDER[0]], b""
    return TARGETS[ORDER[data[0] % len(ORDER)]], data[1:]
