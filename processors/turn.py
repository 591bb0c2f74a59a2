"""``turn.taking``: decides when the user's turn ends and when the user is barging in.

It sits between the recogniser and the LLM:

* **End of turn** = the VAD says the user stopped *and* the recogniser's final transcript has arrived
  (in either order). The finals of one turn are merged into a single ``TranscriptFrame`` for the LLM,
  so a sentence cut by a short pause is answered once.
* **Barge-in**: while the bot is answering (from the moment a turn is handed to the LLM until the
  playing transport reports the bot silent), user speech that lasts ``min_speech_secs`` — and, when
  ``min_words`` is set, has that many real words in its transcript — sends an ``InterruptionFrame``
  downstream: the LLM and TTS drop their work and the transport falls silent.
* **Not a barge-in**: short sounds, filler words ("mhm", "uh-huh") and the bot's own echo (words that
  repeat what the bot is saying) are dropped: they neither interrupt nor start a turn.
* **A key ends the turn** (phone calls): the ``end_turn_digit`` key (``#`` by default) ends the turn
  in progress without waiting for the VAD, which a noisy line may keep open. If the recogniser still
  has words in flight (an interim newer than the last final, or no final yet), the next final ends the
  turn; otherwise it ends at once. A recogniser that transcribes only when the VAD stops gains nothing.
  Pressed with nothing said, or over the bot, the key does nothing. Every ``DTMFFrame`` is passed on.
* **Stale turns** (with a VAD): when a turn ends while the previous one is still unanswered (queued
  for the LLM, or generating, but not yet heard) — a recogniser that fell behind delivers finals late —
  the older reply would only come late: an ``InterruptionFrame`` drops it before the new turn is handed
  on, so a session that fell behind answers its latest turn instead of working through a backlog.

* **Preemptive reply** (``preemptive_reply``): in the VAD's pause (``UserSpeechPausedFrame``), with a
  transcript of everything said up to it in hand, a ``TentativeTurnFrame`` lets the LLM start the
  reply and hold it back. Finals count at once; an interim only if it came during the pause: one
  from before it may lack the last words, and a reply to it would be thrown away (a recogniser that
  transcribes at the pause, such as ``stt.whisper``, sends its interim then). If the turn ends with
  the same text, the reply is already under way; if the user goes on, the tentative turn is
  withdrawn and its reply discarded unheard.
* **False interruptions** (``false_interruption``): when a barge-in is followed by no words within
  ``false_interruption_secs`` of the user falling silent (a cough, a door), a ``ResumeReplyFrame``
  asks the LLM to speak the interrupted reply again (``resume``: from the cut sentence; ``repeat``:
  whole) instead of leaving the user in silence.

The speaking-state frames arrive from both sides: the VAD's ``User*SpeakingFrame`` downstream, the
transport's ``Bot*SpeakingFrame`` and ``SpokenTextFrame`` upstream.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.frames import (
    DTMF_DIGITS,
    UPSTREAM,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    DTMFFrame,
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    SpokenTextFrame,
    TranscriptFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from processors.llm.base import ResumeReplyFrame, TentativeTurnFrame

__all__ = ["TurnTaking", "TurnTakingParams"]

REPLY_WAIT_LIMIT = 120.0
"""Seconds after which a reply that never started playing is taken to be lost (an engine error, a
silent reply), not late: ``reply_wait`` then reports 0 instead of a wait that grows for ever."""
BACKCHANNEL_FINAL_WAIT = 3.0
"""Seconds after a backchannel (speech over the bot that did not interrupt) within which a final
transcript is taken to be its own and dropped; a cough or a breath may bring none at all."""

_FILLERS = ["mhm", "mm", "hmm", "uh", "um", "uh-huh", "huh", "ah", "oh", "yeah", "ok", "okay", "right"]
_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


@dataclass(slots=True, kw_only=True)
class TurnTakingParams:
    """How eagerly the user may interrupt the bot."""

    min_speech_secs: float = param(
        0.0,
        doc="user speech over the bot must last this long (beyond the VAD's own start_secs) to interrupt",
    )
    min_words: int = param(
        0, doc="also require this many non-filler words in the transcript to interrupt (0 = off)"
    )
    filler_words: list[str] = param(
        _FILLERS, doc="words that never count towards min_words and never start a turn on their own"
    )
    ignore_echo: bool = param(
        True, doc="words the bot is saying right now do not count (its own voice leaking into the mic)"
    )
    interruptions: bool = param(True, doc="false = the bot always finishes its reply")
    end_turn_digit: str | None = param(
        "#",
        choices=tuple(DTMF_DIGITS),
        doc="a phone key (DTMF) that ends the user's turn without waiting for the VAD; null = no key does",
    )
    preemptive_reply: bool = param(
        False,
        doc="start the LLM on the transcript at the VAD's pause, held back until the turn ends with it",
    )
    false_interruption: str = param(
        "resume",
        choices=("off", "resume", "repeat"),
        doc="a barge-in with no words after it: speak the cut reply on from its cut sentence, whole, or not",
    )
    false_interruption_secs: float = param(
        1.0, gt=0.0, doc="seconds of silence after a barge-in, with no words, that make it a false one"
    )


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text``, punctuation dropped."""
    return _WORD.findall(text.lower())


