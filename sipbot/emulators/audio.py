"""Audio for the emulators: reply audio (tone or echo), G.711, and server-side turn detection.

Nothing here is on sipbot's real-time path: the emulators stand in for a cloud service, so whole
utterances are converted at once (``soxr`` through :func:`sipbot.prompts.convert_rate`).

:class:`TurnDetector` is sans-I/O: it takes caller audio as it arrives, in any chunk size, and
returns speech start / stop events whose times are counted from the audio itself.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

from sipbot.domain import FRAME_MS, AudioFormat
from sipbot.emulators.script import EmulatorScript
from sipbot.media.vad import EnergyVad
from sipbot.prompts import convert_rate

with warnings.catch_warnings():
    # audioop is deprecated in 3.11/3.12 (audioop-lts replaces it on 3.13+); G.711 is all we use.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

TONE_AMPLITUDE = 0.3  # of full scale: loud enough for any VAD, far from clipping
TONE_FADE_MS = 5  # raised-cosine ramps so a tone starts and ends without a click


@dataclass(frozen=True, slots=True)
class Utterance:
    """One caller turn's audio: PCM16 little-endian mono at ``rate_hz``."""

    pcm: bytes
    rate_hz: int

    @property
    def duration_ms(self) -> int:
        """Length in milliseconds."""
        return 1000 * (len(self.pcm) // 2) // self.rate_hz


def tone(hz: float, duration_ms: int, rate_hz: int) -> bytes:
    """A sine of ``hz`` lasting ``duration_ms`` as PCM16 at ``rate_hz``, with short fades."""
    count = rate_hz * duration_ms // 1000
    t = np.arange(count, dtype=np.float64) / rate_hz
    wave = np.sin(2.0 * math.pi * hz * t) * TONE_AMPLITUDE
    fade = min(count // 2, rate_hz * TONE_FADE_MS // 1000)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, fade))
        wave[:fade] *= ramp
        wave[count - fade :] *= ramp[::-1]
    return (wave * 32767.0).astype("<i2").tobytes()


def encode(pcm: bytes, fmt: AudioFormat) -> bytes:
    """PCM16 at ``fmt.rate_hz`` → ``fmt``'s encoding (identity for pcm16)."""
    if fmt.encoding == "pcmu":
        return audioop.lin2ulaw(pcm, 2)
    if fmt.encoding == "pcma":
        return audioop.lin2alaw(pcm, 2)
    return pcm


def decode(data: bytes, fmt: AudioFormat) -> bytes:
    """Audio in ``fmt`` → PCM16 at ``fmt.rate_hz`` (an odd trailing byte of PCM16 is dropped)."""
    if fmt.encoding == "pcmu":
        return audioop.ulaw2lin(data, 2)
    if fmt.encoding == "pcma":
        return audioop.alaw2lin(data, 2)
    return data[: len(data) & ~1]


def reply_audio(script: EmulatorScript, utterance: Utterance | None, fmt: AudioFormat) -> bytes:
    """The audio of one reply, in ``fmt``.

    ``"echo"`` returns the caller's utterance converted to ``fmt`` (a tone when there is no
    utterance to echo, e.g. for a greeting); ``"tone"`` a sine of ``script.tone_hz`` lasting
    ``script.reply_ms``.
    """
    if script.reply == "echo" and utterance is not None and utterance.pcm:
        pcm = convert_rate(utterance.pcm, utterance.rate_hz, fmt.rate_hz)
    else:
        pcm = tone(script.tone_hz, script.reply_ms, fmt.rate_hz)
    return encode(pcm, fmt)


# --------------------------------------------------------------------------- turn detection


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking; ``audio_start_ms`` counts from the first audio received."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The caller stopped speaking; ``utterance`` is the turn's audio (prefix included)."""

    audio_end_ms: int
    utterance: Utterance


TurnEvent = SpeechStarted | SpeechStopped


class TurnDetector:
    """Finds caller turns in a stream of PCM16 with :class:`EnergyVad` (sans-I/O).

    Audio is cut into 20 ms frames whatever the chunk sizes it arrives in. An utterance holds
    ``prefix_ms`` of audio before the speech onset (like the real services' prefix padding) and
    ends where the silence that ended it began.

    Args:
        rate_hz: sample rate of the PCM16 fed to :meth:`feed`.
        threshold_dbfs: VAD level threshold.
        silence_ms: silence that ends a turn.
        prefix_ms: audio kept before the start of speech.
    """

    def __init__(
        self, rate_hz: int, *, threshold_dbfs: float, silence_ms: int, prefix_ms: int = 300
    ) -> None:
        self.rate_hz = rate_hz
        self._vad = EnergyVad(rate_hz, threshold_dbfs=threshold_dbfs, hangover_ms=silence_ms)
        self._frame_bytes = 2 * rate_hz * FRAME_MS // 1000
        self._pending = bytearray()
        # Holds the prefix and the loud frames before the one that confirms the start.
        onset_frames = self._vad.start_ms // FRAME_MS
        self._prefix: deque[bytes] = deque(maxlen=max(1, prefix_ms // FRAME_MS + onset_frames - 1))
        self._speech = bytearray()
        self.position_ms = 0  # audio fed so far, in whole frames

    @property
    def speaking(self) -> bool:
        """Whether the caller is in the middle of a turn."""
        return self._vad.speaking

    def feed(self, pcm: bytes) -> list[TurnEvent]:
        """Take caller audio; return the turn events it completes, in order."""
        self._pending += pcm
        events: list[TurnEvent] = []
        size = self._frame_bytes
        while len(self._pending) >= size:
            frame = bytes(self._pending[:size])
            del self._pending[:size]
            event = self._frame(frame)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[TurnEvent]:
        """End of the audio stream: finish the current turn, if any."""
        if not self._vad.speaking:
            return []
        self._vad.reset()
        return [self._stopped(trailing_silence_ms=0)]

    def _frame(self, frame: bytes) -> TurnEvent | None:
        self.position_ms += FRAME_MS
        was_speaking = self._vad.speaking
        transition = self._vad.process(frame)
        if was_speaking or transition == "speech_start":
            self._speech += frame
        else:
            self._prefix.append(frame)
        if transition == "speech_start":
            # The loud frames that triggered the start are already in the prefix ring.
            prefix = b"".join(self._prefix)
            self._speech[:0] = prefix
            self._prefix.clear()
            start_ms = self.position_ms - len(self._speech) * 1000 // (2 * self.rate_hz)
            return SpeechStarted(max(0, start_ms))
        if transition == "speech_end":
            return self._stopped(trailing_silence_ms=self._vad.hangover_ms)
        return None

    def _stopped(self, *, trailing_silence_ms: int) -> SpeechStopped:
        cut = 2 * self.rate_hz * trailing_silence_ms // 1000
        speech = bytes(self._speech)
        if 0 < cut < len(speech):
            speech = speech[: len(speech) - cut]
        self._speech.clear()
        return SpeechStopped(self.position_ms, Utterance(speech, self.rate_hz))
