"""``audio.resample``: convert audio to one sample rate and channel layout.

Recognisers want 16 kHz mono, transports play 48 kHz, TTS engines emit 22.05 or 24 kHz: this node sits
between two that disagree (``settings.auto_resample: true`` inserts it by itself).

Quality is a latency trade-off. ``HQ`` (the default) and ``VHQ`` use long filters: output comes in
bursts and up to ~37 ms of audio is held inside the filter, but aliasing is negligible — best in front
of speech recognition. ``QQ`` (and to a lesser degree ``LQ``/``MQ``) emits steadily with little delay at
lower fidelity — fine for monitoring or when every millisecond of latency counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.formats import AudioFormat
from pipeline.frames import AudioFrame, Frame
from pipeline.params import param
from pipeline.processor import Processor
from pipeline.resampling import Int16Resampler


@dataclass(slots=True)
class ResampleParams:
    """Target format of an ``audio.resample`` node."""

    sample_rate: int = param(ge=1, doc="output sample rate in Hz (e.g. 16000)")
    channels: int | None = param(None, ge=1, doc="output channels; null keeps the input's")
    quality: Literal["VHQ", "HQ", "MQ", "LQ", "QQ"] = param(
        "HQ", doc="HQ: best for recognition, bursty (~37 ms held); QQ: steady, lower quality"
    )


class Resampler(Processor):
    """Resamples and re-mixes ``AudioFrame``s (keeping their class); other frames pass through."""

    Params = ResampleParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    params: ResampleParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._stream: Int16Resampler | None = None
        self._stream_input: AudioFormat | None = None  # the format the stream was built for
        self._last: AudioFrame | None = None  # template for the frame carrying the flushed tail

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        if incoming is None:
            return None
        return self.target(incoming)

    def target(self, incoming: AudioFormat) -> AudioFormat:
        """The format audio arriving in ``incoming`` leaves in."""
        return AudioFormat(self.params.sample_rate, self.params.channels or incoming.channels)

    async def process(self, frame: AudioFrame) -> None:
        incoming = AudioFormat(frame.sample_rate, frame.channels)
        target = self.target(incoming)
        if incoming != self._stream_input:
            await self._flush()
        if incoming == target:
            await self.push(frame)
            return
        samples = np.frombuffer(frame.pcm, dtype=np.int16).reshape(-1, frame.channels)
        mixed = _remix(samples, target.channels) if target.channels < frame.channels else samples
        if incoming.sample_rate != target.sample_rate:
            if self._stream is None:
                self._stream = Int16Resampler(
                    incoming.sample_rate, target.sample_rate, mixed.shape[1], quality=self.params.quality
                )
                self._stream_input = incoming
            mixed = self._stream.resample(mixed)
        self._last = frame
        await self._emit(frame, mixed, target)

    async def on_stop(self) -> None:
        # After a cancel nobody is listening any more; only a graceful end delivers the held tail.
        if self.ended or self.inbox.closed:
            self._reset()
            return
        await self._flush()

    async def on_interrupt(self) -> None:
        self._reset()

    async def _flush(self) -> None:
        """Push what the filter still holds, then forget the stream (the input format changed or ended)."""
        stream, last, incoming = self._stream, self._last, self._stream_input
        self._reset()
        if stream is None or last is None or incoming is None:
            return
        await self._emit(last, stream.flush(), self.target(incoming))

    async def _emit(self, template: AudioFrame, samples: np.ndarray[Any, Any], target: AudioFormat) -> None:
        if not samples.shape[0]:
            return  # a high-quality filter fills up before it releases anything
        samples = _remix(samples, target.channels)
        pcm = np.ascontiguousarray(samples, dtype=np.int16).tobytes()
        await self.push(
            dataclasses.replace(template, pcm=pcm, sample_rate=target.sample_rate, channels=target.channels)
        )

    def _reset(self) -> None:
        self._stream = None
        self._stream_input = None
        self._last = None


def _remix(samples: np.ndarray[Any, Any], channels: int) -> np.ndarray[Any, Any]:
    """Change the channel count: average into mono, then duplicate that into every output channel."""
    if samples.shape[1] == channels:
        return samples
    mono = samples
    if samples.shape[1] > 1:
        mono = np.rint(samples.astype(np.float32).mean(axis=1, keepdims=True)).astype(np.int16)
    return np.repeat(mono, channels, axis=1) if channels > 1 else mono
