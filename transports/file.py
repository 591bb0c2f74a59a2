"""File transports: play a recording into a graph (``file.input``) and write what comes out (``file.output``).

They stand in for a microphone and a speaker, so a conversation graph runs on recorded calls, in tests
and in batch jobs. ``file.input`` reads any file ``pipeline.audiofile`` decodes (WAV of any encoding,
FLAC, MP3, Ogg, AIFF) or raw s16le PCM block by block in a worker thread, one block ahead, so a long
file neither loads into memory nor blocks the loop. ``file.output`` plays bot audio through ``Playout``
exactly as a live transport does (speaking frames and spoken text go upstream), so a graph behaves
the same on files and on calls.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.audiofile import SUPPORTED, AudioFileError, AudioReader, UnknownAudioFormatError, open_audio
from pipeline.errors import Problem, ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import AudioFrame, BotAudioFrame, Frame, TTSStoppedFrame, TTSTextFrame, UserAudioFrame
from pipeline.params import param
from pipeline.processor import Processor, Source
from pipeline.sources import FramePacer, frame_ms_problem, samples_per_frame
from pipeline.wavfile import FormatConverter, WavWriter
from transports.playout import Playout

__all__ = ["FileInput", "FileOutput"]

_RAW_EXTENSIONS = (".raw", ".pcm", ".s16", ".s16le")
_READ_AHEAD = 0.5  # seconds of audio decoded per block in the worker thread


@dataclass(slots=True, kw_only=True)
class FileInputParams:
    """Params of ``file.input``."""

    path: str = param(doc="audio file to play: WAV, FLAC, MP3, Ogg, AIFF, or raw s16le PCM (.raw/.pcm)")
    format: Literal["auto", "wav", "flac", "raw"] = param(
        "auto", doc="raw = headerless s16le PCM (auto: by a .raw/.pcm extension); else read from the file"
    )
    sample_rate: int | None = param(
        None, ge=1, doc="raw PCM: samples per second (required); other files: must match the file if set"
    )
    channels: int | None = param(
        None,
        ge=1,
        le=8,
        doc="raw PCM: interleaved channels (required); other files: must match the file if set",
    )
    frame_ms: int = param(20, doc="audio per frame in milliseconds; must come to a whole number of samples")
    realtime: bool = param(
        False, doc="pace frames like a microphone (wall-clock speed); false = as fast as the graph takes them"
    )
    leading_silence: float = param(0.0, ge=0, doc="seconds of silence before the file")
    trailing_silence: float = param(
        0.0, ge=0, doc="seconds of silence after the file, so the end of speech is seen"
    )


def _open(path: Path, params: FileInputParams) -> AudioReader:
    """Open ``path`` for decoding; ``AudioFileError`` says what is wrong and how to fix it."""
    raw = params.format == "raw" or (params.format == "auto" and path.suffix.lower() in _RAW_EXTENSIONS)
    if not raw:
        try:
            return open_audio(path)
        except UnknownAudioFormatError as error:
            raise AudioFileError(
                str(error),
                f"use a file in one of: {SUPPORTED}; for headerless s16le PCM set format: raw "
                "(with sample_rate and channels)",
                key="format",
            ) from None
    if params.sample_rate is None or params.channels is None:
        raise AudioFileError(
            f"'{path}' is raw PCM: its sample rate and channels are not in the file",
            "add sample_rate and channels to the node (e.g. sample_rate: 16000, channels: 1)",
            key="sample_rate" if params.sample_rate is None else "channels",
        )
    return open_audio(path, raw=AudioFormat(params.sample_rate, params.channels))


def _probe(path: Path, params: FileInputParams) -> AudioFormat:
    """The format the file plays in (opens just the header)."""
    with _open(path, params) as reader:
        return reader.format


class FileInput(Source):
    """Plays an audio file into the graph at its own rate and channels (add ``audio.resample`` if needed)."""

    type_name = "file.input"
    Params = FileInputParams
    params: FileInputParams
    produces = (AudioFrame,)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._decoder: AudioReader | None = None
        self._reading: asyncio.Future[bytes] | None = None  # the block being decoded in a thread

    def check(self) -> list[Problem]:
        """The file must exist and be readable in a format ``frame_ms`` divides, before anything runs."""
        try:
            fmt = _probe(Path(self.params.path), self.params)
        except AudioFileError as error:
            return [Problem(str(error), error.fix, self.name, error.key)]
        return self._format_problems(fmt)

    def _format_problems(self, fmt: AudioFormat) -> list[Problem]:
        p = self.params
        problems = []
        for key, given, actual in (
            ("sample_rate", p.sample_rate, fmt.sample_rate),
            ("channels", p.channels, fmt.channels),
        ):
            if given is not None and given != actual:
                message = f"{key} is {given} but '{p.path}' has {actual}"
                problems.append(
                    Problem(message, f"remove {key} (the file says it), or fix it", self.name, key)
                )
        if samples_per_frame(fmt.sample_rate, p.frame_ms) is None:
            problems.append(frame_ms_problem(fmt.sample_rate, p.frame_ms, self.name))
        return problems

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        """Read from the file's header, so negotiation knows the real rate; None if unreadable."""
        try:
            return _probe(Path(self.params.path), self.params)
        except AudioFileError:
            return None

    async def on_start(self) -> None:
        decoder = await self.run_in_thread(_open, Path(self.params.path), self.params)
        problems = self._format_problems(decoder.format)
        if problems:
            decoder.close()
            raise ValidationError(problems)
        self._decoder = decoder

    async def generate(self) -> AsyncIterator[Frame]:
        decoder = self._decoder
        if decoder is None:
            return
        p = self.params
        fmt = decoder.format
        samples = samples_per_frame(fmt.sample_rate, p.frame_ms) or 0
        pacer = FramePacer(p.frame_ms, p.realtime)
        try:
            async for pcm in self._chunks(decoder, samples):
                await pacer.wait()
                yield UserAudioFrame(pcm=pcm, sample_rate=fmt.sample_rate, channels=fmt.channels)
        finally:
            self._close()

    async def on_stop(self) -> None:
        self._close()

    async def _chunks(self, decoder: AudioReader, samples: int) -> AsyncIterator[bytes]:
        """Whole frames: leading silence, the file (last frame padded), trailing silence."""
        fmt = decoder.format
        size = 2 * samples * fmt.channels
        silence = bytes(size)
        for _ in range(_frames_for(self.params.leading_silence, fmt.sample_rate, samples)):
            yield silence
        block = samples * max(1, round(_READ_AHEAD * 1000 / self.params.frame_ms))
        pending = buffer = b""
        self._reading = asyncio.ensure_future(self.run_in_thread(decoder.read, block))
        while self._reading is not None:
            # Shielded: a cancelled read must not let the file close under the thread still reading.
            data = await asyncio.shield(self._reading)
            self._reading = asyncio.ensure_future(self.run_in_thread(decoder.read, block)) if data else None
            buffer = pending + data
            whole = len(buffer) - len(buffer) % size
            for offset in range(0, whole, size):
                yield buffer[offset : offset + size]
            pending = buffer[whole:]
        if pending:
            yield pending + bytes(size - len(pending))
        for _ in range(_frames_for(self.params.trailing_silence, fmt.sample_rate, samples)):
            yield silence

    def _close(self) -> None:
        """Close the file once no thread reads it any more."""
        decoder, reading = self._decoder, self._reading
        self._decoder = self._reading = None
        if decoder is None:
            return
        if reading is None or reading.done():
            decoder.close()
        else:
            reading.add_done_callback(lambda done: _close_after(done, decoder))


