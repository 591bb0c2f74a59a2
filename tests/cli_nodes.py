"""Processors the CLI tests load by import path (``type: tests.cli_nodes:Recorder``).

The CLI runs in a separate process in some tests, so these report what happened through files.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import FatalProcessorError
from pipeline.frames import AudioFrame, Frame, TextFrame
from pipeline.params import param
from pipeline.processor import Processor


@dataclass(slots=True)
class MarkerParams:
    started: str = param(doc="file written by on_start: the graph is running")
    stopped: str = param(doc="file written by on_stop, with the number of frames seen")


class Recorder(Processor):
    """Stands in for a recorder: counts audio, and writes its "file" only when stopped."""

    Params = MarkerParams
    params: MarkerParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames = 0

    async def on_start(self) -> None:
        Path(self.params.started).write_text("started\n")

    async def process(self, frame: AudioFrame) -> None:
        self.frames += 1

    async def on_stop(self) -> None:
        Path(self.params.stopped).write_text(f"{self.frames}\n")


class Stuck(Processor):
    """Never returns from ``process``: only cancelling the graph ends it."""

    Params = MarkerParams
    params: MarkerParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    async def process(self, frame: AudioFrame) -> None:
        Path(self.params.started).write_text("processing\n")
        await asyncio.Event().wait()

    async def on_stop(self) -> None:
        Path(self.params.stopped).write_text("stopped\n")


@dataclass(slots=True)
class RefusingParams:
    api_key: str = param(doc="credential", secret=True)


class Refuses(Processor):
    """Fails fatally on the first text, echoing its key the way a careless SDK error would."""

    Params = RefusingParams
    params: RefusingParams
    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        raise FatalProcessorError(f"the service refused key {self.params.api_key}")


class LeakyConstructor(Processor):
    """Fails while being built, echoing its key in the error."""

    Params = RefusingParams
    params: RefusingParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        raise RuntimeError(f"could not log in with {self.params.api_key}")
