"""A labelled end-of-turn set from real speech in Debian packages, built the same way every time.

Three kinds of turn, each the audio up to a silence plus what the speaker does next:

* **finished**: a whole one-sentence utterance, up to the end of its speech;
* **unfinished**: the same kind of utterance cut at a real pause *inside* the sentence (a run of silence
  of at least ``MIN_PAUSE`` s between words), the speaker going on after the pause's real length;
* **two-part**: a sentence cut between two words mid-way, then a thinking pause (0.8-1.6 s) before
  the rest;
* **goes-on**: an utterance of several sentences cut at a pause in it (inside a sentence or between
  two): the sentence heard may be whole, but the speaker is not done.

Sources (nothing is downloaded; ``apt-get install`` the packages):

* ``pocketsphinx-testdata``: LibriVox sentences, spoken commands and card names (English). Word
  timings come from Whisper tiny.en (faster-whisper), cached; pauses are confirmed by the audio's energy.
* ``fillets-ng-data-nl`` with the dialogue scripts of ``fillets-ng-data``: 1,500 acted lines (Dutch,
  several speakers) whose exact text the scripts give; lines that trail off ("...") are left out. Pauses
  are found from the energy; in a line whose text is one sentence every inner pause is inside it.

Smart Turn v3 was trained on 23 languages, Dutch among them. Each sample's audio is cached nowhere: it
is cut from the packages' files on each run (seconds); the word timings are cached in
``$XDG_CACHE_HOME/voxgraph/turn-set/`` because Whisper takes a while on a busy machine.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Sample", "build", "split_halves"]

RATE = 16000
TESTDATA = Path("/usr/share/pocketsphinx/test/data")
FILLETS = Path("/usr/share/games/fillets-ng")
MIN_PAUSE = 0.2
"""Shortest silence inside a sentence that counts as a pause (what a VAD with pause_secs 0.2 hears)."""
QUIET_DB = 35.0
"""A 10 ms frame this many dB below the utterance's loud frames (its 95th percentile) is silence."""
WORD_GAP_DB = 20.0
"""Where a two-part turn is cut: a dip this many dB below the loud frames, between two words."""
MIN_SPEECH_BEFORE = 0.5
"""A cut needs at least this much speech before it (a lone syllable is no utterance)."""
THINKING_PAUSES = (0.8, 1.2, 1.6)
MIN_LINE_SECONDS = 1.0
MAX_LINE_SECONDS = 8.0
_CACHE_VERSION = 1
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s")


@dataclass(slots=True)
class Sample:
    """One labelled turn: ``source`` up to ``cut`` s, then what the speaker does next."""

    name: str
    kind: str  # "finished", "unfinished" or "two-part"
    language: str
    source: str  # the recording (a path)
    cut: float  # seconds: end of the speech the model hears
    pause: float  # seconds of silence before the speaker goes on (finished: 0)
    heard_silence: float  # seconds of the real recording after ``cut`` that are silence (<= pause)

    @property
    def finished(self) -> bool:
        return self.kind == "finished"

    @property
    def recording(self) -> str:
        """Samples cut from one recording share it (they go to the same half of a split)."""
        return self.source


def progress(message: str) -> None:
    print(f"[turn-set] {message}", file=sys.stderr, flush=True)


# --- audio ---------------------------------------------------------------------------------------


def read_audio(path: str) -> np.ndarray:
    """16 kHz mono float audio of a WAV, headerless 16 kHz s16le (.raw) or Ogg file."""
    if path.endswith(".raw"):
        return np.fromfile(path, "<i2").astype(np.float32) / 32768
    if path.endswith(".wav"):
        with wave.open(path, "rb") as file:
            pcm = np.frombuffer(file.readframes(file.getnframes()), "<i2")
            rate, channels = file.getframerate(), file.getnchannels()
        audio = pcm.astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768
    else:
        import soundfile

        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        audio = data.mean(axis=1)
    if rate != RATE:
        import soxr

        audio = soxr.resample(audio, rate, RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)


