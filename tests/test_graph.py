"""Graphs: structure checks, lifecycle (start, end, stop, cancel), fan-out/in, backpressure, observers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from pipeline.errors import ValidationError
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    Direction,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TextFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
)
from pipeline.graph import Graph, GraphFailedError, structure_problems, topological_order
from pipeline.inbox import Overflow
from pipeline.observers import FrameCounter, LatencyObserver, Observer
from pipeline.processor import Processor, Source
from pipeline.sources import ToneSource
from pipeline.testing import Collector, Gap, ScriptedSource, WhenPushed, run_graph, run_virtual
from processors.debug import NullSink


def texts(*words: str) -> list[Frame | Gap]:
    return [TextFrame(text=w) for w in words]


def numbered(count: int) -> list[Frame | Gap]:
    return [TextFrame(text=str(i)) for i in range(count)]


class Relay(Processor):
    """Passes texts on; records its lifecycle in a shared log."""

    handles = (TextFrame,)

    def __init__(
        self, name: str, log: list[str] | None = None, start_delay: float = 0.0, **kwargs: object
    ) -> None:
        super().__init__(name=name, **kwargs)  # type: ignore[arg-type]
        self.log = log if log is not None else []
        self.start_delay = start_delay
        self.stops = 0

    async def on_start(self) -> None:
        await asyncio.sleep(self.start_delay)
        self.log.append(f"started {self.name}")

    async def process(self, frame: TextFrame) -> None:
        self.log.append(f"{self.name} {frame.text}")
        await self.push(frame)

    async def on_stop(self) -> None:
        self.stops += 1
        self.log.append(f"stopped {self.name}")


class Gated(Processor):
    """Holds each text until ``gate`` is set."""

    handles = (TextFrame,)

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.stops = 0
        self.cancelled = False

    async def process(self, frame: TextFrame) -> None:
        self.waiting.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await self.push(frame)

    async def on_stop(self) -> None:
        self.stops += 1


class EdgeLog(Observer):
    """Frames per edge, in push order."""

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], list[Frame]] = {}

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if target is not None and direction is not UPSTREAM:
            self.edges.setdefault((source.name, target.name), []).append(frame)


def chain(
    *processors: Processor,
    script: list[Frame | Gap] | None = None,
    observers: list[Observer] | None = None,
    end_timeout: float = 10.0,
    cancel_timeout: float = 5.0,
) -> Graph:
    """``script -> processors[0] -> processors[1] -> ...``"""
    nodes: dict[str, Processor] = {"script": ScriptedSource(script or [])}
    nodes.update({p.name: p for p in processors})
    edges = list(itertools.pairwise(nodes))
    return Graph(
        nodes, edges, observers=observers or (), end_timeout=end_timeout, cancel_timeout=cancel_timeout
    )


# --- structure -----------------------------------------------------------------------------------


def test_structure_problems_are_all_reported_with_fixes() -> None:
    nodes = {"mic": ScriptedSource, "stt": Collector, "llm": Collector, "orphan": Collector}
    problems = structure_problems(nodes, [("mic", "stt"), ("stt", "lm"), ("stt", "llm"), ("stt", "llm")])
    messages = [str(p) for p in problems]
    assert any("unknown node 'lm'" in m and "did you mean 'llm'?" in m for m in messages)
    assert any("declared twice" in m for m in messages)


def test_cycles_sources_with_inputs_and_unfed_nodes_are_problems() -> None:
    nodes = {"mic": ScriptedSource, "a": Collector, "b": Collector, "lonely": Collector}
    problems = structure_problems(nodes, [("mic", "a"), ("a", "b"), ("b", "a"), ("a", "mic")])
    messages = "\n".join(str(p) for p in problems)
    assert "'mic' is a source but has an edge into it" in messages
    assert "edges form a cycle" in messages
    assert "nothing feeds 'lonely'" in messages


def test_the_constructor_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="unknown node 'nowhere'"):
        Graph({"script": ScriptedSource(), "out": Collector()}, [("script", "nowhere")])


def test_topological_order_puts_producers_first() -> None:
    nodes = {"out": Collector, "script": ScriptedSource, "mid": Collector}
    order: list[object] = list(topological_order(nodes, [("mid", "out"), ("script", "mid")]))
    assert order == [ScriptedSource, Collector, Collector]
    graph = Graph(
        {"out": Collector(), "mid": Collector(), "script": ScriptedSource()},
        [("mid", "out"), ("script", "mid")],
    )
    assert [p.name for p in graph.order] == ["script", "mid", "out"]
    assert [p.name for p in graph.sources] == ["script"]
    assert [p.name for p in graph.sinks] == ["out"]


# --- order, fan-out, fan-in ----------------------------------------------------------------------


async def test_order_is_preserved_through_a_chain_with_small_queues() -> None:
    graph = chain(
        Relay("a", queue_size=2), Relay("b", queue_size=1), Collector(queue_size=3), script=numbered(200)
    )
    out = await run_graph(graph)
    assert out.texts == [str(i) for i in range(200)]


async def test_fan_out_gives_every_branch_every_frame() -> None:
    left, right = Collector(name="left"), Collector(name="right")
    graph = Graph(
        {"script": ScriptedSource(numbered(20)), "left": left, "right": right},
        [("script", "left"), ("script", "right")],
    )
    out = await run_graph(graph)
    expected = [TextFrame(text=str(i)) for i in range(20)]
    assert out.by_sink == {"left": expected, "right": expected}
    assert [f.kind for f in left.frames] == ["start", *["text"] * 20, "end"]


def test_fan_in_forwards_one_end_after_every_input_ended() -> None:
    async def main() -> tuple[list[Frame], Relay]:
        merge, out = Relay("merge"), Collector()
        graph = Graph(
            {
                "quick": ScriptedSource([*texts("q1"), Gap(1), *texts("q2")]),
                "slow": ScriptedSource([*texts("s1"), Gap(5), *texts("s2")]),
                "merge": merge,
                "out": out,
            },
            [("quick", "merge"), ("slow", "merge"), ("merge", "out")],
        )
        await graph.run()
        return out.frames, merge

    frames, merge = run_virtual(main())
    kinds = [f.kind for f in frames]
    assert kinds.count("start") == 1 and kinds.count("end") == 1
    assert isinstance(frames[0], StartFrame) and isinstance(frames[-1], EndFrame)
    assert sorted(f.text for f in frames if isinstance(f, TextFrame)) == ["q1", "q2", "s1", "s2"]
    assert frames[-2] == TextFrame(text="s2")
    assert merge.stops == 1


async def test_the_graph_ends_only_when_every_sink_has_seen_the_end() -> None:
    quick, held = Collector(name="quick"), Gated("held")
    graph = Graph(
        {"script": ScriptedSource(texts("x")), "quick": quick, "held": held},
        [("script", "quick"), ("script", "held")],
    )
    await graph.start()
    await quick.wait_for(EndFrame)
    await held.waiting.wait()
    assert not graph.ended
    held.gate.set()
    assert await graph.wait(5)
    await graph.stop()


# --- start and end -------------------------------------------------------------------------------


def test_start_comes_first_on_every_edge_and_after_every_on_start() -> None:
    async def main() -> tuple[list[str], EdgeLog, float]:
        log: list[str] = []
        edges = EdgeLog()
        a, b, c = (
            Relay("a", log, start_delay=3),
            Relay("b", log, start_delay=1),
            Relay("c", log, start_delay=2),
        )
        graph = Graph(
            {"script": ScriptedSource(texts("x", "y")), "a": a, "b": b, "c": c, "out": Collector()},
            [("script", "a"), ("script", "c"), ("a", "b"), ("b", "out"), ("c", "out")],
            observers=[edges],
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        await graph.start()
        started_in = loop.time() - began
        assert await graph.wait(5)
        await graph.stop()
        return log, edges, started_in

    log, edges, started_in = run_virtual(main())
    assert sorted(log[:3]) == ["started a", "started b", "started c"]
    assert {"a x", "b x", "c x"} <= set(log[3:])
    assert started_in == pytest.approx(3)  # the hooks ran concurrently: the longest one, not the sum
    assert len(edges.edges) == 5
    for edge, frames in edges.edges.items():
        assert isinstance(frames[0], StartFrame), edge
        assert sum(isinstance(f, StartFrame) for f in frames) == 1, edge


async def test_a_failing_on_start_stops_the_graph_before_any_frame_flows() -> None:
    class NoModel(Processor):
        async def on_start(self) -> None:
            raise FileNotFoundError("model.onnx")

    out = Collector()
    graph = Graph(
        {"script": ScriptedSource(texts("x")), "stt": NoModel(), "out": out},
        [("script", "stt"), ("stt", "out")],
    )
    with pytest.raises(GraphFailedError, match=r"could not start:\n  stt: FileNotFoundError: model.onnx"):
        await graph.run()
    assert out.frames == []


def test_a_slow_on_start_is_bounded_by_start_timeout() -> None:
    class Slow(Processor):
        async def on_start(self) -> None:
            await asyncio.sleep(3600)

    graph = Graph(
        {"script": ScriptedSource(), "slow": Slow(), "out": Collector()},
        [("script", "slow"), ("slow", "out")],
        start_timeout=30,
    )
    with pytest.raises(GraphFailedError, match="slow: on_start took longer than 30s"):
        run_virtual(graph.run())


async def test_the_end_runs_on_stop_once_per_processor_upstream_first() -> None:
    log: list[str] = []
    a, b, c = Relay("a", log), Relay("b", log), Relay("c", log)
    graph = chain(a, b, c, script=texts("x"))
    await graph.run()
    assert [p.stops for p in (a, b, c)] == [1, 1, 1]
    assert all(p.ended for p in (a, b, c))
    assert [entry for entry in log if entry.startswith("stopped")] == ["stopped a", "stopped b", "stopped c"]
    await graph.cancel()
    assert [p.stops for p in (a, b, c)] == [1, 1, 1]


async def test_a_graph_runs_once() -> None:
    graph = chain(Collector(), script=texts("x"))
    await graph.run()
    with pytest.raises(RuntimeError, match="already running"):
        await graph.start()
        await graph.start()


# --- priority, stop and cancel -------------------------------------------------------------------


def test_system_frames_overtake_queued_data() -> None:
    async def main() -> list[Frame]:
        gated, pushes = Gated("gated"), EdgeLog()
        opener = WhenPushed("gated", UserStartedSpeakingFrame, gated.gate.set)
        script = [*texts("a"), Gap(1), *texts("b", "c"), UserStartedSpeakingFrame(at=1.0)]
        await run_graph(chain(gated, Collector(name="out"), script=script, observers=[opener, pushes]))
        return pushes.edges[("gated", "out")][1:-1]  # what gated sent on, without start and end

    assert run_virtual(main()) == [
        TextFrame(text="a"),  # in flight when the system frame arrived
        UserStartedSpeakingFrame(at=1.0),  # overtook the two queued texts
        TextFrame(text="b"),
        TextFrame(text="c"),
    ]


def test_stop_cancels_a_stuck_processor_within_end_timeout() -> None:
    async def main() -> tuple[float, Gated]:
        stuck = Gated("stuck")
        graph = chain(stuck, Collector(), script=texts("x"), end_timeout=3.0, cancel_timeout=2.0)
        await graph.start()
        await stuck.waiting.wait()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await graph.stop()
        return loop.time() - began, stuck

    took, stuck = run_virtual(main())
    assert 3.0 <= took < 3.0 + 2.0
    assert stuck.cancelled
    assert stuck.stops == 1


async def test_cancel_stops_everything_at_once() -> None:
    stuck, out = Gated("stuck"), Collector()
    graph = chain(stuck, out, script=texts("x", "y"))
    await graph.start()
    await stuck.waiting.wait()
    await graph.cancel()
    assert graph.ended
    assert stuck.cancelled and stuck.stops == 1
    assert len(stuck.inbox) == 0 and stuck.inbox.closed
    await graph.stop()


# --- backpressure --------------------------------------------------------------------------------


class SlowSink(Processor):
    """Takes 10 ms (of loop time) per audio frame; samples its own inbox while busy."""

    handles = (AudioFrame,)

    def __init__(self, queue_size: int, overflow: Overflow) -> None:
        super().__init__(name="sink", queue_size=queue_size, overflow=overflow)
        self.received: list[int] = []
        self.largest_inbox = 0
        self.stops = 0

    async def process(self, frame: AudioFrame) -> None:
        await asyncio.sleep(0.01)  # meanwhile the fast source refills the inbox
        self.largest_inbox = max(self.largest_inbox, len(self.inbox))
        self.received.append(frame.pcm[0])

    async def on_stop(self) -> None:
        self.stops += 1


def audio_frames(count: int) -> list[Frame | Gap]:
    return [UserAudioFrame(pcm=bytes([i, 0])) for i in range(count)]


def test_block_bounds_the_inbox_and_loses_nothing() -> None:
    async def main() -> SlowSink:
        sink = SlowSink(queue_size=4, overflow=Overflow.BLOCK)
        await run_graph(chain(sink, script=audio_frames(100)))
        return sink

    sink = run_virtual(main())
    assert sink.largest_inbox == 4  # full, never over
    assert sink.received == list(range(100))
    assert sink.inbox.dropped == 0


def test_drop_oldest_drops_old_audio_and_keeps_the_end() -> None:
    async def main() -> SlowSink:
        sink = SlowSink(queue_size=4, overflow=Overflow.DROP_OLDEST)
        await run_graph(chain(sink, script=audio_frames(50)))
        return sink

    sink = run_virtual(main())
    assert sink.ended and sink.stops == 1  # the end survived the drops
    assert sink.received[-1] == 49  # the newest audio is kept ...
    assert sink.received == sorted(sink.received)
    assert len(sink.received) <= 5  # ... the rest was dropped: at most a full inbox plus one in flight
    assert sink.inbox.dropped == 50 - len(sink.received)


def test_memory_stays_bounded_with_a_slow_sink() -> None:
    class Microphone(Source):
        """10,000 fresh 20 ms frames (6.4 MB in all) as fast as the graph takes them."""

        async def generate(self) -> AsyncIterator[Frame]:
            for i in range(10_000):
                yield UserAudioFrame(pcm=bytes([i % 256]) * 640)

    async def main() -> tuple[SlowSink, int]:
        sink = SlowSink(queue_size=8, overflow=Overflow.BLOCK)
        graph = Graph(
            {"mic": Microphone(), "relay": Relay("relay"), "sink": sink},
            [("mic", "relay"), ("relay", "sink")],
        )
        tracemalloc.start()
        try:
            await graph.run()
            return sink, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    sink, peak = run_virtual(main())
    assert len(sink.received) == 10_000
    assert peak < 1_000_000  # two inboxes of frames and change, not the 6.4 MB the source made


# --- observers and errors ------------------------------------------------------------------------


async def test_observers_see_every_push() -> None:
    counter, latency = FrameCounter(), LatencyObserver()
    graph = chain(
        Relay("relay"), Collector(name="out"), script=texts("a", "b", "c"), observers=[counter, latency]
    )
    await graph.run()
    for edge in [("script", "relay"), ("relay", "out"), ("out", "-")]:
        assert counter.counts[(*edge, "start")] == 1
        assert counter.counts[(*edge, "text")] == 3
        assert counter.counts[(*edge, "end")] == 1
    summary = latency.summary()
    assert {name: entry["frames"] for name, entry in summary.items()} == {"script": 5, "relay": 5, "out": 5}
    assert summary["relay"]["age_ms"]["count"] == 5


async def test_output_handler_and_errors_see_what_leaves_the_graph() -> None:
    class Refuses(Processor):
        handles = (TextFrame,)

        async def process(self, frame: TextFrame) -> None:
            raise RuntimeError(f"refused {frame.text}")

    left: list[tuple[str, str, Direction]] = []
    graph = chain(Refuses(name="refuses"), script=texts("x"))
    graph.output_handler = lambda processor, frame, direction: left.append(
        (processor.name, frame.kind, direction)
    )
    await graph.run()
    assert ("script", "error", UPSTREAM) in left
    assert [e.message for e in graph.errors] == ["RuntimeError: refused x"]


# --- regressions: errors after the end, a lone source, cancel right after an interruption ---------


async def test_an_error_on_the_last_frame_of_a_later_stage_reaches_graph_errors() -> None:
    class FailsOnLast(Processor):
        handles = (TextFrame,)

        async def process(self, frame: TextFrame) -> None:
            if frame.text == "last":
                raise ValueError("failed on the last frame")

    graph = chain(Relay("first"), FailsOnLast(name="second"), script=texts("one", "last"))
    await asyncio.wait_for(graph.run(), 5)
    assert [e.message for e in graph.errors] == ["ValueError: failed on the last frame"]


async def test_an_error_in_a_sinks_on_stop_reaches_graph_errors() -> None:
    class FlushFails(Processor):
        async def on_stop(self) -> None:
            raise OSError("disk full")

    graph = chain(Relay("first"), FlushFails(name="recorder"), script=texts("x"))
    await asyncio.wait_for(graph.run(), 5)
    assert [e.message for e in graph.errors] == ["OSError: disk full"]


def test_a_graph_of_one_source_ends() -> None:
    graph = Graph({"alone": ScriptedSource(texts("x"))}, [])
    run_virtual(asyncio.wait_for(graph.run(), 60))
    assert graph.ended


def test_cancel_right_after_an_interruption_still_runs_on_stop() -> None:
    async def main() -> int:
        stuck, out = Gated("stuck"), Collector()
        graph = chain(stuck, out, script=texts("x"))
        await graph.start()
        await stuck.waiting.wait()
        out.push_system(InterruptionFrame(), UPSTREAM)  # cancels the frame in flight ...
        with contextlib.suppress(TimeoutError):  # ... and a cancel in the same turn is taken for it:
            async with asyncio.timeout(60):  # the worker lives on and cancel() never returns
                await stuck.cancel()
        stops = stuck.stops
        await graph.stop()
        return stops

    assert run_virtual(main()) == 1


def test_a_processor_runs_in_one_graph_only() -> None:
    nodes = {"src": ToneSource(duration=0.1), "out": NullSink()}
    Graph(nodes, [("src", "out")])
    with pytest.raises(ValueError, match="src, out already belong to another graph"):
        Graph(nodes, [("src", "out")])


async def test_two_graphs_from_one_compiled_config_share_no_processor() -> None:
    from pipeline import config

    compiled, problems = config.compile_text(
        "nodes: {src: {type: source.tone, duration: 0.1}, out: {type: debug.null}}\nedges: [src -> out]"
    )
    assert compiled is not None and not problems
    first, second = compiled.graph(), compiled.graph()
    assert not set(map(id, first.processors.values())) & set(map(id, second.processors.values()))
    await asyncio.wait_for(asyncio.gather(first.run(), second.run()), 10)
    assert first.ended and second.ended
