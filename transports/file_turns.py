"""``file.turns``: a patient caller made of audio files — for headless conversations, tests and benchmarks.

Each file is one user turn. After a turn it plays ``pause`` seconds of silence (so the VAD sees the
end of speech), then waits until the bot has answered — it listens for the playing transport's
``Bot*SpeakingFrame``s, which travel upstream to it — before it speaks again. With ``barge_in_after``
it instead starts the next turn that many seconds into the bot's reply, to exercise barge-in.

In real time (``realtime: true``) silence keeps flowing while it waits, like a live microphone; as
fast as possible (the default) it simply waits, so a conversation takes only as long as the models.

No answer can come to a turn the VAD hears no speech in, so it does not wait for one: at the start it
runs each file through a fresh copy of the first ``vad.*`` node downstream (same engine, same params,
same start rule). When no turn holds speech, or the bot answered none, it fails once the input has
been said (``NoSpeechError`` / ``NoAnswerError``: ``python -m pipeline run`` exits 1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soxr

from pipeline.audiofile import AudioFileError, probe_audio, read_audio
from pipeline.errors import FatalProcessorError, Problem
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    UserAudioFrame,
)
from pipeline.params import param
from pipeline.processor import Source
from pipeline.sources import FramePacer
from pipeline.topology import nearest_of
from processors.vad.base import VadProcessor
from transports.utterance_files import NoSpeechError

__all__ = ["FileTurns", "FileTurnsParams", "NoAnswerError"]

log = logging.getLogger("transports.file_turns")


@dataclass(slots=True, kw_only=True)
class FileTurnsParams:
    """Which files to say and how to wait between them."""

    paths: list[str] = param(
        check=bool,
        fix="list at least one audio file",
        doc="audio files (WAV, FLAC, MP3, Ogg…), one user turn each, said in order",
    )
    frame_ms: int = param(20, doc="audio per frame in milliseconds")
    realtime: bool = param(
        False, doc="pace like a microphone (barge-in needs it); false = as fast as it goes"
    )
    pause: float = param(1.2, doc="seconds of silence after each turn; longer than the VAD's stop_secs")
    wait_for_reply: bool = param(True, doc="wait for the bot to finish answering before the next turn")
    reply_timeout: float = param(60.0, doc="longest wait for an answer before going on anyway (seconds)")
    barge_in_after: float | None = param(
        None, doc="start the next turn this many seconds after the bot starts speaking (barge-in)"
    )


class FileTurns(Source):
    """Says each audio file as a user turn and waits for the bot's answer in between."""

    Params = FileTurnsParams
    params: FileTurnsParams
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (BotStartedSpeakingFrame, BotStoppedSpeakingFrame)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._turns: list[bytes] = []
        self._format: AudioFormat | None = None
        self._bot_started = asyncio.Event()
        self._bot_stopped = asyncio.Event()
        self.replies_missed = 0
        """Turns after which no answer came within ``reply_timeout``."""
        self.speech: list[bool] | None = None
        """Per turn, whether the VAD downstream finds speech in it (None: no VAD, or not waiting)."""
        self._vad_name = ""

    def check(self) -> list[Problem]:
        problems = []
        for path in self.params.paths:
            try:
                probe_audio(Path(path))
            except AudioFileError as error:
                problems.append(Problem(str(error), error.fix, self.name, "paths"))
        return problems

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        try:
            return probe_audio(Path(self.params.paths[0]))
        except (AudioFileError, IndexError):
            return None

    async def on_start(self) -> None:
        self._turns = []
        for path in self.params.paths:
            fmt, pcm = await self.run_in_thread(read_audio, Path(path))
            if self._format is None:
                self._format = fmt
            self._turns.append(await self.run_in_thread(_convert, pcm, fmt, self._format))
        vad = nearest_of(VadProcessor, self._downstream, "downstream") if self.params.wait_for_reply else None
        if vad is not None and self._format is not None:
            self._vad_name = f"{vad.name} ({vad.type_name or type(vad).__name__})"
            self.speech = await _speech_in_turns(vad, self._turns, self._format)

    async def process_upstream(self, frame: Frame) -> None:
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_started.set()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_stopped.set()

    async def generate(self) -> AsyncIterator[Frame]:
        fmt = self._format
        if fmt is None:
            return
        p = self.params
        size = 2 * fmt.channels * fmt.sample_rate * p.frame_ms // 1000
        silence = bytes(size)
        pacer = FramePacer(p.frame_ms, p.realtime)
        for index, pcm in enumerate(self._turns):
            self._bot_started.clear()
            self._bot_stopped.clear()
            padded = pcm + silence[: (-len(pcm)) % size] + bytes(size * round(p.pause * 1000 / p.frame_ms))
            for offset in range(0, len(padded), size):
                await pacer.wait()
                yield UserAudioFrame(
                    pcm=padded[offset : offset + size], sample_rate=fmt.sample_rate, channels=fmt.channels
                )
            if not p.wait_for_reply:
                continue
            if self.speech is not None and not self.speech[index]:
                path = p.paths[index]
                log.warning(
                    "%s: %s finds no speech in %s; not waiting for an answer", self.name, self._vad_name, path
                )
                continue
            last = index == len(self._turns) - 1
            barge_in = p.barge_in_after is not None and not last
            async for frame in self._wait_for_reply(pacer, silence, fmt, barge_in):
                yield frame
        self._check_outcome(fmt)

    def _check_outcome(self, fmt: AudioFormat) -> None:
        """Fail when the input held nothing to answer, or nothing was answered: nothing was produced."""
        p = self.params
        if self.speech is not None and not any(self.speech):
            seconds = sum(len(pcm) for pcm in self._turns) / (2 * fmt.channels * fmt.sample_rate)
            raise NoSpeechError(
                f"no speech found in the input: {self._vad_name} finds none in {', '.join(p.paths)} "
                f"({seconds:.2f} s), so there is nothing to answer. If the files do hold speech, lower "
                "the VAD's threshold (or start_secs)"
            )
        waited = len(self._turns) if self.speech is None else sum(self.speech)
        if p.wait_for_reply and p.barge_in_after is None and waited and self.replies_missed == waited:
            raise NoAnswerError(
                f"no answer to any of the {waited} turn(s) within reply_timeout ({p.reply_timeout:g} s); "
                "check the errors above, or raise reply_timeout if the models are slow"
            )

    async def _wait_for_reply(
        self, pacer: FramePacer, silence: bytes, fmt: AudioFormat, barge_in: bool
    ) -> AsyncIterator[Frame]:
        """Silence (in real time) until the bot answered, or ``barge_in_after`` into its answer."""
        p = self.params
        loop = asyncio.get_running_loop()
        deadline = loop.time() + p.reply_timeout
        started_at: float | None = None
        while True:
            if started_at is None and self._bot_started.is_set():
                started_at = loop.time()
            if barge_in and started_at is not None and loop.time() - started_at >= (p.barge_in_after or 0):
                return
            if not barge_in and self._bot_stopped.is_set():
                return
            if loop.time() >= deadline:
                self.replies_missed += 1
                log.warning("%s: no answer within %.0f s; going on", self.name, p.reply_timeout)
                return
            if p.realtime:
                await pacer.wait()
                yield UserAudioFrame(pcm=silence, sample_rate=fmt.sample_rate, channels=fmt.channels)
            elif barge_in and started_at is not None:
                await asyncio.sleep(started_at + (p.barge_in_after or 0) - loop.time())
            else:
                waits = [asyncio.ensure_future(self._bot_stopped.wait())]
                if started_at is None:
                    waits.append(asyncio.ensure_future(self._bot_started.wait()))
                try:
                    await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()))
                finally:  # also when the source is cancelled while waiting: no waiter outlives it
                    for task in waits:
                        task.cancel()


