"""What Voxgraph adds to a speech-to-speech model's voice-to-voice time: ``s2s.openai`` against the
OpenAI Realtime fake, which answers a fixed ``--delay`` after each turn is committed.

The graph is a live call's: user -> agent (s2s.openai, through the official SDK) -> recorder ->
speaker (a sink noting when the first bot audio frame of each reply reaches it). For each turn:

* ``uplink``: from the user's last frame that the turn needed (the VAD's stop with ``local`` turns;
  with ``server`` turns the audio frame after which the fake's VAD committed) entering the graph to
  the fake committing the turn;
* ``server``: commit to the fake's first audio delta (the fixed delay, plus the fake's own work);
* ``downlink``: that delta leaving the fake to its first ``BotAudioFrame`` reaching the speaker;
* ``added`` = uplink + downlink: the framework's share (SDK, JSON/base64, graph hops, the recorder).

User audio is real speech (LibriVox) at 24 kHz and 0.8 s of silence, paced in real time as a
microphone sends it (the fake's VAD ends a turn after 500 ms of silence; with ``local`` turns the stop
comes after the silence). One JSON line per
mode with p50/p95/max in milliseconds and the machine's load. Run from the repo root:
``python -m benchmarks.s2s_latency`` (about 80 s), ``--turns 3`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np
import soxr

from pipeline.frames import BotAudioFrame, Frame, LLMResponseEndFrame, UserStoppedSpeakingFrame
from pipeline.graph import Graph
from pipeline.processor import Processor, Source
from processors.recorder import Recorder
from processors.s2s.openai import OpenAIRealtime
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.speech import audio_frames, librivox, read_wav, silence

RATE = 24000
FRAME = 0.02


class Speaker(Processor):
    """Notes when the first bot audio of each reply arrives (monotonic seconds)."""

    handles: ClassVar[tuple[type[Frame], ...]] = (BotAudioFrame, LLMResponseEndFrame)

    def __init__(self) -> None:
        super().__init__(name="speaker")
        self.first_audio: list[float] = []
        self.replies = 0
        self._in_reply = False
        self.changed = asyncio.Event()

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, BotAudioFrame) and not self._in_reply:
            self._in_reply = True
            self.first_audio.append(time.monotonic())
        elif isinstance(frame, LLMResponseEndFrame):
            self._in_reply = False
            self.replies += 1
            self.changed.set()


class User(Source):
    """Says the sentence ``turns`` times, waiting for each answer; notes when each frame went in."""

    def __init__(self, turns: int, local: bool, speaker: Speaker) -> None:
        super().__init__(name="user")
        samples, rate = read_wav(librivox("0880"))
        self.voice = soxr.resample(samples, rate, RATE).astype(np.int16)
        self.turns = turns
        self.local = local
        self.speaker = speaker
        self.pushed: list[list[float]] = []  # per turn: when each frame was handed to the graph
        self.stops: list[float] = []  # local turns: when the VAD's stop went in

    async def generate(self) -> AsyncIterator[Frame]:
        loop = asyncio.get_running_loop()
        sent = 0.0
        for turn in range(self.turns):
            times: list[float] = []
            self.pushed.append(times)
            frames = audio_frames(self.voice, silence(0.8, RATE), rate=RATE)
            start = loop.time()
            for index, frame in enumerate(frames):
                await asyncio.sleep(max(0.0, start + index * FRAME - loop.time()))  # a live microphone
                times.append(time.monotonic())
                sent += getattr(frame, "duration", 0.0)
                yield frame
            if self.local:
                self.stops.append(time.monotonic())
                yield UserStoppedSpeakingFrame(stream_time=sent)
            while self.speaker.replies <= turn:
                self.speaker.changed.clear()
                await asyncio.wait_for(self.speaker.changed.wait(), 30.0)


def percentiles(values: list[float]) -> dict[str, float]:
    ms = sorted(1000 * v for v in values)
    return {
        "p50": round(statistics.median(ms), 1),
        "p95": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
        "max": round(ms[-1], 1),
    }


async def run(mode: str, turns: int, delay: float) -> dict[str, Any]:
    local = mode == "local"
    fake = FakeOpenAIRealtime(response_delay=delay, reply_ms=400, speed=50)
    speaker = Speaker()
    user = User(turns, local, speaker)
    async with fake:
        agent = OpenAIRealtime(api_key="sk-test", base_url=fake.base_url, name="agent", turn_detection=mode)
        with tempfile.TemporaryDirectory() as directory:
            recorder = Recorder(directory=directory, session_id="bench", name="recorder")
            graph = Graph(
                {"user": user, "agent": agent, "recorder": recorder, "speaker": speaker},
                [("user", "agent"), ("agent", "recorder"), ("recorder", "speaker")],
                name="s2s-latency",
            )
            await asyncio.wait_for(graph.run(), 60.0 + turns * 10)
        session = fake.sessions[0]
    uplink, server, downlink = [], [], []
    for turn in range(turns):
        committed = session.committed_at[turn]
        last_in = user.stops[turn] if local else max(t for t in user.pushed[turn] if t <= committed)
        uplink.append(committed - last_in)
        server.append(session.first_audio_at[turn] - committed)
        downlink.append(speaker.first_audio[turn] - session.first_audio_at[turn])
    added = [u + d for u, d in zip(uplink, downlink, strict=True)]
    return {
        "benchmark": "s2s_latency",
        "node": "s2s.openai",
        "turn_detection": mode,
        "turns": turns,
        "server_delay_ms": round(1000 * delay),
        "added_ms": percentiles(added),
        "uplink_ms": percentiles(uplink),
        "server_ms": percentiles(server),
        "downlink_ms": percentiles(downlink),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=10, help="user turns per mode")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds the fake waits before answering")
    parser.add_argument("--mode", choices=("server", "local", "both"), default="both")
    args = parser.parse_args()
    modes = ("server", "local") if args.mode == "both" else (args.mode,)
    for mode in modes:
        print(json.dumps(asyncio.run(run(mode, args.turns, args.delay))), flush=True)


if __name__ == "__main__":
    main()
