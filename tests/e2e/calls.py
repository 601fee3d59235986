"""Caller audio and received-audio checks shared by the dialplan and tool end-to-end tests.

The caller "speaks" a tone burst followed by silence: the emulators' energy VAD ends the turn
on the silence, and a tone is easy to tell from the agents' own tones (:func:`dominant_hz`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sipbot.media.codecs import make_encoder
from tests.e2e.peers import audio
from tests.e2e.peers.capture import RtpPacket, received_audio, select

CALLER_HZ = 300.0
RATE = 8000
SILENT_DBFS = -50.0


def turns_pcm(turns: int = 1, *, tone_ms: int = 600, gap_ms: int = 1200) -> np.ndarray:
    """8 kHz PCM of ``turns`` caller turns: a tone burst, then ``gap_ms`` of silence, each."""
    pieces: list[np.ndarray] = [np.zeros(0, dtype=np.int16)]
    for _ in range(turns):
        pieces.append(audio.tone(CALLER_HZ, tone_ms / 1000, RATE, amplitude=0.3))
        pieces.append(np.zeros(RATE * gap_ms // 1000, dtype=np.int16))
    return np.concatenate(pieces).astype(np.int16)


def caller_turns(path: Path, turns: int = 1, *, tail_ms: int = 2000, **kwargs: int) -> Path:
    """Raw μ-law for SIPp's ``rtp_stream``: :func:`turns_pcm` and ``tail_ms`` more silence (so
    RTP keeps flowing). Returns ``path``."""
    tail = np.zeros(RATE * tail_ms // 1000, dtype=np.int16)
    pcm = np.concatenate([turns_pcm(turns, **kwargs), tail])
    path.write_bytes(make_encoder("PCMU").encode(pcm.tobytes()))
    return path


def caller_wav(path: Path, turns: int = 1, **kwargs: int) -> Path:
    """:func:`turns_pcm` as an 8 kHz WAV (a baresip source; baresip pads it with silence)."""
    return audio.write_wav(path, turns_pcm(turns, **kwargs), RATE)


def silence_ulaw(path: Path, seconds: float) -> Path:
    """Raw μ-law silence (a caller that listens)."""
    pcm = np.zeros(round(RATE * seconds), dtype=np.int16)
    path.write_bytes(make_encoder("PCMU").encode(pcm.tobytes()))
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency among the audible 20 ms frames of ``samples`` (0.0 if none)."""
    frame = rate // 50
    frames = [
        samples[i : i + frame]
        for i in range(0, len(samples) - frame + 1, frame)
        if audio.rms_dbfs(samples[i : i + frame]) > SILENT_DBFS
    ]
    if not frames:
        return 0.0
    loud = np.concatenate(frames).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(loud * np.hanning(len(loud))))
    return float(np.fft.rfftfreq(len(loud), 1 / rate)[int(np.argmax(spectrum))])


def audio_to(packets: Sequence[RtpPacket], media_port: int) -> tuple[np.ndarray, int]:
    """Decoded audio of the packets sent to ``media_port`` (sipbot → the caller)."""
    return received_audio(select(packets, dst_port=media_port, audio_only=True))


def audible(packets: Sequence[RtpPacket], media_port: int) -> list[RtpPacket]:
    """The non-silent audio packets sent to ``media_port``, in capture order."""
    out = []
    for p in sorted(select(packets, dst_port=media_port, audio_only=True), key=lambda p: p.time):
        pcm, _ = audio.decode_payloads(p.payload_type, [p.payload])
        if audio.rms_dbfs(pcm) > SILENT_DBFS:
            out.append(p)
    return out


# --------------------------------------------------------------------------- SIPp transferee

TRANSFEREE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- A caller that gets blind-transferred: INVITE, audio (+ optional DTMF), then it must receive
     a REFER: 202, NOTIFY "SIP/2.0 200 OK" (the target answered, subscription terminated), and
     the transferor's BYE. Rendered by tests/e2e/calls.py. -->
<scenario name="sipbot-transferee">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=sipp
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16
      a=ptime:20
      a=sendrecv

    ]]>
  </send>

  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="callee_to"/>
    </action>
  </recv>

  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [$callee_to]
      Call-ID: [call_id]
      CSeq: 1 ACK
      [routes]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <nop>
    <action>
      <exec rtp_stream="@@AUDIO@@,1,0"/>
    </action>
  </nop>
