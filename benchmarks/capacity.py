"""Capacity: how many real-time conversations one server process holds, and whether its memory creeps.

The server runs as its own process (``python -m pipeline run``) with ``max_sessions`` raised and
admission relaxed, so the benchmark measures instead of being refused. Two graphs:

* ``cloud``: ``websocket.input → vad.silero → stt.assemblyai → turn.taking → llm.openai → tts.openai →
  recorder → websocket.output``, the providers being local fakes in this process (test keys). The
  server is pinned to one core (``--server-cores``) and this process to the others: the figure is per
  core.
* ``offline``: ``configs/assistant.yaml`` (Silero, Whisper, llama.cpp, Piper), on every core.

Each client streams real speech in 20 ms frames on the clock, with silence between turns
(``benchmarks/capacity_load.py``). Per session count, over ``--duration`` seconds after every client
joined and ``--warmup`` passed:

* ``path``: audio-path latency, per chunk the recogniser fake received, from the client sending the
  frame that completed it (chunks are 50 ms: the wait for a chunk to fill is not counted); ``added``
  is the same percentile minus the smallest session count's (cloud only);
* ``turn``: end of the user's clip → first bot audio at the client;
* the server's CPU per session (``/proc/PID/stat``) and RSS; its ``/health`` loop lag and worst
  session backlog; ``behind`` when the backlog or the path latency grew during the window;
* ``client_late``: how late this process sent its frames (if high, the load generator saturated and
  the figures say more about it than about the server).

``--profile-at N`` records a py-spy profile of the server at those session counts.
``--soak SECONDS`` instead holds ``--soak-sessions`` cloud sessions (one conversation each for the
whole run, or a new one every ``--soak-turns`` turns) and samples the server's RSS every 10 s; the RSS
slope after ``--soak-warmup`` is fitted by least squares, in MB per 10 minutes.

Admission is relaxed with ``--set`` overrides (``RELAXED``); its CPU test is held off by a long
``load_window`` (it judges CPU only after a quarter of the window), because the server counts the
whole machine's CPU — this load generator's core too. Sessions that reconnect after that quarter
(120 s / 4) may then be refused on a busy machine: ``refusals`` in the output says so.

Run from the repo root: ``python benchmarks/capacity.py --graph cloud`` (~5 min), ``--graph offline``,
``--soak 1800``. JSON lines on stdout (``--output FILE`` also writes one JSON document), a table on
stderr. On a shared machine the absolute figures are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.capacity_load import Client, TimedAssemblyAI
from benchmarks.capacity_server import ServerProcess, profile
from benchmarks.voice_to_voice import CLIPS
from pipeline.capacity import machine_cpu_times
from pipeline.metrics import percentile
from tests.fakes.openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = ROOT / "configs" / "assistant.yaml"
CLOUD = """\
name: capacity-cloud
description: "Cloud-shaped assistant against local fakes (benchmarks/capacity.py)"
server: {type: websocket, host: "${HOST}", port: "${PORT}"}
settings: {auto_resample: true, end_timeout: 5.0}
nodes:
  mic: {type: websocket.input}
  vad: {type: "${VAD}"}
  stt: {type: stt.assemblyai, api_key: "${ASSEMBLYAI_API_KEY}", api_host: "${ASSEMBLYAI_API_HOST}"}
  turns: {type: turn.taking}
  llm: {type: llm.openai, api_key: "${OPENAI_API_KEY}", base_url: "${OPENAI_BASE_URL}", max_tokens: 60}
  tts: {type: tts.openai, api_key: "${OPENAI_API_KEY}", base_url: "${OPENAI_BASE_URL}"}
  recorder: {type: recorder, directory: "${RECORDINGS}"}
  speaker: {type: websocket.output}
edges:
  - mic -> vad -> stt -> turns -> llm -> tts -> recorder -> speaker
