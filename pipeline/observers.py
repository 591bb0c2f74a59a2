"""Observers watch frames cross edges without being part of the graph (metrics, tracing, benchmarks).

A graph with no observers pays nothing for them: ``push`` checks one empty tuple.
Observers run synchronously on the hot path: keep ``on_push`` to a few microseconds.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from pipeline.frames import Direction, Frame
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
