"""Barge-in across the whole conversation chain, on scripted frames and a virtual clock.

turn.taking → LLM → TTS → recorder → file.output (paced like a speaker): the user talks over a long
reply; the bot falls silent, the LLM stops generating, its history keeps only what was heard, and the
recorder marks the reply interrupted. Then a filler ("mhm") over the next reply changes nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.frames import (
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    TranscriptFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import Graph
from pipeline.testing import Collector, Gap, ScriptedSource, run_graph, virtual_time
from processors.llm.base import ChatLLM
from processors.recorder import Recorder
from processors.tts.base import SpeechSynthesizer
from processors.turn import TurnTaking
from transports.file import FileOutput

STORY = "Once upon a time there was a fox. It lived in a wood. One day it met a bear. The end."


class Storyteller(ChatLLM):
    """Tells the same story to every turn, a word every 10 ms; counts the words it generated."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generated = 0

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        for word in STORY.split():
            await asyncio.sleep(0.01)
            self.generated += 1
            yield word + " "


class Hum(SpeechSynthesizer):
    """0.1 s of tone per character: a sentence lasts a few seconds, so there is time to interrupt."""

    sample_rate = 16000

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        t = np.arange(1600 * len(text)) / self.sample_rate
        yield (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16).tobytes()


def conversation(tmp_path: Path, script: list[Frame | Gap]) -> tuple[Graph, dict[str, Any]]:
    nodes: dict[str, Any] = {
        "user": ScriptedSource(script),
        "turns": TurnTaking(min_words=1),
        "llm": Storyteller(name="llm"),
        "tts": Hum(name="tts", first_chunk_min_words=0),
        "recorder": Recorder(name="recorder", directory=str(tmp_path), session_id="s1"),
        "speaker": FileOutput(name="speaker", path=str(tmp_path / "bot.wav"), audio="bot", realtime=True),
        "after": Collector(name="after"),
    }
    chain = ["user", "turns", "llm", "tts", "recorder", "speaker", "after"]
    return Graph(nodes, list(itertools.pairwise(chain))), nodes


@virtual_time
async def test_talking_over_the_bot_stops_it_and_the_history_keeps_only_what_was_heard(
    tmp_path: Path,
) -> None:
    script: list[Frame | Gap] = [
        TranscriptFrame(text="Tell me a story."),
        Gap(5.0),  # the first sentence (33 characters = 3.3 s of audio) has played; the second is playing
        UserStartedSpeakingFrame(),
        InterimTranscriptFrame(text="wait"),
        Gap(0.3),
        UserStoppedSpeakingFrame(),
        TranscriptFrame(text="Wait, what kind of fox?"),
        Gap(0.5),
    ]
    graph, nodes = conversation(tmp_path, script)
    await run_graph(graph, timeout=120)

    after: Collector = nodes["after"]
    assert len([f for f in after.frames if isinstance(f, InterruptionFrame)]) == 1
    with wave.open(str(tmp_path / "bot.wav")) as played:  # both replies, the first cut after ~5 s
        seconds = played.getnframes() / played.getframerate()
    full = len(STORY) * 0.1
    assert 4.5 < seconds - full < 5.5

    history = nodes["llm"].context.messages()
    assert [m["role"] for m in history[1:4]] == ["user", "assistant", "user"]
    heard = history[2]["content"]
    assert heard.startswith("Once upon a time there was a fox.")  # heard: the first sentences...
    assert "The end." not in heard  # ...not the end, which was never played

    transcript = json.loads((tmp_path / "s1" / "transcript.json").read_text())
    first_reply = transcript["messages"][1]
    assert first_reply["role"] == "assistant" and first_reply.get("type") == "interrupted"
    assert "The end." not in first_reply["content"]


@virtual_time
async def test_a_filler_over_the_bot_does_not_interrupt_it(tmp_path: Path) -> None:
    script: list[Frame | Gap] = [
        TranscriptFrame(text="Tell me a story."),
        Gap(2.0),
        UserStartedSpeakingFrame(),
        InterimTranscriptFrame(text="mhm"),
        Gap(0.3),
        UserStoppedSpeakingFrame(),
        TranscriptFrame(text="Mhm."),
        Gap(15.0),
    ]
    graph, nodes = conversation(tmp_path, script)
    await run_graph(graph, timeout=120)
    assert not [f for f in nodes["after"].frames if isinstance(f, InterruptionFrame)]
    history = nodes["llm"].context.messages()
    assert [m["role"] for m in history[1:]] == ["user", "assistant"]  # "mhm" was not a turn
    assert history[2]["content"].strip() == STORY
