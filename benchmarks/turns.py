"""End-of-turn benchmark on a labelled set of real speech: silence timers against ``turn.smart``.

The set is ``benchmarks.turn_set``'s (finished sentences; the same kind of speech cut at a real pause
inside a sentence, at a thinking pause between two halves, or at a pause between sentences of a longer
utterance). A detector that ends the turn while the speaker only pauses cuts them off. Like eot-bench,
the table gives for each detector the **false cut-off rate at a 300 ms budget** (the share of turns that
go on which it ends within 300 ms of silence) and the **mean end-of-turn latency** (silence before a
finished turn ends), also at the setting that holds false cut-offs to 5%.

* VAD only at ``stop_secs`` s: a pause longer than the timer is cut off; every turn waits it out.
* ``turn.smart``: the model hears the speech and ``--heard`` s of the silence after it (the VAD's
  pause), and judges. Finished: the turn ends ``--short`` s after the speech (or when the verdict
  comes, if later: the model's measured time counts). Not finished: the turn ends after ``--long`` s
  of silence unless speech resumes. A cut-off is a turn that goes on whose pause outlasts that.
* ``turn.smart`` re-judged (``--recheck 0.5,0.8,1.1``): a turn judged unfinished is judged again when
  the silence reaches each of those lengths (the model hears it all), and ends when a verdict is
  finished (at that length plus the model's time), else after ``--long``. The table also gives how well
  the model separates finished turns from the rest (AUC) at each length of silence it hears.

Thresholds are tuned on one half of the set and reported on the other (all turns cut from one
recording fall in the same half): the threshold with the best balanced accuracy, and the lowest-latency
threshold and ``--long`` holding false cut-offs to 5%. The VAD's 5% setting is chosen the same way.

    python -m benchmarks.turns [--json out.json] [--languages en,nl] [--window 4] [--recheck 0.5,0.8]

The set needs ``apt-get install pocketsphinx-testdata fillets-ng-data fillets-ng-data-nl``; the first
run computes Whisper word timings (cached), later runs take a few minutes of one core (the model).

Progress on stderr; the table on stdout; ``--json`` writes everything, with each turn's verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import turn_set
from benchmarks.turn_set import Sample
from processors import turn_model

BUDGET = 0.3
MAX_FALSE_CUT_OFFS = 0.05
VAD_STOPS = (0.4, 0.6, 0.8)
LONG_WAITS = (1.0, 1.5, 2.0, 2.5, 3.0)
THRESHOLDS = tuple(t / 100 for t in range(1, 100))


@dataclass(slots=True, frozen=True)
class Recheck:
    """The model's verdict on a sample when it hears ``heard`` s of the silence, and its cost."""

    heard: float
    probability: float
    decision_seconds: float  # streamed log-mel's last step and the model


@dataclass(slots=True)
class Judged:
    """A sample with the model's verdict and what computing it cost."""

    sample: Sample
    probability: float
    features_ms: float  # log-mel from the whole clip at the pause (how it was done before)
    stream_features_ms: float  # log-mel finished at the pause from frames computed as audio came
    inference_ms: float
    rechecks: tuple[Recheck, ...] = ()  # verdicts with more of the silence heard, shortest first

    @property
    def decision_seconds(self) -> float:
        """What the node spends at the pause: the streamed features' last step and the model."""
        return (self.stream_features_ms + self.inference_ms) / 1000


def judge(
    samples: list[Sample],
    heard: float,
    window: int = turn_model.WINDOW_SECONDS,
    rechecks: tuple[float, ...] = (),
) -> list[Judged]:
    """Run the model on every sample as ``turn.smart`` does (one thread, shared session), hearing the
    last ``window`` s, and again hearing each of ``rechecks`` s of the silence."""
    session = turn_model.shared_session(window_secs=window)
    turn_model.end_of_turn_probability(np.zeros(turn_set.RATE, np.float32), session)  # warm-up
    audio: dict[str, np.ndarray] = {}
    judged: list[Judged] = []
    for number, sample in enumerate(samples, 1):
        if number % 100 == 0 or number == len(samples):
            turn_set.progress(f"model {number}/{len(samples)}")
        if sample.source not in audio:
            audio = {sample.source: turn_set.read_audio(sample.source)}  # samples come grouped by source
        clip = turn_set.clip(audio[sample.source], sample, heard)
        started = time.perf_counter()
        turn_model.log_mel(clip)
        features_ms = 1000 * (time.perf_counter() - started)
        stream = turn_model.LogMelStream()
        stream.add(clip)  # as the audio arrived
        started = time.perf_counter()
        features = stream.features()
        stream_ms = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        probability = turn_model.probability(features, session)
        inference_ms = 1000 * (time.perf_counter() - started)
        again = tuple(_recheck(audio[sample.source], sample, tail, session) for tail in rechecks)
        judged.append(Judged(sample, probability, features_ms, stream_ms, inference_ms, again))
    return judged


