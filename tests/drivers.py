"""Test sources that hold a conversation with the graph: they wait for what the graph did before
sending more, so a test reacts to output without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from pipeline.frames import Frame
from pipeline.processor import Source

Step = Frame | Callable[[], Awaitable[Any]]
"""A frame to send, or a coroutine function to await (at most 5 s) before the next step."""


class Driver(Source):
    """Sends frames, awaiting the callables between them: a conversation that reacts to the output."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        super().__init__(name="driver")
        self.steps = steps

    async def generate(self) -> AsyncIterator[Frame]:
        for step in self.steps:
            if isinstance(step, Frame):
                yield step
            else:
                await asyncio.wait_for(step(), 5)


class Gated(Source):
    """Sends ``before``, waits for ``gate`` (set when the test saw what it waits for), then ``after``."""

    def __init__(self, before: list[Frame], after: list[Frame], *, name: str) -> None:
        super().__init__(name=name)
        self.before, self.after = before, after
        self.gate = asyncio.Event()

    async def generate(self) -> AsyncIterator[Frame]:
        for frame in self.before:
            yield frame
        await asyncio.wait_for(self.gate.wait(), 5)
        for frame in self.after:
            yield frame


class Scripted(Source):
    """Yields what an async generator function yields: a script that may await anything (bounded by
    its own timeouts) between frames, e.g. a fake's state or the speaker's playout."""

    def __init__(self, script: Callable[[], AsyncIterator[Frame]], *, name: str = "user") -> None:
        super().__init__(name=name)
        self.script = script

    async def generate(self) -> AsyncIterator[Frame]:
        async for frame in self.script():
            yield frame