"""
RELAXED = [
    "server.max_sessions=1000",
    "server.max_cpu=1.0",
    "server.max_loop_lag=1000",
    "server.max_session_lag=1000",
    "server.idle_timeout=0",
    "server.load_window=120",  # CPU is not judged until 30 s of readings: every client has joined by then
]
PRIMER = 0xFFFF
"""Session index of the priming client (never timed)."""
REPLY = "Sure. That is a fine question, and here is a short answer to it."
BEHIND_LAG_S = 0.5
"""A session backlog beyond this, or growing during the window, means the server fell behind."""


def read_clip(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes())


def stats_ms(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * percentile(ordered, 99), 2),
        "max_ms": round(1000 * ordered[-1], 2),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


class Bench:
    """The fakes (for the cloud graph), the clips, and how to start a server of either graph."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.clients: dict[int, Client] = {}
        self.clips = [read_clip(c) for c in CLIPS]
        self.stt: TimedAssemblyAI | None = None
        self.llm: FakeOpenAI | None = None

    async def open(self, stack: AsyncExitStack) -> None:
        if self.args.graph == "cloud" or self.args.soak:
            self.stt = await stack.enter_async_context(TimedAssemblyAI(self.clients))
            self.llm = await stack.enter_async_context(FakeOpenAI(reply=REPLY, seconds_per_char=0.02))

    def server(self) -> ServerProcess:
        cloud = self.args.graph == "cloud" or bool(self.args.soak)
        recordings = tempfile.mkdtemp(dir=self.tmp)
        env = {"RECORDINGS": recordings, "VAD": self.args.vad}
        config = OFFLINE
        if cloud:
            assert self.stt is not None and self.llm is not None
            config = self.tmp / "capacity-cloud.yaml"
            config.write_text(CLOUD)
            env |= {
                "ASSEMBLYAI_API_KEY": self.stt.api_key,
                "ASSEMBLYAI_API_HOST": self.stt.ws_url,
                "OPENAI_API_KEY": self.llm.api_key,
                "OPENAI_BASE_URL": self.llm.base_url,
            }
        cores = server_cores(self.args.server_cores) if cloud else None
        return ServerProcess(config, env, RELAXED + self.args.set, cores)

    def new_clients(self, count: int, first: int = 0) -> list[Client]:
        made = [Client(first + i, self.clips, (1.0, 2.5), self.args.listen) for i in range(count)]
        self.clients.update({c.index: c for c in made})
        return made

    def prune(self) -> None:
        if self.stt is not None:
            self.stt.prune()
        if self.llm is not None:
            self.llm.requests.clear()


def server_cores(spec: str) -> set[int] | None:
    if spec == "all":
        return None
    return {int(c) for c in spec.split(",")}


async def join(
    clients: Sequence[Client], http: aiohttp.ClientSession, url: str, stop: asyncio.Event, interval: float
) -> list[asyncio.Task[None]]:
    """Connect ``clients`` ``interval`` seconds apart; each talks until ``stop``."""
    tasks = []
    for client in clients:
        tasks.append(asyncio.create_task(client.converse(http, url, 0, stop)))
        await asyncio.sleep(interval)
    return tasks


async def run_step(bench: Bench, count: int) -> dict[str, Any]:
    """One session count: start a server, join ``count`` clients, measure a window, stop everything."""
    args = bench.args
    server = bench.server()
    stop, watching = asyncio.Event(), asyncio.Event()
    try:
        await server.wait_serving()
        await prime(bench, server)
        watcher = asyncio.create_task(server.watch(watching))
        clients = bench.new_clients(count)
        async with aiohttp.ClientSession() as http:
            tasks = await join(
                clients, http, server.base.replace("http", "ws") + "ws", stop, args.join_interval
            )
            await asyncio.sleep(args.warmup)
            start, cpu0, machine0 = time.monotonic(), server.cpu_seconds(), machine_cpu_times()
            for client in clients:
                del client.late[:]
            if bench.stt is not None:
                bench.stt.paths.clear()
            server.health.clear()
            spy = (
                asyncio.create_task(profile(server.pid, args.duration)) if count in args.profile_at else None
            )
            await asyncio.sleep(args.duration)
            end, cpu1, rss = time.monotonic(), server.cpu_seconds(), server.rss_mb()
            report = measure(bench, clients, server, (start, end), cpu1 - cpu0, rss)
            report["machine_busy"] = busy_share(machine0, machine_cpu_times())
            if spy is not None:
                report["profile"] = await spy
            stop.set()
            await asyncio.wait(tasks, timeout=30)
        watching.set()
        await watcher
    finally:
        stop.set()
        server.stop()
        bench.clients.clear()
        bench.prune()
    return report