def _recheck(audio: np.ndarray, sample: Sample, heard: float, session: Any) -> Recheck:
    stream = turn_model.LogMelStream()
    stream.add(turn_set.clip(audio, sample, heard))
    started = time.perf_counter()
    probability = turn_model.probability(stream.features(), session)
    return Recheck(heard, probability, time.perf_counter() - started)


# --- detectors -----------------------------------------------------------------------------------


def vad_row(judged: list[Judged], stop_secs: float) -> dict[str, Any]:
    """A silence timer: every pause longer than ``stop_secs`` is cut off; every turn waits it out."""
    going_on = [j.sample for j in judged if not j.sample.finished]
    return {
        "stop_secs": stop_secs,
        "false_cut_offs": _share([s.pause > stop_secs for s in going_on]),
        "latency": stop_secs,
        "by_kind": _by_kind(going_on, [s.pause > stop_secs for s in going_on]),
    }


def smart_row(
    judged: list[Judged], threshold: float, short: float, long: float, heard: float
) -> dict[str, Any]:
    """``turn.smart`` at ``threshold``: see the module docstring."""
    going_on = [j for j in judged if not j.sample.finished]
    finished = [j for j in judged if j.sample.finished]

    def wait(j: Judged) -> float:
        return max(short, heard + j.decision_seconds) if j.probability >= threshold else long

    cut = [j.sample.pause > wait(j) for j in going_on]
    return {
        "threshold": threshold,
        "short": short,
        "long": long,
        "false_cut_offs": _share(cut),
        "latency": statistics.fmean(wait(j) for j in finished) if finished else 0.0,
        "finished_judged_finished": _share([j.probability >= threshold for j in finished]),
        "going_on_judged_unfinished": _share([j.probability < threshold for j in going_on]),
        "by_kind": _by_kind([j.sample for j in going_on], cut),
    }


def rechecked_row(
    judged: list[Judged], threshold: float, short: float, long: float, heard: float
) -> dict[str, Any]:
    """``turn.smart`` at ``threshold``, a turn judged unfinished judged again at each recheck: it ends at
    the first finished verdict (when it comes), else after ``long``; speech resuming first is no cut."""
    going_on = [j for j in judged if not j.sample.finished]
    finished = [j for j in judged if j.sample.finished]

    def wait(j: Judged) -> float:
        if j.probability >= threshold:
            return max(short, heard + j.decision_seconds)
        for again in j.rechecks:
            if again.heard + again.decision_seconds < long and again.probability >= threshold:
                return again.heard + again.decision_seconds
        return long

    cut = [j.sample.pause > wait(j) for j in going_on]
    return {
        "threshold": threshold,
        "short": short,
        "long": long,
        "rechecks": [again.heard for again in judged[0].rechecks] if judged else [],
        "false_cut_offs": _share(cut),
        "latency": statistics.fmean(wait(j) for j in finished) if finished else 0.0,
        "by_kind": _by_kind([j.sample for j in going_on], cut),
    }


def separation_by_silence(judged: list[Judged], heard: float) -> dict[str, float]:
    """AUC of the model's probability (finished turns against those that go on) per seconds of silence
    it heard: 0.5 is a coin, 1 a perfect judge."""
    lengths = {heard: [j.probability for j in judged]}
    for index, again in enumerate(judged[0].rechecks if judged else ()):
        lengths[again.heard] = [j.rechecks[index].probability for j in judged]
    finished = [j.sample.finished for j in judged]
    return {str(length): _auc(values, finished) for length, values in lengths.items()}


