"""SIPp scenario templates: render ``tests/e2e/scenarios/*.xml`` for one test.

Our placeholders are ``@@NAME@@`` (a placeholder alone on its line expands to several lines, or to
none when empty) and optional sections between ``<!--@@BEGIN name@@-->`` and
``<!--@@END name@@-->`` (they nest); everything in ``[brackets]`` is SIPp's own keyword syntax.
Import these through :mod:`tests.e2e.peers.sipp`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Hangup = Literal["caller", "callee"]

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
DTMF_PCAP_DIR = Path("/usr/share/sip-tester")


@dataclass(frozen=True, slots=True)
class Codec:
    """An RTP audio codec as SIPp's SDP and rtp_stream see it."""

    name: str
    payload_type: int
    rtpmap: str  # a=rtpmap value after the PT, e.g. "PCMU/8000"
    pcm_rate: int  # decoded PCM rate in Hz


CODECS: Mapping[str, Codec] = {
    "PCMU": Codec("PCMU", 0, "PCMU/8000", 8000),
    "PCMA": Codec("PCMA", 8, "PCMA/8000", 8000),
    "G722": Codec("G722", 9, "G722/8000", 16000),  # RTP clock 8000 by RFC 3551's historic error
}
TELEPHONE_EVENT_PT = 101
SIPP_RTP_SSRC_BASE = 0xCA110000  # rtp_stream SSRC of call i is this + i


def sdp_media(codecs: Sequence[str], telephone_event: bool = True) -> dict[str, str]:
    """PAYLOAD_TYPES and RTPMAPS values for a template, codecs in preference order."""
    chosen = [CODECS[c.upper()] for c in codecs]
    pts = [str(c.payload_type) for c in chosen]
    maps = [f"a=rtpmap:{c.payload_type} {c.rtpmap}" for c in chosen]
    if telephone_event:
        pts.append(str(TELEPHONE_EVENT_PT))
        maps += [
            f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000",
            f"a=fmtp:{TELEPHONE_EVENT_PT} 0-16",
        ]
    return {"PAYLOAD_TYPES": " ".join(pts), "RTPMAPS": "\n".join(maps)}


def render_scenario(
    template: str | Path, dest: Path, values: Mapping[str, str], blocks: Iterable[str] = ()
) -> Path:
    """Render a scenario template into ``dest``.

    Args:
        template: File name in :data:`SCENARIO_DIR` or a path.
        dest: Output file.
        values: Placeholder values (``NAME`` for ``@@NAME@@``).
        blocks: Names of the optional sections to keep.

    Raises:
        KeyError: A placeholder has no value.
    """
    path = Path(template) if os.sep in str(template) else SCENARIO_DIR / str(template)
    text = path.read_text()
    keep = set(blocks)
    block = re.compile(r"<!--@@BEGIN (\w+)@@-->\n(.*?)<!--@@END \1@@-->\n", re.S)
    while block.search(text):  # blocks nest: repeat until none is left
        text = block.sub(lambda m: m.group(2) if m.group(1) in keep else "", text)

    def whole_line(m: re.Match[str]) -> str:
        return "".join(f"{m.group(1)}{line}\n" for line in values[m.group(2)].splitlines())

    text = re.sub(r"^([ \t]*)@@(\w+)@@[ \t]*\n", whole_line, text, flags=re.M)
    text = re.sub(r"@@(\w+)@@", lambda m: values[m.group(1)], text)
    dest.write_text(text)
    return dest


