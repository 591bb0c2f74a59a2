"""stt.whisper on real speech: LibriVox clips cut by scripted speaking frames, base model assembly, YAML.

Models load once per process (the shared model cache), so only the first test pays for tiny.en.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import jiwer
import numpy as np
import pytest

from pipeline import config
from pipeline.errors import FatalProcessorError, ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from pipeline.testing import Gap, run_graph, run_processor
from pipeline.utterances import Utterance
from processors.models import SharedModel
from processors.stt import models
from processors.stt.whisper import WhisperSTT
from tests.speech import LIBRIVOX, librivox, read_wav, silence, speech_regions, write_wav

RATE = 16000
FRAME = RATE // 50  # 20 ms
START_LATE = 0.3  # the VAD's start frame comes this long after speech truly began (its hysteresis)
STOP_LATE = 0.4  # and the stop this long after it ended (its hangover)


def wer(reference: str, hypothesis: str) -> float:
    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).replace("-", " ").split())

    return float(jiwer.wer(norm(reference), norm(hypothesis)))


def reference(fragment: str) -> str:
    return next(text for name, text in LIBRIVOX.items() if fragment in name)


def conversation(*clips: str, gap: float = 1.0) -> tuple[list[Frame | Gap], list[np.ndarray]]:
    """Clips separated by ``gap`` s of silence, as 20 ms frames, with speaking frames placed *after* the
    audio they refer to (as a real VAD sends them) but stamped with the true speech boundaries."""
    pieces: list[np.ndarray] = []
    marks: list[tuple[float, Frame]] = []  # (stream position after which the frame is sent, frame)
    offset = 0.0
    for index, name in enumerate(clips):
        samples, rate = read_wav(librivox(name))
        assert rate == RATE
        first, last = speech_regions(samples, rate)
        marks.append((offset + first + START_LATE, UserStartedSpeakingFrame(stream_time=offset + first)))
        marks.append((offset + last + STOP_LATE, UserStoppedSpeakingFrame(stream_time=offset + last)))
        pieces.append(samples)
        offset += len(samples) / rate
        if index < len(clips) - 1 or gap:
            pieces.append(silence(gap))
            offset += gap
    audio = np.concatenate(pieces)
    script: list[Frame | Gap] = []
    pending = sorted(marks, key=lambda mark: mark[0])
    for start in range(0, len(audio), FRAME):
        script.append(UserAudioFrame(pcm=audio[start : start + FRAME].tobytes()))
        while pending and pending[0][0] <= (start + FRAME) / RATE:
            script.append(pending.pop(0)[1])
    script.extend(frame for _, frame in pending)
    return script, pieces


async def test_two_utterances_become_two_transcripts() -> None:
    script, _ = conversation("0880", "0930")
    stt = WhisperSTT()
    out = await run_processor(stt, script, timeout=60)
    assert not out.errors
    first, second = out.transcripts
    assert wer(reference("0880"), first) <= 0.25, first
    assert wer(reference("0930"), second) <= 0.25, second
    # The first syllable survived the late start frame: the pre-roll reached back for it.
    assert first.lower().startswith("he was"), first
    assert second.lower().startswith("he might"), second
    assert all(t.language == "en" for t in out.of(TranscriptFrame))


async def test_audio_and_speaking_frames_pass_through_unchanged() -> None:
    script, _ = conversation("0880", gap=0.5)
    out = await run_processor(WhisperSTT(), script, timeout=60)
    sent = [f for f in script if isinstance(f, Frame)]
    passed = [f for f in out.down if not isinstance(f, TranscriptFrame)]
    assert [id(f) for f in passed if isinstance(f, AudioFrame)] == [
        id(f) for f in sent if isinstance(f, AudioFrame)
    ]
    speaking = (UserStartedSpeakingFrame, UserStoppedSpeakingFrame)
    assert [id(f) for f in passed if isinstance(f, speaking)] == [
        id(f) for f in sent if isinstance(f, speaking)
    ]
    assert out.transcripts and out.of(TranscriptFrame)[0] is out.down[-1]  # after everything it heard


async def test_silence_between_speaking_frames_gives_no_transcript() -> None:
    pcm = silence(1.5).tobytes()
    frames: list[Frame | Gap] = [
        UserAudioFrame(pcm=pcm[i : i + 2 * FRAME]) for i in range(0, len(pcm), 2 * FRAME)
    ]
    script = [
        *frames[:40],
        UserStartedSpeakingFrame(stream_time=0.2),
        *frames[40:],
        UserStoppedSpeakingFrame(stream_time=1.2),
    ]
    out = await run_processor(WhisperSTT(), script, timeout=60)
    assert out.transcripts == []
    assert not out.errors


async def test_word_timings_and_interims() -> None:
    script, _ = conversation("0880", gap=0.3)
    paced: list[Frame | Gap] = []
    for item in script:  # real time, so partials have something to do while audio arrives
        paced.append(item)
        if isinstance(item, AudioFrame):
            paced.append(Gap(0.02))
    stt = WhisperSTT(word_timestamps=True, interim_interval_ms=700)
    out = await run_processor(stt, paced, timeout=60)
    texts = [f for f in out.down if isinstance(f, InterimTranscriptFrame | TranscriptFrame)]
    assert isinstance(texts[-1], TranscriptFrame)
    assert any(isinstance(f, InterimTranscriptFrame) for f in texts), [f.text for f in texts]
    words = texts[-1].words
    assert words is not None and [w["text"].lower().strip(".,") for w in words][:2] == ["he", "was"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["end"] >= w["start"] for w in words)


def test_base_model_is_joined_once_into_the_cache(tmp_path: Path) -> None:
    progress = io.StringIO()
    folder = models.assemble_whisper_base(tmp_path, progress)
    assert folder == tmp_path / "whisper-base"
    parts, _ = models._base_sources()
    assert (folder / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert {p.name for p in folder.iterdir()} >= {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }
    assert "100%" in progress.getvalue()
    stamp = (folder / "model.bin").stat().st_mtime_ns
    again = io.StringIO()
    assert models.assemble_whisper_base(tmp_path, again) == folder
    assert again.getvalue() == "" and (folder / "model.bin").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["whisper-base"]  # no temporary folder left over


def test_a_half_written_cache_is_rebuilt(tmp_path: Path) -> None:
    broken = tmp_path / "whisper-base"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"truncated")
    folder = models.assemble_whisper_base(tmp_path, io.StringIO())
    assert (folder / "model.bin").stat().st_size > 100_000_000


async def test_base_model_loads_from_the_cache_and_transcribes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    script, _ = conversation("0890", gap=0.3)
    stt = WhisperSTT(model="base", warm_up=False)
    out = await run_processor(stt, script, timeout=120)
    assert (tmp_path / "voxgraph" / "whisper-base" / "model.bin").is_file()
    assert len(out.transcripts) == 1
    assert wer(reference("0890"), out.transcripts[0]) <= 0.15, out.transcripts


async def test_an_unknown_model_fails_to_start_with_a_clear_message() -> None:
    stt = WhisperSTT(model="no-such-model")
    with pytest.raises(FatalProcessorError, match=r"tiny\.en"):
        await stt.on_start()


def test_params_and_paths_are_checked_before_running(tmp_path: Path) -> None:
    [problem] = WhisperSTT(model="tiny.en", language="de").check()
    assert (problem.key, problem.message) == ("language", "tiny.en understands English only")
    with pytest.raises(ValidationError, match="beam_size 0 is out of range"):
        WhisperSTT(beam_size=0)
    problems = WhisperSTT(model=str(tmp_path)).check()
    assert len(problems) == 1 and "model.bin" in problems[0].message
    assert WhisperSTT().check() == []


@dataclass(slots=True, kw_only=True)
class MarksParams:
    starts: list[float] = param(doc="true speech starts, seconds")
    stops: list[float] = param(doc="true speech ends, seconds")


class SpeechMarks(Processor):
    """A VAD with known answers: passes audio on and sends speaking frames at the given times."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    Params = MarksParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        marks: list[tuple[float, Frame]] = [
            (t + START_LATE, UserStartedSpeakingFrame(stream_time=t)) for t in self.params.starts
        ]
        marks += [(t + STOP_LATE, UserStoppedSpeakingFrame(stream_time=t)) for t in self.params.stops]
        self.marks = sorted(marks, key=lambda mark: mark[0])
        self.received = 0.0

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming

    async def process(self, frame: AudioFrame) -> None:
        await self.push(frame)
        self.received += frame.duration
        while self.marks and self.marks[0][0] <= self.received:
            self.push_system(self.marks.pop(0)[1])


