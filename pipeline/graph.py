"""Graphs: named processors wired as a DAG, and their lifecycle (start, drain, stop, cancel).

Lifecycle, in order:

0. Building a ``Graph`` runs every processor's ``check``, checks the structure and negotiates frame
   kinds and audio formats (``pipeline.negotiate``): a graph that cannot work never starts.
1. ``on_start`` of every processor runs concurrently (model loading overlaps), bounded by
   ``start_timeout``. If any fails the graph does not start.
2. Workers start, then sources send a ``StartFrame``; it precedes all data on every edge.
3. Each source's ``EndFrame`` flows after its data. A processor with several inputs forwards the
   end once it has seen one from each. The graph has ended when every sink has seen the end.
4. ``stop()`` asks sources to finish early and waits up to ``end_timeout`` for the end to drain;
   ``cancel()`` then stops everything at once. Cancel always overtakes a stuck end, and every wait
   is bounded, so shutdown always finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from pipeline import negotiate
from pipeline.errors import Problem, ValidationError, VoxgraphError
from pipeline.frames import Direction, ErrorFrame, Frame
from pipeline.observers import Observer, Tap, Tapper, TapRequest
from pipeline.params import did_you_mean
from pipeline.processor import Processor, Runtime, Source
from pipeline.topology import topological_names

log = logging.getLogger("pipeline.graph")

Edge = tuple[str, str]
OutputHandler = Callable[[Processor, Frame, Direction], None]


class GraphFailedError(VoxgraphError, RuntimeError):
    """A processor raised a fatal error; the graph was cancelled."""


class Graph(Runtime):
    """A runnable DAG of processors. Build it in Python, or load it from YAML with ``pipeline.load``."""

    def __init__(
        self,
        nodes: Mapping[str, Processor],
        edges: Iterable[Edge],
        *,
        name: str = "graph",
        observers: Iterable[Observer] = (),
        start_timeout: float = 300.0,
        end_timeout: float = 10.0,
        cancel_timeout: float = 5.0,
    ) -> None:
        self.name = name  # shown in logs and the CLI
        self.processors: dict[str, Processor] = dict(nodes)  # node name -> processor, in YAML order
        self.edges: list[Edge] = list(edges)
        self.observers = tuple(observers)  # watch every push, outside the graph
        self.start_timeout = start_timeout  # bound on all on_start hooks together, seconds
        self.end_timeout = end_timeout  # how long stop() lets the end drain before cancelling
        self.cancel_timeout = cancel_timeout  # bound on each processor's cancel + on_stop
        self.errors: deque[ErrorFrame] = deque(maxlen=1000)  # errors that reached the graph's edge
        self.output_handler: OutputHandler | None = None  # sees frames leaving the graph (tests)
        problems = [problem for p in self.processors.values() for problem in p.check()]
        problems += structure_problems(self.processors, self.edges) or negotiate.check(
            self.processors, self.edges
        )
        if problems:
            raise ValidationError(problems)
        self._claim()
        self.order = topological_order(self.processors, self.edges)  # sources first
        downstream: dict[str, list[Processor]] = {n: [] for n in self.processors}
        upstream: dict[str, list[Processor]] = {n: [] for n in self.processors}
        for a, b in self.edges:
            downstream[a].append(self.processors[b])
            upstream[b].append(self.processors[a])
        for node, processor in self.processors.items():
            processor.name = node
            processor.attach(tuple(downstream[node]), tuple(upstream[node]), self, self.observers)
        self._taps = self._install_taps()  # node name -> the taps it carries (see pipeline.observers)
        self.sources = [p for p in self.processors.values() if isinstance(p, Source)]
        self.sinks = [p for n, p in self.processors.items() if not downstream[n]]
        self._pending_sinks = {id(p) for p in self.sinks}
        self._done = asyncio.Event()
        self._fatal: BaseException | None = None
        self._fatal_message = ""  # the fatal error as reported (secrets hidden)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._background: set[asyncio.Task[None]] = set()
        self.starting: set[str] = set()  # nodes whose on_start is still running (for progress)
        self.started = asyncio.Event()  # set once every on_start has finished and frames flow

    def _claim(self) -> None:
        """Take the processors for this graph only: each keeps per-run state (its inbox, its end),
        so one shared by two graphs would corrupt both. Raises ``ValueError`` for a reused one."""
        reused = [name for name, p in self.processors.items() if p._claimed]
        if reused:
            raise ValueError(
                f"graph '{self.name}': {', '.join(reused)} already belong to another graph; build new "
                "processors for each graph (Compiled.graph() and pipeline.load() do)"
            )
        for processor in self.processors.values():
            processor._claimed = True

    def add_observer(self, observer: Observer) -> None:
        """Watch every push from now on (call before ``start``)."""
        if self._running:
            raise RuntimeError("add observers before the graph starts")
        self.observers = (*self.observers, observer)
        for name, processor in self.processors.items():
            processor._observers = (*self.observers, *self._taps.get(name, ()))

    def _install_taps(self) -> dict[str, tuple[Tap, ...]]:
        """Put a ``Tap`` on the node where each requested kind is made, for every ``Tapper``."""
        taps: dict[str, list[Tap]] = {}
        for name, processor in self.processors.items():
            if not isinstance(processor, Tapper):
                continue
            for request in processor.taps:
                points = tap_points(self.processors, self.edges, name, request)
                if not points:
                    continue  # made right before it: its edges bring the frames as early as a tap
                receive = processor.tapping(request)
                for point, via in points:
                    taps.setdefault(point, []).append(Tap(self.processors[via], request, receive))
        for point, installed in taps.items():
            self.processors[point]._observers = (*self.observers, *installed)
        return {point: tuple(installed) for point, installed in taps.items()}

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, wait until every sink has seen the end, clean up.

        Raises ``GraphFailedError`` when a processor raised a fatal error.
        """
        try:
            await self.start()
            await self._done.wait()
        finally:
            await self._finish()
        if self._fatal is not None:
            raise GraphFailedError(f"graph '{self.name}' failed: {self._fatal_message}") from self._fatal

    async def start(self) -> None:
        """Run every ``on_start`` concurrently, then start workers and sources."""
        if self._running:
            raise RuntimeError(f"graph '{self.name}' is already running")
        self._running = True
        await self._start_processors()
        for processor in reversed(self.order):
            self._tasks.append(processor.start_worker())
        for source in self.sources:
            self._tasks.append(source.start_producer())
        self.started.set()

    def nodes(self) -> tuple[Processor, ...]:
        return tuple(self.processors.values())

    def end_input(self) -> bool:
        for source in self.sources:
            source.request_stop()
        return bool(self.sources)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until every sink has seen the end (or the graph was cancelled); False on timeout."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Finish early but cleanly: sources stop, queued work drains, recorders flush.

        Waits at most ``end_timeout`` for the end to reach every sink, then cancels.
        """
        self.end_input()
        if not await self.wait(self.end_timeout):
            log.warning("graph %s: end did not drain in %.1fs; cancelling", self.name, self.end_timeout)
            await self.cancel()
        await self._finish()

    async def cancel(self) -> None:
        """Stop everything now. Each processor gets ``cancel_timeout`` seconds to run ``on_stop``."""
        await asyncio.gather(*(self._cancel_one(p) for p in self.processors.values()))
        self._done.set()

    @property
    def ended(self) -> bool:
        """True once every sink has seen the end, or the graph was cancelled."""
        return self._done.is_set()

    @property
    def failed(self) -> BaseException | None:
        """The fatal error that ended the graph, if any."""
        return self._fatal

    # --- Runtime (called by processors) ----------------------------------------------------------

    def frame_left(self, processor: Processor, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, ErrorFrame):
            self.errors.append(frame)
        if self.output_handler is not None:
            self.output_handler(processor, frame, direction)

    def processor_ended(self, processor: Processor) -> None:
        self._pending_sinks.discard(id(processor))
        if not self._pending_sinks:
            self._done.set()

    def processor_failed(self, processor: Processor, report: ErrorFrame, error: BaseException) -> None:
        if report.fatal and self._fatal is None:
            self._fatal = error
            self._fatal_message = report.message
            log.error("graph %s: fatal error in %s: %s", self.name, processor.name, report.message)
            self.in_background(self.cancel(), f"cancel:{self.name}")

    def in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a task the graph keeps a reference to (so it is not garbage-collected)."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- internals -------------------------------------------------------------------------------

    async def _start_processors(self) -> None:
        starts = {asyncio.ensure_future(p.on_start()): name for name, p in self.processors.items()}
        self.starting = set(starts.values())
        began = time.perf_counter()

        def one_started(task: asyncio.Task[None]) -> None:
            self.starting.discard(starts[task])
            log.info("%s started in %.2fs", starts[task], time.perf_counter() - began)

        for task in starts:
            task.add_done_callback(one_started)
        try:
            done, pending = await asyncio.wait(starts, timeout=self.start_timeout)
        except asyncio.CancelledError:
            # Stopped while loading (the client left): an on_start left running would go on to start
            # work (a decoder task, a connection) that no on_stop would ever end.
            await self._abandon(starts)
            raise
        await self._abandon(pending)
        failures = [  # shown to users and clients: an SDK's error may quote the node's API key
            f"{starts[t]}: " + self.processors[starts[t]].hide_secrets(f"{type(error).__name__}: {error}")
            for t in done
            if (error := t.exception()) is not None
        ]
        failures += [f"{starts[t]}: on_start took longer than {self.start_timeout:.0f}s" for t in pending]
        if failures:
            await asyncio.gather(*(self._cancel_one(p) for p in self.processors.values()))
            raise GraphFailedError(f"graph '{self.name}' could not start:\n  " + "\n  ".join(failures))

    async def _abandon(self, starts: Iterable[asyncio.Future[None]]) -> None:
        """Cancel ``on_start`` hooks still running and wait (bounded) until they have stopped."""
        running = [task for task in starts if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=self.cancel_timeout)

    async def _cancel_one(self, processor: Processor) -> None:
        try:
            await asyncio.wait_for(processor.cancel(), self.cancel_timeout)
        except TimeoutError:
            log.warning("processor %s did not stop within %.1fs", processor.name, self.cancel_timeout)

    async def _finish(self) -> None:
        if not self._running:
            return
        self._running = False
        if not self._done.is_set():
            await self.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.cancel_timeout)
        self._tasks.clear()
        for processor in self.processors.values():
            processor.detach()  # no cycles back to the graph: it is freed as soon as nobody holds it

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self.processors)} nodes, {len(self.edges)} edges>"


def structure_problems(nodes: Mapping[str, Any], edges: list[Edge]) -> list[Problem]:
    """Unknown endpoints, duplicate edges, cycles, sources with inputs, and nodes nothing feeds.

    Each problem carries a ``code`` and, when it is about an edge, that edge's index in ``edges``
    (the YAML loader turns it into a line number).
    """
    problems: list[Problem] = []
    first: dict[Edge, int] = {}  # known endpoints, first declaration: the rest is checked on these
    for index, (a, b) in enumerate(edges):
        for end in (a, b):
            if end not in nodes:
                guess = did_you_mean(end, list(nodes))
                fix = f"did you mean '{guess}'?" if guess else f"declare '{end}' under nodes:"
                problems.append(
                    Problem(
                        f"edge {a} -> {b} names unknown node '{end}'",
                        fix,
                        end,
                        "edges",
                        code="unknown_node",
                        edge=index,
                    )
                )
        if (a, b) in first:
            problems.append(
                Problem(
                    f"edge {a} -> {b} is declared twice",
                    "remove one",
                    a,
                    "edges",
                    code="duplicate_edge",
                    edge=index,
                )
            )
        elif a in nodes and b in nodes:
            first[(a, b)] = index
    inputs: dict[str, list[int]] = {n: [] for n in nodes}
    outputs = {n: 0 for n in nodes}
    for (a, b), index in first.items():
        inputs[b].append(index)
        outputs[a] += 1
    for name, processor in nodes.items():
        is_source = isinstance(processor, Source) or (
            isinstance(processor, type) and issubclass(processor, Source)
        )
        if is_source and inputs[name]:
            problems.append(
                Problem(
                    f"'{name}' is a source but has an edge into it",
                    f"remove the edges into '{name}'; sources only produce",
                    name,
                    "edges",
                    code="source_has_input",
                    edge=inputs[name][0],
                )
            )
        elif not is_source and not inputs[name]:
            if outputs[name]:
                fix = f"add an edge from a source into '{name}'"
            else:
                fix = f"connect '{name}' with an edge, or remove the node"
            problems.append(Problem(f"nothing feeds '{name}' (it is not a source)", fix, name, code="unfed"))
    cycle = find_cycle(list(nodes), list(first))
    if cycle:
        path = " -> ".join([*cycle, cycle[0]])
        problems.append(
            Problem(
                f"edges form a cycle: {path}",
                "graphs are acyclic: remove one of these edges",
                key="edges",
                code="cycle",
                edge=first[(cycle[-1], cycle[0])],
            )
        )
    return problems


def tap_points(
    nodes: Mapping[str, Processor], edges: Iterable[Edge], tapper: str, request: TapRequest
) -> list[Edge]:
    """Where ``tapper`` gets ``request`` by tap: (node, the neighbour on the way to ``tapper``) pairs.

    Walks up every path from ``tapper``. ``at="source"``: the sources that may emit the kind.
    ``at="nearest"``: on each path the first node that handles the kind or makes it (frames leave it
    as the edges would bring them, minus the wait behind the nodes after it). Empty when a tap
    point feeds ``tapper`` directly: nothing between could hold the frames up, and taps and
    edges mixed for one kind would reorder it.
    """
    parents: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        parents[b].append(a)
    points: list[Edge] = []
    seen: set[str] = set()
    stack = [(parent, tapper) for parent in parents[tapper]]
    while stack:
        name, via = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = nodes[name]
        emits = _may_emit(node, request)
        if request.at == "source":
            found = isinstance(node, Source) and emits
        else:
            found = emits or any(request.matches(h) or issubclass(request.kind, h) for h in node.handles)
        if found:
            points.append((name, via))
        else:
            stack.extend((parent, name) for parent in parents[name])
    if any(via == tapper for _, via in points):
        return []
    return points


def _may_emit(node: Processor, request: TapRequest) -> bool:
    """Whether ``node`` declares frames of the kind (a source that declares nothing may emit anything)."""
    emitted: tuple[type[Frame], ...] = node.produces
    if isinstance(node, Source) and not emitted:
        emitted = (Frame,)
    return any(request.matches(kind) or issubclass(request.kind, kind) for kind in emitted)


def find_cycle(names: list[str], edges: list[Edge]) -> list[str] | None:
    """One cycle as a list of node names, or None."""
    children: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        children[a].append(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in children[node]:
            if state.get(child) == 1:
                return stack[stack.index(child) :]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in names:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def topological_order(nodes: Mapping[str, Any], edges: list[Edge]) -> list[Processor]:
    """Processors with every producer before its consumers (YAML order on ties)."""
    return [nodes[name] for name in topological_names(nodes, edges)]
