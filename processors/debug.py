"""Debugging sinks: see what flows out of a graph, or swallow it (benchmarks).

``debug.print`` writes one line per frame, such as::

    [out] transcript "hello world"
    [out] audio 20.0 ms 16000 Hz mono
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.errors import Problem
from pipeline.formats import AudioFormat
from pipeline.frames import AudioFrame, Frame, InterruptionFrame, frame_kinds
from pipeline.params import did_you_mean, param
from pipeline.processor import Processor

__all__ = ["FramePrinter", "NullSink", "describe"]


@dataclass(slots=True, kw_only=True)
class PrinterParams:
    """Params of ``debug.print``."""

    kinds: list[str] | None = param(None, doc="frame kinds to print, e.g. [transcript, llm_text]; null = all")
    audio: bool = param(False, doc="also print audio frames when kinds is null (a line per frame: noisy)")


def describe(frame: Frame) -> str:
    """One readable line for a frame: its kind, then its payload."""
    if isinstance(frame, AudioFrame):
        fmt = AudioFormat(frame.sample_rate, frame.channels)
        return f"{frame.kind} {frame.duration * 1000:.1f} ms {fmt}"
    parts = [frame.kind]
    text = getattr(frame, "text", None)
    if isinstance(text, str):
        parts.append(json.dumps(text, ensure_ascii=False))
    for f in dataclasses.fields(frame):
        if f.name in ("created", "text"):
            continue
        value = getattr(frame, f.name)
        if value is None or value == "" or not isinstance(value, str | int | float | bool):
            continue
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
        parts.append(f"{f.name}={shown}")
    return " ".join(parts)


class FramePrinter(Processor):
    """Prints a line per frame to stdout and passes every frame on, so it also works mid-graph.

    Audio is left out unless ``audio: true`` or ``kinds`` names it: at 50 lines a second it
    buries everything else. A kind includes its subclasses (``bot_text`` also prints ``llm_text``).
    """

    type_name = "debug.print"
    Params = PrinterParams
    params: PrinterParams
    handles: ClassVar[tuple[type[Frame], ...]] = (Frame,)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        known = frame_kinds()
        self._wanted = tuple(known[kind] for kind in self.params.kinds or () if kind in known)

    def check(self) -> list[Problem]:
        """Every kind named must be a frame kind (plugins may add kinds, so they are looked up now)."""
        known = frame_kinds()
        problems = []
        for kind in self.params.kinds or ():
            if kind not in known:
                guess = did_you_mean(kind, list(known))
                fix = f"did you mean '{guess}'?" if guess else "known kinds: " + ", ".join(sorted(known))
                problems.append(Problem(f"unknown frame kind '{kind}'", fix=fix, node=self.name, key="kinds"))
        return problems

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming

    def wants(self, cls: type[Frame]) -> bool:
        """Whether frames of class ``cls`` get a line."""
        if self._wanted:
            return issubclass(cls, self._wanted)
        return self.params.audio or not issubclass(cls, AudioFrame)

    async def process(self, frame: Frame) -> None:
        if self.wants(type(frame)):
            self._print(describe(frame))
        await self.push(frame)

    async def on_interrupt(self) -> None:
        if self.wants(InterruptionFrame):
            self._print(InterruptionFrame.kind)

    def _print(self, line: str) -> None:
        print(f"[{self.name}] {line}", file=sys.stdout, flush=True)


class NullSink(Processor):
    """Swallows every frame and counts them per kind: a sink that costs nothing, for benchmarks."""

    type_name = "debug.null"
    handles: ClassVar[tuple[type[Frame], ...]] = (Frame,)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.counts: Counter[str] = Counter()
        """Frames swallowed, by kind (interruptions included)."""

    @property
    def total(self) -> int:
        """Frames swallowed in all."""
        return sum(self.counts.values())

    async def process(self, frame: Frame) -> None:
        self.counts[frame.kind] += 1

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None  # everything stops here

    async def on_interrupt(self) -> None:
        self.counts[InterruptionFrame.kind] += 1
