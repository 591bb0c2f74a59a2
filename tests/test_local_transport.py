"""``local.input`` / ``local.output`` on a real PortAudio device with a virtual clock-driven sound card.

Every test here runs real ``sounddevice`` streams: PortAudio's audio thread calls the processors'
callbacks in real time (see tests/portaudio_device.py for how a device exists without hardware).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import logging
import os
import re
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ValidationError
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    InterruptionFrame,
    SpokenTextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.observers import Observer
from pipeline.processor import Processor
from pipeline.sources import ToneSource
from pipeline.testing import Collector, ScriptedSource, run_processor
from processors.resample import Resampler
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.portaudio_device import PIPE_BYTES, SoundCard, virtual_sound_card
from tests.speech import LIBRIVOX, espeak, librivox, read_wav, silence
from transports.local import AudioDeviceError, MicrophoneInput, PlaybackBuffer, SpeakerOutput, list_devices

MIC_BLOCK = 640  # bytes in one 20 ms block at 16 kHz mono s16le
TTS_RATE = 24000
SPEAKER_BLOCK = 2 * TTS_RATE // 50  # bytes in one 20 ms block of bot audio
# Audio the device side holds beyond our buffer: the FIFO, plus the chunk ALSA's file plugin is
# writing into it (3.8-6.7 kB measured). It has reached the "sound card", so neither a barge-in nor
# the end of a reply can take it back.
DEVICE_SLACK = 2 * PIPE_BYTES + SPEAKER_BLOCK
STOP_TIMEOUT = 5.0

ROOT = Path(__file__).resolve().parent.parent

OpenCard = Callable[..., SoundCard]


@pytest.fixture
def open_card(tmp_path: Path) -> Iterator[OpenCard]:
    """``open_card(mic_audio=...)``: a virtual sound card for this test, closed at its end."""
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(virtual_sound_card(tmp_path, **options))


def nth(cls: type[Frame], count: int) -> Callable[[Frame], bool]:
    """A ``Collector.wait_for`` match for the ``count``-th frame of class ``cls``."""
    seen = 0

    def match(frame: Frame) -> bool:
        nonlocal seen
        seen += isinstance(frame, cls)
        return seen >= count

    return match


@contextlib.asynccontextmanager
async def running(graph: Graph) -> AsyncIterator[asyncio.Future[None]]:
    """Run ``graph`` in the background; on leaving, stop it (bounded) and surface its errors."""
    runner = asyncio.ensure_future(graph.run())
    try:
        yield runner
    finally:
        await asyncio.wait_for(graph.stop(), STOP_TIMEOUT)
        await asyncio.wait_for(runner, STOP_TIMEOUT)


def audio_of(frames: Sequence[Frame]) -> bytes:
    """The audio of ``frames``, concatenated."""
    return b"".join(f.pcm for f in frames if isinstance(f, AudioFrame))


def heard_now(card: SoundCard) -> int:
    with card.speaker.changed:
        return len(card.speaker.heard)


def find_audio(heard: bytes, pcm: bytes) -> int:
    """Where ``pcm`` starts in ``heard``, located by its first sound (it may begin with silence)."""
    lead = 2 * int(np.flatnonzero(np.frombuffer(pcm, "<i2"))[0])
    found = heard.find(pcm[lead : lead + SPEAKER_BLOCK])
    assert found >= lead, "the audio was not played"
    return found - lead


def sounding(pcm: bytes | bytearray) -> int:
    """How many samples of ``pcm`` are not silent."""
    return int(np.count_nonzero(np.frombuffer(bytes(pcm), "<i2")))


def tone(seconds: float, rate: int = TTS_RATE, amplitude: float = 0.3) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


# --- microphone ---------------------------------------------------------------------------------


async def test_microphone_frames_carry_exactly_what_the_device_captured(open_card: OpenCard) -> None:
    samples, rate = read_wav(librivox("0880"))
    assert rate == 16000
    clip = samples.astype("<i2").tobytes()
    card = open_card(mic_audio=clip)
    mic = MicrophoneInput(device=card.mic_name)
    sink = Collector()
    graph = Graph({"mic": mic, "sink": sink}, [("mic", "sink")])
    blocks = -(-len(clip) // MIC_BLOCK)

    async with running(graph):
        await sink.wait_for(nth(AudioFrame, blocks + 5), timeout=blocks * 0.02 + 10)
        stream = mic._stream

    frames = [f for f in sink.frames if isinstance(f, AudioFrame)]
    assert {(len(f.pcm), f.sample_rate, f.channels) for f in frames} == {(MIC_BLOCK, 16000, 1)}
    audio = audio_of(frames)
    assert audio[: len(clip)] == clip  # byte-exact through PortAudio's callback thread
    assert not any(audio[len(clip) :])  # then the device's silence
    assert sink.frames[-1].kind == "end"  # stop() let the end through
    assert mic.blocks.dropped == 0
    assert stream.closed  # on_stop closed it


class Gate(Processor):
    """Holds every audio frame until ``opened`` is set: a graph that has fallen behind."""

    handles = (AudioFrame,)

    def __init__(self) -> None:
        super().__init__(name="gate", queue_size=1)
        self.opened = asyncio.Event()

    async def process(self, frame: AudioFrame) -> None:
        await asyncio.wait_for(self.opened.wait(), 20)
        await self.push(frame)


def stamp(frame: AudioFrame) -> int:
    """The number of the block a frame carries (see the stamped audio below)."""
    return int(np.frombuffer(frame.pcm, "<i2")[0])


async def test_microphone_drops_the_oldest_audio_when_the_graph_falls_behind(
    open_card: OpenCard, caplog: pytest.LogCaptureFixture
) -> None:
    # Block i (from 1) holds the value i in every sample, so each frame says which block it is.
    stamped = np.repeat(np.arange(1, 501, dtype="<i2"), MIC_BLOCK // 2).tobytes()
    card = open_card(mic_audio=stamped)
    mic = MicrophoneInput(device=card.mic_name, buffer_ms=200)  # room for 10 blocks
    gate, sink = Gate(), Collector(queue_size=1)
    graph = Graph({"mic": mic, "gate": gate, "sink": sink}, [("mic", "gate"), ("gate", "sink")])

    with caplog.at_level(logging.WARNING, logger="transports.local"):
        async with running(graph):
            # 60 blocks into a stalled graph: a few are in flight, 10 fit, the rest overflow.
            await asyncio.to_thread(card.mic.wait_written, 60)
            gate.opened.set()
            await sink.wait_for(lambda f: isinstance(f, AudioFrame) and stamp(f) >= 70, timeout=10)

    blocks = [stamp(f) for f in sink.frames if isinstance(f, AudioFrame)]
    gaps = [i for i in range(1, len(blocks)) if blocks[i] != blocks[i - 1] + 1]
    assert len(gaps) == 1, blocks  # one hole, and every block on each side of it in order
    assert 1 <= gaps[0] <= 4, blocks  # the hole is the oldest audio: what reached the gate came first
    assert blocks[0] == 1
    dropped = blocks[gaps[0]] - blocks[gaps[0] - 1] - 1
    assert dropped == mic.blocks.dropped > 20
    assert sum(mic.metrics.samples["dropped"]) == pytest.approx(dropped * 0.02)
    assert any("fell behind the microphone" in r.getMessage() for r in caplog.records)


async def test_microphone_stream_closes_when_the_graph_is_cancelled(open_card: OpenCard) -> None:
    card = open_card()
    mic = MicrophoneInput(device=card.mic_name)
    sink = Collector()
    graph = Graph({"mic": mic, "sink": sink}, [("mic", "sink")])
    runner = asyncio.ensure_future(graph.run())
    await sink.wait_for(nth(AudioFrame, 3), timeout=10)
    stream = mic._stream
    await asyncio.wait_for(graph.cancel(), STOP_TIMEOUT)
    await asyncio.wait_for(runner, STOP_TIMEOUT)  # no error: a stream we closed is no lost device
    assert stream.closed and not stream.active


@pytest.mark.parametrize("make", [MicrophoneInput, SpeakerOutput])
async def test_an_unknown_device_fails_the_start_and_lists_the_devices(
    open_card: OpenCard, make: Callable[..., Processor]
) -> None:
    card = open_card()
    with pytest.raises(GraphFailedError) as failed:
        await run_processor(make(device="no-such-device"))
    message = str(failed.value)
    assert "no-such-device" in message and card.mic_name in message and card.speaker_name in message


class NoPortAudio(importlib.abc.MetaPathFinder):
    """Makes ``import sounddevice`` fail as it does on a machine without libportaudio2."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")


