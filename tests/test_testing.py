"""The testing kit itself: scripted runs, captured output, collectors and the virtual clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pipeline.errors import FatalProcessorError
from pipeline.frames import (
    UPSTREAM,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMTextFrame,
    StartFrame,
    TextFrame,
    TranscriptFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.observers import Observer
from pipeline.processor import Processor
from pipeline.sources import TextSource
from pipeline.testing import (
    Captured,
    Collector,
    Gap,
    ScriptedSource,
    VirtualClock,
    current_clock,
    run_graph,
    run_processor,
    run_virtual,
    virtual_clock,
    virtual_time,
)


class Shout(Processor):
    handles = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        if frame.text == "boom":
            raise ValueError("cannot shout boom")
        await self.push(TextFrame(text=frame.text.upper()))


class Echo(Processor):
    """Answers every upstream text with a downstream one."""

    handles_upstream = (TextFrame,)

    async def process_upstream(self, frame: TextFrame) -> None:
        await self.push(TextFrame(text=f"echo {frame.text}"))
        await self.push(frame, UPSTREAM)


class Stuck(Processor):
    async def process(self, frame: Frame) -> None:
        await asyncio.Event().wait()


class Arrivals(Observer):
    """Loop time at which each frame reached ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.times: list[tuple[float, Frame]] = []

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if target is not None and target.name == self.target:
            self.times.append((asyncio.get_running_loop().time(), frame))


# --- run_processor / run_graph -------------------------------------------------------------------


async def test_run_processor_returns_what_came_out_without_start_and_end() -> None:
    out = await run_processor(Shout(), [TextFrame(text="hi"), TextFrame(text="there")])
    assert out.texts == ["HI", "THERE"]
    assert out.kinds == ["text", "text"]
    assert isinstance(out.all_down[0], StartFrame)
    assert isinstance(out.all_down[-1], EndFrame)
    assert out.ended
    assert out.of(EndFrame) == [out.all_down[-1]]
    assert out.up == []


async def test_errors_are_captured_upstream_and_processing_goes_on() -> None:
    out = await run_processor(
        Shout(name="shout"), [TextFrame(text="a"), TextFrame(text="boom"), TextFrame(text="b")]
    )
    assert out.texts == ["A", "B"]
    [error] = out.errors
    assert error.processor == "shout"
    assert "cannot shout boom" in error.message


async def test_a_fatal_error_raises_graph_failed() -> None:
    class Fatal(Processor):
        async def process(self, frame: Frame) -> None:
            raise FatalProcessorError("bad credentials")

    with pytest.raises(GraphFailedError, match="bad credentials"):
        await run_processor(Fatal(), [TextFrame(text="x")])


async def test_captured_helpers_filter_by_class() -> None:
    captured = Captured(
        all_down=[
            StartFrame(),
            LLMTextFrame(text="a"),
            TranscriptFrame(text="b"),
            TextFrame(text="c"),
            EndFrame(),
        ],
        up=[ErrorFrame(message="m")],
    )
    assert captured.texts == ["a", "b", "c"]  # text of every kind, the user's and the bot's
    assert captured.transcripts == ["b"]
    assert captured.of(LLMTextFrame) == [LLMTextFrame(text="a")]
    assert captured.kinds == ["llm_text", "transcript", "text"]
    assert [e.message for e in captured.errors] == ["m"]


@virtual_time
async def test_upstream_frames_reach_the_processor_before_the_end() -> None:
    out = await run_processor(
        Echo(),
        [TextFrame(text="down")],
        upstream=[TextFrame(text="one"), Gap(1.0), TextFrame(text="two")],
    )
    assert sorted(out.texts) == ["down", "echo one", "echo two"]
    assert [f.text for f in out.up if isinstance(f, TextFrame)] == ["one", "two"]


def test_gaps_space_out_frames_in_loop_time() -> None:
    async def main() -> list[float]:
        arrivals = Arrivals("shout")
        await run_processor(
            Shout(name="shout"),
            [TextFrame(text="a"), Gap(2.5), TextFrame(text="b"), Gap(0.5), TextFrame(text="c")],
            observers=[arrivals],
        )
        start = arrivals.times[0][0]
        return [at - start for at, frame in arrivals.times if isinstance(frame, TextFrame)]

    assert run_virtual(main()) == pytest.approx([0.0, 2.5, 3.0])


async def test_a_source_runs_alone_and_takes_no_frames() -> None:
    out = await run_processor(TextSource(texts=["a", "b"]))
    assert out.texts == ["a", "b"]
    with pytest.raises(ValueError, match="takes no input frames"):
        await run_processor(TextSource(texts=["a"]), [TextFrame(text="x")])


def test_a_run_that_never_ends_times_out_naming_the_stuck_processor() -> None:
    async def main() -> str:
        with pytest.raises(TimeoutError) as caught:
            await run_processor(Stuck(name="stuck"), [TextFrame(text="x")], timeout=30)
        return str(caught.value)

    message = run_virtual(main())
    assert "did not end within 30s" in message
    assert "stuck: has not ended" in message
    assert "suspended in process()" in message
    assert "collector" in message and "idle" in message


def test_a_timeout_tells_a_sender_blocked_by_a_full_inbox_from_an_idle_one() -> None:
    async def main() -> str:
        stuck = Stuck(name="stuck", queue_size=1)
        frames = [TextFrame(text=str(i)) for i in range(3)]
        with pytest.raises(TimeoutError) as caught:
            graph = Graph({"script": ScriptedSource(frames), "stuck": stuck}, [("script", "stuck")])
            await run_graph(graph, 30)
        return str(caught.value)

    message = run_virtual(main())
    assert "script" in message and "blocked: a downstream inbox is full" in message
    assert "stuck" in message and "suspended in process()" in message


