"""ChatLLM keeps only what was heard of a reply the transport played out: a sentence TTS failed to speak
is never reported as spoken, and the bot falling silent settles the reply."""

from __future__ import annotations

from pipeline.frames import (
    UPSTREAM,
    BotStoppedSpeakingFrame,
    LLMResponseEndFrame,
    SpokenTextFrame,
    TranscriptFrame,
)
from pipeline.testing import Collector
from tests.drivers import Step
from tests.test_llm_base import ScriptedLLM, converse, roles


async def test_the_next_request_holds_only_the_sentences_that_played() -> None:
    llm = ScriptedLLM([["One. ", "Two. ", "Three."], ["Okay."]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def play_all_but_the_failed_sentence() -> None:
            await out.wait_for(LLMResponseEndFrame)
            heard = [SpokenTextFrame(text="One."), SpokenTextFrame(text="Three.")]
            await out.send_upstream([*heard, BotStoppedSpeakingFrame()])
            await tap.wait_for(BotStoppedSpeakingFrame, direction=UPSTREAM)
            await tap.wait_for(
                lambda f: isinstance(f, SpokenTextFrame) and f.text == "Three.", direction=UPSTREAM
            )

        return [TranscriptFrame(text="Count"), play_all_but_the_failed_sentence, TranscriptFrame(text="More")]

    await converse(llm, steps)
    assert roles(llm.requests[1])[-3:] == [("user", "Count"), ("assistant", "One. Three."), ("user", "More")]
