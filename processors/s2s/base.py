"""``SpeechToSpeech``: what every speech-to-speech node does the same way, whatever the provider.

A speech-to-speech model hears the user's audio and answers with audio, so one node replaces
STT -> LLM -> TTS. A provider subclasses ``SpeechToSpeech``: it opens a session (``open_session``),
sends user audio (``send_audio``), turns what the provider sends into the events of this module
(``events``), and carries out the base's requests (``end_user_turn``, ``cancel_reply``,
``send_tool_results``). The base does the rest, the same for every provider:

* **Frames out, as a cascade would make them**, so transports, recorders and observers need nothing
  new: the user's words as a ``TranscriptFrame``; each reply as ``LLMResponseStartFrame``,
  ``TTSStartedFrame``, then per piece of the bot's transcript an ``LLMTextFrame`` (what was said) and a
  ``TTSTextFrame`` (what the audio after it speaks) before ``BotAudioFrame``\\ s of ``chunk_ms``, and
  ``TTSStoppedFrame``, ``LLMResponseEndFrame``. Providers transcribe the user beside the reply, so
  a reply's end waits up to ``TRANSCRIPT_WAIT`` for its turn's words: the recording keeps them first.
  The output transport plays the audio and reports each ``TTSTextFrame`` as it starts playing
  (``SpokenTextFrame``), so the recorder keeps what was heard. The user's audio passes on.
* **Turn detection**: ``turn_detection: server`` (default) lets the provider's VAD find turns and
  answer by itself; ``local`` leaves it to a VAD node before this one: its ``UserStoppedSpeakingFrame``
  commits the turn (once the audio up to the stop has been sent) and asks for the answer.
* **Barge-in**: user speech (the provider's VAD, or ours) while a reply is generated or still
  playing cancels the reply, sends an ``InterruptionFrame`` downstream so outputs fall silent, and
  tells the provider where playback stopped (``PlayoutClock``: ``audio_end_ms`` per item), so the
  model forgets what the user never heard. Tool calls still running are cancelled, unless marked
  ``background`` (at most ``MAX_BACKGROUND_TOOLS`` run on at once), and answered with a cancelled result.
* **Tools** (``tools:``, the same list as an LLM node's): each call runs through the ``ToolSet``,
  its result goes back to the provider, and the reply goes on; an ``LLMToolCallFrame`` is sent
  downstream for observers.
* **A dropped connection** ends the reply in flight as it was heard. The provider may open a new
  session and give it the conversation so far (``reopen_session``, from ``history``: what was said
  and heard); if it does not or cannot, a clear error is reported and the rest of the conversation is
  still recorded (the user's audio passes on), but not answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.errors import FatalProcessorError, Problem, VoxgraphError
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    SpokenTextFrame,
    TranscriptFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from processors.llm.base import DEFAULT_SYSTEM_PROMPT, PASS_THROUGH_FRAMES, settle_tools
from processors.llm.context import Conversation
from processors.llm.tools import ToolCall, ToolContext, ToolSet, end_session, graph_can_transfer, session_of
from processors.s2s.heard import PlayoutClock

__all__ = [
    "BotAudio",
    "BotTranscript",
    "ProviderError",
    "ResponseDone",
    "ResponseStarted",
    "SessionClosed",
    "SpeechStarted",
    "SpeechToSpeech",
    "SpeechToSpeechParams",
    "ToolCallsRequested",
    "UserTranscript",
    "UserTurnEnded",
]

log = logging.getLogger("processors.s2s")

CANCELLED_RESULT = '{"error": "cancelled: the user interrupted"}'
"""What the model reads for a tool call a barge-in cancelled (the call never stays unanswered)."""
CANCELLED_KEPT = 64
"""Responses a barge-in cut whose late events are still dropped (the latest ones)."""
HISTORY_TOKENS = 4000
"""History kept to give a new session after a reconnect (the oldest turns go first)."""
TRANSCRIPT_WAIT = 3.0
"""Seconds a reply's end waits for the transcript of the user's turn, so the recording keeps the
turn before its answer; then the end goes on without it."""


# --- what a provider's session reports -----------------------------------------------------------


@dataclass(slots=True)
class SpeechStarted:
    """The provider's VAD heard the user start speaking."""