def _auc(scores: list[float], positive: list[bool]) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos = np.array([s for s, p in zip(scores, positive, strict=True) if p])
    neg = np.array([s for s, p in zip(scores, positive, strict=True) if not p])
    if not pos.size or not neg.size:
        return 0.5
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (pos.size * neg.size))


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _by_kind(samples: list[Sample], cut: list[bool]) -> dict[str, dict[str, float]]:
    kinds = sorted({s.kind for s in samples})
    return {
        kind: {
            "n": sum(s.kind == kind for s in samples),
            "false_cut_offs": _share([c for s, c in zip(samples, cut, strict=True) if s.kind == kind]),
        }
        for kind in kinds
    }


def tune_vad(judged: list[Judged]) -> float:
    """The shortest ``stop_secs`` (10 ms steps, up to 3 s) holding false cut-offs to the target."""
    for step in range(1, 301):
        if vad_row(judged, step / 100)["false_cut_offs"] <= MAX_FALSE_CUT_OFFS:
            return step / 100
    return 3.0


def tune_balanced(judged: list[Judged]) -> float:
    """The threshold with the best balanced accuracy (finished judged finished, the rest unfinished)."""

    def balanced(threshold: float) -> float:
        finished = [j.probability >= threshold for j in judged if j.sample.finished]
        going_on = [j.probability < threshold for j in judged if not j.sample.finished]
        return (_share(finished) + _share(going_on)) / 2

    return max(THRESHOLDS, key=balanced)


def tune_held(judged: list[Judged], short: float, heard: float) -> tuple[float, float]:
    """The (threshold, long) with the lowest latency among those holding false cut-offs to 5%."""
    rows = [smart_row(judged, t, short, long, heard) for t in THRESHOLDS for long in LONG_WAITS]
    held = [r for r in rows if r["false_cut_offs"] <= MAX_FALSE_CUT_OFFS]
    best = (
        min(held, key=lambda r: r["latency"])
        if held
        else max(rows, key=lambda r: (r["long"], -r["threshold"]))
    )
    return best["threshold"], best["long"]


# --- the report ----------------------------------------------------------------------------------


def report(judged: list[Judged], short: float, long: float, heard: float) -> dict[str, Any]:
    """Tune on one half, report on the other (see the module docstring)."""
    tune_half, test_half = _halves(judged)
    balanced = tune_balanced(tune_half)
    held_threshold, held_long = tune_held(tune_half, short, heard)
    vad_stop = tune_vad(tune_half)
    rows: dict[str, Any] = {f"vad-only, stop_secs {BUDGET} (the budget)": vad_row(test_half, BUDGET)}
    for stop in VAD_STOPS:
        rows[f"vad-only, stop_secs {stop}"] = vad_row(test_half, stop)
    rows["vad-only, stop_secs tuned to <=5%"] = vad_row(test_half, vad_stop)
    budget = f"{BUDGET * 1000:.0f} ms budget"
    rows[f"turn.smart, {budget}"] = smart_row(test_half, balanced, BUDGET, long, heard)
    rows[f"turn.smart, short {short}"] = smart_row(test_half, balanced, short, long, heard)
    rows["turn.smart, tuned to <=5%"] = smart_row(test_half, held_threshold, short, held_long, heard)
    targets = _targets(rows, f"turn.smart, {budget}", f"turn.smart, short {short}")
    rechecked_targets: dict[str, bool] = {}
    if judged and judged[0].rechecks:
        rows[f"re-judged, {budget}"] = rechecked_row(test_half, balanced, BUDGET, long, heard)
        rows[f"re-judged, short {short}"] = rechecked_row(test_half, balanced, short, long, heard)
        rechecked_targets = _targets(rows, f"re-judged, {budget}", f"re-judged, short {short}")
    return {
        "set": _counts(judged),
        "report_half": _counts(test_half),
        "tuned_on": _counts(tune_half),
        "policy": {
            "short": short,
            "long": long,
            "heard": heard,
            "budget": BUDGET,
            "max_false_cut_offs": MAX_FALSE_CUT_OFFS,
        },
        "tuned": {
            "balanced_threshold": balanced,
            "held_threshold": held_threshold,
            "held_long": held_long,
            "vad_stop_secs": vad_stop,
        },
        "cost_ms": _cost(judged),
        "rows": rows,
        "targets": targets,
        "targets_re_judged": rechecked_targets,
        "auc_by_heard_silence": {
            "report_half": separation_by_silence(test_half, heard),
            "tune_half": separation_by_silence(tune_half, heard),
        },
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "turns": [
            {
                **asdict(j.sample),
                "probability": j.probability,
                "features_ms": j.features_ms,
                "stream_features_ms": j.stream_features_ms,
                "inference_ms": j.inference_ms,
                "rechecks": [asdict(again) for again in j.rechecks],
            }
            for j in judged
        ],
    }


