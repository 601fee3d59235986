"""A generated corpus of callee recordings for answering-machine detection, and its scoring.

Each recording is what a bot hears after an outbound call is answered: a person's short answer
("hello?") and then the silence of someone waiting, a voicemail greeting (some ending in a beep
of 1 kHz or another frequency, some without), or a silent line. Speech is espeak-ng in several
voices and speeds, at telephone levels, mostly at 8 kHz through a G.711 μ-law round trip, some
at 16 kHz, some with line noise. Nothing binary is committed: :func:`make_corpus` speaks the
texts into a directory once and reuses the files there (keyed by text, voice and speed).

:func:`evaluate` runs :class:`~sipbot.media.amd.AnsweringMachineDetection` over a recording in
20 ms frames, the way a call feeds it, and :func:`score` sums the results up.
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sipbot.media.amd import AmdResult, AmdVerdict, AnsweringMachineDetection, Beep
from tests.e2e.peers.audio import Pcm, decode_ulaw, read_wav, resample, tone

FRAME_MS = 20
TAIL_S = 4.0  # audio after the last speech or beep: the detector must decide within it

# (text, voice) of people answering; the last ones are long answers classic AMD gets wrong
HUMAN_TEXTS: tuple[tuple[str, str], ...] = (
    ("Hello?", "en-us"),
    ("Hello.", "en"),
    ("Yes?", "en-us+f3"),
    ("Hi.", "en-gb-scotland"),
    ("Yeah, hello?", "en-us+m3"),
    ("Hello, who is this?", "en-us+f2"),
    ("This is Mark.", "en"),
    ("Speaking.", "en-us"),
    ("Good morning.", "en-us+f4"),
    ("Hi there.", "en-029"),
    ("Hello, Anna speaking.", "en-us+f3"),
    ("Hey.", "en-us+m2"),
    ("Yes, hello.", "en"),
    ("Smith residence.", "en-gb-x-rp"),
    ("Hello, Paul here.", "en-us"),
    ("Yep?", "en-us+f1"),
    ("Good afternoon, Jones.", "en-gb"),
    ("Hello, this is Doctor Miller's office, how can I help you?", "en-us+f2"),
    ("Good morning, thank you for calling Acme, this is Linda speaking.", "en-us+f4"),
)
# (text, voice, beep Hz or None) of voicemail greetings
MACHINE_TEXTS: tuple[tuple[str, str, float | None], ...] = (
    (
        "Hi, you have reached John. I can't take your call right now. "
        "Please leave a message after the tone.",
        "en-us",
        1000.0,
    ),
    (
        "The person you are calling is not available. Please leave your message after the beep.",
        "en-us+f2",
        1000.0,
    ),
    (
        "Hello, this is Sarah. Sorry I missed you. Leave your name and number and I will call "
        "you back.",
        "en-us+f3",
        1000.0,
    ),
    (
        "You have reached the voicemail of extension two four five. Please leave a message.",
        "en",
        1000.0,
    ),
    (
        "Thank you for calling Acme Plumbing. Our office is closed. "
        "Please leave a message after the tone.",
        "en-gb",
        1000.0,
    ),
    ("Hey, it's Mike. Leave a message.", "en-us+m3", 1000.0),
    (
        "We are sorry, nobody is available to take your call. At the tone, please record "
        "your message. When you have finished, hang up.",
        "en-us+f4",
        1000.0,
    ),
    ("Hi, this is Tom and Lisa. We're not home. Leave a message!", "en-029", 1000.0),
    (
        "Please leave a message for Doctor Adams after the tone. For emergencies, "
        "call nine one one.",
        "en-gb-x-rp",
        1000.0,
    ),
    (
        "Your call has been forwarded to an automatic voice message system. "
        "Four five five, one two one two is not available.",
        "en-us",
        1000.0,
    ),
    (
        "Hello. You've reached the Garcia family. Leave us a message and we'll get back to you.",
        "en-us+f1",
        1000.0,
    ),
    ("This is Kate's phone. Leave a message.", "en-us+f3", 1000.0),
    (
        "The mailbox of Peter Brown. Please speak after the tone.",
        "en-gb-scotland",
        440.0,
    ),
    (
        "Sorry, I can't answer the phone right now. Please leave a message.",
        "en-us+m2",
        850.0,
    ),
    (
        "You have reached Mister Wilson. Leave a detailed message after the tone.",
        "en",
        1400.0,
    ),
    (
        "Welcome to the voice mailbox of the sales team. Please leave your message.",
        "en-us+f2",
        2000.0,
    ),
    (
        "The number you have dialled is not available. Please try again later.",
        "en-us",
        None,
    ),
    (
        "Hi, it's Dave. I'm on holiday until Monday. Send me a text instead.",
        "en-gb",
        None,
    ),
    (
        "Thank you for calling. Our office hours are nine to five, Monday to Friday.",
        "en-us+f4",
        None,
    ),
    (
        "You have reached the voicemail of Susan. She is not available.",
        "en-us+f1",
        None,
    ),
)
SPEEDS = (150, 165, 175, 185)  # espeak-ng words per minute


@dataclass(frozen=True, slots=True)
class Recording:
    """One callee recording and what the detector should say about it.

    Attributes:
        name: a short unique name.
        kind: human, machine or silence (what it is).
        expected: the right verdict (a silent line is unknown).
        pcm: mono int16 samples at ``rate`` Hz.
        beep_start_s, beep_end_s: the beep's position, or None.
    """

    name: str
    kind: str
    expected: AmdResult
    pcm: Pcm
    rate: int
    beep_start_s: float | None = None
    beep_end_s: float | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the detector said about one recording."""

    recording: Recording
    verdict: AmdVerdict | None
    beep: Beep | None
    greeting_end_ms: int | None
    cpu_s: float

    @property
    def result(self) -> AmdResult:
        return self.verdict.result if self.verdict is not None else "unknown"


