"""Speech recognition over a phone line: the clips of ``benchmarks/wer.py`` through G.711 at 8 kHz.

On a call the caller's voice reaches the graph as 8 kHz G.711: narrowband, then 8-bit companded. The
transport decodes it and the graph's ``audio.resample`` brings it to the 16 kHz a recogniser takes.
Each clip goes through one of these paths before the real ``stt.whisper`` node reads it:

* ``pcm16k``: the clip as recorded (a browser's path: 16 kHz PCM);
* ``pcm8k``: 16k -> 8k -> 16k without a codec (what the bandwidth alone costs);
* ``ulaw8k``: 16k -> 8k -> µ-law -> decoded -> 16k (a Twilio call, PCMU);
* ``alaw8k``: the same with A-law (PCMA carriers);
* ``ulaw8k-noisy``: ``ulaw8k`` with white noise on the line 20 dB below the speech (-45 dBFS RMS).

The carrier's side resamples the whole clip (``pipeline.resampling``, HQ) and encodes it with
``pipeline.g711``; the graph's side is the ``audio.resample`` node itself fed 20 ms (160-sample) frames,
as negotiation inserts it after an 8 kHz input. WER is scored as in ``benchmarks/wer.py`` (its clips,
VAD placement, normalisation and engines are reused, not copied), so the figures compare with it. The
clips hold 96 words: one word more or less moves a WER by ~1%, so read small ratios as noise.

Also measured (``--vad``, on by default): ``vad.silero`` on the same paths with the assistant's timings,
at several thresholds, the 8 kHz paths judged at 8 kHz (Silero takes 8 kHz, so a phone graph needs no
resampler before its VAD). Per path and threshold: clips with speech found, segments per clip (1 is
right: every clip is one sentence), and how far the detected start and end are from the true ones.

Run from the repo root: ``python benchmarks/phone_wer.py`` (~2 min on 2 cores) or ``--quick`` (~30 s).
JSON lines on stdout, progress and tables on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.wer import (
    ENGINES,
    TAIL,
    Clip,
    corpus_wer,
    emit,
    load_clips,
    progress,
    run_clip,
    speech_bounds,
    subset_wer,
)
from pipeline import g711
from pipeline.resampling import Int16Resampler

WIDEBAND, PHONE_RATE = 16000, 8000
PHONE_FRAME = 160  # 20 ms at 8 kHz: one carrier media message
PHONE_ENGINES = ("whisper tiny.en", "whisper base")
VAD_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
ERROR_KEYS = ("start_error_mean_s", "start_error_max_s", "stop_error_mean_s", "stop_error_max_s")
LINE_NOISE_DBFS = -45.0  # ~20 dB below the clips' speech (about -24 dBFS RMS): a noisy but usable line
VAD_TIMINGS = {"start_secs": 0.15, "stop_secs": 0.4, "pause_secs": 0.15}  # configs/assistant.yaml's


@dataclass(frozen=True)
class Line:
    """One way a clip reaches the graph."""

    name: str
    codec: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None  # None: stays 16 kHz PCM
    noise_dbfs: float | None = None  # white noise on the line before the codec, RMS level


def _ulaw(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return g711.ulaw_decode_array(g711.ulaw_encode_array(samples))


def _alaw(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return g711.alaw_decode_array(g711.alaw_encode_array(samples))


def _no_codec(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return samples


PATHS = (
    Line("pcm16k", None),
    Line("pcm8k", _no_codec),
    Line("ulaw8k", _ulaw),
    Line("alaw8k", _alaw),
    Line("ulaw8k-noisy", _ulaw, noise_dbfs=LINE_NOISE_DBFS),
)


# --- the line ----------------------------------------------------------------------------------------


def narrowband(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A 16 kHz clip at the phone network's 8 kHz."""
    down = Int16Resampler(WIDEBAND, PHONE_RATE, 1)
    narrow = np.concatenate([down.resample(samples.reshape(-1, 1)), down.flush()]).reshape(-1)
    return narrow.astype(np.int16)


def with_noise(samples: np.ndarray[Any, Any], dbfs: float, seed: int) -> np.ndarray[Any, Any]:
    """``samples`` plus reproducible white noise at ``dbfs`` RMS, continuing ``TAIL`` s past the end
    (the silence a VAD needs to end the turn is noisy too)."""
    padded = np.concatenate([samples, np.zeros(int(TAIL * PHONE_RATE), dtype=np.int16)])
    noise = np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (dbfs / 20), len(padded))
    noisy: np.ndarray[Any, Any] = np.clip(np.rint(padded + noise), -32768, 32767).astype(np.int16)
    return noisy


