"""Running a graph from the command line: signals, a bounded shutdown, and the latency summary.

Ctrl-C (or SIGTERM) once: sources stop and the end drains, so recorders flush and files are
complete. Twice, or when the drain exceeds the graph's ``end_timeout``: everything is cancelled.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.graph import Graph, GraphFailedError
from pipeline.logs import RedactSecrets
from pipeline.observers import LatencyObserver
from pipeline.processor import timings_of

log = logging.getLogger("pipeline.runner")


@dataclass
class RunReport:
    """How a run ended and what it measured."""

    graph: str
    outcome: str = "ended"  # ended | stopped | cancelled | failed
    seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    processors: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return {
            "graph": self.graph,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
            "processors": self.processors,
        }


async def run(graph: Graph, *, measure: bool = False, handle_signals: bool = True) -> RunReport:
    """Run ``graph`` until its end (or a signal), and report. ``measure`` adds per-edge latency."""
    latency = LatencyObserver() if measure else None
    if latency is not None:
        graph.add_observer(latency)
    report = RunReport(graph.name)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            report.outcome = "stopped"
            print("\nstopping: finishing queued work (Ctrl-C again to cancel)", file=sys.stderr)
            graph.in_background(graph.stop(), "graph-stop")
        else:
            report.outcome = "cancelled"
            graph.in_background(graph.cancel(), "graph-cancel")

    installed = install_signal_handlers(loop, on_signal) if handle_signals else []
    started = time.perf_counter()
    # The graph's objects live as long as the run: keep them out of every full collection's scan,
    # which otherwise shows up as tail latency (measured in benchmarks/overhead.py --freeze-gc).
    gc.freeze()
    progress = loop.create_task(_show_start_progress(graph), name="start-progress")
    try:
        await graph.run()
    except GraphFailedError as error:
        report.outcome = "failed"
        log.error("%s", error)
    finally:
        progress.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        gc.unfreeze()  # frozen garbage is never collected: a process running graph after graph keeps it
        report.seconds = time.perf_counter() - started
    redact = RedactSecrets().redact  # the summary and --metrics print these outside logging's filter
    report.errors = [
        {"processor": e.processor, "message": redact(e.message), "fatal": e.fatal} for e in graph.errors
    ]
    for name, processor in graph.processors.items():
        kind = processor.type_name or f"{type(processor).__module__}:{type(processor).__qualname__}"
        entry: dict[str, Any] = {"type": kind, "dropped": processor.inbox.dropped}
        timings = timings_of(processor).summary()
        if timings:
            entry["metrics_ms"] = timings
        if latency is not None and name in latency.ages_ms:
            entry.update(latency.summary()[name])
        report.processors[name] = entry
    return report


async def _show_start_progress(graph: Graph, every: float = 1.0) -> None:
    """While models load, say on stderr which nodes are still starting (after a first quiet second)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    live = sys.stderr.isatty()  # rewrite one line on a terminal; a log file gets a line now and then
    shown = False
    last = ""
    while True:
        try:
            await asyncio.wait_for(graph.started.wait(), every)
            break
        except TimeoutError:
            waiting = ", ".join(sorted(graph.starting)) or "workers"
            elapsed = loop.time() - began
            if live:
                print(f"\rstarting: {waiting} ({elapsed:.0f}s)", end="", file=sys.stderr, flush=True)
            elif waiting != last or int(elapsed) % 10 == 0:
                print(f"starting: {waiting} ({elapsed:.0f}s)", file=sys.stderr, flush=True)
            last = waiting
            shown = True
    if shown:
        done = f"started in {loop.time() - began:.1f}s"
        print(f"\r{done}" + " " * 40 if live else done, file=sys.stderr)


def save(report: RunReport, path: Path) -> None:
    """Write the report as JSON (atomically, so a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    tmp.replace(path)


def format_summary(report: RunReport) -> str:
    """A short table: per processor, frames out, output age p50/p99, and its own timings."""
    rows = [f"{report.graph}: {report.outcome} after {report.seconds:.2f}s"]
    for name, entry in report.processors.items():
        parts = [f"  {name:<16}"]
        if "frames" in entry:
            age = entry["age_ms"]
            parts.append(f"frames={entry['frames']:<7} age p50={age['p50']:.2f}ms p99={age['p99']:.2f}ms")
        for metric, stats in entry.get("metrics_ms", {}).items():
            parts.append(f"{metric} p50={stats['p50']:.1f}ms p95={stats['p95']:.1f}ms (n={stats['count']})")
        if entry["dropped"]:
            parts.append(f"dropped={entry['dropped']}")
        rows.append(" ".join(parts))
    for error in report.errors:
        rows.append(f"  error in {error['processor']}: {error['message']}")
    return "\n".join(rows)


def install_signal_handlers(loop: asyncio.AbstractEventLoop, handler: Any) -> list[signal.Signals]:
    """Call ``handler`` on SIGINT and SIGTERM; returns the signals installed (remove them after)."""
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
            pass
    return installed