@dataclass(slots=True)
class UserTurnEnded:
    """The provider took the user's turn (committed its audio); its ``UserTranscript`` follows,
    maybe after the reply (transcription runs beside the response)."""


@dataclass(slots=True)
class UserTranscript:
    """What the user said in one turn (the provider's input transcription; empty if it failed)."""

    text: str


@dataclass(slots=True)
class ResponseStarted:
    """The model began a response."""

    response_id: str = ""


@dataclass(slots=True)
class BotAudio:
    """A piece of the reply's audio (s16le mono at the node's ``output_rate``)."""

    pcm: bytes
    item_id: str = ""
    response_id: str = ""


@dataclass(slots=True)
class BotTranscript:
    """A piece of the transcript of the reply's audio."""

    text: str
    item_id: str = ""
    response_id: str = ""


@dataclass(slots=True)
class ToolCallsRequested:
    """The model asked for these calls and waits for their results."""

    calls: list[ToolCall]
    response_id: str = ""


@dataclass(slots=True)
class ResponseDone:
    """A response ended: ``completed``, ``cancelled``, ``failed`` or ``incomplete``."""

    response_id: str = ""
    status: str = "completed"
    reason: str = ""


@dataclass(slots=True)
class ProviderError:
    """The provider reported an error; ``fatal`` when nothing can work (a rejected key)."""

    message: str
    fatal: bool = False


Event = (
    SpeechStarted
    | UserTurnEnded
    | UserTranscript
    | ResponseStarted
    | BotAudio
    | BotTranscript
    | ToolCallsRequested
    | ResponseDone
    | ProviderError
)


class SessionClosed(VoxgraphError):
    """The provider's connection ended while the conversation went on."""


# --- the node ------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class SpeechToSpeechParams:
    """Params every speech-to-speech node takes; providers extend this dataclass."""

    system_prompt: str = param(DEFAULT_SYSTEM_PROMPT, doc="instructions for the model")
    turn_detection: Literal["server", "local"] = param(
        "server",
        choices=("server", "local"),
        doc="server = the provider's VAD ends turns and answers; local = a VAD node before this one does",
    )
    tools: list[Any] = param([], doc="tools the model may call: the same list an LLM node takes")
    chunk_ms: int = param(20, ge=1, doc="length of each bot audio frame sent downstream, in ms")
    connect_timeout: float = param(10.0, gt=0, doc="seconds to open the session and have it configured")


@dataclass(slots=True)
class _Reply:
    """The reply being sent downstream: one LLM response, however many provider responses it takes."""

    pending_text: list[str] = field(default_factory=list)  # transcript not yet followed by audio
    audio: bytearray = field(default_factory=bytearray)  # less than one frame, waiting for more
    item_id: str = ""  # the provider item the audio belongs to
    sent_audio: bool = False