def levels(audio: np.ndarray) -> np.ndarray:
    """dB level of each 10 ms frame."""
    hop = RATE // 100
    frames = audio[: audio.size // hop * hop].astype(np.float64).reshape(-1, hop)
    level: np.ndarray = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    return level


def loud_frames(audio: np.ndarray) -> np.ndarray:
    """Which 10 ms frames are speech (not within ``QUIET_DB`` of silence below the loud ones)."""
    level = levels(audio)
    if level.size == 0:
        return np.zeros(0, bool)
    loud: np.ndarray = level > np.percentile(level, 95) - QUIET_DB
    return loud


def pauses(loud: np.ndarray) -> list[tuple[float, float]]:
    """(start, length) in seconds of each run of silence of at least ``MIN_PAUSE`` between speech."""
    found: list[tuple[float, float]] = []
    speech = np.flatnonzero(loud)
    if speech.size < 2:
        return found
    gaps = np.diff(speech)
    for index in np.flatnonzero(gaps > 1):
        start, length = speech[index] + 1, gaps[index] - 1
        if length / 100 >= MIN_PAUSE - 1e-9:
            found.append((start / 100, length / 100))
    return found


def speech_span(loud: np.ndarray) -> tuple[float, float] | None:
    """First and last second of speech."""
    speech = np.flatnonzero(loud)
    return None if speech.size == 0 else (speech[0] / 100, (speech[-1] + 1) / 100)


def clip(audio: np.ndarray, sample: Sample, tail: float) -> np.ndarray:
    """What the model hears for ``sample``: the speech up to its cut, then ``tail`` s of what follows
    (the real recording while it is silence, zeros past that: the pause goes on)."""
    cut = round(sample.cut * RATE)
    real = round(min(tail, sample.heard_silence) * RATE)
    head = audio[: cut + real]
    return np.concatenate([head, np.zeros(cut + round(tail * RATE) - head.size, np.float32)])


# --- English: pocketsphinx-testdata, cut with Whisper word timings ------------------------------


def english_recordings() -> list[Path]:
    if not TESTDATA.is_dir():
        sys.exit(f"{TESTDATA} is missing: apt-get install pocketsphinx-testdata")
    paths = [*TESTDATA.glob("librivox/*.wav"), *TESTDATA.glob("cards/*.wav"), *TESTDATA.glob("*.raw")]
    return sorted(paths)


def _whisper_words(audio: np.ndarray) -> list[tuple[float, float, str]]:
    from faster_whisper import WhisperModel

    from processors.stt.models import whisper_model_source

    global _whisper
    if _whisper is None:
        progress("loading Whisper tiny.en for word timings")
        _whisper = WhisperModel(whisper_model_source("tiny.en"), device="cpu", cpu_threads=1)
    segments, _ = _whisper.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
    return [(w.start, w.end, w.word.strip()) for s in segments for w in s.words or ()]


_whisper: Any = None


def word_timings(paths: list[Path], cache: Path) -> dict[str, list[tuple[float, float, str]]]:
    """Whisper word timings of each recording, cached in ``cache`` (JSON)."""
    known: dict[str, list[tuple[float, float, str]]] = {}
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("version") == _CACHE_VERSION:
            known = {k: [(w[0], w[1], w[2]) for w in v] for k, v in stored["words"].items()}
    missing = [p for p in paths if str(p) not in known]
    for number, path in enumerate(missing, 1):
        progress(f"word timings {number}/{len(missing)}: {path.name}")
        known[str(path)] = _whisper_words(read_audio(str(path)))
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"version": _CACHE_VERSION, "words": known}))
    return known


