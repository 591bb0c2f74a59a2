"""``ChatLLM``: what every LLM node does the same way — turns, history, streaming frames, barge-in.

An engine subclasses ``ChatLLM`` and implements one async generator, ``stream_reply(messages)``,
yielding text chunks (and ``ToolCall``s). The base turns each user turn (a ``UserTextFrame``: a final
transcript or a typed message) into ``LLMResponseStartFrame``, ``LLMTextFrame`` chunks,
``LLMToolCallFrame``s and ``LLMResponseEndFrame``, and keeps the conversation
(``processors.llm.context``). The bot's text and interim transcripts pass by.

Barge-in: an ``InterruptionFrame`` cancels the in-flight ``process``; the stream is closed at once
(``aclose``), so an engine stops its generation in the generator's ``finally`` (a stop flag for a
thread, closing an HTTP stream). The history then keeps only the part of the reply that was heard,
as reported by ``SpokenTextFrame``s travelling upstream from the output transport.

Preemptive reply: a ``TentativeTurnFrame`` (sent by ``turn.taking`` at the VAD's pause) starts the
reply in a background task whose output is held here. If the turn then ends with the same text, the
held reply is sent on at once and the rest streams as usual; any other turn, a withdrawal (a tentative
turn with no text) or a barge-in cancels it, and nothing of it reaches the TTS or the history.

False interruption: a ``ResumeReplyFrame`` (a barge-in that brought no words) speaks the interrupted
reply again from the sentence that was cut (or whole, ``repeat``); the history keeps it as one reply.

The user's audio passes through on its way to the recorder, and it waits while a reply is generated
(seconds; longer when sessions take turns on a shared model). The inbox is sized so that it waits
here (``PASS_THROUGH_FRAMES``) instead of backing up into the VAD and recogniser upstream: they keep
hearing the user live, so a session that is slow to answer does not also fall behind its audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.frames import (
    UPSTREAM,
    BotStoppedSpeakingFrame,
    DataFrame,
    Frame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    SpokenTextFrame,
    SystemFrame,
    UserTextFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from processors.llm.context import Conversation, approximate_tokens
from processors.llm.streams import closing_stream

__all__ = ["ChatLLM", "ChatParams", "ResumeReplyFrame", "TentativeTurnFrame", "ToolCall"]

log = logging.getLogger("processors.llm")


DEFAULT_SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in one or two short spoken sentences."
PASS_THROUGH_FRAMES = 1500
"""Inbox bound of LLM and TTS nodes: 30 s of 20 ms user audio waiting behind a reply (~1 MB)."""


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A tool call the model asked for; ``arguments`` is the JSON text it produced."""

    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class TentativeTurnFrame(DataFrame):
    """The user paused and may be done saying ``text``: prepare the reply, hold it back. Empty text
    withdraws the tentative turn (the user went on)."""

    text: str = ""
    kind: ClassVar[str] = "tentative_turn"


@dataclass(slots=True)
class ResumeReplyFrame(SystemFrame):
    """A barge-in brought no words: speak the interrupted reply again, from the cut sentence or
    (``repeat``) from its start."""

    repeat: bool = False
    kind: ClassVar[str] = "resume_reply"


class _PreparedReply:
    """A reply generated in the background for a tentative turn; its items wait here until adopted."""

    def __init__(self, text: str, stream: AsyncIterator[str | ToolCall]) -> None:
        self.text = text
        self.items: list[str | ToolCall] = []  # bounded by the engine's max_tokens
        self.error: BaseException | None = None
        self.done = False
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._collect(stream), name="llm-preemptive")

    async def _collect(self, stream: AsyncIterator[str | ToolCall]) -> None:
        try:
            async with closing_stream(stream) as items:
                async for item in items:
                    self.items.append(item)
                    self.arrived.set()
        except Exception as error:  # reported only if the reply is adopted
            self.error = error
        finally:
            self.done = True
            self.arrived.set()

    async def drain(self) -> AsyncIterator[str | ToolCall]:
        """Every item, those held and those still to come."""
        sent = 0
        while True:
            self.arrived.clear()
            while sent < len(self.items):
                sent += 1
                yield self.items[sent - 1]
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            await self.arrived.wait()

    async def cancel(self) -> None:
        self.task.cancel()
        await asyncio.wait({self.task}, timeout=5.0)


@dataclass(slots=True, kw_only=True)
class ChatParams:
    """Params every LLM node takes; engines extend this dataclass."""

    system_prompt: str = param(DEFAULT_SYSTEM_PROMPT, doc="instructions sent first in every request")
    max_history_tokens: int = param(
        1500, doc="history budget: the oldest turns are dropped first; the system prompt is always kept"
    )
    max_tokens: int = param(150, ge=1, doc="longest reply, in tokens")
    temperature: float = param(0.7, doc="sampling temperature: 0 = most likely token, higher = more varied")


