"""Tools for testing processors and graphs: scripted input, captured output and virtual time.

Run one processor between a scripted source and a collector, and look at what came out::

    async def test_shouts() -> None:
        out = await run_processor(Shout(), [TextFrame("hi"), Gap(0.5), TextFrame("bye")])
        assert out.texts == ["HI", "BYE"]
        assert not out.errors

Timeouts and pacing are tested without waiting by running on a virtual clock: when the loop has
nothing to do but wait for a timer, virtual time jumps to that timer instead of sleeping::

    @virtual_time
    async def test_gives_up() -> None:
        await asyncio.sleep(3600)          # returns at once; current_clock().now moved an hour

    def test_twice() -> None:
        with virtual_clock() as clock:     # or run_virtual(main()) for a single coroutine
            clock.run(first())
            clock.run(second())

Nothing is mocked: tests drive the real runtime, and the virtual clock only changes what time it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import selectors
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, TypeVarTuple, overload

from pipeline.errors import ProcessorFailedError
from pipeline.frames import (
    DOWNSTREAM,
    UPSTREAM,
    AudioFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    StartFrame,
    TextFrame,
    TranscriptFrame,
)
from pipeline.graph import Graph
from pipeline.observers import Observer
from pipeline.processor import Processor, Source

__all__ = [
    "Captured",
    "Collector",
    "Gap",
    "ScriptedSource",
    "VirtualClock",
    "VirtualTimeLoop",
    "WhenPushed",
    "current_clock",
    "run_graph",
    "run_processor",
    "run_virtual",
    "virtual_clock",
    "virtual_time",
]

T = TypeVar("T")
F = TypeVar("F", bound=Frame)
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

Match = type[Frame] | Callable[[Frame], bool]
"""What ``Collector.wait_for`` looks for: a frame class, or a predicate on frames."""


@dataclass(frozen=True, slots=True)
class Gap:
    """A pause between scripted frames. It is an ``asyncio.sleep``: instant on a virtual clock."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"Gap({self.seconds}) is negative; a pause lasts zero seconds or more")


Script = Sequence[Frame | Gap]


def _checked_script(items: Iterable[Frame | Gap], what: str) -> list[Frame | Gap]:
    script = list(items)
    for item in script:
        if not isinstance(item, Frame | Gap):
            raise TypeError(f"{what} holds {item!r}; it takes frames and Gap(seconds) pauses only")
    return script


# --- scripted input and collected output ---------------------------------------------------------


class ScriptedSource(Source):
    """A source that plays a fixed list of frames and pauses.

    The runtime sends the ``StartFrame`` before the script and the ``EndFrame`` after it, so a
    script holds neither. System frames in the script (an ``InterruptionFrame``, say) overtake
    queued data exactly as they would in a live graph.
    """

    def __init__(self, frames: Iterable[Frame | Gap] = (), *, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name or "script", **kwargs)
        self.script = _checked_script(frames, "ScriptedSource")
        self.hold_end: asyncio.Event | None = None
        """When set to an event, the end is sent only once the event is set (see ``run_processor``)."""

    async def generate(self) -> AsyncIterator[Frame]:
        for item in self.script:
            if isinstance(item, Gap):
                await asyncio.sleep(item.seconds)
            else:
                yield item
        if self.hold_end is not None:
            await self.hold_end.wait()


