"""``file.utterances``: write each utterance a VAD finds to its own WAV file, then print a summary.

A sink for splitting recordings (``configs/vad-split.yaml``): put a ``vad.*`` node in front of it.
Cutting is ``pipeline.utterances.UtteranceCollector``'s job, aligned on the VAD's ``stream_time``, with
``pre_roll`` before each start so the first syllable is kept and ``post_roll`` after each stop. Files
are named ``<prefix>-001.wav``, ``<prefix>-002.wav``… in ``directory`` (created if missing; files of
the same name are replaced) and written in a worker thread as each utterance completes. At the end
one line per file goes to stdout — index, start-end in the stream, duration, path — then the totals.
When nothing was written the node fails (``NoSpeechError``, so ``python -m pipeline run`` exits 1):
a batch job must not mistake a silent or noise-only recording for a split one.
"""

from __future__ import annotations

import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import FatalProcessorError, Problem
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    Frame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from pipeline.topology import nearest_of
from pipeline.utterances import Utterance, UtteranceCollector
from processors.vad.base import VadProcessor

__all__ = ["NoSpeechError", "UtteranceFiles", "WrittenUtterance"]


class NoSpeechError(FatalProcessorError):
    """The input ended and nothing was produced from it, because no speech was found in it."""


@dataclass(slots=True, kw_only=True)
class UtteranceFilesParams:
    """Params of ``file.utterances``."""

    directory: str = param("utterances", doc="folder for the WAV files (created if missing)")
    prefix: str = param(
        "utterance",
        check=lambda prefix: bool(prefix) and "/" not in prefix,
        fix="use a plain file name, e.g. utterance",
        doc="file names are <prefix>-001.wav, <prefix>-002.wav, …",
    )
    pre_roll: float = param(
        0.3, ge=0, doc="seconds kept before each start of speech, so the first syllable is whole"
    )
    post_roll: float = param(0.15, ge=0, doc="seconds kept after each end of speech")
    min_duration: float = param(
        0.25,
        ge=0,
        doc="utterances with less speech than this (seconds, rolls excluded) are dropped as clicks",
    )


@dataclass(frozen=True, slots=True)
class WrittenUtterance:
    """One file written: where its audio sat in the stream and how much of it the VAD called speech."""

    index: int
    path: Path
    start: float
    end: float
    speech: float


class UtteranceFiles(Processor):
    """Writes one WAV file per utterance (between a VAD's start and stop) and prints a summary."""

    type_name = "file.utterances"
    Params: ClassVar[type[Any]] = UtteranceFilesParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )

    params: UtteranceFilesParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self._collector = UtteranceCollector(pre_roll=p.pre_roll, post_roll=p.post_roll)
        self._spans: list[list[float | None]] = []  # [start, stop or None] of speech, from the VAD
        self._speaking_frames = 0
        self.written: list[WrittenUtterance] = []
        """The files written so far, in order."""
        self.dropped = 0
        """Utterances with less than ``min_duration`` of speech."""

    def check(self) -> list[Problem]:
        directory = Path(self.params.directory)
        if directory.exists() and not directory.is_dir():
            return [Problem(f"'{directory}' is a file", "name a folder", self.name, "directory")]
        return []

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None  # a sink

    async def on_start(self) -> None:
        await self.run_in_thread(lambda: Path(self.params.directory).mkdir(parents=True, exist_ok=True))

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):  # the user's: the bot's voice passes by (handles)
            done = self._collector.add_audio(frame)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._speaking_frames += 1
            if not self._spans or self._spans[-1][1] is not None:
                self._spans.append([frame.stream_time, None])
            done = self._collector.speech_started(frame)
        else:
            assert isinstance(frame, UserStoppedSpeakingFrame)
            self._speaking_frames += 1
            if self._spans and self._spans[-1][1] is None:
                self._spans[-1][1] = frame.stream_time
            done = self._collector.speech_stopped(frame)
        for utterance in done:
            await self._write(utterance)

    async def on_stop(self) -> None:
        if not (self.ended or self.inbox.closed):  # a graceful end: the utterance in progress is kept
            for utterance in self._collector.flush():
                await self._write(utterance)
        self._print_summary()
        if not self.written and not (self.ended or self.inbox.closed):
            raise NoSpeechError(self._nothing_written())

    async def _write(self, utterance: Utterance) -> None:
        speech = self._speech_in(utterance)
        if speech < self.params.min_duration:
            self.dropped += 1
            return
        index = len(self.written) + 1
        path = Path(self.params.directory) / f"{self.params.prefix}-{index:03d}.wav"
        await self.run_in_thread(_write_wav, path, utterance)
        self.written.append(WrittenUtterance(index, path, utterance.start, utterance.end, speech))

    def _speech_in(self, utterance: Utterance) -> float:
        """Seconds the VAD called speech inside ``utterance``; spans it used up are forgotten."""
        total = 0.0
        for start, stop in self._spans:
            assert start is not None
            end = utterance.end if stop is None else min(stop, utterance.end)
            total += max(0.0, end - max(start, utterance.start))
        self._spans = [s for s in self._spans if s[1] is None or s[1] > utterance.end]
        return total

    def _print_summary(self) -> None:
        lines = [f"[{self.name}] utterances in {self.params.directory}/:"]
        for item in self.written:
            duration = item.end - item.start
            lines.append(
                f"  {item.index:3d}  {item.start:8.2f} - {item.end:8.2f} s  {duration:6.2f} s  {item.path}"
            )
        total = sum(item.end - item.start for item in self.written)
        count = len(self.written)
        lines.append(
            f"  {count} utterance{'s' if count != 1 else ''}, {total:.2f} s written, "
            f"from {self._collector.stream_time:.2f} s of audio"
            + (f"; {self.dropped} shorter than min_duration dropped" if self.dropped else "")
        )
        print("\n".join(lines), file=sys.stdout, flush=True)

    def _nothing_written(self) -> str:
        """Why no file was written, and what to try."""
        seconds = f"{self._collector.stream_time:.2f} s of audio"
        if self.dropped:
            return (
                f"nothing written: the {self.dropped} utterance(s) found in {seconds} were all shorter "
                f"than min_duration ({self.params.min_duration} s); lower min_duration to keep them"
            )
        if not self._speaking_frames and nearest_of(VadProcessor, self._upstream, "upstream") is None:
            return (
                f"nothing written: no speaking frames arrived with the {seconds}; "
                "put a vad.silero or vad.webrtc node in front of this one"
            )
        return (
            f"no speech found in {seconds}: nothing written. If the input does hold speech, "
            "lower the VAD's threshold (or start_secs)"
        )


def _write_wav(path: Path, utterance: Utterance) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(utterance.channels)
        wav.setsampwidth(2)
        wav.setframerate(utterance.sample_rate)
        wav.writeframes(utterance.pcm)
