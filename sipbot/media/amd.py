"""Answering-machine detection on the callee's audio (sans-I/O, stateful per call, no clock).

:class:`MachineDetector` decides *human*, *machine* or *unknown* the way classic AMD does
(Asterisk's ``app_amd`` and the carriers' detectors): it measures the initial silence, the
length of the greeting, the number of word-like segments in it and the silence after it.
:class:`BeepDetector` finds the voicemail beep: a single steady tone between ``BEEP_MIN_HZ`` and
``BEEP_MAX_HZ``. :class:`AnsweringMachineDetection` runs both over one call's frames and reports
each finding once.

Rules:

* Rule 1: time is counted from the audio itself (samples since the callee's first frame), never
  from a clock; ``now`` only stamps the events. Frames of any length and 8 or 16 kHz work.
* Rule 2: a frame is *voiced* when its level is above ``max(VOICE_MIN_DBFS, noise floor +
  VOICE_MARGIN_DB)``; the noise floor follows the quietest recent audio (steady line noise is
  not a word).
* Rule 3 (the verdict, first that holds): the initial silence reaches ``INITIAL_SILENCE_MS`` →
  unknown; the greeting has ``MAX_WORDS`` words, or is still voiced ``MAX_GREETING_MS`` after
  its first word began (pauses included) → machine; ``AFTER_GREETING_SILENCE_MS`` of silence
  after a word → human; ``max_wait_s`` of audio → unknown. So the verdict comes at most
  ``max_wait_s`` after the callee's first audio, and exactly once.
* Rule 4: a beep is at least ``BEEP_MIN_MS`` of frames whose power is ``BEEP_PURITY`` or more in
  one frequency of the bank (400-2100 Hz), within ``BEEP_FREQ_TOLERANCE_HZ`` of where it
  started; it is reported when the tone stops (the moment to start speaking), or once it has
  lasted ``BEEP_MAX_MS``.
* Rule 5: after a machine verdict, ``GREETING_END_SILENCE_MS`` of silence after speech is the
  end of a greeting without a beep, reported once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

AmdResult = Literal["human", "machine", "unknown"]

# --- the classifier (Rule 3); defaults near Asterisk's amd.conf, tuned on bench/bench_amd.py
INITIAL_SILENCE_MS = 2500  # nobody spoke this long after answering: a silent line, undecidable
MAX_GREETING_MS = 2000  # people say "hello?" and wait; machines keep talking past this
MAX_WORDS = 5  # this many word-like segments without a pause: a recorded greeting
AFTER_GREETING_SILENCE_MS = 800  # a pause this long after speaking: a person waiting for us
MIN_WORD_MS = 100  # voiced audio shorter than this is a click or a breath, not a word
BETWEEN_WORDS_SILENCE_MS = 50  # unvoiced audio this long separates two words
DEFAULT_MAX_WAIT_S = 5.0  # the verdict comes at most this long after the first audio

# --- voicing (Rule 2)
VOICE_MIN_DBFS = -42.0  # nothing quieter than this is speech
VOICE_MARGIN_DB = 12.0  # speech is at least this far above the noise floor
FLOOR_RISE_DB_PER_S = 10.0  # how fast the floor climbs towards louder quiet audio
SILENCE_DBFS = -96.0

# --- the beep (Rule 4)
BEEP_MIN_HZ = 400.0
BEEP_MAX_HZ = 2100.0
BEEP_STEP_HZ = 20.0  # spacing of the bank at most (a 20 ms frame resolves ~50 Hz)
BEEP_PURITY = 0.75  # share of the frame's power in the strongest frequency: a pure tone
BEEP_MIN_DBFS = -40.0  # quieter tones are not a voicemail beep
BEEP_MIN_MS = 120  # voicemail beeps last 0.2-1 s; a sung vowel rarely stays this pure this long
BEEP_MAX_MS = 3000  # a tone still going after this is reported anyway (we cannot wait forever)
BEEP_FREQ_TOLERANCE_HZ = 40.0  # the frequency may wander this much during one beep
GREETING_END_SILENCE_MS = 2000  # after a machine verdict: the greeting ended, no beep came


@dataclass(frozen=True, slots=True)
class AmdVerdict:
    """The classification (once per call).

    Attributes:
        result: human, machine or unknown.
        cause: which rule decided (``initial-silence``, ``long-greeting``, ``max-words``,
            ``silence-after-greeting``, ``timeout``).
        after_ms: audio time from the callee's first frame to the decision.
        at: ``now`` of the frame that decided.
    """

    result: AmdResult
    cause: str
    after_ms: int
    at: float


@dataclass(frozen=True, slots=True)
class Beep:
    """A voicemail beep ended (Rule 4): times are audio ms from the callee's first frame."""

    frequency_hz: float
    start_ms: int
    end_ms: int
    at: float


@dataclass(frozen=True, slots=True)
class GreetingEnded:
    """After a machine verdict, silence followed the greeting and no beep came (Rule 5)."""

    after_ms: int
    at: float


