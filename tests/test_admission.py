"""Admission by measured headroom: the pure decision, the meter on fake clocks, and a served graph.

The served test uses a ``Burner`` node whose work is CPU-heavy by declaration: it advances the fake
CPU clock the meter reads, so "the server is full" is a fact of the test, not of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import ClassVar, cast

import aiohttp
import pytest
from yarl import URL

from pipeline import config
from pipeline.capacity import LoadMeter, LoadSample, SessionLoad, Thresholds, decide, machine_cpu_times
from pipeline.frames import Frame, TextFrame
from pipeline.processor import Processor
from pipeline.testing import virtual_time
from transports.websocket.admission import session_load
from transports.websocket.server import VoiceServer
from transports.websocket.session import Session

TIMEOUT = 10.0
LIMITS = Thresholds(max_cpu=0.85, max_loop_lag=0.25, max_session_lag=2.0, window=10.0)


ONE = {"a": SessionLoad()}


def sample(
    cpu: float | None = None, lag: float = 0.0, machine: float | None = None, **sessions: SessionLoad
) -> LoadSample:
    return LoadSample(cpu=cpu, machine_cpu=machine, loop_lag=lag, window=10.0, sessions=sessions or ONE)


# --- the decision ----------------------------------------------------------------------------------


def test_a_quiet_server_admits() -> None:
    assert decide(sample(), LIMITS).admit
    assert decide(sample(0.2, 0.01, a=SessionLoad(backlog=0.1, turns=(1.0, 1.1))), LIMITS).admit


def test_cpu_over_too_short_a_span_is_a_burst_not_load() -> None:
    burst = LoadSample(cpu=0.99, machine_cpu=1.0, window=1.0, sessions=ONE)
    assert decide(burst, LIMITS).admit


def test_the_first_session_is_always_admitted() -> None:
    flat_out = LoadSample(cpu=0.99, machine_cpu=1.0, loop_lag=1.0, window=10.0, sessions={})
    assert decide(flat_out, LIMITS).admit


def test_other_programs_using_the_cores_count_too() -> None:
    decision = decide(sample(0.1, machine=0.95), LIMITS)
    assert decision.reason == "server at capacity: the machine's CPU 95% over the last 10 s (limit 85%)"
    refused = decide(sample(0.2, machine=0.7), LIMITS)  # 0.7 busy + 0.2 for one more session
    assert not refused.admit and "one more would need ~90%" in refused.reason


def test_cpu_over_the_limit_refuses_with_the_figure_and_the_window() -> None:
    decision = decide(sample(0.92), LIMITS)
    assert not decision.admit
    assert decision.reason == "server at capacity: CPU 92% over the last 10 s (limit 85%)"


def test_one_more_session_of_the_same_cost_must_also_fit() -> None:
    one = SessionLoad()
    assert decide(sample(0.3, a=one), LIMITS).admit  # 0.3 -> ~0.6 with a second
    refused = decide(sample(0.5, a=one), LIMITS)  # 0.5 -> ~1.0
    assert not refused.admit
    assert "1 conversation; one more would need ~100%" in refused.reason
    assert decide(sample(0.5, a=one, b=one), LIMITS).admit  # 0.5 over two -> ~0.75 with a third


def test_a_late_event_loop_refuses() -> None:
    decision = decide(sample(0.1, lag=0.4), LIMITS)
    assert not decision.admit and "event loop ran 400 ms late" in decision.reason


def test_a_session_behind_its_live_audio_refuses() -> None:
    decision = decide(sample(0.1, a=SessionLoad(backlog=3.5)), LIMITS)
    assert not decision.admit
    assert decision.reason == "server at capacity: a conversation is 3.5 s behind its live audio"


def test_a_reply_already_late_counts_before_its_turn_completes() -> None:
    queued = SessionLoad(turns=(1.0, 1.2), waiting=4.5)  # waiting behind other sessions' replies
    decision = decide(sample(0.1, a=queued), LIMITS)
    assert not decision.admit and "3.5 s behind its first turns' latency" in decision.reason
    first = SessionLoad(waiting=4.0)  # no turn yet: compared with a typical reply
    assert decide(sample(0.1, a=first), LIMITS).reason.endswith("behind the latency a reply should have")
    assert decide(sample(0.1, a=SessionLoad(waiting=2.0)), LIMITS).admit


def test_a_session_whose_turns_slowed_down_refuses_until_they_are_fast_again() -> None:
    slowed = SessionLoad(turns=(1.2, 1.0, 1.4, 2.0, 4.1))  # 4.1 s against a best first turn of 1.0 s
    assert slowed.turn_growth == pytest.approx(3.1)
    decision = decide(sample(0.1, a=slowed), LIMITS)
    assert not decision.admit and "3.1 s behind its first turns' latency" in decision.reason
    recovered = SessionLoad(turns=(*slowed.turns, 1.3))
    assert decide(sample(0.1, a=recovered), LIMITS).admit


def test_one_turn_is_no_trend() -> None:
    assert SessionLoad(turns=(9.0,)).turn_growth == 0.0


def test_the_sample_reports_its_figures_for_health() -> None:
    figures = sample(0.5, 0.012, a=SessionLoad(backlog=0.25), b=SessionLoad(turns=(1.0, 4.0))).as_dict()
    assert figures == {
        "cpu": 0.5,
        "machine_cpu": None,
        "window_s": 10.0,
        "loop_lag_ms": 12.0,
        "session_lag_s": [3.0, 0.25],
    }


# --- the meter -------------------------------------------------------------------------------------


class Clocks:
    """Wall and CPU clocks the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.machine: tuple[float, float] | None = None  # (busy, total), like /proc/stat

    def meter(self, window: float = 10.0, cores: int = 2) -> LoadMeter:
        return LoadMeter(
            window,
            cores=cores,
            cpu_clock=lambda: self.cpu,
            wall_clock=lambda: self.wall,
            machine_clock=lambda: self.machine,
        )


