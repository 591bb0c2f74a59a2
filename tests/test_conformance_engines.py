"""Every STT, LLM and TTS engine against ``pipeline.conformance``: one matrix, one place.

Swapping one ``type:`` line for another must never change what the rest of a graph sees, so each
engine runs the same check: offline engines with their packaged models, cloud engines against the
local fakes of their services through their real SDKs. Speech is real (a LibriVox clip, speaking
frames at its true boundaries); the streaming fakes are scripted with the clip's words, one word per
slice of its voiced audio, so they "recognise" exactly what was said.

Models are cached process-wide by the engines: each loads once, whatever the number of checks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.conformance import check_llm, check_stt, check_tts, speech_script
from pipeline.frames import Frame
from pipeline.processor import Processor
from pipeline.registry import available
from processors.llm.gemini import GeminiLLM
from processors.llm.local import LocalLLM
from processors.llm.openai import OpenAILLM
from processors.stt.assemblyai import AssemblyAISTT
from processors.stt.fireworks import FireworksSTT
from processors.stt.openai import OpenAISTT
from processors.stt.pocketsphinx import PocketsphinxSTT
from processors.stt.whisper import WhisperSTT
from processors.tts.espeak import EspeakTTS
from processors.tts.openai import OpenAITTS
from processors.tts.piper import PiperTTS
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.fireworks import FakeFireworks
from tests.fakes.gemini import FakeGemini, contents_text, pick
from tests.fakes.openai import FakeOpenAI, Fault
from tests.speech import LIBRIVOX, librivox, read_wav, speech_regions
from tests.test_stt_whisper import wer

Make = Callable[[], Processor]
"""A fresh node of the engine under test (each check builds its own)."""
Opener = Callable[[], contextlib.AbstractAsyncContextManager[Make]]
"""Starts what the engine needs (a fake server, or nothing) and gives its node factory."""

CLIP = "sense_and_sensibility_01_austen_64kb-0880.wav"
SAID = LIBRIVOX[CLIP]
FORMATTED = SAID[0].upper() + SAID[1:] + "."  # how the streaming fakes finalise a turn
RATE = 16000
LEAD_IN, TAIL = 0.5, 1.0  # seconds of silence around the clip: the VAD's stop comes 0.5 s after the end
SILENCE_RMS = 200.0  # RMS from which the streaming fakes count a 50 ms chunk as voiced
CHUNK = RATE // 20  # the streaming nodes send 50 ms chunks
OFFLINE_TIMEOUT = 120.0
FAKE_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class Speech:
    """The clip as a conformance utterance, and how the fakes must be scripted to recognise it."""

    script: list[Frame]
    ms_per_word: int


@functools.cache
def speech() -> Speech:
    """The clip between silences, cut to whole 100 ms so both passes of the check chunk alike."""
    samples, rate = read_wav(librivox(CLIP))
    assert rate == RATE
    pcm = np.concatenate(
        [np.zeros(round(LEAD_IN * RATE), np.int16), samples, np.zeros(round(TAIL * RATE), np.int16)]
    )
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % (RATE // 10), np.int16)])
    start, end = speech_regions(pcm, RATE)
    chunks = pcm.reshape(-1, CHUNK).astype(np.float64)
    voiced_ms = 50 * int((np.sqrt((chunks**2).mean(axis=1)) >= SILENCE_RMS).sum())
    words = len(SAID.split())
    # The fakes hand out one word per ms_per_word of voiced audio: exactly `words` per pass.
    return Speech(speech_script(pcm.tobytes(), RATE, start, end), int(voiced_ms / (words + 0.5)))


def offline(make: Make) -> Opener:
    """An engine that needs nothing started."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Make]:
        yield make

    return opened


# --- speech-to-text ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def assemblyai() -> AsyncIterator[Make]:
    words = SAID.split() * 2  # the check speaks the clip twice
    async with FakeAssemblyAI(words=words, ms_per_word=speech().ms_per_word, silence_rms=SILENCE_RMS) as fake:
        yield lambda: AssemblyAISTT(
            name="stt", api_key=fake.api_key, api_host=fake.ws_url, connect_timeout=5.0
        )


@contextlib.asynccontextmanager
async def fireworks() -> AsyncIterator[Make]:
    words = SAID.split() * 2
    async with FakeFireworks(words=words, ms_per_word=speech().ms_per_word, silence_rms=SILENCE_RMS) as fake:
        yield lambda: FireworksSTT(
            name="stt", api_key=fake.api_key, base_url=fake.ws_url, connect_timeout=5.0
        )


def openai_stt(model: str) -> Opener:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Make]:
        async with FakeOpenAI(transcript=SAID) as fake:
            yield lambda: OpenAISTT(
                name="stt", api_key=fake.api_key, base_url=fake.base_url, model=model, max_retries=0
            )

    return opened


