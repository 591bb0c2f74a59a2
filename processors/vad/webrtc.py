"""``vad.webrtc``: the WebRTC voice activity detector (a GMM on band energies), from ``webrtcvad-wheels``.

Costs a few microseconds per window, so it suits many concurrent calls or a small CPU. The engine
goes on flagging speech for a fixed hangover after any sound (60-150 ms, see ``_HANGOVER``): a
run must outlast ``start_secs`` by the short hangover before speech starts, so a click does not,
and the stop's stamp and the ``stop_secs`` silence are measured from before the hangover. It is easily
fooled by steady noise: measured on white noise, ``aggressiveness: 0`` flags ~100% of windows as
speech and ``3`` (the default) still ~14%, against 0% for ``vad.silero``; on clean speech 3 flags
~89% of windows. Use ``vad.silero`` in noisy rooms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.formats import AudioCaps
from pipeline.params import param
from processors.vad.base import VadParams, VadProcessor

__all__ = ["WebRTCVad"]

# WebRTC's own hangover (vad_core.c): after a window of speech it keeps flagging this many windows,
# (short, sustained) by aggressiveness and window length; "sustained" once 7 speech windows ran in a row.
_HANGOVER: dict[int, dict[int, tuple[int, int]]] = {
    0: {10: (8, 14), 20: (4, 7), 30: (3, 5)},
    1: {10: (8, 14), 20: (4, 7), 30: (3, 5)},
    2: {10: (6, 9), 20: (3, 5), 30: (2, 3)},
    3: {10: (6, 9), 20: (3, 5), 30: (2, 3)},
}
_SUSTAINED = 7


@dataclass(slots=True, kw_only=True)
class WebRTCVadParams(VadParams):
    """Params of ``vad.webrtc``."""

    aggressiveness: Literal[0, 1, 2, 3] = param(
        3, doc="0 = flags the most as speech (noise too), 3 = strictest; 3 suits most rooms"
    )
    window_ms: Literal[10, 20, 30] = param(30, doc="audio judged at a time, in milliseconds")


class WebRTCVad(VadProcessor):
    """Voice activity from WebRTC's detector: 8, 16, 32 or 48 kHz mono, 10/20/30 ms windows."""

    type_name = "vad.webrtc"
    Params: ClassVar[type[Any]] = WebRTCVadParams
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of((8000, 16000, 32000, 48000), 1)

    params: WebRTCVadParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._vad: Any = None

    async def on_start(self) -> None:
        import webrtcvad  # from webrtcvad-wheels; imported here so 'pipeline list' stays fast

        self._vad = webrtcvad.Vad(self.params.aggressiveness)

    def window_samples(self, sample_rate: int) -> int:
        return sample_rate * self.params.window_ms // 1000

    def start_lag(self) -> float:
        short, _ = _HANGOVER[self.params.aggressiveness][self.params.window_ms]
        return short * self.params.window_ms / 1000

    def end_lag(self, run: float) -> float:
        window = self.params.window_ms / 1000
        short, sustained = _HANGOVER[self.params.aggressiveness][self.params.window_ms]
        windows = round(run / window)
        hangover = sustained if windows - sustained >= _SUSTAINED else short
        return min(hangover, windows - 1) * window

    def speech_probability(self, window: bytes, sample_rate: int) -> float:
        return 1.0 if self._vad.is_speech(window, sample_rate) else 0.0
