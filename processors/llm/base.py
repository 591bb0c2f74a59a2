"""``ChatLLM``: what every LLM node does the same way — turns, history, streaming frames, barge-in.

An engine subclasses ``ChatLLM`` and implements one async generator, ``stream_reply(messages)``,
yielding text chunks (and ``ToolCall``s). The base turns each user turn (a ``UserTextFrame``: a final
transcript or a typed message) into ``LLMResponseStartFrame``, ``LLMTextFrame`` chunks,
``LLMToolCallFrame``s and ``LLMResponseEndFrame``, and keeps the conversation
(``processors.llm.context``). The bot's text passes by.

Barge-in: an ``InterruptionFrame`` cancels the in-flight ``process``; the stream is closed at once
(``aclose``), so an engine stops its generation in the generator's ``finally`` (a stop flag for a
thread, closing an HTTP stream). The history then keeps only the part of the reply that was heard,
as reported by ``SpokenTextFrame``s travelling upstream from the output transport.

Preemptive reply: a ``TentativeTurnFrame`` (sent by ``turn.taking`` at the VAD's pause) starts the
reply in a background task whose output is held here. If the turn then ends with the same text, the
held reply is sent on at once and the rest streams as usual; any other turn, a withdrawal (a tentative
turn with no text) or a barge-in cancels it, and nothing of it reaches the TTS or the history. While it is
held, its text so far goes downstream in ``TentativeReplyFrame``s (up to ``TENTATIVE_REPLY_CHARS``), so
the TTS can synthesise the reply's first words before the turn ends; that audio is played only if the
reply is adopted with the same words (``processors.tts.base``).

Prefill: interim transcripts pass on, and each is offered to ``prefill`` (the history plus the words so
far, in the background), so an engine with a local prompt cache can evaluate the prompt before the turn
ends and only the last words are left when the reply starts (``llm.local``); the default does nothing.

Tools (``processors.llm.tools``): the ``tools:`` param declares them and ``tool_schemas`` is what an
engine sends its provider. A stream that ends with ``ToolCall``s has them run (in parallel), the call
and its results go into the history, and ``stream_reply`` is asked again: the same reply, one
``LLMResponseStartFrame``/``LLMResponseEndFrame`` pair, at most ``max_tool_rounds`` rounds. A tool
slower than ``filler_after`` gets a filler said for it ("One moment."). A barge-in cancels the tools
still running and their calls get a "cancelled" result; a ``background`` tool runs on and its result
replaces the placeholder in the history when it comes. A barge-in that brings no words (a
``ResumeReplyFrame``) runs the cancelled calls again and the reply goes on, as if never cut.
``end_call`` ends the session once the reply has been sent on: the graph's sources are asked to stop,
so the end drains behind the goodbye (spoken and played out) and every node stops as it would at the
input's end. Calls to schema-only tools (no function) and every
call of a node without tools are only passed on as ``LLMToolCallFrame``s, and the reply ends there.

False interruption: a ``ResumeReplyFrame`` (a barge-in that brought no words) speaks the interrupted
reply again from the sentence that was cut (or whole, ``repeat``); the history keeps it as one reply.

The user's audio passes through on its way to the recorder, and it waits while a reply is generated
(seconds; longer when sessions take turns on a shared model). The inbox is sized so that it waits
here (``PASS_THROUGH_FRAMES``) instead of backing up into the VAD and recogniser upstream: they keep
hearing the user live, so a session that is slow to answer does not also fall behind its audio.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.errors import Problem, VoxgraphError
from pipeline.frames import (
    UPSTREAM,
    BotStoppedSpeakingFrame,
    DataFrame,
    Frame,
    InterimTranscriptFrame,
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
from processors.llm.context import Conversation, Message, approximate_tokens
from processors.llm.streams import closing_stream
from processors.llm.tools import (
    ToolCall,
    ToolContext,
    ToolSet,
    end_session,
    error_result,
    graph_can_transfer,
    session_of,
)

__all__ = [
    "ChatLLM",
    "ChatParams",
    "ResumeReplyFrame",
    "TentativeReplyFrame",
    "TentativeTurnFrame",
    "ToolCall",
    "ToolRoundsError",
    "settle_tools",
]

log = logging.getLogger("processors.llm")


DEFAULT_SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in one or two short spoken sentences."
PASS_THROUGH_FRAMES = 1500
"""Inbox bound of LLM and TTS nodes: 30 s of 20 ms user audio waiting behind a reply (~1 MB)."""
TRIM_AHEAD = 0.8
"""After a reply, a history over this share of ``max_history_tokens`` is trimmed already (room for the
next user turn)."""
TRIM_TO = 0.5
"""Once the history is over ``max_history_tokens``, the oldest turns go until it fits this share of it:
its start then stays the same for many turns, as a local engine's prompt cache needs (after each trim
the whole history is evaluated again: seconds for 1,500 tokens on one core)."""
TENTATIVE_REPLY_CHARS = 200
"""A held reply's text is announced downstream while it is this short: enough for a TTS's first piece."""


CANCELLED_RESULT = error_result("cancelled: the user interrupted")
BACKGROUND_RESULT = '{"status": "still running in the background after the user interrupted"}'
PASSED_ON_RESULT = '{"status": "passed on to the application"}'
TOOL_CANCEL_TIMEOUT = 2.0
"""Seconds a cancelled tool gets to stop (a thread cannot be stopped: it is left to finish)."""


@dataclass(slots=True, eq=False)
class _CutRound:
    """The calls of a round a barge-in cancelled, with their tasks and (cancelled) result messages."""

    last: Message | None = None  # the round's last result: the history's end while nothing came after
    calls: list[ToolCall] = field(default_factory=list)
    tasks: list[asyncio.Task[str]] = field(default_factory=list)
    results: list[Message] = field(default_factory=list)

    def add(self, call: ToolCall, task: asyncio.Task[str], result: Message) -> None:
        self.calls.append(call)
        self.tasks.append(task)
        self.results.append(result)


class ToolRoundsError(VoxgraphError, RuntimeError):
    """The model went on calling tools past ``max_tool_rounds`` in one reply."""


@dataclass(slots=True)
class TentativeTurnFrame(DataFrame):
    """The user paused and may be done saying ``text``: prepare the reply, hold it back. Empty text
    withdraws the tentative turn (the user went on)."""

    text: str = ""
    kind: ClassVar[str] = "tentative_turn"


@dataclass(slots=True)
class TentativeReplyFrame(DataFrame):
    """The text so far of a reply prepared for a tentative turn and held back: a TTS may synthesise
    its first piece ahead, to be played only if the reply is adopted. Empty text: it was dropped."""

    text: str = ""
    kind: ClassVar[str] = "tentative_reply"


@dataclass(slots=True)
class ResumeReplyFrame(SystemFrame):
    """A barge-in brought no words: speak the interrupted reply again, from the cut sentence or
    (``repeat``) from its start."""

    repeat: bool = False
    kind: ClassVar[str] = "resume_reply"


class _PreparedReply:
    """A reply generated in the background for a tentative turn; its items wait here until adopted."""

    def __init__(
        self,
        text: str,
        stream: AsyncIterator[str | ToolCall],
        announce: Callable[[_PreparedReply, str], Awaitable[None]],
    ) -> None:
        self.text = text
        self.items: list[str | ToolCall] = []  # bounded by the engine's max_tokens
        self.error: BaseException | None = None
        self.done = False
        self.arrived = asyncio.Event()
        self._announce = announce
        self.task = asyncio.get_running_loop().create_task(self._collect(stream), name="llm-preemptive")

    async def _collect(self, stream: AsyncIterator[str | ToolCall]) -> None:
        said = ""
        try:
            async with closing_stream(stream) as items:
                async for item in items:
                    self.items.append(item)
                    self.arrived.set()
                    if isinstance(item, str) and len(said) < TENTATIVE_REPLY_CHARS:
                        said += item
                        await self._announce(self, said)
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
        1500,
        doc="history budget in tokens: once over it, the oldest turns are dropped until half of it is "
        "left (so a prompt cache keeps the history's start for many turns); the system prompt is kept",
    )
    max_tokens: int = param(150, ge=1, doc="longest reply, in tokens")
    temperature: float = param(0.7, doc="sampling temperature: 0 = most likely token, higher = more varied")
    tools: list[Any] = param(
        [],
        doc="tools the model may call: a built-in (end_call, transfer, current_time), "
        "{name: module:function}, or {name, function, description, parameters, timeout, background, filler}",
    )
    max_tool_rounds: int = param(
        5, ge=1, doc="rounds of tool calls in one reply before it ends with an error"
    )
    filler: str = param("One moment.", doc="said when a tool runs longer than filler_after (empty: never)")
    filler_after: float | None = param(
        1.5, gt=0, doc="seconds a tool may run before the filler is said; null = no filler"
    )


class ChatLLM(Processor):
    """Replies to each user turn with a streamed answer and remembers what was said and heard."""

    Params: ClassVar[type[Any]] = ChatParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserTextFrame,
        TentativeTurnFrame,
        ResumeReplyFrame,
        InterimTranscriptFrame,
    )
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (SpokenTextFrame, BotStoppedSpeakingFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (
        LLMResponseStartFrame,
        LLMTextFrame,
        LLMToolCallFrame,
        LLMResponseEndFrame,
        UserTextFrame,  # the user's turn is passed on (recorders, transcripts)
        TentativeReplyFrame,
        InterimTranscriptFrame,  # passed on (the page shows them)
    )

    queue_size: ClassVar[int] = PASS_THROUGH_FRAMES

    params: ChatParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.toolset, self.tool_problems = ToolSet.from_config(self.params.tools, self.name)
        self.tool_schemas: list[dict[str, Any]] = self.toolset.schemas()  # what engines send the provider
        self.context = Conversation(self.params.system_prompt)
        self._prepared: _PreparedReply | None = None  # the reply to a tentative turn, held back
        self.preemptive_used = 0  # replies that were under way when their turn ended
        self.preemptive_dropped = 0  # replies prepared for a turn that went on
        self._replying = False  # a reply is being generated: a tool's text joins it
        self._tail = ""  # the last character of the reply's text so far (to space its pieces)
        self._end_requested = False  # end_call ran in the reply under way
        self._ending = False  # the session is ending: no further turn is answered
        self._background: set[asyncio.Task[str]] = set()  # tools running on after an interruption
        self._cut_round: _CutRound | None = None  # calls a barge-in cancelled, run again if it was false
        self._prefilling: asyncio.Task[None] | None = None  # the prompt being evaluated ahead

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        """Yield the reply to ``messages`` (OpenAI chat form) as text chunks and tool calls.

        Stop generating in a ``finally``: the base closes this generator on barge-in.
        """
        raise NotImplementedError
        yield  # pragma: no cover

    async def prefill(self, messages: list[dict[str, Any]]) -> None:
        """Optionally evaluate the prompt of ``messages`` up to the end of the last one (the user's
        words so far, or the history just trimmed) before a reply needs it. Runs in the background
        and is cancelled by a barge-in or the end: never delay a reply for it (skip, or stop, when
        the engine is wanted)."""

    def check(self) -> list[Problem]:
        """The ``tools:`` entries that cannot be used (an engine's ``check`` adds to ``super().check()``)."""
        return list(self.tool_problems)

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``, for the history budget; engines with a tokenizer override this."""
        return approximate_tokens(text)

    async def process(
        self, frame: UserTextFrame | TentativeTurnFrame | ResumeReplyFrame | InterimTranscriptFrame
    ) -> None:
        if isinstance(frame, InterimTranscriptFrame):
            await self.push(frame)
            text = frame.text.strip()
            if text and self._prepared is None:  # a tentative reply has the engine already
                self._start_prefill([*self.context.messages(), {"role": "user", "content": text}])
            return
        if isinstance(frame, TentativeTurnFrame):
            if not self._ending:
                await self._prepare(frame.text.strip())
            return
        if isinstance(frame, ResumeReplyFrame):
            await self._resume(frame.repeat)
            return
        await self.push(frame)
        text = frame.text.strip()
        if self._ending:
            return  # the call is ending: the goodbye was said
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
            self._prepared = _PreparedReply(text, self.stream_reply(messages), self._announce)

    async def _announce(self, prepared: _PreparedReply, text: str) -> None:
        """Tell the TTS what the held reply says so far (from the reply's background task)."""
        if prepared is self._prepared:
            await self.push(TentativeReplyFrame(text=text))

    async def _drop(self, prepared: _PreparedReply, announce: bool = True) -> None:
        """Cancel a prepared reply; ``announce`` tells the TTS to drop what it made of it (a barge-in
        or the end does that downstream by itself)."""
        self.preemptive_dropped += 1
        await prepared.cancel()
        if announce:
            await self.push(TentativeReplyFrame(text=""))

    async def _resume(self, repeat: bool) -> None:
        cut, self._cut_round = self._cut_round, None
        history = self.context.history
        if cut is not None and history and history[-1] is cut.last:
            await self._respond(None, cut=cut)  # the barge-in cut the reply while its tools ran
            return
        text = self.context.resume_interrupted(repeat)
        if not text:
            return
        await self.push(LLMResponseStartFrame())
        await self.push(LLMTextFrame(text=text))
        await self.push(LLMResponseEndFrame())

    async def reply(self, text: str, prepared: _PreparedReply | None = None) -> None:
        """Answer one user turn: frames downstream, the turn and the reply into the history.
        ``prepared`` is the reply already under way for this text (a preemptive reply)."""
        self._cut_round = None
        self.context.add_user(text)
        self._trim_history()
        messages = self.context.messages()
        self.context.begin_assistant()
        await self._respond(
            prepared.drain() if prepared is not None else self.stream_reply(messages), prepared
        )
        if self._trim_history(after_reply=True):
            # The history's start changed: evaluate it now, while the reply plays, not when the user
            # has spoken (seconds for a long history on one core).
            self._start_prefill(self.context.messages())

    def _trim_history(self, after_reply: bool = False) -> bool:
        """Keep the history within its budget (see ``TRIM_TO``); True if its start changed. After a
        reply it is trimmed a little early (``TRIM_AHEAD``), so the next user turn does not take it
        over the budget: a trim at the turn would make the prompt evaluated ahead for it useless."""
        budget = self.params.max_history_tokens
        first = self.context.history[0] if self.context.history else None
        limit = int(budget * TRIM_AHEAD) if after_reply else budget
        self.context.trim(limit, self.count_tokens, target=int(budget * TRIM_TO))
        return bool(self.context.history) and self.context.history[0] is not first

    def _start_prefill(self, messages: list[dict[str, Any]]) -> None:
        """``prefill`` in the background (one at a time): the node goes on with its frames meanwhile
        (the bot's speaking reports travel upstream through it)."""
        if self._ending or (self._prefilling is not None and not self._prefilling.done()):
            return
        prefill = self._prefill_quietly(messages)
        self._prefilling = asyncio.get_running_loop().create_task(prefill, name="llm-prefill")

    async def _prefill_quietly(self, messages: list[dict[str, Any]]) -> None:
        try:
            await self.prefill(messages)
        except Exception as error:  # a head start only: the reply evaluates its prompt anyway
            log.debug("%s: prefill skipped: %s", self.name, error)

    async def _stop_prefill(self) -> None:
        task, self._prefilling = self._prefilling, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=TOOL_CANCEL_TIMEOUT)

    async def _respond(
        self,
        source: AsyncIterator[str | ToolCall] | None,
        prepared: _PreparedReply | None = None,
        cut: _CutRound | None = None,
    ) -> None:
        """One response: ``source``'s text and the rounds of tool calls that follow it (or, with
        ``cut``, the calls a barge-in cancelled run again and the reply going on from there)."""
        await self.push(LLMResponseStartFrame())
        self._replying, self._tail, self._end_requested = True, "", False
        try:
            with self.metrics.measure():
                rounds = 0
                if cut is not None:
                    await self._rerun(cut)
                    rounds, source = 1, self._follow_up()
                assert source is not None
                while True:
                    calls = await self._stream(source)
                    if not self._runs_any(calls):
                        break
                    if rounds == self.params.max_tool_rounds:
                        raise ToolRoundsError(
                            f"the model asked for tools {rounds + 1} times in one reply (max_tool_rounds: "
                            f"{rounds}): the reply ends here"
                        )
                    rounds += 1
                    await self._run_tools(calls)
                    source = self._follow_up()
        except Exception:
            await self.push(LLMResponseEndFrame())  # downstream speaks what came; the error goes up
            if self._end_requested:
                self._end_session()  # the user said goodbye: a failed goodbye does not keep the call up
            raise
        finally:
            self._replying = False
            self.context.finish()
            if prepared is not None and not prepared.done:
                await prepared.cancel()  # a barge-in cancelled the adopted reply: stop its generation
        await self.push(LLMResponseEndFrame())
        if self._end_requested:
            self._end_session()

    def _follow_up(self) -> AsyncIterator[str | ToolCall]:
        """The request after a round of results; the reply goes on in a new assistant message."""
        messages = self.context.messages()
        self.context.begin_assistant()
        return self.stream_reply(messages)

    async def _stream(self, source: AsyncIterator[str | ToolCall]) -> list[ToolCall]:
        """Send one stream's text on; the tool calls it ends with."""
        calls: list[ToolCall] = []
        piece = True  # the next text starts a new piece (a round after tool results)
        async with closing_stream(source) as stream:
            async for item in stream:
                if isinstance(item, ToolCall):
                    self.metrics.first_byte()
                    calls.append(item)
                    frame = LLMToolCallFrame(call_id=item.call_id, name=item.name, arguments=item.arguments)
                    await self.push(frame)
                elif item:
                    self.metrics.first_byte()
                    await self._say(item, piece)
                    piece = False
        return calls

    async def _say(self, text: str, piece: bool = False) -> None:
        """Text of the reply: downstream and into the history. A new ``piece`` (a round's first words,
        a filler) is spaced from the text before it, which may have ended without a space."""
        if piece and self._tail and not self._tail.isspace() and not text[:1].isspace():
            text = " " + text
        self._tail = text[-1:]
        self.context.append(text)
        await self.push(LLMTextFrame(text=text))

    def _runs_any(self, calls: list[ToolCall]) -> bool:
        """Whether any of ``calls`` runs here; otherwise they were only passed on and the reply ends."""
        return bool(self.toolset) and any(self.toolset.runs(call.name) for call in calls)

    async def _run_tools(self, calls: list[ToolCall]) -> None:
        """Run one round's calls in parallel; the calls and their results go into the history, also
        when a barge-in cancels them (a call without its result is rejected by providers)."""
        self.context.add_tool_calls([_openai_call(call) for call in calls])
        runs = self.toolset.runs
        tasks = [
            asyncio.get_running_loop().create_task(
                self.toolset.run(c, ToolContext(self, c)), name=f"tool:{c.name}"
            )
            if runs(c.name)
            else None
            for c in calls
        ]
        try:
            await self._wait_for_tools(calls, tasks)
        finally:
            self.context.finish()  # the call message is complete; its results follow it
            await self._record_results(calls, tasks)

    async def _wait_for_tools(self, calls: list[ToolCall], tasks: Sequence[asyncio.Task[str] | None]) -> None:
        pending = {task for task in tasks if task is not None}
        after = self.params.filler_after
        if after is not None and pending:
            _, pending = await asyncio.wait(pending, timeout=after)
            if pending:
                await self._say_filler(calls, tasks)
        if pending:
            await asyncio.wait(pending)

    async def _say_filler(self, calls: list[ToolCall], tasks: Sequence[asyncio.Task[str] | None]) -> None:
        """Say the filler of the first tool still running, else the node's."""
        for call, task in zip(calls, tasks, strict=True):
            tool = self.toolset.get(call.name)
            if task is not None and not task.done() and tool is not None and tool.filler:
                await self._say(tool.filler, piece=True)
                return
        if self.params.filler:
            await self._say(self.params.filler, piece=True)

    async def _record_results(self, calls: list[ToolCall], tasks: list[asyncio.Task[str] | None]) -> None:
        cut = _CutRound()
        for call, task in zip(calls, tasks, strict=True):
            if task is None:
                cut.last = self.context.add_tool_result(call.call_id, PASSED_ON_RESULT)
            elif task.done():
                cut.last = self.context.add_tool_result(call.call_id, _result_of(task))
            elif self.toolset.keeps_running(call.name, len(self._background)):
                cut.last = self.context.add_tool_result(call.call_id, BACKGROUND_RESULT)
                self._background.add(task)
                task.add_done_callback(functools.partial(self._background_done, cut.last))
            else:
                cut.last = self.context.add_tool_result(call.call_id, CANCELLED_RESULT)
                cut.add(call, task, cut.last)
        await self._cancel(cut)

    async def _rerun(self, cut: _CutRound) -> None:
        """Run the calls a barge-in cancelled once more; their results replace the cancelled ones."""
        calls = cut.calls
        tasks = [
            asyncio.get_running_loop().create_task(
                self.toolset.run(c, ToolContext(self, c)), name=f"tool:{c.name}"
            )
            for c in calls
        ]
        again = _CutRound(last=cut.last)
        try:
            await self._wait_for_tools(calls, tasks)
        finally:
            for call, task, message in zip(calls, tasks, cut.results, strict=True):
                if task.done():
                    self.context.set_tool_result(message, _result_of(task))
                else:
                    again.add(call, task, message)
            await self._cancel(again)

    async def _cancel(self, cut: _CutRound) -> None:
        """Cancel the tools a barge-in cut; kept so that a false interruption can run them again."""
        if not cut.tasks:
            return
        self._cut_round = cut
        tasks, cut.tasks = cut.tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=TOOL_CANCEL_TIMEOUT)

    def _background_done(self, message: Message, task: asyncio.Task[str]) -> None:
        """A tool that ran on after an interruption finished: its result replaces the placeholder."""
        self._background.discard(task)
        if not task.cancelled():
            self.context.set_tool_result(message, _result_of(task))

    # --- ToolHost: what a tool's ToolContext reaches ---------------------------------------------

    @property
    def session_id(self) -> str:
        """The conversation's id, as the graph's recorder keeps it; empty when nothing names it."""
        return session_of(self)

    async def push_from_tool(self, frame: Frame) -> None:
        """A frame a tool sends: downstream, in order with the reply."""
        await self.push(frame)

    async def say_from_tool(self, text: str) -> None:
        """Text a tool says: part of the reply under way (spoken and kept in the history). Text outside
        a reply would interleave with the next one: it is not said."""
        if not text.strip():
            return
        if self._replying:
            await self._say(text, piece=True)
        else:  # a background tool after its reply was cut: the model reads its result next turn
            log.info("%s: a tool asked to say %r after its reply; not said", self.name, text)

    def request_end(self) -> None:
        """``end_call``: end the session once this reply has been sent on."""
        self._end_requested = True

    def can_transfer(self) -> bool:
        """Whether a node of this graph hands calls over (handles ``TransferCallFrame``)."""
        return graph_can_transfer(self)

    def _end_session(self) -> None:
        """The goodbye has been sent on: the session ends behind it; no further turn is answered."""
        self._ending = True
        if end_session(self):
            log.info("%s: end_call: the session ends after the goodbye", self.name)
        else:
            log.warning("%s: end_call ran but this node is in no running graph; nothing to end", self.name)

    async def process_upstream(self, frame: SpokenTextFrame | BotStoppedSpeakingFrame) -> None:
        if isinstance(frame, BotStoppedSpeakingFrame):
            self.context.played_out()  # a sentence the TTS failed to speak leaves the history
        else:
            self.context.append_spoken(frame.text)
        await self.push(frame, UPSTREAM)

    async def on_interrupt(self) -> None:
        self.context.truncate_to_spoken()
        self._end_requested = False  # the user spoke up during the goodbye: the call goes on
        await self._stop_prefill()
        await self._withdraw()

    async def on_stop(self) -> None:
        background, self._background = set(self._background), set()
        for task in background:
            task.cancel()
        try:
            await self._stop_prefill()
            await self._withdraw()
        finally:
            await settle_tools(background)

    async def _withdraw(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            await self._drop(prepared, announce=False)


async def settle_tools(tasks: set[asyncio.Task[Any]]) -> None:
    """Wait until cancelled ``tasks`` have stopped, at most ``TOOL_CANCEL_TIMEOUT``, even when this
    wait is cancelled in turn (the graph cancels a node's worker once its sinks have ended, or when a
    client hangs up mid-stop): a tool must not outlive its node."""
    if not tasks:
        return
    deadline = asyncio.get_running_loop().time() + TOOL_CANCEL_TIMEOUT
    try:
        await asyncio.wait(tasks, timeout=TOOL_CANCEL_TIMEOUT)
    except asyncio.CancelledError:
        await asyncio.wait(tasks, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        raise


def _openai_call(call: ToolCall) -> dict[str, Any]:
    """A call as the history keeps it (OpenAI's assistant ``tool_calls`` entry)."""
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _result_of(task: asyncio.Task[str]) -> str:
    """A finished tool task's result text; a fault of the runner itself reads as an error."""
    if task.cancelled():
        return CANCELLED_RESULT
    error = task.exception()
    if error is not None:
        return error_result(f"the tool could not run: {type(error).__name__}: {error}")
    return task.result()