class SpeechToSpeech(Processor):
    """A speech-to-speech model as one node (see the module docstring); a provider subclasses it."""

    owned_hooks: ClassVar[dict[str, str]] = {"on_start": "open_session", "on_stop": "close_session"}
    Params: ClassVar[type[Any]] = SpeechToSpeechParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (
        SpokenTextFrame,
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (
        AudioFrame,  # the user's passes on; the bot's is made here
        TranscriptFrame,
        LLMResponseStartFrame,
        LLMTextFrame,
        LLMToolCallFrame,
        LLMResponseEndFrame,
        TTSStartedFrame,
        TTSTextFrame,
        TTSStoppedFrame,
    )
    queue_size: ClassVar[int] = PASS_THROUGH_FRAMES
    warm_up: ClassVar[bool] = False  # on_start opens a billed provider session

    service: ClassVar[str] = "the provider"  # named in messages
    input_rate: ClassVar[int] = 24000  # the rate of the audio the provider takes
    output_rate: ClassVar[int] = 24000  # the rate of the audio it sends
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(24000, 1)

    params: SpeechToSpeechParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.clock = PlayoutClock()
        self.history = Conversation(self.params.system_prompt)  # what was said and heard, for a reconnect
        self.toolset, self._tool_problems = ToolSet.from_config(self.params.tools, node=self.name)
        self._end_requested = False  # a tool asked to end the call after the reply
        self._barge_ins = 0  # barge-ins so far: a round of tool results cut by one asks for no answer
        self._reply: _Reply | None = None
        self._responding = False  # a provider response is in progress
        self._cancelled: dict[str, None] = {}  # responses a barge-in cut, oldest first: late audio dropped
        self._tools: dict[asyncio.Task[str], ToolCall] = {}  # tool calls running
        self._background: set[asyncio.Task[str]] = set()  # of those, the ones a barge-in let run on
        self._receiver: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()  # rounds of tool results waiting to be sent
        self._push_lock = asyncio.Lock()  # a barge-in never lands in the middle of a bot frame's push
        self._live = False  # the session is open and has not failed
        self._sent_seconds = 0.0  # user audio sent, in seconds of stream
        self._commit_at: float | None = None  # local turns: commit once audio up to here was sent
        self._turn_ended_at = 0.0  # perf_counter() when the user's turn ended, for ttfb
        self._transcripts_due = 0  # user turns taken whose transcript has not come yet
        self._held_end: asyncio.Task[None] | None = None  # a reply's end waiting for that transcript

    def check(self) -> list[Problem]:
        """Unusable ``tools`` entries; providers add their own problems to these."""
        return list(self._tool_problems)

    # --- what a provider implements ----------------------------------------------------------------

    async def open_session(self) -> None:
        """Connect and configure the session (instructions, voice, turn detection, tools); raise
        ``FatalProcessorError`` when it cannot work (a rejected key)."""
        raise NotImplementedError

    def events(self) -> AsyncIterator[Event]:
        """What the session sends, as this module's events, until the node closes it. Any other
        end raises ``SessionClosed`` saying why."""
        raise NotImplementedError

    async def send_audio(self, pcm: bytes) -> None:
        """Send user audio (s16le mono at ``input_rate``)."""
        raise NotImplementedError

    async def end_user_turn(self) -> None:
        """Local turn detection: the user finished: commit the audio and ask for the answer."""
        raise NotImplementedError

    async def begin_user_turn(self) -> None:
        """Local turn detection: the user started speaking (some providers want to know)."""

    async def cancel_reply(self, response_active: bool, cuts: list[tuple[str, int]]) -> None:
        """Barge-in: cancel the response if ``response_active``; ``cuts`` holds ``(item_id,
        audio_end_ms)`` for each item of bot audio not heard to its end."""
        raise NotImplementedError

    async def send_tool_results(self, results: list[tuple[ToolCall, str]], respond: bool) -> None:
        """Give the model the results of its calls; ``respond``: and ask it to go on."""
        raise NotImplementedError

    async def close_session(self) -> None:
        """Close the session (bounded); runs at the end, also after a failure."""

    async def reopen_session(self) -> bool:
        """The session closed under the conversation: open a new one and give it ``self.history``
        (what was said and heard); False when the provider does not or could not (the close is then
        reported). Default: False."""
        return False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def on_start(self) -> None:
        try:
            await asyncio.wait_for(self.open_session(), self.params.connect_timeout)
        except TimeoutError:
            raise FatalProcessorError(
                f"{self.name}: {self.service} did not open the session within "
                f"{self.params.connect_timeout:g} s (connect_timeout)"
            ) from None
        self._live = True
        self._receiver = asyncio.get_running_loop().create_task(self._receive(), name=f"s2s:{self.name}")

    async def on_stop(self) -> None:
        """Every path (the end, a cancel, a failure): nothing of the node runs on after it."""
        receiver, self._receiver = self._receiver, None
        work: set[asyncio.Task[Any]] = {*self._answers, *self._tools}
        try:
            for answer in self._answers:
                answer.cancel()
            await self._stop_tools(cancel_background=True)
            if receiver is not None and not receiver.done():
                receiver.cancel()
                await asyncio.wait({receiver}, timeout=5.0)
            if not (self.ended or self.inbox.closed):
                if self._reply is not None:
                    await self._end_reply()
                await self._release_end()
        finally:
            self._live = False
            held, self._held_end = self._held_end, None  # stopped at once: its end goes nowhere
            for task in (receiver, held):
                if task is not None:
                    task.cancel()
                    work.add(task)
            try:
                await settle_tools(work)
            finally:
                await self.close_session()

    # --- frames in -----------------------------------------------------------------------------------

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(self.output_rate, 1)

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, UserAudioFrame):
            await self.push(frame)
            if self._live:
                await self.send_audio(frame.pcm)
            self._sent_seconds += frame.duration
            await self._maybe_commit()
            return
        await self.push(frame)
        if self.params.turn_detection != "local" or not self._live:
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._commit_at = None
            if self._bot_active():
                await self._barge_in()
            await self.begin_user_turn()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._commit_at = frame.stream_time
            await self._maybe_commit()

    async def _maybe_commit(self) -> None:
        """Commit the turn once the audio up to the VAD's stop has been sent (the stop overtakes it)."""
        if self._commit_at is None or self._sent_seconds + 1e-6 < self._commit_at or not self._live:
            return
        self._commit_at = None
        self._turn_ended_at = time.perf_counter()
        await self.end_user_turn()

    async def process_upstream(self, frame: Frame) -> None:
        now = time.monotonic()
        if isinstance(frame, SpokenTextFrame):
            self.clock.spoken(frame.text, now)
            self.history.append_spoken(frame.text)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self.clock.started(now)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.clock.stopped(now)
            self.history.played_out()
        await self.push(frame, UPSTREAM)

    async def on_interrupt(self) -> None:
        """An interruption from upstream (a turn-taking node): the same barge-in, minus the frame."""
        await self._barge_in(push_frame=False)

    # --- what the provider sends ----------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            try:
                async for event in self.events():
                    await self._handle(event)
            except asyncio.CancelledError:
                raise
            except FatalProcessorError as error:
                await self._session_lost()
                self.report_error(error, fatal=True)
            except SessionClosed as error:
                await self._session_lost()
                if await self.reopen_session():
                    self.clock.forget_items()
                    self._live = True
                    continue
                self.report_error(error)
            except Exception as error:
                await self._session_lost()
                self.report_error(error)
            else:
                await self._session_lost()  # the node closed it (the end of the stream)
            return

    async def _handle(self, event: Event) -> None:
        if isinstance(event, BotAudio):
            await self._bot_audio(event)
        elif isinstance(event, BotTranscript):
            await self._bot_transcript(event)
        elif isinstance(event, SpeechStarted):
            if self.params.turn_detection == "server" and self._bot_active():
                await self._barge_in()
            self._turn_ended_at = 0.0
        elif isinstance(event, UserTurnEnded):
            self._transcripts_due += 1
        elif isinstance(event, UserTranscript):
            self._transcripts_due = max(0, self._transcripts_due - 1)
            async with self._push_lock:
                if event.text.strip():
                    await self.push(TranscriptFrame(text=event.text.strip()))
                    self.history.add_user(event.text.strip())
                    self.history.trim(HISTORY_TOKENS)
                if not self._transcripts_due:
                    await self._release_end()
        elif isinstance(event, ResponseStarted):
            self._responding = True
            if not self._turn_ended_at:
                self._turn_ended_at = time.perf_counter()
        elif isinstance(event, ToolCallsRequested):
            await self._start_tools(event)
        elif isinstance(event, ResponseDone):
            await self._response_done(event)
        elif isinstance(event, ProviderError):
            if event.fatal:
                raise FatalProcessorError(f"{self.name}: {self.hide_secrets(event.message)}")
            log.warning("%s: %s reported: %s", self.name, self.service, self.hide_secrets(event.message))

    async def _bot_audio(self, event: BotAudio) -> None:
        if event.response_id in self._cancelled:
            return
        async with self._push_lock:
            reply = await self._open_reply()
            if event.item_id != reply.item_id and reply.audio:
                await self._push_audio(reply, pad=True)  # the previous item's last piece
            reply.item_id = event.item_id
            reply.audio += event.pcm
            await self._push_audio(reply, pad=False)

    async def _bot_transcript(self, event: BotTranscript) -> None:
        if event.response_id in self._cancelled or not event.text:
            return
        async with self._push_lock:
            reply = await self._open_reply()
            reply.pending_text.append(event.text)
            self.history.append(event.text)
            await self.push(LLMTextFrame(text=event.text))

    async def _open_reply(self) -> _Reply:
        if self._reply is None:
            await self._release_end()
            self._reply = _Reply()
            self.history.begin_assistant()
            await self.push(LLMResponseStartFrame())
            await self.push(TTSStartedFrame())
        return self._reply

    async def _push_audio(self, reply: _Reply, pad: bool) -> None:
        """Whole ``chunk_ms`` frames of the reply's audio (with ``pad``, the rest too, padded with
        silence); the transcript that came before them goes first, as the text they speak."""
        size = max(2, self.output_rate * self.params.chunk_ms // 1000 * 2)
        whole = len(reply.audio) // size * size
        if pad and len(reply.audio) > whole:
            reply.audio.extend(bytes(size - (len(reply.audio) - whole)))
            whole += size
        if not whole:
            return
        if reply.pending_text:
            text = "".join(reply.pending_text)
            reply.pending_text.clear()
            self.clock.mark(text)
            await self.push(TTSTextFrame(text=text))
        if not reply.sent_audio and self._turn_ended_at:
            self.metrics.record("ttfb", time.perf_counter() - self._turn_ended_at)
        reply.sent_audio = True
        for start in range(0, whole, size):
            pcm = bytes(reply.audio[start : start + size])
            self.clock.add_audio(reply.item_id, 1000.0 * len(pcm) / 2 / self.output_rate)
            await self.push(BotAudioFrame(pcm=pcm, sample_rate=self.output_rate, channels=1))
        del reply.audio[:whole]

    async def _response_done(self, event: ResponseDone) -> None:
        self._responding = False
        self._turn_ended_at = 0.0
        if event.response_id in self._cancelled:
            del self._cancelled[event.response_id]
            return
        if event.status == "failed":
            log.warning("%s: %s response failed: %s", self.name, self.service, event.reason or "no reason")
        if self._tools:
            return  # the reply goes on once the tools have answered
        async with self._push_lock:
            await self._end_reply()

    async def _end_reply(self) -> None:
        """The reply is complete: the rest of its audio, text no audio followed, and its end frames."""
        reply, self._reply = self._reply, None
        if reply is None:
            return
        self.history.finish()
        if reply.audio:
            await self._push_audio(reply, pad=True)
        if reply.pending_text:
            # Transcript that came after the last audio: one silent frame carries it, so the
            # transport reports it heard and the recorder keeps the whole reply.
            reply.audio.extend(bytes(2))
            await self._push_audio(reply, pad=True)
        await self.push(TTSStoppedFrame())
        if not self._transcripts_due:
            await self.push(LLMResponseEndFrame())
            self._end_if_requested()
            return
        name = f"s2s-held-end:{self.name}"
        self._held_end = asyncio.get_running_loop().create_task(self._end_when_due(), name=name)

    async def _end_when_due(self) -> None:
        """The held reply end goes on by itself if the user's transcript is late."""
        await asyncio.sleep(TRANSCRIPT_WAIT)
        async with self._push_lock:
            self._transcripts_due = 0
            self._held_end = None
            await self.push(LLMResponseEndFrame())
            self._end_if_requested()

    async def _release_end(self) -> None:
        """Send the held reply end now (the transcript came, the next reply or a barge-in begins)."""
        held, self._held_end = self._held_end, None
        if held is not None and not held.done():
            held.cancel()
            await self.push(LLMResponseEndFrame())
            self._end_if_requested()

    # --- barge-in -------------------------------------------------------------------------------------

    def _bot_active(self) -> bool:
        """A reply is being generated, its tools run, or its audio is still playing."""
        busy = self._responding or self._reply is not None or bool(self._tools)
        return busy or self.clock.playing(time.monotonic())

    async def _barge_in(self, push_frame: bool = True) -> None:
        async with self._push_lock:
            active = self._responding
            self._responding = False
            self._reply = None
            self._end_requested = False  # the user spoke up during the goodbye: the call goes on
            self._barge_ins += 1
            await self._release_end()
            cuts = self.clock.cut(time.monotonic())
            self.history.finish()
            self.history.truncate_to_spoken()
            if push_frame:
                await self.push(InterruptionFrame())
        await self._stop_tools(cancel_background=False)
        if self._live:
            await self.cancel_reply(active, cuts)

    def cancel_response(self, response_id: str) -> None:
        """Drop what arrives later for ``response_id``: a barge-in cut it (providers call this)."""
        if response_id:
            self._cancelled.pop(response_id, None)
            self._cancelled[response_id] = None  # the latest
            if len(self._cancelled) > CANCELLED_KEPT:
                del self._cancelled[next(iter(self._cancelled))]  # the oldest

    # --- tools ----------------------------------------------------------------------------------------

    async def _start_tools(self, event: ToolCallsRequested) -> None:
        for call in event.calls:
            await self.push(LLMToolCallFrame(call_id=call.call_id, name=call.name, arguments=call.arguments))
        tasks = []
        for call in event.calls:
            task = asyncio.get_running_loop().create_task(self._run_tool(call), name=f"tool:{call.name}")
            self._tools[task] = call
            tasks.append(task)
        answer = asyncio.get_running_loop().create_task(self._answer(tasks), name=f"s2s-tools:{self.name}")
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)

    async def _run_tool(self, call: ToolCall) -> str:
        return await self.toolset.run(call, ToolContext(self, call))

    # ToolHost: what a running tool may do through its ToolContext.

    @property
    def session_id(self) -> str:
        """The conversation's id, as the graph's recorder keeps it; empty when nothing names it."""
        return session_of(self)

    async def push_from_tool(self, frame: Frame) -> None:
        """A tool's frame (a sound, a note) goes downstream, in order with the reply."""
        async with self._push_lock:
            await self.push(frame)

    async def say_from_tool(self, text: str) -> None:
        """The model speaks for itself here: a tool's text is not voiced (logged)."""
        log.info("%s: a tool asked to say %r; the model speaks only its own words", self.name, text)

    def request_end(self) -> None:
        """``end_call``: end the session once the reply under way (the goodbye) has been sent on."""
        self._end_requested = True

    def can_transfer(self) -> bool:
        """Whether a node of this graph hands calls over (handles ``TransferCallFrame``)."""
        return graph_can_transfer(self)

    def _end_if_requested(self) -> None:
        """After the goodbye: the graph's sources stop and the end drains behind what was sent."""
        if not self._end_requested:
            return
        self._end_requested = False
        if end_session(self):
            log.info("%s: end_call: the session ends after the goodbye", self.name)
        else:
            log.warning("%s: end_call ran but this node is in no running graph; nothing to end", self.name)

    async def _answer(self, tasks: list[asyncio.Task[str]]) -> None:
        """Send the results of one round of calls, then let the model go on (unless a barge-in came:
        a background call's result is then read in the user's next turn)."""
        barge_ins = self._barge_ins
        await asyncio.wait(tasks)
        results = []
        for task in tasks:
            call = self._tools.pop(task, None)
            if call is None or task.cancelled():
                continue  # answered as cancelled by the barge-in
            error = task.exception()
            results.append((call, str(error) if error is not None else task.result()))
        if results and self._live:
            try:
                await self.send_tool_results(results, respond=barge_ins == self._barge_ins)
            except Exception as error:
                self.report_error(error)

    async def _stop_tools(self, cancel_background: bool) -> None:
        """Cancel running calls (``background`` ones, within the cap, only with ``cancel_background``);
        the model gets a cancelled result for each, so no call stays unanswered."""
        cancelled = []
        for task, call in list(self._tools.items()):
            if not cancel_background and task in self._background:
                continue
            if not cancel_background and self.toolset.keeps_running(call.name, len(self._background)):
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                continue
            task.cancel()
            del self._tools[task]
            cancelled.append((call, CANCELLED_RESULT))
        if cancelled and self._live:
            await self.send_tool_results(cancelled, respond=False)

    # --- a lost session -------------------------------------------------------------------------------

    async def _session_lost(self) -> None:
        """The reply in flight ends as it was heard; audio keeps passing on to be recorded."""
        self._live = False
        self._responding = False
        await self._stop_tools(cancel_background=True)
        async with self._push_lock:
            if self._reply is not None:
                await self._end_reply()
            await self._release_end()