class Collector(Processor):
    """Records every frame that passes through it; usually the sink of a test graph.

    Frames pass through unchanged, so a collector can also tap the middle of a graph. Tests await
    what they expect with ``wait_for`` instead of sleeping.
    """

    handles = ()

    def __init__(self, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name or "collector", **kwargs)
        self.frames: list[Frame] = []
        """Frames that went through downstream, in order, including the start and the end."""
        self.upstream: list[Frame] = []
        """Frames that went through (or were sent) upstream, in order."""
        self._changed = asyncio.Event()

    async def push(self, frame: Frame, direction: Direction = DOWNSTREAM) -> None:
        self._record(frame, direction)
        await super().push(frame, direction)

    def push_system(self, frame: Frame, direction: Direction = DOWNSTREAM) -> None:
        self._record(frame, direction)
        super().push_system(frame, direction)

    async def send_upstream(self, frames: Script) -> None:
        """Play frames and pauses upstream from here, as a downstream neighbour would send them."""
        for item in _checked_script(frames, "send_upstream"):
            if isinstance(item, Gap):
                await asyncio.sleep(item.seconds)
            else:
                await self.push(item, UPSTREAM)

    @overload
    async def wait_for(self, match: type[F], *, timeout: float = ..., direction: Direction = ...) -> F: ...

    @overload
    async def wait_for(
        self, match: Callable[[Frame], bool], *, timeout: float = ..., direction: Direction = ...
    ) -> Frame: ...

    async def wait_for(
        self, match: Match, *, timeout: float = 10.0, direction: Direction = DOWNSTREAM
    ) -> Frame:
        """The first frame (already recorded or still to come) that is of class ``match`` or that
        ``match(frame)`` accepts. Raises ``TimeoutError`` listing what was seen instead."""
        accept = _matcher(match)
        seen = self.frames if direction is DOWNSTREAM else self.upstream

        async def first_match() -> Frame:
            index = 0
            while True:
                while index < len(seen):
                    if accept(seen[index]):
                        return seen[index]
                    index += 1
                await self._changed.wait()

        try:
            return await asyncio.wait_for(first_match(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"collector '{self.name}' saw no {direction.value} frame matching {_describe_match(match)} "
                f"within {timeout:g}s; it saw: {_summary(seen) or 'nothing'}"
            ) from None

    def _record(self, frame: Frame, direction: Direction) -> None:
        (self.frames if direction is DOWNSTREAM else self.upstream).append(frame)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _matcher(match: Match) -> Callable[[Frame], bool]:
    if isinstance(match, type):
        if not issubclass(match, Frame):
            raise TypeError(f"wait_for takes a Frame class or a predicate, not {match.__name__}")
        cls = match
        return lambda frame: isinstance(frame, cls)
    return match


def _describe_match(match: Match) -> str:
    if isinstance(match, type):
        return match.__name__
    return getattr(match, "__name__", repr(match))


def _summary(frames: Iterable[Frame]) -> str:
    """``start, text x3, end``: runs of the same kind collapsed."""
    runs: list[tuple[str, int]] = []
    for frame in frames:
        if runs and runs[-1][0] == frame.kind:
            runs[-1] = (frame.kind, runs[-1][1] + 1)
        else:
            runs.append((frame.kind, 1))
    return ", ".join(kind if count == 1 else f"{kind} x{count}" for kind, count in runs)


@dataclass
class Captured:
    """The frames that left a graph (or the processor under test), in the order they left.

    ``down`` and ``by_sink`` leave out the ``StartFrame`` and ``EndFrame`` every run produces, so
    tests compare just the payload; ``all_down`` keeps them.
    """

    all_down: list[Frame] = field(default_factory=list)
    """Every frame that left downstream, including the start and the end."""
    up: list[Frame] = field(default_factory=list)
    """Every frame that left upstream (errors, upstream requests)."""
    all_by_sink: dict[str, list[Frame]] = field(default_factory=dict)
    """``all_down`` split by the name of the sink each frame left from."""

    @property
    def down(self) -> list[Frame]:
        """Frames that left downstream, without the start and the end."""
        return [f for f in self.all_down if not isinstance(f, StartFrame | EndFrame)]

    @property
    def by_sink(self) -> dict[str, list[Frame]]:
        """``down`` per sink name."""
        return {
            sink: [f for f in frames if not isinstance(f, StartFrame | EndFrame)]
            for sink, frames in self.all_by_sink.items()
        }

    def of(self, cls: type[F]) -> list[F]:
        """Frames of class ``cls`` (or a subclass) that left downstream, the start and end included."""
        return [f for f in self.all_down if isinstance(f, cls)]

    @property
    def errors(self) -> list[ErrorFrame]:
        """Error frames that left the graph upstream."""
        return [f for f in self.up if isinstance(f, ErrorFrame)]

    def raise_errors(self) -> None:
        """Fail with the first error a processor reported, showing its original traceback.

        A bug in ``process`` does not stop the graph (it becomes an ``ErrorFrame``), so a test that
        only looked at the output would see a frame missing; this shows the bug itself.
        """
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            where = f"\n\n{first.traceback}" if first.traceback else ""
            raise ProcessorFailedError(f"{first.processor}: {first.message}{more}{where}")

    @property
    def texts(self) -> list[str]:
        """The text of every ``TextFrame`` that left downstream, whoever's: transcripts and LLM text
        too (``.of(BotTextFrame)`` takes one side)."""
        return [f.text for f in self.of(TextFrame)]

    @property
    def transcripts(self) -> list[str]:
        """The text of each final ``TranscriptFrame`` that left downstream."""
        return [f.text for f in self.of(TranscriptFrame)]

    @property
    def kinds(self) -> list[str]:
        """The ``kind`` of each frame in ``down``: a compact thing to compare against."""
        return [f.kind for f in self.down]

    @property
    def audio(self) -> bytes:
        """All audio that left downstream, concatenated."""
        return b"".join(f.pcm for f in self.of(AudioFrame))

    @property
    def ended(self) -> bool:
        """Whether an ``EndFrame`` left downstream."""
        return any(isinstance(f, EndFrame) for f in self.all_down)


# --- running -------------------------------------------------------------------------------------


async def run_graph(graph: Graph, timeout: float = 10.0) -> Captured:
    """Run ``graph`` to its end and return what left it (through ``graph.output_handler``).

    Raises ``TimeoutError`` naming the processors still running when ``timeout`` seconds pass,
    and ``GraphFailedError`` when a processor fails fatally.
    """
    captured = Captured()
    previous = graph.output_handler

    def on_output(processor: Processor, frame: Frame, direction: Direction) -> None:
        if direction is DOWNSTREAM:
            captured.all_down.append(frame)
            captured.all_by_sink.setdefault(processor.name, []).append(frame)
        else:
            captured.up.append(frame)
        if previous is not None:
            previous(processor, frame, direction)

    graph.output_handler = on_output
    runner = asyncio.ensure_future(graph.run())
    try:
        done, _ = await asyncio.wait({runner}, timeout=timeout)
        if not done:
            report = _pending_report(graph, timeout, captured)
            runner.cancel()
            await asyncio.wait({runner})
            raise TimeoutError(report)
        runner.result()
    finally:
        if not runner.done():
            runner.cancel()
            await asyncio.wait({runner})
        graph.output_handler = previous
    return captured


async def run_processor(
    processor: Processor,
    frames: Script = (),
    *,
    upstream: Script = (),
    timeout: float = 10.0,
    observers: Iterable[Observer] = (),
) -> Captured:
    """Run ``ScriptedSource(frames) -> processor -> Collector`` to the end; return what came out.

    ``upstream`` frames are sent into the processor from the collector's side once the start has
    gone through; the scripted source holds its end until they have all been sent, so none is
    lost to a finished processor. A ``Source`` under test runs alone (``frames`` must be empty).
    """
    collector = Collector()
    names = {processor.name}
    collect_name = _unique("collector", names)
    script: ScriptedSource | None = None
    if isinstance(processor, Source):
        if frames:
            raise ValueError(f"{processor.name} is a source: it takes no input frames (got {len(frames)})")
        nodes: dict[str, Processor] = {processor.name: processor, collect_name: collector}
        edges = [(processor.name, collect_name)]
    else:
        script = ScriptedSource(frames)
        script_name = _unique("script", names | {collect_name})
        nodes = {script_name: script, processor.name: processor, collect_name: collector}
        edges = [(script_name, processor.name), (processor.name, collect_name)]
    graph = Graph(nodes, edges, name=f"test:{processor.name}", observers=observers)

    feeder: asyncio.Task[None] | None = None
    if upstream:
        release = asyncio.Event()
        if script is not None:
            script.hold_end = release

        async def feed() -> None:
            try:
                await collector.wait_for(StartFrame, timeout=timeout)
                await collector.send_upstream(upstream)
            finally:
                release.set()

        feeder = asyncio.ensure_future(feed())
    try:
        captured = await run_graph(graph, timeout=timeout)
    finally:
        feeder_error = await _finish_feeder(feeder)
    if feeder_error is not None:
        raise feeder_error
    return captured


async def _finish_feeder(feeder: asyncio.Task[None] | None) -> BaseException | None:
    """Stop the upstream feeder; return the error it failed with, if any."""
    if feeder is None:
        return None
    if not feeder.done():
        feeder.cancel()
        await asyncio.wait({feeder})
    return None if feeder.cancelled() else feeder.exception()


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}{number}", number + 1
    return candidate