def test_missing_portaudio_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with pytest.raises(AudioDeviceError, match="apt-get install libportaudio2"):
        list_devices()


def test_python_m_transports_local_lists_the_devices(open_card: OpenCard) -> None:
    card = open_card()  # its ALSA_CONFIG_PATH is inherited by the child
    listing = subprocess.run(
        [sys.executable, "-m", "transports.local"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert listing.returncode == 0, listing.stderr
    assert card.mic_name in listing.stdout and card.speaker_name in listing.stdout


# --- speaker ------------------------------------------------------------------------------------


def reply(pcm: bytes, text: str, frame_bytes: int = SPEAKER_BLOCK) -> list[Frame]:
    """What a TTS sends for one sentence: start, text, audio in frames, stop."""
    audio = [
        BotAudioFrame(pcm=pcm[i : i + frame_bytes], sample_rate=TTS_RATE)
        for i in range(0, len(pcm), frame_bytes)
    ]
    return [TTSStartedFrame(), TTSTextFrame(text=text), *audio, TTSStoppedFrame()]


class Speaking(Observer):
    """Records the speaker's upstream reports, and how many bytes the device had played at each."""

    def __init__(self, card: SoundCard) -> None:
        self.card = card
        self.frames: list[Frame] = []
        self.heard: list[int] = []

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        kinds = (BotStartedSpeakingFrame, SpokenTextFrame, BotStoppedSpeakingFrame)
        if source.name == "speaker" and isinstance(frame, kinds):
            self.frames.append(frame)
            self.heard.append(heard_now(self.card))

    @property
    def kinds(self) -> list[type[Frame]]:
        return [type(f) for f in self.frames]


async def test_speaker_plays_bot_audio_and_reports_speaking_upstream(
    open_card: OpenCard, tmp_path: Path
) -> None:
    text = "Hello there, how can I help?"
    samples, _ = read_wav(espeak(text, tmp_path / "bot.wav", rate=TTS_RATE))
    pcm = samples.astype("<i2").tobytes()
    user = UserAudioFrame(pcm=tone(0.2, 16000), sample_rate=16000)
    card = open_card()
    speaker = SpeakerOutput(device=card.speaker_name, name="speaker")
    speaking = Speaking(card)

    sent = [*reply(pcm, text), user]
    out = await run_processor(speaker, sent, observers=[speaking], timeout=20)

    assert speaking.kinds == [BotStartedSpeakingFrame, SpokenTextFrame, BotStoppedSpeakingFrame]
    assert isinstance(spoken := speaking.frames[1], SpokenTextFrame) and spoken.text == text
    start = find_audio(bytes(card.speaker.heard), pcm)
    # The device plays out what it holds after the stream closed, as a sound card does.
    await asyncio.to_thread(card.speaker.wait_heard, lambda h: len(h) >= start + len(pcm))
    heard = bytes(card.speaker.heard)
    assert not any(heard[:start])
    assert heard[start : start + len(pcm)] == pcm  # byte-exact through PortAudio's callback thread
    # The bot is reported silent once its audio has played, not when it was queued.
    assert speaking.heard[2] >= start + len(pcm) - DEVICE_SLACK
    assert user.pcm[:SPEAKER_BLOCK] not in heard  # audio: bot leaves the user's voice alone
    assert out.down == sent  # every frame passes on, in order
    assert speaker.underruns == 0
    assert speaker._stream is None


async def test_speaker_with_audio_user_plays_the_user_and_not_the_bot(open_card: OpenCard) -> None:
    user = tone(0.3, 16000, amplitude=0.2)
    card = open_card(speaker_rate=16000)
    speaker = SpeakerOutput(device=card.speaker_name, audio="user")
    bot = tone(0.3)
    await run_processor(speaker, [*reply(bot, "hi"), UserAudioFrame(pcm=user, sample_rate=16000)], timeout=20)
    # The device plays out what it holds after the stream closed, as a sound card does.
    await asyncio.to_thread(card.speaker.wait_heard, lambda h: user in h, 10.0, "the user's audio")
    heard = bytes(card.speaker.heard)
    assert bot[SPEAKER_BLOCK : 2 * SPEAKER_BLOCK] not in heard


async def test_barge_in_empties_the_buffer_and_the_speaker_falls_silent(open_card: OpenCard) -> None:
    card = open_card()
    speaker = SpeakerOutput(device=card.speaker_name, buffer_ms=500)  # half a second it must not play
    pcm = tone(5.0)
    source = ScriptedSource(
        [TTSStartedFrame(), TTSTextFrame(text="A long answer."), BotAudioFrame(pcm=pcm, sample_rate=TTS_RATE)]
    )
    source.hold_end = asyncio.Event()
    sink = Collector()
    speaking = Speaking(card)
    edges = [("tts", "speaker"), ("speaker", "sink")]
    graph = Graph({"tts": source, "speaker": speaker, "sink": sink}, edges, observers=[speaking])
    runner = asyncio.ensure_future(graph.run())
    try:
        # Interrupt once the device has played a quarter of a second of the tone.
        await asyncio.to_thread(card.speaker.wait_heard, lambda h: sounding(h) > TTS_RATE // 4)
        source.push_system(InterruptionFrame())
        mark = heard_now(card)
        await sink.wait_for(InterruptionFrame, timeout=5)
        assert speaker.buffer is not None and len(speaker.buffer) == 0
        after = mark + DEVICE_SLACK + TTS_RATE  # half a second past what the device already held
        await asyncio.to_thread(card.speaker.wait_heard, lambda h: len(h) >= after)
    finally:
        source.hold_end.set()
        await asyncio.wait_for(runner, STOP_TIMEOUT)
    heard = np.frombuffer(bytes(card.speaker.heard), "<i2")
    last_sound = 2 * int(np.flatnonzero(heard)[-1])
    assert last_sound < mark + DEVICE_SLACK  # nothing queued after the barge-in reached the device
    assert not heard[(mark + DEVICE_SLACK) // 2 :].any()  # the callback has played silence since
    assert speaking.kinds == [BotStartedSpeakingFrame, SpokenTextFrame, BotStoppedSpeakingFrame]
    assert speaking.heard[2] <= mark + DEVICE_SLACK  # reported silent at the barge-in, not at the end
    assert speaker.underruns == 0  # a barge-in is not an underrun


async def test_speaker_stops_when_cancelled_while_waiting_for_the_device(open_card: OpenCard) -> None:
    card = open_card()
    speaker = SpeakerOutput(device=card.speaker_name)
    source = ScriptedSource([BotAudioFrame(pcm=tone(10.0), sample_rate=TTS_RATE)])
    source.hold_end = asyncio.Event()
    graph = Graph({"tts": source, "speaker": speaker}, [("tts", "speaker")])
    runner = asyncio.ensure_future(graph.run())
    await asyncio.to_thread(card.speaker.wait_heard, lambda h: any(h))
    stream = speaker._stream
    await asyncio.wait_for(graph.cancel(), STOP_TIMEOUT)
    await asyncio.wait_for(runner, STOP_TIMEOUT)
    assert stream.closed and not stream.active


def test_speaker_rate_is_negotiated() -> None:
    fixed = SpeakerOutput(sample_rate=48000)
    with pytest.raises(ValidationError, match=r"audio\.resample"):
        Graph({"tts": ToneSource(sample_rate=24000), "speaker": fixed}, [("tts", "speaker")])
    anything = SpeakerOutput()  # null sample_rate: it opens the device at the audio's own rate
    after = Resampler(sample_rate=16000)  # audio passes on through the speaker
    Graph(
        {"tts": ToneSource(sample_rate=22050), "speaker": anything, "after": after},
        [("tts", "speaker"), ("speaker", "after")],
    )


def test_playback_buffer_takes_whole_sample_frames_only() -> None:
    buffer = PlaybackBuffer(capacity=11, frame_bytes=4)  # stereo: 4 bytes per sample frame
    assert buffer.capacity == 8
    assert buffer.write(b"abcdefghij") == 8  # the partial frame stays with the writer
    out = bytearray(6)
    assert buffer.read_into(out) == 6 and out == bytearray(b"abcdef")
    assert buffer.write(b"123") == 0
    assert buffer.clear() == 2 and len(buffer) == 0


# --- the shipped config, through the CLI ---------------------------------------------------------


async def test_mic_assemblyai_config_transcribes_the_microphone_and_saves_it(
    open_card: OpenCard, tmp_path: Path
) -> None:
    """configs/mic-assemblyai.yaml: speech into the (virtual) microphone, Ctrl-C, transcript + WAV."""
    name = "sense_and_sensibility_01_austen_64kb-0880.wav"
    samples, _ = read_wav(librivox("0880"))
    speech = np.concatenate([silence(0.3), samples, silence(1.0)]).astype("<i2").tobytes()
    card = open_card(mic_audio=speech)
    wav, errors = tmp_path / "session.wav", tmp_path / "stderr.txt"
    async with FakeAssemblyAI(words=LIBRIVOX[name].split(), ms_per_word=80, silence_rms=200.0) as fake:
        env = {
            **os.environ,
            "ALSA_CONFIG_PATH": os.environ["ALSA_CONFIG_PATH"],  # the virtual card, for the child too
            "MIC_DEVICE": card.mic_name,
            "OUTPUT": str(wav),
            "ASSEMBLYAI_API_KEY": "test-key",
            "ASSEMBLYAI_API_HOST": fake.ws_url,
        }
        command = [sys.executable, "-m", "pipeline", "run", "configs/mic-assemblyai.yaml"]
        with errors.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )
            try:
                assert process.stdout is not None
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                process.send_signal(signal.SIGINT)  # Ctrl-C: the graph stops cleanly
                rest, _ = await asyncio.wait_for(process.communicate(), 30)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    assert process.returncode == 0, errors.read_text()
    text = line.decode().removeprefix("you: ")
    assert re.sub(r"[^a-z ]", "", text.lower()) == LIBRIVOX[name]
    assert not rest.strip()  # one turn, printed once
    assert fake.sessions[0].types_received() == ["ForceEndpoint", "Terminate"]  # VAD ended the turn
    with wave.open(str(wav), "rb") as saved:
        assert (saved.getframerate(), saved.getnchannels()) == (16000, 1)
        recorded = saved.readframes(saved.getnframes())
    # The session file holds exactly what the microphone heard, up to Ctrl-C (after the turn's end).
    assert len(recorded) > 2 * (len(samples) + len(silence(0.3)))
    assert recorded == speech[: len(recorded)]
