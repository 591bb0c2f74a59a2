"""``stt.pocketsphinx``: streaming offline recognition with native interim results (PocketSphinx 5).

Unlike Whisper, PocketSphinx decodes as the audio arrives, so the final transcript is ready almost as
soon as speech ends, and partial hypotheses come for free. It is much less accurate (see
``benchmarks/wer.py``): a fallback for very small machines, or where interims matter more than words.

Audio flows through unchanged. Decoding (~0.33 real-time factor) runs in a thread, fed by one
background task through a bounded queue, so audio passes on without waiting for the decoder and the
decoder sees the audio in order; audio queued while it works is decoded in one batch.

Segmentation: the VAD's speaking frames, aligned on ``stream_time`` by
``pipeline.utterances.UtteranceCollector`` (as for ``UtteranceSTT``): a start frame that comes late
still gets ``pre_roll`` of earlier audio, and frames that overtook their audio cut where the VAD meant.
The utterance in progress is fed to the decoder as its audio arrives. Until the first speaking frame
arrives, PocketSphinx's own endpointer segments the stream, so a graph without a VAD
(``source.wav -> stt.pocketsphinx``) still gets one transcript per utterance; the first speaking
frame hands segmentation to the VAD for good.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import FatalProcessorError, Problem
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from pipeline.utterances import Utterance, UtteranceCollector
from processors.models import IdleEngines

__all__ = ["PocketsphinxParams", "PocketsphinxSTT"]

log = logging.getLogger("processors.stt.pocketsphinx")

RATE = 16000
COMMAND_QUEUE = 64
"""Decoder commands (mostly 20 ms audio chunks) waiting; beyond that audio intake waits for the decoder."""
_FILLER = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+|\(NULL\))$")
_VARIANT = re.compile(r"\(\d+\)$")  # "was(2)": the second pronunciation of "was"
_IDLE_DECODERS = IdleEngines(max_idle=2)
"""Decoders of ended sessions, for the next ones (one per session at a time: they hold its utterance)."""


@dataclass(slots=True, kw_only=True)
class PocketsphinxParams:
    """Params of ``stt.pocketsphinx``."""

    pre_roll: float = param(0.3, ge=0, doc="seconds of audio decoded from before the VAD's speech start")
    post_roll: float = param(0.15, ge=0, doc="seconds of audio decoded after the VAD's speech end")
    max_utterance: float = param(30.0, gt=0, doc="seconds after which a run-on utterance is finalised")
    interim: bool = param(True, doc="send an interim transcript whenever the hypothesis changes")
    fwdflat: bool = param(
        False, doc="second decoding pass at the end: off = final ~20x sooner (and here no less accurate)"
    )
    bestpath: bool = param(False, doc="lattice best-path search: off = much cheaper interims")
    hmm: str | None = param(None, doc="acoustic model folder; null = the US English model in the wheel")
    lm: str | None = param(None, doc="language model file; null = the wheel's US English model")
    dictionary: str | None = param(None, doc="pronunciation dictionary; null = the wheel's CMUdict")


@dataclass(slots=True)
class _Start:
    pcm: bytes  # the pre-roll and whatever arrived of the utterance so far


@dataclass(slots=True)
class _Audio:
    pcm: bytes


@dataclass(slots=True)
class _End:
    closed_at: float  # perf_counter when the end was known: ttfb counts from here


@dataclass(slots=True)
class _Abort:
    """Drop the utterance in progress without a transcript."""


_Command = _Start | _Audio | _End | _Abort | None  # None: no more commands


@dataclass(slots=True)
class _DecoderState:
    """The decoder task's view of the utterance it is decoding."""

    open: bool = False
    last_interim: str = ""
    busy: float = 0.0  # seconds spent decoding this utterance (the "processing" metric)


