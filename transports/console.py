"""``console.output``: the conversation as a live transcript in the terminal.

The user's turns (``UserTextFrame``: final transcripts and typed messages) and the LLM's reply are
written. On a terminal the user's interim transcript is redrawn in place (carriage return, clear
line) until the final one replaces it; the bot's reply streams onto one line as the LLM writes it.
Piped into a file or another program, only final lines are written, with no control characters::

    you: what's the weather like
    bot: It is sunny and warm today. [interrupted]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TextIO

from pipeline.frames import (
    Frame,
    InterimTranscriptFrame,
    LLMResponseEndFrame,
    LLMTextFrame,
    UserTextFrame,
)
from pipeline.params import param
from pipeline.processor import Processor

__all__ = ["ConsoleOutput"]

_CLEAR_LINE = "\r\x1b[2K"  # back to column 0, erase the line


@dataclass(slots=True, kw_only=True)
class ConsoleParams:
    """Params of ``console.output``."""

    stream: Literal["stdout", "stderr"] = param("stdout", doc="where to write the transcript")
    show_interim: bool = param(
        True, doc="redraw the user's words as they are recognised (terminals only; pipes get finals)"
    )


class ConsoleOutput(Processor):
    """Writes user transcripts and bot replies as they happen, and passes every frame on."""

    type_name = "console.output"
    Params = ConsoleParams
    params: ConsoleParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        InterimTranscriptFrame,
        UserTextFrame,
        LLMTextFrame,
        LLMResponseEndFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (InterimTranscriptFrame, UserTextFrame, LLMTextFrame)
    """Passed on after printing, so nodes after it still get them."""

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._line: Literal["interim", "bot"] | None = None  # what the unfinished last line holds

    @property
    def stream(self) -> TextIO:
        """Looked up on every write, so a redirected ``sys.stdout`` is followed."""
        return sys.stderr if self.params.stream == "stderr" else sys.stdout

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, InterimTranscriptFrame):
            self._interim(frame.text)
        elif isinstance(frame, UserTextFrame):
            self._final(frame.text)
        elif isinstance(frame, LLMTextFrame):
            self._bot(frame.text)
        elif isinstance(frame, LLMResponseEndFrame):
            self._end_line()
        await self.push(frame)

    async def on_interrupt(self) -> None:
        if self._line == "interim":
            self._write(_CLEAR_LINE)
            self._line = None
        self._write(" [interrupted]\n" if self._line == "bot" else "[interrupted]\n")
        self._line = None

    async def on_stop(self) -> None:
        self._end_line()

    def _interim(self, text: str) -> None:
        if not (self.params.show_interim and self._tty()):
            return
        if self._line == "bot":
            self._write("\n")  # the reply goes on below once the user is done
        self._write(f"{_CLEAR_LINE}you: {text}…")
        self._line = "interim"

    def _final(self, text: str) -> None:
        if self._line == "interim":
            self._write(_CLEAR_LINE)
        elif self._line == "bot":
            self._write("\n")
        self._write(f"you: {text}\n")
        self._line = None

    def _bot(self, text: str) -> None:
        if self._line == "interim":
            self._write(_CLEAR_LINE)  # the next interim redraws it below the reply
        if self._line != "bot":
            self._write("bot: " + text.lstrip())
            self._line = "bot"
        else:
            self._write(text)

    def _end_line(self) -> None:
        if self._line == "bot":
            self._write("\n")
        elif self._line == "interim":
            self._write(_CLEAR_LINE)
        self._line = None

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text: str) -> None:
        stream = self.stream
        stream.write(text)
        stream.flush()
