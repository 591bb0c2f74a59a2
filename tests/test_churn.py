"""Sessions leave nothing behind: after many served conversations per engine family, the process is
where it was after the first few. Each family churns in a fresh interpreter, so the figures are its own.

Each family's graph is served in-process (``VoiceServer`` on 127.0.0.1, port 0) and driven over real
sockets: connect, a little real speech (or a typed line for the LLM and TTS), the answer, ``stop``;
after every tenth conversation, one client leaves while its graph is still starting. The baseline is
taken after a few warm-up sessions, because models load once per process and stay (the design, not a
leak). After the churn:

* asyncio tasks and open file descriptors are exactly back to the baseline;
* threads too, except idle workers of the event loop's default executor (a bounded pool that
  ``run_in_thread`` reuses, not a per-session thread); native threads (engines' own pools, which
  ``threading`` does not see) exactly, but for those an engine keeps per executor worker (a worker
  that first runs the engine during the churn brings them along, whichever worker the pool picks);
* resident memory stopped growing: the second half of the churn added less than ``RSS_TOLERANCE``
  (the first sessions warm allocator arenas and caches by a varying amount), and the whole churn less
  than ``RSS_CEILING``;
* every session's graph and processors are gone, freed by reference counting alone (the cyclic GC is
  off during the churn but for one collection at its midpoint, where the memory is measured; the
  second half's sessions are checked): a dead graph kept alive by a cycle holds its engine objects
  until a full collection, which a busy server rarely runs (the leak this test was written for: 35 MB of
  PocketSphinx decoder per session, 2 GB after 60 sessions);
* nothing logged "Task was destroyed but it is pending" or an exception never retrieved.

The first tests check the mechanism itself, on a graph of test processors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from yarl import URL

from pipeline import config
from pipeline.frames import UserAudioFrame
from pipeline.graph import Graph
from pipeline.processor import Processor
from pipeline.testing import Collector, ScriptedSource
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.speech import librivox, read_wav, silence
from transports.websocket import server as server_module
from transports.websocket.server import VoiceServer

CYCLES = 100
WARM_UP = 3
WHISPER_CYCLES = 60
"""Each Whisper session costs a full pass (~0.7 s on 2 shared cores): fewer than the others'."""
WHISPER_RSS_TOLERANCE = 25 * 2**20
"""CTranslate2's allocator swings by ~18 MB from one session to the next, either way (measured: 208.8 →
226.8 MB after 30 sessions, 225.9 → 209.6 MB after 60); a leak of 1 MB a session (30 MB over the second
half's 30 sessions) still fails it, and any task, thread, fd or graph left behind is caught exactly."""
NATIVE_THREADS_PER_WORKER = 2
"""llama.cpp keeps helper threads per thread that calls it (2 seen): an executor worker that runs its
first generation during the churn brings them along. They live as long as the (bounded) pool."""
LEAVER_EVERY = 10
"""After every tenth conversation, a client that leaves at once, while its graph is still starting."""
TIMEOUT = 15.0  # one session, end to end
SETTLE = 5.0  # for the last connection's tasks and sockets to wind down after its handler returned
RSS_TOLERANCE = 10 * 2**20
"""Allowed growth of resident memory over the second half of the churn (sessions 50 to 100): a leak of
0.2 MB a session shows, while allocator arenas and caches, warmed by the first sessions, have settled."""
RSS_CEILING = 60 * 2**20
"""Allowed growth over the whole churn, warm-up of arenas and caches included."""
CHILD_TIMEOUT = 900.0  # one family's churn in its own process, models loaded included
ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
CHUNK = 2 * RATE // 10  # client audio in 100 ms messages

SERVED = """
server: {type: websocket, port: 0, max_sessions: 2}
settings: {end_timeout: 5.0, cancel_timeout: 2.0}
"""


