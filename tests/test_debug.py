"""Debugging sinks: the frame printer and the null sink."""

from __future__ import annotations

import pytest

from pipeline.formats import AudioFormat
from pipeline.frames import (
    BotAudioFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
)
from pipeline.registry import resolve
from pipeline.testing import Gap, run_processor, virtual_time
from processors.debug import FramePrinter, NullSink, describe

MIXED: list[Frame | Gap] = [
    UserStartedSpeakingFrame(at=1.5),
    UserAudioFrame(pcm=bytes(640)),
    TranscriptFrame(text="hello world", language="en"),
    LLMResponseStartFrame(),
    LLMTextFrame(text='say "hi"'),
]


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_types_are_registered() -> None:
    assert resolve("debug.print") is FramePrinter
    assert resolve("debug.null") is NullSink


def test_describe_gives_kind_and_payload() -> None:
    assert describe(TranscriptFrame(text="hello world")) == 'transcript "hello world"'
    assert describe(UserAudioFrame(pcm=bytes(640), sample_rate=16000)) == "user_audio 20.0 ms 16000 Hz mono"
    assert (
        describe(BotAudioFrame(pcm=bytes(960), sample_rate=24000, channels=2))
        == "bot_audio 10.0 ms 24000 Hz 2 channels"
    )
    assert (
        describe(ErrorFrame(message="boom", processor="stt"))
        == 'error message="boom" processor="stt" fatal=False'
    )
    assert describe(LLMResponseStartFrame()) == "llm_response_start"


async def test_printer_prints_a_line_per_frame_without_audio(capsys: pytest.CaptureFixture[str]) -> None:
    out = await run_processor(FramePrinter(name="out"), MIXED)
    assert lines(capsys) == [
        "[out] user_started_speaking at=1.5 stream_time=0.0",
        '[out] transcript "hello world" language="en"',
        "[out] llm_response_start",
        '[out] llm_text "say \\"hi\\""',
    ]
    assert out.down == [f for f in MIXED if isinstance(f, Frame)]  # it passes everything on


async def test_printer_prints_audio_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    await run_processor(
        FramePrinter(name="out", audio=True), [UserAudioFrame(pcm=bytes(640)), TextFrame(text="x")]
    )
    assert lines(capsys) == ["[out] user_audio 20.0 ms 16000 Hz mono", '[out] text "x"']


async def test_printer_filters_by_kind_including_subclasses(capsys: pytest.CaptureFixture[str]) -> None:
    await run_processor(
        FramePrinter(name="out", kinds=["bot_text", "audio"]), [*MIXED, BotAudioFrame(pcm=bytes(320))]
    )
    assert lines(capsys) == [
        "[out] user_audio 20.0 ms 16000 Hz mono",
        '[out] llm_text "say \\"hi\\""',
        "[out] bot_audio 10.0 ms 16000 Hz mono",
    ]


async def test_printer_shows_interruptions(capsys: pytest.CaptureFixture[str]) -> None:
    await run_processor(FramePrinter(name="out"), [InterruptionFrame()])
    assert lines(capsys) == ["[out] interruption"]


def test_printer_rejects_unknown_kinds_with_a_suggestion() -> None:
    [problem] = FramePrinter(name="out", kinds=["transcrpt"]).check()
    assert (problem.key, problem.message) == ("kinds", "unknown frame kind 'transcrpt'")
    assert problem.fix == "did you mean 'transcript'?"


def test_printer_passes_audio_format_through() -> None:
    assert FramePrinter().output_format(AudioFormat(16000)) == AudioFormat(16000)


@virtual_time
async def test_null_sink_swallows_and_counts_per_kind() -> None:
    sink = NullSink()
    out = await run_processor(sink, [*MIXED, UserAudioFrame(pcm=bytes(640)), Gap(1.0), InterruptionFrame()])
    assert sink.counts == {
        "user_started_speaking": 1,
        "user_audio": 2,
        "transcript": 1,
        "llm_response_start": 1,
        "llm_text": 1,
        "interruption": 1,
    }
    assert sink.total == 7
    assert out.kinds == ["interruption"]  # the runtime forwards interruptions; nothing else leaves
    assert sink.output_format(AudioFormat(16000)) is None
