"""Audio formats as they cross the media/provider seam (mono; PCM16 little-endian or G.711)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["pcm16", "pcmu", "pcma"]

FRAME_MS = 20  # every frame on the media path is 20 ms


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Raw audio as a provider sends or takes it: mono, little-endian for pcm16."""

    encoding: Encoding
    rate_hz: int

    @property
    def bytes_per_ms(self) -> int:
        """Bytes per millisecond (pcm16: 2 bytes a sample; G.711: 1)."""
        width = 2 if self.encoding == "pcm16" else 1
        return width * self.rate_hz // 1000

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame."""
        return self.bytes_per_ms * FRAME_MS


PCM16_8K = AudioFormat("pcm16", 8_000)
PCM16_16K = AudioFormat("pcm16", 16_000)
PCM16_24K = AudioFormat("pcm16", 24_000)
PCMU_8K = AudioFormat("pcmu", 8_000)
PCMA_8K = AudioFormat("pcma", 8_000)
