"""file.input and file.output: formats, framing, pacing, validation; filtering, resampling and playout."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
import soundfile

from pipeline.cli import main
from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    InterruptionFrame,
    SpokenTextFrame,
    TextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
)
from pipeline.graph import Graph
from pipeline.observers import Observer
from pipeline.processor import Processor
from pipeline.registry import resolve
from pipeline.testing import Collector, Gap, WhenPushed, run_graph, run_processor, run_virtual
from tests.drivers import Gated
from tests.speech import librivox, read_wav
from transports.file import FileInput, FileOutput


def ramp(samples: int, channels: int = 1) -> bytes:
    """Distinct sample values, so any reordering, loss or duplication shows."""
    return (np.arange(samples * channels) % 30000).astype("<i2").tobytes()


def write_wav(path: Path, pcm: bytes, rate: int = 16000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


def wav_contents(path: Path) -> tuple[AudioFormat, bytes]:
    with wave.open(str(path), "rb") as wav:
        return AudioFormat(wav.getframerate(), wav.getnchannels()), wav.readframes(wav.getnframes())


def test_both_are_registered_node_types() -> None:
    assert resolve("file.input") is FileInput
    assert resolve("file.output") is FileOutput


# --- file.input ----------------------------------------------------------------------------------


async def test_a_wav_file_plays_in_whole_frames_with_the_last_one_padded(tmp_path: Path) -> None:
    pcm = ramp(16000 + 100)  # 1.00625 s: crosses read blocks, ends mid-frame
    source = FileInput(path=str(write_wav(tmp_path / "a.wav", pcm)))
    assert source.check() == [] and source.output_format(None) == AudioFormat(16000, 1)
    out = await run_processor(source)
    frames = out.of(AudioFrame)
    assert len(frames) == 51 and {len(f.pcm) for f in frames} == {640}
    assert out.audio == pcm + bytes(640 - 200)


async def test_a_real_recording_comes_out_sample_for_sample() -> None:
    samples, _ = read_wav(librivox("0880"))
    out = await run_processor(FileInput(path=str(librivox("0880"))))
    assert out.audio[: 2 * len(samples)] == samples.tobytes()
    assert not any(out.audio[2 * len(samples) :])


@pytest.mark.parametrize(("frame_ms", "rate"), [(10, 16000), (20, 48000), (30, 8000), (40, 44100)])
async def test_any_whole_sample_frame_size(tmp_path: Path, frame_ms: int, rate: int) -> None:
    pcm = ramp(rate // 2, channels=2)
    path = write_wav(tmp_path / "s.wav", pcm, rate=rate, channels=2)
    out = await run_processor(FileInput(path=str(path), frame_ms=frame_ms))
    frames = out.of(AudioFrame)
    assert {(f.num_samples, f.sample_rate, f.channels) for f in frames} == {
        (rate * frame_ms // 1000, rate, 2)
    }
    assert out.audio.startswith(pcm)


def test_a_frame_size_that_is_no_whole_number_of_samples_is_reported(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "odd.wav", bytes(2 * 2205), rate=22050)
    [problem] = FileInput(path=str(path), frame_ms=10).check()
    assert (problem.key, problem.message) == (
        "frame_ms",
        "frame_ms 10 is not a whole number of samples at 22050 Hz",
    )


async def test_flac_is_read_through_soundfile(tmp_path: Path) -> None:
    pcm = ramp(24000)
    path = tmp_path / "speech.flac"
    soundfile.write(path, np.frombuffer(pcm, dtype="<i2"), 24000, subtype="PCM_16")
    source = FileInput(path=str(path))
    assert source.output_format(None) == AudioFormat(24000, 1)
    out = await run_processor(source)
    assert out.audio == pcm  # lossless, and 0.5 s is whole frames


async def test_a_24_bit_wav_is_converted_to_16_bit(tmp_path: Path) -> None:
    values = np.array([0, 1000, -1000, 32767, -32768] * 64, dtype="<i2")
    path = tmp_path / "deep.wav"
    soundfile.write(path, values.astype(np.int32) << 16, 16000, subtype="PCM_24")
    out = await run_processor(FileInput(path=str(path), frame_ms=20))
    assert out.audio == values.tobytes()


async def test_raw_pcm_needs_and_uses_its_declared_format(tmp_path: Path) -> None:
    pcm = ramp(8000, channels=2)
    path = tmp_path / "call.pcm"
    path.write_bytes(pcm + b"\x01")  # a torn last sample is dropped
    [problem] = FileInput(name="mic", path=str(path)).check()
    assert (problem.node, problem.key) == ("mic", "sample_rate")
    assert "raw PCM" in problem.message and "sample_rate: 16000" in problem.fix
    source = FileInput(path=str(path), sample_rate=8000, channels=2, frame_ms=10)
    assert source.check() == [] and source.output_format(None) == AudioFormat(8000, 2)
    out = await run_processor(source)
    assert out.audio == pcm and len(out.of(AudioFrame)) == 100


async def test_the_format_is_detected_from_the_first_bytes_or_given(tmp_path: Path) -> None:
    pcm = ramp(1600)
    path = write_wav(tmp_path / "recording.audio", pcm)
    assert (await run_processor(FileInput(path=str(path)))).audio == pcm
    raw = tmp_path / "noheader.bin"
    raw.write_bytes(pcm)
    [problem] = FileInput(path=str(raw)).check()
    assert problem.key == "format" and "set format: raw (with sample_rate and channels)" in problem.fix
    out = await run_processor(FileInput(path=str(raw), format="raw", sample_rate=16000, channels=1))
    assert out.audio == pcm


def test_declared_rate_or_channels_must_match_the_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", bytes(640), rate=16000)
    problems = FileInput(path=str(path), sample_rate=48000, channels=2).check()
    assert [p.key for p in problems] == ["sample_rate", "channels"]
    assert "sample_rate is 48000 but" in problems[0].message


def test_bad_params_are_reported_together() -> None:
    with pytest.raises(ValidationError) as caught:
        FileInput(path="x.wav", leading_silence=-1, trailing_silence=-1, sample_rate=0, channels=0)
    assert [p.key for p in caught.value.problems] == [
        "leading_silence",
        "trailing_silence",
        "sample_rate",
        "channels",
    ]


async def test_leading_and_trailing_silence_are_whole_frames(tmp_path: Path) -> None:
    pcm = ramp(640)
    path = write_wav(tmp_path / "a.wav", pcm)
    out = await run_processor(FileInput(path=str(path), leading_silence=0.03, trailing_silence=0.5))
    assert out.audio == bytes(2 * 640) + pcm + bytes(2 * 8000)


def test_a_missing_file_fails_validate_with_a_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "call.yaml"
    config.write_text(
        dedent(f"""\
        nodes:
          mic: {{type: file.input, path: {tmp_path / "nope.wav"}}}
          out: {{type: file.output, path: {tmp_path / "out.wav"}}}
        edges:
          - mic -> out
        """)
    )
    code = main(["validate", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"call.yaml:2: node 'mic': audio file '{tmp_path / 'nope.wav'}' not found" in err
    assert "fix: check the path; relative paths start from the folder you run in" in err


def test_realtime_input_is_paced_like_a_microphone(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", ramp(16000))  # 1 s: two read blocks

    class PushTimes(Observer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_push(
            self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
        ) -> None:
            if source.name == "mic" and isinstance(frame, AudioFrame):
                self.times.append(asyncio.get_running_loop().time())

    async def scenario() -> tuple[float, list[float]]:
        times = PushTimes()
        source = FileInput(name="mic", path=str(path), realtime=True, trailing_silence=0.1)
        graph = Graph({"mic": source, "out": Collector()}, [("mic", "out")], observers=[times])
        await graph.start()  # on_start opens the file in a thread: the clock starts after it
        began = asyncio.get_running_loop().time()
        assert await graph.wait(timeout=5)
        await graph.stop()
        return began, times.times

    began, times = run_virtual(scenario())
    offsets = [t - began for t in times]
    assert len(offsets) == 55
    assert offsets == pytest.approx([0.02 * (i + 1) for i in range(55)], abs=0.005)


def test_stopping_early_ends_the_stream_cleanly(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", ramp(16000 * 10))

    async def scenario() -> list[str]:
        collector = Collector()
        graph = Graph({"mic": FileInput(path=str(path), realtime=True), "out": collector}, [("mic", "out")])
        await graph.start()
        await collector.wait_for(lambda _: len(collector.frames) > 30)
        await graph.stop()
        return [f.kind for f in collector.frames]

    kinds = run_virtual(scenario())
    assert kinds[-1] == "end" and 30 <= kinds.count("user_audio") < 500


# --- file.output ---------------------------------------------------------------------------------


def user(pcm: bytes, rate: int = 16000) -> AudioFrame:
    return UserAudioFrame(pcm=pcm, sample_rate=rate)


def bot(pcm: bytes, rate: int = 16000) -> BotAudioFrame:
    return BotAudioFrame(pcm=pcm, sample_rate=rate)


@pytest.mark.parametrize(
    ("audio", "written", "passed"),
    [("any", b"UUBB", b""), ("user", b"UU", b"BB"), ("bot", b"BB", b"UU")],
)
async def test_writes_the_chosen_audio_and_passes_the_rest(
    tmp_path: Path, audio: str, written: bytes, passed: bytes
) -> None:
    path = tmp_path / "out" / "call.wav"
    out = await run_processor(
        FileOutput(path=str(path), audio=audio), [user(b"UU"), bot(b"BB"), TextFrame(text="hi")]
    )
    assert wav_contents(path) == (AudioFormat(16000, 1), written)
    assert out.audio == passed and out.texts == ["hi"]


async def test_later_audio_is_resampled_to_the_first_frames_format(tmp_path: Path) -> None:
    first = user(ramp(320))
    t = np.arange(24000) / 24000  # 1 s of 300 Hz at 24 kHz, in 20 ms frames
    tone = np.rint(10000 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
    later = [bot(tone[i : i + 480].tobytes(), rate=24000) for i in range(0, 24000, 480)]
    path = tmp_path / "call.wav"
    await run_processor(FileOutput(path=str(path)), [first, *later])
    fmt, pcm = wav_contents(path)
    written = np.frombuffer(pcm, dtype="<i2")
    assert fmt == AudioFormat(16000, 1)
    assert len(written) == 320 + 16000  # the filter's held tail is flushed at the end
    resampled = written[320 + 400 : -400].astype(np.float64)  # away from the edges
    expected = 10000 * np.sin(2 * np.pi * 300 * (np.arange(400, 16000 - 400) / 16000))
    assert np.max(np.abs(resampled - expected)) < 100


async def test_bot_audio_is_reported_upstream_like_a_live_transport(tmp_path: Path) -> None:
    frames: list[Frame | Gap] = [
        TTSStartedFrame(),
        TTSTextFrame(text="Hello there."),
        bot(bytes(640)),
        bot(bytes(640)),
        TTSTextFrame(text="How are you?"),
        bot(bytes(640)),
        TTSStoppedFrame(),
    ]
    out = await run_processor(FileOutput(path=str(tmp_path / "o.wav")), frames)
    # Speaking frames are system frames: they overtake the spoken text queued beside them.
    assert [f.kind for f in out.up if f.system] == ["bot_started_speaking", "bot_stopped_speaking"]
    assert [f.text for f in out.up if isinstance(f, SpokenTextFrame)] == ["Hello there.", "How are you?"]
    assert out.kinds == ["tts_started", "tts_text", "tts_text", "tts_stopped"]


async def test_an_interruption_silences_the_bot_and_drops_unsaid_text(tmp_path: Path) -> None:
    tts = Gated(
        [TTSTextFrame(text="First."), bot(bytes(640)), TTSTextFrame(text="Never said.")],
        [InterruptionFrame(), TTSStoppedFrame()],
        name="tts",
    )
    opened = WhenPushed("tts", SpokenTextFrame, tts.gate.set)  # the reply is audibly under way
    output = FileOutput(name="speaker", path=str(tmp_path / "o.wav"), audio="bot")
    out = await run_graph(Graph({"tts": tts, "speaker": output}, [("tts", "speaker")], observers=[opened]))
    assert [type(f) for f in out.up if f.system] == [BotStartedSpeakingFrame, BotStoppedSpeakingFrame]
    assert [f.text for f in out.up if isinstance(f, SpokenTextFrame)] == ["First."]


async def test_a_path_that_is_a_folder_is_reported(tmp_path: Path) -> None:
    [problem] = FileOutput(path=str(tmp_path)).check()
    assert problem.key == "path" and "is a folder" in problem.message


async def test_file_input_to_file_output_copies_a_recording(tmp_path: Path) -> None:
    samples, rate = read_wav(librivox("0930"))
    copy = tmp_path / "copy.wav"
    graph = Graph(
        {"mic": FileInput(path=str(librivox("0930"))), "out": FileOutput(path=str(copy))}, [("mic", "out")]
    )
    await run_graph(graph)
    fmt, pcm = wav_contents(copy)
    assert fmt == AudioFormat(rate, 1) and pcm.startswith(samples.tobytes())
