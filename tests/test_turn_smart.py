"""``turn.smart`` on real speech: the model's verdict decides how long a turn waits after the VAD's stop."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest

from pipeline.frames import (
    DOWNSTREAM,
    Direction,
    Frame,
    TranscriptFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.observers import Observer
from pipeline.processor import Processor
from pipeline.testing import Gap, run_processor, virtual_time
from processors import turn_model
from processors.turn_smart import SmartTurnTaking
from tests.speech import audio_frames, librivox, read_wav, speech_regions

MAX_WAIT = 1.5
PAUSE_SECS = turn_model.HEARD_SILENCE


class TurnTimes(Observer):
    """Loop time of each stop the node received and each transcript it handed on."""

    def __init__(self) -> None:
        self.stops: list[float] = []
        self.turns: list[tuple[float, str]] = []

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(frame, UserStoppedSpeakingFrame) and isinstance(target, SmartTurnTaking):
            self.stops.append(now)
        elif (
            isinstance(frame, TranscriptFrame)
            and direction is DOWNSTREAM
            and isinstance(source, SmartTurnTaking)
        ):
            self.turns.append((now, frame.text))


def speech(cut: float = 1.0) -> tuple[np.ndarray, float]:
    """A LibriVox sentence ("... how much there might be prudently in his power to do for them"), or its
    first ``cut`` of it (an unfinished thought), and where its speech ends (seconds)."""
    samples, rate = read_wav(librivox("0870"))
    samples = samples[: int(samples.size * cut)]
    return samples, speech_regions(samples, rate)[1]


def silence() -> np.ndarray:
    """What the microphone sends between the end of speech and the VAD's pause."""
    return np.zeros(round(PAUSE_SECS * 16000), np.int16)


def spoken(
    samples: np.ndarray, end: float, text: str | None, start: float = 0.0, settle: float = 0.05
) -> list[Frame | Gap]:
    """What the recogniser passes on for one stretch of speech: its audio and the silence up to the
    VAD's pause, the pause, ``settle`` s later the stop, then the final (none if ``text`` is None: a
    cough the recogniser found no words in)."""
    final = [] if text is None else [TranscriptFrame(text=text)]
    return [
        UserStartedSpeakingFrame(stream_time=start),
        *audio_frames(samples, silence()),
        UserSpeechPausedFrame(stream_time=start + end),
        Gap(settle),
        UserStoppedSpeakingFrame(stream_time=start + end),
        *final,
    ]


@virtual_time
async def test_a_finished_sentence_ends_the_turn_without_the_long_wait() -> None:
    samples, end = speech()
    times, node = TurnTimes(), SmartTurnTaking(max_wait_secs=MAX_WAIT)
    out = await run_processor(
        node, [*spoken(samples, end, "how much he could do for them"), Gap(3.0)], observers=[times]
    )
    assert [text for _, text in times.turns] == ["how much he could do for them"]
    assert [p for p, _ in node.decisions][-1] >= 0.5
    waited = times.turns[0][0] - times.stops[0]
    assert waited < MAX_WAIT - 0.5, f"a finished turn waited {waited:.2f}s"
    assert not out.errors


@virtual_time
async def test_an_unfinished_sentence_waits_then_ends_after_max_wait() -> None:
    samples, end = speech(cut=0.6)
    times, node = TurnTimes(), SmartTurnTaking(max_wait_secs=MAX_WAIT)
    await run_processor(
        node, [*spoken(samples, end, "and mister john dashwood had then"), Gap(3.0)], observers=[times]
    )
    assert [p for p, _ in node.decisions][-1] < 0.5
    assert len(times.turns) == 1
    waited = times.turns[0][0] - times.stops[0]
    assert MAX_WAIT - 0.1 <= waited <= MAX_WAIT + 0.5, f"an unfinished turn waited {waited:.2f}s"


def resumed_turn(settle: float, rest_text: str | None) -> list[Frame | Gap]:
    """An unfinished thought, 0.6 s of silence, then the rest of the sentence (or a cough)."""
    first, first_end = speech(cut=0.6)
    whole, whole_end = speech()
    resumed_at = (first.size + silence().size) / 16000
    script = [*spoken(first, first_end, "and mister john dashwood had then"), Gap(0.6)]
    rest = whole[first.size :]
    return script + spoken(rest, whole_end - resumed_at, rest_text, start=resumed_at, settle=settle)


@pytest.mark.parametrize(
    "settle",
    [0.0, 2.0],
    ids=["verdict-after-the-stop", "verdict-before-the-stop"],
)
@virtual_time
async def test_speech_that_resumes_within_the_wait_joins_the_same_turn(settle: float) -> None:
    """Whichever comes first at the second stop, the verdict or the recogniser's final for the resumed
    speech, the turn ends once, with both finals merged, after that final."""
    times, node = TurnTimes(), SmartTurnTaking(max_wait_secs=MAX_WAIT)
    await run_processor(node, [*resumed_turn(settle, "leisure to consider"), Gap(3.0)], observers=[times])
    assert [text for _, text in times.turns] == ["and mister john dashwood had then leisure to consider"]
    assert node.decisions[-1][0] >= 0.5  # the whole sentence sounds finished
    waited = times.turns[0][0] - times.stops[1]
    assert waited < MAX_WAIT - 0.5, f"a finished turn waited {waited:.2f}s after its last stop"


@virtual_time
async def test_resumed_speech_without_words_ends_the_held_turn_after_max_wait() -> None:
    """A cough in the wait brings no final: the turn keeps its first words and ends after the wait."""
    times, node = TurnTimes(), SmartTurnTaking(max_wait_secs=MAX_WAIT)
    await run_processor(node, [*resumed_turn(2.0, None), Gap(3.0)], observers=[times])
    assert [text for _, text in times.turns] == ["and mister john dashwood had then"]
    waited = times.turns[0][0] - times.stops[1]
    assert MAX_WAIT - 0.1 <= waited <= MAX_WAIT + 0.5, f"the held turn waited {waited:.2f}s"


def test_a_missing_model_package_is_a_problem_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turn_model, "model_path", lambda: None)
    problems = SmartTurnTaking().check()
    assert any("pipecat-ai" in str(p) and "pip install --no-deps pipecat-ai" in str(p) for p in problems)
    missing = SmartTurnTaking(model_path="/nonexistent/smart-turn.onnx").check()
    assert any("does not exist" in str(p) for p in missing)


def test_features_hear_the_last_eight_seconds_padded_with_silence_in_front() -> None:
    samples, rate = read_wav(librivox("0870"))
    audio = samples.astype(np.float32) / 32768  # 7.1 s
    features = turn_model.log_mel(audio)
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert np.array_equal(
        features, turn_model.log_mel(np.concatenate([np.zeros(rate // 2, np.float32), audio]))
    )
    longer = np.concatenate([np.full(rate * 3, 0.5, np.float32), audio])
    assert np.array_equal(turn_model.log_mel(longer), turn_model.log_mel(longer[-rate * 8 :]))
    assert features.max() - features.min() <= 2.0 + 1e-6  # log10 clamped to 8 decades, scaled by 1/4


def test_a_shorter_window_without_onnx_is_a_problem_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    problems = SmartTurnTaking(window_secs=4).check()
    assert any("onnx" in str(p) and "pip install onnx" in str(p) for p in problems)
    assert not any("onnx" in str(p) for p in SmartTurnTaking().check())
