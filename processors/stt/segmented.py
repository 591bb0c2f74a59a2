"""Base of recognisers that transcribe whole utterances: the VAD cuts the audio, a subclass transcribes.

Engines like Whisper (or a cloud "transcribe this file" endpoint) see an utterance at once, not a
stream. ``UtteranceSTT`` does everything around that call, so a subclass only implements
``transcribe`` (and, for interim results, ``transcribe_partial``):

* Audio and the VAD's speaking frames pass through unchanged (speaking frames at once).
  ``pipeline.utterances.UtteranceCollector`` cuts utterances on ``stream_time``: a start frame that
  arrives late still gets the first syllable (``pre_roll``), and speaking frames that ran ahead of
  their audio are applied only once the audio has caught up, so the cuts land where the VAD meant.
* Transcription runs in a background task, so audio of utterance N+1 keeps being collected while N is
  transcribed: the final transcript starts the moment the last audio of N arrives. At most
  ``QUEUE_LIMIT`` utterances are in the recogniser's hands (one transcribing, one waiting); beyond that
  the node stops taking audio until one is done, and the audio waits in the inbox — none is lost.
  Transcripts leave in utterance order.
* Interim results: every ``interim_interval_ms`` of speech, if the previous partial has finished and no
  final is waiting, ``transcribe_partial(open_audio)`` yields an ``InterimTranscriptFrame``. A partial
  that finishes after its utterance was closed is dropped, so no interim ever follows its final.
  Interims are optional work, shed first when the recogniser is behind: none starts while an early
  pass is in flight or while ``engine_busy()`` (a model shared with other sessions is working for
  them), so they only fill idle time and never delay a final, this session's or another's.
* Without a VAD (no speaking frame ever arrives, e.g. ``source.wav -> stt.whisper``), the stream is cut
  into ``max_utterance`` chunks that are held and transcribed at the end of the stream, in order: file
  transcription. After ``UNSEGMENTED_HOLD_LIMIT`` seconds without a speaking frame, chunks are
  transcribed as they are cut instead, so memory stays bounded. A speaking frame switches to VAD mode.
* Early transcription (``early_transcription``): at the VAD's pause the open utterance is transcribed
  so the final is ready when the stop confirms the pause: the final is then that pass's result, with
  no second pass. The pass's text also goes out at once as an ``InterimTranscriptFrame`` if the
  utterance is still open (the stop has not come), so a turn-taker can start a reply at the pause
  (``turn.taking``'s ``preemptive_reply``); partials that began before the pause are dropped then, and
  none starts during the pause, since they would be older than it. At most one early pass is in flight: a pass
  that speech made stale is left to finish (its result unused) rather than cancelled, because a
  cancelled task does not stop an inference already running in a thread; while it runs, no new early
  pass starts, so orphaned passes never pile up in front of the real final on the engine's lock.
* Metrics: ``processing`` (time in ``transcribe``), ``ttfb`` (from the arrival of the
  ``UserStoppedSpeakingFrame`` to the transcript leaving), ``interim_processing``.

STT sits upstream of barge-in, so it rarely sees an interruption; when it does, the open utterance and
queued transcriptions are kept: they are what the user is saying right now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import FatalProcessorError
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from pipeline.utterances import Utterance, UtteranceCollector

__all__ = ["QUEUE_LIMIT", "Transcription", "UtteranceParams", "UtteranceSTT"]

log = logging.getLogger("processors.stt")

QUEUE_LIMIT = 2
"""Utterances in the recogniser's hands (transcribing + waiting) before audio intake pauses."""
UNSEGMENTED_HOLD_LIMIT = 600.0
"""Seconds of audio held, without any speaking frame, before chunks are transcribed as they are cut."""
MAX_EARLY_EVENTS = 64
"""Speaking frames held while their audio is still on the way; more means the audio is not coming."""
SILENCE_PEAK = 33
"""An utterance whose peak stays below this (about -60 dBFS) is digital silence: not transcribed."""


