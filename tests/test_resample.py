"""audio.resample: quality of the streamed conversion, format changes, pass-through, class kept."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import numpy as np
import pytest

from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import AudioFrame, BotAudioFrame, Direction, Frame, TextFrame
from pipeline.graph import Graph
from pipeline.processor import Processor, Source
from pipeline.registry import resolve
from processors.resample import Resampler
from tests.speech import librivox, read_wav


class Frames(Source):
    """Replays a fixed list of frames."""

    def __init__(self, frames: list[Frame], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.frames = frames

    async def generate(self) -> AsyncIterator[Frame]:
        for frame in self.frames:
            yield frame


async def run_chain(frames: list[Frame], *processors: Processor) -> list[Frame]:
    """Frames -> processors in a line; returns every data frame that left the last one."""
    nodes: dict[str, Processor] = {"src": Frames(frames)}
    nodes.update({f"p{i}": p for i, p in enumerate(processors)})
    names = list(nodes)
    graph = Graph(nodes, list(itertools.pairwise(names)))
    out: list[Frame] = []

    def collect(processor: Processor, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, AudioFrame | TextFrame):
            out.append(frame)

    graph.output_handler = collect
    await graph.run()
    return out


def sine(rate: int, seconds: float, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = np.rint(8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


def chunks(samples: np.ndarray, rate: int, cls: type[AudioFrame] = AudioFrame) -> list[Frame]:
    size = rate // 50  # 20 ms
    return [
        cls(pcm=samples[i : i + size].tobytes(), sample_rate=rate, channels=samples.shape[1])
        for i in range(0, len(samples), size)
    ]


def joined(frames: list[Frame]) -> np.ndarray:
    audio = [f for f in frames if isinstance(f, AudioFrame)]
    channels = audio[0].channels
    return np.frombuffer(b"".join(f.pcm for f in audio), dtype=np.int16).reshape(-1, channels)


def test_registered_as_audio_resample() -> None:
    assert resolve("audio.resample") is Resampler


def test_output_format_is_the_target() -> None:
    assert Resampler(sample_rate=16000).output_format(AudioFormat(48000, 2)) == AudioFormat(16000, 2)
    assert Resampler(sample_rate=16000, channels=1).output_format(AudioFormat(48000, 2)) == AudioFormat(16000)
    assert Resampler(sample_rate=16000).output_format(None) is None


def test_rejects_impossible_targets() -> None:
    with pytest.raises(ValidationError) as caught:
        Resampler(sample_rate=0, channels=0, name="rs")
    assert [(p.node, p.key) for p in caught.value.problems] == [("rs", "sample_rate"), ("rs", "channels")]


@pytest.mark.parametrize("quality", ["HQ", "QQ"])
async def test_round_trip_keeps_the_signal(quality: str) -> None:
    original = sine(16000, 1.0)
    out = await run_chain(
        chunks(original, 16000),
        Resampler(sample_rate=48000, quality=quality),
        Resampler(sample_rate=16000, quality=quality),
    )
    assert {(f.sample_rate, f.channels) for f in out if isinstance(f, AudioFrame)} == {(16000, 1)}
    result = joined(out)[:, 0].astype(np.float64)
    assert len(result) == len(original)  # the flushed tail completes the stream
    reference = original[:, 0].astype(np.float64)
    middle = slice(160, len(reference) - 160)  # the filter's run-in and run-out are not steady state
    noise = result[middle] - reference[middle]
    snr = 10 * np.log10(np.sum(reference[middle] ** 2) / max(np.sum(noise**2), 1e-9))  # exact: infinite
    assert snr >= 40
    # A glitch at a frame boundary would be a jump far steeper than the sine's own slope.
    steepest = np.abs(np.diff(reference)).max()
    assert np.abs(np.diff(result)).max() <= steepest * 1.1


async def test_follows_changes_of_rate_and_channels() -> None:
    frames = chunks(sine(16000, 0.2), 16000) + chunks(sine(48000, 0.2, channels=2), 48000)
    out = await run_chain(frames, Resampler(sample_rate=24000, channels=1))
    assert {(f.sample_rate, f.channels) for f in out if isinstance(f, AudioFrame)} == {(24000, 1)}
    total = sum(f.num_samples for f in out if isinstance(f, AudioFrame))
    assert total == pytest.approx(0.4 * 24000, abs=4)  # each segment's tail was flushed at the change


async def test_down_mixes_by_mean_and_up_mixes_by_duplication() -> None:
    left = np.full((320, 1), 1000, dtype=np.int16)
    stereo = np.hstack([left, left * 3])
    down = await run_chain(chunks(stereo, 16000), Resampler(sample_rate=16000, channels=1))
    assert set(joined(down)[:, 0].tolist()) == {2000}
    up = await run_chain(chunks(left, 16000), Resampler(sample_rate=16000, channels=2))
    assert joined(up).tolist() == [[1000, 1000]] * 320


async def test_passes_matching_audio_and_other_frames_through_untouched() -> None:
    frames = [*chunks(sine(16000, 0.06, channels=2), 16000), TextFrame(text="hi")]
    out = await run_chain(frames, Resampler(sample_rate=16000))
    assert len(out) == len(frames)
    assert all(a is b for a, b in zip(out, frames, strict=True))


async def test_keeps_the_frame_class() -> None:
    out = await run_chain(chunks(sine(24000, 0.1), 24000, BotAudioFrame), Resampler(sample_rate=16000))
    assert out
    assert all(type(f) is BotAudioFrame and f.sample_rate == 16000 for f in out)


@pytest.mark.parametrize("interrupted", [False, True])
async def test_stop_flushes_the_held_tail_unless_interrupted(interrupted: bool) -> None:
    resampler = Resampler(sample_rate=48000)
    pushed: list[Frame] = []

    async def capture(frame: Frame, direction: Direction = Direction.DOWNSTREAM) -> None:
        pushed.append(frame)

    resampler.push = capture  # type: ignore[method-assign]
    for frame in chunks(sine(16000, 0.1), 16000):
        await resampler.process(frame)
    if interrupted:
        await resampler.on_interrupt()
    held = len(pushed)
    await resampler.on_stop()
    assert (len(pushed) > held) is not interrupted


async def test_round_trip_of_real_speech_keeps_40_db() -> None:
    speech, rate = read_wav(librivox("0880"))
    original = speech[:, None]
    out = await run_chain(chunks(original, rate), Resampler(sample_rate=48000), Resampler(sample_rate=16000))
    result = joined(out)[:, 0].astype(np.float64)
    reference = original[:, 0].astype(np.float64)
    assert len(result) == len(reference)
    middle = slice(160, len(reference) - 160)
    noise = result[middle] - reference[middle]
    assert 10 * np.log10(np.sum(reference[middle] ** 2) / np.sum(noise**2)) >= 40
