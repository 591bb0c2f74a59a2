"""Graceful drain of ``python -m pipeline run`` on real signals, with a recorder saving each conversation.

SIGTERM mid-turn: the server stops being ready and refuses new conversations with HTTP 503 before the
upgrade, the live one is told (``status: draining``) and finishes its turn, the client then stops and
the recording is complete; the process exits 0 long before ``drain_timeout``. A client that never
stops is stopped at the deadline (saved, closed with 1001); a second signal stops everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.spoken_replies import tone
from tests.test_websocket_server import BOT_RATE, Client

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0
LONG_REPLY_BYTES = 2 * BOT_RATE * 3  # "long": 3 s of bot audio, played in real time
GRAPH = """
name: drained
server: {{type: websocket, port: 0, drain_timeout: {drain}}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  counter: {{type: "tests.test_websocket_server:Counter"}}
  recorder: {{type: recorder, directory: "{directory}"}}
  out: {{type: websocket.output, realtime: true}}
edges:
  - mic -> counter -> recorder -> out
"""


class Worker:
    """A served config in its own process, and where it listens."""

    def __init__(self, process: asyncio.subprocess.Process, url: URL) -> None:
        self.process = process
        self.url = url

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> float:
        """Send ``sig``; returns when (``time.monotonic``)."""
        self.process.send_signal(sig)
        return time.monotonic()

    async def exited(self) -> tuple[int, str]:
        """The exit code and everything it printed on stderr."""
        _, stderr = await asyncio.wait_for(self.process.communicate(), TIMEOUT)
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode()


@contextlib.asynccontextmanager
async def worker(tmp_path: Path, drain: float) -> AsyncIterator[Worker]:
    config = tmp_path / "drained.yaml"
    config.write_text(GRAPH.format(drain=drain, directory=tmp_path / "recordings"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(config),
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert "Voxgraph: serving 'drained' at http://127.0.0.1:" in line, line
        yield Worker(process, URL(line.split(" at ")[1].split()[0]))
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)


@contextlib.asynccontextmanager
async def conversation(http: aiohttp.ClientSession, base: URL) -> AsyncIterator[tuple[Client, str]]:
    async with http.ws_connect(base / "ws") as ws:
        client = Client(ws)
        session = await client.wait_for(lambda m: m["type"] == "session", "a session id")
        await client.wait_for(lambda m: m.get("state") == "listening", "listening")
        yield client, str(session["session_id"])


async def _long_turn_under_way(client: Client) -> None:
    """Ask for a 3 s reply and wait for its first audio: the turn is mid-way."""
    await client.ws.send_bytes(tone(500, 16000))
    await client.ws.send_str('{"type":"text","text":"long"}')
    await client.until(lambda: 0 < len(client.audio) < LONG_REPLY_BYTES, "the reply's first audio")


def _saved(recordings: Path, session_id: str) -> dict[str, Any]:
    folder = recordings / session_id
    assert sorted(p.name for p in folder.iterdir()) == ["bot.wav", "mixed.wav", "transcript.json", "user.wav"]
    transcript: dict[str, Any] = json.loads((folder / "transcript.json").read_text())
    return transcript


async def test_sigterm_mid_turn_lets_the_conversation_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    drain_timeout = 60.0
    async with worker(tmp_path, drain_timeout) as server, aiohttp.ClientSession() as http:
        async with conversation(http, server.url) as (client, session_id):
            await _long_turn_under_way(client)
            signalled = server.signal(signal.SIGTERM)
            notice = await client.wait_for(lambda m: m.get("state") == "draining", "the draining notice")
            assert notice == {"type": "status", "state": "draining", "deadline_s": 60}
            async with http.get(server.url / "readyz") as ready:
                assert ready.status == 503 and await ready.json() == {"ready": False, "reason": "draining"}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(server.url / "ws")
            assert refused.value.status == 503
            async with http.get(server.url / "livez") as alive:
                assert alive.status == 200
            assert await client.reply() == "heard 500 ms"
            await client.until(
                lambda: (
                    len(client.audio) == LONG_REPLY_BYTES and client.of("status")[-1]["state"] == "listening"
                ),
                "the whole reply played",
            )
            await client.ws.send_str('{"type":"stop"}')
            assert await client.closed() == 1000
            assert client.of("status")[-1]["state"] == "ended"
        code, stderr = await server.exited()
        drained_in = time.monotonic() - signalled
    assert code == 0, stderr
    assert drained_in < drain_timeout
    assert stderr.count("draining:") == 1
    assert "draining: 1 conversation(s), up to 60 s; Ctrl-C again to stop now" in stderr
    transcript = _saved(tmp_path / "recordings", session_id)
    assert [(m["role"], m["content"]) for m in transcript["messages"]] == [
        ("user", "long"),
        ("assistant", "heard 500 ms"),
    ]


async def test_a_session_still_open_at_the_deadline_is_saved_then_closed_with_1001(tmp_path: Path) -> None:
    async with worker(tmp_path, 2) as server, aiohttp.ClientSession() as http:
        async with conversation(http, server.url) as (client, session_id):
            await client.ws.send_bytes(tone(300, 16000))
            await client.ws.send_str('{"type":"text","text":"hello"}')
            assert await client.reply() == "heard 300 ms"
            await client.until(lambda: client.of("status")[-1]["state"] == "listening", "the reply played")
            signalled = server.signal(signal.SIGTERM)
            notice = await client.wait_for(lambda m: m.get("state") == "draining", "the draining notice")
            assert notice["deadline_s"] == 2
            assert await client.closed() == 1001  # the client never stopped
            closed_after = time.monotonic() - signalled
            transcript = _saved(tmp_path / "recordings", session_id)  # saved before the socket closed
            assert client.of("status")[-1]["state"] == "ended"
        code, stderr = await server.exited()
    assert code == 0, stderr
    assert closed_after >= 1.9  # not cut before its deadline
    assert [(m["role"], m["content"]) for m in transcript["messages"]] == [
        ("user", "hello"),
        ("assistant", "heard 300 ms"),
    ]


async def test_a_second_sigterm_stops_every_conversation_at_once(tmp_path: Path) -> None:
    async with worker(tmp_path, 300) as server, aiohttp.ClientSession() as http:
        async with conversation(http, server.url) as (client, session_id):
            await _long_turn_under_way(client)
            signalled = server.signal(signal.SIGTERM)
            await client.wait_for(lambda m: m.get("state") == "draining", "the draining notice")
            server.signal(signal.SIGTERM)
            assert await client.closed() == 1001
        code, stderr = await server.exited()
        stopped_in = time.monotonic() - signalled
    assert code == 0, stderr
    assert stopped_in < 300
    assert "stopping now: cancelling 1 conversation(s)" in stderr
    assert (tmp_path / "recordings" / session_id / "transcript.json").is_file()
