"""closing_stream: the one helper the LLM and TTS bases use to close an engine's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pipeline.frames import LLMResponseEndFrame, LLMResponseStartFrame, LLMTextFrame
from pipeline.testing import run_processor
from processors.llm.streams import closing_stream
from processors.tts.base import SpeechSynthesizer


async def test_a_generator_is_closed_when_the_reader_is_cancelled() -> None:
    closed = asyncio.Event()
    holding = asyncio.Event()

    async def engine() -> AsyncIterator[int]:
        try:
            yield 1
            holding.set()
            await asyncio.Event().wait()
            yield 2
        finally:
            closed.set()

    async def read() -> None:
        async with closing_stream(engine()) as stream:
            async for _ in stream:
                pass

    reader = asyncio.ensure_future(read())
    async with asyncio.timeout(5):
        await holding.wait()
        reader.cancel()
        await asyncio.wait({reader})
    assert reader.cancelled() and closed.is_set()  # closed at once, not left to the garbage collector


class _Chunks:
    """An async iterator without ``aclose``, as an SDK may return: the hooks only promise AsyncIterator."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


class _SdkVoice(SpeechSynthesizer):
    sample_rate = 8000

    def synthesize(self, text: str) -> Any:  # returns an iterator instead of being a generator
        return _Chunks(b"\x10\x00" * 80, b"\x10\x00" * 80)


async def test_a_stream_without_aclose_is_read_and_left_as_it_is() -> None:
    async with closing_stream(stream := _Chunks(b"a", b"b")) as chunks:
        assert [c async for c in chunks] == [b"a", b"b"]
    assert stream.chunks == []
    frames = [LLMResponseStartFrame(), LLMTextFrame(text="Hello there."), LLMResponseEndFrame()]
    out = await run_processor(_SdkVoice(name="tts"), frames)
    assert not out.errors and out.kinds.count("bot_audio") == 1  # 160 samples = one 20 ms frame
