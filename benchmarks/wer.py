"""Accuracy and speed of the offline recognisers, each run as the real processor on real speech.

Clips: the five LibriVox sentences, ``goforward.raw`` and ``cards/001..005`` from Debian's
``pocketsphinx-testdata`` (16 kHz). Each clip becomes 20 ms audio frames with the VAD's speaking frames
placed as a VAD sends them (a start 0.3 s after speech began, a stop 0.4 s after it ended, both
stamped with the true boundaries), run through ``run_processor``.

Per engine:

* WER: jiwer over all clips together, lowercased, punctuation replaced by spaces. ``wer_num`` also
  spells out the digits 0-20 ("10 of clubs" -> "ten of clubs"), so number formatting is not an error.
* RTF: time spent in the engine (the processor's ``processing`` metric) / seconds of audio.
* ttfb: UserStoppedSpeaking arrival -> final transcript (the processor's ``ttfb``). Audio is sent
  as fast as the processor takes it unless ``--realtime``: then a streaming engine (pocketsphinx) has
  decoded most of the utterance by the time it ends, as it would live.
* load: the first node's ``on_start`` (model load and warm-up).

Also measured: beam 1 vs 5 for Whisper, and the warm-up effect (first utterance after loading, with and
without the warm-up inference; each in a fresh process).

Run from the repo root: ``python benchmarks/wer.py`` (~2-3 min on 2 cores) or ``--quick`` (~30 s).
JSON lines on stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path("/usr/share/pocketsphinx/test/data")
FRAME = 320  # 20 ms at 16 kHz
START_LATE, STOP_LATE = 0.3, 0.4
TAIL = 0.6  # seconds of silence after each clip, so the stop has audio to arrive with

EXTRA_CLIPS: dict[str, str] = {
    "goforward.raw": "go forward ten meters",
    "cards/001.wav": "ten of clubs",
    "cards/002.wav": "four queen of clubs",
    "cards/003.wav": "seven of clubs",
    "cards/004.wav": "five five",
    "cards/005.wav": "eight of spades four of clubs seven of hearts",
}
"""Clips beyond the LibriVox ones in ``tests/speech.py``: path under TESTDATA -> reference."""
QUICK_CLIPS = ("librivox/sense_and_sensibility_01_austen_64kb-0880.wav", "goforward.raw", "cards/005.wav")

NUMBERS = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"),
    *("nineteen", "twenty"),
]


@dataclass(frozen=True)
class Engine:
    """One recogniser configuration to measure."""

    name: str
    type_name: str  # processors.stt.<module>:<Class>
    params: dict[str, Any] = field(default_factory=dict)


ENGINES = (
    Engine("whisper tiny.en", "whisper", {"model": "tiny.en"}),
    Engine("whisper base", "whisper", {"model": "base"}),
    Engine("pocketsphinx", "pocketsphinx", {"interim": True}),
    Engine("whisper tiny.en beam5", "whisper", {"model": "tiny.en", "beam_size": 5}),
    Engine("whisper base beam5", "whisper", {"model": "base", "beam_size": 5}),
    Engine("pocketsphinx 3-pass", "pocketsphinx", {"interim": True, "fwdflat": True, "bestpath": True}),
)
QUICK_ENGINES = ("whisper tiny.en", "whisper base", "pocketsphinx")


@dataclass
class Clip:
    name: str
    reference: str
    samples: np.ndarray[Any, Any]

    @property
    def seconds(self) -> float:
        return len(self.samples) / 16000


# --- clips -----------------------------------------------------------------------------------------


def load_clips(quick: bool) -> list[Clip]:
    sys.path.insert(0, str(ROOT))  # the LibriVox references live with the tests
    from tests.speech import LIBRIVOX

    texts = {f"librivox/{name}": text for name, text in LIBRIVOX.items()} | EXTRA_CLIPS
    clips = []
    for name, text in texts.items():
        if quick and name not in QUICK_CLIPS:
            continue
        path = TESTDATA / name
        if not path.exists():
            raise SystemExit(f"{path} is missing: apt-get install pocketsphinx-testdata (./setup.sh)")
        clips.append(Clip(name, text, read_audio(path)))
    return clips


def read_audio(path: Path) -> np.ndarray[Any, Any]:
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2")
    with wave.open(str(path), "rb") as file:
        if (file.getframerate(), file.getnchannels(), file.getsampwidth()) != (16000, 1, 2):
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit")
        return np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")


def speech_bounds(samples: np.ndarray[Any, Any], threshold_db: float = -35.0) -> tuple[float, float]:
    """First and last 10 ms with energy above ``threshold_db``: the true speech boundaries."""
    frames = samples[: len(samples) // 160 * 160].astype(np.float64).reshape(-1, 160)
    level = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) / 32768 + 1e-12)
    loud = np.flatnonzero(level > threshold_db)
    return loud[0] / 100, (loud[-1] + 1) / 100


def script_for(clip: Clip, realtime: bool) -> list[Any]:
    """The clip as 20 ms frames plus silence, with speaking frames where a VAD would send them."""
    from pipeline.frames import UserAudioFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame
    from pipeline.testing import Gap

    first, last = speech_bounds(clip.samples)
    audio = np.concatenate([clip.samples, np.zeros(int(TAIL * 16000), dtype="<i2")])
    marks = [
        (first + START_LATE, UserStartedSpeakingFrame(stream_time=first)),
        (last + STOP_LATE, UserStoppedSpeakingFrame(stream_time=last)),
    ]
    script: list[Any] = []
    for start in range(0, len(audio), FRAME):
        script.append(UserAudioFrame(pcm=audio[start : start + FRAME].tobytes()))
        if realtime:
            script.append(Gap(FRAME / 16000))
        while marks and marks[0][0] <= (start + FRAME) / 16000:
            script.append(marks.pop(0)[1])
    script.extend(frame for _, frame in marks)
    return script


# --- scoring ---------------------------------------------------------------------------------------


def normalise(text: str, numbers: bool = False) -> str:
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    if numbers:
        words = [NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in words]
    return " ".join(words)


def corpus_wer(references: list[str], hypotheses: list[str], numbers: bool = False) -> float:
    import jiwer

    refs = [normalise(r, numbers) for r in references]
    hyps = [normalise(h, numbers) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


def subset_wer(clips: list[Clip], hypotheses: list[str], librivox: bool) -> float:
    """WER (digits spelled out) over the LibriVox sentences, or over the short commands."""
    pairs = [(c.reference, h) for c, h in zip(clips, hypotheses, strict=True)]
    chosen = [
        (r, h) for (r, h), c in zip(pairs, clips, strict=True) if c.name.startswith("librivox/") == librivox
    ]
    if not chosen:
        return float("nan")
    return corpus_wer([r for r, _ in chosen], [h for _, h in chosen], numbers=True)


# --- running ---------------------------------------------------------------------------------------


def make_processor(engine: Engine, extra: dict[str, Any] | None = None) -> Any:
    params = engine.params | (extra or {})
    if engine.type_name == "whisper":
        from processors.stt.whisper import WhisperSTT

        return WhisperSTT(**params)
    from processors.stt.pocketsphinx import PocketsphinxSTT

    return PocketsphinxSTT(**params)


class TimedStart:
    """Wraps a processor's ``on_start`` to time it (model load + warm-up) and mark when it finished."""

    def __init__(self, processor: Any) -> None:
        self.seconds = 0.0
        self.cpu_after = 0.0  # process CPU time when on_start returned
        original = processor.on_start

        async def timed() -> None:
            started = time.perf_counter()
            await original()
            self.seconds = time.perf_counter() - started
            self.cpu_after = time.process_time()

        processor.on_start = timed


