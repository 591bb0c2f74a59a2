"""Probes and load over real sockets (127.0.0.1, port 0): /livez, /readyz, /load and the 503 before upgrade.

The server listens before its models are warm: an engine here blocks its start on an event the test
sets, so "loading" is observed without sleeping. Full is max_sessions reached or admission refusing
(a load meter on hand-moved clocks), refused after the upgrade or, with ``full_refusal: http``, before.
The auth matrix: probes are open, /load needs the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import pytest
from yarl import URL

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.frames import Frame
from pipeline.processor import Processor
from tests.test_websocket_server import COUNTER_GRAPH, TIMEOUT, _until, connect
from transports.websocket.server import VoiceServer

KEY = "test-key-0123456789abcdef"
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
OPEN_BODIES = {"/livez": {"status": "alive"}, "/readyz": {"ready": True}}
GRAPH = COUNTER_GRAPH.replace("REALTIME", "false")
GATED_GRAPH = """
name: gated
server: {type: websocket, port: 0}
nodes:
  mic: {type: websocket.input}
  engine: {type: "tests.test_readiness:GatedEngine"}
  out: {type: websocket.output, loopback: true}
edges:
  - mic -> engine -> out
"""


class GatedEngine(Processor):
    """An engine whose start (model loading) waits until the test opens the gate."""

    handles: ClassVar[tuple[type[Frame], ...]] = ()
    entered: ClassVar[asyncio.Event]
    gate: ClassVar[asyncio.Event]
    fail: ClassVar[bool] = False

    async def on_start(self) -> None:
        GatedEngine.entered.set()
        await GatedEngine.gate.wait()
        if GatedEngine.fail:
            raise RuntimeError("model file is corrupt")


class Clocks:
    """CPU and wall clocks moved by hand."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def meter(self, window: float = 10.0) -> LoadMeter:
        return LoadMeter(window, cores=2, cpu_clock=lambda: self.cpu, wall_clock=lambda: self.wall)


def _compiled(text: str, *overrides: str) -> config.Compiled:
    compiled, problems = config.compile_text(text, "<test>", overrides)
    assert compiled is not None and not problems, problems
    return compiled


@contextlib.asynccontextmanager
async def serving(
    text: str, *overrides: str, meter: LoadMeter | None = None
) -> AsyncIterator[tuple[VoiceServer, URL]]:
    quiet = meter or LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None)
    server = VoiceServer(_compiled(text, *overrides), meter=quiet)
    await server.start()
    try:
        yield server, URL(server.url)
    finally:
        await asyncio.wait_for(server.stop(), 30)


@contextlib.asynccontextmanager
async def running(
    text: str, meter: LoadMeter | None = None
) -> AsyncIterator[tuple[VoiceServer, URL, asyncio.Task[int]]]:
    """``VoiceServer.run`` (listen, warm up, serve) with the engine's gate shut."""
    GatedEngine.entered, GatedEngine.gate, GatedEngine.fail = asyncio.Event(), asyncio.Event(), False
    quiet = meter or LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None)
    server = VoiceServer(_compiled(text), meter=quiet)
    task = asyncio.create_task(server.run("gated"))
    try:
        await asyncio.wait_for(GatedEngine.entered.wait(), TIMEOUT)  # run listens before warming up
        yield server, URL(server.url), task
    finally:
        GatedEngine.gate.set()
        if not task.done():
            server.shutdown()
        await asyncio.wait_for(task, 30)


