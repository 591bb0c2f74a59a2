"""recorder: tracks on one timeline, the transcript, barge-in, atomic saves, repair, and a real crash."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from textwrap import dedent
from typing import Any

import numpy as np
import pytest

from pipeline.errors import ValidationError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotAudioFrame,
    BotStoppedSpeakingFrame,
    BotTextFrame,
    Direction,
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    SpokenTextFrame,
    TranscriptFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserTextFrame,
)
from pipeline.graph import Graph
from pipeline.observers import Observer
from pipeline.processor import Processor, Source
from pipeline.registry import resolve
from pipeline.sessions import new_session_id
from pipeline.testing import Collector, run_graph, run_processor
from pipeline.wavfile import HEADER_SIZE, WavWriter
from processors import recorder as recorder_module
from processors.recorder import Recorder, Timeline
from transports.file import FileOutput

REPO = Path(__file__).resolve().parent.parent
RATE = 16000
FRAME = RATE // 50  # samples in 20 ms


def user(value: int = 1000, rate: int = RATE) -> AudioFrame:
    return UserAudioFrame(pcm=np.full(rate // 50, value, dtype="<i2").tobytes(), sample_rate=rate)


def bot(value: int = 2000, rate: int = RATE) -> BotAudioFrame:
    return BotAudioFrame(pcm=np.full(rate // 50, value, dtype="<i2").tobytes(), sample_rate=rate)


def track(folder: Path, name: str) -> tuple[AudioFormat, np.ndarray]:
    with wave.open(str(folder / f"{name}.wav"), "rb") as wav:
        fmt = AudioFormat(wav.getframerate(), wav.getnchannels())
        return fmt, np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """(value, count) for each run of equal samples: a timeline at a glance."""
    edges = np.flatnonzero(np.diff(samples)) + 1
    starts = np.concatenate([[0], edges])
    counts = np.diff(np.concatenate([starts, [len(samples)]]))
    return [(int(samples[s]), int(c)) for s, c in zip(starts, counts, strict=True)]


def transcript(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "transcript.json").read_text())
    return doc


def test_registered_with_documented_params() -> None:
    assert resolve("recorder") is Recorder


def test_session_ids_sort_by_start_time_and_name_the_folder(tmp_path: Path) -> None:
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{12}", new_session_id())
    recorder = Recorder(directory=str(tmp_path))
    assert recorder.session_dir == tmp_path / recorder.session_id
    assert Recorder(directory=str(tmp_path), session_id="call-7").session_dir == tmp_path / "call-7"
    with pytest.raises(ValidationError, match=r"session_id '\.\./escape' is not usable"):
        Recorder(session_id="../escape")


CONVERSATION: list[Frame] = [
    *(user() for _ in range(10)),  # 200 ms of the user
    TranscriptFrame(text="hello"),
    LLMResponseStartFrame(),
    LLMTextFrame(text="Hi"),
    LLMTextFrame(text=" there."),
    LLMResponseEndFrame(),
    TTSStartedFrame(),
    TTSTextFrame(text="Hi there."),
    *(bot() for _ in range(5)),  # 100 ms of the bot, generated ahead of the user clock
    TTSStoppedFrame(),
    *(user() for _ in range(10)),  # 200 ms more of the user: the bot plays over the first half
]


async def test_tracks_share_one_timeline_and_the_transcript_has_both_sides(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    out = await run_processor(recorder, CONVERSATION)
    assert [f.kind for f in out.down] == [f.kind for f in CONVERSATION]  # everything passes on
    folder = recorder.session_dir
    fmt, user_track = track(folder, "user")
    assert fmt == AudioFormat(RATE, 1) and runs(user_track) == [(1000, 20 * FRAME)]
    assert runs(track(folder, "bot")[1]) == [(0, 10 * FRAME), (2000, 5 * FRAME)]
    assert runs(track(folder, "mixed")[1]) == [(1000, 10 * FRAME), (3000, 5 * FRAME), (1000, 5 * FRAME)]
    doc = transcript(folder)
    assert doc["session_id"] == "s"
    assert doc["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi there."},
    ]
    start, end = (datetime.fromisoformat(doc[key]) for key in ("start_time", "end_time"))
    offset = start.utcoffset()
    assert offset is not None and offset.total_seconds() == 0 and start <= end
    assert sorted(p.name for p in folder.iterdir()) == ["bot.wav", "mixed.wav", "transcript.json", "user.wav"]


async def test_bot_audio_at_another_rate_is_resampled_into_the_mix(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    frames = [
        *(user(0) for _ in range(5)),
        *(bot(4000, rate=24000) for _ in range(50)),
        *(user(0) for _ in range(60)),
    ]
    await run_processor(recorder, frames)
    bot_format, bot_track = track(recorder.session_dir, "bot")
    assert bot_format == AudioFormat(24000, 1)
    assert runs(bot_track) == [(0, 5 * 480), (4000, 50 * 480)]
    mixed_format, mixed = track(recorder.session_dir, "mixed")
    assert mixed_format == AudioFormat(RATE, 1) and len(mixed) == 65 * FRAME
    start = 5 * FRAME
    assert not mixed[: start - 10].any()
    assert np.abs(mixed[start + 200 : start + RATE - 200] - 4000).max() < 5  # 1 s of the bot, resampled
    assert np.abs(mixed[start + RATE + 200 :]).max() < 5


async def test_a_bot_reply_after_the_user_audio_ended_is_kept_whole(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    await run_processor(recorder, [user(), user(), *(bot() for _ in range(4))])
    assert runs(track(recorder.session_dir, "bot")[1]) == [(0, 2 * FRAME), (2000, 4 * FRAME)]
    assert runs(track(recorder.session_dir, "mixed")[1]) == [(1000, 2 * FRAME), (2000, 4 * FRAME)]


async def test_without_user_audio_the_bot_track_is_back_to_back(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["bot", "mixed"])
    await run_processor(recorder, [bot(), bot(1), bot()])
    assert runs(track(recorder.session_dir, "bot")[1]) == [(2000, FRAME), (1, FRAME), (2000, FRAME)]
    assert sorted(p.name for p in recorder.session_dir.iterdir()) == ["bot.wav"]


async def test_only_the_chosen_tracks_are_written(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["user", "transcript"])
    await run_processor(recorder, CONVERSATION)
    assert sorted(p.name for p in recorder.session_dir.iterdir()) == ["transcript.json", "user.wav"]


class Steps(Source):
    """Sends each batch of frames once its gate (if any) is set: frames at exact points of the flow."""

    def __init__(self, steps: list[tuple[asyncio.Event | None, list[Frame]]]) -> None:
        super().__init__(name="input")
        self.steps = steps

    async def generate(self) -> AsyncIterator[Frame]:
        for gate, frames in self.steps:
            if gate is not None:
                await asyncio.wait_for(gate.wait(), 5)
            for frame in frames:
                yield frame


class Arrived(Observer):
    """Sets ``event`` once ``count`` frames that ``match`` were pushed to node ``target``."""

    def __init__(self, target: str, match: Callable[[Frame], bool], count: int = 1) -> None:
        self.target, self.match, self.count = target, match, count
        self.event = asyncio.Event()

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if target is not None and target.name == self.target and self.match(frame):
            self.count -= 1
            if self.count <= 0:
                self.event.set()


async def test_a_barge_in_takes_back_unplayed_bot_audio_and_keeps_what_was_heard(tmp_path: Path) -> None:
    heard = Arrived("recorder", lambda f: isinstance(f, SpokenTextFrame))  # upstream from the speaker
    played = Arrived("speaker", lambda f: type(f) is UserAudioFrame, count=15)  # the clock reached 300 ms
    script = Steps(
        [
            (
                None,
                [
                    *(user() for _ in range(10)),
                    TranscriptFrame(text="tell me a story"),
                    LLMResponseStartFrame(),
                    LLMTextFrame(text="Once upon a time. "),
                    LLMTextFrame(text="There was a fox."),
                    LLMResponseEndFrame(),
                    TTSStartedFrame(),
                    TTSTextFrame(text="Once upon a time."),
                    *(bot() for _ in range(50)),  # 1 s generated; only 100 ms will have played
                ],
            ),
            (heard.event, [*(user() for _ in range(5))]),
            (played.event, [InterruptionFrame(), TTSStoppedFrame(), TranscriptFrame(text="stop")]),
        ]
    )
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    speaker = FileOutput(path=str(tmp_path / "speaker.wav"), audio="bot")
    graph = Graph(
        {"input": script, "recorder": recorder, "speaker": speaker},
        [("input", "recorder"), ("recorder", "speaker")],
        observers=[heard, played],
    )
    await run_graph(graph)
    folder = recorder.session_dir
    assert runs(track(folder, "bot")[1]) == [(0, 10 * FRAME), (2000, 5 * FRAME)]
    assert runs(track(folder, "mixed")[1]) == [(1000, 10 * FRAME), (3000, 5 * FRAME)]
    assert transcript(folder)["messages"] == [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "Once upon a time.", "type": "interrupted"},
        {"role": "user", "content": "stop"},
    ]


async def test_a_reply_that_finished_playing_is_not_marked_interrupted(tmp_path: Path) -> None:
    done = Arrived("out", lambda f: f is CONVERSATION[-1])  # the recorder has handled all of it
    script = Steps([(None, CONVERSATION), (done.event, [InterruptionFrame(), *(user() for _ in range(3))])])
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    nodes = {"input": script, "recorder": recorder, "out": Collector()}
    await run_graph(Graph(nodes, [("input", "recorder"), ("recorder", "out")], observers=[done]))
    messages = transcript(recorder.session_dir)["messages"]
    assert messages[-1] == {"role": "assistant", "content": "Hi there."}


async def test_a_reply_cut_while_streaming_keeps_the_text_when_nothing_was_voiced(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    frames: list[Frame] = [LLMResponseStartFrame(), LLMTextFrame(text="Let me")]
    await run_processor(recorder, frames)  # the call ends mid-reply
    assert transcript(recorder.session_dir)["messages"] == [
        {"role": "assistant", "content": "Let me", "type": "interrupted"}
    ]


async def test_spoken_text_is_passed_upstream(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    out = await run_processor(recorder, [], upstream=[SpokenTextFrame(text="Hi.")])
    assert [f.text for f in out.up if isinstance(f, SpokenTextFrame)] == ["Hi."]


async def test_the_transcript_is_replaced_atomically_after_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[dict[str, Any]] = []
    real_replace = os.replace

    def checked_replace(source: str | Path, target: str | Path) -> None:
        assert Path(source).name == "transcript.json.tmp"
        replaced.append(json.loads(Path(source).read_text()))  # complete before it takes the name
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", checked_replace)  # the module recorder_module uses
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    await run_processor(recorder, CONVERSATION)
    assert [len(doc["messages"]) for doc in replaced] == [0, 1, 2, 2]  # start, user, assistant, stop
    assert not list(recorder.session_dir.glob("*.tmp"))


async def test_wavs_a_crash_left_behind_are_repaired_on_start(tmp_path: Path) -> None:
    old = tmp_path / "20240101-000000-abcd"
    old.mkdir()
    audio = np.arange(8000, dtype="<i2").tobytes()
    with wave.open(str(old / "user.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(audio[:1000])
    with (old / "user.wav").open("ab") as file:
        file.write(audio[1000:])  # written after the last header update
    (old / "junk.wav").write_bytes(b"nothing")  # unreadable files are skipped, not fatal
    await run_processor(Recorder(directory=str(tmp_path), tracks=["transcript"]), [])
    with wave.open(str(old / "user.wav"), "rb") as wav:
        assert wav.readframes(wav.getnframes()) == audio


async def test_the_repair_runs_once_per_process_per_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server starts a recorder per connection: reading every saved WAV each time is wasted work,
    # and could patch the header of a file another live session is writing.
    old = tmp_path / "20240101-000000-abcd"
    old.mkdir()
    (old / "user.wav").write_bytes(b"RIFF" + bytes(40))
    repaired: list[Path] = []
    monkeypatch.setattr(recorder_module, "repair_wav", repaired.append)
    for session_id in ("a", "b"):
        await run_processor(Recorder(directory=str(tmp_path), session_id=session_id, tracks=["user"]), [])
    assert repaired == [old / "user.wav"]  # at the first start only, not again for "a"'s file
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    (other / "x" / "user.wav").write_bytes(b"RIFF" + bytes(40))
    await run_processor(Recorder(directory=str(other), tracks=["user"]), [])
    assert repaired[1:] == [other / "x" / "user.wav"]  # another directory has its own first start


def test_the_timeline_takes_back_only_what_was_not_played() -> None:
    timeline = Timeline()
    fmt = AudioFormat(RATE, 1)
    timeline.add_user(user().pcm, fmt)
    assert timeline.add_bot(bot().pcm * 3, fmt).bot == bytes(2 * FRAME)  # the gap before it, at once
    assert timeline.bot_ahead == pytest.approx(0.06)
    assert timeline.add_user(user().pcm, fmt).bot == bot().pcm
    timeline.interrupt()
    assert timeline.bot_ahead == 0
    assert timeline.finish().bot == b""


# --- taps: user audio and turns where they are made -----------------------------------------------


class Generating(Processor):
    """Passes a turn on, then holds everything behind it until ``release``: an LLM on a busy machine."""

    handles = (TranscriptFrame,)
    produces = (TranscriptFrame,)

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__(name="llm")
        self.release = release

    async def process(self, frame: TranscriptFrame) -> None:
        await self.push(frame)
        await asyncio.wait_for(self.release.wait(), 10)


class Speaking(Processor):
    """Holds its text until ``release``, and everything queued behind it: a TTS speaking a reply."""

    handles = (TTSTextFrame,)

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__(name="tts")
        self.release = release

    async def process(self, frame: TTSTextFrame) -> None:
        await asyncio.wait_for(self.release.wait(), 10)
        await self.push(frame)


async def _eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll (bounded) a condition only the disk can answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_user_audio_and_turns_are_saved_while_the_nodes_before_the_recorder_hold_them(
    tmp_path: Path,
) -> None:
    # The recorder sits after a busy LLM and TTS, as in configs/assistant.yaml: it taps the user's
    # audio at the input node and the turn as it leaves the LLM, and passes on (once) what comes later.
    release = asyncio.Event()
    frames: list[Frame] = [TTSTextFrame(text="An earlier reply."), TranscriptFrame(text="hello")]
    frames += [user() for _ in range(50)]  # 1 s
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    out = Collector(name="out")
    nodes = {"input": Steps([(None, frames)]), "llm": Generating(release), "tts": Speaking(release)}
    nodes |= {"recorder": recorder, "out": out}
    chain = ["input", "llm", "tts", "recorder", "out"]
    run = asyncio.ensure_future(run_graph(Graph(nodes, list(itertools.pairwise(chain)))))
    folder = recorder.session_dir
    try:
        await _eventually(lambda: _messages(folder) == [{"role": "user", "content": "hello"}], "the turn")
        await _eventually(lambda: _audio_on_disk(folder / "user.wav") >= 0.75, "the user's audio")
        assert not _data(out)  # nothing went past the LLM and TTS yet
    finally:
        release.set()
    await asyncio.wait_for(run, 10)
    assert runs(track(folder, "user")[1]) == [(1000, 50 * FRAME)]  # each frame once
    assert _messages(folder) == [{"role": "user", "content": "hello"}]
    assert _data(out) == frames  # everything passed on, once


def _data(collector: Collector) -> list[Frame]:
    return [f for f in collector.frames if isinstance(f, AudioFrame | TranscriptFrame | TTSTextFrame)]


def _messages(folder: Path) -> list[dict[str, str]] | None:
    try:
        return list(transcript(folder)["messages"])
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_the_shipped_assistant_taps_the_microphone_and_the_llm() -> None:
    from pipeline import config
    from pipeline.config.sessions import session_graph

    compiled, problems = config.compile_config(REPO / "configs" / "assistant.yaml")
    assert compiled is not None and not problems
    graph = session_graph(compiled, "s")
    taps = {
        point: [(t.via.name, t.request.kind) for t in installed] for point, installed in graph._taps.items()
    }
    assert taps == {"mic": [("vad", UserAudioFrame)], "llm": [("tts", UserTextFrame)]}


async def test_saves_that_pile_up_during_a_write_are_written_once_by_one_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two writers used to race for transcript.json.tmp (FileNotFoundError on the replace).
    release = threading.Event()
    written: list[int] = []  # messages in each write
    active, peak = [0], [0]
    lock = threading.Lock()
    real_replace = recorder_module._replace

    def slow_replace(path: Path, text: str) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        written.append(len(json.loads(text)["messages"]))
        try:
            release.wait(10)
            real_replace(path, text)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(recorder_module, "_replace", slow_replace)
    path = tmp_path / "transcript.json"
    doc = recorder_module._Transcript(path, "s")
    first = asyncio.ensure_future(doc.save())
    await _eventually(lambda: bool(written), "the first write")
    saves = []
    for text in ("a", "b", "c"):  # each message completes while the first write is on the disk
        doc.set(None, {"role": "user", "content": text})
        saves.append(asyncio.ensure_future(doc.save()))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *saves), 10)
    assert written == [0, 3] and peak[0] == 1
    assert [m["content"] for m in json.loads(path.read_text())["messages"]] == ["a", "b", "c"]
    assert not list(tmp_path.glob("*.tmp"))


# --- a real crash --------------------------------------------------------------------------------

CRASHING_CALL = """\
import asyncio, sys
from pipeline.graph import Graph
from pipeline.observers import Observer
from pipeline.sources import ToneSource, TranscriptSource
from processors.recorder import Recorder

