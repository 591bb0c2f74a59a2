"""Workers behind the shipped nginx config: one restarted in the middle of live calls, one full.

Real processes on loopback: ``python -m pipeline run tests/scale_out.yaml`` workers (typed lines
spoken by espeak-ng, every conversation recorded into one shared folder, ``full_refusal: http``) and
nginx running deploy/nginx/voxgraph.conf with its upstream pointed at them.

A restart, with three workers. 30 conversations go through nginx:

1. 12 conversations, four at a time;
2. three held calls, one turn each; then SIGTERM to a worker that holds one of them;
3. while it drains, 15 more conversations: nginx retries the upgrades the draining worker refuses
   (HTTP 503) on the others, so every one lands elsewhere;
4. the held calls take a second turn and stop as usual: the ones on the draining worker were told
   ``status: draining`` and still finish normally (close 1000); the worker then exits 0.

Checked: no conversation cut, none started on the draining worker after the signal (its sessions
count stands still; nginx's log shows where every upgrade went), the workers' ``/metrics`` sessions
add up to 30, and the shared folder holds 30 complete recordings, one per session id.

A full worker, with two: one with ``max_sessions: 1`` holds a live call (made to it directly), and
conversations through nginx all start at the first attempt on the other: the full one refuses their
upgrades with HTTP 503 and nginx retries them there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests import nginx_proxy
from transports.websocket.api import Recordings
from transports.websocket.readiness import RETRY_AFTER_FULL

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "scale_out.yaml"
WORKERS = 3
DRAIN_TIMEOUT = 20
BEFORE, HELD, DURING = 12, 3, 15
PAST_FULL = 6  # conversations through nginx while one worker is full
CONCURRENCY = 4
START_TIMEOUT = 30.0  # a worker loading and listening
TURN_TIMEOUT = 15.0  # one spoken reply
ATTEMPTS = 20  # connection attempts of one client (a refusal: all workers busy for a moment)
USER_AUDIO = bytes(2 * 16000 // 2)  # 0.5 s of silence from the caller, so user.wav has audio
WAV_HEADER_BYTES = 44


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Worker:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(eq=False)
class Call:
    """What one client saw."""

    session_id: str = ""
    statuses: list[str] = field(default_factory=list)
    close_code: int | None = None
    bot_audio: int = 0  # bytes of bot PCM received
    turns: int = 0  # replies heard to the end
    attempts: int = 0
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # the first reply ended
    draining: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    folder = tmp_path / "recordings"
    folder.mkdir()
    return folder


@contextlib.contextmanager
def launched(tmp_path: Path, shared: Path, overrides: list[list[str]]) -> Iterator[list[Worker]]:
    """One worker per entry of ``overrides`` (its ``--set`` values), killed at the end if still running."""
    started: list[Worker] = []
    try:
        for index, sets in enumerate(overrides):
            port = free_port()
            env = {**os.environ, "PORT": str(port), "RECORDINGS": str(shared)}
            command = [sys.executable, "-m", "pipeline", "run", str(CONFIG)]
            for value in sets:
                command += ["--set", value]
            with (tmp_path / f"worker{index}.log").open("wb") as log:
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            started.append(Worker(port, process))
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait(timeout=10)


@contextlib.contextmanager
def proxied(tmp_path: Path, workers: list[Worker]) -> Iterator[str]:
    """nginx with the shipped config in front of ``workers``; yields its base URL."""
    prefix = tmp_path / "nginx"
    port = free_port()
    conf = nginx_proxy.write_config(prefix, [w.port for w in workers], port)
    nginx = nginx_proxy.start(prefix, conf)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


@pytest.fixture
def workers(tmp_path: Path, shared: Path) -> Iterator[list[Worker]]:
    with launched(tmp_path, shared, [[f"server.drain_timeout={DRAIN_TIMEOUT}"]] * WORKERS) as started:
        yield started


@pytest.fixture
def proxy(tmp_path: Path, workers: list[Worker]) -> Iterator[str]:
    with proxied(tmp_path, workers) as base:
        yield base


async def poll(client: aiohttp.ClientSession, url: str, timeout: float) -> None:
    """Until ``url`` answers 200 (at most ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with client.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def sessions_started(client: aiohttp.ClientSession, worker: Worker) -> int:
    """Sessions this worker has run: those that ended (every outcome) and those running now."""
    async with client.get(worker.base + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    ended = sum(float(v) for v in re.findall(r"^voxgraph_sessions_total\{[^}]*\} (\S+)$", text, re.MULTILINE))
    (active,) = re.findall(r"^voxgraph_sessions_active (\S+)$", text, re.MULTILINE)
    return round(ended + float(active))


async def converse(
    client: aiohttp.ClientSession, proxy: str, number: int, call: Call, gate: asyncio.Event | None = None
) -> Call:
    """One conversation through the proxy: a typed line spoken back; with a ``gate``, a second line
    once it is set; then ``stop``, as the page does. A refusal before the session starts is retried."""
    for call.attempts in range(1, ATTEMPTS + 1):
        try:
            async with client.ws_connect(f"{proxy}/ws?call={number}") as ws:  # named in nginx's log
                if await talk(ws, call, number, gate):
                    return call
        except aiohttp.WSServerHandshakeError as refused:
            assert refused.status == 503, refused  # every worker refused: busy, try again
        await asyncio.sleep(0.2)
    raise AssertionError(f"conversation {number}: refused {ATTEMPTS} times")


async def talk(
    ws: aiohttp.ClientWebSocketResponse, call: Call, number: int, gate: asyncio.Event | None
) -> bool:
    """Run the conversation on ``ws``; False if it was refused before it started (try again)."""
    first = await ws.receive(timeout=TURN_TIMEOUT)
    if first.type != aiohttp.WSMsgType.TEXT or json.loads(first.data)["type"] != "session":
        return False  # refused after the upgrade (at capacity): close 1013
    call.session_id = json.loads(first.data)["session_id"]
    lines = [f"Hello, this is call number {number}.", "And here is my second question."]
    if gate is None:
        lines = lines[:1]
    heard: asyncio.Queue[None] = asyncio.Queue(maxsize=len(lines))
    reader = asyncio.create_task(read(ws, call, heard))  # reads on while this waits at the gate
    try:
        await ws.send_json({"type": "start"})
        await ws.send_bytes(USER_AUDIO)
        async with asyncio.timeout(TURN_TIMEOUT * len(lines) + (DRAIN_TIMEOUT if gate else 0)):
            for turn, line in enumerate(lines):
                if turn > 0:
                    assert gate is not None
                    await gate.wait()
                await ws.send_json({"type": "text", "text": line})
                await heard.get()
                call.turns += 1
                call.answered.set()
            await ws.send_json({"type": "stop"})
            await reader
    finally:
        reader.cancel()
    call.close_code = ws.close_code
    return True


async def read(ws: aiohttp.ClientWebSocketResponse, call: Call, heard: asyncio.Queue[None]) -> None:
    """Every server message until it closes: bot audio counted, statuses kept, and ``heard`` told of
    each reply played to its end (bot audio, then ``listening``)."""
    speaking = False
    audio_at_last_reply = 0
    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            call.bot_audio += len(message.data)
            continue
        data = json.loads(message.data)
        if data["type"] != "status":
            continue
        call.statuses.append(data["state"])
        if data["state"] == "draining":
            call.draining.set()
        elif data["state"] == "speaking":
            speaking = True
        elif data["state"] == "listening" and speaking and call.bot_audio > audio_at_last_reply:
            speaking, audio_at_last_reply = False, call.bot_audio
            heard.put_nowait(None)


async def run_calls(client: aiohttp.ClientSession, proxy: str, numbers: range) -> list[Call]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(number: int) -> Call:
        async with limit:
            return await converse(client, proxy, number, Call())

    return list(await asyncio.gather(*(one(n) for n in numbers)))


def upgrades(access_log: Path) -> dict[int, tuple[list[str], list[str]]]:
    """Each conversation's upgrade in nginx's log, by call number: the workers tried, what each said."""
    found = {}
    for line in access_log.read_text().splitlines():
        match = re.match(r"/ws\?call=(\d+) 101 upstream=\[(.*)\] upstream_status=\[(.*)\]$", line)
        if match:
            tried, answers = (re.split(r", | : ", match.group(i)) for i in (2, 3))
            found[int(match.group(1))] = (tried, answers)
    return found


async def test_a_worker_restarted_mid_call_cuts_no_conversation(
    workers: list[Worker], proxy: str, shared: Path, tmp_path: Path
) -> None:
    access_log = tmp_path / "nginx" / "access.log"
    timeout = aiohttp.ClientTimeout(total=TURN_TIMEOUT * 4 + DRAIN_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        for worker in workers:
            await poll(client, worker.base + "/readyz", START_TIMEOUT)
        await poll(client, proxy + "/health", START_TIMEOUT)

        before = await run_calls(client, proxy, range(BEFORE))

        gate = asyncio.Event()
        held = [Call() for _ in range(HELD)]
        calls_held = [
            asyncio.create_task(converse(client, proxy, BEFORE + i, call, gate))
            for i, call in enumerate(held)
        ]
        await asyncio.wait_for(asyncio.gather(*(c.answered.wait() for c in held)), TURN_TIMEOUT)
        counts = {w.port: await sessions_started(client, w) for w in workers}
        actives = {w.port: await active(client, w) for w in workers}
        draining = next(w for w in workers if actives[w.port] > 0)
        others = [w for w in workers if w is not draining]

        draining.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TURN_TIMEOUT):  # the held calls on it are told
            while sum(c.draining.is_set() for c in held) < actives[draining.port]:
                await asyncio.sleep(0.05)

        during = await run_calls(client, proxy, range(BEFORE + HELD, BEFORE + HELD + DURING))
        assert draining.process.poll() is None  # still draining: its held call is live
        draining_total = await sessions_started(client, draining)
        assert draining_total == counts[draining.port]  # nothing new started there

        gate.set()
        await asyncio.wait_for(asyncio.gather(*calls_held), TURN_TIMEOUT * 2)
        assert draining.process.wait(timeout=DRAIN_TIMEOUT) == 0
        totals = [draining_total] + [await sessions_started(client, w) for w in others]
        async with asyncio.timeout(5):  # nginx logs a websocket once both sides have closed
            while len(upgrades(access_log)) < BEFORE + HELD + DURING:
                await asyncio.sleep(0.05)

    calls = before + held + during
    cut = [c for c in calls if c.close_code != 1000 or c.turns != (2 if c in held else 1)]
    assert cut == [], [(c.session_id, c.close_code, c.turns, c.statuses) for c in cut]
    told_draining = [c for c in held if "draining" in c.statuses]
    assert len(told_draining) == actives[draining.port] >= 1
    assert sum(totals) == len(calls) == BEFORE + HELD + DURING

    drained = f"127.0.0.1:{draining.port}"
    routed = upgrades(access_log)
    assert sorted(routed) == list(range(len(calls)))
    retried = 0
    for number in range(BEFORE + HELD, len(calls)):  # begun after the signal
        tried, answers = routed[number]
        assert tried[-1] != drained and answers[-1] == "101"
        refusals = [answer for worker, answer in zip(tried, answers, strict=True) if worker == drained]
        assert set(refusals) <= {"503"}
        retried += len(refusals)
    print(f"upgrades refused by the draining worker and retried by nginx: {retried} of {DURING}")

    ids = {c.session_id for c in calls}
    assert len(ids) == len(calls)
    assert {p.name for p in shared.iterdir()} == ids
    listed = Recordings(shared).conversations()
    assert {e["id"] for e in listed} == ids
    for entry in listed:
        assert set(entry["audio"]) == {"user.wav", "bot.wav", "mixed.wav"}, entry
        for name in entry["audio"]:
            path = shared / entry["id"] / name
            with wave.open(str(path)) as audio:
                declared = audio.getnframes() * audio.getsampwidth() * audio.getnchannels()
            assert declared == path.stat().st_size - WAV_HEADER_BYTES > 0, path


async def active(client: aiohttp.ClientSession, worker: Worker) -> int:
    async with client.get(worker.base + "/metrics") as response:
        text = await response.text()
    (value,) = re.findall(r"^voxgraph_sessions_active (\S+)$", text, re.MULTILINE)
    return round(float(value))


async def test_a_full_worker_passes_new_conversations_to_another(tmp_path: Path, shared: Path) -> None:
    access_log = tmp_path / "nginx" / "access.log"
    timeout = aiohttp.ClientTimeout(total=TURN_TIMEOUT * 4)
    with (
        launched(tmp_path, shared, [["server.max_sessions=1"], []]) as (full, free),
        proxied(tmp_path, [full, free]) as proxy,
    ):
        async with aiohttp.ClientSession(timeout=timeout) as client:
            for worker in (full, free):
                await poll(client, worker.base + "/readyz", START_TIMEOUT)
            await poll(client, proxy + "/health", START_TIMEOUT)

            gate, held = asyncio.Event(), Call()
            holding = asyncio.create_task(converse(client, full.base, PAST_FULL, held, gate))  # direct
            await asyncio.wait_for(held.answered.wait(), TURN_TIMEOUT)
            async with client.get(full.base + "/readyz") as ready:
                assert ready.status == 503  # full

            calls = [await converse(client, proxy, number, Call()) for number in range(PAST_FULL)]
            assert await sessions_started(client, full) == 1  # only the held call

            gate.set()
            await asyncio.wait_for(holding, TURN_TIMEOUT * 2)
            async with asyncio.timeout(5):  # nginx logs a websocket once both sides have closed
                while len(upgrades(access_log)) < PAST_FULL:
                    await asyncio.sleep(0.05)

    refused = [c for c in calls if c.attempts != 1 or c.close_code != 1000 or c.turns != 1]
    assert refused == [], [(c.attempts, c.close_code, c.turns, c.statuses) for c in refused]
    assert held.close_code == 1000 and held.turns == 2
    routed = upgrades(access_log)
    assert sorted(routed) == list(range(PAST_FULL))
    at_full, at_free = f"127.0.0.1:{full.port}", f"127.0.0.1:{free.port}"
    retried = 0
    for tried, answers in routed.values():
        assert tried[-1] == at_free and answers[-1] == "101"
        assert set(tried[:-1]) <= {at_full} and set(answers[:-1]) <= {"503"}
        retried += len(answers) - 1
    assert retried >= 1  # nginx did try the full worker first, and its 503 sent the call on
    print(f"upgrades refused by the full worker and retried by nginx: {retried} of {PAST_FULL}")


REFUSED_CALLS = 8  # more than nginx would forgive if each refusal counted as a failed attempt
PAGE_ROUTES = ("/", "/health", "/api/auth")


async def test_a_full_fleet_refuses_new_calls_and_still_serves_the_page(tmp_path: Path, shared: Path) -> None:
    """Every worker holds as many calls as it may. New conversations through nginx get the workers' 503
    with its Retry-After (never nginx's 502: a refusal takes no worker out of rotation), the page,
    /health and the API still answer, and once a call ends the next conversation starts at once."""
    access_log = tmp_path / "nginx" / "access.log"
    timeout = aiohttp.ClientTimeout(total=TURN_TIMEOUT * 4)
    with (
        launched(tmp_path, shared, [["server.max_sessions=1"]] * WORKERS) as fleet,
        proxied(tmp_path, fleet) as proxy,
    ):
        async with aiohttp.ClientSession(timeout=timeout) as client:
            for worker in fleet:
                await poll(client, worker.base + "/readyz", START_TIMEOUT)
            await poll(client, proxy + "/health", START_TIMEOUT)

            gate, held = asyncio.Event(), [Call() for _ in fleet]
            holding = [
                asyncio.create_task(converse(client, worker.base, 100 + i, call, gate))  # direct
                for i, (worker, call) in enumerate(zip(fleet, held, strict=True))
            ]
            await asyncio.wait_for(asyncio.gather(*(c.answered.wait() for c in held)), TURN_TIMEOUT)

            refusals: list[tuple[int, str | None]] = []
            pages: list[tuple[str, int]] = []
            for number in range(REFUSED_CALLS):
                for path in (f"/ws?call={number}", f"/?call={number}"):  # /: a client upgrading the page
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await client.ws_connect(proxy + path)
                    headers = refused.value.headers
                    retry_after = None if headers is None else headers.get("Retry-After")
                    refusals.append((refused.value.status, retry_after))
                for route in PAGE_ROUTES:
                    async with client.get(proxy + route) as response:
                        pages.append((route, response.status))

            gate.set()
            await asyncio.wait_for(asyncio.gather(*holding), TURN_TIMEOUT * 2)
            after = await converse(client, proxy, REFUSED_CALLS, Call())

    assert [status for status, _ in refusals] == [503] * 2 * REFUSED_CALLS
    assert {retry_after for _, retry_after in refusals} == {str(RETRY_AFTER_FULL)}  # the worker's own
    assert [status for _, status in pages] == [200] * len(PAGE_ROUTES) * REFUSED_CALLS, pages
    assert after.attempts == 1 and after.close_code == 1000 and after.turns == 1
    tried_per_refusal = []
    for line in access_log.read_text().splitlines():
        match = re.match(r"/(?:ws)?\?call=\d+ 503 upstream=\[(.*)\] upstream_status=\[(.*)\]$", line)
        if match:
            answers = re.split(r", | : ", match.group(2))
            assert set(answers) == {"503"}, line  # every worker tried said 503 itself
            tried_per_refusal.append(len(answers))
    assert len(tried_per_refusal) == 2 * REFUSED_CALLS
    assert min(tried_per_refusal) == WORKERS  # nginx asked every worker each time: none was skipped
    print(f"refused upgrades through nginx: {len(refusals)}, workers asked per refusal: {tried_per_refusal}")