@dataclass
class Run:
    """One clip through one fresh node."""

    transcripts: list[str]
    interims: int
    processing: float  # seconds in the engine (the node's processing metric)
    ttfb: float  # stop arrival -> final transcript
    cpu: float  # process CPU seconds after on_start (all threads): robust to a busy machine
    load: float  # on_start seconds
    warm_up: float  # of which the warm-up inference (Whisper)


async def run_clip(engine: Engine, clip: Clip, realtime: bool) -> Run:
    from pipeline.frames import InterimTranscriptFrame
    from pipeline.processor import timings_of
    from pipeline.testing import run_processor

    processor = make_processor(engine)
    timer = TimedStart(processor)
    out = await run_processor(processor, script_for(clip, realtime), timeout=300)
    cpu = time.process_time() - timer.cpu_after
    if out.errors:
        raise SystemExit(f"{engine.name} failed on {clip.name}: {out.errors[0].message}")
    samples = timings_of(processor).samples
    return Run(
        transcripts=out.transcripts,
        interims=len(out.of(InterimTranscriptFrame)),
        processing=sum(samples.get("processing", [])),
        ttfb=max(samples.get("ttfb", [0.0])),
        cpu=cpu,
        load=timer.seconds,
        warm_up=sum(samples.get("warm_up", [])),
    )


