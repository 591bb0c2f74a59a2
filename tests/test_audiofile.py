"""pipeline.audiofile: one reader for file.input, file.turns and source.wav — formats, reasons, truncation."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.audiofile import SUPPORTED, AudioFileError, open_audio, read_audio
from pipeline.formats import AudioFormat
from pipeline.frames import AudioFrame
from pipeline.processor import Processor
from pipeline.sources import WavSource
from pipeline.testing import run_processor
from transports.file import FileInput
from transports.file_turns import FileTurns

RATE = 16000
TONE = np.rint(12000 * np.sin(2 * np.pi * 440 * np.arange(RATE // 2) / RATE)).astype(np.int16)


def encode(path: Path, subtype: str | None = None, fmt: str | None = None) -> Path:
    """Half a second of a 440 Hz tone in the given libsndfile encoding."""
    soundfile.write(path, TONE.astype(np.float32) / 32768, RATE, subtype=subtype, format=fmt)
    return path


FORMATS = {
    "pcm24.wav": ("PCM_24", None, 1),
    "float.wav": ("FLOAT", None, 1),
    "ulaw.wav": ("ULAW", None, 400),  # 8-bit logarithmic: coarse steps near full scale
    "pcm8.wav": ("PCM_U8", None, 256),  # steps of 256
    "tone.flac": ("PCM_16", None, 1),
    "tone.mp3": (None, "MP3", 3000),  # lossy: the same tone, not the same samples
}


def nodes(path: Path) -> list[Processor]:
    return [
        FileInput(path=str(path)),
        FileTurns(paths=[str(path)], pause=0.0, wait_for_reply=False),
        WavSource(path=str(path)),
    ]


@pytest.mark.parametrize("name", FORMATS)
async def test_every_file_node_plays_every_supported_format(tmp_path: Path, name: str) -> None:
    subtype, fmt, tolerance = FORMATS[name]
    path = encode(tmp_path / name, subtype, fmt)
    for node in nodes(path):
        assert node.check() == [], type(node).__name__
        assert node.output_format(None) == AudioFormat(RATE, 1)
        out = await run_processor(node)
        played = np.frombuffer(out.audio, dtype="<i2")
        assert {f.sample_rate for f in out.of(AudioFrame)} == {RATE}
        if fmt == "MP3":  # the decoder's delay shifts the tone: compare its level, not its samples
            assert np.sqrt(np.mean(played.astype(float) ** 2)) == pytest.approx(12000 / np.sqrt(2), rel=0.1)
        else:
            assert np.max(np.abs(played[: len(TONE)].astype(int) - TONE)) <= tolerance, type(node).__name__


def test_sox_written_files_read_too(tmp_path: Path) -> None:
    path = tmp_path / "sox24.wav"
    command = ["sox", "-n", "-r", "8000", "-b", "24", "-c", "2", str(path), "synth", "0.1", "sine", "300"]
    subprocess.run(command, check=True, timeout=30)
    fmt, pcm = read_audio(path)
    assert fmt == AudioFormat(8000, 2) and len(pcm) == 800 * 2 * 2


@pytest.mark.parametrize(
    ("size", "reason", "fix"),
    [
        (0, "is empty (0 bytes)", "a file with audio in it"),
        (30, "ends after 30 bytes, inside its WAV header, before any audio", "incomplete"),
    ],
)
def test_an_empty_or_cut_off_file_gets_a_reason(tmp_path: Path, size: int, reason: str, fix: str) -> None:
    whole = encode(tmp_path / "whole.wav", "PCM_24").read_bytes()
    path = tmp_path / "short.wav"
    path.write_bytes(whole[:size])
    for node in nodes(path):
        [problem] = node.check()
        assert reason in problem.message and fix in problem.fix, (type(node).__name__, problem)
        assert "()" not in problem.message and "ffmpeg" not in str(problem)


def test_an_unknown_format_names_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("shopping list: eggs, milk")
    with pytest.raises(AudioFileError) as caught:
        open_audio(path)
    assert "not one Voxgraph reads" in str(caught.value) and caught.value.fix.endswith(SUPPORTED)
    [problem] = FileInput(path=str(path)).check()
    assert problem.key == "format" and "set format: raw" in problem.fix and "ffmpeg" not in problem.fix


async def test_a_header_claiming_more_than_the_file_holds_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for subtype in ("PCM_16", "PCM_24"):  # the standard library's path and libsndfile's
        whole = encode(tmp_path / f"{subtype}.wav", subtype).read_bytes()
        path = tmp_path / f"cut-{subtype}.wav"
        path.write_bytes(whole[: len(whole) // 2])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.audiofile"):
            out = await run_processor(FileInput(path=str(path), frame_ms=10))
        assert len(out.audio) // 2 == pytest.approx(len(TONE) // 2, abs=160)
        [record] = caplog.records
        assert "header claims 0.50 s of audio but the file holds only 0.25 s" in record.getMessage()


def test_a_complete_file_is_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = encode(tmp_path / "whole.wav", "PCM_16")
    with caplog.at_level(logging.WARNING, logger="pipeline.audiofile"):
        _, pcm = read_audio(path)
    assert pcm == TONE.tobytes() and caplog.records == []


def test_without_soundfile_16_bit_wav_still_reads_and_other_files_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if the offline extra were not installed
    plain, deep = encode(tmp_path / "plain.wav", "PCM_16"), encode(tmp_path / "deep.wav", "PCM_24")
    assert read_audio(plain)[1] == TONE.tobytes()
    with pytest.raises(AudioFileError) as caught:
        open_audio(deep)
    assert "is not 16-bit PCM WAV (24-bit); reading it needs the soundfile package" in str(caught.value)
    assert caught.value.fix.startswith("pip install soundfile") and SUPPORTED in caught.value.fix
