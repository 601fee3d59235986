"""SIPp calls into a ``sipbot run`` whose agents use an emulated provider, and what they heard.

:class:`Rigs` (behind each provider test module's ``rig`` fixture) starts a
:class:`RecordedEmulator`, writes a config whose agents point at it and starts
the server with the ``sipbot_server`` fixture. :meth:`Rig.dial` places a SIPp call that sends
scripted caller audio and captures the RTP at its media port; :meth:`Rig.finish` returns a
:class:`Heard`. The rest reads captures: loud runs of agent audio, PCM in arrival order, tones.

:class:`RecordedEmulator` is the shared :class:`~tests.e2e.emulated.EmulatorThread` plus a
record of every frame with the wall-clock time it went in or out (comparable with a capture).
"""

from __future__ import annotations

import importlib
import io
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sipbot.emulators.common import EmulatedSession
from sipbot.emulators.script import EmulatorScript
from tests.e2e.conftest import SipbotServer
from tests.e2e.emulated import EmulatorThread, Kind, server_env, write_dialplan
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.audio import decode_payloads
from tests.e2e.peers.capture import RtpPacket, select

FRAME_MS = 20
TURN = {"silence_ms": 500, "prefix_ms": 300}  # the agents' turn detection (the emulator's VAD)
SIPP_SLACK_S = 20.0  # SIPp's own timeout beyond the call's planned length
Parts = Sequence[tuple[float, "audio.Pcm | None"]]


# --------------------------------------------------------------------------- the emulator


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame the emulator received (``in``) or sent (``out``), audio summarised."""

    time: float  # epoch seconds, when the emulator recorded it
    session: int
    direction: str  # "in", "out" or "event"
    message: dict[str, Any]


class FrameLog(io.StringIO):
    """Stands in for the emulator's JSONL record file and timestamps every line."""

    def __init__(self) -> None:
        super().__init__()
        self._frames: list[Frame] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        now = time.time()
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                frame = Frame(now, record["session"], record["direction"], record["message"])
                with self._lock:
                    self._frames.append(frame)
        return len(text)

    def frames(self) -> list[Frame]:
        with self._lock:
            return list(self._frames)


class RecordedEmulator(EmulatorThread):
    """An :class:`EmulatorThread` that keeps every frame with its time (see :meth:`frames`)."""

    def __init__(self, kind: Kind, script: EmulatorScript) -> None:
        self._log = FrameLog()
        super().__init__(kind, script, record=self._log)

    @property
    def sessions(self) -> list[EmulatedSession]:
        """The sessions so far (one per connection)."""
        return self._call(lambda: list(self.emulator.sessions))

    def set_script(self, script: EmulatorScript) -> None:
        """Give ``script`` to new sessions and to the open ones (from their next decision)."""

        def apply() -> None:
            self.emulator.script = script
            for session in self.emulator.sessions:
                session.script = script

        self._call(apply)

    def frames(self, session: int | None = None, direction: str | None = None) -> list[Frame]:
        """Frames so far (optionally one session's, one direction's)."""
        return [
            f
            for f in self._log.frames()
            if (session is None or f.session == session)
            and (direction is None or f.direction == direction)
        ]


def message_type(frame: Frame) -> str:
    """A frame's kind: OpenAI ``type``, or Gemini's top-level key (``serverContent``, ...)."""
    message = frame.message
    if "type" in message:
        return str(message["type"])
    return next(iter(message), "")


# --------------------------------------------------------------------------- calls


@dataclass
class Heard:
    """One finished SIPp call: what it sent and what it heard (RTP at its media port)."""

    result: sipp.SippResult
    media_port: int
    packets: list[RtpPacket]  # both directions

    @property
    def inbound(self) -> list[RtpPacket]:
        """The agent's audio packets, in arrival order."""
        return select(self.packets, dst_port=self.media_port, audio_only=True)

    @property
    def start(self) -> float:
        """When the caller sent its first RTP packet (epoch seconds)."""
        return min(p.time for p in select(self.packets, src_port=self.media_port))

    def pcm(self) -> tuple[audio.Pcm, int]:
        """Everything the caller heard (see :func:`pcm_of`)."""
        return pcm_of(self.inbound)


