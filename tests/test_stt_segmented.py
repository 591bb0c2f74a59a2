"""UtteranceSTT: cutting, background transcription, ordering, interims and the no-VAD mode.

A small recogniser defined here stands in for an engine: it reports which audio it was given, so
the tests check exactly what each utterance holds. Real engines are tested in test_stt_whisper.py.
"""

from __future__ import annotations

import asyncio

import numpy as np

from pipeline import negotiate
from pipeline.formats import AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.processor import Source
from pipeline.testing import Collector, Gap, ScriptedSource, run_graph, run_processor, virtual_time
from pipeline.utterances import Utterance
from processors.resample import Resampler
from processors.stt.segmented import Transcription, UtteranceSTT

FRAME_S = 0.02


def frame(index: int, *, rate: int = 16000, level: int | None = None) -> AudioFrame:
    """A 20 ms frame whose samples all hold ``index + 100`` (so the audio says where it came from)."""
    value = index + 100 if level is None else level
    samples = rate // 50
    return UserAudioFrame(pcm=np.full(samples, value, dtype="<i2").tobytes(), sample_rate=rate)


def frame_ids(pcm: bytes) -> list[int]:
    """Which scripted frames a piece of PCM is made of, in order."""
    values = np.frombuffer(pcm, dtype="<i2")
    ids: list[int] = []
    for value in values:
        if not ids or ids[-1] != value - 100:
            ids.append(int(value) - 100)
    return ids


def started(index: int) -> UserStartedSpeakingFrame:
    return UserStartedSpeakingFrame(stream_time=index * FRAME_S)


def stopped(index: int) -> UserStoppedSpeakingFrame:
    return UserStoppedSpeakingFrame(stream_time=index * FRAME_S)


class Recorder(UtteranceSTT):
    """Transcribes an utterance as the range of frame ids it holds; can be held back by a gate."""

    def __init__(self, gate: asyncio.Event | None = None, partials: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.partials = partials
        self.utterances: list[Utterance] = []
        self.partial_calls = 0

    async def transcribe(self, utterance: Utterance) -> Transcription:
        self.utterances.append(utterance)
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 10)
        ids = frame_ids(utterance.pcm)
        return Transcription(text=f"frames {ids[0]}-{ids[-1]}", language="xx")

    async def transcribe_partial(self, pcm: bytes, sample_rate: int) -> str | None:
        if not self.partials:
            return None
        self.partial_calls += 1
        ids = frame_ids(pcm)
        return f"so far {ids[0]}-{ids[-1]}"


def speech(first: int, last: int) -> list[Frame]:
    return [frame(i) for i in range(first, last)]


async def test_one_transcript_per_utterance_and_everything_passes_through() -> None:
    script: list[Frame | Gap] = [
        *speech(0, 20),
        started(20),
        *speech(20, 60),
        stopped(60),
        *speech(60, 100),
        started(100),
        *speech(100, 130),
        stopped(130),
        *speech(130, 150),
    ]
    stt = Recorder(pre_roll=0.1, post_roll=0.04)
    out = await run_processor(stt, script)
    assert not out.errors
    assert out.transcripts == ["frames 15-61", "frames 95-131"]  # 5 frames pre-roll, 2 post-roll
    assert [t.language for t in out.of(TranscriptFrame)] == ["xx", "xx"]
    sent = [f for f in script if isinstance(f, Frame)]
    passed = [f for f in out.down if not isinstance(f, TranscriptFrame)]
    assert [f for f in passed if isinstance(f, AudioFrame)] == [f for f in sent if isinstance(f, AudioFrame)]
    assert all(any(f is s for s in sent) for f in passed)  # the very same frames, unchanged
    assert len(out.of(UserStartedSpeakingFrame)) == 2 and len(out.of(UserStoppedSpeakingFrame)) == 2
    assert [round(u.start, 6) for u in stt.utterances] == [0.3, 1.9]


async def test_a_start_frame_arriving_after_its_audio_still_gets_the_pre_roll() -> None:
    # The VAD decided at frame 40 that speech began at frame 30: the start frame comes 10 frames late.
    script = [*speech(0, 40), started(30), *speech(40, 70), stopped(60), *speech(70, 80)]
    stt = Recorder(pre_roll=0.1, post_roll=0.0)
    out = await run_processor(stt, script)
    assert out.transcripts == ["frames 25-59"]


