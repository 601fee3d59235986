"""Audio formats as they cross the media/provider seam (mono; PCM16 little-endian or G.711).

The types live in :mod:`sipbot.domain` (shared by every layer); they are re-exported here for
the media modules that have always imported them from this module.
"""

from __future__ import annotations

from sipbot.domain import FRAME_MS as FRAME_MS
from sipbot.domain import PCM16_8K as PCM16_8K
from sipbot.domain import PCM16_16K as PCM16_16K
from sipbot.domain import PCM16_24K as PCM16_24K
from sipbot.domain import PCMA_8K as PCMA_8K
from sipbot.domain import PCMU_8K as PCMU_8K
from sipbot.domain import AudioFormat as AudioFormat
from sipbot.domain import Encoding as Encoding