class PocketsphinxSTT(Processor[PocketsphinxParams]):
    """Streams user audio into a PocketSphinx decoder: interims while speaking, a final at the end."""

    type_name = "stt.pocketsphinx"
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, InterimTranscriptFrame, TranscriptFrame)
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(RATE, 1)

    def setup(self) -> None:
        p = self.params
        self._decoder: Any = None
        self._decoder_key: Hashable = ()  # the options it was built with (idle decoders are kept by them)
        self._endpointer: Any = None  # until the first speaking frame; None after
        self._ep_buffer = bytearray()
        self._commands: asyncio.Queue[_Command] = asyncio.Queue(maxsize=COMMAND_QUEUE)
        self._decoding: asyncio.Task[bool] | None = None
        # Stream side: the VAD's utterances, and how much of the one in progress the decoder has.
        self._collector = UtteranceCollector(p.pre_roll, p.post_roll, p.max_utterance)
        self._fed: int | None = None  # bytes of the collector's open utterance sent; None: not begun
        self._stop_arrival: float | None = None  # perf_counter of the stop that closes the open one
        self._resampler: Any = None  # only when audio arrives in another format (run without negotiation)

    def check(self) -> list[Problem]:
        import importlib.util

        if importlib.util.find_spec("pocketsphinx") is None:
            return [Problem("pocketsphinx is not installed", "pip install 'voxgraph[offline]'", self.name)]
        p = self.params
        return [
            Problem(
                f"{key} '{value}' does not exist",
                fix="fix the path or set it to null",
                node=self.name,
                key=key,
            )
            for key, value in (("hmm", p.hmm), ("lm", p.lm), ("dictionary", p.dictionary))
            if value is not None and not Path(value).expanduser().exists()
        ]

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming  # audio passes through

    async def on_start(self) -> None:
        self._decoder_key, self._decoder, self._endpointer = await self.run_in_thread(self._load)
        self._decoding = asyncio.create_task(self._decode(), name=f"stt:{self.name}")

    def _load(self) -> tuple[Hashable, Any, Any]:
        from pocketsphinx import Decoder, Endpointer

        p = self.params
        options: dict[str, Any] = {"loglevel": "FATAL", "fwdflat": p.fwdflat, "bestpath": p.bestpath}
        for key, value in (("hmm", p.hmm), ("lm", p.lm), ("dict", p.dictionary)):
            if value is not None:  # passing None would switch the bundled model off
                options[key] = str(Path(value).expanduser())
        decoder_key = tuple(sorted(options.items()))
        decoder = _IDLE_DECODERS.take(decoder_key)
        if decoder is None:
            try:
                decoder = Decoder(**options)
            except Exception as error:
                raise FatalProcessorError(f"cannot load the PocketSphinx model: {error}") from error
        return decoder_key, decoder, Endpointer(sample_rate=RATE)

    # --- stream side (the worker) ----------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):  # the user's: the bot's voice passes by (handles)
            await self._audio(frame)
        elif isinstance(frame, UserStartedSpeakingFrame):
            await self._vad_found()
            await self._feed_utterances(self._collector.speech_started(frame))
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._vad_found()
            if self._collector.in_speech:
                self._stop_arrival = time.perf_counter()  # ttfb counts from here
            await self._feed_utterances(self._collector.speech_stopped(frame))
        await self.push(frame)

    async def _audio(self, frame: AudioFrame) -> None:
        pcm = self._as_16k_mono(frame)
        if pcm is not frame.pcm:
            frame = UserAudioFrame(pcm=pcm, sample_rate=RATE, channels=1)
        done = self._collector.add_audio(frame)  # also without a VAD: the pre-roll once one speaks
        if self._endpointer is not None:
            await self._endpoint(pcm)
        else:
            await self._feed_utterances(done)

    async def _feed_utterances(self, done: list[Utterance]) -> None:
        """Finish the utterances the collector completed, then feed the decoder what arrived of the
        one in progress: the decoder works while the user speaks, so the final comes right after."""
        for utterance in done:  # the first is the one being fed, if any: the collector keeps order
            fed, self._fed = self._fed, None
            if fed is None:
                await self._send(_Start(utterance.pcm))
            elif len(utterance.pcm) > fed:
                await self._send(_Audio(utterance.pcm[fed:]))
            closed_at, self._stop_arrival = self._stop_arrival or time.perf_counter(), None
            await self._send(_End(closed_at))
        if not self._collector.in_speech:
            return
        pcm = self._collector.open_audio()
        if self._fed is None:
            if pcm:
                await self._send(_Start(pcm))
                self._fed = len(pcm)
        elif len(pcm) > self._fed:
            await self._send(_Audio(pcm[self._fed :]))
            self._fed = len(pcm)

    async def _endpoint(self, pcm: bytes) -> None:
        """No VAD so far: PocketSphinx's endpointer decides where utterances start and end."""
        endpointer = self._endpointer
        self._ep_buffer += pcm
        size = endpointer.frame_bytes
        while len(self._ep_buffer) >= size:
            chunk = bytes(self._ep_buffer[:size])
            del self._ep_buffer[:size]
            was_speaking = endpointer.in_speech
            speech = endpointer.process(chunk)
            if speech is None:
                continue
            await self._send(_Audio(speech) if was_speaking else _Start(speech))
            if not endpointer.in_speech:
                await self._send(_End(time.perf_counter()))

    async def _vad_found(self) -> None:
        """A speaking frame: the VAD segments from now on; an endpointer utterance is dropped."""
        if self._endpointer is None:
            return
        if self._endpointer.in_speech:
            await self._send(_Abort())
        self._endpointer = None
        self._ep_buffer.clear()

    async def _send(self, command: _Command) -> None:
        if not self._commands.full():
            self._commands.put_nowait(command)
        else:
            await self._commands.put(command)

    def _as_16k_mono(self, frame: AudioFrame) -> bytes:
        if frame.sample_rate == RATE and frame.channels == 1:
            return frame.pcm
        import soxr

        samples = np.frombuffer(frame.pcm, dtype="<i2").reshape(-1, frame.channels)
        mono = samples.mean(axis=1).astype(np.float32) / 32768.0
        if frame.sample_rate != RATE:
            if self._resampler is None or self._resampler[0] != frame.sample_rate:
                self._resampler = (
                    frame.sample_rate,
                    soxr.ResampleStream(frame.sample_rate, RATE, 1, "float32"),
                )
            mono = self._resampler[1].resample_chunk(mono)
        pcm: bytes = (np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return pcm

    async def on_stop(self) -> None:
        reusable = False
        try:
            reusable = await self._finish_decoding()
        finally:
            # The decoder is ~35 MB of model and search state: the next session gets it, or it goes
            # now, not when this processor happens to be collected.
            if reusable:
                _IDLE_DECODERS.give_back(self._decoder_key, self._decoder)
            self._decoding = self._decoder = self._endpointer = self._resampler = None
            self._collector.reset()
            self._ep_buffer.clear()

    async def _finish_decoding(self) -> bool:
        """Decode what is queued and send the last transcript; after a cancel, just stop.

        True: the decoder is idle between utterances and no thread uses it (another session may).
        """
        task = self._decoding
        if self.ended or self.inbox.closed or task is None:  # cancelled: nobody waits for transcripts
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
            return False  # a thread may still be decoding: the decoder goes with it
        try:
            if self._endpointer is not None:
                if self._endpointer.in_speech:
                    rest = self._endpointer.end_stream(bytes(self._ep_buffer[: self._endpointer.frame_bytes]))
                    if rest:
                        await self._send(_Audio(rest))
                    await self._send(_End(time.perf_counter()))
            else:
                await self._feed_utterances(self._collector.flush())
            await self._send(None)
            return await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    # --- decoder side (one background task, the decoder itself in a thread) ----------------------

    async def _decode(self) -> bool:
        """Run the commands until None; True if the decoder ended between utterances, never failed."""
        state = _DecoderState()
        ahead: deque[_Command] = deque()  # a command taken off the queue while batching audio
        clean = True
        while True:
            command = ahead.popleft() if ahead else await self._commands.get()
            if command is None:
                return clean and not state.open
            if isinstance(command, _Audio):
                command = self._batch(command, ahead)
            try:
                await self._run(command, state)
            except Exception as error:
                state.open = clean = False  # the decoder's own state is unknown now: not reused
                self._fail(error, fatal=False)

    def _batch(self, first: _Audio, ahead: deque[_Command]) -> _Audio:
        """``first`` joined with the audio queued behind it: one decoder call instead of many."""
        chunks = [first.pcm]
        while not self._commands.empty():
            following = self._commands.get_nowait()
            if not isinstance(following, _Audio):
                ahead.append(following)
                break
            chunks.append(following.pcm)
        return _Audio(b"".join(chunks)) if len(chunks) > 1 else first

    async def _run(self, command: _Start | _Audio | _End | _Abort, state: _DecoderState) -> None:
        started = time.perf_counter()
        if isinstance(command, _Start):
            if state.open:
                await self.run_in_thread(self._decoder.end_utt)
            state.open, state.last_interim, state.busy = True, "", 0.0
            text = await self.run_in_thread(self._begin, command.pcm)
        elif not state.open:
            return  # audio or an end outside an utterance (after an error or an abort)
        elif isinstance(command, _Audio):
            text = await self.run_in_thread(self._feed, command.pcm)
        elif isinstance(command, _Abort):
            state.open = False
            await self.run_in_thread(self._decoder.end_utt)
            return
        else:
            state.open = False
            text, words = await self.run_in_thread(self._finish)
            self.metrics.record("processing", state.busy + time.perf_counter() - started)
            if text:
                self.metrics.record("ttfb", time.perf_counter() - command.closed_at)
                await self.push(TranscriptFrame(text=text, language="en", words=words))
            return
        state.busy += time.perf_counter() - started
        if self.params.interim and text and text != state.last_interim:
            state.last_interim = text
            await self.push(InterimTranscriptFrame(text=text, language="en"))

    def _begin(self, pcm: bytes) -> str:
        self._decoder.start_utt()
        return self._feed(pcm) if pcm else ""

    def _feed(self, pcm: bytes) -> str:
        decoder = self._decoder  # one reference for the whole call: on_stop may release it meanwhile
        decoder.process_raw(pcm, False, False)
        hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def _finish(self) -> tuple[str, list[dict[str, Any]]]:
        decoder = self._decoder
        decoder.end_utt()
        hyp = decoder.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        frame_rate = float(decoder.config["frate"])
        words = [
            {
                "text": _VARIANT.sub("", seg.word),
                "start": round(seg.start_frame / frame_rate, 3),
                "end": round((seg.end_frame + 1) / frame_rate, 3),
            }
            for seg in decoder.seg()
            if not _FILLER.match(seg.word)
        ]
        return text, words
