"""The load ``benchmarks/capacity.py`` puts on a server: browser-like clients and a timed recogniser fake.

Each client streams real speech (the pocketsphinx-testdata clips) in 20 ms frames on an absolute
clock, with silence between turns, and times each turn from the end of its clip to the first bot
audio. Every frame carries a tag in the least significant bit of its first 64 samples (magic,
session, sequence number: inaudible, and below any recogniser's silence threshold), so the fake
AssemblyAI server, running in the same process, knows which client frame completed each chunk it
receives and when that frame was sent: the audio path's latency through the server, per chunk,
without the wait for a chunk to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.assemblyai import FakeAssemblyAI, Session
from tests.fakes.streaming_stt import VoicedWords, WordScript

RATE = 16000
FRAME_S = 0.02
FRAME_SAMPLES = int(RATE * FRAME_S)
FRAME_BYTES = FRAME_SAMPLES * 2
TAG_SAMPLES = 64
MAGIC = 0xA5C3
RING = 8192
"""Send times kept per client (frames: 164 s), looked up by sequence number modulo this."""
TURN_TIMEOUT = 20.0
"""Seconds a turn may wait for its first bot audio before it counts as unanswered."""
WORDS = ("he", "was", "not", "an", "ill", "disposed", "young", "man", "unless", "to", "be", "rather")
"""What the recogniser fake hears, round and round."""


def tag(pcm: bytes, session: int, seq: int) -> bytes:
    """``pcm`` with (magic, session, seq) in the lowest bit of its first ``TAG_SAMPLES`` samples."""
    samples = np.frombuffer(pcm, dtype="<i2").copy()
    value = (MAGIC << 48) | ((session & 0xFFFF) << 32) | (seq & 0xFFFFFFFF)
    bits = (value >> np.arange(TAG_SAMPLES - 1, -1, -1, dtype=np.uint64)) & np.uint64(1)
    samples[:TAG_SAMPLES] = (samples[:TAG_SAMPLES] & ~1) | bits.astype(np.int16)
    return samples.tobytes()


def read_tag(pcm: bytes, sample: int) -> tuple[int, int] | None:
    """(session, seq) of the tag starting at ``sample`` in ``pcm``; None if there is none."""
    raw = np.frombuffer(pcm, dtype="<i2", count=TAG_SAMPLES, offset=2 * sample)
    value = 0
    for bit in (raw & 1).tolist():
        value = (value << 1) | bit
    if value >> 48 != MAGIC:
        return None
    return (value >> 32) & 0xFFFF, value & 0xFFFFFFFF


class EndlessScript(WordScript):
    """Words that never run out: every session of a long run gets transcripts."""

    def take(self) -> str | None:
        word = self.words[self.position % len(self.words)]
        self.position += 1
        return word


@dataclass
class PathLatency:
    """Audio-path latencies (seconds) of the chunks the recogniser received, with their arrival times."""

    at: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    latency: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    untagged: int = 0  # chunks whose completing frame carried no tag (should stay 0)

    def add(self, at: float, latency: float) -> None:
        self.at.append(at)
        self.latency.append(latency)

    def between(self, start: float, end: float) -> list[float]:
        """Latencies of chunks that arrived from ``start`` to ``end``."""
        return [v for t, v in zip(self.at, self.latency, strict=True) if start <= t <= end]

    def clear(self) -> None:
        self.at, self.latency = array("d"), array("d")
        self.untagged = 0


class TimedAssemblyAI(FakeAssemblyAI):
    """The AssemblyAI fake, timing each chunk against the send time of the client frame completing it."""

    def __init__(self, clients: dict[int, Client], **kwargs: Any) -> None:
        super().__init__(
            api_key="aai-test-key",
            ms_per_word=80,
            silence_rms=200.0,
            max_sessions=1_000_000,
            max_session_ms=1e12,
            idle_timeout=60.0,
            **kwargs,
        )
        self.script = EndlessScript(WORDS)
        self.clients = clients  # session index -> client, for send times
        self.paths = PathLatency()

    async def _audio(
        self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords, pcm: bytes
    ) -> None:
        now = time.monotonic()
        start = round(recogniser.position_ms * RATE / 1000)
        end = start + len(pcm) // 2
        completing = (end - 1) // FRAME_SAMPLES * FRAME_SAMPLES  # the frame holding the chunk's last sample
        found = read_tag(pcm, completing - start) if completing - start + TAG_SAMPLES <= end - start else None
        client = self.clients.get(found[0]) if found else None
        if found is None or client is None:
            self.paths.untagged += 1
        else:
            self.paths.add(now, now - client.sent_at[found[1] % RING])
        session.chunks_ms.clear()  # the fake sums these per chunk; a long session would grow and slow it
        session.sent.clear()
        await super()._audio(ws, session, recogniser, pcm)

    def prune(self) -> None:
        """Forget finished sessions (a long run would otherwise keep every one)."""
        self.sessions = [s for s in self.sessions if s.open]


@dataclass
class Turns:
    """One client's turns: when each clip ended and how long until the first bot audio."""

    ended: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    unanswered: int = 0


