"""Every input that crashed a fuzz target, as an exact regression test, and the stored corpora.

The files under ``fuzz/regressions/TARGET`` are the fuzzer's findings (issue 12); each one is
named after what it broke. The tests below say what the fixed code does with it instead;
:func:`test_every_stored_input_keeps_the_property` replays all seeds and findings through
their targets (only sipbot's own errors may come out) without atheris.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fuzz.run import CORPUS_DIR, REGRESSIONS_DIR
from fuzz.targets import SEPARATOR, SRTP_KEY, TARGETS, check
from sipbot.config import load_config
from sipbot.domain import PCM16_24K, SrtpKeys
from sipbot.errors import ConfigError, ProviderProtocolError, SipParseError, SrtpError
from sipbot.media.receiver import RtpReceiver
from sipbot.media.srtp import SrtpContext
from sipbot.providers.openai_wire import OpenAIConversation, decode_server_event
from sipbot.ratelimit import RateLimitedLog
from sipbot.sip.core import Core
from sipbot.sip.legs import CallState, CoreSettings, Peer
from sipbot.sip.message import parse_message

STORED = sorted(
    (target, path)
    for root in (CORPUS_DIR, REGRESSIONS_DIR)
    for target in TARGETS
    for path in ((root / target).glob("*") if (root / target).is_dir() else [])
)


@pytest.mark.parametrize(
    ("target", "path"), STORED, ids=[f"{p.parent.parent.name}/{t}/{p.name}" for t, p in STORED]
)
def test_every_stored_input_keeps_the_property(target: str, path: Path) -> None:
    check(TARGETS[target], path.read_bytes())


def test_every_target_has_seeds() -> None:
    assert {t for t in TARGETS if any((CORPUS_DIR / t).glob("*"))} == set(TARGETS)


# --------------------------------------------------------------------------- openai


def receive(event: dict[str, object]) -> None:
    OpenAIConversation(PCM16_24K).receive(event, 0.0)


def test_openai_audio_delta_that_is_not_base64() -> None:
    """fuzz/regressions/openai/bad-base64-delta: binascii.Error escaped the wire parser."""
    with pytest.raises(ProviderProtocolError) as info:
        receive({"type": "response.output_audio.delta", "item_id": "i", "delta": "AAAAA"})
    assert str(info.value) == "openai: audio delta is not base64: 'AAAAA'"
    with pytest.raises(ProviderProtocolError) as info:
        receive({"type": "response.output_audio.delta", "delta": 7})
    assert str(info.value) == "openai: audio delta is not base64: 7"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            {"type": "response.done", "response": ["x"]},
            "openai: response.done: 'response' is not an object",
        ),
        ({"type": "error", "error": "boom"}, "openai: error: 'error' is not an object"),
    ],
)
def test_openai_members_that_are_not_objects(event: dict[str, object], message: str) -> None:
    with pytest.raises(ProviderProtocolError) as info:
        receive(event)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"[1, 2]", "openai: a server frame is a JSON list, not an object"),
        (b"\xff", "openai: a server frame is not JSON: 'utf-8' codec can't decode byte 0xff"),
        (b"{", "openai: a server frame is not JSON: Expecting property name enclosed"),
    ],
)
def test_openai_frames_that_are_not_event_objects(frame: bytes, message: str) -> None:
    with pytest.raises(ProviderProtocolError) as info:
        decode_server_event(frame)
    assert str(info.value).startswith(message)


def test_openai_frame_nested_too_deep() -> None:
    """fuzz/regressions/openai/nested-json (found in review): RecursionError escaped."""
    frame = (REGRESSIONS_DIR / "openai" / "nested-json").read_bytes()
    with pytest.raises(ProviderProtocolError) as info:
        decode_server_event(frame)
    assert str(info.value) == "openai: a server frame is nested too deep"


# --------------------------------------------------------------------------- dialplan


@pytest.mark.parametrize(
    ("name", "shown"),
    [("codecs-not-strings", "[{}]"), ("codecs-not-a-list", "5"), (None, "'PCMU'")],
)
def test_server_codecs_that_are_not_a_list_of_names(
    tmp_path: Path, name: str | None, shown: str
) -> None:
    """fuzz/regressions/dialplan/codecs-*: AttributeError / TypeError escaped ``load_config``
    (and ``sipbot check`` printed a traceback); a bare string was split into letters."""
    path = tmp_path / "d.yaml"
    source = REGRESSIONS_DIR / "dialplan" / name if name else None
    path.write_bytes(source.read_bytes() if source else b"server: {media: {codecs: PCMU}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (
        f"{path}:1: server.media.codecs: expected a list of codec names, got {shown}"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("alias-recursive", "d.yaml:1: x-a[0]: an alias inside the value it names (recursive)"),
        ("merge-recursive", "d.yaml:1: x-a: an alias inside the value it names (recursive)"),
        (
            "alias-bomb",
            "d.yaml:1: x-e[1][5][2][3]: more than 20000 values (aliases expanding without bound?)",
        ),
        ("nested-2000", "d.yaml:1: invalid YAML: nested more than 64 deep"),
    ],
)
def test_yaml_that_expands_without_bound(tmp_path: Path, name: str, message: str) -> None:
    """fuzz/regressions/dialplan/alias-*, merge-*, nested-*: RecursionError escaped (a value
    or merge key containing its own alias, thousands of brackets), nine aliases of nine
    ("billion laughs", 9**7 values) was still running after 20 s, and 1000 nested brackets
    kept PyYAML's scanner busy for seconds (the fuzzer's timeout); now each is a ConfigError
    at once."""
    path = tmp_path / "d.yaml"
    path.write_bytes((REGRESSIONS_DIR / "dialplan" / name).read_bytes())
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{tmp_path}/{message}"


# --------------------------------------------------------------------------- SIP


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("cseq-5000-digits", "CSeq number out of range"),
        ("max-forwards-5000-digits", "Max-Forwards out of range"),
        ("content-length-5000-digits", "Content-Length out of range"),
    ],
)
def test_numbers_longer_than_python_converts(name: str, reason: str) -> None:
    """fuzz/regressions/sip_message/*-5000-digits (found in review, past the fuzzer's input
    length then): int() refuses more than 4300 digits with a ValueError, which escaped
    ``parse_message`` and ``Core.receive``; now a 400 like any out-of-range number."""
    with pytest.raises(SipParseError) as info:
        parse_message((REGRESSIONS_DIR / "sip_message" / name).read_bytes())
    assert (info.value.status, info.value.reason) == (400, reason)
    assert info.value.request is not None  # so the core can answer it


def test_a_2xx_with_a_malformed_record_route_is_dropped() -> None:
    """fuzz/regressions/sip_core/uac-2xx-bad-record-route (found in review): the 2xx to our
    INVITE made a dialog whose route set could not be parsed, and building the ACK raised
    SipParseError out of ``Core.receive``. The response parser now checks Record-Route, so
    the 2xx is dropped like any malformed response (the INVITE then times out)."""
    core = Core(CoreSettings(), lambda transport, host: ("192.0.2.1", 5060))
    peer = Peer("udp", "127.0.0.1", 5070)
    call = core.invite("sip:bot@127.0.0.1:5070", b"", destination=peer, now=0.0)
    [sent] = core.data_to_send()
    head = sent.data.decode()
    branch = head.split("branch=")[1].split(";")[0].split("\r\n")[0]
    call_id = head.split("Call-ID: ")[1].split("\r\n")[0]
    response = (REGRESSIONS_DIR / "sip_core" / "uac-2xx-bad-record-route").read_bytes()[3:]
    response = response.replace(b"$branch", branch.encode()).replace(b"$callid", call_id.encode())
    response = response.replace(b"$tag", call.local_tag.encode())
    core.receive(response, peer, 0.1)
    assert core.dropped == 1
    assert core.data_to_send() == []  # no ACK
    assert core.events() == []
    assert call.state is CallState.CALLING
    with pytest.raises(SipParseError) as info:
        parse_message(response)
    assert info.value.reason == "Malformed URI in Record-Route"


# --------------------------------------------------------------------------- SRTP


def test_an_srtp_datagram_longer_than_libsrtp_takes() -> None:
    """fuzz/regressions/srtp/longer-than-libsrtp-buffer (found by the bounded run): pylibsrtp
    raises ValueError("packet is too long") past its ~1.5 kB buffer; it escaped
    ``SrtpContext.unprotect`` and so ``RtpReceiver.receive`` (which drops SrtpError only)."""
    data = (REGRESSIONS_DIR / "srtp" / "longer-than-libsrtp-buffer").read_bytes()
    datagram = max(data.split(SEPARATOR), key=len)
    keys = SrtpKeys("AES_CM_128_HMAC_SHA1_80", SRTP_KEY, SRTP_KEY)
    with pytest.raises(SrtpError) as info:
        SrtpContext(keys).unprotect(datagram)
    assert str(info.value) == "SRTP unprotect failed: packet is too long"
    with pytest.raises(SrtpError) as info:
        SrtpContext(keys).protect(datagram)
    assert str(info.value) == "SRTP protect failed: packet is too long"
    receiver = RtpReceiver(log=RateLimitedLog(logging.getLogger("test")), name="t")
    receiver.configure(0, None, ("127.0.0.1", 4000))
    receiver.srtp = SrtpContext(keys)
    assert receiver.receive(datagram, ("127.0.0.1", 4000), 0.0) == ()
    assert receiver.stats.srtp_failures == 1
