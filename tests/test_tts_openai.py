"""tts.openai against the local OpenAI fake: streamed 24 kHz PCM per sentence, barge-in and failures."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest

from pipeline.conformance import check_tts
from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    BotAudioFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TTSTextFrame,
)
from pipeline.graph import GraphFailedError
from pipeline.testing import Captured, Collector, run_processor
from processors.tts.openai import OpenAITTS
from tests.fakes.openai import FakeOpenAI, Fault
from tests.test_llm_openai import ErrorTap, converse

FRAME_BYTES = 24000 * 20 // 1000 * 2  # 20 ms at 24 kHz


def reply(*chunks: str) -> list[Frame]:
    return [LLMResponseStartFrame(), *(LLMTextFrame(text=c) for c in chunks), LLMResponseEndFrame()]


def spoken(out: Captured) -> list[tuple[str, bytes]]:
    """(sentence, its audio) in order."""
    sentences: list[tuple[str, bytes]] = []
    for frame in out.down:
        if isinstance(frame, TTSTextFrame):
            sentences.append((frame.text, b""))
        elif isinstance(frame, BotAudioFrame):
            text, audio = sentences[-1]
            sentences[-1] = (text, audio + frame.pcm)
    return sentences


def padded(pcm: bytes) -> bytes:
    """``pcm`` padded with silence to whole 20 ms frames, as the base emits it."""
    return pcm + b"\x00" * (-len(pcm) % FRAME_BYTES)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def make_tts(fake: FakeOpenAI, **params: Any) -> OpenAITTS:
    values: dict[str, Any] = {"api_key": fake.api_key, "base_url": fake.base_url, "max_retries": 0}
    return OpenAITTS(name="tts", **(values | params))


async def test_speaks_each_sentence_as_24khz_frames(fake: FakeOpenAI) -> None:
    tts = make_tts(fake, voice="coral", instructions="Speak warmly.", speed=1.2)
    out = await run_processor(tts, reply("Hello there. ", "How are", " you today?"))

    assert [text for text, _ in spoken(out)] == ["Hello there.", "How are you today?"]
    for text, audio in spoken(out):
        assert audio == padded(fake.speech_pcm(text))
    frames = out.of(BotAudioFrame)
    assert {(f.sample_rate, f.channels, len(f.pcm)) for f in frames} == {(24000, 1, FRAME_BYTES)}
    assert tts.output_format(None) == AudioFormat(24000, 1)
    kinds = [k for k in out.kinds if k not in ("llm_text", "bot_audio")]
    assert kinds == [
        "llm_response_start",
        "tts_started",
        "tts_text",
        "tts_text",
        "tts_stopped",
        "llm_response_end",
    ]
    assert fake.requests[0].body == {
        "model": "gpt-4o-mini-tts",
        "voice": "coral",
        "input": "Hello there.",
        "response_format": "pcm",
        "instructions": "Speak warmly.",
        "speed": 1.2,
    }
    assert not out.errors
    assert len(tts.metrics.samples["ttfb"]) == 1


async def test_odd_sized_http_chunks_keep_samples_whole(fake: FakeOpenAI) -> None:
    assert fake.speech_chunk_bytes % 2 == 1
    tts = make_tts(fake)
    await tts.on_start()
    try:
        chunks = [chunk async for chunk in tts.synthesize("The quick brown fox jumps over the lazy dog.")]
    finally:
        await tts.on_stop()

    assert len(chunks) > 2
    assert all(len(chunk) % 2 == 0 for chunk in chunks)
    assert b"".join(chunks) == fake.speech_pcm("The quick brown fox jumps over the lazy dog.")


def test_bad_params_are_reported() -> None:
    with pytest.raises(ValidationError) as caught:
        OpenAITTS(api_key="sk-x", voice="", speed=9.0)
    message = str(caught.value)
    assert "voice '' is not usable" in message and "speed 9.0 is out of range" in message
    [problem] = OpenAITTS(api_key="").check()
    assert problem.key == "api_key" and "OPENAI_API_KEY" in problem.message


async def test_rejected_key_ends_the_graph_without_showing_the_key(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.leak_key = True
    secret = "sk-wrong-but-secret-4242"
    tap = ErrorTap(source="tts")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GraphFailedError) as caught:
        await run_processor(make_tts(fake, api_key=secret), reply("Hello there."), observers=[tap])

    assert "rejected the API key" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)
    assert [e.fatal for e in tap.errors] == [True]
    assert secret not in str(caught.value)
    assert all(secret not in e.message for e in tap.errors)
    assert secret not in caplog.text


async def test_dropped_stream_fails_that_reply_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(disconnect_after=2)]
    out = await run_processor(make_tts(fake), [*reply("First reply."), *reply("Second reply.")])

    (error,) = out.errors
    assert not error.fatal and "connection to" in error.message
    (first, second) = spoken(out)
    assert first[0] == "First reply." and len(first[1]) < len(fake.speech_pcm("First reply."))
    assert second == ("Second reply.", padded(fake.speech_pcm("Second reply.")))
    assert fake.requests[0].outcome == "dropped"


async def test_server_error_fails_that_reply_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(status=500)]
    out = await run_processor(make_tts(fake), [*reply("First reply."), *reply("Second reply.")])

    (error,) = out.errors
    assert "InternalServerError" in error.message and not error.fatal
    assert spoken(out)[-1] == ("Second reply.", padded(fake.speech_pcm("Second reply.")))


async def test_slow_server_shows_in_time_to_first_audio(fake: FakeOpenAI) -> None:
    fake.fault = Fault(first_byte_delay=0.3)
    tts = make_tts(fake)
    await run_processor(tts, reply("Hello there."))

    (ttfb,) = tts.metrics.samples["ttfb"]
    assert ttfb >= 0.3


async def test_interruption_closes_the_http_stream(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(stall_after=1)]  # the first sentence hangs after one chunk until the client leaves

    async def first_audio(out: Collector) -> None:
        await out.wait_for(BotAudioFrame)

    async def stream_closed() -> None:
        first = await fake.request(0)
        assert await first.wait_finished() == "client_closed"

    out = await converse(
        make_tts(fake),
        lambda out: [
            *reply("A long first sentence that will be cut short."),
            lambda: first_audio(out),
            InterruptionFrame(),
            stream_closed,
            *reply("After the barge-in."),
        ],
    )

    assert not out.errors
    assert spoken(out)[-1] == ("After the barge-in.", padded(fake.speech_pcm("After the barge-in.")))


async def test_closing_the_audio_stream_closes_the_http_stream(fake: FakeOpenAI) -> None:
    # The base closes the generator (aclose) when a barge-in lands while it waits to push audio.
    fake.fault = Fault(stall_after=1)
    tts = make_tts(fake)
    await tts.on_start()
    try:
        stream = cast(AsyncGenerator[bytes, None], tts.synthesize("Hello there."))
        assert len(await anext(stream)) == fake.speech_chunk_bytes - 1
        await stream.aclose()
        assert await fake.requests[0].wait_finished() == "client_closed"
    finally:
        await tts.on_stop()


async def test_conforms(fake: FakeOpenAI) -> None:
    fake.fault = Fault(chunk_delay=0.01)  # audio still streaming when the check interrupts it
    fake.speech_chunk_bytes = 961
    assert await check_tts(lambda: make_tts(fake), timeout=10) == 24000