STT_ENGINES = [
    pytest.param(
        offline(lambda: WhisperSTT(name="stt", model="tiny.en")),
        None,
        0.3,
        OFFLINE_TIMEOUT,
        id="stt.whisper",
    ),
    pytest.param(
        offline(lambda: PocketsphinxSTT(name="stt")), None, 0.5, OFFLINE_TIMEOUT, id="stt.pocketsphinx"
    ),
    pytest.param(assemblyai, FORMATTED, 0.0, FAKE_TIMEOUT, id="stt.assemblyai"),
    pytest.param(fireworks, FORMATTED, 0.0, FAKE_TIMEOUT, id="stt.fireworks"),
    pytest.param(openai_stt("whisper-1"), SAID, 0.0, FAKE_TIMEOUT, id="stt.openai-whisper-1"),
    pytest.param(
        openai_stt("gpt-4o-mini-transcribe"),
        SAID,
        0.0,
        FAKE_TIMEOUT,
        id="stt.openai-gpt-4o-mini-transcribe",
    ),
]


@pytest.mark.parametrize("opener, transcript, max_wer, timeout", STT_ENGINES)
async def test_stt_conforms(opener: Opener, transcript: str | None, max_wer: float, timeout: float) -> None:
    async with opener() as make:
        transcripts = await check_stt(make, speech().script, timeout=timeout)
    if transcript is not None:  # a fake: exactly what it was scripted to say, once per pass
        assert transcripts == [transcript, transcript]
    assert wer(f"{SAID} {SAID}", " ".join(transcripts)) <= max_wer, transcripts


# --- LLM -----------------------------------------------------------------------------------------


def echo(question: str) -> str:
    """What the fakes answer: long enough, streamed slowly enough, to be interrupted mid-reply."""
    return f"You said: {question} Anything else I can do for you?"


@contextlib.asynccontextmanager
async def openai_llm() -> AsyncIterator[Make]:
    async with FakeOpenAI(
        reply=lambda body: echo(body["messages"][-1]["content"]), fault=Fault(chunk_delay=0.01)
    ) as fake:
        yield lambda: OpenAILLM(name="llm", api_key=fake.api_key, base_url=fake.base_url, max_retries=0)


@contextlib.asynccontextmanager
async def gemini() -> AsyncIterator[Make]:
    async with FakeGemini(
        reply=lambda body: echo(contents_text((pick(body, "contents") or [{}])[-1])),
        words_per_chunk=1,
        fault=Fault(chunk_delay=0.01),
    ) as fake:
        yield lambda: GeminiLLM(name="llm", api_key=fake.api_key, base_url=fake.base_url, max_retries=0)


LLM_ENGINES = [
    pytest.param(offline(lambda: LocalLLM(name="llm", max_tokens=40)), None, OFFLINE_TIMEOUT, id="llm.local"),
    pytest.param(openai_llm, echo("Say hello."), FAKE_TIMEOUT, id="llm.openai"),
    pytest.param(gemini, echo("Say hello."), FAKE_TIMEOUT, id="llm.gemini"),
]


@pytest.mark.parametrize("opener, first_reply, timeout", LLM_ENGINES)
async def test_llm_conforms(opener: Opener, first_reply: str | None, timeout: float) -> None:
    async with opener() as make:
        replies = await check_llm(make, timeout=timeout)
    assert replies[0].strip()
    if first_reply is not None:
        assert replies[0] == first_reply


# --- text-to-speech ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def openai_tts() -> AsyncIterator[Make]:
    # Odd-sized, slow chunks: samples straddle chunks and audio is still streaming at the interruption.
    async with FakeOpenAI(fault=Fault(chunk_delay=0.01)) as fake:
        fake.speech_chunk_bytes = 961
        yield lambda: OpenAITTS(name="tts", api_key=fake.api_key, base_url=fake.base_url, max_retries=0)


TTS_ENGINES = [
    pytest.param(offline(lambda: PiperTTS(name="tts")), 22050, OFFLINE_TIMEOUT, id="tts.piper"),
    pytest.param(offline(lambda: EspeakTTS(name="tts")), 22050, OFFLINE_TIMEOUT, id="tts.espeak"),
    pytest.param(openai_tts, 24000, FAKE_TIMEOUT, id="tts.openai"),
]


@pytest.mark.parametrize("opener, rate, timeout", TTS_ENGINES)
async def test_tts_conforms(opener: Opener, rate: int, timeout: float) -> None:
    async with opener() as make:
        assert await check_tts(make, timeout=timeout) == rate


def test_every_registered_engine_is_in_the_matrix() -> None:
    """A new stt.*, llm.* or tts.* type (an entry point in pyproject.toml) must join the matrix."""
    registered = {name for name in available() if name.split(".")[0] in ("stt", "llm", "tts")}
    covered = {str(p.id).split("-")[0] for p in [*STT_ENGINES, *LLM_ENGINES, *TTS_ENGINES]}
    assert registered == covered
