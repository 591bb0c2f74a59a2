"""The engines behind the served OpenAI routes: one started instance of each named node, taken in turns.

Each node an ``openai.api`` node names is built afresh from the config and started once, when the
server starts: its model is the process-wide copy (``processors.models``) the conversations of the
same config use, so nothing loads twice. Requests take turns on it (``Lane``): the engines run one
inference at a time on a model anyway, and a request's own settings (its language, its temperature)
are applied to the instance for the length of its turn only; the config's own settings stay on the
engine (``defaults``) for requests to read at any time. At most ``max_waiting`` requests wait for a
turn, counted from their arrival (an upload being read waits too); one more is refused at once
(``EngineBusy``: HTTP 429), so a burst cannot pile up unbounded work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from pipeline.config import Compiled
from pipeline.config.build import build
from pipeline.errors import ValidationError, VoxgraphError
from pipeline.processor import Processor

__all__ = ["Engine", "EngineBusy", "Engines", "Lane"]

log = logging.getLogger("transports.dropin.openai")

STOP_TIMEOUT = 5.0
"""Seconds an engine gets to stop when the server does."""


class EngineBusy(VoxgraphError):
    """Every place in the engine's waiting line is taken."""


class Lane:
    """One request at a time, in arrival order, with at most ``max_waiting`` waiting behind it.

    A request holds a ``place`` from its arrival to the end of its response, so what it does before
    its turn (reading and decoding an upload) counts against the line too: a burst is refused before
    its bodies are read, not after they are all in memory.
    """

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.taken = 0  # places held now: the request served and those waiting or still arriving
        self._lock = asyncio.Lock()  # fair: waiters get it in arrival order

    @property
    def full(self) -> bool:
        """Whether one more request would be refused now."""
        return self.taken > self.max_waiting

    @contextlib.contextmanager
    def place(self) -> Iterator[None]:
        """A place in line until the block ends; raises ``EngineBusy`` at once when the line is full."""
        if self.full:
            raise EngineBusy
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this request's turn; take it inside ``place``, which bounds the line."""
        async with self._lock:
            yield


class Engine:
    """A started instance of one node, serving requests in turns."""

    def __init__(self, node: str, processor: Processor, max_waiting: int) -> None:
        self.node = node
        self.processor = processor
        self.defaults: Any = processor.params
        """The config's params: what a request that sets nothing gets, whoever's turn it is now."""
        self.lane = Lane(max_waiting)

    def admitted(self) -> contextlib.AbstractContextManager[None]:
        """A place in this engine's line, from a request's arrival to the end of its response; raises
        ``EngineBusy`` at once when the line is full."""
        return self.lane.place()

    @contextlib.asynccontextmanager
    async def serving(self, **settings: Any) -> AsyncIterator[Any]:
        """The processor, for this request's turn (taken inside ``admitted``), with ``settings``
        (params of its type; None and unknown names are ignored) in force until the turn ends."""
        async with self.lane.turn():
            fields = {f.name for f in dataclasses.fields(self.defaults)}
            changes = {k: v for k, v in settings.items() if v is not None and k in fields}
            self.processor.params = dataclasses.replace(self.defaults, **changes)
            try:
                yield self.processor
            finally:
                self.processor.params = self.defaults


class Engines:
    """The engines of one server's OpenAI routes, started together in the background.

    ``ready`` is set once every one started; ``failure`` says why one could not.
    """

    def __init__(self, compiled: Compiled, nodes: Mapping[str, str], max_waiting: int) -> None:
        """``nodes``: what a request names (an endpoint, a voice) -> the node answering it."""
        fresh, problems = build(compiled.spec)  # the routes' own instances, never a graph's
        if problems:
            raise ValidationError(problems)
        self.by_node = {
            node: Engine(node, fresh.processors[node], max_waiting) for node in sorted(set(nodes.values()))
        }
        self.routes = {name: self.by_node[node] for name, node in nodes.items()}
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.start_timeout = compiled.settings.start_timeout
        self._starting: asyncio.Task[None] | None = None

    def get(self, name: str) -> Engine | None:
        """The engine answering ``name`` (an endpoint or a voice)."""
        return self.routes.get(name)

    def start(self) -> None:
        """Start every engine in the background (models load while the server already listens)."""
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start(), name="openai-engines")

    async def _start(self) -> None:
        engines = list(self.by_node.values())
        starts = [asyncio.ensure_future(e.processor.on_start()) for e in engines]
        done, pending = await asyncio.wait(starts, timeout=self.start_timeout)
        failures = [
            f"{e.node}: took longer than {self.start_timeout:.0f}s"
            for e, t in zip(engines, starts, strict=True)
            if t in pending
        ]
        for engine, task in zip(engines, starts, strict=True):
            if task in done and (error := task.exception()) is not None:
                shown = engine.processor.hide_secrets(f"{type(error).__name__}: {error}")
                failures.append(f"{engine.node}: {shown}")
        for task in pending:
            task.cancel()
        if failures:
            self.failure = "; ".join(failures)
            log.error("the OpenAI routes' engines could not start: %s", self.failure)
        self.ready.set()

    async def stop(self) -> None:
        """Stop loading (if still at it) and stop every engine."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait({self._starting})
        for engine in self.by_node.values():
            try:
                await asyncio.wait_for(engine.processor.cancel(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("%s did not stop within %.0fs", engine.node, STOP_TIMEOUT)
