"""The end-of-turn benchmark's arithmetic: where pauses are found, what the model hears, what counts as a
false cut-off and what a turn waits."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import turn_set
from benchmarks.turn_set import Sample
from benchmarks.turns import Judged, smart_row, tune_vad, vad_row

RATE = turn_set.RATE


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def test_pauses_are_runs_of_silence_long_enough_for_a_vad_to_hear() -> None:
    audio = np.concatenate([gap(0.3), tone(0.6), gap(0.1), tone(0.4), gap(0.35), tone(0.5), gap(0.5)])
    loud = turn_set.loud_frames(audio)
    assert turn_set.speech_span(loud) == pytest.approx((0.3, 2.25), abs=0.011)
    [(start, length)] = turn_set.pauses(loud)  # the 0.1 s gap is too short; the edges are no pauses
    assert start == pytest.approx(1.4, abs=0.011) and length == pytest.approx(0.35, abs=0.011)


def test_the_model_hears_the_real_silence_then_zeros_once_the_speaker_would_go_on() -> None:
    audio = np.concatenate([tone(1.0), np.full(int(0.1 * RATE), 0.001, np.float32), tone(1.0)])
    cut = Sample("x@1.00", "unfinished", "en", "x.wav", cut=1.0, pause=0.1, heard_silence=0.1)
    clip = turn_set.clip(audio, cut, tail=0.2)
    assert clip.size == int(1.2 * RATE)
    assert np.all(clip[int(1.0 * RATE) : int(1.1 * RATE)] == np.float32(0.001))  # the real pause
    assert not clip[int(1.1 * RATE) :].any()  # never the speech that follows it


def judged(kind: str, probability: float, pause: float = 0.0, source: str = "a.wav") -> Judged:
    sample = Sample(f"{source}/{kind}", kind, "en", source, cut=1.0, pause=pause, heard_silence=0.0)
    return Judged(sample, probability, features_ms=20.0, stream_features_ms=2.0, inference_ms=48.0)


def test_a_silence_timer_cuts_off_every_pause_longer_than_itself() -> None:
    turns = [judged("finished", 0.9), judged("unfinished", 0.1, 0.35), judged("two-part", 0.1, 1.2)]
    assert vad_row(turns, 0.3)["false_cut_offs"] == 1.0
    assert vad_row(turns, 0.4)["false_cut_offs"] == 0.5
    assert vad_row(turns, 0.4)["latency"] == 0.4
    assert tune_vad(turns) == 1.2  # nothing shorter holds cut-offs to 5%


def test_the_model_policy_waits_short_when_finished_and_long_when_not() -> None:
    turns = [
        judged("finished", 0.9),  # judged finished: ends at max(short, heard + 50 ms)
        judged("finished", 0.2),  # judged unfinished: waits the long wait
        judged("unfinished", 0.8, pause=0.35),  # judged finished: cut off (the pause outlasts 0.3)
        judged("two-part", 0.1, pause=1.2),  # judged unfinished: the speaker resumes before 1.5 s
        judged("two-part", 0.1, pause=1.6),  # ...but not before 1.5 s: cut off
    ]
    row = smart_row(turns, threshold=0.5, short=0.3, long=1.5, heard=0.2)
    assert row["false_cut_offs"] == pytest.approx(2 / 3)
    assert row["latency"] == pytest.approx((0.3 + 1.5) / 2)
    slow = smart_row(turns, threshold=0.5, short=0.2, long=1.5, heard=0.2)
    assert slow["latency"] == pytest.approx((0.25 + 1.5) / 2)  # the verdict came after the short wait
    assert row["by_kind"]["two-part"] == {"n": 2, "false_cut_offs": 0.5}


def test_halves_keep_the_turns_cut_from_one_recording_together() -> None:
    samples = [
        judged(k, 0.5, 0.3, source=f"{n}.wav").sample for n in range(6) for k in ("finished", "unfinished")
    ]
    tune, test = turn_set.split_halves(samples)
    assert len(tune) == len(test) == 6
    assert not {s.source for s in tune} & {s.source for s in test}
