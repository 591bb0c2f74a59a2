"""Runtime overhead: what a Voxgraph hop costs next to a bare ``asyncio.Queue`` hop.

Every stage in a voice pipeline sits on the 20 ms audio path, so the runtime's own cost per hop
decides how many calls one process can carry. This compares, in one run and interleaved so machine
noise hits both, chains of N pass-through stages built three ways:

* ``voxgraph``: a ``Graph`` of a ``Source``, N ``Processor`` subclasses whose ``process`` does
  ``await self.push(frame)`` (the user-code path) and a sink processor;
* ``auto``: the same with ``handles = ()``, so the runtime forwards frames without calling ``process``;
* ``raw``: N tasks doing ``x = await qin.get(); await qout.put(x)`` over ``asyncio.Queue(maxsize=64)``.

All three are fed the same 20 ms 16 kHz mono frames (640-byte ``AudioFrame``) by the same generators.

* burst: frames/s from first to last frame at the sink; per-hop cost is the least-squares slope of
  1/throughput against N. Bounded queues let each stage drain a batch per wake-up, so this is the
  cheapest a hop gets.
* paced: latency (sink arrival - ``frame.created``) of frames sent once a millisecond through an idle
  chain: every hop wakes a task, which is what a live 20 ms stream pays.
* realtime: the most concurrent 5-stage pipelines, each sending a frame every 20 ms at its own phase,
  that keep p99 lag (arrival - scheduled send) <= 20 ms and lose nothing. Searched by doubling then
  bisection; a trial that fails on the tail alone (median lag fine) is run once more, since noise from
  elsewhere on the machine only ever slows a run. Also reports CPU per pipeline-frame at capacity.

Run from the repo root: ``python benchmarks/overhead.py`` (about 85 s on 2 cores, medians of 3),
``--quick`` for a ~20 s smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.frames import AudioFrame, Frame, UserAudioFrame
from pipeline.graph import Graph
from pipeline.processor import Processor, Source

PCM = bytes(640)  # 20 ms of 16 kHz mono s16le
PERIOD = 0.020  # real-time frame period, seconds
RAW_QUEUE_SIZE = 64  # same bound as a processor's default inbox
IMPLS = ("voxgraph", "raw", "auto")
TARGET_HOP_RATIO = 2.0  # per-hop cost within 2x of the raw chain
TARGET_PIPELINES = 125  # real-time 5-stage pipelines per process
REALTIME_STAGES = 5
LAG_LIMIT_NS = 20_000_000  # p99 lag allowed for a pipeline to count as real time


@dataclass
class Config:
    """How much work each measurement does (``--quick`` shrinks everything)."""

    sizes: tuple[int, ...] = (1, 5, 10, 20)
    burst_frames: int = 12_000
    paced_frames: int = 400
    paced_interval: float = 0.001
    paced_warmup: int = 20
    realtime_seconds: float = 1.5
    realtime_warmup: int = 5
    realtime_trials: int = 10
    realtime_later_trials: int = 5
    realtime_start: int = 64
    realtime_impls: tuple[str, ...] = ("voxgraph", "raw")
    repeat: int = 3
    freeze_gc: bool = False


# --- frames: one set of generators feeds every implementation ---------------------------------------


class Clock:
    """A shared start line, so K paced streams can begin together after all are built."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.base = 0.0  # loop time of the start line
        self.cpu_seconds = 0.0  # process CPU time from the start line until every sink was done

    def start(self, delay: float = 0.02) -> None:
        self.base = asyncio.get_running_loop().time() + delay
        self.go.set()


async def burst_frames(count: int) -> AsyncIterator[Frame]:
    """``count`` frames as fast as the chain takes them."""
    for _ in range(count):
        yield UserAudioFrame(pcm=PCM)


async def paced_frames(count: int, interval: float, clock: Clock, offset: float) -> AsyncIterator[Frame]:
    """One frame per ``interval`` on a drift-free schedule from the loop clock; late frames go at once."""
    await clock.go.wait()
    loop = asyncio.get_running_loop()
    first = clock.base + offset
    for index in range(count):
        delay = first + index * interval - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        yield UserAudioFrame(pcm=PCM)


