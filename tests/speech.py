"""Real speech for tests: LibriVox clips from Debian's pocketsphinx-testdata, and espeak-ng sentences.

Nothing large is committed: ``./setup.sh`` installs both packages. A missing package is a test failure
that says what to install, never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import soxr

from pipeline.frames import Frame, UserAudioFrame

TESTDATA = Path("/usr/share/pocketsphinx/test/data")
_LIBRIVOX = TESTDATA / "librivox"

LIBRIVOX: dict[str, str] = {
    "sense_and_sensibility_01_austen_64kb-0870.wav": (
        "and mister john dashwood had then leisure to consider how much there might be prudently "
        "in his power to do for them"
    ),
    "sense_and_sensibility_01_austen_64kb-0880.wav": "he was not an ill disposed young man",
    "sense_and_sensibility_01_austen_64kb-0890.wav": (
        "unless to be rather cold hearted and rather selfish is to be ill disposed"
    ),
    "sense_and_sensibility_01_austen_64kb-0920.wav": (
        "had he married a more a amiable woman he might have been made still more respectable than he was"
    ),
    "sense_and_sensibility_01_austen_64kb-0930.wav": "he might even have been made amiable himself",
}
"""LibriVox clip file name -> reference transcript (16 kHz mono)."""


class MissingTestAudio(RuntimeError):
    """A Debian package that provides test audio is not installed."""


def librivox(name: str) -> Path:
    """Path of one LibriVox clip (a key of ``LIBRIVOX`` or a unique fragment such as ``"0880"``)."""
    matches = [key for key in LIBRIVOX if name in key]
    if len(matches) != 1:
        raise KeyError(f"no single LibriVox clip matches {name!r}")
    path = _LIBRIVOX / matches[0]
    if not path.exists():
        raise MissingTestAudio(f"{path} is missing: run ./setup.sh (apt-get install pocketsphinx-testdata)")
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the sample rate of a 16-bit WAV file."""
    with wave.open(str(path), "rb") as file:
        rate, channels = file.getframerate(), file.getnchannels()
        samples = np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples, rate


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write mono int16 ``samples`` as a WAV file."""
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(np.ascontiguousarray(samples, dtype=np.int16).tobytes())
    return path


def espeak(text: str, path: Path, rate: int = 16000, voice: str = "en-us") -> Path:
    """Synthesise ``text`` with espeak-ng into a mono WAV at ``rate``."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise MissingTestAudio("espeak-ng is missing: run ./setup.sh (apt-get install espeak-ng)")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run([binary, "-v", voice, "-w", str(raw), text], check=True, timeout=30)
    samples, native = read_wav(raw)
    raw.unlink()
    if native != rate:
        samples = soxr.resample(samples, native, rate).astype(np.int16)
    return write_wav(path, samples, rate)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    """``seconds`` of digital silence."""
    return np.zeros(round(seconds * rate), dtype=np.int16)


def tone(seconds: float, amplitude: float = 0.3, rate: int = 16000) -> np.ndarray:
    """``seconds`` of a 440 Hz sine: loud enough to count as voiced for the recogniser fakes."""
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype(np.int16)


def audio_frames(*parts: np.ndarray, frame_ms: int = 20, rate: int = 16000) -> list[Frame]:
    """``parts`` joined and cut into mono ``AudioFrame``s of ``frame_ms`` (the last may be shorter)."""
    pcm = np.concatenate(parts).astype("<i2").tobytes()
    size = rate * 2 * frame_ms // 1000
    return [UserAudioFrame(pcm=pcm[i : i + size], sample_rate=rate) for i in range(0, len(pcm), size)]


def speech_regions(samples: np.ndarray, rate: int, threshold_db: float = -35.0) -> tuple[float, float]:
    """(first, last) time in seconds where a clean clip's 10 ms energy rises above ``threshold_db``.

    Used to derive ground-truth speech boundaries from the clean recordings themselves.
    """
    hop = rate // 100
    frames = samples[: len(samples) // hop * hop].astype(np.float64).reshape(-1, hop)
    level = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) / 32768 + 1e-12)
    loud = np.flatnonzero(level > threshold_db)
    if not len(loud):
        raise ValueError("no speech found")
    return loud[0] / 100, (loud[-1] + 1) / 100
