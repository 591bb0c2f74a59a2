"""tts.piper with the real joe voice: format, duration, loudness, and Whisper hearing the words."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.conformance import check_tts
from pipeline.formats import AudioFormat
from pipeline.frames import BotAudioFrame, BotTextFrame, TTSTextFrame
from pipeline.graph import GraphFailedError
from pipeline.testing import run_processor
from processors.tts.piper import PiperTTS
from tests.hearing import load_whisper_tiny, transcribe, wer

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def whisper() -> Any:
    return load_whisper_tiny()


def test_the_packaged_voice_is_found_and_its_rate_known_before_start() -> None:
    tts = PiperTTS()
    assert tts.check() == []
    assert tts.output_format(None) == AudioFormat(22050, 1)


def test_missing_voice_files_fail_validation() -> None:
    problems = PiperTTS(model_path="/nowhere/voice.onnx").check()
    assert {p.key for p in problems} == {"model_path", "config_path"}


async def test_a_sentence_becomes_clear_speech_at_22050_hz(whisper: Any) -> None:
    tts = PiperTTS()
    out = await run_processor(tts, [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT)
    audio = out.of(BotAudioFrame)
    assert {(f.sample_rate, f.channels, len(f.pcm)) for f in audio} == {(22050, 1, 882)}  # 20 ms frames
    assert [f.text for f in out.of(TTSTextFrame)] == [SENTENCE]
    duration = sum(f.duration for f in audio)
    assert 2.0 < duration < 7.0  # 12 words at 2-5 words a second
    samples = np.frombuffer(out.audio, dtype=np.int16).astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 1000
    assert wer(SENTENCE, transcribe(whisper, out.audio, 22050)) <= 0.3
    assert tts.metrics.samples["ttfb"]


async def test_length_scale_slows_the_voice_down() -> None:
    normal = await run_processor(PiperTTS(), [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT)
    slow = await run_processor(PiperTTS(length_scale=1.5), [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT)
    assert len(slow.audio) > 1.3 * len(normal.audio)


async def test_an_unknown_speaker_name_fails_at_start() -> None:
    with pytest.raises(GraphFailedError, match="no speaker 'nobody'"):
        await run_processor(PiperTTS(speaker="nobody"), [], timeout=TIMEOUT)


async def test_piper_conforms() -> None:
    assert await check_tts(lambda: PiperTTS(name="tts"), timeout=TIMEOUT) == 22050


async def test_the_voice_runs_on_its_own_quiet_threads_and_speaks_the_same() -> None:
    one = PiperTTS(cpu_threads=1)
    two = PiperTTS()
    spoken = [await run_processor(tts, [BotTextFrame(text=SENTENCE)], timeout=TIMEOUT) for tts in (one, two)]
    for tts, threads in ((one, 1), (two, 2)):
        options = tts._voice.session.get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    lengths = [len(out.audio) for out in spoken]  # the voice samples noise: not byte for byte
    assert min(lengths) > 0.8 * max(lengths)  # threads change the speed, not what is said