class NoAnswerError(FatalProcessorError):
    """The caller said its turns and the bot answered none of them."""


async def _speech_in_turns(vad: VadProcessor, turns: list[bytes], fmt: AudioFormat) -> list[bool]:
    """Whether ``vad`` finds speech in each turn, judged by a fresh node of its type and params so
    the live node's state is untouched (its engine loads in ~20 ms; judging runs in a thread)."""
    probe = type(vad)(vad.params, name=f"{vad.name}-check")
    await probe.on_start()
    try:
        return await asyncio.to_thread(lambda: [_has_speech(probe, pcm, fmt) for pcm in turns])
    finally:
        await probe.on_stop()


def _has_speech(vad: VadProcessor, pcm: bytes, fmt: AudioFormat) -> bool:
    """The VAD's start rule: a run of speech windows lasting ``start_secs`` (plus the engine's lag)."""
    target = vad.accepts_audio.closest(fmt)
    samples = _convert(pcm, fmt, target)
    rate, width = target.sample_rate, 2 * target.channels
    window = vad.window_samples(rate) * width
    needed = vad.params.start_secs + vad.start_lag() - 1e-9
    begin, _ = vad.thresholds()
    vad.reset_engine()
    run = 0
    for offset in range(0, len(samples) - window + 1, window):
        run = run + 1 if vad.speech_probability(samples[offset : offset + window], rate) >= begin else 0
        if run and run * window / width / rate >= needed:
            return True
    return False


def _convert(pcm: bytes, fmt: AudioFormat, target: AudioFormat) -> bytes:
    """Bring a later file to the first file's rate and channels (one-shot soxr, mono mix)."""
    if fmt == target:
        return pcm
    samples = np.frombuffer(pcm, dtype=np.int16).reshape(-1, fmt.channels).mean(axis=1)
    if fmt.sample_rate != target.sample_rate:
        samples = soxr.resample(samples, fmt.sample_rate, target.sample_rate)
    mono = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
    return np.repeat(mono, target.channels).tobytes() if target.channels > 1 else mono.tobytes()
