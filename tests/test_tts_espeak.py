"""tts.espeak with the real espeak-ng: format, duration, loudness, Whisper hearing it, killing on barge-in."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import pytest

from pipeline.conformance import check_tts
from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import BotAudioFrame, BotTextFrame, TTSTextFrame
from pipeline.graph import GraphFailedError
from pipeline.testing import run_processor
from processors.tts import espeak
from processors.tts.espeak import EspeakTTS
from tests.hearing import load_whisper_tiny, transcribe, wer

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def whisper() -> Any:
    return load_whisper_tiny()


def test_a_missing_binary_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("processors.tts.espeak.shutil.which", lambda name: None)
    [problem] = EspeakTTS().check()
    assert "espeak-ng" in problem.message and problem.fix == "apt-get install espeak-ng"


def test_params_are_range_checked() -> None:
    with pytest.raises(ValidationError, match="words_per_minute") as error:
        EspeakTTS(words_per_minute=10, pitch=120)
    assert "pitch" in str(error.value)


def test_rate_is_known_before_start() -> None:
    assert EspeakTTS().output_format(None) == AudioFormat(22050, 1)


async def test_a_sentence_becomes_clear_speech_at_22050_hz(whisper: Any) -> None:
    tts = EspeakTTS()
    out = await run_processor(tts, [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT)
    audio = out.of(BotAudioFrame)
    assert {(f.sample_rate, f.channels, len(f.pcm)) for f in audio} == {(22050, 1, 882)}
    assert [f.text for f in out.of(TTSTextFrame)] == [SENTENCE]
    assert 2.0 < sum(f.duration for f in audio) < 7.0
    samples = np.frombuffer(out.audio, dtype=np.int16).astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 1000
    assert wer(SENTENCE, transcribe(whisper, out.audio, 22050)) <= 0.3


async def test_words_per_minute_changes_the_pace() -> None:
    slow = await run_processor(
        EspeakTTS(words_per_minute=120), [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT
    )
    fast = await run_processor(
        EspeakTTS(words_per_minute=240), [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT
    )
    assert len(slow.audio) > 1.5 * len(fast.audio)


async def test_text_starting_with_a_dash_is_spoken_not_taken_as_an_option() -> None:
    out = await run_processor(EspeakTTS(), [BotTextFrame(text="-v is a flag.")], timeout=TIMEOUT)
    assert len(out.audio) > 22050  # more than half a second of speech


async def test_an_unknown_voice_fails_at_start() -> None:
    with pytest.raises(GraphFailedError, match=r"'xx-bogus' failed: .*does not exist"):
        await run_processor(EspeakTTS(voice="xx-bogus"), [], timeout=TIMEOUT)


async def test_closing_the_stream_kills_espeak() -> None:
    tts = EspeakTTS()
    long_text = " ".join([SENTENCE] * 40)  # megabytes of audio: espeak-ng blocks on the full pipe
    stream = tts.synthesize(long_text)
    assert isinstance(stream, AsyncGenerator)
    assert await anext(stream)
    process = tts.process_in_flight
    assert process is not None and process.returncode is None
    await stream.aclose()
    assert process.returncode is not None and process.returncode < 0  # killed by a signal


async def test_a_barge_in_landing_as_a_read_completes_is_not_lost() -> None:
    # The cancel arrives in the same loop turn as the header: Python 3.11's wait_for would return the
    # header and drop the cancel, so the sentence would go on being spoken over the user.
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    header = b"RIFF\xff\xff\xff\xffWAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data\0\0\0\0"
    stream = asyncio.StreamReader()
    reader = asyncio.ensure_future(espeak._read_header(stream))
    await asyncio.sleep(0)  # the reader now waits for the header
    assert not reader.done()
    stream.feed_data(header)
    reader.cancel()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.wait({reader})
    assert reader.cancelled()


async def test_espeak_conforms() -> None:
    assert await check_tts(lambda: EspeakTTS(name="tts"), timeout=TIMEOUT) == 22050