@@DTMF@@
  <recv request="REFER" timeout="@@REFER_TIMEOUT_MS@@"/>

  <send>
    <![CDATA[

      SIP/2.0 @@REFER_STATUS@@
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>

@@NOTIFY@@
@@END@@
  <pause milliseconds="200"/>
</scenario>
"""

# after the REFER's 2xx: the NOTIFY of the transfer's outcome, and its 200
NOTIFY_XML = """  <send retrans="500">
    <![CDATA[

      NOTIFY [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [$callee_to]
      Call-ID: [call_id]
      CSeq: 2 NOTIFY
      [routes]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Event: refer
      Subscription-State: terminated;reason=noresource
      Content-Type: message/sipfrag;version=2.0
      Content-Length: [len]

      SIP/2.0 @@NOTIFY_STATUS@@
    ]]>
  </send>

  <recv response="200"/>
"""

# after a 2xx NOTIFY: the transferor's BYE
TRANSFEROR_BYE_XML = """
  <recv request="BYE" timeout="10000"/>

  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
"""

# after a failed transfer: the call goes on (a BYE from sipbot would be unexpected: the call
# fails), then the caller hangs up
CALLER_BYE_XML = """
  <pause milliseconds="@@STAY_MS@@"/>

  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [$callee_to]
      Call-ID: [call_id]
      CSeq: 3 BYE
      [routes]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="200"/>
"""

DTMF_XML = """  <pause milliseconds="@@DTMF_DELAY_MS@@"/>
  <nop>
    <action>
      <exec play_pcap_audio="@@DTMF_PCAP@@"/>
    </action>
  </nop>
"""


def transferee_scenario(
    dest: Path,
    audio_file: Path,
    *,
    dtmf_pcap: Path | None = None,
    dtmf_delay_s: float = 0.5,
    refer_timeout_s: float = 15.0,
    notify: str = "200 OK",
    stay_s: float = 2.0,
    refer_status: str = "202 Accepted",
) -> Path:
    """Render the SIPp transferee UAC (see :data:`TRANSFEREE_XML`) into ``dest``.

    The call succeeds only if sipbot sends a REFER (after the optional DTMF digit), accepts the
    NOTIFY (its sipfrag status line: ``notify``) and then — for a 2xx — sends BYE, or — for any
    other status — does not: the caller stays ``stay_s`` and hangs up itself. The REFER's
    headers are in the SIPp message log. A ``refer_status`` other than 2xx refuses the REFER
    (no NOTIFY); then too sipbot must not send BYE.
    """
    dtmf = ""
    if dtmf_pcap is not None:
        dtmf = DTMF_XML.replace("@@DTMF_PCAP@@", str(dtmf_pcap))
        dtmf = dtmf.replace("@@DTMF_DELAY_MS@@", str(round(dtmf_delay_s * 1000)))
    text = TRANSFEREE_XML.replace("@@DTMF@@\n", dtmf).replace("@@AUDIO@@", str(audio_file))
    text = text.replace("@@REFER_TIMEOUT_MS@@", str(round(refer_timeout_s * 1000)))
    accepted = refer_status.startswith("2")
    text = text.replace("@@REFER_STATUS@@", refer_status)
    text = text.replace("@@NOTIFY@@\n", NOTIFY_XML if accepted else "")
    end = TRANSFEROR_BYE_XML if accepted and notify.startswith("2") else CALLER_BYE_XML
    text = text.replace("@@END@@\n", end.replace("@@STAY_MS@@", str(round(stay_s * 1000))))
    text = text.replace("@@NOTIFY_STATUS@@", notify)
    dest.write_text(text)
    return dest


def sip_request_times(pcap: Path, port: int, method: str) -> list[float]:
    """Capture times (epoch s) of the SIP ``method`` requests to or from UDP ``port`` in
    ``pcap`` (decoded by tshark)."""
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-d",
            f"udp.port=={port},sip",
            "-Y",
            f'sip.Method == "{method}"',
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [float(line) for line in out.stdout.split()]