async def test_silence_is_not_transcribed() -> None:
    script = [
        *[frame(i, level=0) for i in range(30)],
        started(5),
        stopped(25),
        *[frame(i, level=0) for i in range(30, 40)],
    ]
    stt = Recorder()
    out = await run_processor(stt, script)
    assert out.transcripts == []
    assert stt.utterances == []
    assert not out.errors


async def test_audio_keeps_flowing_while_an_utterance_is_transcribed_and_order_holds() -> None:
    gate = asyncio.Event()
    stt = Recorder(gate=gate, pre_roll=0.0, post_roll=0.0)
    collector = Collector()
    script = ScriptedSource(
        [
            started(0),
            *speech(0, 10),
            stopped(10),
            *speech(10, 20),
            started(20),
            *speech(20, 30),
            stopped(30),
            *speech(30, 40),
        ]
    )
    from pipeline.graph import Graph

    graph = Graph(
        {"script": script, "stt": stt, "out": collector}, [("script", "stt"), ("stt", "out")], name="gated"
    )
    run = asyncio.ensure_future(run_graph(graph, timeout=10))
    # All audio passes while the first transcription is held back: intake never waited for it.
    await collector.wait_for(lambda f: isinstance(f, AudioFrame) and frame_ids(f.pcm) == [39])
    assert not [f for f in collector.frames if isinstance(f, TranscriptFrame)]
    assert len(stt.utterances) == 1  # the second waits its turn behind the first
    gate.set()
    out = await run
    assert out.transcripts == ["frames 0-9", "frames 20-29"]


async def test_intake_pauses_when_the_recogniser_falls_behind() -> None:
    gate = asyncio.Event()
    stt = Recorder(gate=gate, pre_roll=0.0, post_roll=0.0)
    collector = Collector()
    script: list[Frame | Gap] = []
    for n in range(4):
        script += [started(10 * n), *speech(10 * n, 10 * n + 9), stopped(10 * n + 9), frame(10 * n + 9)]
    from pipeline.graph import Graph

    graph = Graph(
        {"script": ScriptedSource(script), "stt": stt, "out": collector},
        [("script", "stt"), ("stt", "out")],
        name="behind",
    )
    run = asyncio.ensure_future(run_graph(graph, timeout=10))
    # Utterance 3 closes with its last frame, 28: two are in hand (QUEUE_LIMIT), so intake pauses there.
    await collector.wait_for(lambda f: isinstance(f, AudioFrame) and frame_ids(f.pcm) == [28])
    for _ in range(20):
        await asyncio.sleep(0)
    seen = [frame_ids(f.pcm)[0] for f in collector.frames if isinstance(f, AudioFrame)]
    assert seen[-1] == 28
    gate.set()
    out = await run
    assert out.transcripts == ["frames 0-8", "frames 10-18", "frames 20-28", "frames 30-38"]
    assert len(out.of(AudioFrame)) == 40  # nothing was lost while waiting


async def test_interims_come_while_speaking_and_never_after_the_final() -> None:
    script: list[Frame | Gap] = [started(0)]
    for i in range(60):
        script += [frame(i), Gap(0.005)]
    script += [stopped(60), frame(60), frame(61)]
    stt = Recorder(partials=True, interim_interval_ms=200, pre_roll=0.0, post_roll=0.0)
    out = await run_processor(stt, script)
    kinds = [f for f in out.down if isinstance(f, InterimTranscriptFrame | TranscriptFrame)]
    assert isinstance(kinds[-1], TranscriptFrame) and kinds[-1].text == "frames 0-59"
    interims = [f.text for f in kinds if isinstance(f, InterimTranscriptFrame)]
    assert len(interims) >= 2
    assert interims[0].startswith("so far 0-")
    assert len(set(interims)) == len(interims)


async def test_no_interims_unless_asked() -> None:
    stt = Recorder(partials=True, pre_roll=0.0)
    out = await run_processor(stt, [started(0), *speech(0, 50), stopped(50), frame(50)])
    assert not out.of(InterimTranscriptFrame)
    assert stt.partial_calls == 0


async def test_without_a_vad_the_stream_is_transcribed_at_the_end_in_chunks() -> None:
    stt = Recorder(max_utterance=1.0)
    out = await run_processor(stt, speech(0, 120))
    assert out.transcripts == ["frames 0-49", "frames 50-99", "frames 100-119"]
    # Held back until the end of the stream: every transcript follows the last audio frame.
    last_audio = max(i for i, f in enumerate(out.down) if isinstance(f, AudioFrame))
    first_transcript = min(i for i, f in enumerate(out.down) if isinstance(f, TranscriptFrame))
    assert first_transcript > last_audio