def english_samples(cache: Path) -> Iterator[Sample]:
    paths = english_recordings()
    timings = word_timings(paths, cache)
    for path in paths:
        words = timings[str(path)]
        audio = read_audio(str(path))
        loud = loud_frames(audio)
        span = speech_span(loud)
        if not words or span is None:
            continue
        name = f"{path.parent.name}/{path.stem}" if path.parent != TESTDATA else path.stem
        yield Sample(name, "finished", "en", str(path), span[1], 0.0, audio.size / RATE - span[1])
        silences = pauses(loud)
        for before, after in itertools.pairwise(words):
            if before[2].endswith((".", "?", "!")):
                continue  # between sentences: the sentence before it was finished
            # the run of silence between these two words, if the audio has one
            for start, length in silences:
                if before[0] < start + length / 2 < after[1] and start - span[0] >= MIN_SPEECH_BEFORE:
                    yield Sample(f"{name}@{start:.2f}", "unfinished", "en", str(path), start, length, length)
        if len(words) >= 4:
            yield from _two_part(name, "en", str(path), audio, words[len(words) // 2 - 1][1])


# --- Dutch: the acted dialogue of fillets-ng, one-sentence lines --------------------------------


_LINE = re.compile(r'dialogId\("([^"]+)"[^\n]*\)\s*dialogStr\("((?:[^"\\]|\\.)*)"\)')


def dutch_lines() -> dict[Path, str]:
    """Recording -> its text, for every Dutch line whose text ends a sentence (not trailing off)."""
    scripts = sorted((FILLETS / "script").glob("*/dialogs_nl.lua"))
    if not scripts or not (FILLETS / "sound").is_dir():
        sys.exit(f"{FILLETS} has no Dutch dialogue: apt-get install fillets-ng-data fillets-ng-data-nl")
    lines: dict[Path, str] = {}
    for script in scripts:
        for line_id, text in _LINE.findall(script.read_text(encoding="utf-8")):
            path = FILLETS / "sound" / script.parent.name / "nl" / f"{line_id}.ogg"
            text = text.strip()
            if path.is_file() and text.endswith((".", "!", "?")) and not text.endswith(".."):
                lines[path] = text
    return dict(sorted(lines.items()))


def dutch_samples() -> Iterator[Sample]:
    lines = dutch_lines()
    progress(f"{len(lines)} Dutch lines")
    for number, path in enumerate(lines, 1):
        if number % 200 == 0:
            progress(f"Dutch lines {number}/{len(lines)}")
        audio = read_audio(str(path))
        loud = loud_frames(audio)
        span = speech_span(loud)
        if span is None or not MIN_LINE_SECONDS <= span[1] - span[0] <= MAX_LINE_SECONDS:
            continue
        name = f"{path.parent.parent.name}/{path.stem}"
        yield Sample(name, "finished", "nl", str(path), span[1], 0.0, audio.size / RATE - span[1])
        one_sentence = not _SENTENCE_END.search(lines[path])
        for start, length in pauses(loud):
            if start - span[0] >= MIN_SPEECH_BEFORE and start + length < span[1]:
                kind = "unfinished" if one_sentence else "goes-on"
                yield Sample(f"{name}@{start:.2f}", kind, "nl", str(path), start, length, length)
        if one_sentence and len(lines[path].split()) >= 4 and number % 2 == 0:  # every other line
            yield from _two_part(name, "nl", str(path), audio, (span[0] + span[1]) / 2)


def _two_part(name: str, language: str, path: str, audio: np.ndarray, near: float) -> Iterator[Sample]:
    """The speech up to the quietest 10 ms within 0.25 s of ``near`` if it is a dip between words
    (``WORD_GAP_DB`` below the loud frames; else no sample), then a thinking pause chosen by the name."""
    level = levels(audio)
    centre = round(near * 100)
    lo, hi = max(1, centre - 25), min(level.size - 1, centre + 25)
    if hi <= lo:
        return
    quietest = lo + int(np.argmin(level[lo:hi]))
    if level[quietest] > np.percentile(level, 95) - WORD_GAP_DB:
        return  # no gap between words there: a cut would split a word
    pause = THINKING_PAUSES[sum(map(ord, name)) % len(THINKING_PAUSES)]
    yield Sample(f"{name}+{pause}", "two-part", language, path, quietest / 100, pause, 0.0)


# --- the set -------------------------------------------------------------------------------------


def cache_dir() -> Path:
    from processors.stt.models import cache_root

    return cache_root() / "turn-set"


def build(languages: tuple[str, ...] = ("en", "nl")) -> list[Sample]:
    """Every sample, in a fixed order, balanced: as many finished turns as turns that go on (finished
    ones are taken evenly spaced over their sorted list when there are more)."""
    samples: list[Sample] = []
    if "en" in languages:
        samples += english_samples(cache_dir() / "words-en.json")
    if "nl" in languages:
        samples += dutch_samples()
    finished = [s for s in samples if s.finished]
    going_on = [s for s in samples if not s.finished]
    if len(finished) > len(going_on) > 0:
        step = len(finished) / len(going_on)
        finished = [finished[int(i * step)] for i in range(len(going_on))]
    chosen = {id(s) for s in finished}
    return [s for s in samples if not s.finished or id(s) in chosen]


def split_halves(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Two halves for tuning and for reporting; all samples of one recording go to the same half."""
    recordings = sorted({s.recording for s in samples})
    tune = set(recordings[0::2])
    return [s for s in samples if s.recording in tune], [s for s in samples if s.recording not in tune]
