"""``/metrics`` over real sockets: a served graph's conversations, as Prometheus scrapes them.

Sessions of a small graph (``Answerer`` answers typed text, times its work and records a fixed
voice-to-voice latency; ``Gate`` holds user audio until the test lets it go) are run over loopback,
``/metrics`` is scraped and parsed with prometheus_client's own parser, and every figure is compared
with what the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.errors import FatalProcessorError
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    ErrorFrame,
    Frame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TranscriptFrame,
    UserTextFrame,
)
from pipeline.processor import Processor, timings_of
from transports.websocket.prometheus import ServerMetrics, SessionWatch
from transports.websocket.protocol import Audio
from transports.websocket.server import VoiceServer
from transports.websocket.session import Inbound

TIMEOUT = 10.0
KEY = "metrics-key-0123456789abcdef"
VOICE_TO_VOICE = 0.45  # seconds: between the 0.4 and 0.5 buckets
FRAME_BYTES = 640  # 20 ms of 16 kHz 16-bit audio: the input node's frame
HERE = "tests.test_prometheus_metrics"
GRAPH = f"""
name: metered
server: {{type: websocket, port: 0, max_sessions: 3}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  worker: {{type: "{HERE}:Answerer"}}
  out: {{type: websocket.output, realtime: false}}
edges:
  - mic -> worker -> out
"""
GATED_GRAPH = f"""
name: gated
server: {{type: websocket, port: 0, max_sessions: 1}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  slow: {{type: "{HERE}:Gate", queue: {{size: 2, overflow: drop_oldest}}}}
  out: {{type: websocket.output, realtime: false}}
edges:
  - mic -> slow -> out
"""

Families = dict[str, Any]


class Answerer(Processor):
    """Answers typed text like a tiny assistant; ``fail`` raises, ``fatal`` ends the conversation."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, UserTextFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (
        TranscriptFrame,
        LLMResponseStartFrame,
        LLMTextFrame,
        LLMResponseEndFrame,
    )

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            await self.push(frame)
            return
        assert isinstance(frame, UserTextFrame)
        if frame.text == "fail":
            raise ValueError("asked to fail")
        if frame.text == "fatal":
            raise FatalProcessorError("asked to end the conversation")
        with self.metrics.measure():
            self.metrics.first_byte()
            await self.push(TranscriptFrame(text=frame.text))
            self.metrics.record("voice_to_voice", VOICE_TO_VOICE)
            for reply in (LLMResponseStartFrame(), LLMTextFrame(text="heard you"), LLMResponseEndFrame()):
                await self.push(reply)


class Gate(Processor):
    """Holds the first audio frame until ``Gate.opened`` is set: its small inbox overflows meanwhile."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
    opened: ClassVar[asyncio.Event]

    async def process(self, frame: Frame) -> None:
        await asyncio.wait_for(Gate.opened.wait(), TIMEOUT)
        await self.push(frame)


# --- harness -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(text: str, *overrides: str) -> AsyncIterator[tuple[VoiceServer, URL]]:
    compiled, problems = config.compile_text(text, "<test>", overrides)
    assert compiled is not None and not problems, problems
    quiet = LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None)  # admission never refuses
    server = VoiceServer(compiled, meter=quiet)
    await server.start()
    try:
        yield server, URL(server.url)
    finally:
        await asyncio.wait_for(server.stop(), 30)


async def scrape(http: aiohttp.ClientSession, url: URL, headers: dict[str, str] | None = None) -> Families:
    async with http.get(url / "metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Families, sample_name: str, **labels: str) -> float:
    """The value of one sample (0 when a labelled child does not exist yet)."""
    family = families[_family_name(sample_name)]
    found = [s.value for s in family.samples if s.name == sample_name and s.labels == labels]
    assert len(found) <= 1, found
    return float(found[0]) if found else 0.0


def _family_name(sample_name: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


async def scrape_until(
    http: aiohttp.ClientSession, url: URL, condition: Callable[[Families], bool], what: str
) -> Families:
    """Scrape until ``condition`` holds (a session's end is counted just after its socket closes)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        families = await scrape(http, url)
        if condition(families):
            return families
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {what} within {TIMEOUT}s")
        await asyncio.sleep(0.02)  # poll interval, bounded by the deadline


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse, accept: Callable[[dict[str, Any]], bool]
) -> None:
    """Read JSON messages until one is accepted (bounded)."""

    async def read() -> None:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT and accept(json.loads(message.data)):
                return
        raise AssertionError(f"closed ({ws.close_code}) before the expected message")

    await asyncio.wait_for(read(), TIMEOUT)


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read (and ignore) messages until the server closes; its close code."""

    async def read() -> None:
        async for _ in ws:
            pass

    await asyncio.wait_for(read(), TIMEOUT)
    return ws.close_code


def ended_sessions(count: int, outcome: str = "normal") -> Callable[[Families], bool]:
    return lambda families: value(families, "voxgraph_sessions_total", outcome=outcome) == count


def final_reply(message: dict[str, Any]) -> bool:
    return message["type"] == "assistant_text" and message["final"] is True


async def converse(http: aiohttp.ClientSession, url: URL, frames: int, text: str = "hello") -> int:
    """One conversation: ``frames`` audio frames in three messages, a typed turn, its reply, stop.
    Returns the audio bytes sent."""
    audio = bytes(FRAME_BYTES * frames)
    async with http.ws_connect(url / "ws") as ws:
        third = len(audio) // 3 // FRAME_BYTES * FRAME_BYTES
        for piece in (audio[:third], audio[third : 2 * third], audio[2 * third :]):
            await ws.send_bytes(piece)
        await ws.send_str(json.dumps({"type": "text", "text": text}))
        await receive_until(ws, final_reply)  # the audio before the text has reached the graph
        await ws.send_str(json.dumps({"type": "stop"}))
        assert await until_closed(ws) == 1000
    return len(audio)


# --- tests ---------------------------------------------------------------------------------------


async def test_three_conversations_are_counted_as_they_happen() -> None:
    async with serving(GRAPH) as (server, url), aiohttp.ClientSession() as http:
        assert server.metrics.registry is not REGISTRY
        before = await scrape(http, url)
        assert value(before, "voxgraph_sessions_active") == 0
        assert value(before, "voxgraph_sessions_total", outcome="normal") == 0
        assert value(before, "voxgraph_connections_refused_total", reason="full") == 0
        sent = 0
        for done in range(1, 4):
            sent += await converse(http, url, frames=10 * done)
            after = await scrape_until(http, url, ended_sessions(done), f"{done} ended sessions")
            assert value(after, "voxgraph_sessions_active") == 0
            assert value(after, "voxgraph_turns_total") == done
            assert value(after, "voxgraph_client_audio_bytes_total") == sent
            for name in ("voxgraph_processor_processing_seconds", "voxgraph_processor_ttfb_seconds"):
                labels = {"node": "worker", "type": f"{HERE}:Answerer"}
                assert value(after, f"{name}_count", **labels) == done
        assert value(after, "voxgraph_voice_to_voice_seconds_count") == 3
        assert value(after, "voxgraph_voice_to_voice_seconds_bucket", le="0.4") == 0
        assert value(after, "voxgraph_voice_to_voice_seconds_bucket", le="0.5") == 3
        assert value(after, "voxgraph_voice_to_voice_seconds_sum") == pytest.approx(3 * VOICE_TO_VOICE)
        for outcome in ("error", "shutdown", "flood", "other"):
            assert value(after, "voxgraph_sessions_total", outcome=outcome) == 0
        assert value(after, "voxgraph_client_audio_dropped_bytes_total") == 0
        assert value(after, "process_cpu_seconds_total") > 0
        assert value(after, "process_resident_memory_bytes") > 0


async def test_a_live_session_shows_as_active() -> None:
    async with serving(GRAPH) as (_, url), aiohttp.ClientSession() as http, http.ws_connect(url / "ws") as ws:
        await receive_until(ws, lambda m: m.get("state") == "listening")
        assert value(await scrape(http, url), "voxgraph_sessions_active") == 1


async def test_errors_by_node_and_kind_and_a_failed_session() -> None:
    async with serving(GRAPH) as (_, url), aiohttp.ClientSession() as http:
        async with http.ws_connect(url / "ws") as ws:
            await ws.send_str(json.dumps({"type": "text", "text": "fail"}))
            await receive_until(ws, lambda m: m["type"] == "error")
            families = await scrape(http, url)
            errors = "voxgraph_processor_errors_total"
            assert value(families, errors, node="worker", kind="ValueError", fatal="false") == 1
            await ws.send_str(json.dumps({"type": "text", "text": "fatal"}))
            assert await until_closed(ws) == 1011
        families = await scrape_until(http, url, ended_sessions(1, "error"), "a failed session")
        assert value(families, errors, node="worker", kind="FatalProcessorError", fatal="true") == 1
        assert value(families, errors, node="worker", kind="ValueError", fatal="false") == 1
        assert value(families, "voxgraph_sessions_total", outcome="normal") == 0


async def test_refused_connections_are_counted_by_reason() -> None:
    async with serving(GRAPH, "server.max_sessions=1") as (server, url), aiohttp.ClientSession() as http:
        async with http.ws_connect(url / "ws") as first:
            await receive_until(first, lambda m: m.get("state") == "listening")
            async with http.ws_connect(url / "ws") as second:
                assert await until_closed(second) == 1013
            families = await scrape(http, url)
        assert value(families, "voxgraph_connections_refused_total", reason="full") == 1
        server.loading = True  # as while models warm up: refused before the upgrade
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url / "ws")
        server.loading = False
        server.begin_drain()
        for _ in range(2):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(url / "ws")
        families = await scrape(http, url)
        refused = "voxgraph_connections_refused_total"
        expected = {"full": 1, "loading": 1, "draining": 2, "load": 0}
        assert {reason: value(families, refused, reason=reason) for reason in expected} == expected


async def test_inbox_drops_and_received_audio_count_live_and_once_after_the_end() -> None:
    Gate.opened = asyncio.Event()
    frames = 40
    overflowed = frames - 3  # at least: one held by the gate, two queued, the rest overflow its inbox
    dropped = "voxgraph_inbox_dropped_frames_total"
    async with serving(GATED_GRAPH) as (server, url), aiohttp.ClientSession() as http:
        async with http.ws_connect(url / "ws") as ws:
            await ws.send_bytes(bytes(FRAME_BYTES * frames))
            live = await scrape_until(
                http, url, lambda f: value(f, dropped, node="slow") >= overflowed, "all audio in the graph"
            )
            (session,) = server.sessions.values()
            slow = session.graph.processors["slow"]
            assert value(live, dropped, node="slow") == slow.inbox.dropped
            assert value(live, "voxgraph_client_audio_bytes_total") == FRAME_BYTES * frames
            await ws.send_bytes(bytes(FRAME_BYTES))  # received while the graph is stuck: counted at once
            await scrape_until(
                http,
                url,
                lambda f: value(f, "voxgraph_client_audio_bytes_total") == FRAME_BYTES * (frames + 1),
                "the second message counted",
            )
            Gate.opened.set()
            await ws.send_str(json.dumps({"type": "stop"}))
            assert await until_closed(ws) == 1000
        ended = await scrape_until(http, url, ended_sessions(1), "the end")
        assert value(ended, dropped, node="slow") == slow.inbox.dropped
        assert value(ended, "voxgraph_client_audio_bytes_total") == FRAME_BYTES * (frames + 1)
        assert value(ended, "voxgraph_client_audio_dropped_bytes_total") == 0
        assert value(ended, "voxgraph_sessions_active") == 0


def test_received_audio_counts_every_byte_taken_including_those_dropped_later() -> None:
    inbound = Inbound("s", max_audio_bytes=FRAME_BYTES * 2)
    sizes = (FRAME_BYTES, FRAME_BYTES * 3, 2, FRAME_BYTES)
    for size in sizes:
        assert inbound.put(Audio(bytes(size)))
    assert inbound.received_audio_bytes == sum(sizes)
    assert inbound.dropped_bytes == FRAME_BYTES * 4  # the oldest two, once over the bound
    inbound.end()
    assert inbound.put(Audio(bytes(FRAME_BYTES)))  # after the end: ignored, not received
    assert inbound.received_audio_bytes == sum(sizes)


async def test_metrics_need_the_api_key_when_auth_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRAPH_API_KEYS", KEY)
    monkeypatch.delenv("VOXGRAPH_TOKEN_SECRET", raising=False)
    async with serving(GRAPH, "server.auth=api_key") as (_, url), aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}):
            async with http.get(url / "metrics", headers=headers) as response:
                assert response.status == 401
                assert "voxgraph_" not in await response.text()
        families = await scrape(http, url, {"Authorization": f"Bearer {KEY}"})
        assert value(families, "voxgraph_sessions_active") == 0


def test_one_error_report_pushed_to_two_neighbours_counts_once() -> None:
    compiled, problems = config.compile_text(GRAPH, "<test>", ())
    assert compiled is not None and not problems, problems
    metrics = ServerMetrics(compiled)
    graph = compiled.graph()
    watch = SessionWatch(metrics, graph.processors, Inbound())
    worker, mic, out = (graph.processors[name] for name in ("worker", "mic", "out"))
    report = ErrorFrame(message="KeyError: 'x'", processor="worker")
    for neighbour in (mic, out):  # as a node with two upstream neighbours reports it
        watch.on_push(worker, neighbour, report, UPSTREAM)
    watch.on_push(mic, None, report, UPSTREAM)  # passing by on its way out: not the failing node
    watch.on_push(worker, mic, ErrorFrame(message="not a class: x", processor="worker"), UPSTREAM)
    for kind in ("KeyError", "other"):
        labels = {"node": "worker", "kind": kind, "fatal": "false"}
        assert metrics.registry.get_sample_value("voxgraph_processor_errors_total", labels) == 1
    watch.close()
    assert all(timings_of(p).listener is None for p in graph.processors.values())