async def graph_side(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The ``audio.resample`` node taking 8 kHz 20 ms frames to 16 kHz, as in a phone graph."""
    from pipeline.frames import UserAudioFrame
    from pipeline.testing import run_processor
    from processors.resample import Resampler

    frames = [
        UserAudioFrame(pcm=samples[i : i + PHONE_FRAME].tobytes(), sample_rate=PHONE_RATE)
        for i in range(0, len(samples), PHONE_FRAME)
    ]
    out = await run_processor(Resampler(sample_rate=WIDEBAND), frames, timeout=60)
    out.raise_errors()
    return np.frombuffer(out.audio, dtype="<i2")


async def through(clip: Clip, path: Line) -> tuple[Clip, np.ndarray[Any, Any] | None]:
    """The clip as the recogniser receives it (16 kHz), and the 8 kHz audio the VAD would judge."""
    if path.codec is None:
        return clip, None
    narrow = narrowband(clip.samples)
    if path.noise_dbfs is not None:
        narrow = with_noise(narrow, path.noise_dbfs, seed=len(clip.samples))
    narrow = path.codec(narrow)
    return Clip(clip.name, clip.reference, await graph_side(narrow)), narrow


def snr_db(clean: np.ndarray[Any, Any], received: np.ndarray[Any, Any]) -> float:
    """Signal-to-noise of ``received`` against ``clean`` (same rate; lengths trimmed to the shorter)."""
    n = min(len(clean), len(received))
    signal = clean[:n].astype(np.float64)
    noise = signal - received[:n].astype(np.float64)
    return float(10 * np.log10((signal**2).sum() / max((noise**2).sum(), 1e-9)))


# --- recognition -------------------------------------------------------------------------------------


async def measure_wer(
    engines: list[Any], paths: dict[str, list[Clip]], originals: list[Clip]
) -> list[dict[str, Any]]:
    """Every clip of every path through every engine; one summary per engine and path."""
    summaries = []
    for engine in engines:
        baseline: float | None = None
        for path_name, clips in paths.items():
            hypotheses = []
            for clip in clips:
                run = await run_clip(engine, clip, realtime=False)
                said = " ".join(run.transcripts)
                hypotheses.append(said)
                progress(f"  {engine.name:16} {path_name:7} {clip.name:58} {said!r}")
                emit(
                    {
                        "bench": "phone_clip",
                        "engine": engine.name,
                        "path": path_name,
                        "clip": clip.name,
                        "reference": clip.reference,
                        "hypothesis": said,
                        "wer": round(corpus_wer([clip.reference], [said]), 4),
                    }
                )
            refs = [c.reference for c in clips]
            wer_num = corpus_wer(refs, hypotheses, numbers=True)
            baseline = wer_num if baseline is None else baseline
            summary = {
                "bench": "phone_wer",
                "engine": engine.name,
                "path": path_name,
                "clips": len(clips),
                "audio_s": round(sum(c.seconds for c in originals), 2),
                "wer": round(corpus_wer(refs, hypotheses), 4),
                "wer_num": round(wer_num, 4),
                "wer_num_librivox": round(subset_wer(clips, hypotheses, librivox=True), 4),
                "wer_num_commands": round(subset_wer(clips, hypotheses, librivox=False), 4),
                "wer_num_ratio_to_pcm16k": round(wer_num / baseline, 3) if baseline else None,
            }
            emit(summary)
            summaries.append(summary)
    return summaries


# --- voice activity ----------------------------------------------------------------------------------


@dataclass
class Detection:
    segments: list[tuple[float, float | None]]  # (start, stop) stream times; stop None if never ended


async def detect(samples: np.ndarray[Any, Any], rate: int, threshold: float) -> Detection:
    """``vad.silero`` over ``samples`` (plus the benchmark's silent tail) in 20 ms frames."""
    from pipeline.frames import UserAudioFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame
    from pipeline.testing import run_processor
    from processors.vad.silero import SileroVad

    audio = np.concatenate([samples, np.zeros(int(TAIL * rate), dtype="<i2")])
    step = rate // 50
    frames = [
        UserAudioFrame(pcm=audio[i : i + step].tobytes(), sample_rate=rate)
        for i in range(0, len(audio), step)
    ]
    out = await run_processor(SileroVad(threshold=threshold, **VAD_TIMINGS), frames, timeout=60)
    out.raise_errors()
    starts = [f.stream_time for f in out.of(UserStartedSpeakingFrame)]
    stops = [f.stream_time for f in out.of(UserStoppedSpeakingFrame)]
    segments = [(s, stops[i] if i < len(stops) else None) for i, s in enumerate(starts)]
    return Detection(segments)


async def measure_vad(
    originals: list[Clip], narrow: dict[str, list[np.ndarray[Any, Any] | None]]
) -> list[dict[str, Any]]:
    """Silero's cuts per path and threshold against each clip's true speech boundaries."""
    truth = [speech_bounds(c.samples) for c in originals]
    rows = []
    for path_name, audio in narrow.items():
        for threshold in VAD_THRESHOLDS:
            found, counts = 0, []
            start_errors: list[float] = []
            stop_errors: list[float] = []
            for clip, samples, (first, last) in zip(originals, audio, truth, strict=True):
                rate = WIDEBAND if samples is None else PHONE_RATE
                detection = await detect(clip.samples if samples is None else samples, rate, threshold)
                counts.append(len(detection.segments))
                if not detection.segments:
                    continue
                found += 1
                start_errors.append(detection.segments[0][0] - first)
                stop = detection.segments[-1][1]
                if stop is not None:
                    stop_errors.append(stop - last)
            row = {
                "bench": "phone_vad",
                "path": path_name,
                "rate": WIDEBAND if audio[0] is None else PHONE_RATE,
                "threshold": threshold,
                **VAD_TIMINGS,
                "clips": len(originals),
                "clips_with_speech": found,
                "segments_per_clip": round(statistics.mean(counts), 2),
                "split_clips": sum(1 for c in counts if c > 1),
                **boundary_errors("start", start_errors),
                **boundary_errors("stop", stop_errors),
            }
            emit(row)
            rows.append(row)
    return rows


def boundary_errors(which: str, errors: list[float]) -> dict[str, float | None]:
    """Mean and largest (by size, with its sign) of detected - true boundary times, in seconds."""
    if not errors:
        return {f"{which}_error_mean_s": None, f"{which}_error_max_s": None}
    largest = max(errors, key=lambda error: abs(error))
    return {
        f"{which}_error_mean_s": round(statistics.mean(errors), 3),
        f"{which}_error_max_s": round(largest, 3),
    }


# --- output ------------------------------------------------------------------------------------------


def wer_table(summaries: list[dict[str, Any]]) -> None:
    out = sys.stderr
    head = ("WER", "WER#", "#book", "#cmd", "xWER#")
    print(f"\n{'engine':16}{'path':>13}" + "".join(f"{h:>8}" for h in head), file=out)
    for s in summaries:
        ratio = s["wer_num_ratio_to_pcm16k"]
        cells = (
            f"{s['wer']:.1%}",
            f"{s['wer_num']:.1%}",
            f"{s['wer_num_librivox']:.1%}",
            f"{s['wer_num_commands']:.1%}",
            f"{ratio:.2f}" if ratio is not None else "-",
        )
        print(f"{s['engine']:16}{s['path']:>13}" + "".join(f"{c:>8}" for c in cells), file=out)
    print(
        "WER# spells out digits 0-20 (#book: LibriVox, #cmd: goforward + cards); xWER# = ratio to the same "
        "engine on pcm16k.",
        file=out,
    )


def vad_table(rows: list[dict[str, Any]]) -> None:
    out = sys.stderr
    head = ("found", "seg/clip", "split", "start", "start^", "stop", "stop^")
    print(f"\n{'path':13}{'rate':>6}{'thr':>5}" + "".join(f"{h:>9}" for h in head), file=out)
    for r in rows:
        cells = (
            f"{r['clips_with_speech']}/{r['clips']}",
            f"{r['segments_per_clip']:.2f}",
            str(r["split_clips"]),
            *(
                f"{r[key]:+.3f}" if r[key] is not None else "-"
                for key in (
                    "start_error_mean_s",
                    "start_error_max_s",
                    "stop_error_mean_s",
                    "stop_error_max_s",
                )
            ),
        )
        row = f"{r['path']:13}{r['rate']:>6}{r['threshold']:>5}" + "".join(f"{c:>9}" for c in cells)
        print(row, file=out)
    print(
        "vad.silero with start/stop/pause 0.15/0.4/0.15 s; start/stop = mean detected - true boundary (s), "
        "^ = the largest; split = clips cut into more than one segment.",
        file=out,
    )


async def main_async(args: argparse.Namespace) -> None:
    originals = load_clips(args.quick)
    wanted = args.engines.split(",") if args.engines else list(PHONE_ENGINES)
    engines = [e for e in ENGINES if e.name in wanted]
    paths: dict[str, list[Clip]] = {}
    narrow: dict[str, list[np.ndarray[Any, Any] | None]] = {}
    for path in PATHS:
        received = [await through(clip, path) for clip in originals]
        paths[path.name] = [clip for clip, _ in received]
        narrow[path.name] = [audio for _, audio in received]
        if path.codec not in (None, _no_codec) and path.noise_dbfs is None:
            # The codec's own noise, at 8 kHz: what it adds to the narrowband signal.
            bands = [narrowband(clip.samples) for clip in originals]
            snrs = [snr_db(band, path.codec(band)) for band in bands]
            emit(
                {
                    "bench": "phone_codec_snr",
                    "path": path.name,
                    "snr_db_mean": round(statistics.mean(snrs), 2),
                }
            )
    summaries = await measure_wer(engines, paths, originals) if engines else []
    vad_rows = await measure_vad(originals, narrow) if args.vad else []
    if summaries:
        wer_table(summaries)
    if vad_rows:
        vad_table(vad_rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/phone_wer.py",
        description="WER of stt.whisper (tiny.en, base) on the clips of benchmarks/wer.py through 8 kHz "
        "G.711 (µ-law, A-law) and 8 kHz PCM vs 16 kHz PCM, and vad.silero's cuts on the same audio.",
        epilog="JSON lines go to stdout, progress and tables to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="3 clips")
    parser.add_argument(
        "--engines",
        default="",
        help=f"comma-separated engines of benchmarks/wer.py (default: {','.join(PHONE_ENGINES)})",
    )
    parser.add_argument("--no-vad", dest="vad", action="store_false", help="skip the VAD measurement")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