def _pending_report(graph: Graph, timeout: float, captured: Captured) -> str:
    tasks = {task.get_name(): task for task in asyncio.all_tasks() if not task.done()}
    lines = []
    for name, processor in graph.processors.items():
        if isinstance(processor, Source):
            producer = tasks.get(f"source:{name}")
            if producer is not None:
                lines.append(f"{name}: still generating{_where(producer)}")
        elif not processor.ended:
            queued = len(processor.inbox)
            worker = tasks.get(f"processor:{name}")
            where = _where(worker) if worker is not None else ", not started (is an on_start hook stuck?)"
            lines.append(f"{name}: has not ended, {queued} frame{'s' if queued != 1 else ''} queued{where}")
    out = _summary(captured.all_down) or "nothing"
    return (
        f"graph '{graph.name}' did not end within {timeout:g}s.\n  still running:\n    "
        + "\n    ".join(lines or ["(no processor reported as pending)"])
        + f"\n  frames out so far: {out}"
    )


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
_INBOX_FILE = os.path.join(os.path.dirname(__file__), "inbox.py")
_WORKER_CODE = Processor._work.__code__  # a worker suspended in its own frame awaits its inbox


def _where(task: asyncio.Task[Any]) -> str:
    """Where a task is suspended: the innermost coroutine frame outside asyncio itself."""
    innermost = None
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:
            break
        if not frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
            innermost = frame
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    if innermost is None:
        return ""
    code = innermost.f_code
    if code is _WORKER_CODE or (code.co_filename == _INBOX_FILE and code.co_name == "get"):
        return ", idle (waiting for frames)"
    if code.co_filename == _INBOX_FILE and code.co_name == "_wait_for_room":
        return ", blocked: a downstream inbox is full"
    return f", suspended in {code.co_name}() at {os.path.basename(code.co_filename)}:{innermost.f_lineno}"


