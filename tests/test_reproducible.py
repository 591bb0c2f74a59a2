"""Same input, same config, same output: a run that is not real time is reproducible.

Read speech at 44.1 kHz is resampled, cut by Silero VAD and transcribed by Whisper as fast as they
go, in separate processes, and every byte of audio and text that comes out must match. (libsoxr
dithers integer output from a differently seeded generator in each process, so the same file gave
different audio, cuts and transcripts from run to run.)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import soxr

from tests.speech import librivox, read_wav, write_wav

CONFIG = """
name: reproducible
settings: {auto_resample: true}
nodes:
  input: {type: file.input, path: "%(input)s", realtime: false}
  vad: {type: vad.silero}
  stt: {type: stt.whisper}
  cuts: {type: file.utterances, directory: "%(output)s"}
  out: {type: debug.print, kinds: [transcript]}
edges:
  - input -> vad -> stt -> out
  - vad -> cuts
"""


def _speech_file(folder: Path) -> Path:
    clips = [read_wav(librivox(name))[0] for name in ("0870", "0880", "0920", "0930", "0890", "0870")]
    joined = np.concatenate(clips).astype(np.float32)
    resampled = soxr.resample(joined, 16000, 44100)  # float in, float out: no dither
    return write_wav(folder / "speech-44k.wav", np.clip(np.rint(resampled), -32768, 32767), 44100)


def _run(config: Path, output: Path) -> tuple[str, dict[str, str]]:
    """The transcripts printed, and a digest of each utterance file written."""
    printed = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(config), "--set", f"cuts.directory={output}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.replace(str(output), "<out>")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(output.glob("*.wav"))}
    return printed, files


def test_three_runs_of_a_file_give_the_same_audio_cuts_and_transcripts(tmp_path: Path) -> None:
    config = tmp_path / "reproducible.yaml"
    config.write_text(CONFIG % {"input": _speech_file(tmp_path), "output": tmp_path / "cuts"})
    first, *others = [_run(config, tmp_path / f"run{i}") for i in range(3)]
    printed, files = first
    assert "dashwood" in printed.lower() and files
    for other in others:
        assert other == first
