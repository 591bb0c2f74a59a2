"""What ships survives a crash: ``configs/assistant.yaml`` served in a subprocess is SIGKILLed mid-call.

Every engine is real (Silero, Whisper tiny.en, SmolLM2 through llama.cpp, Piper) and so are the
callers: two websocket clients stream LibriVox speech in real time, each waits until it has had a
whole exchange (its final transcript and the final reply on the socket), speaks again, and the server
is killed while it answers. Each conversation folder must then hold the caller's audio but the last
second, playable as it is, and every message the caller saw completed. About a minute on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.speech import librivox, read_wav, silence

REPO = Path(__file__).resolve().parent.parent
RATE = 16000
CHUNK = 2 * RATE // 50  # bytes in 20 ms
START_TIMEOUT = 180.0  # loading the models on a busy machine
EXCHANGE_TIMEOUT = 120.0  # a question, its transcript and the whole reply, two sessions on 2 cores
AFTER = 3.0  # seconds of silence streamed after the second question, before the kill


class Caller:
    """A websocket client that talks in real time: a question, silence until the reply is final, then
    (once ``go_on`` is set) a second question and silence. Counts what it sent and what it saw."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, first: np.ndarray, second: np.ndarray) -> None:
        self.ws = ws
        self.first = first.astype("<i2").tobytes()
        self.second = second.astype("<i2").tobytes() + silence(AFTER).astype("<i2").tobytes()
        self.session_id = ""
        self.sent = 0  # bytes of audio sent
        self.finals: list[str] = []  # final user transcripts seen
        self.replies: list[str] = []  # final assistant texts seen
        self.listening = asyncio.Event()  # the session is ready for audio
        self.replied = asyncio.Event()  # one whole exchange seen
        self.go_on = asyncio.Event()  # say the second question
        self.done = asyncio.Event()  # the second question and the silence after it were sent

    async def read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data: dict[str, Any] = json.loads(message.data)
            kind = data.get("type")
            if kind == "session":
                self.session_id = str(data["session_id"])
            elif kind == "status" and data.get("state") == "listening":
                self.listening.set()
            elif kind == "transcript" and data.get("final"):
                self.finals.append(str(data["text"]))
            elif kind == "assistant_text" and data.get("final"):
                self.replies.append(str(data["text"]))
                if self.finals:
                    self.replied.set()

    async def talk(self) -> None:
        """Stream 20 ms chunks on the loop clock: the question, silence until told to go on, the second."""
        loop = asyncio.get_running_loop()
        quiet = bytes(CHUNK)
        script = [self.first[i : i + CHUNK] for i in range(0, len(self.first), CHUNK)]
        second = [self.second[i : i + CHUNK] for i in range(0, len(self.second), CHUNK)]
        due = loop.time()
        while True:
            if script:
                chunk = script.pop(0)
            elif self.go_on.is_set() and second:
                chunk = second.pop(0)
            else:
                chunk = quiet
                if self.go_on.is_set():
                    self.done.set()
            await self.ws.send_bytes(chunk)
            self.sent += len(chunk)
            due += len(chunk) / (2 * RATE)
            await asyncio.sleep(max(0.0, due - loop.time()))


def start_server(recordings: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``python -m pipeline run configs/assistant.yaml`` on a free loopback port; returns it and its URL."""
    command = [sys.executable, "-m", "pipeline", "run", "configs/assistant.yaml", "--set", "server.port=0"]
    env = {**os.environ, "RECORDINGS": str(recordings), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        line = process.stdout.readline() if readable else ""
        if not readable or not line:
            process.kill()
            process.wait(10)
            raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")
        found = re.search(r"http://127\.0\.0\.1:\d+/?", line)
        if found:
            return process, found.group(0).rstrip("/")


async def call_and_kill(url: str, server: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Two callers each have an exchange, speak again, and the server is killed while it answers."""
    first = [read_wav(librivox(name))[0] for name in ("0880", "0930")]
    second = [read_wav(librivox(name))[0] for name in ("0930", "0880")]
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        callers: list[Caller] = []
        tasks: list[asyncio.Task[None]] = []
        for index in range(2):
            ws = await stack.enter_async_context(http.ws_connect(f"{url}/ws", heartbeat=None))
            caller = Caller(ws, first[index], second[index])
            callers.append(caller)
            tasks.append(asyncio.create_task(caller.read()))
        try:
            await asyncio.wait_for(asyncio.gather(*(c.listening.wait() for c in callers)), 30)
            tasks += [asyncio.create_task(c.talk()) for c in callers]
            await asyncio.wait_for(asyncio.gather(*(c.replied.wait() for c in callers)), EXCHANGE_TIMEOUT)
            for caller in callers:
                caller.go_on.set()
            await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in callers)), 30)
            os.kill(server.pid, signal.SIGKILL)  # nothing runs on this loop between here and the count
            seen = [
                {
                    "session_id": c.session_id,
                    "sent": c.sent / (2 * RATE),
                    "finals": list(c.finals),
                    "replies": list(c.replies),
                }
                for c in callers
            ]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def test_a_killed_server_keeps_each_callers_audio_and_every_completed_message(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    server, url = start_server(recordings, tmp_path / "server.log")
    try:
        seen = asyncio.run(call_and_kill(url, server))
        assert server.wait(10) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    report = [_outcome(recordings / caller["session_id"], caller) for caller in seen]
    print("\n".join(figure for figure, _ in report))  # the figures behind the README's promise (-s)
    for (figure, check), caller in zip(report, seen, strict=True):
        lost, users, replies = check
        assert lost < 1.0, figure
        assert _in_order(caller["finals"], users, lambda seen, kept: seen.strip() == kept), (figure, caller)
        assert _in_order(caller["replies"], replies, _same_reply), (figure, caller)


def _outcome(folder: Path, caller: dict[str, Any]) -> tuple[str, tuple[float, list[str], list[Any]]]:
    """A line of figures, and (seconds of audio lost, user messages saved, assistant messages saved)."""
    with wave.open(str(folder / "user.wav"), "rb") as wav:  # as any player opens it: no repair
        assert (wav.getframerate(), wav.getnchannels()) == (RATE, 1)
        recorded = wav.getnframes() / RATE
    saved = json.loads((folder / "transcript.json").read_text())["messages"]
    lost = caller["sent"] - recorded
    figure = (
        f"{caller['session_id']}: sent {caller['sent']:.2f} s, user.wav {recorded:.2f} s (lost {lost:.2f} s);"
        f" seen {len(caller['finals'])} turns + {len(caller['replies'])} replies, saved {len(saved)} messages"
    )
    users = [m["content"] for m in saved if m["role"] == "user"]
    return figure, (lost, users, [m for m in saved if m["role"] == "assistant"])


def _in_order(seen: list[Any], saved: list[Any], same: Any) -> bool:
    """Every item of ``seen`` has a match in ``saved``, in the same order."""
    rest = iter(saved)
    return all(any(same(item, kept) for kept in rest) for item in seen)


def _same_reply(text: str, message: dict[str, str]) -> bool:
    """The reply the caller saw whole, or (cut short by the next question) the part that was heard."""
    if message["content"] == text.strip():
        return True
    letters = re.sub(r"\W", "", message["content"].lower())
    return message.get("type") == "interrupted" and re.sub(r"\W", "", text.lower()).startswith(letters)
