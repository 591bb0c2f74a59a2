"""Synthetic sources: what they emit, how they pace it, and how they report bad params and files."""

from __future__ import annotations

import asyncio
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import check_text
from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotTextFrame,
    Direction,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserTextFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.observers import Observer
from pipeline.params import param_specs
from pipeline.processor import Processor, Source
from pipeline.registry import resolve
from pipeline.sources import (
    AudioFileError,
    NoiseSource,
    SilenceSource,
    TextSource,
    ToneSource,
    TranscriptSource,
    WavSource,
)
from pipeline.testing import Collector, run_graph, run_processor, run_virtual

SOURCES: list[type[Source]] = [
    SilenceSource,
    ToneSource,
    NoiseSource,
    WavSource,
    TextSource,
    TranscriptSource,
]


class PushTimes(Observer):
    """Loop time of each frame ``source`` pushes downstream."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.times: list[float] = []

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if source.name == self.source and not frame.system and frame.kind != "end":
            self.times.append(asyncio.get_running_loop().time())


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def write_wav(path: Path, pcm: bytes, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


# --- registration and params ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "cls"),
    [
        ("source.silence", SilenceSource),
        ("source.tone", ToneSource),
        ("source.noise", NoiseSource),
        ("source.wav", WavSource),
        ("source.text", TextSource),
        ("source.transcripts", TranscriptSource),
    ],
)
def test_sources_are_node_types(type_name: str, cls: type[Source]) -> None:
    assert resolve(type_name) is cls
    assert cls.type_name == type_name
    assert cls.produces


@pytest.mark.parametrize("cls", SOURCES)
def test_every_param_is_documented(cls: type[Source]) -> None:
    specs = param_specs(cls.Params)
    assert specs
    assert all(spec.doc for spec in specs)


def test_bad_audio_params_are_reported_together() -> None:
    with pytest.raises(ValidationError) as caught:
        ToneSource(name="tone", amplitude=1.5, channels=0)
    message = str(caught.value)
    assert "2 problems found" in message
    assert "amplitude 1.5 is out of range" in message and "fix: use 0 to 1" in message
    assert "channels 0 is out of range" in message
    problems = ToneSource(name="tone", sample_rate=22050, frame_ms=10, frequency=20000).check()
    assert [(p.key, p.message, p.fix) for p in problems] == [
        ("frame_ms", "frame_ms 10 is not a whole number of samples at 22050 Hz", "use one of 20, 40, 60"),
        (
            "frequency",
            "frequency 20000 Hz cannot be represented at 22050 Hz",
            "use a frequency between 0 and 11025 Hz (half the sample rate)",
        ),
    ]


def test_negative_durations_are_refused() -> None:
    with pytest.raises(ValidationError, match="duration -1 is out of range"):
        SilenceSource(duration=-1)
    with pytest.raises(ValidationError, match="trailing_silence -1 is out of range"):
        WavSource(path="x.wav", trailing_silence=-1)


def test_generated_audio_declares_its_format() -> None:
    assert ToneSource(sample_rate=24000, channels=2).output_format(None) == AudioFormat(24000, 2)
    assert TextSource(texts=["x"]).output_format(None) is None


# --- generated audio -----------------------------------------------------------------------------


async def test_silence_is_whole_frames_of_zeros() -> None:
    out = await run_processor(SilenceSource(duration=0.05, frame_ms=20))
    frames = out.of(AudioFrame)
    assert len(frames) == 3  # 50 ms in whole 20 ms frames
    assert all(f.pcm == bytes(640) and f.sample_rate == 16000 and f.channels == 1 for f in frames)


async def test_a_tone_is_phase_continuous_across_frames() -> None:
    out = await run_processor(ToneSource(frequency=1000, amplitude=0.5, duration=0.1, frame_ms=10))
    assert len(out.of(AudioFrame)) == 10
    got = samples(out.audio).astype(float)
    expected = np.round(0.5 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(1600) / 16000))
    assert np.max(np.abs(got - expected)) <= 1


async def test_a_stereo_tone_has_the_same_signal_on_both_channels() -> None:
    out = await run_processor(ToneSource(channels=2, duration=0.02))
    [frame] = out.of(AudioFrame)
    assert frame.channels == 2 and frame.num_samples == 320
    left, right = samples(frame.pcm)[0::2], samples(frame.pcm)[1::2]
    assert np.array_equal(left, right)
    assert np.max(np.abs(left)) > 0


async def test_noise_is_reproducible_with_a_seed_and_bounded() -> None:
    first = await run_processor(NoiseSource(seed=7, amplitude=0.2, duration=0.1))
    again = await run_processor(NoiseSource(seed=7, amplitude=0.2, duration=0.1))
    other = await run_processor(NoiseSource(seed=8, amplitude=0.2, duration=0.1))
    assert first.audio == again.audio
    assert first.audio != other.audio
    values = samples(first.audio)
    assert len(values) == 1600
    assert np.max(np.abs(values)) <= round(0.2 * 32767)
    assert np.std(values) > 0


def test_realtime_audio_is_paced_like_a_microphone() -> None:
    async def main() -> tuple[float, list[float]]:
        times = PushTimes("tone")
        loop = asyncio.get_running_loop()
        began = loop.time()
        await run_processor(ToneSource(name="tone", duration=0.1, realtime=True), observers=[times])
        return began, times.times

    began, times = run_virtual(main())
    assert [t - began for t in times] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10])


def test_realtime_pacing_catches_up_after_a_stall_without_drift() -> None:
    class StallsOnce(Processor):
        handles = (AudioFrame,)

        def __init__(self) -> None:
            super().__init__(name="stalls", queue_size=1)
            self.stalled = False

        async def process(self, frame: AudioFrame) -> None:
            if not self.stalled:
                self.stalled = True
                await asyncio.sleep(0.1)

    async def main() -> tuple[float, list[float]]:
        times = PushTimes("tone")
        graph = Graph(
            {"tone": ToneSource(duration=0.2, realtime=True), "stalls": StallsOnce()},
            [("tone", "stalls")],
            observers=[times],
        )
        began = asyncio.get_running_loop().time()
        await run_graph(graph)
        return began, times.times

    began, times = run_virtual(main())
    offsets = [t - began for t in times]
    assert len(offsets) == 10
    assert max(offsets[2:6]) > 0.1  # held back by the stall ...
    assert offsets[-1] == pytest.approx(0.2)  # ... then back on the original schedule


def test_an_endless_source_runs_until_stopped() -> None:
    async def main() -> list[str]:
        collector = Collector()
        graph = Graph(
            {"silence": SilenceSource(duration=None, realtime=True), "out": collector}, [("silence", "out")]
        )
        await graph.start()
        await collector.wait_for(lambda f: sum(isinstance(x, AudioFrame) for x in collector.frames) >= 50)
        await graph.stop()
        return [f.kind for f in collector.frames]

    kinds = run_virtual(main())
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("user_audio") >= 50


# --- WAV files -----------------------------------------------------------------------------------


async def test_a_wav_file_plays_in_whole_frames_then_trailing_silence(tmp_path: Path) -> None:
    pcm = np.arange(800, dtype="<i2").tobytes()  # 50 ms at 16 kHz
    path = write_wav(tmp_path / "ramp.wav", pcm)
    out = await run_processor(WavSource(path=str(path), trailing_silence=0.04))
    frames = out.of(AudioFrame)
    assert len(frames) == 3 + 2
    assert all(len(f.pcm) == 640 and f.sample_rate == 16000 for f in frames)
    assert out.audio == pcm + bytes(2 * (960 - 800)) + bytes(2 * 640)


async def test_a_wav_file_keeps_its_own_rate_and_channels(tmp_path: Path) -> None:
    stereo = np.zeros(2 * 441, dtype="<i2").tobytes()
    path = write_wav(tmp_path / "stereo.wav", stereo, rate=44100, channels=2)
    source = WavSource(path=str(path), frame_ms=10)
    assert source.output_format(None) == AudioFormat(44100, 2)
    out = await run_processor(source)
    [frame] = out.of(AudioFrame)
    assert (frame.sample_rate, frame.channels, frame.num_samples) == (44100, 2, 441)


def test_a_missing_wav_file_is_a_validation_problem(tmp_path: Path) -> None:
    source = WavSource(name="mic", path=str(tmp_path / "nope.wav"))
    assert source.output_format(None) is None
    [problem] = source.check()
    assert (problem.node, problem.key) == ("mic", "path")
    assert re.search(r"audio file .*nope.wav' not found", problem.message)
    with pytest.raises(ValidationError, match="not found"):
        Graph({"mic": source, "out": Collector()}, [("mic", "out")])


async def test_a_wav_file_removed_after_validation_stops_the_graph_at_start(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "gone.wav", bytes(640))
    source = WavSource(name="mic", path=str(path))
    assert source.check() == []
    graph = Graph({"mic": source, "out": Collector()}, [("mic", "out")])
    path.unlink()
    with pytest.raises(GraphFailedError, match=r"mic: AudioFileError: audio file .*gone.wav' not found"):
        await graph.run()


async def test_an_8_bit_wav_file_plays_as_16_bit(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "eight.wav", bytes([128, 129, 127] * 160), width=1)  # unsigned
    source = WavSource(path=str(path), frame_ms=10)
    assert source.check() == []
    out = await run_processor(source)
    assert out.audio == np.array([0, 256, -256] * 160, dtype="<i2").tobytes()


async def test_a_file_that_is_not_a_wav_is_reported(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all")
    source = WavSource(path=str(junk))
    assert source.output_format(None) is None
    with pytest.raises(AudioFileError, match=r"junk.wav': its format is not one Voxgraph reads"):
        await source.on_start()


def test_a_wav_rate_that_does_not_fit_frame_ms_is_reported(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "odd.wav", bytes(2 * 2205), rate=22050)
    [problem] = WavSource(path=str(path), frame_ms=10).check()
    assert problem.message == "frame_ms 10 is not a whole number of samples at 22050 Hz"
    assert problem.key == "frame_ms"


# --- text ----------------------------------------------------------------------------------------


def test_text_is_sent_at_the_given_interval() -> None:
    async def main() -> tuple[list[str], list[float]]:
        times = PushTimes("typed")
        out = await run_processor(
            TextSource(name="typed", texts=["hi", "how", "bye"], interval=2.0), observers=[times]
        )
        return out.texts, [t - times.times[0] for t in times.times]

    texts, offsets = run_virtual(main())
    assert texts == ["hi", "how", "bye"]
    assert offsets == pytest.approx([0.0, 2.0, 4.0])


async def test_text_is_the_users_unless_the_role_says_bot() -> None:
    typed = await run_processor(TextSource(texts=["hi"]))
    spoken = await run_processor(TextSource(texts=["hello"], role="bot"))
    assert typed.down == [UserTextFrame(text="hi")]
    assert spoken.down == [BotTextFrame(text="hello")]


def test_validation_knows_whose_text_a_text_source_sends() -> None:
    graph = """
nodes:
  say: {type: source.text, texts: [hi]%s}
  tts: {type: tts.espeak}
edges: [say -> tts]
"""
    [problem] = check_text(graph % "", "say.yaml")
    assert problem.message == "'tts' handles bot_text but receives only user_text"
    assert check_text(graph % ", role: bot", "say.yaml") == []


async def test_transcripts_are_final_by_default() -> None:
    out = await run_processor(TranscriptSource(transcripts=["hello world", "bye"], language="en"))
    assert out.down == [
        TranscriptFrame(text="hello world", language="en"),
        TranscriptFrame(text="bye", language="en"),
    ]


async def test_interim_transcripts_grow_word_by_word_before_the_final() -> None:
    out = await run_processor(TranscriptSource(transcripts=["what time is it"], interim=True))
    interim = [f.text for f in out.of(InterimTranscriptFrame)]
    assert interim == ["what", "what time", "what time is", "what time is it"]
    assert isinstance(out.down[-1], TranscriptFrame)
    assert out.transcripts == ["what time is it"]
    assert {type(f) for f in out.down} == {InterimTranscriptFrame, TranscriptFrame}