async def run_all(
    engines: list[Engine], clips: list[Clip], realtime: bool, repeat: int
) -> list[dict[str, Any]]:
    """Every clip through every engine, ``repeat`` rounds, engines interleaved per clip so that load
    from elsewhere on the machine hits them alike; times are the best of the rounds."""
    runs: dict[tuple[str, str], list[Run]] = {(e.name, c.name): [] for e in engines for c in clips}
    for round_index in range(repeat):
        progress(f"round {round_index + 1}/{repeat}")
        for clip in clips:
            for engine in engines:
                run = await run_clip(engine, clip, realtime)
                runs[engine.name, clip.name].append(run)
                if round_index == 0:
                    said = " ".join(run.transcripts)
                    progress(f"  {engine.name:22} {clip.name:58} {said!r}")
    return [summarise(engine, clips, runs, realtime) for engine in engines]


def summarise(
    engine: Engine, clips: list[Clip], runs: dict[tuple[str, str], list[Run]], realtime: bool
) -> dict[str, Any]:
    rows = []
    for clip in clips:
        trials = runs[engine.name, clip.name]
        hypothesis = " ".join(trials[0].transcripts)
        row = {
            "bench": "clip",
            "engine": engine.name,
            "clip": clip.name,
            "reference": clip.reference,
            "hypothesis": hypothesis,
            "wer": round(corpus_wer([clip.reference], [hypothesis]), 4),
            "audio_s": round(clip.seconds, 3),
            "processing_s": round(min(t.processing for t in trials), 4),
            "cpu_s": round(min(t.cpu for t in trials), 4),
            "ttfb_s": round(min(t.ttfb for t in trials), 4),
            "interims": trials[0].interims,
            "rounds": len(trials),
        }
        row["rtf"] = round(row["processing_s"] / clip.seconds, 4)
        emit(row)
        rows.append(row)
    refs, hyps = [c.reference for c in clips], [r["hypothesis"] for r in rows]
    audio = sum(c.seconds for c in clips)
    summary = {
        "bench": "engine",
        "engine": engine.name,
        "params": engine.params,
        "clips": len(clips),
        "audio_s": round(audio, 2),
        "wer": round(corpus_wer(refs, hyps), 4),
        "wer_num": round(corpus_wer(refs, hyps, numbers=True), 4),
        "wer_num_librivox": round(subset_wer(clips, hyps, librivox=True), 4),
        "wer_num_commands": round(subset_wer(clips, hyps, librivox=False), 4),
        "rtf": round(sum(r["processing_s"] for r in rows) / audio, 4),
        "cpu_rtf": round(sum(r["cpu_s"] for r in rows) / audio, 4),
        "per_utterance_s": round(statistics.mean(r["processing_s"] for r in rows), 3),
        "ttfb_p50_s": round(statistics.median(r["ttfb_s"] for r in rows), 3),
        "ttfb_max_s": round(max(r["ttfb_s"] for r in rows), 3),
        "load_s": round(runs[engine.name, clips[0].name][0].load, 2),
        "realtime_input": realtime,
        "rounds": len(runs[engine.name, clips[0].name]),
    }
    emit(summary)
    return summary


async def probe_warm_up(model: str, warm_up: bool) -> dict[str, Any]:
    """In a fresh process: load the model, then time the first utterance and the best of two more."""
    clip = next(c for c in load_clips(quick=True) if "0880" in c.name)
    engine = Engine(f"whisper {model}", "whisper", {"model": model, "warm_up": warm_up})
    runs = [await run_clip(engine, clip, False) for _ in range(3)]
    return {
        "first_s": round(runs[0].processing, 3),
        "later_s": round(min(r.processing for r in runs[1:]), 3),
        "load_s": round(runs[0].load, 3),
        "warm_up_s": round(runs[0].warm_up, 3),
    }


def warm_up_effect(model: str, processes: int) -> dict[str, Any]:
    """Median over ``processes`` fresh processes per setting (a loaded model stays warm in a process)."""
    results: dict[str, Any] = {"bench": "warm_up", "engine": f"whisper {model}", "processes": processes}
    for warm_up in (False, True):
        command = [sys.executable, str(Path(__file__).resolve()), "--probe", model]
        if warm_up:
            command.append("--probe-warm")
        probes = []
        for _ in range(processes):
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, check=True)
            probes.append(json.loads(done.stdout.strip()))
        results["with_warm_up" if warm_up else "without_warm_up"] = {
            key: round(statistics.median(p[key] for p in probes), 3) for key in probes[0]
        }
    emit(results)
    return results


# --- output ----------------------------------------------------------------------------------------


