"""The marks of each user turn and its answer, read off the frames a conversation graph pushes.

Nodes are not found by name or type: each frame kind's *originator* is the first node seen pushing
it (the VAD for ``User*SpeakingFrame``, the LLM for ``LLMTextFrame``, the TTS for ``BotAudioFrame``,
the playing transport for ``Bot*SpeakingFrame``, the turn taker for ``InterruptionFrame``); later
pushes of that kind by other nodes are the same frames passed along and are ignored. The final
transcript is the last ``TranscriptFrame`` handed *to* the LLM before its first token, so any graph
shaped like a voice assistant is timed the same way, whatever its engines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.frames import (
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    InterruptionFrame,
    LLMTextFrame,
    TranscriptFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.observers import Observer
from pipeline.processor import Processor

__all__ = ["BARGE_IN_STAGES", "STAGES", "Timeline", "Turn"]

STAGES = ("vad_hangover", "stt", "llm_first_token", "tts_first_audio", "playout", "voice_to_voice")
"""The stages of one answer, in order; the first five add up to ``voice_to_voice``."""

BARGE_IN_STAGES = ("vad_start", "interruption", "bot_silent")
"""The stages of one barge-in, in order: user speech to the VAD's start, to the turn taker's
``InterruptionFrame``, to the bot falling silent."""

_ORIGINATED = (
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    LLMTextFrame,
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
)


@dataclass
class Turn:
    """``time.monotonic`` marks of one user turn (one or more stretches of speech) and its answer."""

    speech_start: float | None = None
    vad_start: float | None = None
    """When the VAD announced the speech (``speech_start`` is when it truly began)."""
    interruption: float | None = None
    """When this turn's speech interrupted the bot's answer to the one before (a barge-in)."""
    speech_end: float | None = None
    vad_stop: float | None = None
    transcripts: list[float] = field(default_factory=list)
    """When each final transcript was handed to the LLM: the last one before the first token counts,
    else the first after it."""
    first_token: float | None = None
    first_audio: float | None = None
    bot_started: float | None = None
    bot_stopped: float | None = None
    interrupted: bool = False
    text: str = ""

    def marks(self) -> list[float] | None:
        """End of speech, VAD stop, transcript, first token, first audio, bot playing — each at or
        after the one before (a reply started early, at a pause, takes no negative time), or None
        when the turn was not answered."""
        token = self.first_token
        before = [t for t in self.transcripts if token and t <= token]
        # No final before the first token: the reply began at a pause and the final confirmed it.
        transcript = max(before) if before else min(self.transcripts, default=None)
        raw = [self.speech_end, self.vad_stop, transcript, token, self.first_audio, self.bot_started]
        if any(m is None for m in raw):
            return None
        marks: list[float] = []
        for mark in raw:
            assert mark is not None
            marks.append(max(mark, marks[-1]) if marks else mark)
        return marks

    def stages(self) -> dict[str, float] | None:
        """Seconds per stage (``STAGES``), or None when the turn was not answered."""
        marks = self.marks()
        if marks is None:
            return None
        spans = {name: marks[i + 1] - marks[i] for i, name in enumerate(STAGES[:-1])}
        return {**spans, "voice_to_voice": marks[-1] - marks[0]}


@dataclass
class Timeline(Observer):
    """Collects ``Turn``s as the graph runs; ``on_answer`` is called once per answered turn."""

    turns: list[Turn] = field(default_factory=list)
    on_answer: Callable[[int, Turn], None] | None = None
    originators: dict[type[Frame], str] = field(default_factory=dict)

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        now = time.monotonic()
        if isinstance(frame, TranscriptFrame):
            self._transcript(target, frame, now)
            return
        kind = type(frame)
        if kind not in _ORIGINATED or self.originators.setdefault(kind, source.name) != source.name:
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_started(frame.at, now)
        elif not self.turns:
            return
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self.turns[-1].speech_end, self.turns[-1].vad_stop = frame.at, now
        else:
            self._bot(frame, now)

    def _user_started(self, at: float, now: float) -> None:
        """A new turn, unless the current one has no spoken answer yet (the user only paused)."""
        if not self.turns or self.turns[-1].first_audio is not None:
            self.turns.append(Turn(speech_start=at, vad_start=now))
            return
        turn = self.turns[-1]  # any reply begun at the pause was dropped: it starts again
        turn.transcripts.clear()
        turn.first_token = None

    def _transcript(self, target: Processor | None, frame: TranscriptFrame, now: float) -> None:
        llm = self.originators.get(LLMTextFrame)
        if self.turns and target is not None and (llm is None or target.name == llm):
            turn = self.turns[-1]
            if turn.first_audio is None:
                turn.transcripts.append(now)
                turn.text = frame.text

    def _bot(self, frame: Frame, now: float) -> None:
        turn = self.turns[-1]
        if isinstance(frame, LLMTextFrame) and turn.first_token is None and turn.vad_stop is not None:
            turn.first_token = now
        elif isinstance(frame, BotAudioFrame) and turn.first_audio is None and turn.first_token is not None:
            turn.first_audio = now
        elif isinstance(frame, BotStartedSpeakingFrame) and turn.bot_started is None and turn.first_audio:
            turn.bot_started = now
            if self.on_answer is not None:
                self.on_answer(len(self.turns) - 1, turn)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            playing = [t for t in self.turns if t.bot_started is not None and t.bot_stopped is None]
            if playing:
                playing[0].bot_stopped = now
        elif isinstance(frame, InterruptionFrame):
            for earlier in self.turns[:-1]:
                if earlier.bot_started is not None and earlier.bot_stopped is None:
                    earlier.interrupted = True
                    if turn.interruption is None:
                        turn.interruption = now

    def barge_in_stages(self) -> list[dict[str, float]]:
        """Where each barge-in's time went (``BARGE_IN_STAGES``): the VAD's start hysteresis, the turn
        taker's decision, and the output falling silent (audio already queued or playing)."""
        parts = []
        for prev, nxt in zip(self.turns, self.turns[1:], strict=False):
            marks = (nxt.speech_start, nxt.vad_start, nxt.interruption, prev.bot_stopped)
            if prev.interrupted and all(m is not None for m in marks):
                start, vad, cut, silent = (float(m or 0.0) for m in marks)
                vad = max(vad, start)
                cut = max(cut, vad)
                spans = (vad - start, cut - vad, max(silent, cut) - cut)
                parts.append(dict(zip(BARGE_IN_STAGES, spans, strict=True)))
        return parts

    def barge_ins(self) -> list[float]:
        """Seconds from the start of each barging user's speech to the interrupted bot falling silent."""
        return [
            prev.bot_stopped - nxt.speech_start
            for prev, nxt in zip(self.turns, self.turns[1:], strict=False)
            if prev.interrupted and prev.bot_stopped is not None and nxt.speech_start is not None
        ]
