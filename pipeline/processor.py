"""Processors: the nodes of a graph. Subclass ``Processor`` (or ``Source``) and implement one coroutine.

The runtime owns the lifecycle so user code never has to call ``super()``:

* Params are typed by the class: ``class Gain(Processor[GainParams])`` checks YAML values against the
  ``GainParams`` dataclass and types ``self.params``. Per-instance state goes in ``setup()``, which
  runs once the params are in place — no ``__init__`` needed.

* ``process(frame)`` sees only the frame types in ``handles``; every other frame passes through
  untouched, in order. Start, end, cancel and interruption never reach ``process``: they run the
  optional hooks ``on_start``, ``on_stop`` and ``on_interrupt``.
* Each processor has one worker task fed by a bounded ``Inbox``. System frames overtake queued data.
* An interruption cancels the frame in flight (an awaited LLM stream, say) unless it is
  uninterruptible, and drops queued interruptible frames.
* An exception in ``process`` becomes an ``ErrorFrame`` sent upstream; the processor carries on.
  Raise ``FatalProcessorError`` to end the graph instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import traceback
from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast, get_args, get_origin

from typing_extensions import TypeVar

from pipeline.errors import FatalProcessorError, Problem, ValidationError
from pipeline.formats import ANY_AUDIO, AudioCaps, AudioFormat
from pipeline.frames import (
    DOWNSTREAM,
    UPSTREAM,
    AudioFrame,
    CancelFrame,
    DataFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TextFrame,
)
from pipeline.inbox import Inbox, Overflow
from pipeline.metrics import ProcessorMetrics
from pipeline.params import NoParams, build_params, hide_secret_params, limit_problems

if TYPE_CHECKING:
    from pipeline.observers import Observer

log = logging.getLogger("pipeline.processor")

NEAR_MISS_BASES: tuple[type[Frame], ...] = (AudioFrame, TextFrame)
"""Data classes that say what a frame is but not whose: built plainly, they are nobody's audio or text."""

T = TypeVar("T")
ParamsT = TypeVar("ParamsT", default=Any)
"""The params dataclass of a processor class (``Processor[GainParams]``); ``Any`` when not given."""


class Runtime:
    """What a running graph offers its processors. The default one discards what leaves the graph."""

    def frame_left(self, processor: Processor, frame: Frame, direction: Direction) -> None:
        """A frame was pushed past the graph's edge (downstream of a sink or upstream of a source)."""

    def processor_ended(self, processor: Processor) -> None:
        """``processor`` has seen the end on every input and forwarded it."""

    def processor_failed(self, processor: Processor, report: ErrorFrame, error: BaseException) -> None:
        """``process`` or a hook raised; ``report.fatal`` errors end the graph."""

    def nodes(self) -> tuple[Processor, ...]:
        """Every processor of the running graph (none when detached): for a node that asks about
        its session, e.g. whether some node can transfer a call."""
        return ()

    def end_input(self) -> bool:
        """Stop the graph's sources, so their end drains behind everything already sent (a goodbye
        is spoken and played out before the graph ends); False when there is no graph to end."""
        return False


_DETACHED = Runtime()


class _Action(Enum):
    """What the worker does with a frame class arriving from one direction (cached per class)."""

    FORWARD = 0
    PROCESS = 1
    SYSTEM = 2
    END = 3


_FORWARD, _PROCESS, _SYSTEM, _END = _Action.FORWARD, _Action.PROCESS, _Action.SYSTEM, _Action.END


