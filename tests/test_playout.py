"""Playout: bot audio is queued and paced by a writer task, so the user's audio never waits behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    SpokenTextFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
)
from pipeline.graph import Graph
from pipeline.processor import Processor
from pipeline.testing import Collector, Gap, ScriptedSource, run_graph, virtual_time
from transports.file import FileOutput
from transports.playout import Playout

BOT = BotAudioFrame(pcm=bytes(882), sample_rate=22050)  # 20 ms


class Speaker(Processor):
    """A minimal transport: bot audio through a real-time Playout, writes timed on the loop clock."""

    handles: ClassVar[tuple[type[Frame], ...]] = (BotAudioFrame, TTSTextFrame, TTSStoppedFrame)

    def __init__(self) -> None:
        super().__init__(name="speaker")
        self.playout = Playout(self, realtime=True, lead=0.0)
        self.writes: list[float] = []

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSTextFrame):
            await self.playout.text(frame)
        elif isinstance(frame, BotAudioFrame):
            await self.playout.audio(frame, self._write)
        else:
            await self.playout.finished()

    async def _write(self, frame: AudioFrame) -> None:
        self.writes.append(asyncio.get_running_loop().time())

    async def on_interrupt(self) -> None:
        self.playout.interrupted()

    async def on_stop(self) -> None:
        await self.playout.close(drain=not self.inbox.closed)


async def speak(script: list[Frame | Gap]) -> tuple[Speaker, list[Frame]]:
    source, speaker, tap = ScriptedSource(script), Speaker(), Collector()
    graph = Graph({"script": source, "tap": tap, "speaker": speaker}, [("script", "tap"), ("tap", "speaker")])
    await run_graph(graph, timeout=60)
    return speaker, tap.upstream


@virtual_time
async def test_audio_is_paced_at_wall_clock_speed_and_reported() -> None:
    script = [TTSTextFrame(text="Hello there."), *[BOT] * 50, TTSStoppedFrame(), Gap(1.5)]
    speaker, upstream = await speak(script)  # (the gap: reports go upstream while the graph still runs)
    assert len(speaker.writes) == 50
    assert 0.97 <= speaker.writes[-1] - speaker.writes[0] <= 1.0  # 49 frames of 20 ms apart
    kinds = [type(f) for f in upstream]
    assert kinds == [BotStartedSpeakingFrame, SpokenTextFrame, BotStoppedSpeakingFrame]
    assert upstream[1].text == "Hello there."  # type: ignore[attr-defined]


@virtual_time
async def test_an_interruption_silences_the_bot_at_once() -> None:
    script: list[Frame | Gap] = [*[BOT] * 250, Gap(0.5), InterruptionFrame(), Gap(0.5)]
    speaker, upstream = await speak(script)
    loop_time_of_interrupt = speaker.writes[0] + 0.5
    assert all(t <= loop_time_of_interrupt + 0.021 for t in speaker.writes)  # at most one more frame
    assert 24 <= len(speaker.writes) <= 27
    assert [type(f) for f in upstream] == [BotStartedSpeakingFrame, BotStoppedSpeakingFrame]


class Reply(Processor):
    """On the first user frame, 'synthesises' 10 s of bot audio at once; user audio passes on."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    def __init__(self) -> None:
        super().__init__(name="tts")
        self.replied = False

    async def process(self, frame: AudioFrame) -> None:
        if not self.replied:
            self.replied = True
            for _ in range(500):
                await self.push(BOT)
        await self.push(frame)


class Arrivals(Collector):
    """Notes the loop time at which each user frame arrives."""

    def __init__(self) -> None:
        super().__init__(name="after")
        self.arrivals: list[float] = []

    def _record(self, frame: Frame, direction: object) -> None:
        if type(frame) is UserAudioFrame:
            self.arrivals.append(asyncio.get_running_loop().time())
        super()._record(frame, direction)  # type: ignore[arg-type]


@virtual_time
async def test_user_audio_never_waits_behind_the_bots(tmp_path: Path) -> None:
    user = UserAudioFrame(pcm=bytes(640))
    script: list[Frame | Gap] = [item for _ in range(100) for item in (user, Gap(0.02))]
    out = FileOutput(name="out", path=str(tmp_path / "bot.wav"), audio="bot", realtime=True)
    after = Arrivals()
    nodes = {"user": ScriptedSource(script), "tts": Reply(), "out": out, "after": after}
    graph = Graph(nodes, [("user", "tts"), ("tts", "out"), ("out", "after")])
    start = asyncio.get_running_loop().time()
    await run_graph(graph, timeout=60)
    assert len(after.arrivals) == 100
    # User frame i is sent at 20*i ms; it passes the busy speaker at once, not after 10 s of bot audio.
    lateness = [arrival - start - 0.02 * i for i, arrival in enumerate(after.arrivals)]
    assert max(lateness) < 0.05
