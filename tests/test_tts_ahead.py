"""A preemptive reply's first piece is synthesised before the turn ends, and played only if kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pipeline.frames import (
    BotAudioFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TranscriptFrame,
    TTSTextFrame,
)
from pipeline.graph import Graph
from pipeline.testing import Captured, Collector, run_graph
from processors.llm.base import TentativeReplyFrame, TentativeTurnFrame
from processors.tts.base import SpeechSynthesizer
from tests.drivers import Driver, Step
from tests.test_llm_base import ScriptedLLM

RATE = 8000


class Voice(SpeechSynthesizer):
    """Speaks each character as 10 ms of a level set by the character, so audio tells texts apart."""

    sample_rate = RATE

    def __init__(self, hold_on: str | None = None, **params: Any) -> None:
        params.setdefault("first_chunk_max_words", 3)
        super().__init__(name="tts", **params)
        self.hold_on = hold_on  # a piece containing this waits until cancelled
        self.spoken: list[str] = []
        self.finished: list[str] = []  # pieces whose synthesis ran to the end
        self.closed = 0
        self.holding = asyncio.Event()
        self.done = asyncio.Event()  # set whenever a synthesis finishes

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.spoken.append(text)
        try:
            for char in text:
                if self.hold_on is not None and self.hold_on in text:
                    self.holding.set()
                    await asyncio.Event().wait()
                yield bytes([ord(char) % 128, 0]) * (RATE // 100)
            self.finished.append(text)
            self.done.set()
        finally:
            self.closed += 1


def reply(*chunks: str) -> list[Frame]:
    return [LLMResponseStartFrame(), *(LLMTextFrame(text=c) for c in chunks), LLMResponseEndFrame()]


async def speak(tts: Voice, steps: Sequence[Step]) -> Captured:
    out = Collector(name="out")
    graph = Graph({"driver": Driver(steps), "tts": tts, "out": out}, [("driver", "tts"), ("tts", "out")])
    return await run_graph(graph)


def audio(out: Captured) -> bytes:
    return b"".join(f.pcm for f in out.of(BotAudioFrame))


async def test_the_first_piece_made_ahead_is_played_when_the_reply_keeps_it() -> None:
    plain = await speak(Voice(), reply("Sure, the time ", "is noon."))
    tts = Voice()
    out = await speak(
        tts,
        [
            TentativeReplyFrame(text="Sure, the"),  # not a whole piece yet: nothing to prepare
            TentativeReplyFrame(text="Sure, the time "),
            tts.done.wait,  # made before the turn ended
            *reply("Sure, the time ", "is noon."),
        ],
    )
    assert tts.spoken == ["Sure, the time", "is noon."]  # the first piece was synthesised once
    assert tts.pieces_ahead_used == 1
    assert audio(out) == audio(plain)
    assert out.kinds == plain.kinds  # the tentative text is not passed on
    assert [f.text for f in out.of(TTSTextFrame)] == ["Sure, the time", "is noon."]


async def test_a_piece_made_for_other_words_is_never_heard() -> None:
    plain = await speak(Voice(), reply("Goodbye for now."))
    tts = Voice()
    out = await speak(
        tts, [TentativeReplyFrame(text="Hello there my friend"), tts.done.wait, *reply("Goodbye for now.")]
    )
    assert tts.spoken == ["Hello there my", "Goodbye for now."]
    assert tts.pieces_ahead_used == 0
    assert audio(out) == audio(plain)
    assert "Hello there my" not in [f.text for f in out.of(TTSTextFrame)]


async def test_a_withdrawn_or_interrupted_piece_stops_its_synthesis() -> None:
    for ending in (TentativeReplyFrame(text=""), InterruptionFrame()):
        tts = Voice(hold_on="Hello")
        out = await speak(
            tts, [TentativeReplyFrame(text="Hello there my friend"), tts.holding.wait, ending, *reply("Bye.")]
        )
        assert tts.spoken == ["Hello there my", "Bye."]
        assert tts.closed == 2 and tts.finished == ["Bye."]
        assert [f.text for f in out.of(TTSTextFrame)] == ["Bye."]


async def test_a_piece_still_being_made_at_the_end_is_stopped() -> None:
    tts = Voice(hold_on="Hello")
    await speak(tts, [TentativeReplyFrame(text="Hello there my friend"), tts.holding.wait])
    assert tts.closed == 1 and tts.finished == []
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "tts-ahead" and not t.done()]


async def test_nothing_is_made_ahead_when_turned_off_or_while_a_reply_is_spoken() -> None:
    tts = Voice(prepare_ahead=False)
    await speak(tts, [TentativeReplyFrame(text="Hello there my friend"), *reply("Bye.")])
    assert tts.spoken == ["Bye."]
    tts = Voice()
    await speak(
        tts,
        [
            LLMResponseStartFrame(),
            LLMTextFrame(text="One. "),
            TentativeReplyFrame(text="Two three four five"),
            LLMTextFrame(text="Two."),
            LLMResponseEndFrame(),
        ],
    )
    assert tts.spoken == ["One.", "Two."]


async def test_through_the_llm_a_kept_reply_starts_with_audio_already_made() -> None:
    llm = ScriptedLLM([["Seven ", "o'clock ", "sharp, ", "my friend."]])
    tts = Voice()
    out = Collector(name="out")
    driver = Driver(
        [TentativeTurnFrame(text="What time is it?"), tts.done.wait, TranscriptFrame(text="What time is it?")]
    )
    graph = Graph(
        {"driver": driver, "llm": llm, "tts": tts, "out": out},
        [("driver", "llm"), ("llm", "tts"), ("tts", "out")],
    )
    captured = await run_graph(graph)
    assert llm.preemptive_used == 1 and tts.pieces_ahead_used == 1
    assert tts.spoken == ["Seven o'clock sharp,", "my friend."]
    assert [f.text for f in captured.of(TTSTextFrame)] == ["Seven o'clock sharp,", "my friend."]


async def test_through_the_llm_a_reply_for_a_turn_that_went_on_is_never_heard() -> None:
    llm = ScriptedLLM([["Which ", "restaurant ", "would you like?"], ["For two, done."]])
    tts = Voice()
    driver = Driver(
        [
            TentativeTurnFrame(text="Book a table"),
            tts.done.wait,  # its first words were made
            TentativeTurnFrame(text=""),  # the user went on
            TranscriptFrame(text="Book a table for two"),
        ]
    )
    out = Collector(name="out")
    graph = Graph(
        {"driver": driver, "llm": llm, "tts": tts, "out": out},
        [("driver", "llm"), ("llm", "tts"), ("tts", "out")],
    )
    captured = await run_graph(graph)
    assert tts.spoken[0] == "Which restaurant would"
    assert tts.pieces_ahead_used == 0
    assert [f.text for f in captured.of(TTSTextFrame)] == ["For two, done."]
    assert "Which" not in " ".join(captured.texts)
