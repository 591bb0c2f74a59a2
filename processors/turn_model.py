"""Smart Turn v3.2: a model that hears whether an utterance is finished (BSD-2-Clause, by Daily).

A Whisper-tiny encoder with a classifier head, int8, 8.7 MB: it takes the last 8 s of the user's
audio at 16 kHz as Whisper log-mel features and gives the probability that the speaker is done. It
hears intonation and unfinished phrases ("I'd like to ... "), which a silence timer cannot.

The ONNX file ships inside the ``pipecat-ai`` wheel, installed with ``--no-deps`` purely to carry it:
it is found on disk without importing that package. Features are computed here with numpy (the
Whisper recipe: waveform normalised to zero mean and unit variance, 25 ms Hann windows every 10 ms,
80 Slaney mel bands, log10 clamped to 8 decades below the peak). One shared ``InferenceSession`` with
one thread serves every node in the process; a decision took 55-100 ms of one core on this 2-core
machine (features ~14 ms), so callers run it in a thread.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from processors.models import shared_model

__all__ = ["MODEL_FILE", "SAMPLE_RATE", "WINDOW_SECONDS", "end_of_turn_probability", "log_mel", "model_path"]

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
"""The model hears the last 8 s of the turn; shorter audio is padded with silence in front."""
_N_FFT = 400
_HOP = 160
_N_MELS = 80


def model_path() -> Path | None:
    """The Smart Turn ONNX file inside the installed ``pipecat-ai`` wheel, or None (not installed).

    The package's ``__init__`` is not run: only its location on disk is looked up.
    """
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "audio" / "turn" / "smart_turn" / "data" / MODEL_FILE
        if path.is_file():
            return path
    return None


def _mel_scale(hertz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * hertz / 200.0
    log_region = hertz >= 1000.0
    mels[log_region] = 15.0 + np.log(hertz[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _hertz(mels: np.ndarray) -> np.ndarray:
    """The inverse of ``_mel_scale``."""
    hertz = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    hertz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return hertz


@cache
def _mel_filters() -> np.ndarray:
    """(80, 201) triangular filters, area-normalised, over 0..8 kHz (Whisper's filterbank)."""
    edges = _hertz(np.linspace(0.0, _mel_scale(np.array([SAMPLE_RATE / 2.0]))[0], _N_MELS + 2))
    bins = np.linspace(0, SAMPLE_RATE // 2, _N_FFT // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (edges[2:] - edges[:-2]))
    filterbank: np.ndarray = np.ascontiguousarray(filters.T)
    return filterbank


@cache
def _window() -> np.ndarray:
    return np.hanning(_N_FFT + 1)[:-1]  # periodic Hann


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel features, (80, 800) float32, of 16 kHz float audio (the last 8 s, padded in
    front with silence when shorter)."""
    samples = SAMPLE_RATE * WINDOW_SECONDS
    x = np.asarray(audio, dtype=np.float32)[-samples:]
    x = np.pad(x, (samples - x.size, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _window(), axis=-1)) ** 2  # (801, 201)
    spectrum = np.log10(np.maximum(_mel_filters() @ power.T, 1e-10))[:, :-1]
    spectrum = np.maximum(spectrum, spectrum.max() - 8.0)
    features: np.ndarray = ((spectrum + 4.0) / 4.0).astype(np.float32)
    return features


def _load_session(path: Path) -> Any:
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # 2 cores are shared with STT, LLM and TTS
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def shared_session(path: Path | None = None) -> Any:
    """The process-wide session of the model (blocking on first use: ~0.1 s; call it from a thread)."""
    path = path or model_path()
    if path is None:
        raise FileNotFoundError(f"{MODEL_FILE} not found: pip install --no-deps pipecat-ai")
    return shared_model(("smart-turn", str(path)), lambda: _load_session(path)).model


def end_of_turn_probability(audio: np.ndarray, session: Any | None = None) -> float:
    """How likely the speaker has finished, 0..1, from the turn's 16 kHz float audio (-1..1) up to
    now. Blocking (tens of ms of one core): run it in a thread."""
    session = session if session is not None else shared_session()
    (probability,) = session.run(None, {"input_features": log_mel(audio)[None]})
    return float(np.asarray(probability).reshape(-1)[0])
