"""Streaming resampling of 16-bit PCM that gives the same samples every run.

libsoxr dithers integer output with a randomly seeded generator, so resampling ``int16`` directly made
the same file yield slightly different audio in every run — and, downstream, different VAD cuts and
transcripts. Resampling in ``float32`` and rounding here keeps its quality without the dither.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import soxr

Quality = Literal["VHQ", "HQ", "MQ", "LQ", "QQ"]
FULL_SCALE = 32768.0


class Int16Resampler:
    """One soxr stream for interleaved s16 samples (``(frames, channels)`` arrays in and out).

    The filter keeps its state across chunks, so there are no clicks at chunk edges; high-quality
    filters release output in bursts, and ``resample(..., last=True)`` returns what they still hold.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int, quality: Quality = "HQ") -> None:
        self.channels = channels
        self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality=quality)

    def resample(self, samples: np.ndarray[Any, Any], last: bool = False) -> np.ndarray[Any, Any]:
        """The next resampled chunk of ``samples`` (int16, shape ``(frames, channels)``)."""
        scaled = samples.astype(np.float32).reshape(-1, self.channels) / FULL_SCALE
        out = self._stream.resample_chunk(scaled, last=last).reshape(-1, self.channels)
        rounded: np.ndarray[Any, Any] = np.clip(np.rint(out * FULL_SCALE), -32768, 32767).astype(np.int16)
        return rounded

    def flush(self) -> np.ndarray[Any, Any]:
        """What the filter still holds; the stream starts afresh afterwards."""
        tail = self.resample(np.zeros((0, self.channels), dtype=np.int16), last=True)
        self._stream.clear()
        return tail
