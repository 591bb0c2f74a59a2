"""file.turns: user turns from WAV files, waiting for the bot's answer in between."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from pipeline.formats import AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.processor import Processor
from pipeline.sources import FramePacer
from pipeline.testing import run_graph, virtual_time
from processors.vad.silero import SileroVad
from processors.vad.webrtc import WebRTCVad
from tests.speech import librivox, write_wav
from transports.file_turns import FileTurns
from transports.utterance_files import NoSpeechError


class AnsweringBot(Processor):
    """Answers (speaks for ``reply`` seconds of its own time) once it has heard ``listen`` seconds."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    def __init__(self, listen: float, reply: float = 0.0) -> None:
        super().__init__(name="bot")
        self.listen, self.reply = listen, reply
        self.heard = 0.0
        self.log: list[str] = []

    async def process(self, frame: AudioFrame) -> None:
        await self.push(frame)
        self.heard += frame.duration
        level = np.abs(np.frombuffer(frame.pcm, dtype=np.int16)).max()
        self.log.append("speech" if level else "silence")
        if self.heard >= self.listen:
            self.heard = float("-inf")  # answer once
            self.push_system(BotStartedSpeakingFrame(), UPSTREAM)
            self.log.append("bot started")
            if self.reply:
                return
            self.push_system(BotStoppedSpeakingFrame(), UPSTREAM)
            self.log.append("bot stopped")


