"""Processors the config tests load by import path (``type: tests.custom_nodes:Shout``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotTextFrame,
    Frame,
    TextFrame,
    TranscriptFrame,
    UserAudioFrame,
)
from pipeline.params import param
from pipeline.processor import Processor, Source


@dataclass(slots=True)
class WordsParams:
    words: list[str] = param(["hello"], doc="one TextFrame per word")


class Words(Source):
    """Emits each word as a TextFrame."""

    Params = WordsParams
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    params: WordsParams

    async def generate(self) -> AsyncIterator[Frame]:
        for word in self.params.words:
            yield TextFrame(text=word)


@dataclass(slots=True)
class TranscriptsParams:
    texts: list[str] = param(["hi"], doc="one TranscriptFrame per text")


class Transcripts(Source):
    """Emits final transcripts."""

    Params = TranscriptsParams
    produces: ClassVar[tuple[type[Frame], ...]] = (TranscriptFrame,)
    params: TranscriptsParams

    async def generate(self) -> AsyncIterator[Frame]:
        for text in self.params.texts:
            yield TranscriptFrame(text=text)


@dataclass(slots=True)
class ShoutParams:
    suffix: str = param("!", doc="appended to every text")


class Shout(Processor):
    """Upper-cases text."""

    Params = ShoutParams
    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    params: ShoutParams

    async def process(self, frame: TextFrame) -> None:
        await self.push(dataclasses.replace(frame, text=frame.text.upper() + self.params.suffix))


class Gain(Processor):
    """Doubles audio: takes and makes audio, so the format passes through it."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    async def process(self, frame: Frame) -> None:
        await self.push(frame)


class Forgetful(Processor):
    """Passes text on but forgot to say so: no ``produces``."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    async def process(self, frame: Frame) -> None:
        await self.push(frame)


class Speak(Processor):
    """Stands in for a TTS: text in, bot audio out."""

    handles: ClassVar[tuple[type[Frame], ...]] = (BotTextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (BotAudioFrame,)

    async def process(self, frame: BotTextFrame) -> None:
        await self.push(BotAudioFrame(pcm=b"\0\0" * 160, sample_rate=16000))

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(16000)


@dataclass(slots=True)
class BeepsParams:
    sample_rate: int = param(48000)
    channels: int = param(1)
    frames: int = param(10, doc="how many 20 ms frames")


class Beeps(Source):
    """A 440 Hz tone in 20 ms frames."""

    Params = BeepsParams
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    params: BeepsParams

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(self.params.sample_rate, self.params.channels)

    async def generate(self) -> AsyncIterator[Frame]:
        rate, channels = self.params.sample_rate, self.params.channels
        size = rate // 50
        for index in range(self.params.frames):
            samples = []
            for n in range(index * size, (index + 1) * size):
                value = int(8000 * math.sin(2 * math.pi * 440 * n / rate))
                samples.extend([value] * channels)
            pcm = b"".join(v.to_bytes(2, "little", signed=True) for v in samples)
            yield UserAudioFrame(pcm=pcm, sample_rate=rate, channels=channels)


class Listen16k(Processor):
    """Stands in for a recogniser: takes only 16 kHz mono, passes the audio on."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(16000, 1)

    async def process(self, frame: AudioFrame) -> None:
        if (frame.sample_rate, frame.channels) != (16000, 1):
            raise ValueError(f"got {frame.sample_rate} Hz x{frame.channels}")
        await self.push(frame)

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming


@dataclass(slots=True)
class KeyedParams:
    api_key: str = param(doc="credential", secret=True)
    retries: int = param(1)


class Keyed(Processor):
    """Takes a secret param."""

    Params = KeyedParams


class Exploding(Processor):
    """Fails in its constructor."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("no device")


class Leaky(Processor):
    """Echoes its secret in a constructor error (the loader must hide it)."""

    Params = KeyedParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        raise RuntimeError(f"key {self.params.api_key} was refused")
