"""Smart Turn v3.2: a model that hears whether an utterance is finished (BSD-2-Clause, by Daily).

A Whisper-tiny encoder with a classifier head, int8, 8.7 MB: it takes the last 8 s of the user's
audio at 16 kHz as Whisper log-mel features and gives the probability that the speaker is done. It
hears intonation and unfinished phrases ("I'd like to ... "), which a silence timer cannot.

The ONNX file ships inside the ``pipecat-ai`` wheel, installed with ``--no-deps`` purely to carry it:
it is found on disk without importing that package. Features are computed here with numpy (the
Whisper recipe: waveform normalised to zero mean and unit variance, 25 ms Hann windows every 10 ms,
80 Slaney mel bands, log10 clamped to 8 decades below the peak), either at once (``log_mel``) or as
the audio arrives (``LogMelStream``: at a pause only its last step, ~1-2 ms, and the model remain).
One shared ``InferenceSession`` with one thread serves every node in the process; the model takes
~55 ms of one core per decision (a fixed 8 s input: shorter turns cost the same), ~23 ms when made to
hear the last 4 s (``windowed_model``), so callers run it in a thread. Two intra-op threads or other
graph optimisation levels did not help on this 2-core machine.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from processors.models import onnx_session, shared_model

__all__ = [
    "HEARD_SILENCE",
    "MODEL_FILE",
    "SAMPLE_RATE",
    "WINDOW_SECONDS",
    "LogMelStream",
    "end_of_turn_probability",
    "log_mel",
    "model_path",
    "probability",
]

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
"""The model hears the last 8 s of the turn; shorter audio is padded with silence in front."""
HEARD_SILENCE = 0.2
"""Seconds of the silence after the speech that the model hears (it was trained on turns that end so)."""
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


class LogMelStream:
    """``log_mel`` computed as the audio arrives, so that only the model remains to run at a pause.

    Whisper's features are a short-time Fourier transform of the window normalised to zero mean and
    unit variance. The transform is linear, so each 25 ms frame's share of the mel energies is kept
    un-normalised (``|X|^2`` and ``Re(X W*)`` through the mel filters, ``W`` the window's own
    transform) and the window's mean and variance are applied at the end: ``|X - mW|^2 / var``.
    The three frames that touch the window's edges (reflection padding) are computed at the end.
    Feed it the turn's audio from its start (what came before counts as silence, as in ``log_mel``);
    ``features()`` then equals ``log_mel`` of that audio up to a 10 ms boundary (within float error).
    """

    _KEEP = SAMPLE_RATE * WINDOW_SECONDS + _N_FFT  # samples kept: the window and a frame's margin

    def __init__(self) -> None:
        self._buffer = np.zeros(2 * self._KEEP)  # the turn's last samples, in _buffer[:_size]
        self._size = 0
        self._offset = 0  # turn sample index of _buffer[0]
        self._parts = np.zeros((0, 2, _N_MELS))  # per frame: mel of |X|^2 and of Re(X W*)
        self._first = -1  # turn frame index j of self._parts[0]; frame j spans [160j - 200, 160j + 200)
        self._count = 0  # rows of self._parts in use

    @property
    def samples(self) -> int:
        """Samples received since the turn began."""
        return self._offset + self._size

    @property
    def _audio(self) -> np.ndarray:
        return self._buffer[: self._size]

    def add(self, audio: np.ndarray) -> None:
        """Append 16 kHz float audio and compute every frame it completes."""
        audio = np.asarray(audio, np.float64).reshape(-1)
        step = self._KEEP // 2
        for start in range(0, audio.size, step):
            self._add(audio[start : start + step])

    def _add(self, audio: np.ndarray) -> None:
        if self._size + audio.size > self._buffer.size:  # keep the last _KEEP samples, at the front
            drop = self._size + audio.size - self._KEEP
            kept = self._size - drop
            self._buffer[:kept] = self._buffer[drop : self._size]
            self._size, self._offset = kept, self._offset + drop
            stale = max(0, min(self._count, -(-(self._offset + _N_FFT // 2) // _HOP) - self._first))
            self._parts[: self._count - stale] = self._parts[stale : self._count]
            self._first, self._count = self._first + stale, self._count - stale
        self._buffer[self._size : self._size + audio.size] = audio
        self._size += audio.size
        first = self._first + self._count
        last = (self.samples - _N_FFT // 2) // _HOP
        if last < first:
            return
        new = self._frame_parts(first, last)
        if self._count + len(new) > len(self._parts):
            grown = np.zeros((max(2 * len(self._parts), self._count + len(new), 64), 2, _N_MELS))
            grown[: self._count] = self._parts[: self._count]
            self._parts = grown
        self._parts[self._count : self._count + len(new)] = new
        self._count += len(new)

    def _frame_parts(self, first: int, last: int) -> np.ndarray:
        lo = first * _HOP - _N_FFT // 2 - self._offset
        segment = self._audio[max(0, lo) : last * _HOP + _N_FFT // 2 - self._offset]
        if lo < 0:  # before the turn began: silence
            segment = np.concatenate([np.zeros(-lo), segment])
        frames = np.lib.stride_tricks.sliding_window_view(segment, _N_FFT)[::_HOP]
        return _parts(frames)

    def copy(self) -> LogMelStream:
        """A read-only copy to compute ``features`` from in a thread while the original takes more audio."""
        twin = LogMelStream.__new__(LogMelStream)
        twin._buffer, twin._size, twin._offset = self._buffer[: self._size].copy(), self._size, self._offset
        twin._parts, twin._first, twin._count = self._parts[: self._count].copy(), self._first, self._count
        return twin

    def features(self, end: int | None = None) -> np.ndarray:
        """(80, 800) float32 features of the 8 s ending at turn sample ``end`` (default: all received),
        rounded down to a 10 ms boundary."""
        end = self.samples if end is None else min(end, self.samples)
        end -= end % _HOP
        samples, count = SAMPLE_RATE * WINDOW_SECONDS, SAMPLE_RATE * WINDOW_SECONDS // _HOP
        start = end - samples  # turn sample of the window's first sample (< 0: silence before the turn)
        held = self._audio[max(0, start - self._offset) : end - self._offset]
        mean = held.sum() / samples
        var = (held @ held) / samples - mean * mean
        parts = np.zeros((count, 2, _N_MELS))
        first = start // _HOP - self._first  # row of self._parts for the window's frame 0
        lo, hi = max(0, first), min(self._count, first + count)
        if hi > lo:
            parts[lo - first : hi - first] = self._parts[lo:hi]
        # Reflection padding makes the frames at the window's edges differ from the turn's frames.
        edge = 3 * _N_FFT // 2  # the window's last (or first) samples that its edge frames see
        tail = np.pad(held[-edge:], (edge - min(edge, held.size), 0))
        tail = np.pad(tail, (0, _N_FFT // 2), mode="reflect")
        last = (count - 1) * _HOP - _N_FFT // 2 - (samples - edge)  # frame 799's start within tail
        parts[-1] = _parts(tail[None, last : last + _N_FFT])[0]
        if start >= 0:
            head = np.pad(held[:edge], (_N_FFT // 2, 0), mode="reflect")
            parts[:2] = _parts(np.stack([head[:_N_FFT], head[_HOP : _HOP + _N_FFT]]))
        mel = (parts[:, 0] - 2.0 * mean * parts[:, 1] + mean * mean * _window_mel()) / (var + 1e-7)
        spectrum = np.log10(np.maximum(mel, 1e-10)).T
        spectrum = np.maximum(spectrum, spectrum.max() - 8.0)
        features: np.ndarray = ((spectrum + 4.0) / 4.0).astype(np.float32)
        return features


def _parts(frames: np.ndarray) -> np.ndarray:
    """(n, 2, 80): mel filters applied to |X|^2 and to Re(X W*) of each (n, 400) frame's spectrum X."""
    spectra = np.fft.rfft(frames * _window(), axis=-1)
    window = np.fft.rfft(_window())
    energy = np.abs(spectra) ** 2
    cross = (spectra * np.conj(window)).real
    return np.stack([energy @ _mel_filters().T, cross @ _mel_filters().T], axis=1)


