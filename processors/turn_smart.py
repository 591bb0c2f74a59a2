"""``turn.smart``: turn-taking that asks an end-of-turn model whether the user is finished.

A silence timer alone is a poor judge: a short ``stop_secs`` cuts people off mid-thought, a long one
makes every answer slow. This node is ``turn.taking`` plus the Smart Turn model
(``processors.turn_model``): at each VAD pause it runs the model on the turn's audio so far, in a
thread, and by the time the VAD confirms the stop it has a verdict:

* **finished** → the turn ends as in ``turn.taking``, after the VAD's short ``stop_secs`` (give the VAD
  0.2 s instead of the usual 0.4-0.6);
* **not finished** → the turn is held open: speech that resumes joins it, and only ``max_wait_secs`` of
  silence after the true end of speech ends it regardless.

A held turn is not judged again as its silence grows: the model tells finished turns from the rest
worse the more silence it hears (turn set, report half: AUC 0.77 at 0.2 s, 0.60 at 0.5 s, 0.40 at 1.1 s;
``python -m benchmarks.turns --recheck 0.5,0.8,1.1``), so a re-judgement cuts off more speakers
than it spares finished ones the wait.

The end-of-turn key, the end of the stream and barge-in work as in ``turn.taking``; speech over the
bot is never judged. Put it where ``turn.taking`` goes (after the recogniser, which passes the
user's audio on); audio at other rates than 16 kHz is resampled for the model.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import FatalProcessorError, Problem
from pipeline.frames import (
    Frame,
    TranscriptFrame,
    UserAudioFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from processors import turn_model
from processors.models import model_file_problems
from processors.turn import TurnTaking, TurnTakingParams

__all__ = ["SmartTurnParams", "SmartTurnTaking"]

PRE_ROLL_SECONDS = 0.5
"""Audio kept from before the VAD's start of speech, so the model hears the first syllable."""
AUDIO_WAIT_SECONDS = 0.5
"""Bound on waiting for the audio up to a pause to reach this node (speaking frames overtake audio)."""
_HISTORY_SECONDS = turn_model.WINDOW_SECONDS + PRE_ROLL_SECONDS + 2.0


@dataclass(slots=True, kw_only=True)
class SmartTurnParams(TurnTakingParams):
    """Params of ``turn.smart``: how sure the model must be, and how long an unfinished turn may wait."""

    threshold: float = param(
        0.5, gt=0, lt=1, doc="end-of-turn probability (0..1) at or above which the user is finished"
    )
    max_wait_secs: float = param(
        1.5,
        gt=0,
        doc="silence after the end of speech that ends a turn the model judged unfinished",
    )
    model_path: str | None = param(
        None, doc="Smart Turn ONNX file; null = smart-turn-v3.2-cpu.onnx from the pipecat-ai package"
    )
    window_secs: int = param(
        turn_model.WINDOW_SECONDS,
        ge=1,
        le=turn_model.WINDOW_SECONDS,
        doc="seconds of the turn the model hears (8 as trained; 4 costs a quarter, needs the onnx package)",
    )


