"""Secret params never leave a node in error text: start failures, STT reports, their logs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.frames import ErrorFrame, Frame
from pipeline.graph import Graph, GraphFailedError
from pipeline.params import param
from pipeline.processor import Processor, Runtime, Source
from processors.stt.assemblyai import AssemblyAISTT, _Session

KEY = "sk-live-0123456789abcdef"
TIMEOUT = 10.0


@dataclass(slots=True, kw_only=True)
class KeyedParams:
    api_key: str = param(doc="a provider key", secret=True)


class EchoesKeyOnStart(Source):
    """Fails to start the way an SDK often does: the error quotes the request, key included."""

    Params = KeyedParams
    params: KeyedParams

    async def on_start(self) -> None:
        raise RuntimeError(f"401 Unauthorized: Authorization: Bearer {self.params.api_key}")


class Reports(Runtime):
    """Keeps the frames that leave the node (what a session forwards to the browser)."""

    def __init__(self) -> None:
        self.left: list[Frame] = []
        self.arrived = asyncio.Event()

    def frame_left(self, processor: Processor, frame: Frame, direction: Any) -> None:
        self.left.append(frame)
        self.arrived.set()


def test_hide_secrets_masks_every_secret_param() -> None:
    node = EchoesKeyOnStart(name="n", api_key=KEY)
    assert node.hide_secrets(f"key={KEY}; again {KEY}") == "key=***; again ***"


async def test_a_start_failure_quoting_the_key_does_not_put_it_in_the_graph_error() -> None:
    graph = Graph({"n": EchoesKeyOnStart(name="n", api_key=KEY)}, [])
    with pytest.raises(GraphFailedError) as failure:
        await asyncio.wait_for(graph.run(), TIMEOUT)
    assert KEY not in str(failure.value)
    assert "n: RuntimeError: 401 Unauthorized: Authorization: Bearer ***" in str(failure.value)


def test_a_streaming_stt_report_hides_the_key(caplog: pytest.LogCaptureFixture) -> None:
    stt = AssemblyAISTT(name="stt", api_key=KEY)
    runtime = Reports()
    stt._runtime = runtime
    with caplog.at_level(logging.DEBUG):
        stt._report(f"the server said: bad token {KEY}")
    [report] = runtime.left
    assert isinstance(report, ErrorFrame) and report.message == "the server said: bad token ***"
    assert KEY not in caplog.text and "bad token ***" in caplog.text


async def test_an_assemblyai_event_that_fails_with_the_key_is_reported_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stt = AssemblyAISTT(name="stt", api_key=KEY)
    runtime = Reports()
    stt._runtime = runtime

    async def failing_turn(session: Any, event: Any) -> None:
        raise ValueError(f"cannot parse {{'token': '{KEY}'}}")

    stt._turn = failing_turn  # type: ignore[method-assign]
    session = _Session(client=None)
    receiving = asyncio.create_task(stt.receive(session))
    try:
        with caplog.at_level(logging.DEBUG):
            await session.events.put(object())
            await asyncio.wait_for(runtime.arrived.wait(), TIMEOUT)
            await session.events.put(None)  # Termination: the session ends as asked
            assert await asyncio.wait_for(receiving, TIMEOUT) is None  # a bad event did not end it
    finally:
        receiving.cancel()
    [report] = runtime.left
    assert isinstance(report, ErrorFrame) and "ValueError" in report.message and KEY not in report.message
    assert "***" in report.message
    assert KEY not in caplog.text and "Traceback" in caplog.text  # the trace is logged, masked
