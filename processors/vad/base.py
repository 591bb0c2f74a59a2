"""``VadProcessor``: what every voice activity detector does around its engine.

The engine only judges fixed windows of audio (``speech_probability``). This base turns those
judgements into ``UserStartedSpeakingFrame`` / ``UserStoppedSpeakingFrame`` with hysteresis:

* speech must last ``start_secs`` without a break before the start is announced, so clicks and
  coughs do not start a turn;
* silence must last ``stop_secs`` before the stop is announced, so pauses between words do not end it;
* after ``pause_secs`` of that silence a ``UserSpeechPausedFrame`` says speech *may* have ended, so
  a recogniser can transcribe while the stop is still being confirmed (hiding its latency).

Both frames are stamped with when speech *truly* began and ended, not when the hysteresis decided:
``stream_time`` is the position in the audio stream (seconds of audio this VAD had received) where
the first speech window began / the last speech window ended, and ``at`` is the same moment on the
``time.monotonic()`` clock. The stream clock counts audio, not wall time, so stamps are right in
faster-than-realtime file mode too.

Audio frames pass through at once and unchanged, whatever their size: the base buffers a copy into
engine windows. Speaking frames are system frames and overtake audio queued downstream, so a
consumer that cuts audio per utterance must align on ``stream_time``, not on arrival: use
``pipeline.utterances.UtteranceCollector``, which keeps a short history of audio and adds a
``pre_roll`` before each start so the first syllable is never lost.

On a phone, the caller's key ``end_speech_digit`` (``#``) ends speech in progress at once: a noisy line
can hold the hysteresis open, and every recogniser and turn-taker after the VAD already knows what a
stop means. The key (a ``DTMFFrame``) comes in order with the audio, so the stop lands after the words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.errors import FatalProcessorError, Problem
from pipeline.formats import AudioFormat
from pipeline.frames import (
    DTMF_DIGITS,
    AudioFrame,
    DTMFFrame,
    Frame,
    UserAudioFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor

__all__ = ["VadParams", "VadProcessor"]

_EPSILON = 1e-9  # stream times are sums of window lengths: compare them with a little slack


@dataclass(slots=True, kw_only=True)
class VadParams:
    """Hysteresis shared by every VAD."""

    start_secs: float = param(0.2, ge=0, doc="seconds speech must last before the start is announced")
    stop_secs: float = param(
        0.6, gt=0, doc="seconds of silence that end speech (pauses shorter than this do not)"
    )
    pause_secs: float = param(
        0.2,
        ge=0,
        doc="seconds of silence after which a pause is announced, so recognisers can start "
        "transcribing before the stop is confirmed; 0 = never",
    )
    end_speech_digit: str | None = param(
        "#",
        choices=(None, *DTMF_DIGITS),
        doc="phone key that ends speech in progress at once (null: keys are ignored)",
    )


class VadProcessor(Processor):
    """Base of the VAD nodes: audio passes through; speaking frames come out, stamped with the truth.

    Subclasses declare ``accepts_audio`` (the rates the engine takes, mono) and implement
    ``window_samples`` and ``speech_probability``; load the engine in ``on_start``.
    """

    Params: ClassVar[type[Any]] = VadParams
    owned_hooks: ClassVar[dict[str, str]] = {"on_stop": "close"}
    handles: ClassVar[tuple[type[Frame], ...]] = (UserAudioFrame, DTMFFrame)  # the bot's voice passes by
    produces: ClassVar[tuple[type[Frame], ...]] = (
        AudioFrame,
        DTMFFrame,
        UserStartedSpeakingFrame,
        UserSpeechPausedFrame,
        UserStoppedSpeakingFrame,
    )

    params: VadParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._format: AudioFormat | None = None
        self._window_bytes = 0
        self._window_secs = 0.0
        self._pending = bytearray()  # audio not yet analysed: less than one window
        self._format_start = 0.0  # stream time at which the current format began
        self._received_samples = 0  # samples received in the current format
        self._analysed_samples = 0  # samples of them already judged by the engine
        self.speaking = False
        """True between a UserStartedSpeakingFrame and its UserStoppedSpeakingFrame."""
        self._run_start = 0.0  # where the current run of speech windows began
        self._speech_end = 0.0  # while speaking: where speech ended, judging by the last speech window
        self._in_run = False  # whether the last window judged was speech
        self._last_end = 0.0  # where the last window judged ended
        self._paused = False  # a pause was announced for the current silence

    def check(self) -> list[Problem]:
        p = self.params
        if 0 < p.stop_secs <= p.pause_secs:
            message = f"pause_secs {p.pause_secs} is not below stop_secs ({p.stop_secs})"
            fix = "use e.g. 0.2, or 0 for no pause announcements"
            return [Problem(message, fix=fix, node=self.name, key="pause_secs")]
        return []

    # --- what engines implement ------------------------------------------------------------------

    def window_samples(self, sample_rate: int) -> int:
        """Samples in one engine window at ``sample_rate`` (a rate ``accepts_audio`` allows)."""
        raise NotImplementedError

    def speech_probability(self, window: bytes, sample_rate: int) -> float:
        """How likely ``window`` (mono s16le, ``window_samples`` long) is speech: 0..1, or 0/1."""
        raise NotImplementedError

    def thresholds(self) -> tuple[float, float]:
        """(to begin speech, to stay in speech): a window counts as speech at or above these."""
        return 0.5, 0.5

    def start_lag(self) -> float:
        """Seconds an engine may go on flagging after even a short sound (a built-in hangover): a run
        of speech windows must last ``start_secs`` plus this before it surely held ``start_secs``."""
        return 0.0

    def end_lag(self, run: float) -> float:
        """Seconds of built-in hangover that end a run of speech windows lasting ``run`` seconds: taken
        off the stop's stamp, so it marks the true end, and off the silence ``stop_secs`` waits for."""
        return 0.0

    def reset_engine(self) -> None:
        """Forget the engine's own state: the format changed, the stream is no longer continuous."""

    # --- the processor ---------------------------------------------------------------------------

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming  # audio passes through to the recogniser and the recorder

    @property
    def stream_time(self) -> float:
        """Seconds of audio received so far."""
        rate = self._format.sample_rate if self._format else 0
        return self._format_start + (self._received_samples / rate if rate else 0.0)

    async def process(self, frame: UserAudioFrame | DTMFFrame) -> None:
        await self.push(frame)  # first, so the VAD adds no latency to the audio
        if isinstance(frame, DTMFFrame):
            if frame.digit == self.params.end_speech_digit and self.speaking:
                await self.push(self._key_stop())
            return
        self._receive(frame)
        for event in self._analyse():
            await self.push(event)

    async def on_stop(self) -> None:
        try:
            if self.speaking and not (self.ended or self.inbox.closed):  # cancelled: nobody listens
                if self._in_run:
                    self._speech_end = self._last_end  # speech ran to the end: no hangover to take off
                await self.push(self._stop_frame())
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the engine: runs at the end, after the last speaking frame left."""

    # --- the hysteresis --------------------------------------------------------------------------

    def _receive(self, frame: AudioFrame) -> None:
        fmt = AudioFormat(frame.sample_rate, frame.channels)
        if fmt != self._format:
            self._change_format(fmt)
        self._pending += frame.pcm
        self._received_samples += frame.num_samples

    def _change_format(self, fmt: AudioFormat) -> None:
        if not self.accepts_audio.allows(fmt):
            raise FatalProcessorError(
                f"{self.name}: {type(self).__name__} takes {self.accepts_audio}, got {fmt}: "
                "put an audio.resample node in front of it, or set settings.auto_resample: true"
            )
        self._format_start = self.stream_time
        self._received_samples = self._analysed_samples = 0
        self._pending.clear()  # less than a window of the old format: too short to judge
        samples = self.window_samples(fmt.sample_rate)
        self._window_bytes = 2 * samples
        self._window_secs = samples / fmt.sample_rate
        self._format = fmt
        self._in_run = False
        self.reset_engine()

    def _analyse(self) -> list[Frame]:
        """Judge every whole window pending; return the speaking frames their verdicts produce."""
        assert self._format is not None
        rate, size = self._format.sample_rate, self._window_bytes
        begin, keep = self.thresholds()
        events: list[Frame] = []
        offset = 0
        while len(self._pending) - offset >= size:
            window = bytes(self._pending[offset : offset + size])
            offset += size
            start = self._format_start + self._analysed_samples / rate
            self._analysed_samples += size // 2
            end = start + self._window_secs
            speech = self.speech_probability(window, rate) >= (keep if self.speaking else begin)
            event = self._step(speech, start, end)
            if event is not None:
                events.append(event)
        del self._pending[:offset]
        return events

    def _step(self, speech: bool, start: float, end: float) -> Frame | None:
        """Advance the hysteresis by one window judged ``speech`` covering ``start``..``end``."""
        p = self.params
        self._last_end = end
        if speech and not self._in_run:
            self._run_start = start
        self._in_run = speech
        if self.speaking:
            silence = end - self._speech_end
            if speech:
                self._speech_end = self._true_end(end)
                self._paused = False
            elif silence >= p.stop_secs - _EPSILON:
                return self._stop_frame()
            elif p.pause_secs and not self._paused and silence >= p.pause_secs - _EPSILON:
                self._paused = True
                at = self._monotonic_at(self._speech_end)
                return UserSpeechPausedFrame(at=at, stream_time=self._speech_end)
            return None
        if speech and end - self._run_start >= p.start_secs + self.start_lag() - _EPSILON:
            self.speaking = True
            self._speech_end = self._true_end(end)
            return UserStartedSpeakingFrame(
                at=self._monotonic_at(self._run_start), stream_time=self._run_start
            )
        return None

    def _true_end(self, end: float) -> float:
        """Where speech ended if the run of speech windows ending at ``end`` ends here."""
        return max(end - self.end_lag(end - self._run_start), self._run_start + self._window_secs)

    def _key_stop(self) -> UserStoppedSpeakingFrame:
        """Speech ended by a key: at the last speech judged, and any speech after it starts anew."""
        if self._in_run:
            self._speech_end = self._last_end
            self._in_run = False
        return self._stop_frame()

    def _stop_frame(self) -> UserStoppedSpeakingFrame:
        self.speaking = False
        self._paused = False
        return UserStoppedSpeakingFrame(at=self._monotonic_at(self._speech_end), stream_time=self._speech_end)

    def _monotonic_at(self, stream_time: float) -> float:
        """``stream_time`` on the monotonic clock: now, less the audio received since that point."""
        return time.monotonic() - (self.stream_time - stream_time)