VadEvent = UserStartedSpeakingFrame | UserSpeechPausedFrame | UserStoppedSpeakingFrame


@dataclass(slots=True, frozen=True)
class Transcription:
    """What a recogniser returns for one utterance."""

    text: str
    language: str | None = None
    words: list[dict[str, Any]] | None = None
    """Optional word timings: ``{"text", "start", "end"}`` in seconds from the utterance start."""


@dataclass(slots=True, kw_only=True)
class UtteranceParams:
    """Params shared by every utterance-at-a-time recogniser."""

    pre_roll: float = param(
        0.3, ge=0, doc="seconds of audio kept before the VAD's speech start (first syllable)"
    )
    post_roll: float = param(0.15, ge=0, doc="seconds of audio kept after the VAD's speech end")
    max_utterance: float = param(
        30.0,
        gt=0,
        doc="seconds after which a run-on utterance is cut and transcribed (Whisper's window is 30)",
    )
    interim_interval_ms: int = param(
        0, ge=0, doc="re-transcribe the open utterance for interim results this often; 0 = no interims"
    )
    early_transcription: bool = param(
        False,
        doc="start transcribing at the VAD's pause, so the final is ready when the stop is confirmed "
        "(hides the recogniser's latency; costs an extra pass each time speech resumes)",
    )


@dataclass(slots=True)
class _Job:
    """One utterance waiting for (or in) transcription."""

    utterance: Utterance
    closed_at: float  # perf_counter when its end was known (the stop frame's arrival): ttfb counts from here
    early: asyncio.Task[Transcription] | None = None  # its transcription, started at the pause