class Recorder:
    """What the sink saw: arrival and creation times (monotonic ns), in order."""

    __slots__ = ("arrivals", "created", "expected", "on_done")

    def __init__(self, expected: int, on_done: Callable[[], None]) -> None:
        self.expected = expected
        self.on_done = on_done
        self.arrivals: list[int] = []
        self.created: list[int] = []

    def arrive(self, frame: Frame) -> None:
        self.arrivals.append(time.monotonic_ns())
        self.created.append(frame.created)
        if len(self.arrivals) == self.expected:
            self.on_done()


class Countdown:
    """Sets ``done`` once ``count`` recorders have everything they expected."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()

    def tick(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


# --- the chains ------------------------------------------------------------------------------------


class FrameSource(Source):
    """Sends whatever the shared generator yields."""

    def __init__(self, frames: AsyncIterator[Frame]) -> None:
        super().__init__()
        self._frames = frames

    def generate(self) -> AsyncIterator[Frame]:
        return self._frames


class PassThrough(Processor):
    """User code that forwards every frame: the path a real processor's frames take."""

    async def process(self, frame: Frame) -> None:
        await self.push(frame)


class AutoPassThrough(Processor):
    """Handles nothing, so the runtime forwards frames without calling ``process``."""

    handles = ()


class RecordingSink(Processor):
    """Consumes audio and notes when it arrived."""

    handles = (AudioFrame,)

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    async def process(self, frame: Frame) -> None:
        self._recorder.arrive(frame)


