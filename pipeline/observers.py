"""Observers watch frames cross edges without being part of the graph (metrics, tracing, benchmarks).

A graph with no observers pays nothing for them: ``push`` checks one empty tuple.
Observers run synchronously on the hot path: keep ``on_push`` to a few microseconds.

Taps use the same hook to hand a processor frames where they are made rather than where its edges
deliver them: a recorder placed after the LLM and TTS still gets the user's audio as it leaves the
microphone. A processor asks for them with ``taps`` (``TapRequest``s) and ``tapping``; ``Graph``
decides where each tap sits and installs a ``Tap`` on that node only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pipeline.frames import DOWNSTREAM, Direction, Frame
from pipeline.metrics import summarise

if TYPE_CHECKING:
    from pipeline.processor import Processor


class Observer:
    """Base observer: override ``on_push``."""

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        """``source`` pushed ``frame`` towards ``target`` (``None`` when it leaves the graph)."""


class FrameCounter(Observer):
    """Counts frames by (source, target, kind): handy in tests and for a quick look at traffic."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        self.counts[(source.name, target.name if target else "-", frame.kind)] += 1


class LatencyObserver(Observer):
    """Records each frame's age (ms since creation) as it leaves each processor.

    Because every frame carries its creation time, the age at a processor's output is the latency
    accumulated from the frame's origin up to and including that processor.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit  # samples kept per processor; later ones are counted but not stored
        self.ages_ms: dict[str, list[float]] = {}
        self.seen: Counter[str] = Counter()

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        name = source.name
        self.seen[name] += 1
        ages = self.ages_ms.setdefault(name, [])
        if len(ages) < self.limit:
            ages.append((time.monotonic_ns() - frame.created) / 1e6)

    def summary(self) -> dict[str, Any]:
        """Per processor: frames seen and age percentiles in ms."""
        return {
            name: {"frames": self.seen[name], "age_ms": summarise(ages)}
            for name, ages in self.ages_ms.items()
        }


TapPoint = Literal["source", "nearest"]
"""Where a tap sits, walking up from the tapping node: ``source`` on the graph's input nodes (where
the kind enters the graph); ``nearest`` on the nearest node that handles or makes the kind, as frames
leave it (the frames the edges would bring, without the wait behind the nodes in between)."""


@dataclass(frozen=True, slots=True)
class TapRequest:
    """One kind of frame a processor wants as it is made, ahead of its own edges."""

    kind: type[Frame]  # frames of this class (and subclasses)...
    at: TapPoint = "nearest"  # ...taken where this says

    def matches(self, cls: type[Frame]) -> bool:
        """True when frames of ``cls`` are tapped."""
        return issubclass(cls, self.kind)


@runtime_checkable
class Tapper(Protocol):
    """A processor that takes some frames by tap (the recorder)."""

    taps: ClassVar[tuple[TapRequest, ...]]

    def tapping(self, request: TapRequest) -> Callable[[Frame], None]:
        """The graph taps ``request`` for this processor: return what receives each frame.

        The receiver runs synchronously inside another node's ``push``, on the hot path: it must
        not block or raise. Frames of the kind that later arrive along the edges were already
        received; pass them on without handling them twice.
        """
        ...


class Tap(Observer):
    """Hands frames of one kind to a receiver as their node pushes them towards ``via``.

    Installed on one node only (``Graph``); ``via`` picks one edge, so a node that fans out hands
    each frame over once.
    """

    __slots__ = ("receive", "request", "via")

    def __init__(self, via: Processor, request: TapRequest, receive: Callable[[Frame], None]) -> None:
        self.via = via  # the neighbour on the way to the tapping node
        self.request = request
        self.receive = receive

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if target is self.via and direction is DOWNSTREAM and self.request.matches(frame.__class__):
            self.receive(frame)
