"""stt.pocketsphinx on real speech: streaming interims, finals per VAD utterance, its own endpointer."""

from __future__ import annotations

import numpy as np

from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.testing import Gap, run_processor
from processors.stt.pocketsphinx import _IDLE_DECODERS, PocketsphinxSTT
from tests.speech import silence
from tests.test_stt_whisper import FRAME, conversation, reference, wer


async def test_interims_while_speaking_then_one_final_per_utterance() -> None:
    script, _ = conversation("0880", "0930")
    paced: list[Frame | Gap] = []
    for item in script:  # twice real time: audio arrives while the decoder works, as from a microphone
        paced.append(item)
        if isinstance(item, AudioFrame):
            paced.append(Gap(FRAME / 16000 / 2))
    out = await run_processor(PocketsphinxSTT(), paced, timeout=60)
    assert not out.errors
    assert len(out.transcripts) == 2, out.transcripts
    assert wer(reference("0880"), out.transcripts[0]) <= 0.5, out.transcripts
    assert wer(reference("0930"), out.transcripts[1]) <= 0.5, out.transcripts
    texts = [f for f in out.down if isinstance(f, InterimTranscriptFrame | TranscriptFrame)]
    finals = [i for i, f in enumerate(texts) if isinstance(f, TranscriptFrame)]
    first_interims = texts[: finals[0]]
    second_interims = texts[finals[0] + 1 : finals[1]]
    assert len(first_interims) >= 3 and len(second_interims) >= 3
    assert all(isinstance(f, InterimTranscriptFrame) for f in first_interims + second_interims)
    assert first_interims[0].text.split()[0] == "he"  # the pre-roll caught the first word
    assert finals[-1] == len(texts) - 1  # nothing after the last final
    words = out.of(TranscriptFrame)[0].words
    assert words and words[0]["text"] == "he" and all(w["end"] > w["start"] for w in words)


async def test_audio_and_speaking_frames_pass_through_unchanged() -> None:
    script, _ = conversation("0930", gap=0.3)
    out = await run_processor(PocketsphinxSTT(interim=False), script, timeout=60)
    sent = [
        f for f in script if isinstance(f, AudioFrame | UserStartedSpeakingFrame | UserStoppedSpeakingFrame)
    ]
    passed = [f for f in out.down if not isinstance(f, TranscriptFrame)]
    assert [id(f) for f in passed if isinstance(f, AudioFrame)] == [
        id(f) for f in sent if isinstance(f, AudioFrame)
    ]
    assert sum(isinstance(f, UserStartedSpeakingFrame | UserStoppedSpeakingFrame) for f in passed) == 2
    assert not out.of(InterimTranscriptFrame) and len(out.transcripts) == 1


async def test_silence_gives_no_transcript() -> None:
    pcm = silence(1.5).tobytes()
    frames: list[Frame | Gap] = [
        UserAudioFrame(pcm=pcm[i : i + 2 * FRAME]) for i in range(0, len(pcm), 2 * FRAME)
    ]
    script = [*frames[:40], UserStartedSpeakingFrame(stream_time=0.2), *frames[40:]]
    script.append(UserStoppedSpeakingFrame(stream_time=1.2))
    out = await run_processor(PocketsphinxSTT(), script, timeout=60)
    assert out.transcripts == [] and not out.of(InterimTranscriptFrame)
    assert not out.errors


async def test_without_a_vad_its_own_endpointer_cuts_utterances() -> None:
    script, _ = conversation("0880", "0930", gap=1.0)
    audio_only = [f for f in script if isinstance(f, AudioFrame)]
    out = await run_processor(PocketsphinxSTT(interim=False), audio_only, timeout=60)
    assert len(out.transcripts) == 2, out.transcripts
    assert wer(reference("0880"), out.transcripts[0]) <= 0.5, out.transcripts
    assert wer(reference("0930"), out.transcripts[1]) <= 0.5, out.transcripts


async def test_audio_in_another_format_is_converted() -> None:
    script, _ = conversation("0880", gap=0.3)
    stereo: list[Frame | Gap] = []
    for item in script:
        if isinstance(item, AudioFrame):
            samples = np.frombuffer(item.pcm, dtype="<i2")
            stereo.append(UserAudioFrame(pcm=np.repeat(samples, 2).tobytes(), channels=2))
        else:
            stereo.append(item)
    out = await run_processor(PocketsphinxSTT(), stereo, timeout=60)
    assert len(out.transcripts) == 1 and wer(reference("0880"), out.transcripts[0]) <= 0.5


async def test_the_next_session_gets_the_decoder_of_the_last_one_with_the_same_results() -> None:
    """A decoder costs ~0.3 s to build (and a little memory PocketSphinx never gives back): an ended
    session's decoder serves the next one, and recognises just as a fresh one does."""
    script, _ = conversation("0880", gap=0.3)
    first_stt = PocketsphinxSTT(interim=False)
    first = await run_processor(first_stt, script, timeout=60)
    idle = _IDLE_DECODERS.take(first_stt._decoder_key)
    assert idle is not None  # given back at the end
    _IDLE_DECODERS.give_back(first_stt._decoder_key, idle)
    second_stt = PocketsphinxSTT(interim=False)
    second = await run_processor(second_stt, script, timeout=60)
    assert second.transcripts == first.transcripts and len(first.transcripts) == 1
    assert _IDLE_DECODERS.take(second_stt._decoder_key) is idle  # the same decoder, used and back