def speak(directory: Path, text: str, voice: str, speed: int) -> tuple[Pcm, int]:
    """espeak-ng speech (cached in ``directory`` by text, voice and speed)."""
    key = hashlib.sha256(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    path = directory / f"speech-{key}.wav"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(partial), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        partial.rename(path)
    return read_wav(path)


def _at_level(samples: Pcm, rms_dbfs: float) -> np.ndarray:
    x = samples.astype(np.float64)
    loud = x[np.abs(x) > 0.05 * np.max(np.abs(x))] if x.size else x
    rms = float(np.sqrt(np.mean(loud * loud))) if loud.size else 0.0
    return x * (32768 * 10 ** (rms_dbfs / 20) / rms) if rms > 0 else x


def _silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate))


def _telephone(x: np.ndarray, rate: int, noise_dbfs: float | None, seed: int) -> Pcm:
    """Add line noise, then (at 8 kHz) a G.711 μ-law round trip."""
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        x = x + rng.standard_normal(x.size) * 32768 * 10 ** (noise_dbfs / 20)
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    if rate == 8000:
        pcm = decode_ulaw(_encode_ulaw(pcm))
    return pcm


def _encode_ulaw(pcm: Pcm) -> bytes:
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    encoded: bytes = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()
    return encoded


def make_corpus(directory: Path) -> list[Recording]:
    """The corpus (speech cached in ``directory``): 19 people, 20 machines, 4 silent lines."""
    out: list[Recording] = []
    index = 0
    for text, voice in HUMAN_TEXTS:
        rate = 16000 if index % 4 == 3 else 8000
        speed = SPEEDS[index % len(SPEEDS)]
        speech, speech_rate = speak(directory, text, voice, speed)
        voice_pcm = _at_level(resample(speech, speech_rate, rate), -26 + 8 * ((index * 7) % 5) / 4)
        before = 0.2 + 0.35 * (index % 5)
        parts = [_silence(before, rate), voice_pcm]
        if index % 6 == 5:  # "hello?" ... "hello?"
            parts += [_silence(1.2, rate), voice_pcm]
        parts.append(_silence(TAIL_S, rate))
        noise = (-55.0, None, -48.0)[index % 3]
        pcm = _telephone(np.concatenate(parts), rate, noise, index)
        out.append(Recording(f"human-{index:02d}", "human", "human", pcm, rate, text=text))
        index += 1
    for text, voice, beep_hz in MACHINE_TEXTS:
        rate = 16000 if index % 4 == 3 else 8000
        speed = SPEEDS[index % len(SPEEDS)]
        speech, speech_rate = speak(directory, text, voice, speed)
        voice_pcm = _at_level(resample(speech, speech_rate, rate), -24 + 6 * (index % 3) / 2)
        before = 0.1 + 0.25 * (index % 4)
        parts = [_silence(before, rate), voice_pcm]
        beep_start = beep_end = None
        if beep_hz is not None:
            gap = 0.3 + 0.2 * (index % 3)
            beep_s = (0.25, 0.5, 1.0)[index % 3]
            beep_start = (before * rate + voice_pcm.size) / rate + gap
            beep_end = beep_start + beep_s
            beep = tone(beep_hz, beep_s, rate, amplitude=0.2).astype(np.float64)
            parts += [_silence(gap, rate), beep]
        parts.append(_silence(TAIL_S, rate))
        noise = (None, -52.0, -58.0)[index % 3]
        pcm = _telephone(np.concatenate(parts), rate, noise, index)
        name = f"machine-{index:02d}"
        out.append(
            Recording(name, "machine", "machine", pcm, rate, beep_start, beep_end, text=text)
        )
        index += 1
    for seconds, noise in ((6.0, None), (6.0, -60.0), (6.0, -50.0), (6.0, -45.0)):
        rate = 8000
        pcm = _telephone(_silence(seconds, rate), rate, noise, index)
        out.append(Recording(f"silence-{index:02d}", "silence", "unknown", pcm, rate))
        index += 1
    return out


