"""UtteranceCollector: cuts on stream time whatever order audio and speaking frames arrive in.

The audio is a ramp at 1 kHz: sample ``i`` holds the value ``i``, so every cut can be read back as
the exact stream positions it covers.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.frames import AudioFrame, UserAudioFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame
from pipeline.utterances import Utterance, UtteranceCollector

RATE = 1000  # one sample per millisecond: stream positions read straight off the samples


class Ramp:
    """Produces consecutive 20 ms frames of the ramp, remembering where it is."""

    def __init__(self, rate: int = RATE, channels: int = 1) -> None:
        self.rate = rate
        self.channels = channels
        self.position = 0  # samples produced so far

    def frame(self, ms: int = 20) -> AudioFrame:
        count = self.rate * ms // 1000
        values = np.arange(self.position, self.position + count, dtype=np.int16)
        self.position += count
        pcm = np.repeat(values, self.channels).astype("<i2").tobytes()
        return UserAudioFrame(pcm=pcm, sample_rate=self.rate, channels=self.channels)


def feed(collector: UtteranceCollector, ramp: Ramp, seconds: float) -> list[Utterance]:
    """Add ``seconds`` of ramp in 20 ms frames; return the utterances completed."""
    done: list[Utterance] = []
    for _ in range(round(seconds * 50)):
        done += collector.add_audio(ramp.frame())
    return done


def span(utterance: Utterance) -> tuple[int, int]:
    """(first, last + 1) ramp value in the utterance: its stream position in ms."""
    samples = np.frombuffer(utterance.pcm, dtype=np.int16)[:: utterance.channels]
    assert np.all(np.diff(samples) == 1), "the cut is not one contiguous stretch of the stream"
    return int(samples[0]), int(samples[-1]) + 1


def started(at: float) -> UserStartedSpeakingFrame:
    return UserStartedSpeakingFrame(at=0.0, stream_time=at)


def stopped(at: float) -> UserStoppedSpeakingFrame:
    return UserStoppedSpeakingFrame(at=0.0, stream_time=at)


def test_speaking_frames_after_their_audio_cut_with_pre_and_post_roll() -> None:
    collector = UtteranceCollector(pre_roll=0.3, post_roll=0.15)
    ramp = Ramp()
    assert feed(collector, ramp, 1.4) == []
    assert collector.speech_started(started(1.0)) == []
    assert collector.in_speech
    assert feed(collector, ramp, 0.6) == []
    assert collector.speech_stopped(stopped(2.0)) == []  # needs audio up to 2.15 first
    (utterance,) = feed(collector, ramp, 0.2)
    assert span(utterance) == (700, 2150)
    assert (utterance.start, utterance.end) == pytest.approx((0.7, 2.15))
    assert utterance.duration == pytest.approx(1.45)
    assert utterance.sample_rate == RATE and utterance.channels == 1
    assert not collector.in_speech


def test_speaking_frames_before_their_audio() -> None:
    """System frames overtake queued audio: both may arrive before the audio they mark."""
    collector = UtteranceCollector(pre_roll=0.2, post_roll=0.1)
    ramp = Ramp()
    feed(collector, ramp, 0.5)
    assert collector.speech_started(started(1.0)) == []
    assert collector.speech_stopped(stopped(1.5)) == []
    assert feed(collector, ramp, 1.0) == []  # received 1.5: the post-roll is not in yet
    (utterance,) = feed(collector, ramp, 0.1)
    assert span(utterance) == (800, 1600)


def test_stop_and_next_start_both_early_keep_both_utterances_whole() -> None:
    """A busy consumer can see stop, then the next start, before the first utterance's audio."""
    collector = UtteranceCollector(pre_roll=0.2, post_roll=0.1)
    ramp = Ramp()
    feed(collector, ramp, 0.2)
    collector.speech_started(started(0.5))
    collector.speech_stopped(stopped(1.0))
    assert collector.speech_started(started(2.0)) == []
    collector.speech_stopped(stopped(2.5))
    done = feed(collector, ramp, 3.0)
    assert [span(u) for u in done] == [(300, 1100), (1800, 2600)]


def test_pre_roll_is_clamped_to_the_stream_start_and_the_history() -> None:
    collector = UtteranceCollector(pre_roll=0.3, post_roll=0.0, history=0.5)
    ramp = Ramp()
    feed(collector, ramp, 0.2)
    collector.speech_started(started(0.1))
    (first,) = feed(collector, ramp, 0.4) + collector.speech_stopped(stopped(0.5))
    assert span(first) == (0, 500)

    feed(collector, ramp, 2.0)  # received 2.6; only the last 0.5 s is kept while idle
    collector.speech_started(started(1.9))  # a late start: its pre-roll reaches past the history
    feed(collector, ramp, 0.2)
    (second,) = collector.speech_stopped(stopped(2.7))
    assert span(second) == (2100, 2700)
    assert second.start == pytest.approx(2.1)


