"""The barge-in guard: caller speech over the agent cuts it only when it is a real interruption.

A sans-I/O core. :class:`BargeInGuard` takes the caller's audio (PCM16 16 kHz, any length) while
the agent is audible, with a speech model's verdicts (:class:`SpeechModel`: Silero in
production, :mod:`sipbot.media.silero`), and returns what the conversation should do:
:data:`SUSPECT` (duck the agent), :data:`CONFIRM` (a real barge-in: flush as today) or
:data:`CLEAR` (a false alarm: restore the agent's level). Time is counted in samples.

Rules:

* Rule 1 (cost, echo): the model runs only while the agent is audible and the caller's chunk is
  loud enough to be anything but the line's own echo: its level must be within
  ``ECHO_MARGIN_DB`` of the agent's recent peak level (``CONTINUE_MARGIN_DB`` once an episode
  is open; the bot's echo comes back ~20 dB below it) and above ``FLOOR_DBFS``. Otherwise the
  chunk is not speech, and costs a level computation only.
* Rule 2: a chunk the model scores at ``SPEECH_PROB`` or more is speech. The first speech chunk
  while the agent is audible is :data:`SUSPECT`, once per episode.
* Rule 3: an utterance is the span from its first speech chunk to its last, pauses of up to
  ``GAP_MS`` included; one longer than ``min_speech_ms`` is :data:`CONFIRM`; so are caller
  words that are not just a backchannel (:func:`is_backchannel`) during an episode, or while
  the agent is audible.
* Rule 4: ``CLEAR_MS`` without speech after a :data:`SUSPECT` ends the episode:
  :data:`CLEAR`. When the agent stops being audible the episode ends the same way.
* Rule 5: after :data:`CONFIRM` nothing more is reported until the agent is audible again
  after having been silent (the next reply).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np

from sipbot.domain import AudioFormat
from sipbot.media.codecs import Decoder, make_decoder
from sipbot.media.resample import Resampler

RATE_HZ = 16_000
SPEECH_PROB = 0.5  # Rule 2
GAP_MS = 300  # Rule 3: a pause this short does not break an utterance
CLEAR_MS = 400  # Rule 4
ECHO_MARGIN_DB = 12.0  # Rule 1: caller chunks this far below the agent's peak level are echo
CONTINUE_MARGIN_DB = 16.0  # Rule 1, within an open episode
FLOOR_DBFS = -50.0  # Rule 1: quieter chunks are not speech (line noise)
AGENT_LEVEL_DECAY_DB_PER_S = 6.0  # the agent's tracked level falls this fast between its chunks
SILENCE_DBFS = -96.0
DEFAULT_MIN_SPEECH_MS = 800
BACKCHANNELS: Final = frozenset(
    {
        *("mm", "mhm", "mmhm", "mm-hm", "hm", "hmm", "uh-huh", "uhhuh", "uh", "huh", "um"),
        *("ok", "okay", "yeah", "yes", "yep", "yup", "right", "sure", "alright", "aha", "ah"),
        *("oh", "i", "see", "got", "it"),
    }
)

Verdict = Literal["suspect", "confirm", "clear"]
SUSPECT: Final[Verdict] = "suspect"
CONFIRM: Final[Verdict] = "confirm"
CLEAR: Final[Verdict] = "clear"


class SpeechModel(Protocol):
    """Scores fixed-size chunks of 16 kHz audio (float32 in [-1, 1]) as speech, 0..1."""

    @property
    def chunk_samples(self) -> int: ...

    def score(self, chunk: np.ndarray) -> float: ...

    def reset(self) -> None: ...


@dataclass(slots=True)
class GuardStats:
    """What the guard did (for the bench and the call record)."""

    suspected: int = 0
    confirmed: int = 0
    cleared: int = 0
    chunks_scored: int = 0  # model runs (Rule 1)


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of float samples in [-1, 1], in dBFS (SILENCE_DBFS for silence)."""
    if samples.size == 0:
        return SILENCE_DBFS
    mean_square = float(np.dot(samples, samples)) / samples.size
    return SILENCE_DBFS if mean_square <= 1e-10 else max(SILENCE_DBFS, 10 * math.log10(mean_square))


