"""Per-processor timing: one small API for time-to-first-byte and processing time.

Inside ``process``::

    with self.metrics.measure():          # processing time of this block
        async for token in stream:
            self.metrics.first_byte()     # first call per block records TTFB
            await self.push(LLMTextFrame(token))

Samples are kept in bounded windows and summarised (count, mean, p50, p95, p99, max) by
``summary()``; the runner saves them all as JSON with ``run --metrics FILE``. A ``listener`` is also
told of each sample as it is recorded, for figures that must not wait for the window (a server's
Prometheus histograms).
"""

from __future__ import annotations

import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline.frames import MetricsFrame

if TYPE_CHECKING:
    from pipeline.processor import Processor

WINDOW = 10_000  # samples kept per metric; older ones fall out

SampleListener = Callable[[str, float], None]
"""Told ``(metric, seconds)`` of each sample as it is recorded; runs on the hot path: keep it cheap."""


class ProcessorMetrics:
    """Timing samples of one processor, in seconds."""

    def __init__(self, owner: Processor) -> None:
        self._owner = weakref.ref(owner)  # weak: the owner holds us, and a cycle would outlive its graph
        self.emit_frames = False  # also send a MetricsFrame downstream per sample (set by Graph)
        self.samples: dict[str, deque[float]] = {}
        self.listener: SampleListener | None = None  # sees every sample live (the window forgets old ones)
        self._started_at: float | None = None
        self._first_byte_seen = False

    @property
    def owner(self) -> Processor:
        """Whose metrics these are (its name labels the summary)."""
        owner = self._owner()
        if owner is None:
            raise ReferenceError("the processor of these metrics no longer exists")
        return owner

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Time the enclosed block as ``processing``; ``first_byte()`` inside it records ``ttfb``."""
        self._started_at = time.perf_counter()
        self._first_byte_seen = False
        try:
            yield
        finally:
            started, self._started_at = self._started_at, None
            self.record("processing", time.perf_counter() - started)

    def first_byte(self) -> None:
        """Mark the first output of the current ``measure()`` block (later calls are ignored)."""
        if self._started_at is not None and not self._first_byte_seen:
            self._first_byte_seen = True
            self.record("ttfb", time.perf_counter() - self._started_at)

    def record(self, metric: str, seconds: float) -> None:
        """Add one sample of any metric (for example ``stt_final`` or ``vad_hangover``)."""
        window = self.samples.get(metric)
        if window is None:
            window = self.samples[metric] = deque(maxlen=WINDOW)
        window.append(seconds)
        if self.listener is not None:
            self.listener(metric, seconds)
        if self.emit_frames:
            self.owner.push_system(MetricsFrame(processor=self.owner.name, metric=metric, value=seconds))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: count, mean, p50, p95, p99 and max, in milliseconds."""
        return {metric: summarise([s * 1000 for s in window]) for metric, window in self.samples.items()}


def summarise(values: list[float]) -> dict[str, Any]:
    """count, mean, p50, p95, p99, max of ``values`` (nearest-rank percentiles)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": round(percentile(ordered, 50), 3),
        "p95": round(percentile(ordered, 95), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3),
    }


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