def tone_wav(path: Path, seconds: float) -> str:
    t = np.arange(round(seconds * 16000)) / 16000
    write_wav(path, (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 16000)
    return str(path)


async def test_waits_for_the_answer_before_the_next_turn(tmp_path: Path) -> None:
    paths = [tone_wav(tmp_path / "a.wav", 0.2), tone_wav(tmp_path / "b.wav", 0.2)]
    turns = FileTurns(name="caller", paths=paths, pause=0.1, reply_timeout=1.0)
    bot = AnsweringBot(listen=0.3)
    await run_graph(Graph({"caller": turns, "bot": bot}, [("caller", "bot")]))
    first_b = bot.log.index("bot stopped")
    assert bot.log[:first_b].count("speech") == 10  # all of turn one came first
    assert bot.log[first_b + 1 :].count("speech") == 10  # turn two only after the answer
    assert turns.replies_missed == 1  # the bot answered once; the second wait ran out


@virtual_time
async def test_gives_up_waiting_after_the_reply_timeout_and_fails_when_nothing_was_answered(
    tmp_path: Path,
) -> None:
    paths = [tone_wav(tmp_path / "a.wav", 0.1), tone_wav(tmp_path / "b.wav", 0.1)]
    turns = FileTurns(name="caller", paths=paths, pause=0.0, reply_timeout=30.0)
    bot = AnsweringBot(listen=99.0)
    graph = Graph({"caller": turns, "bot": bot}, [("caller", "bot")])
    with pytest.raises(GraphFailedError, match=r"NoAnswerError: no answer to any of the 2 turn\(s\)"):
        await run_graph(graph, timeout=120)
    assert turns.replies_missed == 2
    assert bot.log.count("speech") == 10


# --- turns the VAD finds no speech in ------------------------------------------------------------


def speech_free(path: Path, kind: str, seconds: float = 1.0) -> str:
    """Digital silence or white noise: nothing a VAD should call speech."""
    count = round(seconds * 16000)
    samples = np.zeros(count) if kind == "silence" else np.random.default_rng(1).normal(0, 3000, count)
    write_wav(path, np.clip(samples, -32768, 32767).astype(np.int16), 16000)
    return str(path)


@pytest.mark.parametrize("kind", ["silence", "noise"])
async def test_input_without_speech_fails_at_its_end_instead_of_waiting(tmp_path: Path, kind: str) -> None:
    paths = [speech_free(tmp_path / "a.wav", kind), speech_free(tmp_path / "b.wav", kind, 0.5)]
    turns = FileTurns(name="caller", paths=paths, pause=0.2, reply_timeout=3600.0)
    vad = SileroVad(name="vad")
    bot = AnsweringBot(listen=99.0)
    graph = Graph({"caller": turns, "vad": vad, "bot": bot}, [("caller", "vad"), ("vad", "bot")])
    with pytest.raises(GraphFailedError) as caught:  # a wait for the reply would end in a TimeoutError
        await run_graph(graph)
    assert isinstance(caught.value.__cause__, NoSpeechError)
    assert (
        f"no speech found in the input: vad (vad.silero) finds none in {paths[0]}, {paths[1]} (1.50 s)"
        in str(caught.value)
    )
    assert turns.speech == [False, False] and turns.replies_missed == 0  # no reply was waited for


async def test_a_speech_free_turn_is_not_waited_for_but_the_others_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = speech_free(tmp_path / "quiet.wav", "silence")
    paths = [quiet, str(librivox("0880"))]
    turns = FileTurns(name="caller", paths=paths, pause=0.5, reply_timeout=3600.0)
    bot = AnsweringBot(listen=2.5)  # answers during the spoken turn
    graph = Graph(
        {"caller": turns, "vad": WebRTCVad(name="vad"), "bot": bot}, [("caller", "vad"), ("vad", "bot")]
    )
    await run_graph(graph)
    assert turns.speech == [False, True] and turns.replies_missed == 0
    assert f"caller: vad (vad.webrtc) finds no speech in {quiet}; not waiting for an answer" in caplog.text


@virtual_time
async def test_barge_in_after_starts_the_next_turn_during_the_answer(tmp_path: Path) -> None:
    paths = [tone_wav(tmp_path / "a.wav", 0.2), tone_wav(tmp_path / "b.wav", 0.2)]
    turns = FileTurns(
        name="caller", paths=paths, pause=0.1, realtime=True, barge_in_after=0.5, reply_timeout=5.0
    )
    bot = AnsweringBot(listen=0.3, reply=10.0)  # starts a long answer and never stops on its own
    await run_graph(Graph({"caller": turns, "bot": bot}, [("caller", "bot")]), timeout=60)
    started = bot.log.index("bot started")
    between = bot.log[started + 1 : started + 1 + bot.log[started + 1 :].index("speech")]
    # About 0.5 s of live silence (one frame of pacing slack), then the user talks over the bot.
    assert set(between) == {"silence"} and 25 <= len(between) <= 26


def test_a_missing_file_is_reported_before_running(tmp_path: Path) -> None:
    problems = FileTurns(name="caller", paths=[str(tmp_path / "nope.wav")]).check()
    assert len(problems) == 1 and "not found" in problems[0].message


@pytest.mark.parametrize("rate", [8000, 48000])
async def test_later_files_take_the_first_files_format(tmp_path: Path, rate: int) -> None:
    t = np.arange(rate // 5) / rate
    other = write_wav(tmp_path / "b.wav", (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16), rate)
    paths = [tone_wav(tmp_path / "a.wav", 0.2), str(other)]
    turns = FileTurns(name="caller", paths=paths, pause=0.0, wait_for_reply=False)
    bot = AnsweringBot(listen=99.0)
    out = await run_graph(Graph({"caller": turns, "bot": bot}, [("caller", "bot")]))
    rates = {f.sample_rate for f in out.of(AudioFrame)}
    assert rates == {16000}
    assert abs(sum(f.duration for f in out.of(AudioFrame)) - 0.4) < 0.03


async def test_cancelled_while_waiting_for_the_answer_leaves_no_waiters_behind(tmp_path: Path) -> None:
    turns = FileTurns(name="caller", paths=[tone_wav(tmp_path / "a.wav", 0.1)], reply_timeout=30.0)
    fmt = AudioFormat(16000, 1)

    async def wait() -> None:
        async for _ in turns._wait_for_reply(FramePacer(20, False), bytes(640), fmt, False):
            pass

    def event_waiters() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "Event.wait"]

    waiter = asyncio.ensure_future(wait())
    async with asyncio.timeout(5):
        while len(event_waiters()) < 2:  # waiting for the bot to start and to stop
            await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.wait({waiter})
    assert waiter.cancelled()
    assert all(t.done() or t.cancelling() for t in event_waiters())  # every one was cancelled too
