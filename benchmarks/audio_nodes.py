"""Processor cost: microseconds per 20 ms frame for the audio-path nodes, and a file pipeline's speed.

Each node sits on the 20 ms audio path of every call, so its cost per frame bounds how many calls a
core carries. Measured on real speech (the LibriVox clips of ``tests/speech.py``, concatenated):

* per node: N frames pushed as fast as the graph takes them through ``source -> node -> sink``, timed
  from the first frame sent to the graph's end (``on_stop`` included: the recorder's last flush is part
  of its cost), minus the same run with a pass-through node in its place; medians of ``--repeat`` runs
  interleaved with their baselines. Nodes: ``audio.resample`` 48k->16k (HQ and QQ), ``vad.webrtc``,
  ``vad.silero``, ``recorder`` (user audio only, and with a 22.05 kHz bot frame beside every user
  frame), ``file.output``.
* ``vad.silero`` with 1 and 50 streams: microseconds per 32 ms window when that many nodes (one per
  session) judge speech windows in turn, called directly, and the resident memory each added node
  costs. Many sessions' engines thrash the CPU caches unless they share one model.
* real-time factor of ``file.input -> audio.resample -> vad -> file.output`` on a ~60 s 48 kHz file,
  read as fast as possible: wall seconds per second of audio (lower is faster; 0.01 = 100x real time).

Run from the repo root: ``python benchmarks/audio_nodes.py`` (about 6 s on 2 cores),
``--quick`` for a ~1 s smoke run. JSON lines go to stdout, progress and a table to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from pipeline.frames import AudioFrame, BotAudioFrame, Direction, Frame, UserAudioFrame
from pipeline.graph import Graph
from pipeline.observers import Observer
from pipeline.processor import Processor, Source
from transports.file import FileInput, FileOutput

# The nodes and the speech helpers are imported where they are used: run as a file, this module's own
# name would shadow the ``processors`` package, and ``tests`` is not installed, until ``main`` puts the
# repo root on the path in place of this folder.

FRAME_SECONDS = 0.020
SPEECH_RATE = 16000  # the LibriVox clips' rate


@dataclass
class Config:
    """How much work each measurement does (``--quick`` shrinks everything)."""

    frames: int = 3000  # 20 ms frames per node run (60 s of audio)
    repeat: int = 3
    pipeline_seconds: float = 60.0  # length of the file the pipeline reads
    streams: tuple[int, ...] = (1, 50)  # concurrent vad.silero nodes
    stream_windows: int = 3000  # 32 ms windows judged per streams run, across all streams


# --- audio -------------------------------------------------------------------------------------------


def speech(seconds: float, rate: int) -> np.ndarray:
    """LibriVox clips back to back (repeated) until ``seconds`` long, at ``rate``, mono int16."""
    from tests.speech import LIBRIVOX, librivox, read_wav

    clips = [read_wav(librivox(name))[0] for name in LIBRIVOX]
    total = round(seconds * SPEECH_RATE)
    joined = np.concatenate(clips * (total // sum(map(len, clips)) + 1))[:total]
    if rate == SPEECH_RATE:
        return joined
    resampled: np.ndarray = soxr.resample(joined, SPEECH_RATE, rate)
    return resampled.astype(np.int16)


def frames_of(samples: np.ndarray, rate: int, cls: type[AudioFrame] = AudioFrame) -> list[Frame]:
    size = round(rate * FRAME_SECONDS)
    return [
        cls(pcm=samples[i : i + size].tobytes(), sample_rate=rate)
        for i in range(0, len(samples) - size + 1, size)
    ]


# --- one timed run -----------------------------------------------------------------------------------


class FrameSource(Source):
    """Sends prepared frames as fast as the graph takes them; notes when the first one went."""

    def __init__(self, frames: list[Frame]) -> None:
        super().__init__()
        self.frames = frames
        self.first_sent = 0.0

    async def generate(self) -> AsyncIterator[Frame]:
        self.first_sent = time.perf_counter()
        for frame in self.frames:
            yield frame


class Sink(Processor):
    """Swallows everything."""

    handles = (Frame,)

    async def process(self, frame: Frame) -> None:
        pass


class PassThrough(Processor):
    """The baseline: a node whose ``process`` only forwards audio (what a real node's frames go through)."""

    handles = (AudioFrame,)
    produces = (AudioFrame,)

    async def process(self, frame: Frame) -> None:
        await self.push(frame)


async def timed_run(node: Processor, frames: list[Frame]) -> float:
    """Seconds from the first frame sent until the graph ended (every ``on_stop`` done)."""
    source = FrameSource(frames)
    graph = Graph({"source": source, "node": node, "sink": Sink()}, [("source", "node"), ("node", "sink")])
    gc.collect()
    await graph.run()
    return time.perf_counter() - source.first_sent


@dataclass
class NodeBench:
    """One node to measure: how to build it, the frames it gets, and how many 20 ms frames they count as."""

    node: str
    variant: str
    build: Callable[[Path], Processor]
    frames: list[Frame]
    per: int  # frames in ``frames`` per counted 20 ms frame (2 when a bot frame rides along)


def node_benches(cfg: Config, scratch: Path) -> list[NodeBench]:
    from processors.recorder import Recorder
    from processors.resample import Resampler
    from processors.vad.silero import SileroVad
    from processors.vad.webrtc import WebRTCVad

    seconds = cfg.frames * FRAME_SECONDS
    at_16k = frames_of(speech(seconds, 16000), 16000, UserAudioFrame)  # what VADs and the recorder judge
    at_48k = frames_of(speech(seconds, 48000), 48000)
    bot = frames_of(speech(seconds, 22050), 22050, BotAudioFrame)
    both = [frame for pair in zip(at_16k, bot, strict=False) for frame in pair]
    counter = itertools.count()

    def recorder(_: Path) -> Processor:
        return Recorder(directory=str(scratch / "recordings"), session_id=f"run-{next(counter)}")

    return [
        NodeBench(
            "audio.resample", "48k->16k HQ", lambda _: Resampler(sample_rate=16000, quality="HQ"), at_48k, 1
        ),
        NodeBench(
            "audio.resample", "48k->16k QQ", lambda _: Resampler(sample_rate=16000, quality="QQ"), at_48k, 1
        ),
        NodeBench("vad.webrtc", "16k mode 3 30 ms", lambda _: WebRTCVad(aggressiveness=3), at_16k, 1),
        NodeBench("vad.silero", "16k", lambda _: SileroVad(), at_16k, 1),
        NodeBench("recorder", "user 16k", recorder, at_16k, 1),
        NodeBench("recorder", "user 16k + bot 22.05k", recorder, both, 2),
        NodeBench("file.output", "16k any", lambda d: FileOutput(path=str(d / "out.wav")), at_16k, 1),
    ]


async def measure_node(bench: NodeBench, cfg: Config, scratch: Path) -> dict[str, Any]:
    """Median node and baseline times over ``repeat`` interleaved runs, as microseconds per frame."""
    counted = len(bench.frames) // bench.per
    node_us: list[float] = []
    base_us: list[float] = []
    for rep in range(cfg.repeat):
        order = ("node", "base") if rep % 2 == 0 else ("base", "node")
        for which in order:
            if which == "node":
                node_us.append(await timed_run(bench.build(scratch), bench.frames) * 1e6 / counted)
            else:
                base_us.append(await timed_run(PassThrough(), bench.frames) * 1e6 / counted)
    node, base = statistics.median(node_us), statistics.median(base_us)
    return {
        "bench": "node",
        "node": bench.node,
        "variant": bench.variant,
        "us_per_frame": round(node - base, 2),
        "unit": "microseconds per 20 ms frame, pass-through baseline subtracted",
        "gross_us_per_frame": round(node, 2),
        "baseline_us_per_frame": round(base, 2),
        "frames": counted,
        "runs_us": [round(u, 2) for u in node_us],
        "runs_baseline_us": [round(u, 2) for u in base_us],
    }


# --- many silero streams -----------------------------------------------------------------------------


def resident_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 1e6


async def measure_silero_streams(streams: int, cfg: Config) -> dict[str, Any]:
    """Median microseconds per 32 ms window with ``streams`` vad.silero nodes judging windows in turn
    (each its own place in the speech), and the resident memory the started nodes added, per node."""
    from processors.vad.silero import SileroVad

    window = 512
    per_stream = max(cfg.stream_windows // streams, 20)
    samples = speech((per_stream + 40) * window / SPEECH_RATE + streams * 0.5, SPEECH_RATE)
    offsets = [round(i * 0.5 * SPEECH_RATE) for i in range(streams)]  # 0.5 s apart
    gc.collect()
    before = resident_mb()
    nodes = [SileroVad() for _ in range(streams)]
    for node in nodes:
        await node.on_start()
    added = resident_mb() - before
    windows = [
        [samples[o + i * window : o + (i + 1) * window].tobytes() for i in range(per_stream + 10)]
        for o in offsets
    ]
    for i in range(10):  # first runs allocate: not counted
        for node, own in zip(nodes, windows, strict=True):
            node.speech_probability(own[i], SPEECH_RATE)
    runs_us: list[float] = []
    for _ in range(cfg.repeat):
        began = time.perf_counter()
        for i in range(10, per_stream + 10):
            for node, own in zip(nodes, windows, strict=True):
                node.speech_probability(own[i], SPEECH_RATE)
        runs_us.append((time.perf_counter() - began) * 1e6 / (per_stream * streams))
    return {
        "bench": "silero_streams",
        "node": "vad.silero",
        "streams": streams,
        "us_per_window": round(statistics.median(runs_us), 2),
        "unit": "microseconds per 32 ms window at 16 kHz, streams judged in turn",
        "windows_per_stream": per_stream,
        "runs_us": [round(u, 2) for u in runs_us],
        "rss_mb_per_node": round(added / streams, 3),
    }


# --- the file pipeline -------------------------------------------------------------------------------


class FirstFrame(Observer):
    """Notes when ``source`` sent its first frame."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.at = 0.0

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if not self.at and source.name == self.source and isinstance(frame, AudioFrame):
            self.at = time.perf_counter()


async def measure_pipeline(vad: str, cfg: Config, scratch: Path, source: Path) -> dict[str, Any]:
    """Real-time factor of file.input -> audio.resample -> vad -> file.output over ``source``."""
    from processors.resample import Resampler
    from processors.vad.silero import SileroVad
    from processors.vad.webrtc import WebRTCVad

    walls: list[float] = []
    for rep in range(cfg.repeat):
        engine: Processor = WebRTCVad() if vad == "vad.webrtc" else SileroVad()
        nodes: dict[str, Processor] = {
            "mic": FileInput(path=str(source)),
            "resample": Resampler(sample_rate=16000),
            "vad": engine,
            "out": FileOutput(path=str(scratch / f"pipeline-{rep}.wav")),
        }
        first = FirstFrame("mic")
        graph = Graph(nodes, list(itertools.pairwise(nodes)), name="file-pipeline", observers=[first])
        gc.collect()
        await graph.run()  # models load and the file opens before the first frame: not counted
        walls.append(time.perf_counter() - first.at)
        with wave.open(str(scratch / f"pipeline-{rep}.wav"), "rb") as written:
            written_s = written.getnframes() / written.getframerate()
    wall = statistics.median(walls)
    return {
        "bench": "pipeline",
        "pipeline": f"file.input -> audio.resample -> {vad} -> file.output",
        "rtf": round(wall / cfg.pipeline_seconds, 5),
        "unit": "wall seconds per second of audio (48 kHz file read as fast as possible)",
        "audio_s": cfg.pipeline_seconds,
        "written_s": round(written_s, 3),  # what reached file.output: the whole file, at 16 kHz
        "wall_s": round(wall, 3),
        "runs_wall_s": [round(w, 3) for w in walls],
    }


# --- driver ------------------------------------------------------------------------------------------


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, separators=(", ", ": ")), flush=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def main_async(cfg: Config) -> None:
    began = time.perf_counter()
    nodes: list[dict[str, Any]] = []
    pipelines: list[dict[str, Any]] = []
    streams: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="voxgraph-bench-") as tmp:
        scratch = Path(tmp)
        progress(f"nodes: {cfg.frames} frames of real speech per run, medians of {cfg.repeat}")
        for bench in node_benches(cfg, scratch):
            result = await measure_node(bench, cfg, scratch)
            progress(f"  {bench.node:<15} {bench.variant:<22} {result['us_per_frame']:>8.1f} us/frame")
            emit(result)
            nodes.append(result)
        progress(f"vad.silero streams: {cfg.stream_windows} windows judged in turn, medians of {cfg.repeat}")
        for count in cfg.streams:
            result = await measure_silero_streams(count, cfg)
            progress(
                f"  {count:>3} streams {result['us_per_window']:>8.1f} us/window"
                f" {result['rss_mb_per_node']:>7.2f} MB/node"
            )
            emit(result)
            streams.append(result)
        from tests.speech import write_wav

        source = write_wav(scratch / "speech-48k.wav", speech(cfg.pipeline_seconds, 48000), 48000)
        progress(f"pipeline: {cfg.pipeline_seconds:g} s of 48 kHz speech from a WAV file")
        for vad in ("vad.webrtc", "vad.silero"):
            result = await measure_pipeline(vad, cfg, scratch, source)
            progress(f"  {vad}: {result['wall_s']:.2f} s wall, RTF {result['rtf']:.4f}")
            emit(result)
            pipelines.append(result)
    print_table(nodes, pipelines, streams, time.perf_counter() - began, cfg)


def print_table(
    nodes: list[dict[str, Any]],
    pipelines: list[dict[str, Any]],
    streams: list[dict[str, Any]],
    seconds: float,
    cfg: Config,
) -> None:
    out = sys.stderr
    print(f"\n{'node':<16}{'variant':<24}{'us/frame':>10}{'gross':>10}{'baseline':>10}", file=out)
    for r in nodes:
        print(
            f"{r['node']:<16}{r['variant']:<24}{r['us_per_frame']:>10.1f}"
            f"{r['gross_us_per_frame']:>10.1f}{r['baseline_us_per_frame']:>10.1f}",
            file=out,
        )
    print(f"\n{'vad.silero streams':<20}{'us/window':>10}{'MB/node':>10}", file=out)
    for r in streams:
        print(f"{r['streams']:<20}{r['us_per_window']:>10.1f}{r['rss_mb_per_node']:>10.2f}", file=out)
    print(f"\n{'pipeline':<60}{'RTF':>8}{'x real time':>13}", file=out)
    for r in pipelines:
        print(f"{r['pipeline']:<60}{r['rtf']:>8.4f}{1 / r['rtf']:>12.0f}x", file=out)
    print(f"total {seconds:.1f} s, medians of {cfg.repeat} run(s)", file=out)


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/audio_nodes.py",
        description=(
            "Cost of the audio-path nodes in microseconds per 20 ms frame of real speech (a node run minus a "
            "pass-through run, frames sent as fast as the graph takes them, on_stop included), and the "
            "real-time factor of file.input -> audio.resample -> vad -> file.output on a 48 kHz file."
        ),
        epilog="JSON lines go to stdout, progress and a table to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 s smoke run (less audio, one repeat)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="take medians of K runs (default 3, --quick 1)"
    )
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg.frames = 500
        cfg.pipeline_seconds = 20.0
        cfg.repeat = 1
        cfg.stream_windows = 500
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        cfg.repeat = args.repeat
    return cfg


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(here.parent), *(p for p in sys.path if Path(p or ".").resolve() != here)]
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