class _TurnAudio:
    """The user's recent audio at 16 kHz, addressed by stream time (seconds of audio received), and
    the log-mel features of the turn in progress, computed as its audio arrives."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._samples = 0  # samples held in _chunks
        self.received = 0.0  # stream time at the end of the audio received
        self.arrived = asyncio.Event()  # set at each frame, so a waiter can re-check ``received``
        self.features: turn_model.LogMelStream | None = None  # of the turn since ``turn_start``
        self.turn_start = 0.0

    def begin_turn(self, start: float) -> None:
        """Compute features of the audio from stream time ``start`` on (what is held of it, then
        each frame as it comes)."""
        self.turn_start = start
        self.features = turn_model.LogMelStream()
        self.features.add(self.between(start, self.received))

    def end_turn(self) -> None:
        self.features = None

    def add(self, frame: UserAudioFrame) -> None:
        samples = np.frombuffer(frame.pcm, dtype="<i2").astype(np.float32) / 32768.0
        if frame.channels > 1:
            samples = samples.reshape(-1, frame.channels).mean(axis=1)
        self.received += samples.size / frame.sample_rate
        if frame.sample_rate != turn_model.SAMPLE_RATE:
            import soxr

            samples = soxr.resample(samples, frame.sample_rate, turn_model.SAMPLE_RATE)
        self._chunks.append(samples)
        self._samples += samples.size
        if self.features is not None:
            self.features.add(samples)
        limit = int(_HISTORY_SECONDS * turn_model.SAMPLE_RATE)
        while self._chunks and self._samples - self._chunks[0].size >= limit:
            self._samples -= self._chunks.popleft().size
        self.arrived.set()

    def between(self, start: float, end: float) -> np.ndarray:
        """Samples from stream time ``start`` to ``end`` (what is still held of it)."""
        held = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        rate = turn_model.SAMPLE_RATE
        first = self.received - held.size / rate  # stream time of held[0]
        lo = max(0, round((start - first) * rate))
        hi = max(lo, min(held.size, round((end - first) * rate)))
        return held[lo:hi]


class SmartTurnTaking(TurnTaking):
    """``turn.taking`` whose ends of turn wait for the model's verdict (see the module docstring)."""

    type_name = "turn.smart"
    Params: ClassVar[type[Any]] = SmartTurnParams
    handles: ClassVar[tuple[type[Frame], ...]] = tuple(
        dict.fromkeys((*TurnTaking.handles, UserAudioFrame, UserSpeechPausedFrame))
    )

    params: SmartTurnParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._session: Any = None
        self._audio = _TurnAudio()
        self._turn_start: float | None = None  # stream time the turn in progress began (pre-roll off)
        self._verdict: asyncio.Task[bool] | None = None  # the model's judgement of the last pause
        self._judged_at: float | None = None  # stream time of the pause it judges
        self._hold: asyncio.TimerHandle | None = None  # ends an unfinished turn after max_wait_secs
        self._released = False  # the wait ran out: end the turn whatever the verdict
        self._awaiting_final = False  # speech resumed in a held turn: its final is due before the end
        self.decisions: list[tuple[float, float]] = []
        """(probability, seconds the model took) of each verdict, for benchmarks and tests."""

    def check(self) -> list[Problem]:
        problems = super().check()
        if importlib.util.find_spec("onnxruntime") is None:
            problems.append(
                Problem("onnxruntime is not installed", fix="pip install 'voxgraph[offline]'", node=self.name)
            )
        if self.params.window_secs < turn_model.WINDOW_SECONDS and importlib.util.find_spec("onnx") is None:
            problems.append(
                Problem(
                    f"window_secs {self.params.window_secs} needs the onnx package (to derive the model)",
                    fix="pip install onnx",
                    node=self.name,
                    key="window_secs",
                )
            )
        kind = "a Smart Turn v3 ONNX file"
        return problems + model_file_problems(self.model_file(), self.name, carrier="pipecat-ai", kind=kind)

    def model_file(self) -> Path | None:
        """The ONNX file this node runs."""
        return Path(self.params.model_path) if self.params.model_path else turn_model.model_path()

    async def on_start(self) -> None:
        path = self.model_file()
        if path is None or not path.is_file():
            raise FatalProcessorError("; ".join(str(p) for p in self.check()) or "no model file")
        self._session = await self.run_in_thread(turn_model.shared_session, path, self.params.window_secs)
        # One inference pages the weights in, so the first turn is judged as fast as later ones.
        await self.run_in_thread(
            turn_model.end_of_turn_probability, np.zeros(1600, np.float32), self._session
        )

    # --- the user's side -------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, UserAudioFrame):
            self._audio.add(frame)
            await self.push(frame)
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._speech_resumed(frame)
        elif isinstance(frame, TranscriptFrame) and not self._overlap:
            self._awaiting_final = False
        elif isinstance(frame, UserSpeechPausedFrame):
            self._judge(frame.stream_time)
            if UserSpeechPausedFrame not in TurnTaking.handles:
                await self.push(frame)
                return
        elif isinstance(frame, UserStoppedSpeakingFrame):
            if self._overlap:
                self._turn_start = None  # a backchannel or an echo, not the start of a turn
                self._audio.end_turn()
            elif self._verdict is None or self._judged_at != frame.stream_time:
                self._judge(frame.stream_time)
        await super().process(frame)
        if isinstance(frame, UserStartedSpeakingFrame):
            # A held turn already has finals: at the next stop it must not end on them alone before the
            # recogniser's final for the resumed speech arrives (a verdict faster than that final would
            # hand on the first words, and the rest would leave as a turn of its own). ``max_wait_secs``
            # after that stop bounds the wait for a final that never comes (a cough).
            self._awaiting_final = bool(self._finals) and not self._overlap
        elif isinstance(frame, UserStoppedSpeakingFrame) and (
            self._judged_unfinished() or self._awaiting_final
        ):
            self._hold_open()

    def _speech_resumed(self, frame: UserStartedSpeakingFrame) -> None:
        """Speech (re)starts: a pending verdict is moot, and a held turn goes on."""
        if self._turn_start is None:
            self._turn_start = max(0.0, frame.stream_time - PRE_ROLL_SECONDS)
            self._audio.begin_turn(self._turn_start)
        self._forget_verdict()

    def _judge(self, stream_time: float) -> None:
        """Start the model on the turn's audio up to ``stream_time`` (the true end of speech)."""
        if self._overlap or self._turn_start is None:
            return  # speech over the bot is a barge-in question, not an end-of-turn one
        self._forget_verdict()
        self._judged_at = stream_time
        self._verdict = asyncio.ensure_future(self._run_model(self._turn_start, stream_time))
        self._verdict.add_done_callback(self._on_verdict)

    async def _run_model(self, start: float, end: float) -> bool:
        """The verdict on the turn's speech up to ``end`` and the silence after it that the model
        was trained to hear (as much of it as arrives within ``AUDIO_WAIT_SECONDS``)."""
        loop = asyncio.get_running_loop()
        heard_end = end + turn_model.HEARD_SILENCE
        deadline = loop.time() + AUDIO_WAIT_SECONDS
        while self._audio.received < heard_end - 1e-3 and loop.time() < deadline:
            self._audio.arrived.clear()
            try:
                await asyncio.wait_for(self._audio.arrived.wait(), deadline - loop.time())
            except TimeoutError:
                break
        began = loop.time()
        stream = self._audio.features
        features: Callable[[], np.ndarray]
        if stream is not None and self._audio.turn_start == start:
            # Only the last step is left at the pause: the frames were computed as the audio came.
            # It runs in the thread on a copy, as the audio goes on arriving here.
            features = functools.partial(
                stream.copy().features, round((heard_end - start) * turn_model.SAMPLE_RATE)
            )
        else:
            audio = self._audio.between(max(start, heard_end - turn_model.WINDOW_SECONDS), heard_end)
            features = functools.partial(turn_model.log_mel, audio)
        probability = await self.run_in_thread(_judge, features, self._session)
        took = loop.time() - began
        self.decisions.append((probability, took))
        self.metrics.record("end_of_turn_model", took)
        return probability >= self.params.threshold

    def _on_verdict(self, task: asyncio.Task[bool]) -> None:
        if task is not self._verdict or task.cancelled():
            return
        if task.exception() is not None:
            self.report_error(task.exception() or RuntimeError("end-of-turn model failed"))
            self._released = True  # judged by silence alone rather than held for ever
        elif not task.result() and not self._user_speaking:
            self._hold_open()
        if not self._user_speaking:
            self._end_turn_soon()

    def _judged_unfinished(self) -> bool:
        verdict = self._verdict
        return (
            verdict is not None
            and verdict.done()
            and not verdict.cancelled()
            and verdict.exception() is None
            and not verdict.result()
        )

    def _hold_open(self) -> None:
        """An unfinished turn: wait for more speech until ``max_wait_secs`` after it ended."""
        if self._hold is not None or self._released:
            return
        loop = asyncio.get_running_loop()
        stopped = self._speech_stopped_at if self._speech_stopped_at is not None else loop.time()
        wait = max(0.0, stopped + self.params.max_wait_secs - loop.time())
        self._hold = loop.call_later(wait, self._release)

    def _release(self) -> None:
        self._hold = None
        self._released = True
        self._end_turn_soon()

    def _end_turn_soon(self) -> None:
        """End the turn if it is ready, from a callback (errors are reported as from ``process``)."""
        task = asyncio.ensure_future(self._end_turn_if_ready())
        task.add_done_callback(self._report_failure)

    def _report_failure(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self.report_error(error)

    def _forget_verdict(self) -> None:
        if self._verdict is not None and not self._verdict.done():
            self._verdict.cancel()
        self._verdict = None
        self._judged_at = None
        self._released = False
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None

    def _model_says_wait(self) -> bool:
        """True while the end of the turn waits for the model, or for more speech it expects."""
        if self._released or self._end_requested or self.ended or self._user_speaking:
            return False
        if self._awaiting_final:
            return True  # the resumed speech's words are still on their way
        if self._verdict is None:
            return False  # no judgement was asked for (no VAD, or speech over the bot)
        return not self._verdict.done() or self._judged_unfinished()

    async def _end_turn_if_ready(self) -> None:
        if self._model_says_wait():
            return
        had_turn = bool(self._finals)
        await super()._end_turn_if_ready()
        if had_turn and not self._finals and not self._user_speaking:
            self._turn_start = None  # handed on: the next speech starts a new turn
            self._audio.end_turn()
            self._awaiting_final = False
            self._forget_verdict()

    async def on_stop(self) -> None:
        self._forget_verdict()
        await super().on_stop()


def _judge(features: Callable[[], np.ndarray], session: Any) -> float:
    """The model's end-of-turn probability; features and inference both run here, off the loop."""
    return turn_model.probability(features(), session)
