"""An energy voice-activity detector for PCM16 frames (sans-I/O, no clock).

Used by the local provider (to know when the caller has finished an utterance, and when the
caller talks over the bot) and by the provider emulators (server-side turn detection).

Rules:

* Rule 1: a frame is *loud* when its RMS level is above ``max(threshold_dbfs, noise floor +
  margin_db)``. The noise floor drops at once to a quieter frame, rises towards a louder quiet
  frame by ``FLOOR_RISE_DB_PER_S``, and creeps up under loud audio by ``FLOOR_CREEP_DB_PER_S``:
  steady line noise is not speech, and a steady loud sound (music, a tone) stops being speech
  after a while instead of holding the detector in "speaking" forever.
* Rule 2: speech *starts* after ``start_ms`` of consecutive loud frames and *ends* after
  ``hangover_ms`` of consecutive quiet frames. Each transition is reported exactly once.
* Rule 3: time is counted from the audio itself (samples), never from a clock.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

VadEvent = Literal["speech_start", "speech_end"]

SILENCE_DBFS = -96.0  # level reported for digital silence
FULL_SCALE = 32768.0
FLOOR_RISE_DB_PER_S = 25.0  # 0.5 dB per 20 ms frame
FLOOR_CREEP_DB_PER_S = 2.5


def level_dbfs(pcm: bytes) -> float:
    """RMS level of PCM16 little-endian audio in dBFS (-96 for silence or empty input)."""
    if len(pcm) < 2:
        return SILENCE_DBFS
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float32)
    mean_square = float(np.dot(samples, samples)) / samples.size
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_square / (FULL_SCALE * FULL_SCALE)))


class EnergyVad:
    """Detects the start and end of speech in a stream of PCM16 frames.

    Args:
        sample_rate_hz: rate of the PCM16 audio passed to :meth:`process`.
        threshold_dbfs: absolute level below which nothing is speech.
        margin_db: how far above the tracked noise floor speech must be.
        start_ms: loud audio needed before speech is declared started.
        hangover_ms: quiet audio needed before speech is declared ended.
    """

    def __init__(
        self,
        sample_rate_hz: int,
        *,
        threshold_dbfs: float = -40.0,
        margin_db: float = 12.0,
        start_ms: int = 60,
        hangover_ms: int = 500,
    ) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.threshold_dbfs = threshold_dbfs
        self.margin_db = margin_db
        self.start_ms = start_ms
        self.hangover_ms = hangover_ms
        self.speaking = False
        self.noise_floor_dbfs = SILENCE_DBFS
        self._loud_ms = 0.0
        self._quiet_ms = 0.0

    def reset(self) -> None:
        """Forget the current state (not the noise floor)."""
        self.speaking = False
        self._loud_ms = 0.0
        self._quiet_ms = 0.0

    def process(self, pcm: bytes) -> VadEvent | None:
        """Feed one frame; return ``"speech_start"``/``"speech_end"`` on a transition."""
        duration_ms = 1000.0 * (len(pcm) // 2) / self.sample_rate_hz
        level = level_dbfs(pcm)
        loud = level > max(self.threshold_dbfs, self.noise_floor_dbfs + self.margin_db)
        rise_db = (FLOOR_CREEP_DB_PER_S if loud else FLOOR_RISE_DB_PER_S) * duration_ms / 1000.0
        self.noise_floor_dbfs = min(level, self.noise_floor_dbfs + rise_db)
        if loud:
            self._loud_ms += duration_ms
            self._quiet_ms = 0.0
            if not self.speaking and self._loud_ms >= self.start_ms:
                self.speaking = True
                return "speech_start"
        else:
            self._quiet_ms += duration_ms
            self._loud_ms = 0.0
            if self.speaking and self._quiet_ms >= self.hangover_ms:
                self.speaking = False
                return "speech_end"
        return None