def test_consecutive_utterances_may_share_audio_between_post_and_pre_roll() -> None:
    collector = UtteranceCollector(pre_roll=0.3, post_roll=0.3)
    ramp = Ramp()
    feed(collector, ramp, 1.0)
    collector.speech_started(started(0.5))
    collector.speech_stopped(stopped(1.0))
    feed(collector, ramp, 0.2)
    collector.speech_started(started(1.4))
    done = feed(collector, ramp, 0.6)
    done += collector.speech_stopped(stopped(1.6))
    done += feed(collector, ramp, 0.4)
    assert [span(u) for u in done] == [(200, 1300), (1100, 1900)]


def test_max_duration_cuts_a_run_on_utterance_and_keeps_collecting() -> None:
    collector = UtteranceCollector(pre_roll=0.0, post_roll=0.0, max_duration=1.0)
    ramp = Ramp()
    collector.speech_started(started(0.0))
    done = feed(collector, ramp, 2.5)
    assert [span(u) for u in done] == [(0, 1000), (1000, 2000)]
    assert collector.in_speech
    assert span(Utterance(collector.open_audio(), RATE, 1, 2.0, 2.5)) == (2000, 2500)
    (last,) = collector.speech_stopped(stopped(2.3))
    assert span(last) == (2000, 2300)


def test_flush_closes_the_open_utterance_at_the_end_of_the_stream() -> None:
    collector = UtteranceCollector(pre_roll=0.1, post_roll=0.1)
    ramp = Ramp()
    feed(collector, ramp, 0.4)
    collector.speech_started(started(0.2))
    feed(collector, ramp, 0.6)
    assert span(Utterance(collector.open_audio(), RATE, 1, 0.1, 1.0)) == (100, 1000)
    (utterance,) = collector.flush()
    assert span(utterance) == (100, 1000)
    assert utterance.end == pytest.approx(1.0)
    assert collector.flush() == []
    assert collector.open_audio() == b""


def test_flush_delivers_a_stopped_utterance_whose_post_roll_never_came() -> None:
    collector = UtteranceCollector(pre_roll=0.0, post_roll=0.5)
    ramp = Ramp()
    collector.speech_started(started(0.0))
    feed(collector, ramp, 0.6)
    assert collector.speech_stopped(stopped(0.4)) == []
    (utterance,) = collector.flush()
    assert span(utterance) == (0, 600)


def test_flush_drops_a_start_the_audio_never_reached() -> None:
    collector = UtteranceCollector()
    feed(collector, Ramp(), 0.2)
    collector.speech_started(started(5.0))
    assert collector.flush() == []
    assert not collector.in_speech


def test_a_format_change_closes_the_open_utterance_and_keeps_the_new_audio() -> None:
    collector = UtteranceCollector(pre_roll=0.0, post_roll=0.0)
    ramp = Ramp()
    feed(collector, ramp, 0.4)
    collector.speech_started(started(0.2))
    feed(collector, ramp, 0.2)
    stereo = Ramp(rate=2000, channels=2)
    (closed,) = collector.add_audio(stereo.frame())
    assert span(closed) == (200, 600)
    assert collector.stream_time == pytest.approx(0.62)  # the frame that changed the format counts

    collector.speech_started(started(0.62))
    for _ in range(9):
        collector.add_audio(stereo.frame())
    (after,) = collector.speech_stopped(stopped(0.8))
    assert (after.sample_rate, after.channels) == (2000, 2)
    assert span(after) == (40, 400)  # samples 40.. of the 2 kHz ramp begin at 0.62 s


def test_speech_stopped_without_a_start_is_ignored() -> None:
    collector = UtteranceCollector()
    feed(collector, Ramp(), 0.5)
    assert collector.speech_stopped(stopped(0.3)) == []
    assert not collector.in_speech


def test_idle_history_stays_bounded() -> None:
    collector = UtteranceCollector(pre_roll=0.3, history=1.0)
    feed(collector, Ramp(), 10.0)
    collector.speech_started(started(0.0))  # far older than anything kept
    assert span(Utterance(collector.open_audio(), RATE, 1, 9.0, 10.0)) == (9000, 10000)
