"""Conformance checks: the frame contract every STT, LLM and TTS node must keep, whatever its engine.

Offline engines and cloud providers (against their fake servers) run the same checks, so swapping
one ``type:`` line for another never changes what the rest of a graph sees::

    async def test_my_tts_conforms() -> None:
        await check_tts(lambda: MyTTS(voice="x"))

Each check drives a fresh processor between a driver source and a ``Collector`` and raises
``ConformanceError`` naming the broken rule. The rules:

* **STT** — audio and speaking frames pass through unchanged and in order; each utterance gives one
  or more non-empty ``TranscriptFrame``s; speech still open when the stream ends is transcribed
  before the ``EndFrame``; an interruption passes through and the next utterance is still heard.
* **LLM** — a user turn is passed on, then ``LLMResponseStartFrame``, at least one non-empty
  ``LLMTextFrame``, ``LLMResponseEndFrame``; turns are answered one after another; an interruption
  stops the reply in flight (no more of its text) and the next turn is answered; a turn that arrives
  just before the end is answered before the ``EndFrame``.
* **Tools** (``check_tools``) — an LLM node given ``CHECK_TOOLS`` and a model that calls the tool
  ``scripted_tool_call`` names for a user turn (and answers with the results it reads): the call is
  passed on as an ``LLMToolCallFrame``, run, and the same reply (one start, one end) goes on to say
  its result; an interruption while a tool runs stops that reply, the next turn is answered, and the
  history the node keeps has a result for every call (providers refuse a call without one).
* **TTS** — a reply becomes ``TTSStartedFrame``, ``TTSTextFrame``\\ s, non-silent mono
  ``BotAudioFrame``\\ s at one rate, ``TTSStoppedFrame``; LLM frames pass through; a
  ``BotTextFrame`` outside a response is spoken as a reply of its own; an interruption stops the
  audio; text left when the stream ends is spoken.
* **Speech-to-speech** (``check_s2s``, a node against a provider that answers each spoken turn) —
  user audio passes through unchanged and in order; a spoken turn gives a non-empty
  ``TranscriptFrame`` and a reply framed as a cascade's: ``LLMResponseStartFrame``,
  ``TTSStartedFrame``, ``TTSTextFrame``\\ s before the audio they speak, non-silent mono
  ``BotAudioFrame``\\ s at one rate, ``TTSStoppedFrame``, ``LLMResponseEndFrame``, with its transcript
  as ``LLMTextFrame``\\ s inside; speech over a reply still streaming sends one
  ``InterruptionFrame`` downstream and none of that reply's audio follows it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from pipeline.errors import VoxgraphError
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotTextFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    TranscriptFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import Graph
from pipeline.processor import Processor, Source
from pipeline.testing import Collector, run_graph

__all__ = [
    "CHECK_TOOLS",
    "ConformanceError",
    "check_llm",
    "check_s2s",
    "check_stt",
    "check_tools",
    "check_tts",
    "scripted_tool_call",
    "speech_script",
]

Steps = Callable[[Collector], AsyncIterator[Frame]]


class ConformanceError(VoxgraphError, AssertionError):
    """A processor broke the frame contract of its kind."""


class _Driver(Source):
    """Plays frames from a coroutine that may wait for what the processor under test has sent."""

    def __init__(self, steps: Steps, collector: Collector) -> None:
        super().__init__(name="driver")
        self._steps = steps
        self._collector = collector
        self.stalled: str | None = None
        """Why the script stopped early: what it waited for and never saw."""

    async def generate(self) -> AsyncIterator[Frame]:
        try:
            async for frame in self._steps(self._collector):
                yield frame
        except TimeoutError as error:
            self.stalled = str(error)  # end the stream so the graph finishes; reported by _drive


async def _drive(unit: Processor, steps: Steps, timeout: float) -> list[Frame]:
    """Run driver -> unit -> collector; return every frame that reached the collector, end included."""
    collector = Collector()
    driver = _Driver(steps, collector)
    graph = Graph(
        {"driver": driver, unit.name: unit, "collector": collector},
        [("driver", unit.name), (unit.name, "collector")],
        name=f"conformance:{unit.name}",
    )
    captured = await run_graph(graph, timeout=2 * timeout)
    if driver.stalled:
        raise ConformanceError(f"{unit.name} never sent what the contract requires: {driver.stalled}")
    if captured.errors:
        raise ConformanceError(f"{unit.name} reported errors: {[e.message for e in captured.errors]}")
    return collector.frames


def _expect(ok: bool, rule: str, frames: Sequence[Frame] = ()) -> None:
    if not ok:
        kinds = " ".join(f.kind for f in frames if not isinstance(f, AudioFrame))
        raise ConformanceError(f"{rule}\n  frames seen (audio left out): {kinds}")


# --- speech-to-text ------------------------------------------------------------------------------


def speech_script(pcm: bytes, sample_rate: int, start: float, end: float, frame_ms: int = 20) -> list[Frame]:
    """Audio frames of ``pcm`` with speaking frames at ``start`` / ``end`` (seconds), as a VAD would.

    The start frame comes a little after the speech truly began (as a VAD's hysteresis makes it)
    and carries the true ``stream_time``.
    """
    size = sample_rate * frame_ms // 1000 * 2
    frames: list[Frame] = []
    position = 0.0
    started = stopped = False
    for offset in range(0, len(pcm), size):
        chunk = pcm[offset : offset + size]
        frames.append(UserAudioFrame(pcm=chunk + bytes(size - len(chunk)), sample_rate=sample_rate))
        position += frame_ms / 1000
        if not started and position >= start + 0.2:
            frames.append(UserStartedSpeakingFrame(stream_time=start))
            started = True
        if started and not stopped and position >= end + 0.5:
            frames.append(UserStoppedSpeakingFrame(stream_time=end))
            stopped = True
    return frames


async def check_stt(
    make: Callable[[], Processor], utterance: Sequence[Frame], *, timeout: float = 120.0
) -> list[str]:
    """Check a recogniser with ``utterance`` (see ``speech_script``); returns the transcripts it made."""
    unit = make()
    audio_in = [f for f in utterance if isinstance(f, AudioFrame)]
    length = sum(f.duration for f in audio_in)

    def all_audio_out(collector: Collector) -> Callable[[Frame], bool]:
        return lambda _: sum(isinstance(f, AudioFrame) for f in collector.frames) >= len(audio_in)

    async def twice(collector: Collector) -> AsyncIterator[Frame]:
        for frame in utterance:
            yield frame
        await collector.wait_for(TranscriptFrame, timeout=timeout)
        await collector.wait_for(all_audio_out(collector), timeout=timeout)
        yield InterruptionFrame()
        for frame in utterance:  # again, further along the stream, still open when the stream ends
            if isinstance(frame, UserStartedSpeakingFrame):
                yield dataclasses.replace(frame, stream_time=frame.stream_time + length)
            elif not isinstance(frame, UserStoppedSpeakingFrame):
                yield frame

    frames = await _drive(unit, twice, timeout)
    audio_out = [f for f in frames if isinstance(f, AudioFrame)]
    _expect(
        [f.pcm for f in audio_out] == [f.pcm for f in audio_in * 2],
        "audio must pass through unchanged and in order",
    )
    transcripts = [f for f in frames if isinstance(f, TranscriptFrame)]
    _expect(all(f.text.strip() for f in transcripts), "transcripts must not be empty", frames)
    kinds = [type(f) for f in frames]
    _expect(kinds.count(UserStartedSpeakingFrame) == 2, "speaking frames must pass through", frames)
    _expect(InterruptionFrame in kinds, "an interruption must pass through", frames)
    cut = kinds.index(InterruptionFrame)
    _expect(TranscriptFrame in kinds[:cut], "an utterance must give a TranscriptFrame", frames)
    _expect(
        TranscriptFrame in kinds[cut:] and kinds[-1] is EndFrame,
        "speech still open at the end of the stream must be transcribed before the EndFrame",
        frames,
    )
    return [f.text for f in transcripts]


# --- LLM -----------------------------------------------------------------------------------------


async def check_llm(
    make: Callable[[], Processor],
    questions: Sequence[str] = ("Say hello.", "Name a colour.", "Count to three."),
    *,
    timeout: float = 120.0,
) -> list[str]:
    """Check an LLM node with three user turns; returns the text of each complete reply."""
    unit = make()
    first, second, third = questions

    async def conversation(collector: Collector) -> AsyncIterator[Frame]:
        yield TranscriptFrame(text=first)
        await collector.wait_for(LLMResponseEndFrame, timeout=timeout)
        yield TranscriptFrame(text=second)
        await collector.wait_for(lambda f: _after_second_start(collector, f), timeout=timeout)
        yield InterruptionFrame()
        yield TranscriptFrame(text=third)  # right before the end: still answered

    frames = await _drive(unit, conversation, timeout)
    replies = _replies(frames)
    _expect(len(replies) == 3, f"three turns must give three replies, got {len(replies)}", frames)
    _expect(bool(replies[0][1] and replies[2][1]), "each reply must hold non-empty LLMTextFrames", frames)
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    resumed = next(i for i, f in enumerate(frames) if isinstance(f, TranscriptFrame) and f.text == third)
    _expect(
        not any(isinstance(f, LLMTextFrame) for f in frames[cut:resumed]),
        "an interruption must stop the reply in flight",
        frames,
    )
    _expect(
        isinstance(frames[-1], EndFrame) and isinstance(frames[-2], LLMResponseEndFrame),
        "a turn sent just before the end must be answered before the EndFrame",
        frames,
    )
    return ["".join(texts) for _, texts in replies if texts]


def _after_second_start(collector: Collector, frame: Frame) -> bool:
    starts = [f for f in collector.frames if isinstance(f, LLMResponseStartFrame)]
    return isinstance(frame, LLMTextFrame) and len(starts) >= 2 and frame.created > starts[1].created


def _replies(frames: Sequence[Frame]) -> list[tuple[str, list[str]]]:
    """(user turn, text chunks) per reply; checks the turn is passed on first and replies never nest."""
    replies: list[tuple[str, list[str]]] = []
    turn: str | None = None
    open_reply: list[str] | None = None
    for frame in frames:
        if isinstance(frame, TranscriptFrame):
            turn = frame.text
        elif isinstance(frame, LLMResponseStartFrame):
            _expect(open_reply is None, "a reply must end before the next starts", frames)
            _expect(turn is not None, "the user turn must be passed on before the reply", frames)
            open_reply = []
            replies.append((turn or "", open_reply))
        elif isinstance(frame, LLMTextFrame):
            _expect(open_reply is not None, "LLMTextFrame outside LLMResponseStart/End", frames)
            if open_reply is not None:
                open_reply.append(frame.text)
        elif isinstance(frame, LLMResponseEndFrame):
            open_reply = None
        elif isinstance(frame, InterruptionFrame):
            open_reply = None  # the interrupted reply need not send its end
    return replies


# --- tools ---------------------------------------------------------------------------------------


async def lookup_word(topic: str) -> dict[str, str]:
    """The code word for a topic (a conformance tool: fixed data, answers at once).

    Args:
        topic: what the word is for, e.g. sky
    """
    return {"topic": topic, "word": _WORDS.get(topic, "unknown")}


async def wait_for_word(topic: str) -> str:
    """The code word for a topic, from a lookup that never finishes (the check interrupts it).

    Args:
        topic: what the word is for
    """
    await asyncio.Event().wait()
    return topic  # never reached


_WORDS = {"sky": "azure"}
CHECK_TOOLS: list[Any] = [
    {"lookup_word": "pipeline.conformance:lookup_word"},
    {"wait_for_word": "pipeline.conformance:wait_for_word"},
]
"""The ``tools:`` entries ``check_tools`` gives the node under test."""
_TOOL_TURNS = {
    "What is the code word for sky?": ("lookup_word", {"topic": "sky"}),
    "What is the code word for rain?": ("wait_for_word", {"topic": "rain"}),
}


def scripted_tool_call(user_text: str) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) the model a ``check_tools`` fake plays calls for this user turn; None:
    it answers in words. It should answer a turn of tool results with words that repeat them."""
    return _TOOL_TURNS.get(user_text.strip())


async def check_tools(make: Callable[[list[Any]], Processor], *, timeout: float = 30.0) -> list[str]:
    """Check an LLM node's tool loop; ``make(tools)`` builds it with ``tools`` (``CHECK_TOOLS``) against
    a model that plays ``scripted_tool_call``. Returns the text of each complete reply."""
    unit = make(CHECK_TOOLS)
    first, second = _TOOL_TURNS
    third = "Say hello."

    async def conversation(collector: Collector) -> AsyncIterator[Frame]:
        yield TranscriptFrame(text=first)
        await collector.wait_for(LLMResponseEndFrame, timeout=timeout)
        yield TranscriptFrame(text=second)
        await collector.wait_for(
            lambda f: isinstance(f, LLMToolCallFrame) and f.name == "wait_for_word", timeout=timeout
        )
        yield InterruptionFrame()
        yield TranscriptFrame(text=third)

    frames = await _drive(unit, conversation, timeout)
    replies = _replies(frames)
    _expect(len(replies) == 3, f"three turns must give three replies, got {len(replies)}", frames)
    end = next(i for i, f in enumerate(frames) if isinstance(f, LLMResponseEndFrame))
    calls = [f for f in frames[:end] if isinstance(f, LLMToolCallFrame)]
    _expect(
        [(c.name, _json_or_none(c.arguments)) for c in calls] == [("lookup_word", {"topic": "sky"})],
        "the tool call must be passed on as one LLMToolCallFrame with its arguments",
        frames,
    )
    answer = "".join(replies[0][1])
    _expect("azure" in answer, f"the reply must go on to say the tool's result, got {answer!r}", frames)
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    resumed = next(i for i, f in enumerate(frames) if isinstance(f, TranscriptFrame) and f.text == third)
    _expect(
        not any(isinstance(f, LLMTextFrame) for f in frames[cut:resumed]),
        "an interruption during a tool must stop that reply",
        frames,
    )
    _expect(bool(replies[2][1]), "the turn after an interrupted tool must be answered", frames)
    context = getattr(unit, "context", None)
    if context is not None:
        dangling = _unanswered_calls(context.messages())
        _expect(not dangling, f"every tool call in the history must have its result, not {dangling}")
    return ["".join(texts) for _, texts in replies if texts]


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _unanswered_calls(messages: Sequence[dict[str, Any]]) -> list[str]:
    """Ids of assistant tool calls not answered by the ``tool`` messages right after them, and of
    results that answer no call (OpenAI chat form)."""
    wrong: list[str] = []
    for index, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            answered = set()
            for after in messages[index + 1 :]:
                if after.get("role") != "tool":
                    break
                answered.add(after.get("tool_call_id"))
            wrong += [c["id"] for c in message["tool_calls"] if c["id"] not in answered]
        elif message.get("role") == "tool":
            before: dict[str, Any] = next(
                (m for m in reversed(messages[:index]) if m.get("role") != "tool"), {}
            )
            if message.get("tool_call_id") not in {c["id"] for c in before.get("tool_calls") or []}:
                wrong.append(str(message.get("tool_call_id")))
    return wrong


# --- text-to-speech ------------------------------------------------------------------------------


async def check_tts(
    make: Callable[[], Processor],
    reply: Sequence[str] = ("Hello there! ", "It is a fine day ", "for a walk. See you soon."),
    *,
    timeout: float = 120.0,
) -> int:
    """Check a TTS node; returns the sample rate of the audio it produced."""
    unit = make()

    async def conversation(collector: Collector) -> AsyncIterator[Frame]:
        yield LLMResponseStartFrame()
        for chunk in reply:
            yield LLMTextFrame(text=chunk)
        yield LLMResponseEndFrame()
        await collector.wait_for(TTSStoppedFrame, timeout=timeout)
        yield BotTextFrame(text="This reply is cut short by the user, who has something to say.")
        await collector.wait_for(_second_reply_audio(collector), timeout=timeout)
        yield InterruptionFrame()
        yield LLMResponseStartFrame()
        yield LLMTextFrame(text="Left unfinished at the end")  # no response end: flushed at the end

    frames = await _drive(unit, conversation, timeout)
    kinds = [type(f) for f in frames]
    cut = kinds.index(InterruptionFrame)
    first = frames[: kinds.index(TTSStoppedFrame) + 1]
    audio = [f for f in first if isinstance(f, BotAudioFrame)]
    _expect(bool(audio), "a reply must give BotAudioFrames", frames)
    _expect(kinds.index(TTSStartedFrame) < kinds.index(BotAudioFrame), "TTSStarted before audio", frames)
    _expect(
        any(isinstance(f, TTSTextFrame) for f in first[: first.index(audio[0])]),
        "a TTSTextFrame must announce the audio that speaks it",
        frames,
    )
    rates = {f.sample_rate for f in audio}
    _expect(len(rates) == 1 and all(f.channels == 1 for f in audio), "audio must be mono at one rate")
    pcm = np.frombuffer(b"".join(f.pcm for f in audio), dtype=np.int16)
    _expect(bool(len(pcm)) and int(np.abs(pcm).max()) > 1000, "speech must not be silent", frames)
    passed = [f for f in frames if isinstance(f, LLMTextFrame)]
    _expect([f.text for f in passed] == [*reply, "Left unfinished at the end"], "LLM text passes on", frames)
    _expect(
        BotAudioFrame in kinds[kinds.index(TTSStoppedFrame) : cut],
        "a BotTextFrame outside a response must be spoken",
        frames,
    )
    tail = frames[cut:]
    restart = next((i for i, f in enumerate(tail) if isinstance(f, TTSStartedFrame)), len(tail))
    _expect(
        not any(isinstance(f, BotAudioFrame) for f in tail[:restart]),
        "an interruption must stop the audio of the reply in flight",
        frames,
    )
    _expect(
        BotAudioFrame in kinds[cut:] and kinds[-1] is EndFrame,
        "text left when the stream ends must be spoken before the EndFrame",
        frames,
    )
    return rates.pop()


def _second_reply_audio(collector: Collector) -> Callable[[Frame], bool]:
    def second(frame: Frame) -> Any:
        stops = [f for f in collector.frames if isinstance(f, TTSStoppedFrame)]
        return isinstance(frame, BotAudioFrame) and stops and frame.created > stops[0].created

    return second


# --- speech-to-speech ----------------------------------------------------------------------------


async def check_s2s(
    make: Callable[[], Processor],
    utterance: Sequence[Frame],
    interruption: Sequence[Frame],
    *,
    timeout: float = 60.0,
) -> list[str]:
    """Check a speech-to-speech node: ``utterance`` is one spoken turn (speech, then the silence or the
    speaking frames that end it), ``interruption`` speech that talks over a reply (nothing ending it).
    The provider must answer each turn, streaming the second answer long enough to be talked over.
    Returns the transcript of each reply."""
    unit = make()

    async def conversation(collector: Collector) -> AsyncIterator[Frame]:
        for frame in utterance:
            yield frame
        await collector.wait_for(LLMResponseEndFrame, timeout=timeout)
        for frame in utterance:
            yield frame
        await collector.wait_for(_second_reply_audio_s2s(collector), timeout=timeout)
        for frame in interruption:
            yield frame
        await collector.wait_for(InterruptionFrame, timeout=timeout)

    frames = await _drive(unit, conversation, timeout)
    sent = [f for f in [*utterance, *utterance, *interruption] if isinstance(f, UserAudioFrame)]
    passed = [f for f in frames if isinstance(f, UserAudioFrame)]
    _expect(
        [f.pcm for f in passed] == [f.pcm for f in sent],
        "user audio must pass through unchanged and in order",
    )
    _expect(
        any(isinstance(f, TranscriptFrame) and f.text.strip() for f in frames),
        "a spoken turn must give a non-empty TranscriptFrame",
        frames,
    )
    kinds = [type(f) for f in frames]
    first = frames[: kinds.index(LLMResponseEndFrame) + 1] if LLMResponseEndFrame in kinds else []
    audio = [f for f in first if isinstance(f, BotAudioFrame)]
    _expect(bool(audio), "a reply must give BotAudioFrames before its LLMResponseEndFrame", frames)
    order = [k for k in map(type, first) if k in (LLMResponseStartFrame, TTSStartedFrame, BotAudioFrame)]
    _expect(
        order[:3] == [LLMResponseStartFrame, TTSStartedFrame, BotAudioFrame],
        "a reply begins LLMResponseStartFrame, TTSStartedFrame, then its audio",
        frames,
    )
    _expect(
        any(isinstance(f, TTSTextFrame) for f in first[: _position(first, audio[-1])]),
        "TTSTextFrames must announce the audio that speaks them (so outputs report what was heard)",
        frames,
    )
    _expect(TTSStoppedFrame in kinds[: kinds.index(LLMResponseEndFrame)], "TTSStopped ends the reply", frames)
    rates = {f.sample_rate for f in audio}
    _expect(len(rates) == 1 and all(f.channels == 1 for f in audio), "bot audio must be mono at one rate")
    pcm = np.frombuffer(b"".join(f.pcm for f in audio), dtype=np.int16)
    _expect(int(np.abs(pcm).max()) > 1000, "the reply's audio must not be silent", frames)
    replies = _spoken_replies(frames)
    _expect(len(replies) >= 2 and bool(replies[0]), "a reply's transcript comes as LLMTextFrames", frames)
    _expect(kinds.count(InterruptionFrame) == 1, "talking over a reply sends one InterruptionFrame", frames)
    cut = kinds.index(InterruptionFrame)
    _expect(
        BotAudioFrame in kinds[kinds.index(LLMResponseEndFrame) : cut],
        "the second turn must be answered aloud before the interruption",
        frames,
    )
    _expect(BotAudioFrame not in kinds[cut:], "no audio of an interrupted reply may follow the interruption")
    return replies


def _position(frames: Sequence[Frame], frame: Frame) -> int:
    """Where ``frame`` itself is in ``frames`` (equal audio frames are not the same frame)."""
    return next(i for i, f in enumerate(frames) if f is frame)


def _spoken_replies(frames: Sequence[Frame]) -> list[str]:
    """The transcript of each reply (its ``LLMTextFrame``\\ s between its start and its end or cut)."""
    replies: list[str] = []
    open_reply = False
    for frame in frames:
        if isinstance(frame, LLMResponseStartFrame):
            open_reply = True
            replies.append("")
        elif isinstance(frame, LLMTextFrame):
            _expect(open_reply, "LLMTextFrame outside LLMResponseStart/End", frames)
            replies[-1] += frame.text
        elif isinstance(frame, LLMResponseEndFrame | InterruptionFrame):
            open_reply = False
    return replies


def _second_reply_audio_s2s(collector: Collector) -> Callable[[Frame], bool]:
    def second(frame: Frame) -> bool:
        ends = [f for f in collector.frames if isinstance(f, LLMResponseEndFrame)]
        return isinstance(frame, BotAudioFrame) and bool(ends) and frame.created > ends[0].created

    return second