def uac_scenario(
    dest: Path,
    audio: Path,
    codec: str = "PCMU",
    *,
    offer: Sequence[str] | None = None,
    hold_s: float = 3.0,
    hangup: Hangup = "caller",
    bye_timeout_s: float = 30.0,
    dtmf_pcap: Path | None = None,
    dtmf_delay_s: float = 0.5,
    caller: str = "sipp",
    extra_headers: Sequence[str] = (),
    audio_loops: int = 1,
    linger_s: float = 0.0,
) -> Path:
    """Render ``uac.xml``: INVITE with SDP, ACK, ``rtp_stream`` audio, optional DTMF, BYE.

    Args:
        dest: Output file.
        audio: Raw payload file for ``codec`` (see ``Speech.raw_for``), streamed from the answer on.
        codec: ``PCMU``, ``PCMA`` or ``G722``: the payload type ``audio`` is sent with.
        offer: Codecs offered in the SDP, in order (default: ``codec`` only, + telephone-event).
        hold_s: ``hangup="caller"``: call time after the audio starts (after DTMF, if any).
        hangup: ``caller`` sends BYE after ``hold_s``; ``callee`` waits for the far end's BYE.
        bye_timeout_s: ``hangup="callee"``: the call fails if no BYE arrives in this time.
        dtmf_pcap: A ``dtmf_2833_*.pcap`` to replay (needs CAP_NET_RAW: :func:`dtmf_unavailable`).
        dtmf_delay_s: Pause between the start of the audio and the DTMF.
        caller: User part of From/Contact.
        extra_headers: Full header lines added to the INVITE (e.g. ``"X-Customer-Id: 42"``).
        audio_loops: How many times ``rtp_stream`` plays the file (-1: forever).
        linger_s: Keep the finished call around this long (absorbs late retransmissions).
    """
    blocks = {"answered", "send_bye" if hangup == "caller" else "recv_bye"}
    if dtmf_pcap is not None:
        blocks.add("dtmf")
    values = {
        "CALLER": caller,
        "EXTRA_HEADERS": "\n".join(extra_headers),
        "AUDIO_FILE": str(audio),
        "AUDIO_LOOPS": str(audio_loops),
        "AUDIO_PT": str(CODECS[codec.upper()].payload_type),
        "DTMF_PCAP": str(dtmf_pcap or ""),
        "DTMF_DELAY_MS": _ms(dtmf_delay_s),
        "HOLD_MS": _ms(hold_s),
        "BYE_TIMEOUT_MS": _ms(bye_timeout_s),
        "LINGER_MS": _ms(linger_s),
        **sdp_media(offer or [codec]),
    }
    return render_scenario("uac.xml", dest, values, blocks)


def reject_scenario(
    dest: Path,
    status: int,
    codec: str = "PCMU",
    *,
    caller: str = "sipp",
    extra_headers: Sequence[str] = (),
    linger_s: float = 0.0,
) -> Path:
    """Render ``uac.xml`` for a call that must be refused with ``status`` (then ACKed).

    Any other final status fails the call (SIPp: unexpected message), so the result's
    ``successful`` counts the calls refused exactly as expected.
    """
    values = {
        "CALLER": caller,
        "EXTRA_HEADERS": "\n".join(extra_headers),
        "REJECT_STATUS": str(status),
        "LINGER_MS": _ms(linger_s),
        **sdp_media([codec]),
    }
    return render_scenario("uac.xml", dest, values, {"rejected"})


def uas_scenario(
    dest: Path,
    codecs: Sequence[str] = ("PCMU",),
    *,
    hangup: Hangup = "caller",
    hold_s: float = 3.0,
    bye_timeout_s: float = 60.0,
    refer_to: str | None = None,
    callee: str = "uas",
    linger_s: float = 0.0,
) -> Path:
    """Render ``uas.xml``: 180, 200 with SDP answering ``codecs``, copies Record-Route.

    Args:
        dest: Output file.
        codecs: Payload types put in the SDP answer, in order (keep it to the one the caller sends).
        hangup: ``caller`` waits for the caller's BYE; ``callee`` sends BYE after ``hold_s``.
        hold_s: ``hangup="callee"``: seconds from the ACK to our BYE (or to the REFER).
        bye_timeout_s: How long to wait for the caller's BYE (or for its final NOTIFY).
        refer_to: Blind-transfer the caller to this URI ``hold_s`` after the ACK (REFER, 202,
            two NOTIFYs answered 200), then hang up at once (implies ``hangup="callee"``).
        callee: User part of our Contact.
        linger_s: Keep the finished call around this long.
    """
    values = {
        "CALLEE": callee,
        "HOLD_MS": _ms(hold_s),
        "BYE_PAUSE_MS": "0" if refer_to else _ms(hold_s),
        "BYE_CSEQ": "103" if refer_to else "101",  # the REFER used 102
        "BYE_TIMEOUT_MS": _ms(bye_timeout_s),
        "REFER_TO": refer_to or "",
        "LINGER_MS": _ms(linger_s),
        **sdp_media(codecs),
    }
    if refer_to:
        blocks = {"dialog_vars", "refer", "send_bye"}
    elif hangup == "callee":
        blocks = {"dialog_vars", "send_bye"}
    else:
        blocks = {"recv_bye"}
    return render_scenario("uas.xml", dest, values, blocks)


def dtmf_pcap(digit: str) -> Path:
    """SIPp's RFC 4733 pcap for one digit (``0``-``9``, ``*``, ``#``)."""
    name = {"*": "star", "#": "pound"}.get(digit, digit)
    return DTMF_PCAP_DIR / f"dtmf_2833_{name}.pcap"


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))
