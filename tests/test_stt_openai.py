"""stt.openai against the local OpenAI fake: real LibriVox speech cut by speaking frames, one request
per utterance, streamed interims for the gpt-*-transcribe models, and failures that cost one turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from pipeline.conformance import check_stt, speech_script
from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.testing import Collector, ScriptedSource, run_processor
from processors.stt.openai import OpenAISTT, streams
from tests.fakes.openai import FakeOpenAI, Fault, wav_format
from tests.speech import LIBRIVOX, librivox, read_wav
from tests.test_llm_openai import ErrorTap

RATE = 16000
FRAME_BYTES = RATE // 50 * 2  # 20 ms
CLIP = "0880"
TRANSCRIPT = next(text for name, text in LIBRIVOX.items() if CLIP in name)


def utterances(count: int) -> list[Frame]:
    """``count`` utterances of one real clip, each framed by speaking frames and followed by silence."""
    samples, rate = read_wav(librivox(CLIP))
    assert rate == RATE
    pcm = samples.tobytes() + np.zeros(RATE // 2, dtype="<i2").tobytes()
    clip_seconds = len(samples) / RATE
    frames: list[Frame] = []
    for index in range(count):
        offset = index * len(pcm) / 2 / RATE
        frames.append(UserStartedSpeakingFrame(stream_time=offset))
        frames += [UserAudioFrame(pcm=pcm[i : i + FRAME_BYTES]) for i in range(0, len(pcm), FRAME_BYTES)]
        frames.append(UserStoppedSpeakingFrame(stream_time=offset + clip_seconds))
    return frames


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(transcript=TRANSCRIPT) as server:
        yield server


def make_stt(fake: FakeOpenAI, **params: Any) -> OpenAISTT:
    values: dict[str, Any] = {"api_key": fake.api_key, "base_url": fake.base_url, "max_retries": 0}
    return OpenAISTT(name="stt", **(values | params))


async def test_whisper_transcribes_each_utterance(fake: FakeOpenAI) -> None:
    stt = make_stt(fake, language="en", prompt="Sense and Sensibility")
    script = utterances(2)
    out = await run_processor(stt, script)

    assert out.transcripts == [TRANSCRIPT, TRANSCRIPT]
    assert {f.language for f in out.of(TranscriptFrame)} == {"en"}
    assert not out.of(InterimTranscriptFrame) and not out.errors
    assert out.audio == b"".join(f.pcm for f in script if isinstance(f, AudioFrame))  # audio passes on
    first = fake.requests[0]
    assert first.body == {
        "model": "whisper-1",
        "language": "en",
        "prompt": "Sense and Sensibility",
        "response_format": "json",
    }
    assert first.filename == "utterance.wav" and first.file is not None
    rate, channels, frames = wav_format(first.file)
    clip_seconds = len(read_wav(librivox(CLIP))[0]) / RATE
    assert (rate, channels) == (RATE, 1)
    assert clip_seconds <= frames / rate <= clip_seconds + 0.2  # the utterance plus its post-roll
    assert len(stt.metrics.samples["ttfb"]) == 2


async def test_gpt_transcribe_streams_interims_then_the_final(fake: FakeOpenAI) -> None:
    out = await run_processor(make_stt(fake, model="gpt-4o-mini-transcribe"), utterances(1))

    interims = [f.text for f in out.of(InterimTranscriptFrame)]
    words = TRANSCRIPT.split()
    assert interims == [" ".join(words[: n + 1]) for n in range(len(words))]
    assert out.transcripts == [TRANSCRIPT]
    kinds = [k for k in out.kinds if k != "audio"]
    assert kinds.index("transcript") > max(i for i, k in enumerate(kinds) if k == "interim_transcript")
    assert fake.requests[0].body["stream"] == "true"


async def test_streaming_can_be_turned_off(fake: FakeOpenAI) -> None:
    out = await run_processor(make_stt(fake, model="gpt-4o-transcribe", stream=False), utterances(1))

    assert out.transcripts == [TRANSCRIPT]
    assert not out.of(InterimTranscriptFrame)
    assert "stream" not in fake.requests[0].body


def test_stream_auto_follows_the_model() -> None:
    assert streams("gpt-4o-mini-transcribe", "auto") and streams("gpt-4o-transcribe", "auto")
    assert not streams("whisper-1", "auto") and not streams("Systran/faster-whisper-small", "auto")
    assert streams("whisper-large-v3", True) and not streams("gpt-4o-transcribe", False)


def test_whisper_cannot_stream() -> None:
    [problem] = OpenAISTT(api_key="sk-x", model="whisper-1", stream=True).check()
    assert (problem.key, problem.message) == ("stream", "whisper-1 cannot stream")


def test_empty_key_names_the_variable() -> None:
    [problem] = OpenAISTT(api_key="").check()
    assert problem.key == "api_key" and "OPENAI_API_KEY" in problem.message


async def test_rejected_key_ends_the_graph_without_showing_the_key(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.leak_key = True
    secret = "sk-wrong-but-secret-4242"
    tap = ErrorTap(source="stt")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GraphFailedError) as caught:
        await run_processor(make_stt(fake, api_key=secret), utterances(1), observers=[tap])

    assert "rejected the API key" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)
    assert [e.fatal for e in tap.errors] == [True]
    assert secret not in str(caught.value)
    assert all(secret not in e.message for e in tap.errors)
    assert secret not in caplog.text


async def test_dropped_stream_fails_that_utterance_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(disconnect_after=3)]
    out = await run_processor(make_stt(fake, model="gpt-4o-mini-transcribe"), utterances(2))

    (error,) = out.errors
    assert not error.fatal and "connection to" in error.message
    assert out.transcripts == [TRANSCRIPT]
    assert fake.requests[0].outcome == "dropped"


async def test_malformed_event_fails_that_utterance_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(malformed_at=2)]
    out = await run_processor(make_stt(fake, model="gpt-4o-mini-transcribe"), utterances(2))

    (error,) = out.errors
    assert not error.fatal and "unreadable event" in error.message
    assert out.transcripts == [TRANSCRIPT]


async def test_server_error_fails_that_utterance_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(status=500)]
    out = await run_processor(make_stt(fake), utterances(2))

    (error,) = out.errors
    assert "InternalServerError" in error.message and not error.fatal
    assert out.transcripts == [TRANSCRIPT]


async def test_slow_server_shows_in_time_to_transcript(fake: FakeOpenAI) -> None:
    fake.fault = Fault(first_byte_delay=0.3)
    stt = make_stt(fake)
    out = await run_processor(stt, utterances(1))

    assert out.transcripts == [TRANSCRIPT]
    (ttfb,) = stt.metrics.samples["ttfb"]
    assert ttfb >= 0.3


async def test_cancelling_the_graph_closes_the_http_stream(fake: FakeOpenAI) -> None:
    fake.fault = Fault(stall_after=2)  # the transcription hangs after two deltas until the client leaves
    out = Collector(name="out")
    graph = Graph(
        {
            "script": ScriptedSource(utterances(1)),
            "stt": make_stt(fake, model="gpt-4o-transcribe"),
            "out": out,
        },
        [("script", "stt"), ("stt", "out")],
    )
    running = asyncio.ensure_future(graph.run())
    try:
        await out.wait_for(InterimTranscriptFrame)
        await asyncio.wait_for(graph.cancel(), 5)
        assert await fake.requests[0].wait_finished() == "client_closed"
    finally:
        await asyncio.wait_for(running, 5)


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-mini-transcribe"])
async def test_conforms(fake: FakeOpenAI, model: str) -> None:
    samples, rate = read_wav(librivox(CLIP))
    pcm = np.concatenate([np.zeros(rate // 2, dtype=np.int16), samples, np.zeros(rate, dtype=np.int16)])
    script = speech_script(pcm.tobytes(), rate, start=0.5, end=0.5 + len(samples) / rate)
    transcripts = await check_stt(lambda: make_stt(fake, model=model), script, timeout=10)
    assert transcripts == [TRANSCRIPT, TRANSCRIPT]