def test_cpu_is_process_time_over_wall_time_over_cores() -> None:
    clocks = Clocks()
    meter = clocks.meter()
    assert meter.sample().cpu is None  # one reading is no rate
    meter.tick()
    for _ in range(4):
        clocks.wall += 1.0
        clocks.cpu += 1.5  # one and a half of the two cores
        meter.tick()
    reading = meter.sample()
    assert reading.cpu == pytest.approx(0.75) and reading.window == pytest.approx(4.0)
    assert reading.machine_cpu is None  # not measured here


def test_machine_cpu_is_busy_over_total_time_of_every_core() -> None:
    clocks = Clocks()
    meter = clocks.meter()
    clocks.machine = (100.0, 1000.0)
    meter.tick()
    clocks.wall, clocks.machine = 1.0, (280.0, 1200.0)  # 180 of 200 busy
    meter.tick()
    assert meter.sample().machine_cpu == pytest.approx(0.9)


def test_the_real_machine_clock_reads_proc_stat() -> None:
    times = machine_cpu_times()
    if times is not None:  # Linux
        busy, total = times
        assert 0 <= busy <= total


def test_the_machine_clock_counts_only_the_cores_the_process_may_run_on() -> None:
    cores = sorted(os.sched_getaffinity(0))
    every, first = machine_cpu_times(cores), machine_cpu_times(cores[:1])
    assert every is not None and first is not None  # this suite runs on Linux
    assert first[1] < every[1] or len(cores) == 1  # one core's jiffies are a part of all of them
    assert machine_cpu_times([max(cores) + 1000]) is None  # a core that is not there: not measured


def test_the_window_slides_so_load_that_stopped_is_forgotten() -> None:
    clocks = Clocks()
    meter = clocks.meter(window=10.0)
    meter.tick()
    clocks.wall, clocks.cpu = 5.0, 10.0  # both cores flat out for 5 s
    meter.tick()
    assert meter.sample().cpu == pytest.approx(1.0)
    for _ in range(20):  # then 20 s of nothing
        clocks.wall += 1.0
        meter.tick()
    reading = meter.sample()
    assert reading.cpu == pytest.approx(0.0) and reading.window == pytest.approx(10.0)


def test_loop_lag_is_the_worst_in_the_window() -> None:
    clocks = Clocks()
    meter = clocks.meter(window=10.0)
    meter.tick(0.3)
    clocks.wall = 4.0
    meter.tick(0.01)
    assert meter.sample().loop_lag == pytest.approx(0.3)
    clocks.wall = 12.0
    meter.tick(0.02)
    assert meter.sample().loop_lag == pytest.approx(0.02)


def test_ticks_at_the_same_instant_keep_one_reading() -> None:
    clocks = Clocks()
    meter = clocks.meter()
    for _ in range(1000):
        meter.tick()
    assert len(meter._readings) == 1


