"""configs/vad-split.yaml end to end, and the ``file.utterances`` sink it ends in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    Frame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.registry import resolve
from pipeline.sources import SilenceSource
from pipeline.testing import run_graph, run_processor
from processors.vad.webrtc import WebRTCVad
from tests.speech import librivox, read_wav, silence, write_wav
from transports.utterance_files import NoSpeechError, UtteranceFiles

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "vad-split.yaml"
RATE = 16000


def test_vad_split_writes_one_file_per_utterance(tmp_path: Path) -> None:
    first, rate = read_wav(librivox("0920"))
    second, _ = read_wav(librivox("0880"))
    samples = np.concatenate([first, silence(1.0), second])
    wav = write_wav(tmp_path / "two.wav", samples, rate)
    out = tmp_path / "parts"
    env = {**os.environ, "INPUT": str(wav), "OUTPUT": str(out)}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(CONFIG)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    files = sorted(out.glob("*.wav"))
    assert [f.name for f in files] == ["utterance-001.wav", "utterance-002.wav"]
    durations = [len(read_wav(f)[0]) / rate for f in files]
    clips = [len(first) / rate, len(second) / rate]
    assert durations == pytest.approx(clips, abs=0.3), f"files {durations} s, clips {clips} s"
    # Each file is a stretch of the input, untouched (the input is already at the VAD's 16 kHz).
    for path in files:
        cut = read_wav(path)[0]
        assert any(np.array_equal(samples[i : i + len(cut)], cut) for i in np.flatnonzero(samples == cut[0]))
    lines = run.stdout.splitlines()
    assert sum(str(path) in line for path in files for line in lines) == 2
    assert "2 utterances" in run.stdout


# --- file.utterances on scripted frames ----------------------------------------------------------


def ramp_frames(seconds: float) -> list[AudioFrame]:
    """20 ms frames of a 1 kHz ramp: sample i holds i, so a file's samples say where they came from."""
    values = np.arange(round(seconds * 1000), dtype=np.int16)
    return [
        UserAudioFrame(pcm=values[i : i + 20].tobytes(), sample_rate=1000) for i in range(0, len(values), 20)
    ]


def script(events: dict[int, Frame], seconds: float) -> list[Frame]:
    """Ramp frames with speaking frames inserted before the frame of each given index."""
    out: list[Frame] = []
    for index, frame in enumerate(ramp_frames(seconds)):
        if index in events:
            out.append(events[index])
        out.append(frame)
    return out


async def test_files_hold_each_utterance_with_its_rolls_and_short_ones_are_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = script(
        {
            60: UserStartedSpeakingFrame(stream_time=1.0),  # announced 0.2 s late, as a VAD would
            110: UserStoppedSpeakingFrame(stream_time=1.6),
            150: UserStartedSpeakingFrame(stream_time=2.9),  # 0.1 s of speech: a click
            170: UserStoppedSpeakingFrame(stream_time=3.0),
            210: UserStartedSpeakingFrame(stream_time=4.0),  # still speaking when the stream ends
        },
        5.0,
    )
    sink = UtteranceFiles(directory=str(tmp_path / "new"), prefix="part", pre_roll=0.3, post_roll=0.1)
    await run_processor(sink, frames)
    files = sorted((tmp_path / "new").glob("*.wav"))
    assert [f.name for f in files] == ["part-001.wav", "part-002.wav"]
    first, rate = read_wav(files[0])
    assert rate == 1000
    assert (first[0], first[-1] + 1) == (700, 1700)
    second, _ = read_wav(files[1])
    assert (second[0], second[-1] + 1) == (3700, 5000)
    assert sink.dropped == 1
    assert [t for w in sink.written for t in (w.start, w.end)] == pytest.approx([0.7, 1.7, 3.7, 5.0])
    printed = capsys.readouterr().out
    assert f"{files[0]}" in printed and f"{files[1]}" in printed
    assert "0.70 -     1.70 s    1.00 s" in printed
    assert (
        "2 utterances, 2.30 s written, from 5.00 s of audio; 1 shorter than min_duration dropped" in printed
    )


async def test_without_a_vad_nothing_is_written_and_the_failure_says_why(tmp_path: Path) -> None:
    with pytest.raises(GraphFailedError, match=r"put a vad\.silero or vad\.webrtc node in front") as caught:
        await run_processor(UtteranceFiles(directory=str(tmp_path)), ramp_frames(1.0))
    assert isinstance(caught.value.__cause__, NoSpeechError)
    assert list(tmp_path.glob("*.wav")) == []


async def test_bot_audio_is_not_cut(tmp_path: Path) -> None:
    bot = [BotAudioFrame(pcm=f.pcm, sample_rate=f.sample_rate) for f in ramp_frames(1.0)]
    frames: list[Frame] = [UserStartedSpeakingFrame(stream_time=0.0), *bot]
    with pytest.raises(GraphFailedError, match=r"no speech found in 0\.00 s of audio"):
        await run_processor(UtteranceFiles(directory=str(tmp_path)), frames)
    assert list(tmp_path.glob("*.wav")) == []


async def test_a_vad_that_finds_no_speech_fails_the_graph_saying_so(tmp_path: Path) -> None:
    graph = Graph(
        {
            "input": SilenceSource(duration=1.0),
            "vad": WebRTCVad(),
            "utterances": UtteranceFiles(directory=str(tmp_path)),
        },
        [("input", "vad"), ("vad", "utterances")],
    )
    with pytest.raises(GraphFailedError) as caught:
        await run_graph(graph)
    message = str(caught.value)
    assert "no speech found in 1.00 s of audio: nothing written" in message
    assert "put a vad" not in message  # there is one


async def test_utterances_all_shorter_than_min_duration_are_named_as_the_reason(tmp_path: Path) -> None:
    frames = script(
        {10: UserStartedSpeakingFrame(stream_time=0.2), 15: UserStoppedSpeakingFrame(stream_time=0.3)}, 1
    )
    with pytest.raises(GraphFailedError, match=r"the 1 utterance\(s\) found .* shorter than min_duration"):
        await run_processor(UtteranceFiles(directory=str(tmp_path)), frames)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_vad_split_on_silence_or_noise_exits_1_saying_no_speech_was_found(
    tmp_path: Path, noise: float
) -> None:
    samples = np.random.default_rng(0).uniform(-noise, noise, 2 * RATE) * 32767
    wav = write_wav(tmp_path / "quiet.wav", samples.astype(np.int16), RATE)
    env = {**os.environ, "INPUT": str(wav), "OUTPUT": str(tmp_path / "parts")}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(CONFIG)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "no speech found in 3.00 s of audio: nothing written" in run.stderr
    assert "put a vad" not in run.stderr + run.stdout
    assert list((tmp_path / "parts").glob("*.wav")) == []


def test_registered_and_checks_its_directory(tmp_path: Path) -> None:
    assert resolve("file.utterances") is UtteranceFiles
    taken = tmp_path / "file"
    taken.write_text("not a folder")
    (problem,) = UtteranceFiles(directory=str(taken)).check()
    assert problem.key == "directory"
    assert UtteranceFiles(directory=str(tmp_path / "missing")).check() == []