class Progress(Observer):
    sent = 0.0
    def on_push(self, source, target, frame, direction):
        if source.name == "mic" and target is not None and frame.kind == "user_audio":
            self.sent += frame.duration
            print(f"sent {{self.sent:.3f}}", flush=True)

async def main():
    graph = Graph(
        {{
            "mic": ToneSource(duration=None, realtime=True),
            "stt": TranscriptSource(transcripts=["hello", "are you there"]),
            "recorder": Recorder(directory={directory!r}, session_id="crash"),
        }},
        [("mic", "recorder"), ("stt", "recorder")],
        observers=[Progress()],
    )
    await graph.run()

asyncio.run(main())
"""


def test_a_killed_process_leaves_a_playable_recording_and_a_valid_transcript(tmp_path: Path) -> None:
    script = tmp_path / "call.py"
    script.write_text(dedent(CRASHING_CALL.format(directory=str(tmp_path / "rec"))))
    folder = tmp_path / "rec" / "crash"
    child = subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sent = 0.0
    try:
        deadline = time.monotonic() + 30
        assert child.stdout is not None
        # Wait (bounded) until 2.5 s of audio went into the recorder and its file has grown on disk.
        while sent < 2.5 or _audio_on_disk(folder / "user.wav") < 1.0:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the recording did not grow in time; stderr: {child.stderr}"
            readable, _, _ = select.select([child.stdout], [], [], remaining)
            line = child.stdout.readline() if readable else ""
            assert line, f"the call ended early: {child.stderr.read() if child.stderr else ''}"
            sent = max(sent, float(line.split()[1]))
        os.kill(child.pid, signal.SIGKILL)
        # Whatever the child printed before it died went into the recorder too.
        for line in child.stdout.read().splitlines():
            sent = max(sent, float(line.split()[1]))
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    with wave.open(str(folder / "user.wav"), "rb") as wav:  # no repair: as any player would open it
        assert (wav.getframerate(), wav.getnchannels()) == (RATE, 1)
        recorded = wav.getnframes() / RATE
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert recorded >= sent - 1.0
    assert np.abs(audio).max() > 10000  # the tone, not silence
    doc = json.loads((folder / "transcript.json").read_text())
    assert doc["session_id"] == "crash"
    assert doc["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "are you there"},
    ]


def _audio_on_disk(path: Path) -> float:
    """Seconds of 16 kHz mono audio in the file, header aside (0 while it does not exist)."""
    try:
        return max(0, path.stat().st_size - HEADER_SIZE) / (2 * RATE)
    except FileNotFoundError:
        return 0.0


# --- a paused caller, replies partly unheard, a stalled disk --------------------------------------


class Passing(Processor):
    """Passes everything on: a node between the input and the recorder, so the input is tapped."""

    def __init__(self) -> None:
        super().__init__(name="llm")


def _stopped_at(node: str) -> Arrived:
    return Arrived(node, lambda f: isinstance(f, BotStoppedSpeakingFrame))


def _reply(*sentences: tuple[str, int]) -> list[Frame]:
    """A reply as the LLM and TTS send it: (sentence, 20 ms bot frames; 0 = TTS failed to speak it)."""
    text = " ".join(s for s, _ in sentences)
    frames: list[Frame] = [LLMResponseStartFrame(), LLMTextFrame(text=text), TTSStartedFrame()]
    for sentence, count in sentences:
        frames += [TTSTextFrame(text=sentence), *(bot() for _ in range(count))]
    return [*frames, TTSStoppedFrame(), LLMResponseEndFrame()]


async def test_a_caller_that_waits_for_the_reply_speaks_after_it_on_the_timeline(tmp_path: Path) -> None:
    # file.turns as fast as possible: it sends nothing while it waits for the bot, then its next
    # question reaches the recorder by tap at once. A listener heard q1, the reply, then q2.
    stopped = _stopped_at("input")
    script = Steps(
        [
            (None, [*(user(1000) for _ in range(10)), TranscriptFrame(text="q1"), *_reply(("A1.", 25))]),
            (stopped.event, [*(user(500) for _ in range(10)), TranscriptFrame(text="q2")]),
        ]
    )
    recorder = Recorder(directory=str(tmp_path), session_id="s")
    speaker = FileOutput(path=str(tmp_path / "speaker.wav"), audio="bot")
    nodes = {"input": script, "llm": Passing(), "recorder": recorder, "speaker": speaker}
    chain = ["input", "llm", "recorder", "speaker"]
    await run_graph(Graph(nodes, list(itertools.pairwise(chain)), observers=[stopped]))
    folder = recorder.session_dir
    assert runs(track(folder, "mixed")[1]) == [(1000, 10 * FRAME), (2000, 25 * FRAME), (500, 10 * FRAME)]
    assert runs(track(folder, "user")[1]) == [(1000, 10 * FRAME), (0, 25 * FRAME), (500, 10 * FRAME)]
    assert runs(track(folder, "bot")[1]) == [(0, 10 * FRAME), (2000, 25 * FRAME)]


def test_a_live_microphone_is_not_padded_when_a_reply_has_played() -> None:
    timeline = Timeline()
    fmt = AudioFormat(RATE, 1)
    timeline.add_user(user().pcm, fmt)
    timeline.add_bot(bot().pcm * 5, fmt)
    timeline.reply_queued()
    for _ in range(4):  # the microphone kept sending while the reply played, one frame in flight
        timeline.add_user(user().pcm, fmt)
    assert timeline.played_out() == recorder_module.TrackAudio()
    assert timeline.add_user(user().pcm, fmt).bot == bot().pcm  # the last frame, on the way, lands as is
    assert timeline.user_samples == 6 * FRAME


def test_a_paused_source_is_padded_to_the_end_of_the_reply_it_waited_for() -> None:
    timeline = Timeline(mix=False)
    fmt, bot_fmt = AudioFormat(RATE, 1), AudioFormat(24000, 1)
    timeline.add_user(user().pcm, fmt)
    timeline.add_bot(bot(rate=24000).pcm * 5, bot_fmt)
    timeline.reply_queued()
    padded = timeline.played_out()
    assert padded.user == bytes(5 * FRAME * 2) and padded.bot == bot(rate=24000).pcm * 5
    assert timeline.played_out() == recorder_module.TrackAudio()  # one reply, one pause


def test_a_question_that_reaches_the_recorder_before_the_last_reply_is_not_talked_over() -> None:
    # The caller went on before the reply came (file.turns' reply_timeout): its audio, tapped at the
    # input, is on the clock first; the reply follows it, and the next question follows the reply.
    timeline = Timeline()
    fmt = AudioFormat(RATE, 1)
    mixed = timeline.add_user(user().pcm * 2, fmt).mixed  # q1
    mixed += timeline.add_user(user(500).pcm * 2, fmt).mixed  # q2, then the caller waits
    mixed += timeline.add_bot(bot().pcm * 3, fmt).mixed  # the reply to q1
    timeline.reply_queued()
    mixed += timeline.played_out().mixed
    mixed += timeline.add_user(user(700).pcm, fmt).mixed  # q3
    mixed += timeline.finish().mixed
    assert runs(np.frombuffer(mixed, dtype="<i2")) == [
        (1000, 2 * FRAME),
        (500, 2 * FRAME),
        (2000, 3 * FRAME),
        (700, FRAME),
    ]


async def test_a_reply_cut_before_any_of_it_was_heard_is_not_saved(tmp_path: Path) -> None:
    done = Arrived("out", lambda f: isinstance(f, BotAudioFrame), count=5)  # queued, none played
    frames: list[Frame] = [*(user() for _ in range(3)), TranscriptFrame(text="hello")]
    frames += [
        LLMResponseStartFrame(),
        LLMTextFrame(text="Well."),
        TTSStartedFrame(),
        TTSTextFrame(text="Well."),
    ]
    frames += [bot() for _ in range(5)]
    script = Steps([(None, frames), (done.event, [InterruptionFrame(), TranscriptFrame(text="stop")])])
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    nodes = {"input": script, "recorder": recorder, "out": Collector()}
    await run_graph(Graph(nodes, [("input", "recorder"), ("recorder", "out")], observers=[done]))
    assert transcript(recorder.session_dir)["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "stop"},
    ]


async def test_a_sentence_the_tts_failed_to_speak_is_not_in_the_transcript(tmp_path: Path) -> None:
    stopped = _stopped_at("input")
    reply = _reply(("One.", 5), ("Two.", 0), ("Three.", 5))  # TTS failed on "Two."
    script = Steps([(None, [user(), TranscriptFrame(text="count"), *reply]), (stopped.event, [])])
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    speaker = FileOutput(path=str(tmp_path / "speaker.wav"), audio="bot")
    nodes = {"input": script, "recorder": recorder, "speaker": speaker}
    await run_graph(Graph(nodes, [("input", "recorder"), ("recorder", "speaker")], observers=[stopped]))
    assert transcript(recorder.session_dir)["messages"] == [
        {"role": "user", "content": "count"},
        {"role": "assistant", "content": "One. Three."},
    ]


async def test_a_reply_the_tts_failed_to_speak_at_all_is_not_saved(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    await run_processor(recorder, [user(), TranscriptFrame(text="count"), *_reply(("One.", 0), ("Two.", 0))])
    assert transcript(recorder.session_dir)["messages"] == [{"role": "user", "content": "count"}]


class LateReports(Processor):
    """A speaker whose reports of the first reply's sentences come only after the next reply began:
    a barge-in overtook them on their way upstream. It then reports each sentence as it comes, and
    the bot silent at the end of the reply."""

    handles = (TTSTextFrame, LLMResponseStartFrame, TTSStoppedFrame)

    def __init__(self) -> None:
        super().__init__(name="speaker")
        self.held: list[str] = []
        self.starts = 0

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, LLMResponseStartFrame):
            self.starts += 1
            if self.starts == 2:  # the recorder has begun the next reply: now the late reports
                for text in self.held:
                    await self.push(SpokenTextFrame(text=text), UPSTREAM)
        elif isinstance(frame, TTSTextFrame) and self.starts < 2:
            self.held.append(frame.text)
        elif isinstance(frame, TTSTextFrame):
            await self.push(SpokenTextFrame(text=frame.text), UPSTREAM)
        elif isinstance(frame, TTSStoppedFrame) and self.starts == 2:
            await self.push(BotStoppedSpeakingFrame(), UPSTREAM)


async def test_a_late_report_of_an_interrupted_reply_is_credited_to_it_not_the_next(tmp_path: Path) -> None:
    queued = Arrived("speaker", lambda f: isinstance(f, TTSTextFrame))
    stopped = _stopped_at("input")
    first = [LLMResponseStartFrame(), LLMTextFrame(text="Once upon a time. There was a fox.")]
    first += [TTSStartedFrame(), TTSTextFrame(text="Once upon a time.")]  # playing when the user spoke
    script = Steps(
        [
            (None, [TranscriptFrame(text="tell me a story"), *first]),
            (queued.event, [InterruptionFrame(), TranscriptFrame(text="stop"), *_reply(("Okay.", 2))]),
            (stopped.event, []),
        ]
    )
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    nodes = {"input": script, "recorder": recorder, "speaker": LateReports()}
    edges = [("input", "recorder"), ("recorder", "speaker")]
    await run_graph(Graph(nodes, edges, observers=[queued, stopped]))
    assert transcript(recorder.session_dir)["messages"] == [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "Once upon a time.", "type": "interrupted"},
        {"role": "user", "content": "stop"},
        {"role": "assistant", "content": "Okay."},
    ]


async def test_typed_turns_are_saved_and_partial_transcripts_are_not(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    frames = [InterimTranscriptFrame(text="spo"), TranscriptFrame(text="spoken"), UserTextFrame(text="typed")]
    await run_processor(recorder, frames)
    assert transcript(recorder.session_dir)["messages"] == [
        {"role": "user", "content": "spoken"},
        {"role": "user", "content": "typed"},
    ]


@dataclass
class PoliteTextFrame(BotTextFrame):
    """A chunk a processor between the LLM and the TTS re-typed (it is still the bot's)."""


async def test_reply_chunks_of_any_bot_text_class_and_a_greeting_are_saved(tmp_path: Path) -> None:
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["transcript"])
    frames = [
        BotTextFrame(text="Welcome!"),  # outside a response: a reply of its own
        TranscriptFrame(text="hello"),
        LLMResponseStartFrame(),
        PoliteTextFrame(text="Hi"),
        LLMTextFrame(text=" there,"),
        PoliteTextFrame(text=" friend."),
        LLMResponseEndFrame(),
        TTSTextFrame(text="Hi there, friend."),  # the TTS's sentence: said already, not again
    ]
    await run_processor(recorder, frames)
    assert transcript(recorder.session_dir)["messages"] == [
        {"role": "assistant", "content": "Welcome!"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi there, friend."},
    ]


async def test_a_stalled_disk_costs_the_oldest_tapped_audio_not_unbounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = threading.Event()
    real_append = WavWriter._append

    def stalled_append(self: WavWriter, data: bytes, header: bool) -> None:
        disk.wait(10)
        real_append(self, data, header)

    monkeypatch.setattr(WavWriter, "_append", stalled_append)
    sent = Arrived("llm", lambda f: type(f) is UserAudioFrame, count=250)  # 5 s, tapped as it was sent
    release = asyncio.Event()
    recorder = Recorder(directory=str(tmp_path), session_id="s", tracks=["user", "transcript"], max_backlog=1)
    nodes = {"input": Steps([(None, [user() for _ in range(250)])]), "llm": Holding(release)}
    nodes["recorder"] = recorder
    graph = Graph(nodes, [("input", "llm"), ("llm", "recorder")], observers=[sent])
    run = asyncio.ensure_future(run_graph(graph))
    try:
        await asyncio.wait_for(sent.event.wait(), 10)
        assert recorder.backlog == pytest.approx(1.0)  # held at the cap while the disk is stuck
    finally:
        disk.set()
        release.set()
    await asyncio.wait_for(run, 10)
    dropped = recorder.dropped["user"]
    assert 3.0 < dropped < 4.01  # all but the last second, less what reached the writer first
    recorded = track(recorder.session_dir, "user")[1]
    assert len(recorded) / RATE + dropped == pytest.approx(5.0)  # the rest, in order, and counted
    assert transcript(recorder.session_dir)["audio_dropped"] == {"user": pytest.approx(dropped, abs=1e-3)}
    assert [r.message for r in caplog.records].count(
        "recorder: the disk is too slow: dropping the oldest unwritten audio (max_backlog 1.0 s)"
    ) == 1


class Holding(Processor):
    """Holds the first frame, and everything queued behind it, until ``release``: a stuck LLM."""

    handles = (AudioFrame,)
    queue_size = 500

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__(name="llm")
        self.release = release

    async def process(self, frame: Frame) -> None:
        await asyncio.wait_for(self.release.wait(), 10)
        await self.push(frame)
