"""``SpeechSynthesizer``: what every TTS node does the same way — sentences, frames, barge-in.

An engine subclasses it, sets ``sample_rate`` and implements ``synthesize(text)``, an async generator
of s16le mono PCM in chunks of any size. The base cuts streamed LLM text into sentences
(``SentenceChunker``) and, per reply, emits::

    TTSStartedFrame, (TTSTextFrame(sentence), BotAudioFrame x n) per sentence, TTSStoppedFrame

What belongs to one reply: every ``BotTextFrame`` between ``LLMResponseStartFrame`` and
``LLMResponseEndFrame``, whatever its class, so a processor between the LLM and the TTS may re-type
chunks without splitting the reply; ``LLMTextFrame``s from a producer that sends no boundaries; and
any other ``BotTextFrame`` outside a response is a reply of its own (a greeting). ``TTSTextFrame``s
label audio made already: they pass on unspoken.

Audio frames are exactly ``chunk_ms`` long (the last one of a sentence is padded with silence), so
transports and recorders get a steady frame size whatever the engine emits. Every input frame is
passed on too (before the audio it causes), so recorders downstream still see the LLM's text.

Sentences are synthesised one after the other, not overlapped with pushing the previous one's
audio: pushing returns as soon as the audio is queued downstream (the output transport's inbox
holds 64 frames = 1.28 s at 20 ms), and the offline engines run at RTF 0.07 (Piper) or less, so the
next sentence is ready long before the queued audio has played. An engine slower than real time
should overlap inside its own ``synthesize`` (stream partial audio).

``first_chunk_min_words`` (6) lets the first piece of a reply end at a comma: with Piper and text
streamed at 80 tokens/s, first audio came after ~300 ms instead of ~610 ms for an 18-word first
sentence (~440 vs ~960 ms at 40 tokens/s). Six words are ~2 s of speech: enough for natural prosody
and to cover synthesising the rest of the sentence, so no gap follows the first piece.

Barge-in cancels the synthesis in flight (the generator is closed, so an engine kills its
subprocess or stops its thread in a ``finally``) and clears the buffered text. No
``TTSStoppedFrame`` follows an interruption: the ``InterruptionFrame`` itself ends the reply for
everything downstream.

The user's audio passes through on its way to the recorder and waits while a sentence is synthesised;
like the LLM's, the inbox holds ``PASS_THROUGH_FRAMES`` so that wait never backs up into the VAD.

Preemptive replies: a ``TentativeReplyFrame`` (the LLM's text so far of a reply it holds back during
the user's pause) has the reply's first piece synthesised ahead (``processors.tts.ahead``); if the
reply then comes with that first piece, its audio goes out at once. ``prepare_ahead: false`` turns
this off (a cloud engine bills a piece made for a turn that went on).

Metrics: ``ttfb`` is reply start (``LLMResponseStartFrame`` or a reply's first text) to first audio,
so it includes the LLM's time to the first sentence; ``processing`` is each sentence's synthesis.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.formats import AudioFormat
from pipeline.frames import (
    BotAudioFrame,
    BotTextFrame,
    Frame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from processors.llm.base import PASS_THROUGH_FRAMES, TentativeReplyFrame
from processors.llm.streams import closing_stream
from processors.tts.ahead import PieceAhead
from processors.tts.sentences import SentenceChunker

__all__ = ["SpeechParams", "SpeechSynthesizer"]


@dataclass(slots=True, kw_only=True)
class SpeechParams:
    """Params every TTS node takes; engines extend this dataclass."""

    chunk_ms: int = param(20, ge=1, doc="length of each emitted audio frame in milliseconds")
    first_chunk_min_words: int = param(
        6,
        ge=0,
        doc="the first piece of a reply may end at a comma once it has this many words "
        "(faster first audio); 0 = split at sentence ends only",
    )
    first_chunk_max_words: int = param(
        0,
        doc="the first piece of a reply ends after this many words even without punctuation "
        "(fastest first audio; the seam may be heard); 0 = wait for punctuation",
    )
    prepare_ahead: bool = param(
        True,
        doc="synthesise the first piece of a preemptive reply (turn.taking preemptive_reply) before "
        "the turn ends; it plays only if the reply keeps those words",
    )


class SpeechSynthesizer(Processor):
    """Speaks each reply sentence by sentence as audio frames of ``chunk_ms``."""

    owned_hooks: ClassVar[dict[str, str]] = {"on_stop": "close", "on_interrupt": "reset"}

    Params: ClassVar[type[Any]] = SpeechParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        BotTextFrame,
        LLMResponseStartFrame,
        LLMResponseEndFrame,
        TentativeReplyFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (
        TTSStartedFrame,
        TTSTextFrame,
        BotAudioFrame,
        TTSStoppedFrame,
        BotTextFrame,  # the input text is passed on
    )

    queue_size: ClassVar[int] = PASS_THROUGH_FRAMES

    params: SpeechParams
    sample_rate: int = 22050
    """Rate of the PCM ``synthesize`` yields; engines set it (from their voice, in __init__ if they can,
    since format negotiation runs before ``on_start``)."""

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.chunker = self._new_chunker()
        self._ahead: PieceAhead | None = None  # the first piece of a tentative reply, synthesised ahead
        self.pieces_ahead_used = 0  # first pieces whose audio was made before their turn ended
        self._in_reply = False  # a reply started and has not been stopped
        self._in_response = False  # between LLMResponseStartFrame and its end: all text is that reply
        self._audio_started = False  # TTSStartedFrame was sent for this reply
        self._reply_started = 0.0  # perf_counter() at the reply's start, for ttfb

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield ``text`` as s16le mono PCM at ``self.sample_rate``, in chunks of any size.

        Release the engine in a ``finally``: the base closes this generator on barge-in.
        """
        raise NotImplementedError
        yield  # pragma: no cover

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(self.sample_rate, 1)

    def _new_chunker(self) -> SentenceChunker:
        return SentenceChunker(
            first_chunk_min_words=self.params.first_chunk_min_words,
            first_chunk_max_words=max(0, self.params.first_chunk_max_words),
        )

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TentativeReplyFrame):
            await self._prepare_ahead(frame.text)
            return
        if isinstance(frame, LLMResponseStartFrame | LLMResponseEndFrame):
            await self._end_reply()  # a reply's audio and TTSStoppedFrame come before its end frame
            await self.push(frame)
            self._in_response = isinstance(frame, LLMResponseStartFrame)
            if self._in_response:
                self._begin_reply()
            return
        if not isinstance(frame, BotTextFrame) or isinstance(frame, TTSTextFrame):
            await self.push(frame)  # a sentence already spoken (its audio follows it)
            return
        whole = not self._in_response and not isinstance(frame, LLMTextFrame)
        if whole:
            await self._end_reply()  # bot text outside a response is a reply of its own
        await self.push(frame)
        if not self._in_reply:
            self._begin_reply()  # a producer that sends no response boundaries
        for sentence in self.chunker.feed(frame.text):
            await self._speak(sentence)
        if whole:
            await self._end_reply()

    async def on_stop(self) -> None:
        try:
            # Only a graceful end still has listeners for the rest of a reply that never got its end.
            if not (self.ended or self.inbox.closed):
                await self._end_reply()
        finally:  # also when a cancel lands meanwhile
            try:
                await self._drop_ahead()
            finally:
                await self.close()

    async def on_interrupt(self) -> None:
        self.chunker.clear()
        self._in_reply = self._in_response = False
        self._audio_started = False
        await self._drop_ahead()
        await self.reset()

    async def _prepare_ahead(self, text: str) -> None:
        """Synthesise the first piece of a tentative reply's ``text`` (empty: it was dropped)."""
        if not text:
            await self._drop_ahead()
            return
        if not self.params.prepare_ahead or self._in_reply:
            return  # a reply is being spoken: the engine is busy with words that are wanted
        pieces = self._new_chunker().feed(text)
        if not pieces or (self._ahead is not None and self._ahead.text == pieces[0]):
            return
        await self._drop_ahead()
        if any(c.isalnum() for c in pieces[0]):
            self._ahead = PieceAhead(pieces[0], self.synthesize)

    async def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await ahead.cancel()

    async def close(self) -> None:
        """Release the engine (a client, a process): runs at the end, after the last audio left."""

    async def reset(self) -> None:
        """Forget per-reply engine state after a barge-in (the base has dropped the queued text)."""

    def _begin_reply(self) -> None:
        self.chunker.clear()
        self._in_reply = True
        self._audio_started = False
        self._reply_started = time.perf_counter()

    async def _end_reply(self) -> None:
        if not self._in_reply:
            return
        for sentence in self.chunker.feed("\n"):
            await self._speak(sentence)
        rest = self.chunker.flush()
        if rest:
            await self._speak(rest)
        if self._audio_started:
            await self.push(TTSStoppedFrame())
        self._in_reply = False
        self._audio_started = False

    async def _speak(self, sentence: str) -> None:
        """One sentence: its text frame, then its audio in ``chunk_ms`` frames."""
        first = not self._audio_started
        if first:
            self._audio_started = True
            await self.push(TTSStartedFrame())
        await self.push(TTSTextFrame(text=sentence))
        ahead = await self._audio_ahead(sentence) if first else None
        if not any(c.isalnum() for c in sentence):
            return  # punctuation only: nothing to say
        rate = self.sample_rate
        frame_bytes = max(2, rate * self.params.chunk_ms // 1000 * 2)
        pending = b""
        with self.metrics.measure():
            async with closing_stream(self._pcm(sentence, ahead)) as stream:
                async for pcm in stream:
                    pending += pcm
                    whole = len(pending) // frame_bytes * frame_bytes
                    if whole:
                        self._first_audio()
                    for start in range(0, whole, frame_bytes):
                        chunk = pending[start : start + frame_bytes]
                        await self.push(BotAudioFrame(pcm=chunk, sample_rate=rate, channels=1))
                    pending = pending[whole:]
        if len(pending) >= 2:
            self._first_audio()
            padded = pending[: len(pending) // 2 * 2].ljust(frame_bytes, b"\0")
            await self.push(BotAudioFrame(pcm=padded, sample_rate=rate, channels=1))

    async def _audio_ahead(self, piece: str) -> list[bytes] | None:
        """The audio made ahead for a reply's first ``piece``, if it was this piece (else it is dropped)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if ahead.text != piece:
            await ahead.cancel()
            return None
        audio = await ahead.audio()
        if audio is not None:
            self.pieces_ahead_used += 1
        return audio

    async def _pcm(self, sentence: str, ahead: list[bytes] | None) -> AsyncIterator[bytes]:
        """The sentence's PCM: made ahead, or synthesised now."""
        if ahead is not None:
            for chunk in ahead:
                yield chunk
            return
        async with closing_stream(self.synthesize(sentence)) as stream:
            async for pcm in stream:
                yield pcm

    def _first_audio(self) -> None:
        if self._reply_started:
            self.metrics.record("ttfb", time.perf_counter() - self._reply_started)
            self._reply_started = 0.0
