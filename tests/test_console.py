"""console.output: finals only when piped, interim redrawn in place on a terminal, streamed replies."""

from __future__ import annotations

import io
import sys

import pytest

from pipeline.frames import (
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TranscriptFrame,
    TTSTextFrame,
    UserTextFrame,
)
from pipeline.graph import Graph
from pipeline.registry import resolve
from pipeline.testing import WhenPushed, run_graph, run_processor
from tests.drivers import Gated
from transports.console import ConsoleOutput

CLEAR = "\r\x1b[2K"

TURN: list[Frame] = [
    InterimTranscriptFrame(text="what's"),
    InterimTranscriptFrame(text="what's the weather"),
    TranscriptFrame(text="what's the weather like"),
    LLMResponseStartFrame(),
    LLMTextFrame(text="It is"),
    LLMTextFrame(text=" sunny."),
    LLMResponseEndFrame(),
]


class Terminal(io.StringIO):
    """What a terminal receives: a stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


def test_registered_as_console_output() -> None:
    assert resolve("console.output") is ConsoleOutput


async def test_piped_output_has_final_lines_only(capsys: pytest.CaptureFixture[str]) -> None:
    out = await run_processor(ConsoleOutput(), [*TURN, TextFrame(text="other")])
    assert capsys.readouterr().out == "you: what's the weather like\nbot: It is sunny.\n"
    assert out.kinds == [f.kind for f in TURN] + ["text"]  # everything passes on


async def test_typed_turns_print_like_spoken_ones_and_bot_text_only_from_the_llm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = [UserTextFrame(text="typed"), TTSTextFrame(text="Spoken."), LLMTextFrame(text="Reply.")]
    await run_processor(ConsoleOutput(), frames)
    assert capsys.readouterr().out == "you: typed\nbot: Reply.\n"


async def test_a_terminal_sees_interim_words_rewritten_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    await run_processor(ConsoleOutput(), TURN)
    assert terminal.getvalue() == (
        f"{CLEAR}you: what's…{CLEAR}you: what's the weather…{CLEAR}you: what's the weather like\n"
        "bot: It is sunny.\n"
    )


async def test_interim_words_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    await run_processor(ConsoleOutput(stream="stderr", show_interim=False), TURN)
    assert terminal.getvalue() == "you: what's the weather like\nbot: It is sunny.\n"


async def test_an_interruption_ends_the_reply_line(capsys: pytest.CaptureFixture[str]) -> None:
    llm = Gated(
        [LLMResponseStartFrame(), LLMTextFrame(text="Let me tell you")],
        [InterruptionFrame(), TranscriptFrame(text="stop")],
        name="llm",
    )
    shown = WhenPushed("console", LLMTextFrame, llm.gate.set)  # the console has passed the chunk on
    graph = Graph({"llm": llm, "console": ConsoleOutput()}, [("llm", "console")], observers=[shown])
    await run_graph(graph)
    assert capsys.readouterr().out == "bot: Let me tell you [interrupted]\nyou: stop\n"


async def test_a_user_speaking_over_a_streaming_reply_gets_a_line_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    frames: list[Frame] = [
        LLMTextFrame(text="Well,"),
        InterimTranscriptFrame(text="wait"),
        LLMTextFrame(text=" then"),
        TranscriptFrame(text="wait a second"),
    ]
    await run_processor(ConsoleOutput(), frames)
    assert terminal.getvalue() == f"bot: Well,\n{CLEAR}you: wait…{CLEAR}bot: then\nyou: wait a second\n"