async def test_yaml_graph_from_a_wav_file_at_another_rate(tmp_path: Path) -> None:
    samples, rate = read_wav(librivox("0930"))
    first, last = speech_regions(samples, rate)
    import soxr

    wav = write_wav(tmp_path / "clip.wav", soxr.resample(samples, rate, 22050).astype(np.int16), 22050)
    graph = config.load_text(
        f"""
settings: {{auto_resample: true}}
nodes:
  mic: {{type: source.wav, path: '{wav}', trailing_silence: 0.5}}
  vad: {{type: 'tests.test_stt_whisper:SpeechMarks', starts: [{first}], stops: [{last}]}}
  stt: {{type: stt.whisper}}
edges: [mic -> vad -> stt]
""",
        env={},
    )
    assert any(
        isinstance(p, Processor) and name.startswith("resample") for name, p in graph.processors.items()
    )
    out = await run_graph(graph, timeout=60)
    assert not out.errors
    assert len(out.transcripts) == 1 and wer(reference("0930"), out.transcripts[0]) <= 0.25, out.transcripts
    assert all(f.sample_rate == 16000 for f in out.of(AudioFrame))


class _LazyWhisper:
    """Stands in for faster-whisper's model: yields segments lazily, the second only once allowed."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_given = threading.Event()
        self.allow_second = threading.Event()
        self.second_decoded = False

    def transcribe(self, audio: Any, **options: Any) -> tuple[Any, Any]:
        self.calls += 1

        def segments() -> Any:
            yield SimpleNamespace(text=" one", words=None)
            self.first_given.set()
            self.allow_second.wait(5)
            self.second_decoded = True
            yield SimpleNamespace(text=" two", words=None)

        return segments(), SimpleNamespace(language="en")


def _utterance() -> Utterance:
    return Utterance(np.zeros(RATE // 10, dtype="<i2").tobytes(), RATE, 1, 0.0, 0.1)


async def test_a_cancelled_pass_waiting_for_the_shared_model_gives_up_without_running() -> None:
    model = _LazyWhisper()
    stt = WhisperSTT(warm_up=False)
    stt._shared = SharedModel(model)
    stt._shared.lock.acquire()  # another session is transcribing
    try:
        task = asyncio.ensure_future(stt.transcribe(_utterance()))
        await asyncio.sleep(0)  # let it start waiting for the lock
        task.cancel()
        async with asyncio.timeout(5):
            await asyncio.wait({task})
        assert task.cancelled()
    finally:
        stt._shared.lock.release()
    model.allow_second.set()
    async with asyncio.timeout(5):  # the model is free: the abandoned pass never ran on it
        assert (await stt.transcribe(_utterance())).text == "one two"
    assert model.calls == 1


async def test_a_cancelled_pass_stops_between_segments_and_lets_go_of_the_model() -> None:
    model = _LazyWhisper()
    stt = WhisperSTT(warm_up=False)
    stt._shared = shared = SharedModel(model)
    task = asyncio.ensure_future(stt.transcribe(_utterance()))
    async with asyncio.timeout(5):
        assert await asyncio.to_thread(model.first_given.wait, 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done  # cancelled, the call waits for its thread to let go of the model
    model.allow_second.set()
    async with asyncio.timeout(5):
        await asyncio.wait({task})
    assert task.cancelled()
    assert not shared.lock.locked()


async def test_an_interim_waiting_for_the_shared_model_gives_way_to_a_final() -> None:
    model = _LazyWhisper()
    model.allow_second.set()
    stt = WhisperSTT(warm_up=False)
    stt._shared = shared = SharedModel(model)
    assert not stt.engine_busy()
    shared.lock.acquire()  # another session is transcribing
    try:
        assert stt.engine_busy()  # the segmenter starts no interim now
        interim = asyncio.ensure_future(stt.transcribe_partial(_utterance().pcm, RATE))
        await asyncio.sleep(0.15)  # the interim waits for the lock
        final = asyncio.ensure_future(stt.transcribe(_utterance()))
        async with asyncio.timeout(5):
            assert await interim is None  # shed: it stepped aside for the final
        assert shared.priority_passes == 1 and stt.engine_busy()
    finally:
        shared.lock.release()
    async with asyncio.timeout(5):
        assert (await final).text == "one two"
    assert model.calls == 1 and shared.priority_passes == 0 and not stt.engine_busy()


async def test_a_fitted_window_reads_the_same_words_as_the_full_one() -> None:
    samples, _ = read_wav(librivox("0870"))  # 7.1 s: a 10.1 s window instead of 30 s
    utterance = Utterance(samples.tobytes(), RATE, 1, 0.0, len(samples) / RATE)
    fitted, full = WhisperSTT(), WhisperSTT(fit_window=False)
    await fitted.on_start()
    await full.on_start()  # the same shared model: only the window differs
    try:
        short, long = await fitted.transcribe(utterance), await full.transcribe(utterance)
    finally:
        await fitted.close()
        await full.close()
    assert wer(reference("0870"), short.text) <= 0.15, short.text
    assert wer(long.text, short.text) <= 0.1, (long.text, short.text)


def test_the_fitted_window_keeps_3_s_of_padding_within_10_to_30_s() -> None:
    from processors.stt.whisper import _window_frames

    assert _window_frames(RATE) == 1000  # 1 s of speech: the 10 s floor
    assert _window_frames(12 * RATE) == 1500  # 12 s + 3 s
    assert _window_frames(29 * RATE) == 3000  # never past Whisper's own window