class UtteranceSTT(Processor):
    """Base of recognisers that transcribe whole utterances cut by the VAD.

    Subclasses implement ``transcribe`` (and optionally ``transcribe_partial``); they load models in
    ``on_start`` and release them in ``close`` — not ``on_stop``, which delivers the last transcript.
    """

    Params: ClassVar[type[Any]] = UtteranceParams
    owned_hooks: ClassVar[dict[str, str]] = {"on_stop": "close"}
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStartedSpeakingFrame,
        UserSpeechPausedFrame,
        UserStoppedSpeakingFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, InterimTranscriptFrame, TranscriptFrame)
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(16000, 1)

    params: UtteranceParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self._collector = UtteranceCollector(p.pre_roll, p.post_roll, p.max_utterance)
        # Until a speaking frame shows there is a VAD, the whole stream is kept in max_utterance chunks.
        self._unsegmented: UtteranceCollector | None = UtteranceCollector(0.0, 0.0, p.max_utterance, 0.0)
        self._unsegmented.speech_started(UserStartedSpeakingFrame(stream_time=0.0))
        self._held: list[Utterance] | None = []  # chunks held for the end; None once transcribed as cut
        self._jobs: deque[_Job] = deque()  # the first one is being transcribed
        self._job_added = asyncio.Event()
        self._job_done = asyncio.Event()
        self._transcriber: asyncio.Task[None] | None = None
        self._partial: asyncio.Task[None] | None = None
        self._closed_utterances = 0  # a partial started before this changed belongs to a closed utterance
        self._stop_seen_at: float | None = None
        self._next_partial_at = 0.0  # stream time
        self._last_interim = ""
        self._rate = 16000  # sample rate of the audio being collected
        # Speaking frames that ran ahead of their audio, with their arrival time (perf_counter).
        self._events: deque[tuple[VadEvent, float]] = deque()
        self._early: tuple[float, asyncio.Task[Transcription]] | None = None  # (cut end, its transcription)
        self._stale_early: asyncio.Task[Transcription] | None = None  # superseded pass left to finish
        self._early_passes = 0  # early passes started so far: a partial begun before one is older than it

    # --- what subclasses implement ---------------------------------------------------------------

    async def transcribe(self, utterance: Utterance) -> Transcription:
        """Transcribe one whole utterance (run blocking engines with ``run_in_thread``).

        A call may be cancelled (the node stops); an engine running in a thread should then stop its
        work before the call returns, so it does not hold a shared model (see ``WhisperSTT``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement transcribe()")

    async def transcribe_partial(self, pcm: bytes, sample_rate: int) -> str | None:
        """Text of the utterance so far, for an interim result; None (the default) = no interims."""
        return None

    async def close(self) -> None:
        """Release the engine: runs at the end, after the last transcript left."""

    def engine_busy(self) -> bool:
        """True while the engine works for someone else (a model shared with other sessions): an
        interim pass started now would only queue in front of their finals. Engines that share one
        override this; the default never defers interims."""
        return False

    # --- processor hooks -------------------------------------------------------------------------

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming  # audio passes through to the recorder and the transports

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):  # the user's: the bot's voice passes by (handles)
            self._rate = frame.sample_rate
            for utterance in self._collector.add_audio(frame):
                self._submit(utterance)
            self._add_unsegmented(frame)
            self._apply_due_events()
            self._maybe_start_partial()
        elif isinstance(frame, UserSpeechPausedFrame):
            if self.params.early_transcription:
                self._events.append((frame, time.perf_counter()))
                self._apply_due_events()
        elif isinstance(frame, UserStartedSpeakingFrame | UserStoppedSpeakingFrame):
            self._vad_found()
            self._events.append((frame, time.perf_counter()))
            self._apply_due_events()
        await self.push(frame)
        await self._wait_for_room()

    async def on_stop(self) -> None:
        if self.ended or self.inbox.closed:  # cancelled: nobody is listening for transcripts any more
            try:
                await self._cancel_tasks()
            finally:
                await self.close()  # also when a cancel lands while the tasks stop
            return
        try:
            if self._unsegmented is not None:
                chunks = [*(self._held or []), *self._unsegmented.flush()]
                self._held, self._unsegmented = None, None
                for chunk in chunks:
                    self._submit(chunk)
            self._apply_due_events(everything=True)
            for utterance in self._collector.flush():
                self._submit(utterance)
            while self._jobs:
                self._job_done.clear()
                await self._job_done.wait()
        finally:
            try:
                await self._cancel_tasks()
            finally:
                await self.close()

    # --- utterances in, transcripts out ----------------------------------------------------------

    def _apply_due_events(self, everything: bool = False) -> None:
        """Give the collector the speaking frames whose moment its audio has reached, in stream order.

        Speaking frames overtake queued audio; applied early, a start could close the previous
        utterance before its last audio arrived. Held here until the audio catches up, they cut
        exactly where the VAD meant, however far ahead they ran.
        """
        events = self._events
        while events and (
            everything
            or len(events) > MAX_EARLY_EVENTS
            or self._due(events[0][0]) <= self._collector.stream_time + 1e-6
        ):
            event, arrived = events.popleft()
            if isinstance(event, UserSpeechPausedFrame):
                if not everything:
                    self._transcribe_early(event)
            elif isinstance(event, UserStartedSpeakingFrame):
                self._drop_early()
                for utterance in self._collector.speech_started(event):
                    self._submit(utterance)
                self._next_partial_at = event.stream_time + self.params.interim_interval_ms / 1000
                self._last_interim = ""
            else:
                if self._collector.in_speech:
                    self._stop_seen_at = arrived
                for utterance in self._collector.speech_stopped(event):
                    self._submit(utterance)

    def _due(self, event: VadEvent) -> float:
        """Stream time the collector's audio must reach before ``event`` is applied."""
        if isinstance(event, UserSpeechPausedFrame):
            return event.stream_time + self.params.post_roll  # the cut needs its post-roll in hand
        return event.stream_time

    def _transcribe_early(self, pause: UserSpeechPausedFrame) -> None:
        """The user paused: transcribe what they said so far; the stop will most likely confirm it."""
        collector = self._collector
        if not collector.in_speech or self._jobs:
            log.debug("%s: no early pass: %s", self.name, "busy" if self._jobs else "nothing open")
            return  # nothing open, or the recogniser is busy: the early pass would only queue up
        self._drop_early()  # a pass from an earlier pause no longer matches this cut
        if self._stale_early is not None:
            log.debug("%s: no early pass: a stale one still runs", self.name)
            return  # one early pass is still running: another would only queue behind it on the engine
        end = pause.stream_time + self.params.post_roll
        frame_bytes = 2 * max(1, collector.channels)
        extra = round((collector.stream_time - end) * self._rate) * frame_bytes
        pcm = collector.open_audio()
        pcm = pcm[: len(pcm) - extra] if extra > 0 else pcm
        if not pcm or _is_silent(pcm):
            return
        start = end - len(pcm) / (frame_bytes * self._rate)
        utterance = Utterance(pcm, self._rate, max(1, collector.channels), start, end)
        task = asyncio.create_task(self._early_pass(utterance), name=f"stt-early:{self.name}")
        self._early = (end, task)
        self._early_passes += 1

    async def _early_pass(self, utterance: Utterance) -> Transcription:
        """Transcribe the utterance up to the pause; while it is still open, say so as an interim."""
        result = await self.transcribe(utterance)
        early = self._early
        text = result.text.strip()
        if early is not None and early[1] is asyncio.current_task() and text:
            # Still the open utterance's pass (no stop took it as the final yet, no speech superseded
            # it): what the user said up to the pause, for a reply that may start now. Sent even when
            # a partial said the same: this one is known to hold every word up to the pause.
            self._last_interim = text
            await self.push(InterimTranscriptFrame(text=text, language=result.language))
        return result

    def _drop_early(self) -> None:
        """Speech went on (or a new utterance began): the early pass no longer matches any cut."""
        if self._early is not None:
            self._let_finish(self._early[1])
            self._early = None

    def _let_finish(self, task: asyncio.Task[Transcription]) -> None:
        """Leave a superseded early pass to finish unused: cancelling the task would not stop an
        inference running in a thread, only hide it, and new passes would pile up behind it."""
        task.add_done_callback(self._stale_done)
        if not task.done():
            self._stale_early = task  # never two: no early pass starts while one is stale

    def _stale_done(self, task: asyncio.Task[Transcription]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s: an unused early transcription failed: %r", self.name, task.exception())
        if self._stale_early is task:
            self._stale_early = None

    def _submit(self, utterance: Utterance) -> None:
        """Queue ``utterance`` for the background transcriber (synchronously: nothing is lost to a cancel)."""
        self._closed_utterances += 1
        closed_at, self._stop_seen_at = self._stop_seen_at or time.perf_counter(), None
        early = None
        if self._early is not None:
            end, task = self._early
            self._early = None
            if abs(end - utterance.end) < 1e-3:
                early = task  # the stop confirmed the pause: this transcription is already under way
                log.debug("%s: the stop confirmed the pause (early pass done: %s)", self.name, task.done())
            else:
                self._let_finish(task)  # the normal pass runs; no new early pass until this one ends
                log.debug("%s: the stop (%.3f) is not the pause (%.3f)", self.name, utterance.end, end)
        if _is_silent(utterance.pcm):
            if early is not None:
                early.cancel()
            return
        self._jobs.append(_Job(utterance, closed_at, early))
        self._job_added.set()
        if self._transcriber is None or self._transcriber.done():
            self._transcriber = asyncio.create_task(self._transcribe_jobs(), name=f"stt:{self.name}")

    async def _wait_for_room(self) -> None:
        """Pause audio intake while the recogniser has ``QUEUE_LIMIT`` utterances in hand."""
        while len(self._jobs) > QUEUE_LIMIT:
            self._job_done.clear()
            await self._job_done.wait()

    async def _transcribe_jobs(self) -> None:
        while True:
            while not self._jobs:
                self._job_added.clear()
                await self._job_added.wait()
            try:
                await self._transcribe_job(self._jobs[0])
            finally:
                self._jobs.popleft()
                self._job_done.set()

    async def _transcribe_job(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            result = await (job.early if job.early is not None else self.transcribe(job.utterance))
        except FatalProcessorError as error:
            self._fail(error, fatal=True)
            return
        except Exception as error:
            self._fail(error, fatal=False)
            return
        self.metrics.record("processing", time.perf_counter() - started)
        text = result.text.strip()
        if not text:
            return
        self.metrics.record("ttfb", time.perf_counter() - job.closed_at)
        await self.push(TranscriptFrame(text=text, language=result.language, words=result.words))

    # --- interim results -------------------------------------------------------------------------

    def _maybe_start_partial(self) -> None:
        interval = self.params.interim_interval_ms / 1000
        if interval <= 0 or not self._collector.in_speech or self._jobs:
            return
        if self._partial is not None and not self._partial.done():
            return
        if type(self).transcribe_partial is UtteranceSTT.transcribe_partial:
            return  # this engine has no interim results
        now = self._collector.stream_time
        if now < self._next_partial_at:
            return
        if self._early_in_flight() or self.engine_busy():
            return  # finals and early passes first; the interim is due again on the next frame
        if self._early is not None and now < self._early[0] + interval:
            return  # in a pause the early pass has the newest words; a partial would only cost CPU
        self._next_partial_at = now + interval
        pcm = self._collector.open_audio()
        if pcm:
            task = self._run_partial(pcm, self._rate, self._closed_utterances, self._early_passes)
            self._partial = asyncio.create_task(task, name=f"stt-partial:{self.name}")

    def _early_in_flight(self) -> bool:
        early = self._early
        return self._stale_early is not None or (early is not None and not early[1].done())

    async def _run_partial(self, pcm: bytes, sample_rate: int, utterance: int, early_passes: int) -> None:
        started = time.perf_counter()
        try:
            text = await self.transcribe_partial(pcm, sample_rate)
        except FatalProcessorError as error:
            self._fail(error, fatal=True)
            return
        except Exception as error:
            self._fail(error, fatal=False)
            return
        self.metrics.record("interim_processing", time.perf_counter() - started)
        text = (text or "").strip()
        if not text or text == self._last_interim or utterance != self._closed_utterances:
            return
        if early_passes != self._early_passes:
            return  # an early pass began since: it heard more, and its interim comes (or came) too
        self._last_interim = text
        await self.push(InterimTranscriptFrame(text=text))

    # --- without a VAD ---------------------------------------------------------------------------

    def _add_unsegmented(self, frame: AudioFrame) -> None:
        collector = self._unsegmented
        if collector is None:
            return
        for chunk in collector.add_audio(frame):
            if self._held is None:
                self._submit(chunk)
            else:
                self._held.append(chunk)
                if sum(c.duration for c in self._held) > UNSEGMENTED_HOLD_LIMIT:
                    log.info("%s: no speaking frames yet: transcribing the stream as it comes", self.name)
                    held, self._held = self._held, None
                    for held_chunk in held:
                        self._submit(held_chunk)
        if not collector.in_speech:  # a chunk was cut: the next one starts right where it ended
            collector.speech_started(UserStartedSpeakingFrame(stream_time=collector.stream_time))

    def _vad_found(self) -> None:
        """A speaking frame arrived: the VAD segments from now on; the unsegmented chunks go."""
        self._unsegmented = None
        self._held = None

    async def _cancel_tasks(self) -> None:
        early = self._early[1] if self._early is not None else None
        stale, self._early, self._stale_early = self._stale_early, None, None
        running = (self._transcriber, self._partial, early, stale, *(job.early for job in self._jobs))
        tasks = [t for t in running if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._jobs.clear()
        self._transcriber = self._partial = None  # a cancelled task's traceback holds this node: a cycle


def _is_silent(pcm: bytes) -> bool:
    """True for (near-)digital silence, which recognisers tend to 'transcribe' as hallucinations."""
    samples = np.frombuffer(pcm, dtype="<i2")
    return not samples.size or int(np.abs(samples.astype(np.int32)).max()) < SILENCE_PEAK