@virtual_time
async def test_run_ticks_until_cancelled() -> None:
    clocks = Clocks()
    loop = asyncio.get_running_loop()
    meter = LoadMeter(10.0, cores=1, cpu_clock=lambda: clocks.cpu, wall_clock=loop.time)  # virtual time
    task = asyncio.create_task(meter.run(0.5))
    await asyncio.sleep(2.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert meter.sample().cpu == 0.0 and meter.sample().loop_lag == 0.0


# --- a served graph --------------------------------------------------------------------------------

CLOCKS = Clocks()


class Burner(Processor):
    """CPU-heavy by declaration: ``burn`` costs both cores for ten seconds of the fake clocks."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        if frame.text == "burn":
            CLOCKS.cpu += 2 * 9.5
            CLOCKS.wall += 10.0
        await self.push(frame)


GRAPH = """
name: burner
server: {type: websocket, port: 0, max_sessions: 4}
settings: {end_timeout: 3.0, cancel_timeout: 2.0}
nodes:
  mic: {type: websocket.input}
  burner: {type: "tests.test_admission:Burner"}
  out: {type: websocket.output, realtime: false}
edges:
  - mic -> burner -> out
"""


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[VoiceServer, URL]]:
    compiled, problems = config.compile_text(GRAPH, "<test>", [])
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=CLOCKS.meter())
    await server.start()
    try:
        yield server, URL(server.url)
    finally:
        await asyncio.wait_for(server.stop(), 30)


async def health(http: aiohttp.ClientSession, base: URL) -> dict[str, object]:
    async with http.get(base / "health") as response:
        return dict(await response.json())


async def health_until(http: aiohttp.ClientSession, base: URL, admitting: bool) -> dict[str, object]:
    async def poll() -> dict[str, object]:
        while (report := await health(http, base))["admitting"] is not admitting:
            await asyncio.sleep(0.05)
        return report

    return await asyncio.wait_for(poll(), TIMEOUT)


async def first_message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, object]:
    message = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
    return dict(message)


async def test_a_full_server_refuses_with_the_reason_and_admits_again_when_load_drops() -> None:
    async with serving() as (server, base), aiohttp.ClientSession() as http:
        report = await health(http, base)
        assert report["admitting"] is True and "load" in report
        async with http.ws_connect(base / "ws") as first:
            assert (await first_message(first))["type"] == "session"
            await first.send_json({"type": "text", "text": "burn"})
            report = await health_until(http, base, admitting=False)
            assert "CPU 95%" in str(report["refusing"])
            async with http.ws_connect(base / "ws") as refused:
                error = await first_message(refused)
                assert error["type"] == "error"
                assert str(error["message"]).startswith("server at capacity: CPU 95% over the last 10 s")
                await asyncio.wait_for(refused.receive(), TIMEOUT)
                assert refused.close_code == 1013
            CLOCKS.wall += 20.0  # the burn leaves the window
            await health_until(http, base, admitting=True)
            async with http.ws_connect(base / "ws") as again:
                assert (await first_message(again))["type"] == "session"
                assert len(server.sessions) == 2


def test_the_thresholds_are_server_keys_checked_with_the_config() -> None:
    text = (
        "server: {type: websocket, max_cpu: 1.5, max_loop_lag: 0, load_window: 5}\n"
        "nodes:\n  mic: {type: websocket.input}\n  out: {type: websocket.output}\nedges: [mic -> out]\n"
    )
    shown = [p.message for p in config.check_text(text, "served.yaml")]
    assert shown == ["server max_cpu 1.5 is out of range", "server max_loop_lag 0 is out of range"]
    compiled, _ = config.compile_text(text.replace("1.5", "0.7").replace("lag: 0", "lag: 0.5"), "ok.yaml")
    assert compiled is not None and compiled.server is not None
    server = VoiceServer(compiled)
    assert server.admission.limits == Thresholds(
        max_cpu=0.7, max_loop_lag=0.5, max_session_lag=2.0, window=5.0
    )


def test_a_sessions_lag_comes_from_its_waiting_audio_turns_and_the_reply_it_awaits() -> None:
    latencies = SimpleNamespace(samples={"voice_to_voice": [1.0, 1.4]})
    turns = SimpleNamespace(_timings=latencies, reply_wait=lambda: 3.5)
    other = SimpleNamespace(_timings=SimpleNamespace(samples={}))
    inbound = SimpleNamespace(audio_bytes=16000)  # half a second of 16 kHz s16le
    graph = SimpleNamespace(processors={"t": turns, "o": other})
    session = SimpleNamespace(connection=SimpleNamespace(inbound=inbound), graph=graph)
    load = session_load(cast(Session, session))
    assert load == SessionLoad(backlog=0.5, turns=(1.0, 1.4), waiting=3.5)
    assert load.lag == pytest.approx(2.5)  # waiting 3.5 s where its best turn took 1.0 s
