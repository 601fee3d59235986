"""``sipbot call``: a small SIP caller on sipbot's own stack, to test a deployment.

It places one call, sends a WAV file as the caller's voice, records what the far end sends,
and hangs up after ``--duration`` seconds (or when the far end hangs up). Exit code 0 when the
call was answered and ended normally, 1 otherwise (the reason is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from sipbot import prompts
from sipbot.consult import start_answered
from sipbot.domain import AudioFormat
from sipbot.errors import SipbotError
from sipbot.media.session import MediaEngine, MediaSettings
from sipbot.sip.address import parse_uri
from sipbot.sip.sdp import build_offer
from sipbot.sip.ua import ServerCall, SipSettings, UserAgent

CODEC_NAMES = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722"}
DTMF_DELAY_S = 1.0
# the caller's RTP ports: a range apart from the server's default (20000-29999)
CALLER_RTP_PORTS = (30_000, 30_999)


async def place_call(
    uri: str,
    *,
    play: str | None = None,
    record: str | None = None,
    duration_s: float = 10.0,
    codec: str = "pcmu",
    transport: str = "udp",
    bind: str = "127.0.0.1",
    from_user: str = "sipbot",
    dtmf: str | None = None,
) -> int:
    """Place one call; see the module docstring. Returns the exit code."""
    codec_name = CODEC_NAMES[codec]
    rate = 16_000 if codec_name == "G722" else 8_000
    pcm_format = AudioFormat("pcm16", rate)
    try:
        audio = prompts.load_wav(play, rate) if play else b""
        target = parse_uri(uri)
    except SipbotError as exc:
        print(f"sipbot call: {exc}", file=sys.stderr)
        return 2
    ua = UserAgent(SipSettings(listen=((transport, bind, 0),)), _refuse)
    engine = MediaEngine(
        MediaSettings(rtp_host=bind, port_min=CALLER_RTP_PORTS[0], port_max=CALLER_RTP_PORTS[1])
    )
    received = bytearray()
    hung_up = asyncio.Event()
    await ua.start()
    try:
        media = await engine.open_session(
            on_audio=received.extend, on_dtmf=_print_dtmf, on_timeout=hung_up.set
        )
        offer = build_offer(
            [codec_name],
            address=ua.advertised_host(target.host),
            port=media.local_port,
            session_id=1,
            session_version=1,
        )
        try:
            call = await ua.call(uri, bytes(offer), from_user=from_user, transport=transport)
        except SipbotError as exc:
            print(f"sipbot call: {uri}: {exc}", file=sys.stderr)
            return 1
        codec_used = start_answered(media, offer, call.remote_sdp, pcm_format)
        if audio:
            media.play(audio, "play")
        print(f"sipbot call: answered, {codec_used}", file=sys.stderr)
        if dtmf:
            asyncio.get_running_loop().call_later(DTMF_DELAY_S, media.send_dtmf, dtmf)
        hung_up.clear()
        call.terminated.add_done_callback(lambda _: hung_up.set())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hung_up.wait(), duration_s)
        reason = call.terminated.result() if call.terminated.done() else "duration"
        if not call.terminated.done():
            await call.bye()
        stats = media.stats
        await media.close()
        print(
            f"sipbot call: ended ({reason}); RTP in {stats.packets_in}, out {stats.packets_out}",
            file=sys.stderr,
        )
    finally:
        await engine.close()
        await ua.close(2.0)
    if record:
        prompts.write_wav(record, bytes(received), rate)
    return 0


def _refuse(call: ServerCall) -> None:
    call.reject(486, "Busy Here")  # the test caller does not take calls


def _print_dtmf(digit: str) -> None:
    with contextlib.suppress(OSError):
        print(f"sipbot call: DTMF {digit}", file=sys.stderr)