def emit(record: dict[str, Any]) -> None:
    print(json.dumps({**record, "cpu_isa": cpu_isa()}, separators=(", ", ": ")), flush=True)


def cpu_isa() -> str:
    """Which CTranslate2 kernels Whisper ran on: its WER differs between them (tiny.en 6.2% with
    AVX2, 8.3% with AVX-512 on the same clips), so a figure is only comparable with it. "auto" is
    CTranslate2's own choice for this CPU."""
    return os.environ.get("CT2_FORCE_CPU_ISA", "auto")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(summaries: list[dict[str, Any]], warm: list[dict[str, Any]]) -> None:
    out = sys.stderr
    base = next((s for s in summaries if s["engine"] == "whisper tiny.en"), summaries[0])
    head = ("WER", "WER#", "#book", "#cmd", "xWER#", "RTF", "xRTF", "cpuRTF", "xCPU", "ttfb50", "load")
    print(f"\n{'engine':22}" + "".join(f"{h:>8}" for h in head), file=out)
    for s in summaries:
        cells = (
            f"{s['wer']:.1%}",
            f"{s['wer_num']:.1%}",
            f"{s['wer_num_librivox']:.1%}",
            f"{s['wer_num_commands']:.1%}",
            f"{s['wer_num'] / base['wer_num']:.2f}" if base["wer_num"] else "-",
            f"{s['rtf']:.3f}",
            f"{s['rtf'] / base['rtf']:.2f}",
            f"{s['cpu_rtf']:.3f}",
            f"{s['cpu_rtf'] / base['cpu_rtf']:.2f}",
            f"{s['ttfb_p50_s']:.2f}s",
            f"{s['load_s']:.1f}s",
        )
        print(f"{s['engine']:22}" + "".join(f"{c:>8}" for c in cells), file=out)
    print(
        "WER# spells out digits 0-20 (#book: LibriVox only, #cmd: goforward + cards); x = ratio to "
        f"{base['engine']}; RTF = engine wall time / audio, cpuRTF = process CPU (all threads) / audio; "
        f"{base['clips']} clips, {base['audio_s']:.1f} s of audio, best of "
        f"{summaries[0].get('rounds', 'the')} rounds; CTranslate2 CPU kernels: {cpu_isa()} "
        "(CT2_FORCE_CPU_ISA=AVX2 reproduces the README's figures on any x86 machine).",
        file=out,
    )
    for w in warm:
        cold, hot = w["without_warm_up"], w["with_warm_up"]
        print(
            f"{w['engine']}: first utterance {cold['first_s']:.2f}s without warm-up, later ones "
            f"{cold['later_s']:.2f}s; with a {hot['warm_up_s']:.2f}s warm-up at start: first "
            f"{hot['first_s']:.2f}s, later {hot['later_s']:.2f}s (medians of {w['processes']} processes)",
            file=out,
        )


async def main_async(args: argparse.Namespace) -> None:
    clips = load_clips(args.quick)
    wanted = args.engines.split(",") if args.engines else (QUICK_ENGINES if args.quick else None)
    engines = [e for e in ENGINES if wanted is None or e.name in wanted]
    summaries = await run_all(engines, clips, args.realtime, args.repeat or (1 if args.quick else 2))
    warm = []
    if not args.quick and not args.no_warm_up:
        for model in ("tiny.en", "base"):
            progress(f"warm-up effect, whisper {model} (fresh processes)")
            warm.append(warm_up_effect(model, args.warm_up_processes))
    table(summaries, warm)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/wer.py",
        description="WER and real-time factor of stt.whisper (tiny.en, base; beam 1 and 5) and "
        "stt.pocketsphinx on LibriVox, goforward and cards clips, each run through the real processor.",
        epilog="JSON lines go to stdout, progress and a table to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="3 clips, beam 1 only, no warm-up probe")
    parser.add_argument("--realtime", action="store_true", help="send audio at real-time pace (slower)")
    parser.add_argument("--engines", default="", help="comma-separated engine names (default: all)")
    parser.add_argument("--repeat", type=int, default=0, help="runs per clip, best time kept (default 2)")
    parser.add_argument(
        "--warm-up-processes", type=int, default=3, help="fresh processes per warm-up setting (median)"
    )
    parser.add_argument("--no-warm-up", action="store_true", help="skip the warm-up effect probe")
    parser.add_argument("--probe", default="", help=argparse.SUPPRESS)
    parser.add_argument("--probe-warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.probe:
        print(json.dumps(asyncio.run(probe_warm_up(args.probe, args.probe_warm))))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