def _close_after(read: asyncio.Future[bytes], decoder: AudioReader) -> None:
    if not read.cancelled():
        read.exception()  # retrieved: it no longer matters once the source has stopped
    decoder.close()


def _frames_for(seconds: float, rate: int, samples: int) -> int:
    """Whole frames covering ``seconds`` of audio."""
    return math.ceil(round(seconds * rate) / samples) if seconds > 0 else 0


@dataclass(slots=True, kw_only=True)
class FileOutputParams:
    """Params of ``file.output``."""

    path: str = param(doc="WAV file to write (replaced if it exists; missing folders are created)")
    audio: Literal["bot", "user", "any"] = param(
        "any", doc="what to write: bot = TTS audio, user = other audio, any = all audio frames"
    )
    realtime: bool = param(
        False, doc="play bot audio at wall-clock speed like a speaker; false = write it as it comes"
    )


class FileOutput(Processor):
    """Writes the audio that reaches it to a WAV file, as an output transport would play it.

    The file takes the format of the first frame; later frames in another format are resampled to
    it. Bot audio goes through ``Playout``, so the graph hears ``BotStarted/StoppedSpeaking`` and
    ``SpokenTextFrame`` upstream and an interruption stops the reply, exactly as on a live call.
    Audio it writes stops here; every other frame passes on.
    """

    type_name = "file.output"
    Params = FileOutputParams
    params: FileOutputParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, TTSTextFrame, TTSStoppedFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, TTSTextFrame)
    """Passed on: TTS text, and the audio that ``audio`` does not select."""

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._playout = Playout(self, realtime=self.params.realtime)
        self._writer: WavWriter | None = None
        self._converters: dict[AudioFormat, FormatConverter] = {}

    def check(self) -> list[Problem]:
        """A path that names a folder cannot be written as a file."""
        if Path(self.params.path).is_dir():
            return [
                Problem(
                    f"'{self.params.path}' is a folder", "give a file name, e.g. out.wav", self.name, "path"
                )
            ]
        return []

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        """Audio it does not write passes on; with ``audio: any`` nothing does."""
        return None if self.params.audio == "any" else incoming

    @property
    def plays_bot(self) -> bool:
        """Whether TTS audio is written (and reported as played)."""
        return self.params.audio != "user"

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, BotAudioFrame):
            if self.plays_bot:
                await self._playout.audio(frame, self._write)
                return
        elif isinstance(frame, AudioFrame):
            if self.params.audio != "bot":
                await self._write(frame)
                return
        elif isinstance(frame, TTSTextFrame):
            if self.plays_bot:
                await self._playout.text(frame)
        elif isinstance(frame, TTSStoppedFrame) and self.plays_bot:
            await self._playout.finished()
        await self.push(frame)

    async def on_interrupt(self) -> None:
        self._playout.interrupted()

    async def on_stop(self) -> None:
        cancelled = self.ended or self.inbox.closed
        await self._playout.close(drain=not cancelled)  # a graceful end writes all queued bot audio
        writer = self._writer
        if writer is None:
            return
        for converter in self._converters.values():
            await writer.write(converter.flush())
        self._converters.clear()
        await writer.close()

    async def _write(self, frame: AudioFrame) -> None:
        fmt = AudioFormat(frame.sample_rate, frame.channels)
        writer = self._writer
        if writer is None:
            path = Path(self.params.path)
            await self.run_in_thread(lambda: path.parent.mkdir(parents=True, exist_ok=True))
            writer = self._writer = await WavWriter.open(path, fmt.sample_rate, fmt.channels)
        pcm = frame.pcm
        target = AudioFormat(writer.sample_rate, writer.channels)
        if fmt != target:
            converter = self._converters.get(fmt)
            if converter is None:
                converter = self._converters[fmt] = FormatConverter(fmt, target)
            pcm = converter.convert(pcm)
        await writer.write(pcm)
