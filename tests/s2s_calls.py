"""A live call around a speech-to-speech node, for its tests: the user (a ``Scripted`` source) -> the
node -> recorder -> a real-time speaker (``file.output``). The user's script may wait for the provider's
fake or the speaker before going on."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pipeline.frames import Frame
from pipeline.graph import Graph
from pipeline.processor import Processor
from pipeline.testing import Captured, run_graph
from processors.recorder import Recorder
from tests.drivers import Scripted
from transports.file import FileOutput

Steps = Callable[[], AsyncIterator[Frame]]


async def call(
    node: Processor, tmp_path: Path, steps: Callable[[FileOutput], Steps]
) -> tuple[Captured, FileOutput]:
    """Run one call through ``node``; what reached the end, and the speaker (its WAV in ``tmp_path``)."""
    speaker = FileOutput(path=str(tmp_path / "heard.wav"), audio="bot", realtime=True, name="speaker")
    recorder = Recorder(directory=str(tmp_path / "recordings"), session_id="call", name="recorder")
    name = node.name
    graph = Graph(
        {"user": Scripted(steps(speaker)), name: node, "recorder": recorder, "speaker": speaker},
        [("user", name), (name, "recorder"), ("recorder", "speaker")],
        name="s2s",
    )
    return await run_graph(graph, timeout=30.0), speaker


async def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (playback and sockets progress in real time), bounded by ``timeout``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def transcript(tmp_path: Path) -> list[dict[str, str]]:
    """The messages the recorder saved for the call."""
    document = json.loads((tmp_path / "recordings" / "call" / "transcript.json").read_text())
    messages: list[dict[str, str]] = document["messages"]
    return messages


def seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as file:
        return file.getnframes() / file.getframerate()


def played(speaker: FileOutput) -> float:
    """Seconds of bot audio the speaker has played."""
    return float(speaker._playout.played)


async def browser_turn(config_path: Path, env: dict[str, str], tmp_path: Path) -> tuple[Any, str, list[Any]]:
    """Serve a shipped config (recordings in ``tmp_path``) and have a browser-like client say one
    real sentence and hear the whole reply, then stop. The client (its messages and audio), the reply's
    text and the saved transcript's ``(role, content)`` pairs."""
    import aiohttp
    from yarl import URL

    from pipeline import config
    from tests.speech import librivox, read_wav
    from tests.test_assistant_cloud import Microphone, until_played
    from tests.test_websocket_server import connect
    from transports.websocket.server import VoiceServer

    compiled, problems = config.compile_config(
        config_path, env={**env, "RECORDINGS": str(tmp_path), "PORT": "0"}
    )
    assert compiled is not None and not problems, problems
    samples, _ = read_wav(librivox("0880"))
    server = VoiceServer(compiled)
    await asyncio.wait_for(server.warm_up(), 30.0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, connect(http, URL(server.url)) as client:
            opened = await client.wait_for(lambda m: m["type"] == "session", "a session id")
            await client.wait_for(lambda m: m.get("state") == "listening", "listening")
            mic = Microphone(client.ws, samples.astype("<i2").tobytes())
            try:
                reply = await client.reply()
                await until_played(client)
            finally:
                await mic.close()
            await client.ws.send_str('{"type":"stop"}')
            assert await client.closed() == 1000
    finally:
        await asyncio.wait_for(server.stop(), 30.0)
    saved = json.loads((tmp_path / opened["session_id"] / "transcript.json").read_text())
    return client, reply, [(m["role"], m["content"]) for m in saved["messages"]]