def is_backchannel(text: str) -> bool:
    """True when ``text`` holds only backchannel words ("mm-hm", "okay", "yeah"...)."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())
    if not words:
        return True
    joined = " ".join(words)
    return all(w in BACKCHANNELS for w in words) or joined in BACKCHANNELS


class BargeInGuard:
    """Decides whether caller speech over the agent is a barge-in (see the module rules).

    Args:
        model: the speech model (its chunk size sets the work unit).
        min_speech_ms: speech needed to confirm (Rule 3).
    """

    def __init__(self, model: SpeechModel, *, min_speech_ms: int = DEFAULT_MIN_SPEECH_MS) -> None:
        self.model = model
        self.min_speech_ms = min_speech_ms
        self.stats = GuardStats()
        n = model.chunk_samples
        self._chunk_ms = 1000.0 * n / RATE_HZ
        self._buffer = np.zeros(n * 4, dtype=np.float32)  # preallocated: no per-frame arrays
        self._filled = 0
        self._agent_db = SILENCE_DBFS
        self._audible = False
        self._episode = False  # suspected, not confirmed or cleared
        self._done = False  # confirmed; Rule 5
        self._speech_ms = 0.0
        self._quiet_ms = 0.0

    @property
    def suspecting(self) -> bool:
        """An episode is open: the agent is ducked."""
        return self._episode

    def agent_audio(self, samples: np.ndarray) -> None:
        """The agent's audio (float32 in [-1, 1], any rate) as it is queued: its level (Rule 1)."""
        self._agent_db = max(self._agent_db, level_dbfs(samples))

    def caller_audio(self, pcm16k: bytes, agent_audible: bool) -> Verdict | None:
        """The caller's PCM16 16 kHz audio; ``agent_audible``: agent audio is playing now."""
        if not agent_audible:
            return self._agent_quiet()
        self._audible = True
        if self._done:
            return None
        samples = np.frombuffer(pcm16k, dtype="<i2")
        n = samples.size
        buffer = self._buffer
        if self._filled + n > buffer.size:  # longer than expected: keep the newest
            samples = samples[-(buffer.size - self._filled) :]
            n = samples.size
        np.multiply(samples, 1.0 / 32768.0, out=buffer[self._filled : self._filled + n])
        self._filled += n
        verdict: Verdict | None = None
        size = self.model.chunk_samples
        while self._filled >= size and verdict is None:
            verdict = self._chunk(buffer[:size])
            rest = self._filled - size
            buffer[:rest] = buffer[size : self._filled]
            self._filled = rest
        return verdict

    def caller_words(self, text: str, agent_audible: bool) -> Verdict | None:
        """A transcript of the caller's speech arrived (Rule 3)."""
        if self._done or not (self._episode or agent_audible) or is_backchannel(text):
            return None
        return self._confirm()

    # ------------------------------------------------------------------ internals

    def _chunk(self, chunk: np.ndarray) -> Verdict | None:
        ms = self._chunk_ms
        self._agent_db = max(SILENCE_DBFS, self._agent_db - AGENT_LEVEL_DECAY_DB_PER_S * ms / 1000)
        level = level_dbfs(chunk)
        margin = CONTINUE_MARGIN_DB if self._episode else ECHO_MARGIN_DB
        speech = False
        if level >= FLOOR_DBFS and level >= self._agent_db - margin:  # Rule 1
            self.stats.chunks_scored += 1
            speech = self.model.score(chunk) >= SPEECH_PROB
        if speech:
            # Rule 3: a short pause is part of the utterance, a long one starts a new one
            kept = self._speech_ms + self._quiet_ms if self._quiet_ms <= GAP_MS else 0.0
            self._speech_ms = kept + ms
            self._quiet_ms = 0.0
            if not self._episode:
                self._episode = True
                self.stats.suspected += 1
                if self._speech_ms > self.min_speech_ms:
                    return self._confirm()
                return SUSPECT
            if self._speech_ms > self.min_speech_ms:
                return self._confirm()
            return None
        if not self._episode:
            self._speech_ms = 0.0
            return None
        self._quiet_ms += ms
        if self._quiet_ms >= CLEAR_MS:
            return self._clear()
        return None

    def _confirm(self) -> Verdict:
        self._episode = False
        self._done = True
        self._speech_ms = self._quiet_ms = 0.0
        self.stats.confirmed += 1
        return CONFIRM

    def _clear(self) -> Verdict:
        self._episode = False
        self._speech_ms = self._quiet_ms = 0.0
        self.stats.cleared += 1
        return CLEAR

    def _agent_quiet(self) -> Verdict | None:
        """The agent is not audible: end an episode (Rule 4), re-arm after a confirm (Rule 5)."""
        if not self._audible:
            return None
        self._audible = False
        self._done = False
        self._filled = 0
        self._agent_db = SILENCE_DBFS
        self.model.reset()
        if self._episode:
            return self._clear()
        self._speech_ms = self._quiet_ms = 0.0
        return None


class GuardInput:
    """Provider-format audio → what the guard takes (one per call and direction).

    Args:
        fmt: the audio's format (PCM16 at any rate, or G.711 at 8 kHz).
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        pcm = fmt.encoding == "pcm16"
        self._decoder: Decoder | None = None if pcm else make_decoder(fmt.encoding)
        rate = fmt.rate_hz if pcm else 8_000
        self._resampler = None if rate == RATE_HZ else Resampler(rate, RATE_HZ)

    def pcm16k(self, audio: bytes) -> bytes:
        """Caller audio as PCM16 16 kHz (stateful: one stream)."""
        if self._decoder is not None:
            audio = self._decoder.decode(audio)
        return audio if self._resampler is None else self._resampler.process(audio)

    def floats(self, audio: bytes) -> np.ndarray:
        """Agent audio as float32 samples in [-1, 1] at its own rate (for its level only)."""
        if self._decoder is not None:
            audio = self._decoder.decode(audio)
        return np.frombuffer(audio, dtype="<i2", count=len(audio) // 2) * np.float32(1 / 32768)