class TurnTaking(Processor):
    """Merges final transcripts into one per user turn and starts barge-in (see module docstring)."""

    Params = TurnTakingParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        InterimTranscriptFrame,
        TranscriptFrame,
        DTMFFrame,
        UserSpeechPausedFrame,
    )
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        SpokenTextFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (
        InterimTranscriptFrame,
        TranscriptFrame,
        TentativeTurnFrame,
        ResumeReplyFrame,
    )

    params: TurnTakingParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._fillers = {w for word in self.params.filler_words for w in words_of(word)}
        self._user_speaking = False
        self._speech_started_at = 0.0  # loop-clock time the current user speech truly began
        self._speech_stopped_at: float | None = None  # loop-clock time the last user speech ended
        self._finals: list[TranscriptFrame] = []  # finals of the turn in progress
        self._bot_speaking = False
        self._answering = False  # a turn was handed on and the bot has not finished answering it
        self._overlap = False  # the current user speech began while the bot was answering
        self._drop_finals = 0  # finals still to come from speech judged a backchannel or echo...
        self._drop_until = 0.0  # ...if they come before this loop time (a cough may give none)
        self._bot_words: set[str] = set()  # words of the reply being spoken (echo detection)
        self._timer: asyncio.TimerHandle | None = None
        self._end_requested = False  # the end-of-turn key was pressed: the next final ends the turn
        self._words_in_flight = False  # an interim came after the last final: more final text is due
        self.stale_turns = 0  # turns dropped unanswered because a newer one ended first
        self._paused = False  # the VAD heard a pause in the current speech (it may be the end)
        self._interim = ""  # the newest interim, if it came after the last final
        self._interim_in_pause = False  # that interim came during the current pause: it heard it all
        self._tentative = ""  # the text of the tentative turn the LLM is preparing a reply to
        self._barged_in = False  # a barge-in has had no words after it yet
        self._false_timer: asyncio.TimerHandle | None = None
        self.false_interruptions = 0  # barge-ins with no words after them; the reply was resumed

    # --- downstream: the user's side ---------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, UserStartedSpeakingFrame):
            await self.push(frame)
            await self._user_started(frame)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self.push(frame)
            await self._user_stopped(frame)
        elif isinstance(frame, InterimTranscriptFrame):
            await self.push(frame)
            self._words_in_flight = bool(frame.text.strip())
            self._interim = frame.text.strip()
            self._interim_in_pause = self._paused
            if self._overlap and self._qualifies_by_words(frame.text):
                self._barge_in()
            await self._preempt()
        elif isinstance(frame, UserSpeechPausedFrame):
            await self.push(frame)
            self._paused = self._user_speaking and not self._overlap
            self._interim_in_pause = False
            await self._preempt()
        elif isinstance(frame, TranscriptFrame):
            await self._final(frame)
        elif isinstance(frame, DTMFFrame):
            await self.push(frame)
            if frame.digit == self.params.end_turn_digit:
                await self._end_turn_by_key()

    async def _user_started(self, frame: UserStartedSpeakingFrame) -> None:
        loop = asyncio.get_running_loop()
        self._end_requested = False  # a key pressed before this speech began ended nothing
        self._user_speaking = True
        self._paused = False
        self._cancel_false_timer()
        await self._withdraw()
        self._speech_started_at = frame.at or loop.time()
        self._overlap = self.params.interruptions and (self._answering or self._bot_speaking)
        if not self._overlap:
            self._drop_finals = 0  # a backchannel's final never came (a cough): this is a new turn
        if not self._overlap or self.params.min_words:
            return  # a word-count rule waits for the transcript
        remaining = self._speech_started_at + self.params.min_speech_secs - loop.time()
        if remaining <= 0:
            self._barge_in()
        else:
            self._timer = loop.call_later(remaining, self._on_speech_long_enough)

    def _on_speech_long_enough(self) -> None:
        self._timer = None
        if self._user_speaking:
            self._barge_in()

    async def _user_stopped(self, frame: UserStoppedSpeakingFrame) -> None:
        self._cancel_timer()
        self._user_speaking = False
        self._paused = False
        self._speech_stopped_at = frame.at or asyncio.get_running_loop().time()
        if self._barged_in and self.params.false_interruption != "off" and not self._finals:
            self._false_timer = asyncio.get_running_loop().call_later(
                self.params.false_interruption_secs, self._on_false_interruption
            )
        if self._overlap:
            # Speech over the bot that never qualified: a backchannel or echo, not a turn.
            self._overlap = False
            self._drop_finals += 1
            self._drop_until = asyncio.get_running_loop().time() + BACKCHANNEL_FINAL_WAIT
            self._finals.clear()
            return
        await self._end_turn_if_ready()

    async def _final(self, frame: TranscriptFrame) -> None:
        self._words_in_flight = False
        self._interim = ""
        if self._overlap:
            if self._qualifies_by_words(frame.text):
                self._barge_in()
            else:
                return
        elif self._drop_finals and not self._user_speaking:
            self._drop_finals -= 1
            if asyncio.get_running_loop().time() <= self._drop_until:
                return
        if not self._meaningful(frame.text):
            return
        self._barged_in = False  # words came: the barge-in was real
        self._cancel_false_timer()
        self._finals.append(frame)
        await self._end_turn_if_ready()
        await self._preempt()

    async def _end_turn_by_key(self) -> None:
        if self._overlap or not (self._user_speaking or self._finals):
            return  # over the bot it is not a barge-in; with nothing said there is no turn to end
        self._end_requested = True
        if self._user_speaking:  # the VAD still hears speech (or noise): the key says it is over
            self._speech_stopped_at = asyncio.get_running_loop().time()
        if not self._words_in_flight:
            await self._end_turn_if_ready()

    async def _end_turn_if_ready(self) -> None:
        if (self._user_speaking and not self._end_requested) or not self._finals:
            return
        self._end_requested = False
        self._tentative = ""  # the turn itself follows: the LLM matches it against the tentative one
        self._interim = ""
        finals, self._finals = self._finals, []
        text = " ".join(f.text.strip() for f in finals if f.text.strip())
        words = [w for f in finals for w in (f.words or [])] or None
        if self._answering and not self._bot_speaking and self._speech_stopped_at is not None:
            # With a VAD (without one, finals are pieces of one stream, answered in order) and nothing
            # of the older reply heard yet: drop it rather than answer it late.
            self.stale_turns += 1
            self.push_system(InterruptionFrame())
        self._answering = True
        self._bot_words.clear()
        await self.push(TranscriptFrame(text=text, language=finals[-1].language, words=words))

    def reply_wait(self) -> float:
        """Seconds the user has been waiting for the answer to their last turn (0: not waiting).

        Load meters read it to see a queue forming (sessions taking turns on a shared model) before
        the late reply arrives.
        """
        if not self._answering or self._bot_speaking or self._speech_stopped_at is None:
            return 0.0
        waited = asyncio.get_running_loop().time() - self._speech_stopped_at
        return waited if 0.0 < waited < REPLY_WAIT_LIMIT else 0.0

    # --- preemptive reply ------------------------------------------------------------------------

    async def _preempt(self) -> None:
        """In a pause, hand the transcript so far to the LLM as a tentative turn (once per text)."""
        if not (self.params.preemptive_reply and self._paused and self._user_speaking) or self._overlap:
            return
        if self._interim and not self._interim_in_pause:
            return  # words still in flight: the interim or final that covers the pause is due
        text = " ".join(f.text.strip() for f in self._finals if f.text.strip())
        text = f"{text} {self._interim}".strip()
        if text and text != self._tentative and self._meaningful(text):
            self._tentative = text
            await self.push(TentativeTurnFrame(text=text))

    async def _withdraw(self) -> None:
        """The user went on: the reply prepared for the tentative turn will not be wanted."""
        if self._tentative:
            self._tentative = ""
            await self.push(TentativeTurnFrame(text=""))

    # --- barge-in ----------------------------------------------------------------------------------

    def _qualifies_by_words(self, text: str) -> bool:
        if not self.params.min_words:
            return False
        heard = [w for w in words_of(text) if w not in self._fillers]
        if self.params.ignore_echo:
            heard = [w for w in heard if w not in self._bot_words]
        return len(heard) >= self.params.min_words

    def _meaningful(self, text: str) -> bool:
        """A turn needs at least one word that is not a filler."""
        return any(w not in self._fillers for w in words_of(text))

    def _barge_in(self) -> None:
        """Interrupt everything downstream (synchronous: also called from a timer)."""
        if not self._overlap:
            return
        self._overlap = False
        self._cancel_timer()
        latency = asyncio.get_running_loop().time() - self._speech_started_at
        self.metrics.record("barge_in_decision", latency)
        self._answering = False
        self._bot_words.clear()
        self._barged_in = True
        self.push_system(InterruptionFrame())

    def _on_false_interruption(self) -> None:
        self._false_timer = None
        if not self._barged_in or self._user_speaking or self._finals or self._answering:
            return
        self._barged_in = False
        self.false_interruptions += 1
        self._answering = True
        self.push_system(ResumeReplyFrame(repeat=self.params.false_interruption == "repeat"))

    def _cancel_false_timer(self) -> None:
        if self._false_timer is not None:
            self._false_timer.cancel()
            self._false_timer = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- upstream: the bot's side ------------------------------------------------------------------

    async def process_upstream(self, frame: Frame) -> None:
        if isinstance(frame, BotStartedSpeakingFrame):
            if not self._bot_speaking and self._answering and self._speech_stopped_at is not None:
                self.metrics.record(
                    "voice_to_voice", asyncio.get_running_loop().time() - self._speech_stopped_at
                )
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._answering = False
        elif isinstance(frame, SpokenTextFrame):
            self._bot_words.update(words_of(frame.text))
        await self.push(frame, UPSTREAM)

    async def on_interrupt(self) -> None:
        # An interruption from further upstream (another node's barge-in): the reply is gone.
        self._answering = False
        self._overlap = False
        self._cancel_timer()

    async def on_stop(self) -> None:
        self._cancel_timer()
        self._cancel_false_timer()
        if self.ended and self._finals:
            self._user_speaking = False
            await self._end_turn_if_ready()
