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

The user's audio passes through on its way to the recorder, and it waits while a reply is generated
(seconds; longer when sessions take turns on a shared model). The inbox is sized so that it waits
here (``PASS_THROUGH_FRAMES``) instead of backing up into the VAD and recogniser upstream: they keep
hearing the user live, so a session that is slow to answer does not also fall behind its audio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.frames import (
    UPSTREAM,
    BotStoppedSpeakingFrame,
    Frame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    SpokenTextFrame,
    UserTextFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from processors.llm.context import Conversation, approximate_tokens
from processors.llm.streams import closing_stream

__all__ = ["ChatLLM", "ChatParams", "ToolCall"]


DEFAULT_SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in one or two short spoken sentences."
PASS_THROUGH_FRAMES = 1500
"""Inbox bound of LLM and TTS nodes: 30 s of 20 ms user audio waiting behind a reply (~1 MB)."""


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A tool call the model asked for; ``arguments`` is the JSON text it produced."""

    call_id: str
    name: str
    arguments: str


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
    handles: ClassVar[tuple[type[Frame], ...]] = (UserTextFrame,)
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

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        """Yield the reply to ``messages`` (OpenAI chat form) as text chunks and tool calls.

        Stop generating in a ``finally``: the base closes this generator on barge-in.
        """
        raise NotImplementedError
        yield  # pragma: no cover

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``, for the history budget; engines with a tokenizer override this."""
        return approximate_tokens(text)

    async def process(self, frame: UserTextFrame) -> None:
        await self.push(frame)
        text = frame.text.strip()
        if text:
            await self.reply(text)

    async def reply(self, text: str) -> None:
        """Answer one user turn: frames downstream, the turn and the reply into the history."""
        self.context.add_user(text)
        self.context.trim(self.params.max_history_tokens, self.count_tokens)
        messages = self.context.messages()
        self.context.begin_assistant()
        await self.push(LLMResponseStartFrame())
        try:
            with self.metrics.measure():
                async with closing_stream(self.stream_reply(messages)) as stream:
                    async for item in stream:
                        await self._emit(item)
        except Exception:
            await self.push(LLMResponseEndFrame())  # downstream speaks what came; the error goes up
            raise
        finally:
            self.context.finish()
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