class WhenPushed(Observer):
    """Calls ``action`` on the loop's next turn once a frame of ``cls`` is pushed to node ``target``.

    Lets a test act at an exact point of the flow (open a gate once the interruption is on its
    way, say) instead of sleeping and hoping.
    """

    def __init__(self, target: str, cls: type[Frame], action: Callable[[], None]) -> None:
        self.target = target  # node name the frame must be pushed to
        self.cls = cls  # frame class to wait for
        self.action = action  # called with no arguments, once per matching push

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if target is not None and target.name == self.target and isinstance(frame, self.cls):
            asyncio.get_running_loop().call_soon(self.action)


# --- virtual time --------------------------------------------------------------------------------


class VirtualClock:
    """The time of a ``VirtualTimeLoop``, in seconds. It only moves forward.

    It starts at the real ``time.monotonic()`` so that code comparing loop time with frame
    timestamps sees sensible values, then advances only when the loop would otherwise wait.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.monotonic() if start is None else float(start)
        self._runner: asyncio.Runner | None = None

    @property
    def now(self) -> float:
        """Current virtual time (what ``loop.time()`` returns)."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Jump forward; timers now due fire on the loop's next turn (``await asyncio.sleep(0)``)."""
        if seconds < 0:
            raise ValueError(f"cannot advance by {seconds}s: virtual time only moves forward")
        self._now += seconds

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to completion on this clock's loop (inside ``with virtual_clock()``)."""
        if self._runner is None:
            main.close()
            raise RuntimeError(
                "clock.run() works inside 'with virtual_clock() as clock:'; or use run_virtual(main())"
            )
        return self._runner.run(main)


class _VirtualSelector(selectors.DefaultSelector):
    """Polls for real I/O without blocking; the wait the loop asked for passes in virtual time."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            # Nothing is scheduled: only another thread can wake us, so wait for real.
            return super().select(timeout)
        ready = super().select(0)
        if ready:
            return ready
        clock = self._loop.clock
        if self._loop.threads_busy:
            # Work in a thread takes real time: let virtual time follow the real clock meanwhile.
            started = time.monotonic()
            ready = super().select(timeout)
            clock.advance(min(time.monotonic() - started, timeout))
            return ready
        clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is a ``VirtualClock``.

    Whenever every task is waiting on a timer, the clock jumps to the next timer instead of
    sleeping, so ``asyncio.sleep``, ``wait_for`` and graph timeouts cost no real time. Limits:
    real sockets and subprocesses still take real time (virtual time may run ahead of them), and
    while work started with ``run_in_executor``/``asyncio.to_thread`` is running, virtual time
    follows the real clock so that timeouts around that work stay meaningful.
    """

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.threads_busy = 0
        """Executor jobs still running; while any is, time is not skipped."""
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.clock.now

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        return future

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        self.threads_busy += 1
        try:
            await super().shutdown_default_executor(*args, **kwargs)
        finally:
            self.threads_busy -= 1

    def _thread_done(self, _: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1


@contextlib.contextmanager
def virtual_clock(start: float | None = None) -> Iterator[VirtualClock]:
    """A fresh ``VirtualTimeLoop`` for the block; ``clock.run(main())`` runs coroutines on it."""
    _refuse_running_loop()
    clock = VirtualClock(start)
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(clock)) as runner:
        clock._runner = runner
        try:
            yield clock
        finally:
            clock._runner = None


def run_virtual(main: Coroutine[Any, Any, T], *, start: float | None = None) -> T:
    """Run ``main`` on a fresh virtual clock and return its result (call it from a sync test)."""
    try:
        _refuse_running_loop()
    except RuntimeError:
        main.close()
        raise
    with virtual_clock(start) as clock:
        return clock.run(main)


def _refuse_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "a virtual clock runs its own event loop: use it from a plain (sync) test, "
        "or decorate the async test with @virtual_time"
    )


def virtual_time(test: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Decorator: run an ``async def`` test on a virtual clock (pytest then sees a plain test).

    Inside, ``current_clock()`` returns the clock.
    """

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_virtual(test(*args, **kwargs))

    return run


def current_clock() -> VirtualClock:
    """The clock of the running virtual loop; ``RuntimeError`` on an ordinary loop."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("not running on a virtual clock; use run_virtual() or @virtual_time")
    return loop.clock