def _speech() -> bytes:
    """0.8 s of a LibriVox clip ("he was not..."), then 1 s of silence so the VAD ends the utterance."""
    samples, rate = read_wav(librivox("0880"))
    assert rate == RATE
    return np.concatenate([samples[RATE // 5 : RATE], silence(1.0)]).astype("<i2").tobytes()


# --- the mechanism, without engines or sockets ------------------------------------------------------------


class Loading(Processor):
    """Loads slowly, then starts a background task that only ``on_stop`` ends (like a decoder task)."""

    def __init__(self) -> None:
        super().__init__(name="loading")
        self.loading = asyncio.Event()  # set once on_start has begun
        self.loaded = False
        self.background: asyncio.Task[None] | None = None
        self.on_start_cancelled = False

    async def on_start(self) -> None:
        self.loading.set()
        try:
            await asyncio.sleep(3600)  # a model load in a thread, as far as the graph can tell
        except asyncio.CancelledError:
            self.on_start_cancelled = True
            raise
        self.loaded = True
        self.background = asyncio.create_task(asyncio.sleep(3600))

    async def on_stop(self) -> None:
        if self.background is not None:
            self.background.cancel()


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("how", ["end", "stop", "cancel"])
async def test_a_finished_graph_is_freed_by_reference_counting(how: str) -> None:
    source = ScriptedSource([UserAudioFrame(pcm=bytes(640), sample_rate=RATE)] * 5)
    if how != "end":
        source.hold_end = asyncio.Event()  # runs until stopped or cancelled
    graph = Graph({"source": source, "sink": Collector(name="sink")}, [("source", "sink")])
    refs: list[weakref.ref[Any]] = [weakref.ref(graph), *(weakref.ref(p) for p in graph.processors.values())]
    with gc_disabled():
        running = asyncio.create_task(graph.run())
        await asyncio.wait_for(graph.started.wait(), TIMEOUT)
        if how == "stop":
            await graph.stop()
        elif how == "cancel":
            await graph.cancel()
        await asyncio.wait_for(running, TIMEOUT)
        del graph, source, running
        assert [ref() for ref in refs] == [None] * len(refs)


async def test_a_graph_stopped_while_starting_stops_its_on_start_hooks() -> None:
    loading = Loading()
    graph = Graph({"source": ScriptedSource(), "loading": loading}, [("source", "loading")])
    running = asyncio.create_task(graph.run())
    await asyncio.wait_for(loading.loading.wait(), TIMEOUT)
    running.cancel()  # the client left while models load
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, TIMEOUT)
    assert loading.on_start_cancelled and not loading.loaded and loading.background is None


# --- one session -------------------------------------------------------------------------------------


class Conversation:
    """One client connection, read in order (no reader task: the test's own tasks stay constant)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.audio = 0  # bytes of bot audio received
        self.seen: list[dict[str, Any]] = []

    async def expect(self, accept: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Read messages until one that ``accept`` takes."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await self.ws.receive()
                if message.type is aiohttp.WSMsgType.BINARY:
                    self.audio += len(message.data)
                    continue
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"closed ({message.type}) before {what}; got {self.seen}")
                data: dict[str, Any] = json.loads(message.data)
                self.seen.append(data)
                if data["type"] == "error":
                    raise AssertionError(f"error before {what}: {data['message']}")
                if accept(data):
                    return data

    async def stream(self, pcm: bytes) -> None:
        for offset in range(0, len(pcm), CHUNK):
            await self.ws.send_bytes(pcm[offset : offset + CHUNK])

    async def finish(self) -> None:
        """``stop``, then read until the server closes the connection."""
        await self.ws.send_str('{"type":"stop"}')
        async with asyncio.timeout(TIMEOUT):
            while not self.ws.closed:
                message = await self.ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break


def _final(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind and bool(m.get("final"))


async def _transcribe(talk: Conversation) -> None:
    await talk.stream(SPEECH)
    await talk.expect(_final("transcript"), "a final transcript")


async def _chat(talk: Conversation) -> None:
    await talk.ws.send_str('{"type":"text","text":"Hello!"}')
    await talk.expect(_final("assistant_text"), "a reply")


async def _speak(talk: Conversation) -> None:
    await talk.ws.send_str('{"type":"text","text":"Hello there."}')
    await talk.expect(lambda m: m["type"] == "status" and m["state"] == "speaking", "bot speech")
    await talk.expect(lambda m: m["type"] == "status" and m["state"] == "listening", "the end of the reply")
    assert talk.audio > 0


SPEECH = _speech()


# --- the families ------------------------------------------------------------------------------------


@dataclass
class Family:
    nodes: str  # YAML of the nodes between the websocket input ``mic`` and output ``out``
    chain: str  # the edge from mic to out
    drive: Callable[[Conversation], Awaitable[None]]
    cycles: int = CYCLES  # sessions after the baseline
    rss_tolerance: int = RSS_TOLERANCE  # growth allowed over the second half
    text_role: str = "user"  # what typed text is to the graph: a turn for an LLM, or a line to speak

    def graph(self, name: str) -> str:
        return (
            f"name: churn-{name}\n{SERVED}nodes:\n"
            f"  mic: {{type: websocket.input, text_role: {self.text_role}}}\n{self.nodes}"
            f"  out: {{type: websocket.output, realtime: false}}\nedges:\n  - {self.chain}\n"
        )


FAMILIES = {
    "pocketsphinx": Family(
        "  vad: {type: vad.webrtc}\n  stt: {type: stt.pocketsphinx}\n",
        "mic -> vad -> stt -> out",
        _transcribe,
    ),
    "whisper": Family(
        "  vad: {type: vad.webrtc}\n  stt: {type: stt.whisper, model: tiny.en, early_transcription: false}\n",
        "mic -> vad -> stt -> out",
        _transcribe,
        WHISPER_CYCLES,
        WHISPER_RSS_TOLERANCE,
    ),
    "assemblyai": Family(
        "  stt: {type: stt.assemblyai, api_key: test-key, api_host: FAKE, max_turn_silence: 300}\n",
        "mic -> stt -> out",
        _transcribe,
    ),
    "llm.local": Family(
        "  llm: {type: llm.local, n_ctx: 512, max_history_tokens: 200, max_tokens: 3,"
        " system_prompt: Be brief.}\n",
        "mic -> llm -> out",
        _chat,
    ),
    "piper": Family("  tts: {type: tts.piper}\n", "mic -> tts -> out", _speak, text_role="bot"),
}


@dataclass
class Provider:
    """What a family's graph talks to: a local fake for the cloud recogniser, else nothing."""

    fake: FakeAssemblyAI | None = None

    def graph(self, family: str) -> str:
        text = FAMILIES[family].graph(family)
        return text if self.fake is None else text.replace("FAKE", self.fake.ws_url)

    def reset(self) -> None:
        """Between sessions: the fake's own records would grow, and its word script run out."""
        if self.fake is not None:
            self.fake.sessions.clear()
            self.fake.script.position = 0


@contextlib.asynccontextmanager
async def _provider(family: str) -> AsyncIterator[Provider]:
    if family != "assemblyai":
        yield Provider()
        return
    words = ["he", "was", "not"]
    async with FakeAssemblyAI(words=words, ms_per_word=150, silence_rms=200.0, max_sessions=1000) as fake:
        yield Provider(fake)


# --- what a process holds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    tasks: int
    fds: int
    rss: int  # bytes
    threads: frozenset[int]  # Python threads by ident
    native_threads: int  # OS threads that are not Python threads (engines' own pools)
    executor_threads: int  # idle-able workers of the loop's default executor

    def differs(self, baseline: Snapshot) -> list[str]:
        """What did not come back (empty: all did)."""
        problems = []
        if self.tasks != baseline.tasks:
            problems.append(f"asyncio tasks {baseline.tasks} -> {self.tasks}: {_task_names()}")
        if self.fds != baseline.fds:
            problems.append(f"open fds {baseline.fds} -> {self.fds}: {_fd_targets()}")
        workers = max(self.executor_threads, baseline.executor_threads)
        if self.native_threads - baseline.native_threads > NATIVE_THREADS_PER_WORKER * workers:
            problems.append(
                f"native threads {baseline.native_threads} -> {self.native_threads} "
                f"({workers} executor workers)"
            )
        extra = [t.name for t in threading.enumerate() if t.ident in self.threads - baseline.threads]
        if [name for name in extra if not name.startswith("asyncio_")]:
            problems.append(f"threads left running: {extra}")
        growth = self.rss - baseline.rss
        if growth >= RSS_CEILING:
            problems.append(f"RSS grew {growth / 2**20:.1f} MB ({baseline.rss / 2**20:.0f} MB before)")
        return problems


def snapshot() -> Snapshot:
    gc.collect()
    _malloc_trim()
    tasks = len(asyncio.all_tasks())
    threads = threading.enumerate()
    return Snapshot(
        tasks=tasks,
        fds=len(os.listdir("/proc/self/fd")),
        rss=_rss(),
        threads=frozenset(t.ident for t in threads if t.ident is not None),
        native_threads=len(os.listdir("/proc/self/task")) - len(threads),
        executor_threads=sum(t.name.startswith("asyncio_") for t in threads),
    )


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    """Give freed heap back to the OS, so RSS counts live memory rather than glibc's free lists."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _task_names() -> list[str]:
    return sorted(t.get_name() + ": " + repr(t.get_coro()) for t in asyncio.all_tasks())


def _fd_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(targets)


async def settled(baseline: Snapshot) -> tuple[Snapshot, list[str]]:
    """A snapshot once the last connection has wound down (bounded by ``SETTLE``), and what differs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while True:
        now = snapshot()
        problems = now.differs(baseline)
        if not problems or loop.time() > deadline:
            return now, problems
        await asyncio.sleep(0.1)  # sockets close and handler tasks end a few loop turns after the close


async def outlived(objects: list[tuple[str, weakref.ref[Any]]]) -> list[str]:
    """The objects still alive once the last session's threads have let go (bounded by ``SETTLE``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while (alive := [name for name, ref in objects if ref() is not None]) and loop.time() < deadline:
        await asyncio.sleep(0.1)  # an engine thread returns a moment after its result was delivered
    return alive


# --- the churn --------------------------------------------------------------------------------------


class WatchedServer(VoiceServer):
    """Reports each ``/ws`` handler's return: after it, nothing should hold the session's graph."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handled = 0
        self.handler_returned = asyncio.Event()

    def _refusal(self, decision: Any = None) -> Any:
        """Never refuse for load: the test's own full collections stall the loop, and admission is
        tested elsewhere."""
        return None

    async def _websocket(self, request: Any) -> Any:
        try:
            return await super()._websocket(request)
        finally:
            self.handled += 1
            self.handler_returned.set()


@dataclass
class Churn:
    baseline: Snapshot
    after: Snapshot
    problems: list[str]
    alive_without_gc: list[str]  # graphs and processors of ended sessions that only a full GC frees
    alive: list[str]  # ... that even a full GC does not free
    sessions: int
    rss_without_gc: int  # bytes, at the end of the churn, before a full collection


async def churn(family: str, cycles: int | None = None, warm_up: int = WARM_UP) -> Churn:
    """Serve ``family``'s graph and run ``warm_up`` then ``cycles`` sessions; what was left behind."""
    built: list[tuple[str, weakref.ref[Any]]] = []
    real_session_graph = getattr(server_module, "session_graph")  # noqa: B009  # not re-exported

    def session_graph(compiled: Any, session_id: Any = None) -> Graph:
        graph: Graph = real_session_graph(compiled, session_id)
        built.append((repr(graph), weakref.ref(graph)))
        built.extend((repr(p), weakref.ref(p)) for p in graph.processors.values())
        return graph

    setattr(server_module, "session_graph", session_graph)  # noqa: B010
    gc_was_enabled = gc.isenabled()
    try:
        async with _provider(family) as provider:
            compiled, invalid = config.compile_text(provider.graph(family), "<churn>")
            assert compiled is not None and not invalid, invalid
            server = WatchedServer(compiled)
            await server.warm_up()
            await server.start()
            try:
                async with aiohttp.ClientSession() as http:
                    base = URL(server.url)
                    for _ in range(warm_up):
                        await _session(http, base, server, family, provider)
                    warmed = len(built)
                    baseline = snapshot()
                    gc.disable()
                    count = FAMILIES[family].cycles if cycles is None else cycles
                    rss_midway, watched = baseline.rss, warmed
                    for index in range(count):
                        if index == count // 2:  # the second half's graphs must go without a collection
                            rss_midway, watched = snapshot().rss, len(built)
                        await _session(http, base, server, family, provider)
                        if index % LEAVER_EVERY == 0:
                            await _session(http, base, server, family, provider, leave_early=True)
                    alive_without_gc = await outlived(built[watched:])
                    _malloc_trim()
                    rss_without_gc = _rss()
                    gc.enable()
                    after, problems = await settled(baseline)
                    if (late_growth := after.rss - rss_midway) >= FAMILIES[family].rss_tolerance:
                        problems.append(f"RSS grew {late_growth / 2**20:.1f} MB over the second half")
            finally:
                await asyncio.wait_for(server.stop(), 30)
    finally:
        setattr(server_module, "session_graph", real_session_graph)  # noqa: B010
        if gc_was_enabled:
            gc.enable()
    gc.collect()
    alive = [name for name, ref in built if ref() is not None]
    return Churn(baseline, after, problems, alive_without_gc, alive, server.handled, rss_without_gc)


async def _session(
    http: aiohttp.ClientSession,
    base: URL,
    server: WatchedServer,
    family: str,
    provider: Provider,
    leave_early: bool = False,
) -> None:
    """One conversation; ``leave_early``: the client leaves as soon as it has a session id, while the
    graph may still be starting."""
    provider.reset()
    server.handler_returned.clear()
    async with http.ws_connect(base / "ws") as ws:
        talk = Conversation(ws)
        await talk.expect(lambda m: m["type"] == "session", "a session id")
        if not leave_early:
            await talk.expect(lambda m: m["type"] == "status" and m["state"] == "listening", "listening")
            await FAMILIES[family].drive(talk)
            await talk.finish()
    await asyncio.wait_for(server.handler_returned.wait(), TIMEOUT)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sessions_leave_nothing_behind(family: str) -> None:
    """In a fresh interpreter: the memory of a process that ran the rest of the suite (a heap of
    ~1 GB, fragmented by other tests' models) moves by more than a leak would."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_churn", family],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    cycles = FAMILIES[family].cycles
    assert result["sessions"] == WARM_UP + cycles + -(-cycles // LEAVER_EVERY)
    assert not result["problems"], result["problems"]
    assert not result["alive"], (
        f"{len(result['alive'])} objects of ended sessions survive a full GC: {result['alive']}"
    )
    assert not result["alive_without_gc"], (
        f"{len(result['alive_without_gc'])} objects of ended sessions are kept alive by reference cycles: "
        f"{result['alive_without_gc'][:10]}"
    )
    assert not result["leftovers"], result["leftovers"]


class _Leftovers(logging.Handler):
    """Keeps asyncio's reports of tasks destroyed while pending and exceptions never retrieved."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "destroyed but it is pending" in message or "never retrieved" in message:
            self.messages.append(message)


def _main(family: str) -> None:
    """``python -m tests.test_churn FAMILY``: churn once; the outcome as one JSON line on stdout."""
    leftovers = _Leftovers()
    logging.getLogger("asyncio").addHandler(leftovers)
    result = asyncio.run(churn(family))
    outcome = {
        "sessions": result.sessions,
        "problems": result.problems,
        "alive": result.alive,
        "alive_without_gc": result.alive_without_gc,
        "leftovers": leftovers.messages,
    }
    print(json.dumps(outcome))


if __name__ == "__main__":
    _main(sys.argv[1])
