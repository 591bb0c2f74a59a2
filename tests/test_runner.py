"""The runner: run reports, latency and timing metrics, the summary table, saving, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline import runner
from pipeline.errors import FatalProcessorError
from pipeline.frames import AudioFrame, Frame, TextFrame
from pipeline.graph import Graph
from pipeline.processor import Processor
from pipeline.runner import RunReport
from pipeline.sources import SilenceSource
from pipeline.testing import run_virtual
from processors.debug import NullSink
from tests.custom_nodes import Shout, Words

WORDS = ["one", "two", "three", "four"]


class Timed(Processor):
    """Times its own work with the metrics API, as a real model wrapper would."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        with self.metrics.measure():
            self.metrics.first_byte()
            await self.push(frame)


class Fails(Processor):
    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        raise FatalProcessorError("the model file is missing")


class SignalsOnFirstFrame(Processor):
    """Sends this process a signal from inside the graph, as a user's Ctrl-C would arrive."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    def __init__(self, sig: signal.Signals) -> None:
        super().__init__()
        self.sig = sig
        self.frames = 0
        self.stopped = False

    async def process(self, frame: AudioFrame) -> None:
        self.frames += 1
        if self.frames == 1:
            if signal.getsignal(self.sig) in (signal.SIG_DFL, signal.default_int_handler):
                raise FatalProcessorError(f"the runner installed no {self.sig.name} handler")
            os.kill(os.getpid(), self.sig)

    async def on_stop(self) -> None:
        self.stopped = True


def text_graph() -> Graph:
    return Graph(
        {"words": Words(words=WORDS), "shout": Shout(), "timed": Timed(), "sink": NullSink()},
        [("words", "shout"), ("shout", "timed"), ("timed", "sink")],
        name="words",
    )


async def test_report_has_frames_and_age_percentiles_per_processor() -> None:
    graph = text_graph()
    report = await runner.run(graph, measure=True, handle_signals=False)
    assert (report.graph, report.outcome, report.errors) == ("words", "ended", [])
    assert list(report.processors) == ["words", "shout", "timed", "sink"]
    for name in ("words", "shout", "timed"):
        entry = report.processors[name]
        assert entry["frames"] == len(WORDS) + 2, name  # the words, the start and the end
        ages = entry["age_ms"]
        assert ages["count"] == entry["frames"]
        assert 0 <= ages["p50"] <= ages["p95"] <= ages["p99"] <= ages["max"]
        assert entry["dropped"] == 0
    assert report.processors["sink"]["frames"] == 2  # it swallows the words: only start and end leave it
    timed = report.processors["timed"]["metrics_ms"]
    assert timed["processing"]["count"] == len(WORDS)
    assert timed["ttfb"]["count"] == len(WORDS)
    assert report.processors["sink"]["type"] == "debug.null"
    assert report.seconds >= 0


async def test_without_measure_there_is_no_latency_and_no_observer() -> None:
    graph = text_graph()
    report = await runner.run(graph, handle_signals=False)
    assert report.outcome == "ended"
    assert graph.observers == ()
    assert all("frames" not in entry for entry in report.processors.values())
    assert report.processors["timed"]["metrics_ms"]["processing"]["count"] == len(WORDS)


async def test_summary_mentions_every_processor_and_error() -> None:
    report = await runner.run(text_graph(), measure=True, handle_signals=False)
    report.processors["sink"]["dropped"] = 3
    report.errors.append({"processor": "shout", "message": "ValueError: too loud", "fatal": False})
    summary = runner.format_summary(report)
    lines = summary.splitlines()
    assert lines[0].startswith("words: ended after ")
    for name in report.processors:
        assert any(line.startswith(f"  {name} ") for line in lines), name
    assert f"frames={len(WORDS) + 2}" in summary
    assert "processing p50=" in summary
    assert "ttfb p50=" in summary
    assert "dropped=3" in summary
    assert "  error in shout: ValueError: too loud" in lines


async def test_a_fatal_error_is_reported_not_raised() -> None:
    graph = Graph(
        {"words": Words(words=WORDS), "model": Fails(), "sink": NullSink()},
        [("words", "model"), ("model", "sink")],
    )
    report = await runner.run(graph, measure=True, handle_signals=False)
    assert report.outcome == "failed"
    fatal = {"processor": "model", "message": "FatalProcessorError: the model file is missing", "fatal": True}
    assert fatal in report.errors
    assert "error in model: FatalProcessorError: the model file is missing" in runner.format_summary(report)


async def test_save_writes_the_report_as_json_and_nothing_else(tmp_path: Path) -> None:
    report = await runner.run(text_graph(), measure=True, handle_signals=False)
    path = tmp_path / "metrics.json"
    runner.save(report, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(report.to_json()))
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_report_json_rounds_seconds() -> None:
    data = RunReport("g", outcome="stopped", seconds=1.23456).to_json()
    assert data == {"graph": "g", "outcome": "stopped", "seconds": 1.235, "errors": [], "processors": {}}


async def test_a_signal_stops_the_graph_cleanly_then_the_handler_is_removed() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        catcher = SignalsOnFirstFrame(sig)
        graph = Graph(
            {"mic": SilenceSource(duration=None), "catcher": catcher}, [("mic", "catcher")], name="live"
        )
        report = await runner.run(graph)
        assert report.outcome == "stopped", (sig.name, report.errors)
        assert report.errors == []
        assert catcher.frames >= 1
        assert catcher.stopped
        assert not asyncio.get_running_loop().remove_signal_handler(sig)  # the runner removed its own


class SlowToStart(Processor):
    """Loads a 'model' for three seconds (of virtual time)."""

    async def on_start(self) -> None:
        await asyncio.sleep(3)


def test_slow_starts_show_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    graph = Graph({"words": Words(), "model": SlowToStart()}, [("words", "model")])
    report = run_virtual(runner.run(graph, handle_signals=False))
    err = capsys.readouterr().err
    assert report.outcome == "ended"
    # Not a terminal: a line when the set of nodes still starting changes (or every 10 s), no rewrites.
    lines = err.splitlines()
    assert lines[0] == "starting: model (1s)" and "started in 3.0s" in lines
    assert "starting: model (2s)" not in lines


def test_quick_starts_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    graph = Graph({"words": Words(), "sink": NullSink()}, [("words", "sink")])
    run_virtual(runner.run(graph, handle_signals=False))
    assert "start" not in capsys.readouterr().err