@cache
def _window_mel() -> np.ndarray:
    """The mel energies of the window itself: what a constant offset adds to a frame."""
    mel: np.ndarray = _mel_filters() @ (np.abs(np.fft.rfft(_window())) ** 2)
    return mel


def shared_session(path: Path | None = None, window_secs: int = WINDOW_SECONDS) -> Any:
    """The process-wide session of the model hearing the last ``window_secs`` (blocking on first use:
    ~0.1 s, more to derive a shorter window's model the first time; call it from a thread)."""
    path = path or model_path()
    if path is None:
        raise FileNotFoundError(f"{MODEL_FILE} not found: pip install --no-deps pipecat-ai")
    if window_secs != WINDOW_SECONDS:
        path = windowed_model(path, window_secs)
    # one thread: 2 cores are shared with STT, LLM and TTS
    return shared_model(("smart-turn", str(path)), lambda: onnx_session(path)).model


def windowed_model(path: Path, seconds: int) -> Path:
    """The model made to hear only the last ``seconds`` of the 8 s (a file derived once and cached).

    The encoder's cost grows with its input, so a 4 s window costs about a quarter of the 8 s one; on
    the turn set its accuracy barely moves (``python -m benchmarks.turns --window 4``). The
    derivation keeps every weight: the input is ``seconds * 100`` frames (the last of the 8 s
    features), the encoder's positions are the last ``seconds * 50`` of its table (where the speech
    sat when shorter turns were padded in front), and the attention reshapes follow. Needs the
    ``onnx`` package.
    """
    if not 1 <= seconds < WINDOW_SECONDS:
        raise ValueError(f"window_secs must be 1..{WINDOW_SECONDS}, not {seconds}")
    from processors.stt.models import cache_root

    target = cache_root() / "smart-turn" / f"{path.stem}-{path.stat().st_size}-last{seconds}s.onnx"
    if target.is_file():
        return target
    import onnx  # type: ignore[import-not-found,unused-ignore]
    from onnx import numpy_helper  # type: ignore[import-not-found,unused-ignore]

    model = onnx.load(str(path))
    graph = model.graph
    graph.input[0].type.tensor_type.shape.dim[2].dim_value = seconds * 100
    positions = seconds * 50
    for index, tensor in enumerate(graph.initializer):
        value = numpy_helper.to_array(tensor)
        if tensor.name.endswith("embed_positions.weight"):
            value = np.ascontiguousarray(value[-positions:])
        elif value.shape == (1,) and value.dtype.kind == "i" and value[0] == WINDOW_SECONDS * 50:
            value = np.array([positions], value.dtype)  # the sequence length in the reshapes
        else:
            continue
        graph.initializer[index].CopyFrom(numpy_helper.from_array(value, tensor.name))
    del graph.value_info[:]  # shapes inferred for 8 s
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    onnx.save(model, str(partial))
    partial.replace(target)  # whole or not at all, whoever derives it first
    return target


def probability(features: np.ndarray, session: Any | None = None) -> float:
    """How likely the speaker has finished, 0..1, from (80, 800) features (``log_mel`` or
    ``LogMelStream.features``), of which a shorter window's model hears the last frames. Blocking
    (tens of ms of one core): run it in a thread."""
    session = session if session is not None else shared_session()
    frames = session.get_inputs()[0].shape[2]
    (result,) = session.run(None, {"input_features": np.ascontiguousarray(features[None, :, -frames:])})
    return float(np.asarray(result).reshape(-1)[0])


def end_of_turn_probability(audio: np.ndarray, session: Any | None = None) -> float:
    """How likely the speaker has finished, 0..1, from the turn's 16 kHz float audio (-1..1) up to
    now. Blocking: run it in a thread."""
    return probability(log_mel(audio), session)
