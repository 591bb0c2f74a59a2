"""Synthetic sources: audio and text to drive a graph without a microphone, a file server or a user.

They are ordinary node types (``source.tone``, ``source.wav``, …), so a YAML graph can swap its
live input for one of these to run offline, in tests and in benchmarks. Audio sources emit whole
frames of ``frame_ms`` and, with ``realtime: true``, pace them like a microphone would.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.audiofile import AudioFileError, probe_audio, read_audio
from pipeline.errors import Problem, ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotTextFrame,
    Frame,
    InterimTranscriptFrame,
    TextFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserTextFrame,
)
from pipeline.params import param
from pipeline.processor import Source

__all__ = [
    "AudioFileError",
    "FramePacer",
    "NoiseSource",
    "SilenceSource",
    "TextSource",
    "ToneSource",
    "TranscriptSource",
    "WavSource",
    "frame_ms_problem",
    "samples_per_frame",
]

_FRAME_MS_DOC = "audio per frame in milliseconds (10, 20, 30…); must come to a whole number of samples"
_REALTIME_DOC = (
    "pace frames like a microphone (one frame per frame_ms); false = as fast as the graph takes them"
)


@dataclass(slots=True, kw_only=True)
class GeneratedAudioParams:
    """Params shared by the sources that synthesise audio."""

    sample_rate: int = param(16000, gt=0, doc="samples per second")
    channels: int = param(1, ge=1, le=8, doc="1 = mono, 2 = stereo")
    frame_ms: int = param(20, gt=0, doc=_FRAME_MS_DOC)
    duration: float | None = param(1.0, ge=0, doc="seconds of audio; null = until the graph is stopped")
    realtime: bool = param(False, doc=_REALTIME_DOC)


@dataclass(slots=True, kw_only=True)
class ToneParams(GeneratedAudioParams):
    """Params of ``source.tone``."""

    frequency: float = param(440.0, gt=0, doc="pitch in Hz (below half the sample rate)")
    amplitude: float = param(0.5, ge=0, le=1, doc="peak level, 0..1 of full scale")


@dataclass(slots=True, kw_only=True)
class NoiseParams(GeneratedAudioParams):
    """Params of ``source.noise``."""

    amplitude: float = param(0.1, ge=0, le=1, doc="peak level, 0..1 of full scale")
    seed: int | None = param(
        0, doc="random seed: the same seed gives the same noise; null = different each run"
    )


@dataclass(slots=True, kw_only=True)
class WavParams:
    """Params of ``source.wav``."""

    path: str = param(doc="audio file to play (WAV, FLAC, MP3, Ogg…), at its own sample rate and channels")
    frame_ms: int = param(20, gt=0, doc=_FRAME_MS_DOC)
    realtime: bool = param(False, doc=_REALTIME_DOC)
    trailing_silence: float = param(
        0.0, ge=0, doc="seconds of silence after the file, so the end of speech is seen"
    )


@dataclass(slots=True, kw_only=True)
class TextParams:
    """Params of ``source.text``."""

    texts: list[str] = param(doc="messages to send, one frame each")
    role: Literal["user", "bot"] = param(
        "user", doc="whose text: user = typed turns for an LLM (user_text); bot = replies to speak (bot_text)"
    )
    interval: float = param(0.0, doc="seconds between messages")


@dataclass(slots=True, kw_only=True)
class TranscriptParams:
    """Params of ``source.transcripts``."""

    transcripts: list[str] = param(doc="user utterances, one final TranscriptFrame each")
    interim: bool = param(
        False, doc="also send growing interim transcripts, word by word, before each final one"
    )
    interval: float = param(0.0, doc="seconds between utterances")
    language: str | None = param(None, doc="language code put on the transcripts (e.g. 'en')")


# --- audio ---------------------------------------------------------------------------------------


def samples_per_frame(sample_rate: int, frame_ms: int) -> int | None:
    """Samples per channel in one frame, or None when ``frame_ms`` is not a whole number of samples."""
    if frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
        return None
    return sample_rate * frame_ms // 1000


def frame_ms_problem(sample_rate: int, frame_ms: int, node: str) -> Problem:
    """The problem to report for a ``frame_ms`` that ``samples_per_frame`` refuses, with the choices."""
    choices = [ms for ms in (10, 20, 30, 40, 50, 60) if samples_per_frame(sample_rate, ms)]
    fix = "use one of " + ", ".join(map(str, choices)) if choices else "use a multiple of 10 ms"
    return Problem(
        f"frame_ms {frame_ms} is not a whole number of samples at {sample_rate} Hz",
        fix=fix,
        node=node,
        key="frame_ms",
    )


def _to_pcm(samples: np.ndarray[Any, np.dtype[np.float64]], channels: int) -> bytes:
    """Float samples in -1..1 to interleaved s16le, the same signal on every channel."""
    pcm = np.round(samples * 32767.0).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm, channels)
    return pcm.tobytes()


class FramePacer:
    """Waits until each frame is due, like a microphone; ``realtime=False`` only yields to the loop.

    Create it when the first frame is about to be made: frame i covers [i, i+1) periods from then and
    exists once that time has passed. Due times come from the start, so rounding in sleep never
    accumulates into drift, and a stall is caught up afterwards.
    """

    def __init__(self, frame_ms: int, realtime: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._period = frame_ms / 1000
        self._realtime = realtime
        self._index = 0

    async def wait(self) -> None:
        """Return once the next frame is due (at once, after a loop turn, when not real time)."""
        self._index += 1
        if not self._realtime:
            await asyncio.sleep(0)  # stay cooperative even when nothing downstream pushes back
            return
        delay = self._started + self._index * self._period - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class _PacedAudioSource(Source):
    """Turns an iterator of PCM chunks into audio frames, paced against the loop clock if asked."""

    produces = (AudioFrame,)

    async def _paced(
        self, chunks: Iterable[bytes], fmt: AudioFormat, frame_ms: int, realtime: bool
    ) -> AsyncIterator[Frame]:
        pacer = FramePacer(frame_ms, realtime)
        rate, channels = fmt.sample_rate, fmt.channels
        for pcm in chunks:
            await pacer.wait()
            yield UserAudioFrame(pcm=pcm, sample_rate=rate, channels=channels)


class _GeneratedAudioSource(_PacedAudioSource):
    """Base of the sources that synthesise audio from ``GeneratedAudioParams``."""

    Params = GeneratedAudioParams
    params: GeneratedAudioParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._samples = samples_per_frame(self.params.sample_rate, self.params.frame_ms) or 0

    def check(self) -> list[Problem]:
        p = self.params
        if samples_per_frame(p.sample_rate, p.frame_ms) is None:
            return [frame_ms_problem(p.sample_rate, p.frame_ms, self.name)]
        return []

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(self.params.sample_rate, self.params.channels)

    def _frame_count(self) -> Iterable[int]:
        """Frame indices to emit: enough whole frames to cover ``duration``, or endless."""
        duration = self.params.duration
        if duration is None:
            return itertools.count()
        total = round(duration * self.params.sample_rate)
        return range(math.ceil(total / self._samples))

    def _chunks(self) -> Iterator[bytes]:
        raise NotImplementedError

    async def generate(self) -> AsyncIterator[Frame]:
        p = self.params
        fmt = AudioFormat(p.sample_rate, p.channels)
        async for frame in self._paced(self._chunks(), fmt, p.frame_ms, p.realtime):
            yield frame


class SilenceSource(_GeneratedAudioSource):
    """Digital silence: the cheapest audio input, for benchmarks and end-of-speech tests."""

    type_name = "source.silence"

    def _chunks(self) -> Iterator[bytes]:
        chunk = bytes(2 * self._samples * self.params.channels)
        for _ in self._frame_count():
            yield chunk


class ToneSource(_GeneratedAudioSource):
    """A sine tone, phase-continuous across frames: a clean signal to check levels and resampling."""

    type_name = "source.tone"
    Params = ToneParams
    params: ToneParams

    def check(self) -> list[Problem]:
        p = self.params
        problems = super().check()
        nyquist = p.sample_rate / 2
        if p.frequency >= nyquist:
            message = f"frequency {p.frequency:g} Hz cannot be represented at {p.sample_rate} Hz"
            fix = f"use a frequency between 0 and {nyquist:g} Hz (half the sample rate)"
            problems.append(Problem(message, fix, self.name, "frequency"))
        return problems

    def _chunks(self) -> Iterator[bytes]:
        p = self.params
        step = 2 * math.pi * p.frequency / p.sample_rate
        ramp = step * np.arange(self._samples, dtype=np.float64)
        advance = step * self._samples
        phase = 0.0
        for _ in self._frame_count():
            yield _to_pcm(p.amplitude * np.sin(phase + ramp), p.channels)
            phase = (phase + advance) % (2 * math.pi)


class NoiseSource(_GeneratedAudioSource):
    """White noise, reproducible with ``seed``: background for VAD and STT robustness tests."""

    type_name = "source.noise"
    Params = NoiseParams
    params: NoiseParams

    def _chunks(self) -> Iterator[bytes]:
        p = self.params
        rng = np.random.default_rng(p.seed)
        size = self._samples * p.channels
        for _ in self._frame_count():
            noise = rng.uniform(-p.amplitude, p.amplitude, size)
            yield np.round(noise * 32767.0).astype("<i2").tobytes()


class WavSource(_PacedAudioSource):
    """Plays an audio file at its own rate and channels (add ``audio.resample`` if needed).

    The whole file is decoded (in a thread) before the first frame: for long recordings use
    ``file.input``, which reads block by block.
    """

    type_name = "source.wav"
    Params = WavParams
    params: WavParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._pcm = b""
        self._format: AudioFormat | None = None

    def check(self) -> list[Problem]:
        """The file must exist and be readable at a rate ``frame_ms`` divides, before anything runs."""
        try:
            fmt = probe_audio(Path(self.params.path))
        except AudioFileError as error:
            return [Problem(str(error), error.fix, self.name, "path")]
        if samples_per_frame(fmt.sample_rate, self.params.frame_ms) is None:
            return [frame_ms_problem(fmt.sample_rate, self.params.frame_ms, self.name)]
        return []

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        """Read from the file's header, so negotiation knows the real rate; None if unreadable."""
        try:
            return probe_audio(Path(self.params.path))
        except AudioFileError:
            return None

    async def on_start(self) -> None:
        fmt, self._pcm = await self.run_in_thread(read_audio, Path(self.params.path))
        if samples_per_frame(fmt.sample_rate, self.params.frame_ms) is None:
            raise ValidationError([frame_ms_problem(fmt.sample_rate, self.params.frame_ms, self.name)])
        self._format = fmt

    async def generate(self) -> AsyncIterator[Frame]:
        fmt = self._format
        if fmt is None:
            return
        p = self.params
        samples = samples_per_frame(fmt.sample_rate, p.frame_ms) or 0
        async for frame in self._paced(self._chunks(fmt, samples), fmt, p.frame_ms, p.realtime):
            yield frame

    def _chunks(self, fmt: AudioFormat, samples: int) -> Iterator[bytes]:
        size = 2 * samples * fmt.channels
        pcm = self._pcm
        for offset in range(0, len(pcm), size):
            chunk = pcm[offset : offset + size]
            yield chunk if len(chunk) == size else chunk + bytes(size - len(chunk))
        silent = round(self.params.trailing_silence * fmt.sample_rate)
        silence = bytes(size)
        for _ in range(math.ceil(silent / samples)):
            yield silence