class Chain:
    """One running chain of some implementation: ``start`` it, then ``close`` it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class VoxgraphChain(Chain):
    def __init__(self, stages: int, frames: AsyncIterator[Frame], recorder: Recorder, auto: bool) -> None:
        stage = AutoPassThrough if auto else PassThrough
        nodes: dict[str, Processor] = {"source": FrameSource(frames)}
        nodes.update({f"p{i}": stage() for i in range(stages)})
        nodes["sink"] = RecordingSink(recorder)
        names = list(nodes)
        self.graph = Graph(nodes, list(itertools.pairwise(names)), name="bench")
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.graph.run())

    async def close(self) -> None:
        task = self.task
        if task is None:
            return
        if not task.done() and not await self.graph.wait(1.0):
            await self.graph.cancel()
        await asyncio.wait({task}, timeout=5.0)


class RawChain(Chain):
    def __init__(self, stages: int, frames: AsyncIterator[Frame], recorder: Recorder) -> None:
        self.queues: list[asyncio.Queue[Frame]] = [
            asyncio.Queue(maxsize=RAW_QUEUE_SIZE) for _ in range(stages + 1)
        ]
        self.stages = stages
        self.frames = frames
        self.recorder = recorder
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        queues = self.queues
        self.tasks.append(loop.create_task(raw_sink(queues[-1], self.recorder)))
        for i in reversed(range(self.stages)):
            self.tasks.append(loop.create_task(raw_relay(queues[i], queues[i + 1])))
        self.tasks.append(loop.create_task(raw_source(self.frames, queues[0])))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks)


async def raw_source(frames: AsyncIterator[Frame], qout: asyncio.Queue[Frame]) -> None:
    async for frame in frames:
        await qout.put(frame)


async def raw_relay(qin: asyncio.Queue[Frame], qout: asyncio.Queue[Frame]) -> None:
    while True:
        x = await qin.get()
        await qout.put(x)


async def raw_sink(qin: asyncio.Queue[Frame], recorder: Recorder) -> None:
    arrive = recorder.arrive
    while True:
        arrive(await qin.get())


def build_chain(impl: str, stages: int, frames: AsyncIterator[Frame], recorder: Recorder) -> Chain:
    if impl == "raw":
        return RawChain(stages, frames, recorder)
    return VoxgraphChain(stages, frames, recorder, auto=impl == "auto")


async def run_chains(
    chains: list[Chain], countdown: Countdown, clock: Clock, timeout: float, freeze_gc: bool = False
) -> bool:
    """Start every chain, open the clock, wait for every sink (False on timeout), tear down.

    ``freeze_gc`` moves everything built so far out of the collector's reach, as a long-running
    server would after building its graphs, so full collections stop scanning them.
    """
    try:
        for chain in chains:
            await chain.start()
        await asyncio.sleep(0)
        if freeze_gc:
            gc.freeze()
        clock.start()
        began = time.process_time()
        try:
            await asyncio.wait_for(countdown.done.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            clock.cpu_seconds = time.process_time() - began
        return True
    finally:
        await asyncio.gather(*(chain.close() for chain in chains))
        if freeze_gc:
            gc.unfreeze()


# --- the three measurements --------------------------------------------------------------------------


async def burst(impl: str, stages: int, cfg: Config) -> dict[str, Any]:
    """Frames/s from the first to the last frame at the sink, source sending as fast as it can."""
    countdown = Countdown(1)
    recorder = Recorder(cfg.burst_frames, countdown.tick)
    chain = build_chain(impl, stages, burst_frames(cfg.burst_frames), recorder)
    finished = await run_chains([chain], countdown, Clock(), 60.0, cfg.freeze_gc)
    arrivals = recorder.arrivals
    if not finished or len(arrivals) < 2:
        raise RuntimeError(
            f"burst {impl} n={stages}: only {len(arrivals)} of {cfg.burst_frames} frames arrived"
        )
    seconds = (arrivals[-1] - arrivals[0]) / 1e9
    fps = (len(arrivals) - 1) / seconds
    return {"fps": fps, "us_per_frame": 1e6 / fps, "frames": len(arrivals)}


async def paced(impl: str, stages: int, cfg: Config) -> dict[str, Any]:
    """Latency (sink arrival - frame creation) of frames sent one per interval through an idle chain."""
    countdown = Countdown(1)
    recorder = Recorder(cfg.paced_frames, countdown.tick)
    clock = Clock()
    frames = paced_frames(cfg.paced_frames, cfg.paced_interval, clock, 0.0)
    chain = build_chain(impl, stages, frames, recorder)
    budget = cfg.paced_frames * cfg.paced_interval * 3 + 5.0
    if not await run_chains([chain], countdown, clock, budget, cfg.freeze_gc):
        raise RuntimeError(f"paced {impl} n={stages}: {len(recorder.arrivals)} of {cfg.paced_frames} arrived")
    pairs = list(zip(recorder.arrivals, recorder.created, strict=True))[cfg.paced_warmup :]
    latencies = sorted((a - c) / 1000 for a, c in pairs)
    return {
        "p50_us": percentile(latencies, 50),
        "p99_us": percentile(latencies, 99),
        "frames": len(latencies),
    }


async def realtime_trial(impl: str, pipelines: int, cfg: Config) -> dict[str, Any]:
    """K concurrent 5-stage pipelines, each pacing a frame every 20 ms at its own phase of the period."""
    frames_each = round(cfg.realtime_seconds / PERIOD)
    countdown = Countdown(pipelines)
    clock = Clock()
    recorders: list[Recorder] = []
    chains: list[Chain] = []
    offsets = [PERIOD * k / pipelines for k in range(pipelines)]
    for offset in offsets:
        recorder = Recorder(frames_each, countdown.tick)
        frames = paced_frames(frames_each, PERIOD, clock, offset)
        recorders.append(recorder)
        chains.append(build_chain(impl, REALTIME_STAGES, frames, recorder))
    # Frames not at their sink a quarter second after the last one was due count as lost.
    timeout = 0.02 + cfg.realtime_seconds + 0.25
    began = time.perf_counter()
    await run_chains(chains, countdown, clock, timeout, cfg.freeze_gc)
    wall = time.perf_counter() - began
    lags: list[float] = []
    lost = 0
    for recorder, offset in zip(recorders, offsets, strict=True):
        first_ns = (clock.base + offset) * 1e9
        arrivals = recorder.arrivals
        lost += frames_each - len(arrivals)
        lags.extend(
            (arrivals[i] - (first_ns + i * PERIOD * 1e9)) / 1e6
            for i in range(cfg.realtime_warmup, len(arrivals))
        )
    lags.sort()
    arrived = frames_each * pipelines - lost
    cpu_us = clock.cpu_seconds * 1e6 / arrived if arrived else math.inf
    p99 = percentile(lags, 99) if lags else math.inf
    ok = lost == 0 and p99 <= LAG_LIMIT_NS / 1e6
    return {
        "k": pipelines,
        "ok": ok,
        "p50_lag_ms": percentile(lags, 50) if lags else math.inf,
        "p99_lag_ms": p99,
        "lost": lost,
        "cpu_us_per_frame": cpu_us,
        "wall_s": round(wall, 2),
    }


class CapacitySearch:
    """Largest K that keeps real time: grow (or shrink) by ``factor`` until the verdict flips, then bisect.

    The first search doubles from a small K; later repeats start at the previous answer with a small
    factor, which brackets the capacity in a few trials.
    """

    def __init__(self, start: int, factor: float, trials: int) -> None:
        self.factor = factor
        self.lo = 0  # largest K seen in real time
        self.lo_cpu_us = math.inf  # CPU per pipeline-frame in the trial that set ``lo``
        self.hi: int | None = None  # smallest K seen falling behind
        self.next_k: int | None = start
        self.trials_left = trials

    def report(self, k: int, ok: bool, cpu_us: float) -> None:
        self.trials_left -= 1
        if ok:
            if k > self.lo:
                self.lo, self.lo_cpu_us = k, cpu_us
        else:
            self.hi = k if self.hi is None else min(self.hi, k)
        self.next_k = self._choose(k)

    def _choose(self, last: int) -> int | None:
        if self.trials_left <= 0:
            return None
        if self.hi is None:
            return max(last + 1, round(last * self.factor))
        if self.lo == 0:
            return max(1, round(self.hi / self.factor)) if self.hi > 1 else None
        if self.hi - self.lo <= max(2, self.lo // 20):
            return None
        return (self.lo + self.hi) // 2


# --- statistics ------------------------------------------------------------------------------------


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return b, my - b * mx


# --- driver ------------------------------------------------------------------------------------------


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, separators=(", ", ": ")), flush=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fresh() -> None:
    """Start each run with no garbage from the previous one."""
    gc.collect()


def rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) and math.isfinite(v) else v for k, v in values.items()}


async def measure_series(
    name: str,
    run: Callable[[str, int, Config], Awaitable[dict[str, Any]]],
    cfg: Config,
    impls: tuple[str, ...],
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every (impl, n) ``repeat`` times, rotating the impl order so drift and noise hit all of them."""
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rep in range(cfg.repeat):
        for stages in cfg.sizes:
            shift = (rep + stages) % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                fresh()
                result = await run(impl, stages, cfg)
                results.setdefault((impl, stages), []).append(result)
            line = "  ".join(f"{impl}={summary_value(name, results[(impl, stages)][-1])}" for impl in impls)
            progress(f"  {name} rep {rep + 1}/{cfg.repeat} n={stages:<2}  {line}")
    return results


