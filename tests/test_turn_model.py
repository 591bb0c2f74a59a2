"""The end-of-turn model's features, computed as the audio arrives, equal those computed at once."""

from __future__ import annotations

import numpy as np
import pytest

from processors import turn_model
from tests.speech import librivox, read_wav

RATE = turn_model.SAMPLE_RATE


def sentence() -> np.ndarray:
    samples, _ = read_wav(librivox("0870"))  # 7.1 s of LibriVox speech
    return samples.astype(np.float32) / 32768


def streamed(audio: np.ndarray, chunk: int) -> turn_model.LogMelStream:
    stream = turn_model.LogMelStream()
    for start in range(0, audio.size, chunk):
        stream.add(audio[start : start + chunk])
    return stream


@pytest.mark.parametrize(
    ("seconds", "chunk"),
    [(0.05, 320), (3.0, 320), (7.1, 480), (8.0, 320), (11.3, 320), (21.0, 16000 * 9)],
    ids=["a-syllable", "shorter-than-the-window", "a-sentence", "the-window", "longer", "in-big-pieces"],
)
def test_streamed_features_equal_the_features_of_the_whole_audio(seconds: float, chunk: int) -> None:
    audio = np.tile(sentence(), 3)[: int(seconds * RATE)]
    audio = audio[: audio.size - audio.size % 160]  # features end on a 10 ms boundary
    features = streamed(audio, chunk).features()
    assert features.shape == (80, 800) and features.dtype == np.float32
    np.testing.assert_allclose(features, turn_model.log_mel(audio), atol=1e-4)


def test_features_can_end_before_the_newest_audio() -> None:
    """At a pause the newest audio may run past the moment judged: features end where asked."""
    audio = sentence()
    stream = streamed(audio, 320)
    end = 5 * RATE + 37  # rounded down to 10 ms
    np.testing.assert_allclose(stream.features(end), turn_model.log_mel(audio[: 5 * RATE]), atol=1e-4)


def test_a_copy_keeps_its_features_while_the_stream_takes_more_audio() -> None:
    """The pause's features are computed in a thread from a copy, as the audio goes on arriving."""
    audio = sentence()
    stream = streamed(audio[: 5 * RATE], 320)
    frozen = stream.copy()
    stream.add(audio[5 * RATE :])  # 2 s more (the buffer shifts once the window is full)
    stream.add(np.tile(audio, 2))
    np.testing.assert_array_equal(frozen.features(5 * RATE), streamed(audio[: 5 * RATE], 320).features())


def test_the_model_gives_one_verdict_from_either_features() -> None:
    audio = sentence()
    session = turn_model.shared_session()
    whole = turn_model.end_of_turn_probability(audio[: audio.size - audio.size % 160], session)
    assert turn_model.probability(streamed(audio, 320).features(), session) == pytest.approx(whole, abs=0.02)
    assert whole >= 0.5  # a whole sentence sounds finished


def test_a_shorter_window_hears_the_end_of_the_same_features() -> None:
    """``window_secs`` 4: the model derived to hear the last 4 s judges a whole sentence and its first
    words as the 8 s model does."""
    pytest.importorskip("onnx", reason="window_secs below 8 needs the onnx package: pip install onnx")
    audio = sentence()
    finished = turn_model.log_mel(np.concatenate([audio, np.zeros(RATE // 5, np.float32)]))
    unfinished = turn_model.log_mel(
        np.concatenate([audio[: int(audio.size * 0.6)], np.zeros(RATE // 5, np.float32)])
    )
    short = turn_model.shared_session(window_secs=4)
    assert short.get_inputs()[0].shape[1:] == [80, 400]
    assert turn_model.probability(finished, short) >= 0.5
    assert turn_model.probability(unfinished, short) < 0.5
