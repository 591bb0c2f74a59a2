"""Frame tiers, kinds and payload helpers."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotTextFrame,
    CancelFrame,
    ControlFrame,
    DataFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
    SystemFrame,
    TextFrame,
    TranscriptFrame,
    TTSTextFrame,
    Uninterruptible,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserTextFrame,
    frame_kinds,
)
from pipeline.processor import Processor
from pipeline.testing import run_processor


@dataclasses.dataclass(slots=True)
class KeptFrame(Uninterruptible, DataFrame):
    note: str = ""


@pytest.mark.parametrize(
    "cls",
    [
        StartFrame,
        CancelFrame,
        InterruptionFrame,
        UserStartedSpeakingFrame,
        BotStartedSpeakingFrame,
        ErrorFrame,
    ],
)
def test_system_frames_overtake_and_survive_interruptions(cls: type[Frame]) -> None:
    assert cls.system
    assert cls.uninterruptible


@pytest.mark.parametrize("cls", [BotAudioFrame, TextFrame, LLMTextFrame, TranscriptFrame])
def test_data_frames_are_in_order_and_interruptible(cls: type[Frame]) -> None:
    assert not cls.system
    assert not cls.uninterruptible
    assert issubclass(cls, DataFrame)


def test_user_audio_survives_interruptions_but_stays_live_media() -> None:
    assert issubclass(AudioFrame, DataFrame) and not AudioFrame.system
    assert AudioFrame.uninterruptible and AudioFrame.live  # a full drop_oldest inbox may still drop it
    assert BotAudioFrame.live and not BotAudioFrame.uninterruptible  # the bot's voice stops on barge-in


def test_end_is_an_uninterruptible_control_frame() -> None:
    assert issubclass(EndFrame, ControlFrame)
    assert EndFrame.uninterruptible
    assert not EndFrame.system


def test_uninterruptible_mixin_marks_a_custom_data_frame() -> None:
    frame = KeptFrame(note="keep me")
    assert frame.uninterruptible
    assert not frame.system
    assert frame.kind == "data"
    assert not hasattr(frame, "__dict__")  # still slotted


def test_frame_kinds_maps_every_kind_to_its_class() -> None:
    kinds = frame_kinds()
    assert kinds["start"] is StartFrame
    assert kinds["audio"] is AudioFrame
    assert kinds["bot_audio"] is BotAudioFrame
    assert kinds["transcript"] is TranscriptFrame
    assert kinds["interim_transcript"] is InterimTranscriptFrame
    assert kinds["llm_text"] is LLMTextFrame
    assert kinds["user_text"] is UserTextFrame
    assert kinds["bot_text"] is BotTextFrame
    assert kinds["end"] is EndFrame
    assert kinds["metrics"] is MetricsFrame
    assert all(cls.kind == kind for kind, cls in kinds.items())


TEXTS: list[Frame] = [
    TranscriptFrame(text="said"),
    UserTextFrame(text="typed"),
    InterimTranscriptFrame(text="sa"),
    LLMTextFrame(text="chunk"),
    TTSTextFrame(text="sentence"),
    BotTextFrame(text="greeting"),
    TextFrame(text="nobody's"),
]


class Seen(Processor):
    """Records the text frames it is given; ``handles`` is set per test."""

    def setup(self) -> None:
        self.seen: list[str] = []

    async def process(self, frame: TextFrame) -> None:
        self.seen.append(frame.text)
        await self.push(frame)


@pytest.mark.parametrize(
    ("handled", "expected"),
    [
        (TextFrame, ["said", "typed", "sa", "chunk", "sentence", "greeting", "nobody's"]),
        (UserTextFrame, ["said", "typed"]),
        (BotTextFrame, ["chunk", "sentence", "greeting"]),
    ],
)
async def test_a_text_class_says_whose_text_a_processor_gets(
    handled: type[TextFrame], expected: list[str]
) -> None:
    node = type("Node", (Seen,), {"handles": (handled,), "produces": (handled,)})()
    out = await run_processor(node, TEXTS)
    assert node.seen == expected
    assert out.down == TEXTS  # the rest passed by, in order


def test_audio_frame_reports_samples_and_duration() -> None:
    stereo = UserAudioFrame(pcm=bytes(4 * 320), sample_rate=16000, channels=2)
    assert stereo.num_samples == 320
    assert stereo.duration == pytest.approx(0.02)


def test_equality_ignores_creation_time_and_name_is_the_class() -> None:
    first, second = TextFrame(text="hi"), TextFrame(text="hi")
    assert first == second
    assert first.name == "TextFrame"
    assert first.age_ms() >= 0
    assert "created" not in repr(first)


def test_frames_are_replaced_not_edited() -> None:
    original = TranscriptFrame(text="hello", language="en")
    changed = dataclasses.replace(original, text="hello there")
    assert original.text == "hello"
    assert changed.language == "en"


def test_system_tier_base_class() -> None:
    assert SystemFrame.system
    assert issubclass(ErrorFrame, SystemFrame)
    assert ErrorFrame(message="boom", processor="stt").fatal is False