def summary_value(name: str, result: dict[str, Any]) -> str:
    if name == "burst":
        return f"{result['fps']:,.0f} f/s"
    return f"p50 {result['p50_us']:.0f}us p99 {result['p99_us']:.0f}us"


def medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in keys}


async def realtime_capacity(cfg: Config) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Capacity and CPU per pipeline-frame at capacity, per impl and repeat; searches step in turn."""
    capacities: dict[str, list[int]] = {impl: [] for impl in cfg.realtime_impls}
    cpu_at_capacity: dict[str, list[float]] = {impl: [] for impl in cfg.realtime_impls}
    for rep in range(cfg.repeat):
        searches = {
            impl: CapacitySearch(cfg.realtime_start, 2.0, cfg.realtime_trials)
            if rep == 0
            else CapacitySearch(
                round(statistics.median(capacities[impl])) or 1, 1.25, cfg.realtime_later_trials
            )
            for impl in cfg.realtime_impls
        }
        while any(s.next_k is not None for s in searches.values()):
            for impl, search in searches.items():
                k = search.next_k
                if k is None:
                    continue
                result = await logged_trial(impl, k, cfg, rep)
                if marginal(result) and search.trials_left > 1:
                    # Noise only ever slows a run down, so a near miss gets a second chance.
                    search.trials_left -= 1
                    result = await logged_trial(impl, k, cfg, rep)
                search.report(k, result["ok"], result["cpu_us_per_frame"])
        for impl, search in searches.items():
            capacities[impl].append(search.lo)
            cpu_at_capacity[impl].append(search.lo_cpu_us)
            progress(f"  realtime rep {rep + 1}: {impl} keeps {search.lo} pipelines in real time")
    return capacities, cpu_at_capacity


def marginal(result: dict[str, Any]) -> bool:
    """Failed on the tail only: a stall from elsewhere on the machine looks just like this."""
    return not result["ok"] and result["lost"] == 0 and result["p50_lag_ms"] <= LAG_LIMIT_NS / 1e6


async def logged_trial(impl: str, k: int, cfg: Config, rep: int) -> dict[str, Any]:
    fresh()
    result = await realtime_trial(impl, k, cfg)
    verdict = "real time" if result["ok"] else "near miss" if marginal(result) else "FALLS BEHIND"
    progress(
        f"  realtime rep {rep + 1}/{cfg.repeat} {impl:<8} K={k:<5} p50 lag {result['p50_lag_ms']:.2f} ms, "
        f"p99 {result['p99_lag_ms']:.2f} ms, lost {result['lost']}: {verdict}"
    )
    emit({"bench": "realtime_trial", "impl": impl, "n": REALTIME_STAGES, "rep": rep + 1, **rounded(result)})
    return result


async def main_async(cfg: Config, benches: set[str]) -> None:
    began = time.perf_counter()
    burst_results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    paced_results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    capacities: dict[str, list[int]] = {}
    cpu_at_capacity: dict[str, list[float]] = {}
    if "burst" in benches:
        progress(f"burst: {cfg.burst_frames} frames per run, n={list(cfg.sizes)}")
        burst_results = await measure_series("burst", burst, cfg, IMPLS)
    if "paced" in benches:
        progress(f"paced: {cfg.paced_frames} frames every {cfg.paced_interval * 1000:g} ms per run")
        paced_results = await measure_series("paced", paced, cfg, IMPLS)
    if "realtime" in benches:
        progress(f"realtime: {cfg.realtime_seconds:g} s trials of K {REALTIME_STAGES}-stage pipelines")
        capacities, cpu_at_capacity = await realtime_capacity(cfg)

    table: list[str] = []
    per_hop: dict[str, float] = {}
    for impl in IMPLS:
        for stages in cfg.sizes:
            row: dict[str, Any] = {}
            if (impl, stages) in burst_results:
                runs = burst_results[(impl, stages)]
                row["fps"] = medians(runs, ("fps",))["fps"]
                row["us_per_frame"] = 1e6 / row["fps"]
                emit(
                    {
                        "bench": "burst",
                        "impl": impl,
                        "n": stages,
                        **rounded(row),
                        "runs_fps": [round(r["fps"]) for r in runs],
                    }
                )
            if (impl, stages) in paced_results:
                runs = paced_results[(impl, stages)]
                lat = medians(runs, ("p50_us", "p99_us"))
                row.update(lat)
                emit(
                    {
                        "bench": "paced",
                        "impl": impl,
                        "n": stages,
                        **rounded(lat),
                        "runs_p50_us": [round(r["p50_us"], 1) for r in runs],
                    }
                )
            if row:
                table.append(table_row(impl, stages, row))
    summaries: dict[str, dict[str, Any]] = {}
    for impl in IMPLS:
        summary: dict[str, Any] = {}
        if burst_results:
            xs = [float(n) for n in cfg.sizes]
            ys = [1e6 / statistics.median(r["fps"] for r in burst_results[(impl, n)]) for n in cfg.sizes]
            summary["per_hop_us"], summary["fixed_us"] = slope(xs, ys)
            per_hop[impl] = summary["per_hop_us"]
        if paced_results:
            ys = [statistics.median(r["p50_us"] for r in paced_results[(impl, n)]) for n in cfg.sizes]
            summary["latency_per_hop_us"], _ = slope([float(n) for n in cfg.sizes], ys)
        if impl in capacities:
            summary["realtime_pipelines"] = statistics.median(capacities[impl])
            summary["runs_realtime_pipelines"] = capacities[impl]
            summary["cpu_us_per_frame_at_capacity"] = statistics.median(cpu_at_capacity[impl])
        if summary:
            summaries[impl] = summary
            emit({"bench": "summary", "impl": impl, "n": list(cfg.sizes), **rounded(summary)})
    ratio: dict[str, Any] = {}
    if "voxgraph" in per_hop and "raw" in per_hop:
        ratio["per_hop_ratio"] = per_hop["voxgraph"] / per_hop["raw"]
        ratio["auto_per_hop_ratio"] = per_hop["auto"] / per_hop["raw"]
        ratio["per_hop_target"] = TARGET_HOP_RATIO
        ratio["per_hop_ok"] = ratio["per_hop_ratio"] <= TARGET_HOP_RATIO
    if "latency_per_hop_us" in summaries.get("raw", {}):
        lat = summaries["voxgraph"]["latency_per_hop_us"] / summaries["raw"]["latency_per_hop_us"]
        ratio["latency_per_hop_ratio"] = lat
    if "voxgraph" in capacities and "raw" in capacities:
        vox = summaries["voxgraph"]["realtime_pipelines"]
        raw = summaries["raw"]["realtime_pipelines"]
        ratio["realtime_ratio"] = vox / raw if raw else math.inf
        ratio["cpu_per_frame_ratio"] = (
            summaries["voxgraph"]["cpu_us_per_frame_at_capacity"]
            / summaries["raw"]["cpu_us_per_frame_at_capacity"]
        )
        ratio["realtime_target"] = TARGET_PIPELINES
        ratio["realtime_ok"] = vox >= TARGET_PIPELINES
    ratio["repeat"] = cfg.repeat
    ratio["freeze_gc"] = cfg.freeze_gc
    ratio["seconds"] = time.perf_counter() - began
    emit({"bench": "summary", "impl": "voxgraph/raw", **rounded(ratio)})

    print_table(table, summaries, ratio)


def table_row(impl: str, stages: int, row: dict[str, Any]) -> str:
    fps = f"{row['fps']:>10,.0f}" if "fps" in row else f"{'-':>10}"
    upf = f"{row['us_per_frame']:>8.2f}" if "us_per_frame" in row else f"{'-':>8}"
    p50 = f"{row['p50_us']:>8.1f}" if "p50_us" in row else f"{'-':>8}"
    p99 = f"{row['p99_us']:>8.1f}" if "p99_us" in row else f"{'-':>8}"
    return f"{impl:<9}{stages:>3}  {fps}  {upf}  {p50}  {p99}"


def print_table(table: list[str], summaries: dict[str, dict[str, Any]], ratio: dict[str, Any]) -> None:
    out = sys.stderr
    print(f"\n{'impl':<9}{'n':>3}  {'frames/s':>10}  {'us/frame':>8}  {'p50 us':>8}  {'p99 us':>8}", file=out)
    for line in table or ["(no burst or paced runs)"]:
        print(line, file=out)
    header = f"{'per-hop us':>10}  {'fixed us':>8}  {'lat/hop us':>10}  "
    header += f"{'RT pipelines':>12}  {'RT cpu us/frame':>15}"
    print(f"\n{'impl':<9}  {header}", file=out)
    for impl, s in summaries.items():
        hop = f"{s['per_hop_us']:>10.2f}" if "per_hop_us" in s else f"{'-':>10}"
        fixed = f"{s['fixed_us']:>8.2f}" if "fixed_us" in s else f"{'-':>8}"
        lat = f"{s['latency_per_hop_us']:>10.2f}" if "latency_per_hop_us" in s else f"{'-':>10}"
        rt = f"{s['realtime_pipelines']:>12g}" if "realtime_pipelines" in s else f"{'-':>12}"
        cpu = s.get("cpu_us_per_frame_at_capacity")
        rt += f"  {cpu:>15.1f}" if cpu is not None else f"  {'-':>15}"
        print(f"{impl:<9}  {hop}  {fixed}  {lat}  {rt}", file=out)
    if "per_hop_ratio" in ratio:
        verdict = "ok" if ratio["per_hop_ok"] else "MISSED"
        print(
            f"\nper-hop cost voxgraph/raw: {ratio['per_hop_ratio']:.2f}x (target <= {TARGET_HOP_RATIO:g}x: "
            f"{verdict}); auto/raw: {ratio['auto_per_hop_ratio']:.2f}x",
            file=out,
        )
    if "latency_per_hop_ratio" in ratio:
        print(
            f"latency per hop (one frame in flight) voxgraph/raw: {ratio['latency_per_hop_ratio']:.2f}x",
            file=out,
        )
    if "realtime_ratio" in ratio:
        verdict = "ok" if ratio["realtime_ok"] else "MISSED"
        print(
            f"real-time pipelines voxgraph/raw: {ratio['realtime_ratio']:.2f}x (voxgraph target >= "
            f"{TARGET_PIPELINES}: {verdict}); CPU per pipeline-frame voxgraph/raw: "
            f"{ratio['cpu_per_frame_ratio']:.2f}x",
            file=out,
        )
    print(f"total {ratio['seconds']:.1f} s, medians of {ratio['repeat']} run(s)", file=out)


def parse_args(argv: list[str] | None) -> tuple[Config, set[str]]:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/overhead.py",
        description=(
            "Runtime overhead of Voxgraph against a raw asyncio-queue chain, on chains of N pass-through "
            "stages fed 20 ms 16 kHz mono audio frames. Measures (1) burst throughput in frames/s, first to "
            "last frame at the sink; (2) paced latency p50/p99 in microseconds, sink arrival minus frame "
            "creation, frames sent one per millisecond; (3) real-time capacity: the most concurrent "
            "5-stage pipelines, each sending a frame every 20 ms at its own phase, that keep p99 lag "
            "(arrival minus scheduled send) <= 20 ms with no frame lost, and the CPU per pipeline-frame "
            "there. Per-hop cost is the least-squares slope of 1/throughput against N. "
            "'voxgraph' runs Processor.process -> push, 'auto' lets the "
            "runtime forward (handles = ()), 'raw' is N tasks over asyncio.Queue(maxsize=64)."
        ),
        epilog="JSON lines go to stdout, progress and a table to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run (less work, one repeat)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="take medians of K runs (default 3, --quick 1)"
    )
    parser.add_argument(
        "--only",
        default="burst,paced,realtime",
        help="comma-separated subset of burst,paced,realtime (default: all)",
    )
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="gc.freeze() once each run's chains are built (as a server would after building its graphs)",
    )
    parser.add_argument("--sizes", default="1,5,10,20", help="chain lengths N (default 1,5,10,20)")
    args = parser.parse_args(argv)
    cfg = Config(sizes=tuple(int(n) for n in args.sizes.split(",")), freeze_gc=args.freeze_gc)
    if len(cfg.sizes) < 2:
        parser.error("--sizes needs at least two chain lengths to fit a per-hop slope")
    if args.quick:
        cfg.burst_frames = 4000
        cfg.paced_frames = 200
        cfg.realtime_seconds = 1.0
        cfg.realtime_trials = 6
        cfg.realtime_start = 128
        cfg.repeat = 1
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        cfg.repeat = args.repeat
    benches = {b.strip() for b in args.only.split(",") if b.strip()}
    unknown = benches - {"burst", "paced", "realtime"}
    if unknown:
        parser.error(f"unknown bench {', '.join(sorted(unknown))}; choose from burst, paced, realtime")
    return cfg, benches


def main(argv: list[str] | None = None) -> None:
    cfg, benches = parse_args(argv)
    asyncio.run(main_async(cfg, benches))


if __name__ == "__main__":
    main()