async def test_run_graph_captures_per_sink() -> None:
    graph = Graph(
        {
            "script": ScriptedSource([TextFrame(text="x")]),
            "loud": Shout(),
            "quiet": Collector(),
        },
        [("script", "loud"), ("script", "quiet")],
    )
    out = await run_graph(graph)
    assert out.by_sink == {"loud": [TextFrame(text="X")], "quiet": [TextFrame(text="x")]}
    assert isinstance(out.all_by_sink["quiet"][0], StartFrame)
    assert graph.output_handler is None


async def test_run_graph_keeps_an_existing_output_handler() -> None:
    seen: list[Frame] = []
    graph = Graph({"script": ScriptedSource([TextFrame(text="x")]), "out": Collector()}, [("script", "out")])
    graph.output_handler = lambda processor, frame, direction: seen.append(frame)
    out = await run_graph(graph)
    assert seen == out.all_down


# --- ScriptedSource, Gap and Collector -----------------------------------------------------------


def test_scripts_hold_only_frames_and_gaps() -> None:
    with pytest.raises(TypeError, match="frames and Gap"):
        ScriptedSource(["hello"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="negative"):
        Gap(-1)


async def test_a_scripted_system_frame_overtakes_queued_data() -> None:
    out = await run_processor(Collector(name="middle"), [TextFrame(text="a"), InterruptionFrame()])
    assert [f.kind for f in out.down] == ["interruption"]


async def test_collector_wait_for_a_class_or_a_predicate() -> None:
    collector = Collector()
    graph = Graph(
        {"script": ScriptedSource([TextFrame(text="a"), Gap(0.01), TextFrame(text="b")]), "out": collector},
        [("script", "out")],
    )
    await graph.start()
    first = await collector.wait_for(TextFrame)
    second = await collector.wait_for(lambda f: isinstance(f, TextFrame) and f.text == "b")
    await collector.wait_for(EndFrame)
    assert (first, second) == (TextFrame(text="a"), TextFrame(text="b"))
    assert await graph.wait(1)
    assert [f.kind for f in collector.frames] == ["start", "text", "text", "end"]


def test_collector_wait_for_times_out_saying_what_it_saw() -> None:
    async def main() -> None:
        collector = Collector(name="out")
        graph = Graph(
            {"script": ScriptedSource([TextFrame(text="a")]), "out": collector}, [("script", "out")]
        )
        await graph.run()
        with pytest.raises(
            TimeoutError, match=r"'out' saw no downstream frame matching TranscriptFrame"
        ) as caught:
            await collector.wait_for(TranscriptFrame, timeout=60)
        assert "start, text, end" in str(caught.value)

    run_virtual(main())


# --- virtual time --------------------------------------------------------------------------------


def test_an_hour_of_sleep_passes_at_once_on_the_virtual_clock() -> None:
    async def main() -> float:
        clock = current_clock()
        before = clock.now
        await asyncio.sleep(3600)
        return clock.now - before

    started = time.perf_counter()
    slept = run_virtual(main())
    real = time.perf_counter() - started
    assert slept == pytest.approx(3600)
    assert real < 1.0


def test_timers_fire_in_order_at_their_virtual_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        fired: list[tuple[str, float]] = []

        async def after(delay: float, name: str) -> None:
            await asyncio.sleep(delay)
            fired.append((name, loop.time() - start))

        await asyncio.gather(after(3, "c"), after(1, "a"), after(2, "b"), after(2.5, "b2"))
        return fired

    fired = run_virtual(main())
    assert [name for name, _ in fired] == ["a", "b", "b2", "c"]
    assert [at for _, at in fired] == pytest.approx([1, 2, 2.5, 3])


def test_timeouts_fire_in_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), timeout=45)
        return loop.time() - start

    assert run_virtual(main()) == pytest.approx(45)


def test_advance_moves_the_clock_and_due_timers_fire_next_turn() -> None:
    async def main() -> bool:
        clock = current_clock()
        fired = asyncio.Event()
        asyncio.get_running_loop().call_later(10, fired.set)
        clock.advance(10)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return fired.is_set()

    assert run_virtual(main(), start=100.0)
    with pytest.raises(ValueError, match="only moves forward"):
        VirtualClock().advance(-1)


def test_the_clock_waits_for_work_running_in_threads() -> None:
    async def main() -> str:
        def blocking() -> str:
            time.sleep(0.05)  # real work in a thread: virtual time must not skip past it
            return "done"

        return await asyncio.wait_for(asyncio.to_thread(blocking), timeout=30)

    assert run_virtual(main()) == "done"


def test_one_clock_can_run_several_coroutines_on_one_loop() -> None:
    async def now() -> float:
        await asyncio.sleep(5)
        return current_clock().now

    with virtual_clock(start=0.0) as clock:
        assert clock.run(now()) == pytest.approx(5)
        assert clock.run(now()) == pytest.approx(10)
    coro = now()
    with pytest.raises(RuntimeError, match="virtual_clock"):
        clock.run(coro)


async def test_current_clock_refuses_an_ordinary_loop() -> None:
    with pytest.raises(RuntimeError, match="not running on a virtual clock"):
        current_clock()


async def test_run_virtual_refuses_to_nest_in_a_running_loop() -> None:
    with pytest.raises(
        RuntimeError, match="plain \\(sync\\) test, or decorate the async test with @virtual_time"
    ):
        run_virtual(asyncio.sleep(1))


@virtual_time
async def test_virtual_time_decorator_runs_an_async_test_with_fixtures(tmp_path: Path) -> None:
    assert tmp_path.exists()
    before = current_clock().now
    await asyncio.sleep(120)
    assert current_clock().now - before == pytest.approx(120)
