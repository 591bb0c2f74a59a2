"""Test pieces for what an output transport plays: a reply as a TTS sends it, and a tap on what the
output reports heard. Shared by the browser and the phone tests."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from pipeline.frames import (
    UPSTREAM,
    BotAudioFrame,
    Frame,
    SpokenTextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipeline.processor import Processor

FRAME_MS = 20


def tone(ms: int, rate: int) -> bytes:
    """A 330 Hz tone of ``ms`` milliseconds: s16le mono at ``rate``."""
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * math.pi * 330 * t) * 8000).astype("<i2").tobytes()


def sentences(count: int, ms: int, rate: int) -> list[Frame]:
    """A reply the way a TTS sends it: per sentence its text, then 20 ms audio frames of a tone."""
    frames: list[Frame] = [TTSStartedFrame()]
    step = 2 * rate * FRAME_MS // 1000
    for index in range(count):
        frames.append(TTSTextFrame(text=f"Sentence {index}."))
        pcm = tone(ms, rate)
        frames += [
            BotAudioFrame(pcm=pcm[at : at + step], sample_rate=rate) for at in range(0, len(pcm), step)
        ]
    return [*frames, TTSStoppedFrame()]


class HeardTap(Processor):
    """Passes everything on and keeps what the output reported heard (``SpokenTextFrame``, upstream)."""

    handles: ClassVar[tuple[type[Frame], ...]] = ()
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (SpokenTextFrame,)
    spoken: ClassVar[list[str]] = []

    async def process_upstream(self, frame: SpokenTextFrame) -> None:
        HeardTap.spoken.append(frame.text)
        await self.push(frame, UPSTREAM)
