"""End-of-turn benchmark on a labelled turn set from real speech: silence timers against ``turn.smart``.

The set (built from the recordings Debian's pocketsphinx-testdata ships: LibriVox sentences, spoken
commands and card names):

* **finished**: a whole recording, up to the end of its speech;
* **unfinished**: the same speech cut at a pause inside it (found with Whisper word timings); the
  speaker goes on after that pause, whose real length is kept;
* **two-part**: a finished recording's first words, a thinking pause (0.8-1.6 s), then the rest.

A detector that ends the turn while the speaker is only pausing cuts them off. For each detector the
table gives, like eot-bench, the false cut-off rate at a 300 ms budget (the share of unfinished turns
it ends within 300 ms of silence) and the mean end-of-turn latency (silence before the turn ends, on
finished turns) when false cut-offs are held to at most 5% (sweeping ``stop_secs`` for the VAD, the
probability threshold for the model; the model's own run time is added). VAD-only rows at
``stop_secs`` 0.4/0.6/0.8 give false cut-offs (pauses longer than the timer) and latency (the timer).
The model's policy is ``turn.smart``'s: finished ends the turn after ``--short`` s of silence, unfinished
after ``--long`` s unless speech resumes.

    python -m benchmarks.turns [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from processors import turn_model

TESTDATA = Path("/usr/share/pocketsphinx/test/data")
RATE = 16000
MIN_INNER_PAUSE = 0.12
"""Gaps between words at least this long count as pauses at which a sentence may be cut."""
THINKING_PAUSES = (0.8, 1.2, 1.6)
BUDGET = 0.3
TAIL = 0.2
"""Seconds of silence after the speech that the model hears (the VAD's stop with ``turn.smart``)."""
MAX_FALSE_CUT_OFFS = 0.05


@dataclass(slots=True)
class Sample:
    """One labelled turn: the audio up to a silence, and what the speaker does next."""

    name: str
    finished: bool
    pause: float  # unfinished: seconds of silence before the speaker goes on (finished: 0)
    audio: np.ndarray
    probability: float = 0.0  # the model's end-of-turn probability
    model_seconds: float = 0.0  # what computing it took


def recordings() -> dict[str, np.ndarray]:
    """Name -> 16 kHz float speech of every usable recording in pocketsphinx-testdata."""
    if not TESTDATA.is_dir():
        sys.exit(f"{TESTDATA} is missing: run ./setup.sh (apt-get install pocketsphinx-testdata)")
    found: dict[str, np.ndarray] = {}
    for path in sorted([*TESTDATA.glob("librivox/*.wav"), *TESTDATA.glob("cards/*.wav")]):
        with wave.open(str(path), "rb") as file:
            pcm = np.frombuffer(file.readframes(file.getnframes()), "<i2")
            rate = file.getframerate()
        if rate == RATE:
            found[f"{path.parent.name}/{path.stem}"] = pcm.astype(np.float32) / 32768
    for path in sorted(TESTDATA.glob("*.raw")):  # headerless 16 kHz s16le commands
        found[path.stem] = np.fromfile(path, "<i2").astype(np.float32) / 32768
    return found


def word_timings(audio: np.ndarray) -> list[tuple[float, float, str]]:
    """(start, end, word) of each word, by Whisper tiny.en with word timestamps."""
    return [(w.start, w.end, w.word) for w in _whisper().transcribe_words(audio)]


class _Whisper:
    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from processors.stt.models import whisper_model_source

        self.model = WhisperModel(whisper_model_source("tiny.en"), device="cpu", cpu_threads=2)

    def transcribe_words(self, audio: np.ndarray) -> list[Any]:
        segments, _ = self.model.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
        return [w for s in segments for w in s.words or ()]


_model: _Whisper | None = None


def _whisper() -> _Whisper:
    global _model
    if _model is None:
        _model = _Whisper()
    return _model


def turn_set() -> list[Sample]:
    """The labelled turns (see the module docstring). Each ends ``TAIL`` s after the speech, as the
    model hears it at the VAD's stop (real audio: the pause, or the recording's end padded with zeros)."""
    samples: list[Sample] = []
    for name, audio in recordings().items():
        words = word_timings(audio)
        if not words:
            continue
        samples.append(Sample(name, True, 0.0, _upto(audio, words[-1][1], TAIL)))
        for before, after in itertools.pairwise(words):
            if after[0] - before[1] >= MIN_INNER_PAUSE:
                pause = after[0] - before[1]
                cut = _upto(audio, before[1], min(TAIL, pause))
                samples.append(Sample(f"{name}@{before[1]:.2f}", False, pause, cut))
        if len(words) >= 3:
            split = words[len(words) // 2 - 1][1]  # after a word, mid-sentence
            for pause in THINKING_PAUSES:
                samples.append(Sample(f"{name}+{pause}", False, pause, _upto(audio, split, 0.0, TAIL)))
    return samples


def _upto(audio: np.ndarray, end: float, tail: float, silence: float = 0.0) -> np.ndarray:
    """``audio`` up to ``end + tail`` seconds, then ``silence`` seconds of zeros (and zeros for any
    of the tail past the recording's end)."""
    stop = int((end + tail) * RATE)
    head = audio[:stop]
    return np.concatenate([head, np.zeros(stop - head.size + int(silence * RATE), np.float32)])


def judge(samples: list[Sample]) -> None:
    """The model's probability for each sample (one thread, as ``turn.smart`` runs it)."""
    session = turn_model.shared_session()
    turn_model.end_of_turn_probability(np.zeros(RATE, np.float32), session)  # warm-up
    for sample in samples:
        started = time.perf_counter()
        sample.probability = turn_model.end_of_turn_probability(sample.audio, session)
        sample.model_seconds = time.perf_counter() - started


def vad_row(samples: list[Sample], stop_secs: float) -> dict[str, float]:
    """A silence timer: every pause longer than ``stop_secs`` is cut off; every turn waits it out."""
    unfinished = [s for s in samples if not s.finished]
    cut = sum(s.pause > stop_secs for s in unfinished) / len(unfinished)
    return {"false_cut_offs": cut, "latency": stop_secs}


def model_row(samples: list[Sample], threshold: float, short: float, long: float) -> dict[str, float]:
    """``turn.smart`` at ``threshold``: a cut-off when an unfinished turn is judged finished (and the
    pause outlasts ``short``) or outlasts ``long``; latency on finished turns, model time included."""
    unfinished = [s for s in samples if not s.finished]
    finished = [s for s in samples if s.finished]
    cut = sum(s.pause > (short if s.probability >= threshold else long) for s in unfinished) / len(unfinished)
    waits = [(short if s.probability >= threshold else long) + s.model_seconds for s in finished]
    return {"false_cut_offs": cut, "latency": statistics.fmean(waits)}


def vad_at_target(samples: list[Sample]) -> dict[str, float]:
    """The shortest ``stop_secs`` (10 ms steps) holding false cut-offs to the target."""
    for step in range(1, 301):
        row = vad_row(samples, step / 100)
        if row["false_cut_offs"] <= MAX_FALSE_CUT_OFFS:
            return {**row, "stop_secs": step / 100}
    return {**vad_row(samples, 3.0), "stop_secs": 3.0}


def model_at_target(samples: list[Sample], short: float, long: float) -> dict[str, float]:
    """The threshold with the lowest latency among those holding false cut-offs to the target."""
    rows = [{**model_row(samples, t / 100, short, long), "threshold": t / 100} for t in range(1, 100)]
    held = [r for r in rows if r["false_cut_offs"] <= MAX_FALSE_CUT_OFFS]
    return min(held, key=lambda r: r["latency"]) if held else rows[-1]


def report(samples: list[Sample], short: float, long: float, threshold: float) -> dict[str, Any]:
    unfinished = [s for s in samples if not s.finished]
    rows: dict[str, Any] = {f"vad-only, {BUDGET * 1000:.0f} ms budget": vad_row(samples, BUDGET)}
    for stop in (0.4, 0.6, 0.8):
        rows[f"vad-only, stop_secs {stop}"] = vad_row(samples, stop)
    rows["vad-only, best stop_secs at <=5%"] = vad_at_target(samples)
    rows[f"smart turn, {BUDGET * 1000:.0f} ms budget"] = model_row(samples, threshold, BUDGET, long)
    rows[f"smart turn, short {short} long {long}"] = model_row(samples, threshold, short, long)
    rows["smart turn, best threshold at <=5%"] = model_at_target(samples, short, long)
    times = sorted(s.model_seconds for s in samples)
    return {
        "samples": {"finished": len(samples) - len(unfinished), "unfinished": len(unfinished)},
        "policy": {"short": short, "long": long, "budget": BUDGET, "max_false_cut_offs": MAX_FALSE_CUT_OFFS},
        "model_ms": {
            "p50": 1000 * times[len(times) // 2],
            "p95": 1000 * times[int(len(times) * 0.95)],
            "mean": 1000 * statistics.fmean(times),
        },
        "accuracy": {
            "finished_judged_finished": statistics.fmean(
                s.probability >= threshold for s in samples if s.finished
            ),
            "unfinished_judged_unfinished": statistics.fmean(s.probability < threshold for s in unfinished),
        },
        "rows": rows,
        "load_average": list(_load_average()),
        "turns": [
            {k: v for k, v in asdict(s).items() if k != "audio"} | {"seconds": s.audio.size / RATE}
            for s in samples
        ],
    }


def _load_average() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def print_table(result: dict[str, Any]) -> None:
    print(f"turn set: {result['samples']}; model {result['model_ms']['p50']:.0f} ms p50 per decision")
    print(f"{'detector':40} {'false cut-offs':>15} {'mean EOT latency':>17}")
    for name, row in result["rows"].items():
        setting = {k: v for k, v in row.items() if k in ("stop_secs", "threshold")}
        extra = f"  {setting}" if setting else ""
        print(f"{name:40} {100 * row['false_cut_offs']:14.1f}% {1000 * row['latency']:14.0f} ms{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=float, default=0.2, help="silence that ends a finished turn (s)")
    parser.add_argument("--long", type=float, default=1.5, help="silence that ends an unfinished turn (s)")
    parser.add_argument("--threshold", type=float, default=0.5, help="model probability meaning finished")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    samples = turn_set()
    judge(samples)
    result = report(samples, args.short, args.long, args.threshold)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
