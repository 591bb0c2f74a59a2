"""The conformance checks themselves: toy engines on the real bases pass; broken processors fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np
import pytest

from pipeline.conformance import (
    ConformanceError,
    check_llm,
    check_stt,
    check_tools,
    check_tts,
    scripted_tool_call,
    speech_script,
)
from pipeline.frames import Frame, LLMResponseStartFrame, LLMTextFrame, TranscriptFrame
from pipeline.processor import Processor
from pipeline.utterances import Utterance
from processors.llm.base import ChatLLM, ToolCall
from processors.stt.segmented import Transcription, UtteranceSTT
from processors.tts.base import SpeechSynthesizer


class CountingSTT(UtteranceSTT):
    """'Recognises' an utterance as the number of loud 20 ms frames it holds."""

    async def transcribe(self, utterance: Utterance) -> Transcription:
        samples = np.frombuffer(utterance.pcm, dtype=np.int16)
        samples = samples[: len(samples) // 320 * 320].reshape(-1, 320)
        loud = int((np.abs(samples).max(axis=1) > 1000).sum())
        return Transcription(text=f"{loud} loud frames")


class EchoLLM(ChatLLM):
    """Repeats the user's words back, one chunk per word, slowly enough to be interrupted."""

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        for word in str(messages[-1]["content"]).split():
            await asyncio.sleep(0.01)
            yield word + " "


class BeepTTS(SpeechSynthesizer):
    """Speaks every character as 10 ms of tone."""

    sample_rate = 16000

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        t = np.arange(160 * len(text)) / self.sample_rate
        for piece in np.array_split((9000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16), 4):
            await asyncio.sleep(0.005)
            yield piece.tobytes()


def tone_utterance() -> list[Frame]:
    t = np.arange(16000 * 2) / 16000
    pcm = (8000 * np.sin(2 * np.pi * 300 * t) * ((t > 0.5) & (t < 1.2))).astype(np.int16).tobytes()
    return speech_script(pcm, 16000, start=0.5, end=1.2)


async def test_an_utterance_stt_conforms() -> None:
    transcripts = await check_stt(lambda: CountingSTT(name="stt"), tone_utterance(), timeout=20)
    assert transcripts[0] == "35 loud frames"


async def test_a_chat_llm_conforms() -> None:
    replies = await check_llm(lambda: EchoLLM(name="llm"), timeout=20)
    assert replies[0] == "Say hello. "


async def test_a_speech_synthesizer_conforms() -> None:
    assert await check_tts(lambda: BeepTTS(name="tts"), timeout=20) == 16000


class SilentSTT(Processor):
    """Eats audio: breaks the pass-through rule."""

    handles: ClassVar[tuple[type[Frame], ...]] = ()

    async def process(self, frame: Frame) -> None:
        return


class EndlessLLM(Processor):
    """Starts replies and never ends them."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TranscriptFrame,)

    async def process(self, frame: Frame) -> None:
        await self.push(frame)
        await self.push(LLMResponseStartFrame())
        await self.push(LLMTextFrame(text="hi"))


async def test_a_recogniser_that_hears_nothing_fails() -> None:
    with pytest.raises(ConformanceError, match="never sent"):
        await check_stt(lambda: SilentSTT(name="stt"), tone_utterance(), timeout=2)


async def test_an_llm_that_never_ends_its_replies_fails() -> None:
    with pytest.raises(ConformanceError, match="LLMResponseEndFrame"):
        await check_llm(lambda: EndlessLLM(name="llm"), timeout=2)


class ToolUsingLLM(ChatLLM):
    """Plays the model ``check_tools`` expects: calls the scripted tool, then repeats its results."""

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        last = messages[-1]
        if last["role"] == "tool":
            results = [m["content"] for m in messages if m["role"] == "tool"]
            yield f"I found {results[-1]}."
            return
        call = scripted_tool_call(str(last["content"]))
        if call is None:
            yield "Hello!"
            return
        name, arguments = call
        yield ToolCall(f"call_{len(messages)}", name, json.dumps(arguments))


class ToolLoopingLLM(ToolUsingLLM):
    """Calls the tool again whatever the results say: a reply that never goes on."""

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        asked = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        name, arguments = scripted_tool_call(asked) or ("lookup_word", {"topic": "sky"})
        yield ToolCall(f"call_{len(messages)}", name, json.dumps(arguments))


async def test_a_tool_calling_llm_conforms() -> None:
    replies = await check_tools(lambda tools: ToolUsingLLM(name="llm", tools=tools), timeout=10)
    assert "azure" in replies[0] and replies[-1] == "Hello!"


async def test_an_llm_whose_reply_never_goes_on_after_a_tool_fails() -> None:
    with pytest.raises(ConformanceError, match="reported errors"):
        await check_tools(lambda tools: ToolLoopingLLM(name="llm", tools=tools), timeout=5)