class ChatLLM(Processor):
    """Replies to each user turn with a streamed answer and remembers what was said and heard."""

    Params: ClassVar[type[Any]] = ChatParams
    handles: ClassVar[tuple[type[Frame], ...]] = (UserTextFrame, TentativeTurnFrame, ResumeReplyFrame)
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (SpokenTextFrame, BotStoppedSpeakingFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (
        LLMResponseStartFrame,
        LLMTextFrame,
        LLMToolCallFrame,
        LLMResponseEndFrame,
        UserTextFrame,  # the user's turn is passed on (recorders, transcripts)
    )

    queue_size: ClassVar[int] = PASS_THROUGH_FRAMES

    params: ChatParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.context = Conversation(self.params.system_prompt)
        self._prepared: _PreparedReply | None = None  # the reply to a tentative turn, held back
        self.preemptive_used = 0  # replies that were under way when their turn ended
        self.preemptive_dropped = 0  # replies prepared for a turn that went on

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        """Yield the reply to ``messages`` (OpenAI chat form) as text chunks and tool calls.

        Stop generating in a ``finally``: the base closes this generator on barge-in.
        """
        raise NotImplementedError
        yield  # pragma: no cover

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``, for the history budget; engines with a tokenizer override this."""
        return approximate_tokens(text)

    async def process(self, frame: UserTextFrame | TentativeTurnFrame | ResumeReplyFrame) -> None:
        if isinstance(frame, TentativeTurnFrame):
            await self._prepare(frame.text.strip())
            return
        if isinstance(frame, ResumeReplyFrame):
            await self._resume(frame.repeat)
            return
        await self.push(frame)
        text = frame.text.strip()
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.text == text:
            self.preemptive_used += 1
            await self.reply(text, prepared)
            return
        if prepared is not None:
            await self._drop(prepared)
        if text:
            await self.reply(text)

    async def _prepare(self, text: str) -> None:
        """Start (or withdraw) the reply to a tentative turn; the history is left as it is."""
        if self._prepared is not None:
            if self._prepared.text == text:
                return
            prepared, self._prepared = self._prepared, None
            await self._drop(prepared)
        if text:
            messages = [*self.context.messages(), {"role": "user", "content": text}]
            self._prepared = _PreparedReply(text, self.stream_reply(messages))

    async def _drop(self, prepared: _PreparedReply) -> None:
        self.preemptive_dropped += 1
        await prepared.cancel()

    async def _resume(self, repeat: bool) -> None:
        text = self.context.resume_interrupted(repeat)
        if not text:
            return
        await self.push(LLMResponseStartFrame())
        await self.push(LLMTextFrame(text=text))
        await self.push(LLMResponseEndFrame())

    async def reply(self, text: str, prepared: _PreparedReply | None = None) -> None:
        """Answer one user turn: frames downstream, the turn and the reply into the history.
        ``prepared`` is the reply already under way for this text (a preemptive reply)."""
        self.context.add_user(text)
        self.context.trim(self.params.max_history_tokens, self.count_tokens)
        messages = self.context.messages()
        self.context.begin_assistant()
        await self.push(LLMResponseStartFrame())
        try:
            with self.metrics.measure():
                source = prepared.drain() if prepared is not None else self.stream_reply(messages)
                async with closing_stream(source) as stream:
                    async for item in stream:
                        await self._emit(item)
        except Exception:
            await self.push(LLMResponseEndFrame())  # downstream speaks what came; the error goes up
            raise
        finally:
            self.context.finish()
            if prepared is not None and not prepared.done:
                await prepared.cancel()  # a barge-in cancelled the adopted reply: stop its generation
        await self.push(LLMResponseEndFrame())

    async def _emit(self, item: str | ToolCall) -> None:
        if isinstance(item, ToolCall):
            self.metrics.first_byte()
            await self.push(LLMToolCallFrame(call_id=item.call_id, name=item.name, arguments=item.arguments))
        elif item:
            self.metrics.first_byte()
            self.context.append(item)
            await self.push(LLMTextFrame(text=item))

    async def process_upstream(self, frame: SpokenTextFrame | BotStoppedSpeakingFrame) -> None:
        if isinstance(frame, BotStoppedSpeakingFrame):
            self.context.played_out()  # a sentence the TTS failed to speak leaves the history
        else:
            self.context.append_spoken(frame.text)
        await self.push(frame, UPSTREAM)

    async def on_interrupt(self) -> None:
        self.context.truncate_to_spoken()
        await self._withdraw()

    async def on_stop(self) -> None:
        await self._withdraw()

    async def _withdraw(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            await self._drop(prepared)