# --- text ----------------------------------------------------------------------------------------


class TextSource(Source):
    """Sends fixed messages: a typed user for driving an LLM, or the bot's replies for a TTS (``role``)."""

    type_name = "source.text"
    Params = TextParams
    params: TextParams
    produces: ClassVar[tuple[type[Frame], ...]] = (UserTextFrame, BotTextFrame)  # one of them, by role

    def setup(self) -> None:
        self.frame_class: type[TextFrame] = BotTextFrame if self.params.role == "bot" else UserTextFrame
        # Per node, so validation checks its edges against the one kind it sends.
        self.produces = (self.frame_class,)  # type: ignore[misc]

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None

    async def generate(self) -> AsyncIterator[Frame]:
        for index, text in enumerate(self.params.texts):
            if index and self.params.interval > 0:
                await asyncio.sleep(self.params.interval)
            yield self.frame_class(text=text)


class TranscriptSource(Source):
    """Sends user utterances as an STT would: optional interim transcripts, then a final one each."""

    type_name = "source.transcripts"
    Params = TranscriptParams
    params: TranscriptParams
    produces = (InterimTranscriptFrame, TranscriptFrame)

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None

    async def generate(self) -> AsyncIterator[Frame]:
        p = self.params
        for index, text in enumerate(p.transcripts):
            if index and p.interval > 0:
                await asyncio.sleep(p.interval)
            if p.interim:
                words = text.split()
                for count in range(1, len(words) + 1):
                    yield InterimTranscriptFrame(text=" ".join(words[:count]), language=p.language)
            yield TranscriptFrame(text=text, language=p.language)