async def _get(http: aiohttp.ClientSession, url: URL, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json()


# --- loading -------------------------------------------------------------------------------------


async def test_not_ready_while_models_load_and_ws_is_refused_before_the_upgrade() -> None:
    async with running(GATED_GRAPH) as (server, base, task), aiohttp.ClientSession() as http:
        assert await _get(http, base / "livez") == (200, {"status": "alive"})
        assert await _get(http, base / "readyz") == (503, {"ready": False, "reason": "loading models"})
        _, load = await _get(http, base / "load")
        assert load["loading"] is True and load["ready"] is False and load["reason"] == "loading models"
        async with http.get(base / "ws", headers=UPGRADE) as refused:
            assert refused.status == 503 and refused.headers["Retry-After"] == "5"
            assert await refused.json() == {
                "error": "the server is loading models; try again shortly",
                "reason": "loading",
            }
        with pytest.raises(aiohttp.WSServerHandshakeError) as upgrade_of_root:
            await http.ws_connect(base)  # the page's own address takes websockets too
        assert upgrade_of_root.value.status == 503
        assert not server.sessions

        GatedEngine.gate.set()
        await _until(lambda: not server.loading, "the warm-up to finish")
        assert await _get(http, base / "readyz") == (200, {"ready": True})
        async with connect(http, base) as client:
            await client.wait_for(lambda m: m["type"] == "session", "a session once ready")
            await client.ws.send_str('{"type":"stop"}')
            assert await client.closed() == 1000
        assert not task.done()


async def test_the_warm_ups_cpu_does_not_count_as_load() -> None:
    clocks = Clocks()
    meter = clocks.meter(window=30.0)
    async with running(GATED_GRAPH, meter) as (server, base, _), aiohttp.ClientSession() as http:
        clocks.wall, clocks.cpu = 10.0, 19.0  # loading models kept 95% of 2 cores busy for 10 s
        GatedEngine.gate.set()
        await _until(lambda: not server.loading, "the warm-up to finish")
        _, load = await _get(http, base / "load")
        assert load["cpu"] is None  # one reading: measured from the end of the warm-up on
        clocks.wall = 20.0  # then 10 s idle
        meter.tick()
        _, load = await _get(http, base / "load")
        assert load["cpu"] == 0.0 and load["admission"]["window_s"] == 10.0


async def test_a_failed_warm_up_exits_1_and_stops_listening() -> None:
    async with running(GATED_GRAPH) as (_, base, task), aiohttp.ClientSession() as http:
        assert (await _get(http, base / "readyz"))[0] == 503
        GatedEngine.fail = True
        GatedEngine.gate.set()
        assert await asyncio.wait_for(task, TIMEOUT) == 1
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(base / "livez")


async def test_a_signal_while_loading_exits_0() -> None:
    async with running(GATED_GRAPH) as (server, _, task):
        server.shutdown()
        assert await asyncio.wait_for(task, TIMEOUT) == 0


# --- full ----------------------------------------------------------------------------------------


async def test_not_ready_while_every_slot_is_taken_and_full_refusals_stay_after_the_upgrade() -> None:
    async with (
        serving(GRAPH, "server.max_sessions=1") as (server, base),
        aiohttp.ClientSession() as http,
    ):
        assert await _get(http, base / "readyz") == (200, {"ready": True})
        async with connect(http, base) as client:
            await client.wait_for(lambda m: m["type"] == "session", "a session")
            status, body = await _get(http, base / "readyz")
            assert status == 503
            assert body == {"ready": False, "reason": "full: the one conversation slot is in use"}
            _, load = await _get(http, base / "load")
            assert (load["sessions"], load["capacity"], load["full"], load["ready"]) == (1, 1, True, False)
            async with connect(http, base) as extra:  # upgraded, then error + 1013, as before
                assert await extra.closed() == 1013
                assert "busy" in extra.of("error")[0]["message"]
            await client.ws.send_str('{"type":"stop"}')
            await client.closed()
        await _until(lambda: not server.sessions, "the slot to free up")
        assert await _get(http, base / "readyz") == (200, {"ready": True})


async def test_not_ready_while_admission_refuses_and_load_shows_its_figures() -> None:
    clocks = Clocks()
    meter = clocks.meter()
    async with serving(GRAPH, meter=meter) as (server, base), aiohttp.ClientSession() as http:
        meter.tick()
        clocks.wall, clocks.cpu = 10.0, 19.0  # 95% of 2 cores over 10 s
        meter.tick()
        assert await _get(http, base / "readyz") == (200, {"ready": True})  # the first is always admitted
        async with connect(http, base) as client:
            await client.wait_for(lambda m: m["type"] == "session", "a session")
            status, body = await _get(http, base / "readyz")
            assert status == 503 and body["reason"].startswith("full: server at capacity: CPU 95%"), body
            _, load = await _get(http, base / "load")
            assert load["sessions"] == 1 and load["capacity"] == 3
            assert load["cpu"] == 0.95 and load["loop_lag"] == 0.0
            assert load["full"] is True and load["ready"] is False
            assert load["draining"] is False and load["loading"] is False
            assert load["drain_left_s"] is None
            admission = load["admission"]
            assert admission["admit"] is False and "CPU 95%" in admission["reason"]
            assert admission["window_s"] == 10.0 and admission["session_lag_s"] == [0.0]
            await client.ws.send_str('{"type":"stop"}')
            await client.closed()
        await _until(lambda: not server.sessions, "the session to end")
        _, load = await _get(http, base / "load")
        assert (load["sessions"], load["full"], load["ready"], load["reason"]) == (0, False, True, None)


async def test_with_full_refusal_http_a_full_server_refuses_before_the_upgrade_like_draining() -> None:
    async with (
        serving(GRAPH, "server.max_sessions=1", "server.full_refusal=http") as (server, base),
        aiohttp.ClientSession() as http,
    ):
        async with connect(http, base) as client:
            held = await client.wait_for(lambda m: m["type"] == "session", "a session")
            async with http.get(base / "ws", headers=UPGRADE) as refused:
                assert refused.status == 503 and refused.headers["Retry-After"] == "5"
                assert await refused.json() == {
                    "error": "server busy: the one conversation slot is in use; try again later",
                    "reason": "full",
                }
            with pytest.raises(aiohttp.WSServerHandshakeError) as upgrade_of_root:
                await http.ws_connect(base)
            assert upgrade_of_root.value.status == 503
            assert list(server.sessions) == [held["session_id"]]  # nothing started for them
            assert _refusals(server, "full") == 2
            await client.ws.send_str('{"type":"stop"}')
            await client.closed()
        await _until(lambda: not server.sessions, "the slot to free up")
        async with connect(http, base) as again:
            await again.wait_for(lambda m: m["type"] == "session", "a session once a slot is free")


async def test_with_full_refusal_http_no_headroom_is_refused_before_the_upgrade_too() -> None:
    clocks = Clocks()
    meter = clocks.meter()
    async with (
        serving(GRAPH, "server.full_refusal=http", meter=meter) as (server, base),
        aiohttp.ClientSession() as http,
    ):
        meter.tick()
        clocks.wall, clocks.cpu = 10.0, 19.0  # 95% of 2 cores over 10 s
        meter.tick()
        async with connect(http, base) as client:
            await client.wait_for(lambda m: m["type"] == "session", "a session")
            async with http.get(base / "ws", headers=UPGRADE) as refused:
                assert refused.status == 503 and refused.headers["Retry-After"] == "5"
                body = await refused.json()
            assert body["reason"] == "load" and body["error"].startswith("server at capacity: CPU 95%")
            assert len(server.sessions) == 1 and _refusals(server, "load") == 1


def test_full_refusal_is_a_server_key_message_or_http() -> None:
    text = "server: {type: websocket}\nnodes:\n  mic: {type: websocket.input}\n"
    text += "  out: {type: websocket.output}\nedges: [mic -> out]\n"
    assert config.ServerSettings().full_refusal == "message"
    for good in ("message", "http"):
        assert config.check_text(text, overrides=[f"server.full_refusal={good}"]) == []
    [problem] = config.check_text(text, overrides=["server.full_refusal=close"])
    assert "full_refusal" in problem.message and "out of range" in problem.message
    assert "message" in (problem.fix or "") and "http" in (problem.fix or "")


def _refusals(server: VoiceServer, kind: str) -> float:
    counted = server.metrics.registry.get_sample_value("voxgraph_connections_refused_total", {"reason": kind})
    return counted or 0.0


# --- draining ------------------------------------------------------------------------------------


async def test_a_drain_turns_readiness_false_refuses_new_ws_with_503_and_tells_live_sessions() -> None:
    async with (
        serving(GRAPH) as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.wait_for(lambda m: m.get("state") == "listening", "listening")
        server.begin_drain(60)
        notice = await client.wait_for(lambda m: m.get("state") == "draining", "the draining notice")
        assert notice == {"type": "status", "state": "draining", "deadline_s": 60}
        assert await _get(http, base / "readyz") == (503, {"ready": False, "reason": "draining"})
        assert (await _get(http, base / "livez"))[0] == 200
        _, load = await _get(http, base / "load")
        assert load["draining"] is True and 0 < load["drain_left_s"] <= 60
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(base / "ws")
        headers = refused.value.headers
        assert refused.value.status == 503 and headers is not None and headers["Retry-After"] == "1"
        await client.ws.send_bytes(bytes(640))  # the live conversation goes on
        await client.ws.send_str('{"type":"text","text":"still there?"}')
        assert await client.reply() == "heard 20 ms"
        drained = asyncio.create_task(server.drain())
        await client.ws.send_str('{"type":"stop"}')
        assert await client.closed() == 1000  # it ended by itself, before the deadline
        await asyncio.wait_for(drained, TIMEOUT)


# --- access --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "credentials", "expected"),
    [
        ("none", None, {"/livez": 200, "/readyz": 200, "/load": 200, "/health": 200}),
        ("api_key", None, {"/livez": 200, "/readyz": 200, "/load": 401, "/health": 200}),
        ("api_key", KEY, {"/livez": 200, "/readyz": 200, "/load": 200, "/health": 200}),
        ("api_key", "wrong-key-0123456789abcdef", {"/livez": 200, "/readyz": 200, "/load": 401}),
    ],
)
async def test_probes_are_open_and_load_is_protected_like_the_api(
    monkeypatch: pytest.MonkeyPatch, auth: str, credentials: str | None, expected: dict[str, int]
) -> None:
    monkeypatch.setenv("VOXGRAPH_API_KEYS", KEY)
    headers = {"Authorization": f"Bearer {credentials}"} if credentials else {}
    async with serving(GRAPH, f"server.auth={auth}") as (_, base), aiohttp.ClientSession() as http:
        for path, status in expected.items():
            async with http.get(base.with_path(path), headers=headers) as response:
                assert response.status == status, path
                body = await response.json()
            if status == 401:
                assert body == {"error": "invalid API key" if credentials else "credentials required"}
            else:
                assert body == OPEN_BODIES.get(path, body) and (path != "/load" or body["capacity"] == 3)
        async with http.get(base / "readyz", headers={"Origin": "https://evil.example"}) as probe:
            assert probe.status == 200  # open: a probe reveals only whether it is ready
        async with http.get(base / "load", headers={"Origin": "https://evil.example"}) as foreign:
            assert foreign.status == 403


def test_drain_timeout_is_a_server_key_of_0_to_3600_seconds() -> None:
    text = "server: {type: websocket}\nnodes:\n  mic: {type: websocket.input}\n"
    text += "  out: {type: websocket.output}\nedges: [mic -> out]\n"
    assert config.ServerSettings().drain_timeout == 300.0
    assert config.check_text(text, overrides=["server.drain_timeout=0"]) == []
    assert config.check_text(text, overrides=["server.drain_timeout=3600"]) == []
    for bad in ("-1", "3601"):
        [problem] = config.check_text(text, overrides=[f"server.drain_timeout={bad}"])
        assert "drain_timeout" in problem.message and "out of range" in problem.message
        assert "0..3600" in (problem.fix or "")
