"""SpeechSynthesizer: frame order per reply, frame sizes, pass-through and barge-in."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    BotAudioFrame,
    BotTextFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TranscriptFrame,
    TTSTextFrame,
    UserTextFrame,
)
from pipeline.graph import Graph
from pipeline.processor import Processor
from pipeline.testing import Captured, Collector, ScriptedSource, run_graph, run_processor
from processors.tts.base import SpeechSynthesizer
from tests.drivers import Driver

RATE = 8000
FRAME_BYTES = RATE * 20 // 1000 * 2  # 20 ms of s16le mono


class FakeVoice(SpeechSynthesizer):
    """Speaks each character as 10 ms of a constant level, yielded in odd-sized chunks."""

    sample_rate = RATE

    def __init__(self, hold_on: str | None = None, **params: Any) -> None:
        super().__init__(name="tts", **params)
        self.hold_on = hold_on  # a sentence containing this waits after its first chunk until cancelled
        self.spoken: list[str] = []
        self.closed = 0  # streams whose finally ran
        self.holding = asyncio.Event()

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.spoken.append(text)
        pcm = b"\x10\x00" * (len(text) * RATE // 100)
        try:
            for start in range(0, len(pcm), 333):
                yield pcm[start : start + 333]
                if self.hold_on is not None and self.hold_on in text:
                    self.holding.set()
                    await asyncio.Event().wait()
        finally:
            self.closed += 1


def reply(*chunks: str) -> list[Frame]:
    return [LLMResponseStartFrame(), *(LLMTextFrame(text=c) for c in chunks), LLMResponseEndFrame()]


def without_audio(out: Captured) -> list[str]:
    """Kinds in order, runs of audio frames collapsed to one ``audio``."""
    kinds: list[str] = []
    for kind in out.kinds:
        if not (kind == "bot_audio" and kinds and kinds[-1] == "audio"):
            kinds.append("audio" if kind == "bot_audio" else kind)
    return kinds


async def test_a_reply_is_spoken_sentence_by_sentence_between_started_and_stopped() -> None:
    tts = FakeVoice()
    out = await run_processor(tts, reply("Hello there. How", " are you?"))
    assert without_audio(out) == [
        "llm_response_start",
        "llm_text",
        "tts_started",
        "tts_text",
        "audio",
        "llm_text",
        "tts_text",
        "audio",
        "tts_stopped",
        "llm_response_end",
    ]
    assert [f.text for f in out.of(TTSTextFrame)] == ["Hello there.", "How are you?"]
    assert tts.spoken == ["Hello there.", "How are you?"]
    assert tts.metrics.samples["ttfb"] and tts.metrics.samples["processing"]
    assert not out.errors


async def test_audio_frames_are_chunk_ms_long_with_the_last_one_padded() -> None:
    tts = FakeVoice(chunk_ms=20)
    out = await run_processor(tts, [BotTextFrame(text="Hi!")])  # 3 characters = 30 ms = 1.5 frames
    audio = out.of(BotAudioFrame)
    assert [len(f.pcm) for f in audio] == [FRAME_BYTES, FRAME_BYTES]
    assert {(f.sample_rate, f.channels) for f in audio} == {(RATE, 1)}
    assert audio[-1].pcm[FRAME_BYTES // 2 :] == bytes(FRAME_BYTES // 2)


async def test_bot_text_outside_a_response_is_spoken_as_one_reply() -> None:
    out = await run_processor(FakeVoice(), [BotTextFrame(text="One. Two.")])
    assert without_audio(out) == [
        "bot_text",
        "tts_started",
        "tts_text",
        "audio",
        "tts_text",
        "audio",
        "tts_stopped",
    ]


async def test_other_frames_pass_through_untouched() -> None:
    frames = [
        TranscriptFrame(text="user said"),
        UserTextFrame(text="user typed"),
        TextFrame(text="nobody's turn"),
        TTSTextFrame(text="spoken already"),
    ]
    tts = FakeVoice()
    out = await run_processor(tts, frames)
    assert out.down == frames
    assert tts.spoken == []


class Shout(Processor):
    """Between the LLM and the TTS: re-types each chunk of the reply as new ``BotTextFrame``s."""

    handles: ClassVar[tuple[type[Frame], ...]] = (BotTextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (BotTextFrame,)

    async def process(self, frame: BotTextFrame) -> None:
        await self.push(BotTextFrame(text=frame.text.upper()))


class ShoutInPlace(Shout):
    """The same with ``dataclasses.replace``, as the README shows: the chunks stay ``LLMTextFrame``s."""

    async def process(self, frame: BotTextFrame) -> None:
        await self.push(dataclasses.replace(frame, text=frame.text.upper()))


@pytest.mark.parametrize("shout", [Shout, ShoutInPlace])
async def test_a_reply_re_typed_between_llm_and_tts_stays_one_reply(shout: type[Shout]) -> None:
    llm = ScriptedSource(reply("Hello", " there, how", " are you?"), name="llm")
    tts = FakeVoice()
    nodes = {"llm": llm, "shout": shout(name="shout"), "tts": tts}
    graph = Graph(nodes, [("llm", "shout"), ("shout", "tts")])
    out = await run_graph(graph)
    out.raise_errors()
    assert tts.spoken == ["HELLO THERE, HOW ARE YOU?"]
    assert out.kinds.count("tts_started") == out.kinds.count("tts_stopped") == 1
    assert out.kinds.index("tts_stopped") < out.kinds.index("llm_response_end")


async def test_text_without_response_boundaries_is_flushed_at_the_end() -> None:
    out = await run_processor(FakeVoice(), [LLMTextFrame(text="No boundaries here")])
    assert [f.text for f in out.of(TTSTextFrame)] == ["No boundaries here"]
    assert out.kinds[-1] == "tts_stopped"


async def test_punctuation_only_pieces_get_text_but_no_audio() -> None:
    tts = FakeVoice()
    out = await run_processor(tts, reply("Hi.\n", "...\n"))
    assert [f.text for f in out.of(TTSTextFrame)] == ["Hi.", "..."]
    assert tts.spoken == ["Hi."]


async def test_an_empty_reply_has_no_tts_boundaries() -> None:
    out = await run_processor(FakeVoice(), reply(" "))
    assert out.kinds == ["llm_response_start", "llm_text", "llm_response_end"]


async def test_output_format_is_the_engine_rate_in_mono() -> None:
    assert FakeVoice().output_format(AudioFormat(16000)) == AudioFormat(RATE, 1)


def test_bad_params_are_reported_together() -> None:
    with pytest.raises(ValidationError) as error:
        FakeVoice(chunk_ms=0, first_chunk_min_words=-1)
    assert {p.key for p in error.value.problems} == {"chunk_ms", "first_chunk_min_words"}


async def test_barge_in_cancels_synthesis_and_forgets_buffered_text() -> None:
    tts = FakeVoice(hold_on="First")
    driver = Driver(
        [
            LLMResponseStartFrame(),
            LLMTextFrame(text="First sentence. Left"),
            LLMTextFrame(text="over words"),
            tts.holding.wait,
            InterruptionFrame(),
            *reply("New reply."),
        ]
    )
    out_node = Collector(name="out")
    graph = Graph({"driver": driver, "tts": tts, "out": out_node}, [("driver", "tts"), ("tts", "out")])
    out = await run_graph(graph)
    assert tts.spoken == ["First sentence.", "New reply."]
    assert tts.closed == 2
    kinds = without_audio(out)
    cut = kinds.index("interruption")
    assert kinds[:cut] == ["llm_response_start", "llm_text", "tts_started", "tts_text", "audio"]
    assert kinds[cut + 1 :] == [
        "llm_response_start",
        "llm_text",
        "tts_started",
        "tts_text",
        "audio",
        "tts_stopped",
        "llm_response_end",
    ]