def evaluate(recording: Recording, *, max_wait_s: float = 5.0) -> Outcome:
    """Feed ``recording`` to a fresh detector in 20 ms frames (``now`` = audio time)."""
    rate = recording.rate
    step = rate * FRAME_MS // 1000
    data = recording.pcm.astype("<i2").tobytes()
    frames = [data[2 * i : 2 * (i + step)] for i in range(0, recording.pcm.size - step + 1, step)]
    detector = AnsweringMachineDetection(rate, max_wait_s=max_wait_s)
    verdict = beep = None
    greeting_end = None
    started = time.process_time()
    for index, frame in enumerate(frames):
        for event in detector.feed(frame, index * FRAME_MS / 1000):
            if isinstance(event, AmdVerdict):
                verdict = event
            elif isinstance(event, Beep):
                beep = event
            else:
                greeting_end = event.after_ms
    cpu = time.process_time() - started
    return Outcome(recording, verdict, beep, greeting_end, cpu)


@dataclass(frozen=True, slots=True)
class Score:
    """The corpus's figures."""

    total: int
    correct: int
    humans: int
    false_machine: int  # humans classified machine
    machines: int
    machines_found: int
    decision_ms: tuple[int, ...]
    beeps: int  # recordings with a beep
    beeps_found: int  # ... found, within BEEP_SLACK_MS of the beep's end
    beep_delay_ms: tuple[int, ...]  # detection after the beep's true end
    false_beeps: int  # beeps reported where there was none
    cpu_s: float
    audio_s: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def false_machine_rate(self) -> float:
        return self.false_machine / self.humans

    def percentile_ms(self, q: float) -> int:
        ordered = sorted(self.decision_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def median_ms(self) -> int:
        return round(statistics.median(self.decision_ms))


BEEP_SLACK_MS = 200  # a beep reported this close to its true end counts as found


def score(outcomes: Sequence[Outcome]) -> Score:
    """Sum up the outcomes (decision times only for recordings that got a verdict)."""
    humans = [o for o in outcomes if o.recording.kind == "human"]
    machines = [o for o in outcomes if o.recording.kind == "machine"]
    with_beep = [o for o in outcomes if o.recording.beep_end_s is not None]
    found = []
    for o in with_beep:
        end_s = o.recording.beep_end_s
        assert end_s is not None
        if o.beep is not None and abs(o.beep.end_ms - end_s * 1000) <= BEEP_SLACK_MS:
            found.append(round(o.beep.end_ms - end_s * 1000) + FRAME_MS)  # reported a frame on
    return Score(
        total=len(outcomes),
        correct=sum(o.result == o.recording.expected for o in outcomes),
        humans=len(humans),
        false_machine=sum(o.result == "machine" for o in humans),
        machines=len(machines),
        machines_found=sum(o.result == "machine" for o in machines),
        decision_ms=tuple(o.verdict.after_ms for o in outcomes if o.verdict is not None),
        beeps=len(with_beep),
        beeps_found=len(found),
        beep_delay_ms=tuple(found),
        false_beeps=sum(o.beep is not None and o.recording.beep_end_s is None for o in outcomes),
        cpu_s=sum(o.cpu_s for o in outcomes),
        audio_s=sum(o.recording.pcm.size / o.recording.rate for o in outcomes),
    )