def _declared_params(cls: type) -> type | None:
    """The dataclass named in ``class X(Processor[XParams])`` (or a generic base's), if any."""
    for base in getattr(cls, "__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Processor):
            for arg in get_args(base):
                if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                    return arg
    return None


class Processor(Generic[ParamsT]):
    """A node of the graph. Override ``process``; declare what it handles, produces and accepts."""

    type_name: ClassVar[str] = ""
    """The registered YAML ``type:`` (set by ``pipeline.registry``)."""
    Params: ClassVar[type[Any]] = NoParams
    """A dataclass of typed params; YAML values are checked against it before anything runs."""
    handles: ClassVar[tuple[type[Frame], ...]] = (DataFrame,)
    """Frame types given to ``process`` when travelling downstream; all others pass through."""
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = ()
    """Frame types given to ``process_upstream``; all others pass through."""
    produces: ClassVar[tuple[type[Frame], ...]] = ()
    """Frame types this processor emits of its own (for validation and ``list``)."""
    accepts_audio: ClassVar[AudioCaps] = ANY_AUDIO
    """Audio formats ``process`` can take, when ``handles`` includes audio."""
    queue_size: ClassVar[int] = 64
    """Bound of the inbox's data lane, in frames (overridable per node in YAML)."""
    overflow: ClassVar[Overflow] = Overflow.BLOCK
    """What a full inbox does: block the sender, or drop the oldest frame (live audio)."""
    warm_up: ClassVar[bool] = True
    """Whether a server starts this node once before the first conversation, so its ``on_start``
    loads shared models early. False where starting opens a per-call (billed) connection."""
    owned_hooks: ClassVar[dict[str, str]] = {}
    """Hooks an engine base needs for itself -> the hook its subclasses override instead (checked
    when a subclass is defined, so forgetting ``super()`` cannot silently break the base)."""

    params: ParamsT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" not in cls.__dict__:
            declared = _declared_params(cls)
            if declared is not None:
                cls.Params = declared
        for base in cls.__mro__[1:]:
            for hook, instead in base.__dict__.get("owned_hooks", {}).items():
                if hook in cls.__dict__:
                    raise TypeError(
                        f"{cls.__name__} overrides {hook}(), which {base.__name__} runs for itself; "
                        f"override {instead}() instead (it runs at the end of {hook})"
                    )

    def __init__(
        self,
        params: Any = None,
        /,
        *,
        name: str | None = None,
        queue_size: int | None = None,
        overflow: Overflow | None = None,
        **values: Any,
    ) -> None:
        """Build from a params object or keyword values; either way they are checked against ``Params``
        (types for keywords, declared limits for both)."""
        if params is None:
            params, problems = build_params(self.Params, values, node=name)
            if problems:
                raise ValidationError(problems)
        elif values:
            raise TypeError("pass either a params object or keyword params, not both")
        elif problems := limit_problems(params, name):
            raise ValidationError(problems)
        self.params = params
        self.name = name or type(self).__name__
        self._timings = ProcessorMetrics(self)  # what the runner reports; not in the user's namespace
        self._own_metrics: Any = None  # a subclass's own ``self.metrics = ...``, if it sets one
        self._inbox = Inbox(queue_size or self.queue_size, overflow or self.overflow)
        self._downstream: tuple[Processor, ...] = ()
        self._upstream: tuple[Processor, ...] = ()
        self._inputs = 0  # upstream neighbours whose EndFrame we wait for
        self._ends_seen = 0
        self._started = False
        self._ended = False
        self._observers: tuple[Observer, ...] = ()
        self._runtime: Runtime = _DETACHED
        self._claimed = False  # set by the graph it runs in: it keeps per-run state, so never a second
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: Frame | None = None
        self._interrupting = False
        self._stopped = False
        self._cancelling = False  # cancel() was called: a CancelledError is never taken for an interruption
        self._last_preempt: Frame | None = None
        self._route: dict[type[Frame], _Action] = {}
        self.setup()

    @property
    def metrics(self) -> ProcessorMetrics:
        """Timings of this processor: ``with self.metrics.measure():`` and ``self.metrics.first_byte()``.

        A subclass may set ``self.metrics`` to something of its own; the runner keeps its timings
        apart, so that never breaks a run.
        """
        return cast(ProcessorMetrics, self._own_metrics) if self._own_metrics is not None else self._timings

    @metrics.setter
    def metrics(self, value: Any) -> None:
        self._own_metrics = value

    # --- what subclasses implement ---------------------------------------------------------------

    def setup(self) -> None:
        """Per-instance set-up (counters, buffers), run once ``self.params`` is in place: what an
        ``__init__`` would do, without its signature or ``super()``. Heavy work belongs in ``on_start``."""

    async def process(self, frame: Any) -> None:
        """Handle one downstream frame of a type in ``handles``. Default: pass it on."""
        await self.push(frame)

    async def process_upstream(self, frame: Any) -> None:
        """Handle one upstream frame of a type in ``handles_upstream``. Default: pass it on."""
        await self.push(frame, UPSTREAM)

    async def on_start(self) -> None:
        """Runs before any frame flows, concurrently for all processors: load models here."""

    async def on_stop(self) -> None:
        """Runs once when the stream ends or is cancelled: flush and release resources here."""

    async def on_interrupt(self) -> None:
        """Runs after in-flight work was cancelled by an interruption: reset per-turn state here."""

    def check(self) -> list[Problem]:
        """Problems found before anything runs that a param's declared limits cannot say: a rule
        between params (``pause_secs`` below ``stop_secs``), a missing file, a model that is not
        installed. Cheap and side-effect free; runs at validation and when a ``Graph`` is built.
        Default: none."""
        return []

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        """The audio format this processor emits, given the one it receives (for negotiation).

        Default: audio passes through unchanged — also through a processor that handles and
        produces audio (a gain, a filter) — unless ``handles`` names an audio frame class and
        ``produces`` names none (an STT, say), in which case it is consumed.
        Processors that change the format or make their own audio (resamplers, TTS) override this.
        """
        consumes = any(issubclass(kind, AudioFrame) for kind in self.handles)
        if incoming is not None and consumes and not any(issubclass(k, AudioFrame) for k in self.produces):
            return None
        return incoming

    # --- what subclasses call --------------------------------------------------------------------

    async def push(self, frame: Frame, direction: Direction = DOWNSTREAM) -> None:
        """Send ``frame`` to the neighbours in ``direction``; waits while a full inbox pushes back."""
        targets = self._downstream if direction is DOWNSTREAM else self._upstream
        if self._observers:
            for observer in self._observers:
                for target in targets or (None,):
                    observer.on_push(self, target, frame, direction)
        if not targets:
            self._runtime.frame_left(self, frame, direction)
        elif frame.system:
            for target in targets:
                target._receive_system(frame, direction)
        elif len(targets) == 1:
            inbox = targets[0]._inbox
            if not inbox.put_nowait(frame, direction):
                await inbox.put(frame, direction)
        else:
            for target in targets:
                inbox = target._inbox
                if not inbox.put_nowait(frame, direction):
                    await inbox.put(frame, direction)

    def push_system(self, frame: Frame, direction: Direction = DOWNSTREAM) -> None:
        """Send a system frame without awaiting (usable from synchronous code)."""
        if not frame.system:
            raise TypeError(f"{frame.name} is not a system frame; use 'await push(frame)'")
        targets = self._downstream if direction is DOWNSTREAM else self._upstream
        for observer in self._observers:
            for target in targets or (None,):
                observer.on_push(self, target, frame, direction)
        if not targets:
            self._runtime.frame_left(self, frame, direction)
        for target in targets:
            target._receive_system(frame, direction)

    async def interrupt(self) -> None:
        """Start a barge-in from here: everything downstream drops and cancels its current work."""
        await self.push(InterruptionFrame())

    def report_error(self, error: BaseException, fatal: bool = False) -> None:
        """Report a failure of work done outside ``process`` (a background task) as ``process`` would:
        an ``ErrorFrame`` upstream, or with ``fatal`` the end of the graph."""
        self._fail(error, fatal)

    async def run_in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (model inference, file I/O) off the event loop."""
        return await asyncio.to_thread(function, *args)

    # --- runtime ---------------------------------------------------------------------------------

    def attach(
        self,
        downstream: tuple[Processor, ...],
        upstream: tuple[Processor, ...],
        runtime: Runtime,
        observers: tuple[Observer, ...] = (),
    ) -> None:
        """Wire this processor into a graph (called by ``Graph``)."""
        self._downstream = downstream
        self._upstream = upstream
        self._inputs = len(upstream)
        self._runtime = runtime
        self._observers = observers

    @property
    def runtime(self) -> Runtime:
        """The graph this processor runs in (a detached stand-in before and after)."""
        return self._runtime

    def detach(self) -> None:
        """Let go of the graph once it has finished (called by ``Graph``): its runtime, neighbours,
        observers and finished tasks. They all point back here, so without this a dead graph and
        its engines (decoders, SDK clients) would wait for a full garbage collection."""
        self._downstream = ()
        self._upstream = ()
        self._runtime = _DETACHED
        self._observers = ()
        self._in_flight = None
        self._last_preempt = None
        if self._worker is not None and self._worker.done():
            self._worker = None  # a cancelled task keeps its CancelledError, whose traceback holds us

    @property
    def ended(self) -> bool:
        """True once the end has reached this processor on every input and was forwarded."""
        return self._ended

    @property
    def inbox(self) -> Inbox:
        """This processor's input queue (read-only use: sizes and drop counts)."""
        return self._inbox

    def start_worker(self) -> asyncio.Task[None]:
        """Create the task that drains the inbox (called by ``Graph`` after every ``on_start``)."""
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"processor:{self.name}")
        return self._worker

    async def cancel(self) -> None:
        """Stop at once: cancel in-flight work, discard queued frames, run ``on_stop``."""
        self._cancelling = True
        self._inbox.close()
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.wait({worker})
        await self._stop_once()

    def _receive_system(self, frame: Frame, direction: Direction) -> None:
        """Entry point for system frames: preemption happens here, before the frame is queued."""
        if self._inbox.closed:
            if direction is UPSTREAM:
                self.push_system(frame, direction)  # an ended processor still relays errors upstream
            return
        if isinstance(frame, InterruptionFrame | CancelFrame):
            if frame is self._last_preempt:
                return  # the same frame arriving through a second input of a fan-in
            self._last_preempt = frame
            self._inbox.drop_interruptible()
            self._cancel_in_flight()
        self._inbox.put_system(frame, direction)

    def _cancel_in_flight(self) -> None:
        frame = self._in_flight
        worker = self._worker
        if self._cancelling or self._interrupting:
            return
        if frame is not None and not frame.uninterruptible and worker is not None:
            self._interrupting = True
            worker.cancel()

    async def _work(self) -> None:
        inbox = self._inbox
        route = self._route
        route_up: dict[type[Frame], _Action] = {}
        while not self._ended:
            item = inbox.get_nowait()
            while item is None:
                await inbox.arrival()
                item = inbox.get_nowait()
            frame, direction = item
            routes = route if direction is DOWNSTREAM else route_up
            action = routes.get(frame.__class__)
            if action is None:
                action = routes[frame.__class__] = self._action(frame.__class__, direction)
            if action is _SYSTEM:
                await self._handle_system(frame, direction)
                continue
            if action is _END:
                await self._handle_end(cast(EndFrame, frame), direction)
                continue
            self._in_flight = frame
            try:
                if action is _FORWARD:
                    await self.push(frame, direction)
                elif direction is DOWNSTREAM:
                    await self.process(frame)
                else:
                    await self.process_upstream(frame)
            except asyncio.CancelledError:
                if self._cancelling or not self._interrupting:
                    raise
                _running_task().uncancel()
            except FatalProcessorError as error:
                self._fail(error, fatal=True)
            except Exception as error:
                self._fail(error, fatal=False)
            finally:
                self._in_flight = None
            if self._interrupting:
                # The cancel landed after process() had already returned (or it swallowed it).
                self._interrupting = False
                if _running_task().cancelling():
                    _running_task().uncancel()

    def _action(self, cls: type[Frame], direction: Direction) -> _Action:
        if cls.system:
            return _SYSTEM
        if issubclass(cls, EndFrame):
            return _END
        if self._handles(cls, direction):
            return _PROCESS
        self._warn_near_miss(cls, direction)
        return _FORWARD

    def _warn_near_miss(self, cls: type[Frame], direction: Direction) -> None:
        """Once per frame class: a frame of a base of what this node handles (a plain ``TextFrame``
        reaching a TTS that speaks ``BotTextFrame``) passes by unhandled — most likely a processor
        upstream built the base class where it meant the specific one."""
        wanted = self.handles if direction is DOWNSTREAM else self.handles_upstream
        near = [w.__name__ for w in wanted if issubclass(w, cls) and w is not cls and cls in NEAR_MISS_BASES]
        if near:
            log.warning(
                "%s '%s' handles %s and lets a plain %s pass unhandled; push %s (or change the frame you "
                "got with dataclasses.replace, which keeps its class)",
                type(self).__name__,
                self.name,
                " and ".join(near),
                cls.__name__,
                " or ".join(near),
            )

    def _handles(self, cls: type[Frame], direction: Direction) -> bool:
        wanted = self.handles if direction is DOWNSTREAM else self.handles_upstream
        return issubclass(cls, wanted) if wanted else False

    async def _handle_system(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, StartFrame):
            if not self._started:
                self._started = True
                await self.push(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._guarded(self.on_interrupt())
            await self.push(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self.push(frame, direction)
            self._ended = True
            await self._stop_once()
            self._runtime.processor_ended(self)
        elif self._handles(frame.__class__, direction):
            self._in_flight = frame
            try:
                if direction is DOWNSTREAM:
                    await self._guarded(self.process(frame))
                else:
                    await self._guarded(self.process_upstream(frame))
            finally:
                self._in_flight = None
        else:
            await self.push(frame, direction)

    async def _handle_end(self, frame: EndFrame, direction: Direction) -> None:
        if direction is UPSTREAM:
            await self.push(frame, direction)
            return
        self._ends_seen += 1
        if self._ends_seen < self._inputs:
            return
        await self._stop_once()
        await self.push(frame)
        self._ended = True
        self._inbox.close()
        self._runtime.processor_ended(self)

    async def _stop_once(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._guarded(self.on_stop())

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except FatalProcessorError as error:
            self._fail(error, fatal=True)
        except Exception as error:
            self._fail(error, fatal=False)

    def hide_secrets(self, text: str) -> str:
        """``text`` with the value of every ``secret`` param replaced by ``***``.

        Anything about a failure that leaves the processor (a frame, a log line, an error shown to a
        client) goes through this: an SDK's exception often echoes the request, key included.
        """
        return hide_secret_params(text, self.params)

    def _fail(self, error: BaseException, fatal: bool) -> None:
        if fatal:
            self._inbox.close()  # handle nothing more: the graph is being cancelled
        message = self.hide_secrets(f"{type(error).__name__}: {error}")
        log.warning("processor %s failed: %s", self.name, message)
        trace = self.hide_secrets("".join(traceback.format_exception(error)))  # may quote a secret
        log.debug("processor %s traceback:\n%s", self.name, trace)
        report = ErrorFrame(message=message, processor=self.name, fatal=fatal, traceback=trace)
        self.push_system(report, UPSTREAM)
        self._runtime.processor_failed(self, report, error)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _running_task() -> asyncio.Task[Any]:
    """The task running now, looked up when needed: held in a local, a worker's task would form a
    cycle with the CancelledError it ends with (exception -> traceback -> frame -> task)."""
    task = asyncio.current_task()
    assert task is not None
    return task


class Source(Processor[ParamsT]):
    """A processor with no inputs: implement ``generate`` to yield frames; the end follows by itself."""

    handles: ClassVar[tuple[type[Frame], ...]] = ()

    async def generate(self) -> AsyncIterator[Frame]:
        """Yield the frames to send downstream. Pace with ``await asyncio.sleep``."""
        return
        yield  # pragma: no cover

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._producer: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._generating = False

    def start_producer(self) -> asyncio.Task[None]:
        """Send the start, then everything ``generate`` yields, then the end (called by ``Graph``)."""
        self._producer = asyncio.get_running_loop().create_task(self._produce(), name=f"source:{self.name}")
        return self._producer

    def detach(self) -> None:
        super().detach()
        if self._producer is not None and self._producer.done():
            self._producer = None

    def request_stop(self) -> None:
        """Stop generating early; the end is still sent so the graph drains cleanly (Ctrl-C)."""
        self._stop_requested = True
        producer = self._producer
        if producer is not None and not producer.done() and self._generating:
            producer.cancel()

    async def _produce(self) -> None:
        self._started = True
        self.push_system(StartFrame())
        self._generating = True
        try:
            async for frame in self.generate():
                if self._stop_requested:
                    break
                await self.push(frame)
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise
            _running_task().uncancel()
        except FatalProcessorError as error:
            self._fail(error, fatal=True)
        except Exception as error:
            self._fail(error, fatal=False)
        finally:
            self._generating = False
        await self._stop_once()  # release devices before the end lets the graph finish and move on
        await self.push(EndFrame())
        self._runtime.processor_ended(self)  # matters when the source is also the graph's only sink

    async def _handle_end(self, frame: EndFrame, direction: Direction) -> None:
        if direction is UPSTREAM:
            self._runtime.frame_left(self, frame, direction)


def timings_of(processor: Processor) -> ProcessorMetrics:
    """The timings the runtime keeps for ``processor`` (what ``self.metrics`` records), even when a
    subclass uses the name ``metrics`` for something of its own."""
    return processor._timings