@dataclass
class Rig:
    """An emulator, a running sipbot whose agents use it, and the SIPp calls made to it."""

    emu: RecordedEmulator
    server: SipbotServer
    tmp: Path
    callers: list[sipp.Sipp] = field(default_factory=list)

    def dial(
        self,
        did: str,
        parts: Parts,
        *,
        hold_s: float,
        hangup: sipp.Hangup = "caller",
        codec: str = "PCMU",
    ) -> sipp.Sipp:
        """Start a SIPp call to agent ``did`` sending ``parts`` (see :func:`caller_audio`).

        ``hangup="caller"``: BYE ``hold_s`` after the audio starts (a BYE from sipbot before
        that fails the call); ``"callee"``: wait up to ``hold_s`` for sipbot's BYE.
        """
        name = f"{did}-{len(self.callers)}"
        raw, _ = caller_audio(self.tmp / f"{name}.raw", parts, codec=codec)
        scenario = sipp.uac_scenario(
            self.tmp / f"{name}.xml", raw, codec, hold_s=hold_s, hangup=hangup, bye_timeout_s=hold_s
        )
        caller = sipp.start_uac(
            self.server.address,
            scenario,
            self.tmp,
            service=did,
            capture=True,
            timeout_s=hold_s + SIPP_SLACK_S,
            name=name,
        )
        self.callers.append(caller)
        return caller

    def finish(self, caller: sipp.Sipp) -> Heard:
        """Wait for a call to end; it must have succeeded."""
        result = caller.wait(SIPP_SLACK_S + 60.0)
        assert result.ok, result.describe() + "\n" + self.server.log()[-4000:]
        assert result.capture is not None
        return Heard(result, caller.media_port, result.capture.packets())

    def call_ids(self) -> dict[str, str]:
        """DID → Call-ID of the calls the server routed."""
        found = re.findall(r"call (\S+) from \S+ to (\S+) via", self.server.log())
        return {did: call_id for call_id, did in found}

    def call_log(self, did: str) -> list[str]:
        """The server's log lines about the call to ``did``."""
        call_id = self.call_ids()[did]
        return [line for line in self.server.log().splitlines() if f"call {call_id}" in line]

    def cdr(self, did: str) -> str:
        """The CDR log line of the call to ``did``."""
        call_id = self.call_ids()[did]
        lines = self.server.log().splitlines()
        line = next((ln for ln in lines if "sipbot.cdr" in ln and call_id in ln), None)
        assert line is not None, f"no CDR for {call_id}:\n{self.server.log()[-3000:]}"
        return line


