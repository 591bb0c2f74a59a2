"""One processor at a time: params, routing, interruption, errors, threads, metrics and sources."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator

import pytest

from pipeline.errors import FatalProcessorError, ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotTextFrame,
    DataFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMResponseStartFrame,
    LLMToolCallFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TranscriptFrame,
    Uninterruptible,
    UserAudioFrame,
    UserTextFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.inbox import Overflow
from pipeline.metrics import percentile, summarise
from pipeline.params import param
from pipeline.processor import Processor, Source
from pipeline.testing import Collector, Gap, ScriptedSource, WhenPushed, run_processor, run_virtual


@dataclasses.dataclass(slots=True)
class KeptFrame(Uninterruptible, DataFrame):
    note: str = ""


class Blocker(Processor):
    """Blocks forever on the text "block"; records cancellations, interruptions and stops."""

    handles = (TextFrame,)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.blocked = asyncio.Event()
        self.cancelled: list[str] = []
        self.handled: list[str] = []
        self.interrupts = 0
        self.stops = 0

    async def process(self, frame: TextFrame) -> None:
        if frame.text == "block":
            self.blocked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(frame.text)
                raise
        self.handled.append(frame.text)
        await self.push(frame)

    async def on_interrupt(self) -> None:
        self.interrupts += 1

    async def on_stop(self) -> None:
        self.stops += 1


def texts(*words: str) -> list[Frame | Gap]:
    return [TextFrame(text=w) for w in words]


# --- construction --------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class GreeterParams:
    greeting: str = param("hello", doc="what to say")
    times: int = param(1, doc="how often")


class Greeter(Processor):
    Params = GreeterParams
    params: GreeterParams


def test_keyword_params_are_checked_and_built() -> None:
    greeter = Greeter(name="hi", greeting="hey", times=2)
    assert greeter.params == GreeterParams(greeting="hey", times=2)
    assert greeter.name == "hi"
    assert Greeter().name == "Greeter"


def test_bad_params_raise_every_problem_with_a_suggestion() -> None:
    with pytest.raises(ValidationError) as caught:
        Greeter(name="g", greting="hey", times="two")
    message = str(caught.value)
    assert "2 problems" in message
    assert "did you mean 'greeting'?" in message
    assert "param 'times' expects int" in message


def test_a_params_object_excludes_keyword_params() -> None:
    assert Greeter(GreeterParams(times=3)).params.times == 3
    with pytest.raises(TypeError, match="not both"):
        Greeter(GreeterParams(), times=3)


def test_queue_size_and_overflow_can_be_set_per_instance() -> None:
    greeter = Greeter(queue_size=3, overflow=Overflow.DROP_OLDEST)
    assert greeter.inbox.maxsize == 3
    assert greeter.inbox.overflow is Overflow.DROP_OLDEST
    assert Greeter().inbox.maxsize == Greeter.queue_size


def test_default_negotiation_passes_unhandled_audio_and_consumes_handled_audio() -> None:
    class AudioEater(Processor):
        handles = (AudioFrame,)

    fmt = AudioFormat(16000)
    assert Upper().output_format(fmt) == fmt
    assert AudioEater().output_format(fmt) is None
    assert Greeter().output_format(fmt) == fmt  # a generic handler is assumed to pass audio on
    assert Upper().output_format(None) is None


def test_push_system_refuses_data_frames() -> None:
    with pytest.raises(TypeError, match="not a system frame"):
        Greeter().push_system(TextFrame(text="x"))


# --- routing -------------------------------------------------------------------------------------


class Upper(Processor):
    handles = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        await self.push(TextFrame(text=frame.text.upper()))


async def test_unhandled_frames_pass_through_in_order_with_handled_ones() -> None:
    script: list[Frame | Gap] = [
        TextFrame(text="a"),
        LLMToolCallFrame(name="t"),
        LLMResponseStartFrame(),
        TextFrame(text="b"),
        UserAudioFrame(pcm=b"\x01\x00"),
    ]
    out = await run_processor(Upper(), script)
    assert out.down == [
        TextFrame(text="A"),
        LLMToolCallFrame(name="t"),
        LLMResponseStartFrame(),
        TextFrame(text="B"),
        UserAudioFrame(pcm=b"\x01\x00"),
    ]


async def test_start_and_end_never_reach_process() -> None:
    seen: list[Frame] = []

    class Everything(Processor):
        handles = (Frame,)

        async def process(self, frame: Frame) -> None:
            seen.append(frame)
            await self.push(frame)

    out = await run_processor(Everything(), texts("x"))
    assert seen == [TextFrame(text="x")]
    assert [f.kind for f in out.all_down] == ["start", "text", "end"]


async def test_upstream_frames_go_to_process_upstream() -> None:
    class Requests(Processor):
        handles_upstream = (TranscriptFrame,)

        async def process_upstream(self, frame: TranscriptFrame) -> None:
            await self.push(TextFrame(text=f"asked: {frame.text}"))

    out = await run_processor(
        Requests(), [], upstream=[TranscriptFrame(text="hi"), TextFrame(text="passes up")]
    )
    assert out.texts == ["asked: hi"]
    assert out.up == [TextFrame(text="passes up")]


# --- interruption --------------------------------------------------------------------------------


def test_an_interruption_cancels_in_flight_work_and_drops_queued_frames() -> None:
    blocker = Blocker(name="blocker")
    script: list[Frame | Gap] = [
        *texts("block", "queued 1", "queued 2"),
        KeptFrame(note="kept"),
        Gap(1.0),
        InterruptionFrame(),
        *texts("after"),
    ]
    out = run_virtual(run_processor(blocker, script))
    assert blocker.cancelled == ["block"]
    assert blocker.handled == ["after"]
    assert blocker.interrupts == 1
    assert blocker.inbox.dropped == 2
    assert out.down == [InterruptionFrame(), KeptFrame(note="kept"), TextFrame(text="after")]


async def test_an_interruption_keeps_a_queued_end() -> None:
    blocker, collector = Blocker(), Collector()
    script = ScriptedSource([*texts("block", "queued"), KeptFrame(note="kept")])
    graph = Graph(
        {"script": script, "blocker": blocker, "out": collector}, [("script", "blocker"), ("blocker", "out")]
    )
    await graph.start()
    await blocker.blocked.wait()
    assert len(blocker.inbox) == 3  # "queued", the kept frame and the end, behind the frame in flight
    collector.push_system(InterruptionFrame(), UPSTREAM)
    assert await graph.wait(5)
    await graph.stop()
    assert blocker.cancelled == ["block"]
    assert [f.kind for f in collector.frames] == ["start", "data", "end"]
    assert blocker.inbox.dropped == 1
    assert blocker.stops == 1


def test_an_uninterruptible_frame_in_flight_is_not_cancelled() -> None:
    class Careful(Processor):
        handles = (KeptFrame,)

        def __init__(self) -> None:
            super().__init__(name="careful")
            self.gate = asyncio.Event()
            self.log: list[str] = []

        async def process(self, frame: KeptFrame) -> None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.log.append("cancelled")
                raise
            self.log.append(f"finished {frame.note}")
            await self.push(frame)

        async def on_interrupt(self) -> None:
            self.log.append("on_interrupt")

    async def main() -> tuple[list[str], list[str]]:
        careful = Careful()
        opener = WhenPushed("careful", InterruptionFrame, careful.gate.set)
        out = await run_processor(
            careful, [KeptFrame(note="k"), Gap(1.0), InterruptionFrame()], observers=[opener]
        )
        return careful.log, sorted(out.kinds)

    log, kinds = run_virtual(main())
    assert log == ["finished k", "on_interrupt"]
    assert kinds == ["data", "interruption"]


async def test_interrupt_sends_an_interruption_downstream() -> None:
    class BargeIn(Processor):
        handles = (TextFrame,)

        async def process(self, frame: TextFrame) -> None:
            await self.interrupt()

    out = await run_processor(BargeIn(), texts("stop"))
    assert out.kinds == ["interruption"]


# --- errors --------------------------------------------------------------------------------------


class Flaky(Processor):
    handles = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        if frame.text == "bad":
            raise ValueError("cannot handle 'bad'")
        await self.push(frame)


async def test_an_exception_becomes_an_error_upstream_and_processing_continues() -> None:
    out = await run_processor(Flaky(name="flaky"), texts("one", "bad", "two"))
    assert out.texts == ["one", "two"]
    [error] = out.errors
    assert error.processor == "flaky"
    assert error.message == "ValueError: cannot handle 'bad'"
    assert not error.fatal


async def test_exceptions_in_hooks_become_errors_too() -> None:
    class BadHooks(Processor):
        async def on_interrupt(self) -> None:
            raise RuntimeError("interrupt hook failed")

        async def on_stop(self) -> None:
            raise RuntimeError("stop hook failed")

    out = await run_processor(BadHooks(), [InterruptionFrame()])
    assert sorted(e.message for e in out.errors) == [
        "RuntimeError: interrupt hook failed",
        "RuntimeError: stop hook failed",
    ]
    assert out.kinds == ["interruption"]


async def test_a_fatal_error_fails_the_run_and_stops_every_processor() -> None:
    class Fatal(Processor):
        handles = (TextFrame,)

        async def process(self, frame: TextFrame) -> None:
            raise FatalProcessorError("API key rejected")

    fatal, after = Fatal(), Blocker()
    graph = Graph(
        {"script": ScriptedSource(texts("x", "y")), "fatal": fatal, "after": after},
        [("script", "fatal"), ("fatal", "after")],
    )
    with pytest.raises(GraphFailedError, match="API key rejected"):
        await asyncio.wait_for(graph.run(), 5)
    assert isinstance(graph.failed, FatalProcessorError)
    assert after.stops == 1
    assert graph.errors
    assert all(e.fatal and e.processor == "fatal" for e in graph.errors)


# --- threads -------------------------------------------------------------------------------------


async def test_run_in_thread_keeps_the_loop_responsive() -> None:
    loop = asyncio.get_running_loop()
    in_thread = asyncio.Event()
    release = threading.Event()

    class Blocking(Processor):
        handles = (TextFrame,)

        def work(self) -> str:
            loop.call_soon_threadsafe(in_thread.set)
            return "released" if release.wait(5) else "loop was blocked"

        async def process(self, frame: TextFrame) -> None:
            await self.push(TextFrame(text=await self.run_in_thread(self.work)))

    run = asyncio.ensure_future(run_processor(Blocking(), texts("go")))
    await asyncio.wait_for(in_thread.wait(), 5)  # the loop runs while the thread blocks ...
    release.set()  # ... so it can be the one to release it
    out = await run
    assert out.texts == ["released"]


# --- metrics -------------------------------------------------------------------------------------


class Timed(Processor):
    handles = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        with self.metrics.measure():
            await asyncio.sleep(0)
            self.metrics.first_byte()
            self.metrics.first_byte()  # only the first call of a block counts
            await self.push(frame)


async def test_measure_records_processing_time_and_first_byte() -> None:
    timed = Timed()
    await run_processor(timed, texts("a", "b", "c"))
    summary = timed.metrics.summary()
    assert set(summary) == {"processing", "ttfb"}
    assert summary["processing"]["count"] == 3
    assert summary["ttfb"]["count"] == 3
    assert set(summary["ttfb"]) == {"count", "mean", "p50", "p95", "p99", "max"}
    ttfb, processing = timed.metrics.samples["ttfb"], timed.metrics.samples["processing"]
    assert all(first <= total for first, total in zip(ttfb, processing, strict=True))


async def test_first_byte_outside_measure_is_ignored_and_record_adds_samples() -> None:
    timed = Timed()
    timed.metrics.first_byte()
    timed.metrics.record("vad_hangover", 0.25)
    assert timed.metrics.summary() == {
        "vad_hangover": {"count": 1, "mean": 250.0, "p50": 250.0, "p95": 250.0, "p99": 250.0, "max": 250.0}
    }


async def test_metrics_can_travel_as_frames() -> None:
    timed = Timed(name="timed")
    timed.metrics.emit_frames = True
    out = await run_processor(timed, texts("a"))
    metrics = out.of(MetricsFrame)
    assert sorted(m.metric for m in metrics) == ["processing", "ttfb"]
    assert {m.processor for m in metrics} == {"timed"}


def test_summaries_use_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5
    assert percentile(values, 95) == 10
    assert percentile(values, 1) == 1
    assert summarise([]) == {"count": 0}
    assert summarise([3.0, 1.0, 2.0])["p50"] == 2.0


# --- sources -------------------------------------------------------------------------------------


class Counting(Source):
    """Counts up forever, one text per second."""

    def __init__(self) -> None:
        super().__init__(name="counting")
        self.stops = 0

    async def generate(self) -> AsyncIterator[Frame]:
        count = 0
        while True:
            yield TextFrame(text=str(count))
            count += 1
            await asyncio.sleep(1)

    async def on_stop(self) -> None:
        self.stops += 1


def test_a_stopped_source_still_sends_its_end() -> None:
    async def main() -> tuple[list[str], float]:
        source, collector = Counting(), Collector()
        graph = Graph({"counting": source, "out": collector}, [("counting", "out")])
        await graph.start()
        await collector.wait_for(lambda f: isinstance(f, TextFrame) and f.text == "2")
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        await graph.stop()
        assert source.stops == 1
        return [f.kind for f in collector.frames], loop.time() - stopped_at

    kinds, took = run_virtual(main())
    assert kinds == ["start", "text", "text", "text", "end"]
    assert took < 1.0  # the end did not wait for the next frame, let alone end_timeout


async def test_a_failing_generator_reports_the_error_and_still_ends() -> None:
    class Broken(Source):
        async def generate(self) -> AsyncIterator[Frame]:
            yield TextFrame(text="first")
            raise OSError("device unplugged")

    out = await run_processor(Broken(name="mic"))
    assert out.texts == ["first"]
    assert out.ended
    assert [(e.processor, e.message) for e in out.errors] == [("mic", "OSError: device unplugged")]


async def test_a_source_sends_start_first_and_end_last() -> None:
    class Two(Source):
        async def generate(self) -> AsyncIterator[Frame]:
            yield TextFrame(text="a")
            yield TextFrame(text="b")

    out = await run_processor(Two())
    assert isinstance(out.all_down[0], StartFrame)
    assert isinstance(out.all_down[-1], EndFrame)
    assert out.texts == ["a", "b"]


class Speaker(Processor):
    """Takes the bot's text only, as a TTS does."""

    handles = (BotTextFrame,)
    produces = (BotTextFrame,)

    def setup(self) -> None:
        self.spoken: list[str] = []

    async def process(self, frame: BotTextFrame) -> None:
        self.spoken.append(frame.text)
        await self.push(frame)


async def test_a_plain_text_frame_passing_a_node_that_wants_bot_text_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    speaker = Speaker()
    with caplog.at_level(logging.WARNING, logger="pipeline.processor"):
        out = await run_processor(speaker, [TextFrame("lost"), BotTextFrame("said"), TextFrame("lost too")])
    assert speaker.spoken == ["said"]
    assert [f.text for f in out.of(TextFrame)] == ["lost", "said", "lost too"]  # nothing is dropped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "plain TextFrame" in warnings[0] and "push BotTextFrame" in warnings[0]


async def test_specific_frames_a_node_does_not_handle_pass_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.processor"):
        await run_processor(Speaker(), [UserTextFrame("a user's turn"), UserAudioFrame(pcm=b"\0\0" * 160)])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