def _halves(judged: list[Judged]) -> tuple[list[Judged], list[Judged]]:
    tune, _ = turn_set.split_halves([j.sample for j in judged])
    chosen = {id(s) for s in tune}
    return [j for j in judged if id(j.sample) in chosen], [j for j in judged if id(j.sample) not in chosen]


def _counts(judged: list[Judged]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in judged:
        key = f"{j.sample.kind} ({j.sample.language})"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _cost(judged: list[Judged]) -> dict[str, dict[str, float]]:
    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50": statistics.median(ordered),
            "p95": ordered[int(0.95 * (len(ordered) - 1))],
            "mean": statistics.fmean(ordered),
        }

    return {
        "before (log-mel at the pause + model)": stats([j.features_ms + j.inference_ms for j in judged]),
        "after (streamed log-mel + model)": stats([j.stream_features_ms + j.inference_ms for j in judged]),
        "log-mel at the pause": stats([j.features_ms for j in judged]),
        "streamed log-mel, last step": stats([j.stream_features_ms for j in judged]),
        "model": stats([j.inference_ms for j in judged]),
    }


def _targets(rows: dict[str, Any], budget_key: str, short_key: str) -> dict[str, bool]:
    """Issue 15's targets for a policy: its rows at the 300 ms budget and at ``--short``."""
    vad = rows["vad-only, stop_secs 0.4"]["false_cut_offs"]
    return {
        "false_cut_offs_at_most_half_of_vad_0.4": bool(rows[budget_key]["false_cut_offs"] <= vad / 2),
        "latency_below_vad_0.6": bool(
            rows[short_key]["latency"] < rows["vad-only, stop_secs 0.6"]["latency"]
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    cost = result["cost_ms"]
    print(f"set: {result['set']}; the model hears the last {result['window_secs']} s")
    print(f"reported on: {result['report_half']} (thresholds tuned on the other half)")
    for name, values in cost.items():
        print(f"  {name:40} p50 {values['p50']:6.1f} ms  p95 {values['p95']:6.1f} ms")
    print(f"{'detector':38} {'false cut-offs':>15} {'mean EOT latency':>17}  setting")
    for name, row in result["rows"].items():
        setting = {k: row[k] for k in ("stop_secs", "threshold", "short", "long", "rechecks") if k in row}
        print(f"{name:38} {100 * row['false_cut_offs']:14.1f}% {1000 * row['latency']:14.0f} ms  {setting}")
    auc = result["auc_by_heard_silence"]["report_half"]
    if len(auc) > 1:
        print("AUC by silence heard: " + ", ".join(f"{heard} s {value:.3f}" for heard, value in auc.items()))
    print(f"targets: {result['targets']}  (load average {result['load_average'][0]:.1f})")
    if result["targets_re_judged"]:
        print(f"targets re-judged: {result['targets_re_judged']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=float, default=0.2, help="silence that ends a finished turn (s)")
    parser.add_argument("--long", type=float, default=1.5, help="silence that ends an unfinished turn (s)")
    parser.add_argument(
        "--heard", type=float, default=turn_model.HEARD_SILENCE, help="silence the model hears (s)"
    )
    parser.add_argument(
        "--languages", default="en,nl", help="comma-separated: en (LibriVox etc.), nl (fillets-ng)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=turn_model.WINDOW_SECONDS,
        help="seconds the model hears (turn.smart window_secs)",
    )
    parser.add_argument(
        "--recheck",
        type=_lengths,
        default=(),
        help="comma-separated seconds of silence at which a turn judged unfinished is judged again",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    samples = turn_set.build(tuple(args.languages.split(",")))
    judged = judge(samples, args.heard, args.window, args.recheck)
    result = report(judged, args.short, args.long, args.heard) | {"window_secs": args.window}
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.json}", file=sys.stderr)


def _lengths(text: str) -> tuple[float, ...]:
    lengths = tuple(sorted(float(part) for part in text.split(",") if part.strip()))
    if not lengths or lengths[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected positive seconds like 0.5,0.8,1.1, not {text!r}")
    return lengths


if __name__ == "__main__":
    main()