class Rigs:
    """Makes rigs for one test and stops their emulators afterwards (a context manager).

    Args:
        start_server: the ``sipbot_server`` fixture.
        tmp: the test's ``peers_tmp`` (config, logs, captures).
    """

    def __init__(self, start_server: Callable[..., SipbotServer], tmp: Path) -> None:
        self._start_server = start_server
        self._tmp = tmp
        self._emulators: list[RecordedEmulator] = []

    def __call__(
        self,
        kind: Kind,
        script: EmulatorScript,
        agents: Mapping[str, Mapping[str, Any]] | None = None,
        tools: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Rig:
        """An emulator running ``script`` (accepting only the e2e key) and a server using it.

        Every agent (default: one, ``bot``) points at the emulator and answers the DID of its
        name; ``env`` adds environment variables for the server (e.g. another key).
        """
        emu = self.emulator(kind, script)
        specs = agents if agents is not None else {"bot": {}}
        config: dict[str, Any] = {
            # log_transcripts: the assertions read what each side said from the log
            "server": {"media": {"codecs": ["PCMU", "PCMA", "G722"]}, "log_transcripts": True},
            "agents": {name: emu.agent(**{"turn": TURN, **spec}) for name, spec in specs.items()},
            "routes": [{"name": name, "match": {"did": name}, "answer": name} for name in specs],
        }
        if tools:
            config["tools"] = dict(tools)
        write_dialplan(self._tmp / "sipbot.yaml", config)
        path = str(self._tmp / "sipbot.yaml")
        server = self._start_server("-c", path, env={**server_env(), **(env or {})})
        return Rig(emu, server, self._tmp)

    def emulator(self, kind: Kind, script: EmulatorScript) -> RecordedEmulator:
        """A started emulator, stopped with the test's others (e.g. an agent's fallback)."""
        emu = RecordedEmulator(kind, script)
        self._emulators.append(emu.__enter__())
        return emu

    def __enter__(self) -> Rigs:
        return self

    def __exit__(self, *exc: object) -> None:
        for emu in self._emulators:
            emu.__exit__(None, None, None)


# --------------------------------------------------------------------------- emulator frames


def out_frames(emu: RecordedEmulator, kind: str, session: int | None = None) -> list[Frame]:
    """Frames of type ``kind`` the emulator sent."""
    return [f for f in emu.frames(session, "out") if message_type(f) == kind]


def in_frames(emu: RecordedEmulator, kind: str, session: int | None = None) -> list[Frame]:
    """Frames of type ``kind`` the emulator received."""
    return [f for f in emu.frames(session, "in") if message_type(f) == kind]


# --------------------------------------------------------------------------- audio


def caller_audio(dest: Path, parts: Parts, codec: str = "PCMU") -> tuple[Path, audio.Pcm]:
    """Raw payload file (SIPp ``rtp_stream``) of consecutive ``(seconds, pcm)`` parts.

    ``pcm`` is at the codec's rate (8 kHz; 16 kHz for G.722), cut or padded with silence to
    ``seconds``; None is silence. Returns the file and the whole PCM.
    """
    rate = 16000 if codec == "G722" else 8000
    pieces = []
    for seconds, pcm in parts:
        piece = np.zeros(int(seconds * rate), dtype=np.int16)
        if pcm is not None:
            n = min(len(pcm), len(piece))
            piece[:n] = pcm[:n]
        pieces.append(piece)
    samples = np.concatenate(pieces)
    if codec == "PCMU":
        dest.write_bytes(encode_ulaw(samples))
    elif codec == "G722":
        dest.write_bytes(importlib.import_module("G722").G722(16000, 64000).encode(samples))
    else:
        raise ValueError(f"no encoder for {codec} here")
    return dest, samples


def encode_ulaw(samples: audio.Pcm) -> bytes:
    """int16 PCM → μ-law bytes (the inverse of ``audio.decode_ulaw``: the nearest code)."""
    table = audio.ULAW_TABLE.astype(np.int32)
    order = np.argsort(table)
    ordered = table[order]
    x = samples.astype(np.int32)
    index = np.clip(np.searchsorted(ordered, x), 1, len(ordered) - 1)
    nearest = np.where(x - ordered[index - 1] <= ordered[index] - x, index - 1, index)
    return bytes(order[nearest].astype(np.uint8).tobytes())


def pcm_of(packets: Sequence[RtpPacket]) -> tuple[audio.Pcm, int]:
    """The audio of one stream's packets, decoded in the order they came (and the rate in Hz).

    Packets are joined as sent rather than placed by RTP timestamp: when the whole machine
    stalls (2 shared cores), sipbot's sender skips the timestamps of the slots it missed, which
    shows as a 20 ms slip in a timestamp-placed recording although no audio was lost.
    """
    if not packets:
        return np.zeros(0, dtype=np.int16), 8000
    return decode_payloads(packets[0].payload_type, [p.payload for p in packets])


def loud(packet: RtpPacket, threshold_dbfs: float = -45.0) -> bool:
    """Whether a PCMU/PCMA packet carries audio (not silence)."""
    pcm, _ = decode_payloads(packet.payload_type, [packet.payload])
    return audio.rms_dbfs(pcm) > threshold_dbfs


def loud_runs(packets: Sequence[RtpPacket], max_gap: int = 3) -> list[list[RtpPacket]]:
    """Runs of loud PCMU/PCMA packets separated by more than ``max_gap`` quiet ones."""
    runs: list[list[RtpPacket]] = []
    quiet = max_gap + 1
    for packet in packets:
        if loud(packet):
            if quiet > max_gap:
                runs.append([])
            runs[-1].append(packet)
            quiet = 0
        else:
            quiet += 1
    return runs


def max_gap(packets: Sequence[RtpPacket], start: float, end: float) -> float:
    """The longest time between consecutive packets arriving within [start, end] (seconds)."""
    times = [p.time for p in packets if start <= p.time <= end]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def dominant_hz(pcm: audio.Pcm, rate: int) -> float:
    """Frequency of the strongest FFT bin."""
    samples = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)