def busy_share(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Share of all cores busy between two ``/proc/stat`` readings (other work on the machine included)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


async def prime(bench: Bench, server: ServerProcess) -> None:
    """One short conversation first: what the server loads on a first turn is not in the figures."""
    client = Client(PRIMER, [min(bench.clips, key=len)], (0.2, 0.2), 1.0)
    async with aiohttp.ClientSession() as http:
        await asyncio.wait_for(
            client.converse(http, server.base.replace("http", "ws") + "ws", 1, asyncio.Event()), 120
        )


def measure(
    bench: Bench,
    clients: Sequence[Client],
    server: ServerProcess,
    window: tuple[float, float],
    cpu: float,
    rss: float,
) -> dict[str, Any]:
    start, end = window
    seconds = end - start
    turns = [
        latency
        for c in clients
        for ended, latency in zip(c.turns.ended, c.turns.latency, strict=True)
        if start <= ended <= end
    ]
    paths = bench.stt.paths if bench.stt is not None else None
    third = seconds / 3
    early = paths.between(start, start + third) if paths else []
    late = paths.between(end - third, end) if paths else []
    growth = statistics.median(late) - statistics.median(early) if early and late else 0.0
    lags = server.health.session_lag_s
    backlog_growth = (lags[-1] - lags[0]) if len(lags) >= 2 else 0.0
    behind = max(lags, default=0.0) > BEHIND_LAG_S or backlog_growth > 0.2 or growth > 0.05
    sessions = len([c for c in clients if not c.refusal])
    return {
        "benchmark": "capacity",
        "graph": bench.args.graph,
        "vad": bench.args.vad if bench.args.graph == "cloud" else None,
        "sessions": len(clients),
        "admitted": sessions,
        "window_s": round(seconds, 1),
        "path": stats_ms(paths.between(start, end)) if paths else None,
        "path_untagged": paths.untagged if paths else None,
        "path_growth_ms": round(1000 * growth, 2),
        "turn": stats_ms(turns),
        "unanswered": sum(c.turns.unanswered for c in clients),
        "server_cpu_cores": round(cpu / seconds, 3),
        "cpu_per_session_ms_per_s": round(1000 * cpu / seconds / max(1, sessions), 2),
        "rss_mb": round(rss, 1),
        "loop_lag_ms_max": max(server.health.loop_lag_ms, default=None),
        "session_lag_s_max": max(lags, default=None),  # the server's: audio backlog, or turn latency growth
        "behind": behind,
        "client_late": stats_ms([v for c in clients for v in c.late]),
        "client_errors": sorted({e for c in clients for e in c.errors})[:5],
        "refusals": sorted({c.refusal for c in clients if c.refusal})[:5],
    }


def headline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's figures: added path latency per count (vs the smallest count), and the most sessions
    that kept up — cloud: added path p99 <= 20 ms and not behind; offline: every turn answered, turn p50
    within 1.5x the smallest count's (its models are shared, so turns queue before audio does)."""
    cloud = steps[0]["graph"] == "cloud"
    base_path, base_turn = steps[0].get("path") or {}, steps[0]["turn"]
    added: dict[str, dict[str, float]] = {}
    best = None
    for step in steps:
        path, turn = step.get("path") or {}, step["turn"]
        if path.get("count") and base_path.get("count"):
            added[str(step["sessions"])] = {
                "p50_ms": round(path["p50_ms"] - base_path["p50_ms"], 2),
                "p99_ms": round(path["p99_ms"] - base_path["p99_ms"], 2),
            }
        if cloud:
            ok = added.get(str(step["sessions"]), {}).get("p99_ms", 1e9) <= 20.0 and not step["behind"]
        else:
            ok = not step["unanswered"] and bool(turn.get("count") and base_turn.get("count"))
            ok = ok and turn["p50_ms"] <= 1.5 * base_turn["p50_ms"]
        if not ok:
            break
        best = step["sessions"]
    rss = slope([s["sessions"] for s in steps], [s["rss_mb"] for s in steps])
    return {
        "benchmark": "capacity",
        "graph": steps[0]["graph"],
        "summary": True,
        "max_sessions_ok": best,
        "criterion": "added path p99 <= 20 ms and not behind"
        if cloud
        else "every turn answered, turn p50 <= 1.5x the smallest count's",
        "path_added": added,
        "rss_mb_per_session": round(rss, 3) if rss is not None else None,
        "cpu_per_session_ms_per_s": {str(st["sessions"]): st["cpu_per_session_ms_per_s"] for st in steps},
    }


async def soak(bench: Bench) -> dict[str, Any]:
    """Hold ``--soak-sessions`` sessions for ``--soak`` seconds; RSS every 10 s; its slope after warm-up."""
    args = bench.args
    server = bench.server()
    stop, watching = asyncio.Event(), asyncio.Event()
    samples: list[dict[str, Any]] = []
    try:
        await server.wait_serving()
        watcher = asyncio.create_task(server.watch(watching))
        url = server.base.replace("http", "ws") + "ws"
        async with aiohttp.ClientSession() as http:
            seats = [asyncio.create_task(seat(bench, i, http, url, stop)) for i in range(args.soak_sessions)]
            began, cpu0, machine = time.monotonic(), server.cpu_seconds(), machine_cpu_times()
            while (elapsed := time.monotonic() - began) < args.soak:
                await asyncio.sleep(10.0)
                samples.append(soak_sample(bench, server, elapsed + 10.0, began, cpu0))
                samples[-1]["machine_busy"] = busy_share(machine, machine := machine_cpu_times())
                bench.prune()
                if len(samples) % 6 == 0:
                    print(f"[capacity] soak {samples[-1]}", file=sys.stderr, flush=True)
            stop.set()
            await asyncio.wait(seats, timeout=60)
        watching.set()
        await watcher
    finally:
        stop.set()
        server.stop()
    after = [s for s in samples if s["t_s"] >= args.soak_warmup]
    fitted = slope([s["t_s"] for s in after], [s["rss_mb"] for s in after])
    return {
        "benchmark": "capacity",
        "mode": "soak",
        "sessions": args.soak_sessions,
        "seconds": args.soak,
        "warmup_s": args.soak_warmup,
        "rss_slope_mb_per_10min": round(fitted * 600, 2) if fitted is not None else None,
        "rss_mb_first_after_warmup": after[0]["rss_mb"] if after else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "samples": samples,
    }


async def seat(
    bench: Bench, seat_index: int, http: aiohttp.ClientSession, url: str, stop: asyncio.Event
) -> None:
    """One place in the soak: a conversation of ``--soak-turns`` turns, then a new one, until ``stop``."""
    await asyncio.sleep(seat_index * bench.args.join_interval)
    generation = 0
    while not stop.is_set():
        client = bench.new_clients(1, seat_index + 1000 * generation)[0]
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await client.converse(http, url, bench.args.soak_turns, stop)
        bench.clients.pop(client.index, None)
        generation = (generation + 1) % 60


def soak_sample(bench: Bench, server: ServerProcess, t: float, began: float, cpu0: float) -> dict[str, Any]:
    """RSS now; the last 10 s of path latency, turns and backlog."""
    now = time.monotonic()
    paths = bench.stt.paths.between(now - 10.0, now) if bench.stt is not None else []
    if bench.stt is not None:
        bench.stt.paths.clear()
    turns = [
        v
        for c in bench.clients.values()
        for e, v in zip(c.turns.ended, c.turns.latency, strict=True)
        if e >= now - 10.0
    ]
    lags = server.health.session_lag_s[-10:]
    return {
        "t_s": round(t),
        "rss_mb": round(server.rss_mb(), 1),
        "cpu_cores": round((server.cpu_seconds() - cpu0) / (now - began), 3),
        "path_p99_ms": stats_ms(paths).get("p99_ms"),
        "turn_p50_ms": stats_ms(turns).get("p50_ms"),
        "backlog_s_max": max(lags, default=None),
    }


def emit(record: dict[str, Any], collected: list[dict[str, Any]]) -> None:
    collected.append(record)
    print(json.dumps(record), flush=True)


def table(steps: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(
        f"{'sessions':>8}{'path p50':>10}{'p99':>8}{'added p99':>11}{'turn p50':>10}{'p99':>8}"
        f"{'cpu/sess ms/s':>15}{'rss MB':>8}{'lag ms':>8}{'behind':>8}{'client p99':>12}",
        file=sys.stderr,
    )
    for s in steps:
        path, turn = s.get("path") or {}, s["turn"]
        added = summary["path_added"].get(str(s["sessions"]), {})
        print(
            f"{s['sessions']:>8}{path.get('p50_ms', '-'):>10}{path.get('p99_ms', '-'):>8}"
            f"{added.get('p99_ms', '-'):>11}{turn.get('p50_ms', '-'):>10}"
            f"{turn.get('p99_ms', '-'):>8}{s['cpu_per_session_ms_per_s']:>15}{s['rss_mb']:>8}"
            f"{s['loop_lag_ms_max'] or 0:>8}{s['behind']!s:>8}{s['client_late'].get('p99_ms', '-'):>12}",
            file=sys.stderr,
        )
    print(
        f"max sessions ({summary['criterion']}): {summary['max_sessions_ok']}; "
        f"RSS per session {summary['rss_mb_per_session']} MB",
        file=sys.stderr,
    )


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: run ./setup.sh (it installs pocketsphinx-testdata)")
    if args.client_cores != "all":
        os.sched_setaffinity(0, server_cores(args.client_cores) or set())
    collected: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            bench = Bench(args, Path(tmp))
            await bench.open(stack)
            if args.soak:
                print(f"[capacity] soak: {args.soak_sessions} sessions, {args.soak:g} s", file=sys.stderr)
                result = await soak(bench)
                emit(result, collected)
                print(
                    f"RSS slope after warm-up: {result['rss_slope_mb_per_10min']} MB / 10 min",
                    file=sys.stderr,
                )
                return collected
            steps = []
            for count in args.sessions:
                print(f"[capacity] {args.graph}: {count} sessions…", file=sys.stderr, flush=True)
                steps.append(await run_step(bench, count))
                emit(steps[-1], collected)
            summary = headline(steps)
            emit(summary, collected)
            table(steps, summary)
    return collected


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graph", choices=("cloud", "offline"), default="cloud")
    parser.add_argument(
        "--sessions",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="session counts of the sweep (default 1,10,25,50,100,150 cloud; 1,2,3,4 offline)",
    )
    parser.add_argument(
        "--vad", choices=("vad.silero", "vad.webrtc"), default="vad.silero", help="cloud graph's VAD"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per step")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after every client joined")
    parser.add_argument("--join-interval", type=float, default=0.05, help="seconds between clients joining")
    parser.add_argument("--listen", type=float, default=3.0, help="most seconds of each reply listened to")
    parser.add_argument("--server-cores", default="0", help="cores the cloud server is pinned to ('all')")
    parser.add_argument("--client-cores", default="1", help="cores this process is pinned to ('all')")
    parser.add_argument("--profile-at", type=lambda s: [int(v) for v in s.split(",")], default=[],
                        help="session counts at which to py-spy the server")  # fmt: skip
    parser.add_argument("--soak", type=float, default=0.0, help="soak mode: seconds of steady load")
    parser.add_argument("--soak-sessions", type=int, default=20)
    parser.add_argument(
        "--soak-turns", type=int, default=0, help="turns before a soak session reconnects (0: never)"
    )
    parser.add_argument("--soak-warmup", type=float, default=120.0, help="seconds left out of the RSS fit")
    parser.add_argument("--output", type=Path, help="also write every record as one JSON document here")
    parser.add_argument("--set", action="append", default=[], help="a config override for the server")
    args = parser.parse_args()
    offline = args.graph == "offline"
    args.sessions = args.sessions or ([1, 2, 3, 4] if offline else [1, 10, 25, 50, 100, 150])
    args.duration = args.duration or (60.0 if offline else 20.0)
    if (os.cpu_count() or 1) < 2:
        args.server_cores = args.client_cores = "all"
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # fakes' replies cut off at a step's end
    records = asyncio.run(main_async(args))
    if args.output:
        args.output.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