class Client:
    """A browser tab: an open microphone streaming tagged frames in real time, speaking clips as turns."""

    def __init__(self, index: int, clips: Sequence[bytes], gap: tuple[float, float], listen: float) -> None:
        self.index = index
        self.clips = list(clips)
        self.gap = gap  # seconds of silence between turns (uniform in this range)
        self.listen = listen  # most seconds of a reply listened to before the next turn
        self.sent_at = array("d", bytes(8 * RING))  # send time by sequence number modulo RING
        self.seq = 0
        self.late = array("d")  # how late each frame went out (this process's own lag), seconds
        self.turns = Turns()
        self.errors: list[str] = []
        self.refusal = ""
        self._speech = b""
        self._said = asyncio.Event()
        self._bot_audio = asyncio.Event()
        self._listening = asyncio.Event()
        self._open = True

    async def microphone(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """20 ms of PCM every 20 ms on an absolute schedule, speech or silence, each frame tagged."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._open and not ws.closed:
            chunk, self._speech = self._speech[:FRAME_BYTES], self._speech[FRAME_BYTES:]
            if chunk and not self._speech:
                self._said.set()
            frame = tag(chunk.ljust(FRAME_BYTES, b"\0"), self.index, self.seq)
            now = time.monotonic()
            self.late.append(loop.time() - due)
            self.sent_at[self.seq % RING] = now
            self.seq += 1
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(frame)
            due += FRAME_S
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.BINARY:
                self._bot_audio.set()
            elif message.type is aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                if data.get("type") == "status" and data.get("state") == "listening":
                    self._listening.set()
                elif data.get("type") == "error":
                    self.errors.append(str(data.get("message")))
        self._open = False

    async def turn(self, pcm: bytes) -> None:
        """Say ``pcm``; time the first bot audio after it; listen to the reply (at most ``listen`` s)."""
        self._said.clear()
        self._speech = pcm
        await asyncio.wait_for(self._said.wait(), len(pcm) / (2 * RATE) + 30)
        ended = time.monotonic()
        self._bot_audio.clear()
        self._listening.clear()
        try:
            await asyncio.wait_for(self._bot_audio.wait(), TURN_TIMEOUT)
        except TimeoutError:
            self.turns.unanswered += 1
            return
        self.turns.ended.append(ended)
        self.turns.latency.append(time.monotonic() - ended)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), self.listen)

    async def converse(self, http: aiohttp.ClientSession, url: str, turns: int, stop: asyncio.Event) -> None:
        """Connect and talk until ``stop`` (or ``turns`` turns, when not 0), then say stop and close."""
        async with http.ws_connect(url, max_msg_size=0) as ws:
            first = await asyncio.wait_for(ws.receive(), 30)
            data = json.loads(first.data) if first.type is aiohttp.WSMsgType.TEXT else {}
            if data.get("type") != "session":
                self.refusal = str(data.get("message", f"closed {ws.close_code}"))
                return
            self._open = True
            await ws.send_str(json.dumps({"type": "start"}))
            tasks = [asyncio.create_task(self.microphone(ws)), asyncio.create_task(self.receive(ws))]
            talker, stopped = asyncio.create_task(self._talk(turns)), asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({talker, stopped, tasks[1]}, return_when=asyncio.FIRST_COMPLETED)
                for task in (talker, stopped):
                    task.cancel()
                await asyncio.gather(talker, stopped, return_exceptions=True)
                await ws.send_str(json.dumps({"type": "stop"}))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(tasks[1]), 15)
            except (TimeoutError, ConnectionError) as error:
                self.errors.append(type(error).__name__)
            finally:
                self._open = False
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _talk(self, turns: int) -> None:
        rng = random.Random(self.index)
        done = 0
        while self._open and (not turns or done < turns):
            await asyncio.sleep(rng.uniform(*self.gap))  # the microphone streams silence meanwhile
            await self.turn(self.clips[(self.index + done) % len(self.clips)])
            done += 1