AmdEvent = AmdVerdict | Beep | GreetingEnded


def level_dbfs(samples: npt.NDArray[np.float32]) -> float:
    """RMS level of float samples (int16 scale) in dBFS; SILENCE_DBFS for silence."""
    if samples.size == 0:
        return SILENCE_DBFS
    mean_square = float(np.dot(samples, samples)) / samples.size
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_square / (32768.0 * 32768.0)))


def _samples(pcm: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float32)


class MachineDetector:
    """Classic answering-machine detection over PCM16 frames (Rules 1-3).

    Args:
        rate_hz: the sample rate of the frames (8000 or 16000).
        max_wait_s: the verdict comes at most this long after the first frame.
    """

    def __init__(self, rate_hz: int, *, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        self.rate_hz = rate_hz
        self.max_wait_ms = int(max_wait_s * 1000)
        self.verdict: AmdVerdict | None = None
        self.noise_floor_dbfs = SILENCE_DBFS
        self.words = 0
        self._ms = 0.0  # audio time so far (Rule 1)
        self._greeting_start: float | None = None  # audio ms of the first word's start
        self._voiced_ms = 0.0  # the current voiced run
        self._silent_ms = 0.0  # the current unvoiced run
        self._in_word = False

    def voiced(self, samples: npt.NDArray[np.float32], frame_ms: float) -> bool:
        """Rule 2 for one frame (updates the noise floor)."""
        level = level_dbfs(samples)
        loud = level > max(VOICE_MIN_DBFS, self.noise_floor_dbfs + VOICE_MARGIN_DB)
        rise = 0.0 if loud else FLOOR_RISE_DB_PER_S * frame_ms / 1000.0
        self.noise_floor_dbfs = min(level, self.noise_floor_dbfs + rise)
        return loud

    def feed(self, pcm: bytes, now: float) -> AmdVerdict | None:
        """Feed one frame; the verdict when this frame decides it (Rule 3), else None."""
        if self.verdict is not None:
            return None
        samples = _samples(pcm)
        frame_ms = 1000.0 * samples.size / self.rate_hz
        return self.feed_samples(samples, frame_ms, self.voiced(samples, frame_ms), now)

    def feed_samples(
        self, samples: npt.NDArray[np.float32], frame_ms: float, voiced: bool, now: float
    ) -> AmdVerdict | None:
        """:meth:`feed` for a frame already measured (``voiced`` from :meth:`voiced`)."""
        if self.verdict is not None:
            return None
        self._ms += frame_ms
        if voiced:
            self._voiced_ms += frame_ms
            self._silent_ms = 0.0
            if not self._in_word and self._voiced_ms >= MIN_WORD_MS:
                self._in_word = True
                self.words += 1
                if self._greeting_start is None:
                    self._greeting_start = self._ms - self._voiced_ms
        else:
            self._silent_ms += frame_ms
            if self._silent_ms >= BETWEEN_WORDS_SILENCE_MS:
                self._in_word = False
                self._voiced_ms = 0.0
        return self._decide(voiced, now)

    @property
    def elapsed_ms(self) -> int:
        """Audio time since the first frame."""
        return round(self._ms)

    def _decide(self, voiced: bool, now: float) -> AmdVerdict | None:
        start = self._greeting_start
        if start is None:
            if self._ms >= INITIAL_SILENCE_MS:
                return self._verdict("unknown", "initial-silence", now)
        elif self.words >= MAX_WORDS:
            return self._verdict("machine", "max-words", now)
        elif self._silent_ms >= AFTER_GREETING_SILENCE_MS:
            return self._verdict("human", "silence-after-greeting", now)
        elif voiced and self._ms - start >= MAX_GREETING_MS:  # trailing silence is not greeting
            return self._verdict("machine", "long-greeting", now)
        if self._ms >= self.max_wait_ms:
            return self._verdict("unknown", "timeout", now)
        return None

    def _verdict(self, result: AmdResult, cause: str, now: float) -> AmdVerdict:
        self.verdict = AmdVerdict(result, cause, round(self._ms), now)
        return self.verdict


@dataclass(frozen=True, slots=True)
class _Bank:
    """The tone bank for one frame size: window, FFT size and the bins of 400-2100 Hz."""

    window: npt.NDArray[np.float32]
    fft_size: int
    first: int  # the first bin in the band
    freqs: npt.NDArray[np.float64]  # the band's bin frequencies
    scale: float  # power of a bin as the power of a sine (A**2 / 2) there


@functools.lru_cache(maxsize=8)
def _bank(rate_hz: int, samples: int) -> _Bank:
    """The frame's spectrum every ``rate_hz / fft_size`` Hz: what a bank of Goertzel filters
    at those frequencies gives, computed as one zero-padded real FFT (no BLAS threads)."""
    fft_size = 1 << max(5, math.ceil(math.log2(rate_hz / BEEP_STEP_HZ)))
    fft_size = max(fft_size, 1 << (samples - 1).bit_length())
    window = np.hanning(samples).astype(np.float32)
    freqs = np.fft.rfftfreq(fft_size, 1.0 / rate_hz)
    band = (freqs >= BEEP_MIN_HZ) & (freqs <= BEEP_MAX_HZ)
    first = int(np.argmax(band))
    # a sine of amplitude A gives |X| = A * sum(window) / 2, i.e. A**2 / 2 = 2 |X|**2 / sum**2
    scale = 2.0 / float(window.sum()) ** 2
    band_freqs: npt.NDArray[np.float64] = freqs[band].astype(np.float64)
    return _Bank(window, fft_size, first, band_freqs, scale)


class BeepDetector:
    """A single-tone detector for voicemail beeps (Rule 4).

    Args:
        rate_hz: the sample rate of the frames (8000 or 16000).
    """

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self._ms = 0.0
        self._tone_freq: float | None = None  # the running tone's frequency
        self._tone_start = 0.0
        self._reported = False  # the running tone was reported (BEEP_MAX_MS)

    def feed(self, pcm: bytes, now: float) -> Beep | None:
        """Feed one frame; a :class:`Beep` when one just ended, else None."""
        samples = _samples(pcm)
        return self.feed_samples(samples, level_dbfs(samples), now)

    def tone_in(self, samples: npt.NDArray[np.float32], level: float) -> float | None:
        """The frequency of a pure tone filling this frame, or None."""
        if level < BEEP_MIN_DBFS or samples.size < 32:
            return None
        bank = _bank(self.rate_hz, samples.size)
        spectrum = np.fft.rfft(samples * bank.window, bank.fft_size)
        band = spectrum[bank.first : bank.first + bank.freqs.size]
        power = band.real * band.real + band.imag * band.imag
        best = int(np.argmax(power))
        mean_square = float(np.dot(samples, samples)) / samples.size
        tone_power = float(power[best]) * bank.scale
        return float(bank.freqs[best]) if tone_power >= BEEP_PURITY * mean_square else None

    def feed_samples(
        self, samples: npt.NDArray[np.float32], level: float, now: float
    ) -> Beep | None:
        """:meth:`feed` with the frame's level already measured."""
        frame_ms = 1000.0 * samples.size / self.rate_hz
        start = self._ms
        self._ms += frame_ms
        freq = self.tone_in(samples, level)
        running = self._tone_freq
        if (
            running is not None
            and freq is not None
            and abs(freq - running) <= BEEP_FREQ_TOLERANCE_HZ
        ):
            if not self._reported and self._ms - self._tone_start >= BEEP_MAX_MS:
                self._reported = True
                return Beep(running, round(self._tone_start), round(self._ms), now)
            return None
        beep = None
        if running is not None and not self._reported and start - self._tone_start >= BEEP_MIN_MS:
            beep = Beep(running, round(self._tone_start), round(start), now)
        self._tone_freq, self._tone_start, self._reported = freq, start, False
        return beep


class AnsweringMachineDetection:
    """One call's detection: the verdict, then (for a machine) the beep or the greeting's end.

    Args:
        rate_hz: the sample rate of the frames (8000 or 16000).
        max_wait_s: the verdict comes at most this long after the first frame.
    """

    def __init__(self, rate_hz: int, *, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        self.classifier = MachineDetector(rate_hz, max_wait_s=max_wait_s)
        self.beeps = BeepDetector(rate_hz)
        self.beep: Beep | None = None
        self._ms = 0.0
        self._heard_speech = False
        self._silent_ms = 0.0
        self._greeting_ended = False

    @property
    def verdict(self) -> AmdVerdict | None:
        """The verdict, once reached."""
        return self.classifier.verdict

    def feed(self, pcm: bytes, now: float) -> list[AmdEvent]:
        """Feed one frame of the callee's audio; what it revealed (each event once)."""
        samples = _samples(pcm)
        frame_ms = 1000.0 * samples.size / self.classifier.rate_hz
        level = level_dbfs(samples)
        classifier = self.classifier
        self._ms += frame_ms
        voiced = classifier.voiced(samples, frame_ms)
        events: list[AmdEvent] = []
        verdict = classifier.feed_samples(samples, frame_ms, voiced, now)
        if verdict is not None:
            events.append(verdict)
        if self.beep is None:
            beep = self.beeps.feed_samples(samples, level, now)
            if beep is not None:
                self.beep = beep
                events.append(beep)
        machine = classifier.verdict is not None and classifier.verdict.result == "machine"
        if voiced:
            self._heard_speech, self._silent_ms = True, 0.0
        else:
            self._silent_ms += frame_ms
        quiet = self._heard_speech and self._silent_ms >= GREETING_END_SILENCE_MS
        if machine and quiet and self.beep is None and not self._greeting_ended:
            self._greeting_ended = True  # Rule 5
            events.append(GreetingEnded(round(self._ms), now))
        return events