async def test_an_utterance_open_at_the_end_is_transcribed() -> None:
    out = await run_processor(Recorder(pre_roll=0.0), [*speech(0, 10), started(10), *speech(10, 30)])
    assert out.transcripts == ["frames 10-29"]


async def test_bot_audio_is_ignored() -> None:
    bot = BotAudioFrame(pcm=np.full(320, 7, dtype="<i2").tobytes())
    stt = Recorder(pre_roll=0.0, post_roll=0.0)
    out = await run_processor(stt, [started(0), *speech(0, 5), bot, *speech(5, 10), stopped(10), frame(10)])
    assert out.transcripts == ["frames 0-9"]
    assert out.of(BotAudioFrame) == [bot]


class Failing(UtteranceSTT):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    async def transcribe(self, utterance: Utterance) -> Transcription:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("engine hiccup")
        return Transcription("second")


async def test_a_failed_transcription_is_reported_and_the_next_one_still_runs() -> None:
    script = [started(0), *speech(0, 10), stopped(10), frame(10), started(20), *speech(11, 30), stopped(30)]
    out = await run_processor(Failing(pre_roll=0.0), [*script, frame(30)])
    assert out.transcripts == ["second"]
    errors = [f for f in out.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "engine hiccup" in errors[0].message


async def test_metrics_time_the_transcription_and_the_wait_after_speech_end() -> None:
    stt = Recorder(pre_roll=0.0)
    await run_processor(stt, [started(0), *speech(0, 10), stopped(10), frame(10)])
    assert len(stt.metrics.samples["processing"]) == 1
    assert len(stt.metrics.samples["ttfb"]) == 1
    assert stt.metrics.samples["ttfb"][0] >= stt.metrics.samples["processing"][0]


def test_asks_for_16k_mono_and_passes_audio_on() -> None:
    class Source48k(Source):
        produces = (AudioFrame,)

        def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
            return AudioFormat(48000, 2)

    nodes = {"mic": Source48k(), "stt": Recorder(), "sink": Collector()}
    edges = [("mic", "stt"), ("stt", "sink")]
    findings = negotiate.diagnose(nodes, edges)
    assert [f.resample_to for f in findings] == [AudioFormat(16000, 1)]
    fixed, fixed_edges = negotiate.insert_resamplers(
        nodes, edges, lambda name, fmt: Resampler(name=name, sample_rate=fmt.sample_rate, channels=1)
    )
    assert negotiate.check(fixed, fixed_edges) == []
    assert negotiate.edge_formats(fixed, fixed_edges)[("stt", "sink")] == AudioFormat(16000, 1)


def test_bad_params_are_reported_together() -> None:
    from pipeline.errors import ValidationError

    try:
        Recorder(pre_roll=-1.0, max_utterance=0.0)
    except ValidationError as error:
        assert {p.key for p in error.problems} == {"pre_roll", "max_utterance"}
    else:
        raise AssertionError("invalid params were accepted")


async def test_an_interruption_keeps_the_open_utterance() -> None:
    from pipeline.frames import InterruptionFrame

    script: list[Frame | Gap] = [started(0), *speech(0, 20), Gap(0.05), InterruptionFrame()]
    script += [Gap(0.05), *speech(20, 40), stopped(40), frame(40)]
    out = await run_processor(Recorder(pre_roll=0.0, post_roll=0.0), script)
    assert out.transcripts == ["frames 0-39"]


def paused(index: int) -> UserSpeechPausedFrame:
    return UserSpeechPausedFrame(stream_time=index * FRAME_S)


@virtual_time
async def test_early_transcription_starts_at_the_pause_and_is_used_when_the_stop_confirms_it() -> None:
    gate = asyncio.Event()
    stt = Recorder(gate=gate, early_transcription=True, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(10), *speech(0, 30), paused(30), *speech(30, 40)]
    script += [Gap(0.1), stopped(30), *speech(40, 45), Gap(0.1)]
    runner = asyncio.ensure_future(run_processor(stt, script, timeout=30))
    await asyncio.sleep(0.05)  # the stop has not come yet...
    assert len(stt.utterances) == 1  # ...and the transcription of frames 10-29 is already running
    gate.set()
    out = await runner
    assert out.transcripts == ["frames 10-29"]
    assert len(stt.utterances) == 1  # the stop confirmed the pause: no second pass


@virtual_time
async def test_early_transcription_is_dropped_when_speech_resumes() -> None:
    stt = Recorder(early_transcription=True, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(10), *speech(0, 30), paused(30), *speech(30, 50), Gap(0.1)]
    script += [paused(50), *speech(50, 60), Gap(0.1), stopped(50), Gap(0.1)]
    out = await run_processor(stt, script, timeout=30)
    assert out.transcripts == ["frames 10-49"]  # the whole utterance, not the part before the first pause
    assert [frame_ids(u.pcm)[-1] for u in stt.utterances] == [29, 49]  # two early passes, the last kept


async def test_without_early_transcription_pauses_are_passed_on_and_ignored() -> None:
    stt = Recorder(pre_roll=0.0, post_roll=0.0)
    out = await run_processor(stt, [started(0), *speech(0, 20), paused(20), *speech(20, 30), stopped(20)])
    assert out.transcripts == ["frames 0-19"] and len(stt.utterances) == 1
    assert len(out.of(UserSpeechPausedFrame)) == 1


class CountingRecorder(Recorder):
    """A Recorder that counts its calls in flight and how each one ended."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.in_flight = 0
        self.most_in_flight = 0
        self.finished = 0
        self.cancelled = 0

    async def transcribe(self, utterance: Utterance) -> Transcription:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            result = await super().transcribe(utterance)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.finished += 1
        return result


@virtual_time
async def test_a_stale_early_pass_is_left_to_finish_and_no_second_one_starts_meanwhile() -> None:
    # A cancelled task does not stop an inference running in a thread: passes must not pile up.
    gate = asyncio.Event()
    stt = CountingRecorder(gate=gate, early_transcription=True, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(0), *speech(0, 20)]
    for pause in (20, 30, 40):  # three pause/resume cycles while the first early pass is held
        script += [paused(pause), *speech(pause, pause + 10), Gap(0.1)]
    script += [Gap(0.1), paused(50), *speech(50, 60), Gap(0.1), stopped(50), Gap(0.1)]
    runner = asyncio.ensure_future(run_processor(stt, script, timeout=30))
    await asyncio.sleep(0.35)  # after the three cycles, before the pause at frame 50
    assert [frame_ids(u.pcm)[-1] for u in stt.utterances] == [19]  # no early pass for frames 29, 39
    assert stt.in_flight == 1 and stt.cancelled == 0
    gate.set()  # the stale pass finishes; the next pause may start a pass again
    out = await runner
    assert out.transcripts == ["frames 0-49"]
    assert [frame_ids(u.pcm)[-1] for u in stt.utterances] == [19, 49]  # the stop confirmed the second
    assert stt.most_in_flight == 1 and stt.cancelled == 0 and stt.finished == 2


@virtual_time
async def test_an_early_pass_that_the_stop_does_not_confirm_finishes_beside_the_final() -> None:
    gate = asyncio.Event()
    stt = CountingRecorder(gate=gate, early_transcription=True, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(0), *speech(0, 20), paused(20), *speech(20, 30), Gap(0.1)]
    script += [stopped(30), *speech(30, 35), Gap(0.1), started(35), *speech(35, 45), paused(45)]
    script += [*speech(45, 50), Gap(0.1), stopped(45), Gap(0.1)]
    runner = asyncio.ensure_future(run_processor(stt, script, timeout=30))
    await asyncio.sleep(0.15)  # the stop at frame 30 did not match the pause at 20
    assert [frame_ids(u.pcm)[-1] for u in stt.utterances] == [19, 29]  # stale early + the final
    assert stt.cancelled == 0
    gate.set()
    out = await runner
    assert out.transcripts == ["frames 0-29", "frames 35-44"]
    assert stt.cancelled == 0 and stt.in_flight == 0


class SharedEngineRecorder(Recorder):
    """A recogniser whose engine is busy (with another session's work) until frame ``busy_until``."""

    def __init__(self, busy_until: int, **kwargs: object) -> None:
        super().__init__(None, True, **kwargs)
        self.busy_until = busy_until
        self.first_partial_frames: list[int] = []

    def engine_busy(self) -> bool:
        return self._collector.stream_time < self.busy_until * FRAME_S

    async def transcribe_partial(self, pcm: bytes, sample_rate: int) -> str | None:
        self.first_partial_frames.append(frame_ids(pcm)[-1])
        return await super().transcribe_partial(pcm, sample_rate)


@virtual_time
async def test_interims_are_shed_while_the_shared_engine_is_busy_and_resume_when_it_is_free() -> None:
    script: list[Frame | Gap] = [started(0)]
    for i in range(60):
        script += [frame(i), Gap(0.01)]
    script += [stopped(60), frame(60)]
    stt = SharedEngineRecorder(busy_until=40, interim_interval_ms=100, pre_roll=0.0, post_roll=0.0)
    out = await run_processor(stt, script)
    assert stt.first_partial_frames and min(stt.first_partial_frames) >= 39  # none while busy
    assert out.of(InterimTranscriptFrame)  # and they came back once it was free
    assert out.transcripts == ["frames 0-59"]  # the final never waits for them


@virtual_time
async def test_no_interim_starts_while_an_early_pass_is_in_flight() -> None:
    gate = asyncio.Event()
    stt = Recorder(
        gate=gate,
        partials=True,
        early_transcription=True,
        interim_interval_ms=500,  # the first interim is due at frame 25, after the pause
        pre_roll=0.0,
        post_roll=0.0,
    )
    script: list[Frame | Gap] = [started(0), *speech(0, 20), paused(20)]
    for i in range(20, 60):  # speech resumes: the early pass is stale but still running
        script += [frame(i), Gap(0.01)]
    runner = asyncio.ensure_future(run_processor(stt, [*script, stopped(60), frame(60), Gap(0.1)]))
    await asyncio.sleep(0.5)  # all 40 frames after the pause are in
    assert stt.partial_calls == 0  # interims give way to the (early) final's engine time
    gate.set()
    out = await runner
    assert out.transcripts == ["frames 0-59"]


@virtual_time
async def test_the_early_pass_is_an_interim_at_the_pause_and_the_final_reuses_it() -> None:
    stt = Recorder(early_transcription=True, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(10), *speech(0, 30), paused(30), *speech(30, 40), Gap(0.1)]
    script += [stopped(30), *speech(40, 45), Gap(0.1)]
    out = await run_processor(stt, script, timeout=30)
    kinds = [k for k in out.kinds if k in ("interim_transcript", "transcript")]
    assert kinds == ["interim_transcript", "transcript"]
    assert out.of(InterimTranscriptFrame)[0].text == out.transcripts[0] == "frames 10-29"
    assert len(stt.utterances) == 1  # one Whisper pass: the final is the early pass's result


@virtual_time
async def test_no_early_interim_once_the_stop_has_taken_the_pass_as_the_final() -> None:
    gate = asyncio.Event()
    stt = Recorder(gate=gate, early_transcription=True, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(10), *speech(0, 30), paused(30), *speech(30, 40)]
    script += [Gap(0.05), stopped(30), *speech(40, 45), Gap(0.05)]
    runner = asyncio.ensure_future(run_processor(stt, script, timeout=30))
    await asyncio.sleep(0.2)  # the stop came while the pass was still running
    gate.set()
    out = await runner
    assert out.of(InterimTranscriptFrame) == [] and out.transcripts == ["frames 10-29"]


class SlowPartials(Recorder):
    """Partials that take ``delay`` seconds; early and final passes are instant."""

    def __init__(self, delay: float, **kwargs: object) -> None:
        super().__init__(None, True, **kwargs)
        self.delay = delay

    async def transcribe_partial(self, pcm: bytes, sample_rate: int) -> str | None:
        text = await super().transcribe_partial(pcm, sample_rate)
        await asyncio.sleep(self.delay)  # the engine's time (virtual clock)
        return text


@virtual_time
async def test_a_partial_begun_before_the_pause_is_dropped_and_none_runs_in_the_pause() -> None:
    stt = SlowPartials(0.3, early_transcription=True, interim_interval_ms=200, pre_roll=0.0, post_roll=0.0)
    script: list[Frame | Gap] = [started(0)]
    script += [f for i in range(0, 30) for f in (frame(i), Gap(FRAME_S))]  # real time: partials start
    script += [paused(30)]
    script += [f for i in range(30, 38) for f in (frame(i, level=0), Gap(FRAME_S))]  # the pause
    script += [stopped(30), Gap(0.5)]
    out = await run_processor(stt, script, timeout=30)
    # The partial of frames 0-24 ends in the pause, older than the early pass: dropped, and no
    # partial starts in the pause; the early pass's interim holds every word up to it.
    assert [f.text for f in out.of(InterimTranscriptFrame)] == ["so far 0-9", "frames 0-29"]
    assert stt.partial_calls == 2
    assert out.transcripts == ["frames 0-29"]
