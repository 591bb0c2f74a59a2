"""The AssemblyAI fake is faithful: the official SDK (``AsyncStreamingClient``) talks to it unchanged.

If the SDK can connect, stream, parse every message and see errors the way it does against the real
service, then tests of ``stt.assemblyai`` against the fake test the real protocol.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from assemblyai.streaming.v3 import (
    AsyncStreamingClient,
    StreamingClientOptions,
    StreamingEvents,
    StreamingParameters,
    StreamingSessionParameters,
)

from tests.fakes.assemblyai import FakeAssemblyAI

RATE = 16000


def tone(ms: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(RATE * ms // 1000) / RATE
    return (np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype("<i2").tobytes()


def chunks(pcm: bytes, ms: int = 50) -> list[bytes]:
    size = RATE * 2 * ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


class Recorder:
    """Every event the SDK dispatches, in order, awaitable."""

    def __init__(self, client: AsyncStreamingClient) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        for kind in StreamingEvents:
            client.on(kind, lambda _client, event, kind=kind: self._add(kind.name, event))

    def _add(self, kind: str, event: Any) -> None:
        self.events.append((kind, event))
        self._changed.set()

    def of(self, kind: str) -> list[Any]:
        return [event for name, event in self.events if name == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        async def enough() -> list[Any]:
            while len(self.of(kind)) < count:
                self._changed.clear()
                await self._changed.wait()
            return self.of(kind)

        return await asyncio.wait_for(enough(), timeout)


def client_for(fake: FakeAssemblyAI, key: str = "test-key", **options: Any) -> AsyncStreamingClient:
    return AsyncStreamingClient(
        StreamingClientOptions(api_host=fake.ws_url, max_connection_retries=0, **{"api_key": key, **options})
    )


PARAMS = StreamingParameters(
    sample_rate=RATE,
    encoding="pcm_s16le",
    speech_model="u3-rt-pro",
    format_turns=True,
    end_of_turn_confidence_threshold=0.7,
    min_turn_silence=160,
    max_turn_silence=400,
    keyterms_prompt=["Voxgraph", "ice cream"],
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAssemblyAI]:
    async with FakeAssemblyAI(words=["hello", "world", "again"], ms_per_word=200) as server:
        yield server


async def test_sdk_streams_and_receives_begin_turns_and_termination(fake: FakeAssemblyAI) -> None:
    client = client_for(fake)
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    (begin,) = await seen.wait_for("Begin")
    for chunk in chunks(tone(400) + bytes(RATE * 2 // 2)):  # 400 ms of tone, 500 ms of silence
        await client.stream(chunk)
    await seen.wait_for("Turn", count=4)  # two partials, the final and its formatted twin
    await asyncio.wait_for(client.disconnect(terminate=True), 10)

    assert begin.id == fake.sessions[0].id and begin.configuration.model == "u3-rt-pro"
    assert [e.timestamp for e in seen.of("SpeechStarted")] == [0]
    turns = seen.of("Turn")
    assert [(t.transcript, t.end_of_turn, t.turn_is_formatted) for t in turns] == [
        ("hello", False, False),
        ("hello world", False, False),
        ("hello world", True, False),
        ("Hello world.", True, True),
    ]
    assert {t.turn_order for t in turns} == {0}
    assert [(w.text, w.start, w.end) for w in turns[-1].words] == [("Hello", 0, 200), ("world.", 200, 400)]
    assert turns[-1].words[-1].word_is_final and not turns[1].words[-1].word_is_final
    (termination,) = seen.of("Termination")
    assert termination.audio_duration_seconds == 1
    assert not seen.of("Error")
    session = fake.sessions[0]
    assert session.terminated and session.types_received() == ["Terminate"]


async def test_sdk_sends_the_query_and_headers_the_fake_checks(fake: FakeAssemblyAI) -> None:
    client = client_for(fake)
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    await seen.wait_for("Begin")
    await asyncio.wait_for(client.disconnect(terminate=True), 10)

    session = fake.sessions[0]
    assert session.query == {
        "sample_rate": "16000",
        "encoding": "pcm_s16le",
        "speech_model": "u3-rt-pro",
        "format_turns": "True",
        "end_of_turn_confidence_threshold": "0.7",
        "min_turn_silence": "160",
        "max_turn_silence": "400",
        "keyterms_prompt": json.dumps(["Voxgraph", "ice cream"]),
    }
    assert session.config["format_turns"] is True and session.config["keyterms_prompt"] == [
        "Voxgraph",
        "ice cream",
    ]
    assert session.headers["Authorization"] == "test-key"
    assert session.headers["AssemblyAI-Version"] == "2025-05-12"
    assert session.headers["User-Agent"].startswith("AssemblyAI/1.0 (sdk=Python/")


@pytest.mark.parametrize("failure, code", [("close", 1008), ("http", 401)])
async def test_a_bad_key_reaches_the_sdks_error_handler(failure: str, code: int) -> None:
    async with FakeAssemblyAI(auth_failure=failure) as fake:  # type: ignore[arg-type]
        client = client_for(fake, key="wrong-key")
        seen = Recorder(client)
        await asyncio.wait_for(client.connect(PARAMS), 5)  # does not raise: errors go to handlers
        (error,) = await seen.wait_for("Error")
        await asyncio.wait_for(client.disconnect(), 5)
    assert error.code == code
    assert not seen.of("Begin") and not fake.sessions
    assert fake.rejected[0]["Authorization"] == "wrong-key"


async def test_force_endpoint_and_update_configuration(fake: FakeAssemblyAI) -> None:
    client = client_for(fake)
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    await seen.wait_for("Begin")
    await client.set_params(StreamingSessionParameters(max_turn_silence=5000))
    for chunk in chunks(tone(400)):
        await client.stream(chunk)
    await seen.wait_for("Turn", count=2)
    await client.force_endpoint()  # no silence follows: only ForceEndpoint can end this turn
    turns = await seen.wait_for("Turn", count=4)
    await asyncio.wait_for(client.disconnect(terminate=True), 10)

    assert turns[-1].end_of_turn and turns[-1].transcript == "Hello world."
    session = fake.sessions[0]
    assert session.updates == [{"max_turn_silence": 5000}]
    assert session.types_received() == ["UpdateConfiguration", "ForceEndpoint", "Terminate"]


async def test_an_expired_session_sends_error_3008_then_closes(fake: FakeAssemblyAI) -> None:
    fake.expire_after_ms = 300
    client = client_for(fake)
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    for chunk in chunks(tone(400)):
        await client.stream(chunk)
    (error,) = await seen.wait_for("Error")
    await asyncio.wait_for(client.disconnect(), 5)
    assert error.code == 3008 and "Session Expired" in str(error)
    assert fake.sessions[0].close_code == 3008 and not fake.finals
    assert fake.script.position == 0  # the unfinished turn's words were never heard


async def test_a_too_short_chunk_is_a_3007_error(fake: FakeAssemblyAI) -> None:
    client = client_for(fake)
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    await client.stream(tone(20))
    (error,) = await seen.wait_for("Error")
    await asyncio.wait_for(client.disconnect(), 5)
    assert error.code == 3007


async def test_temporary_token_from_v3_token_connects_once(fake: FakeAssemblyAI) -> None:
    async with httpx.AsyncClient(base_url=fake.http_url, timeout=5) as http:
        refused = await http.get(
            "/v3/token", params={"expires_in_seconds": 60}, headers={"Authorization": "no"}
        )
        response = await http.get(
            "/v3/token", params={"expires_in_seconds": 60}, headers={"Authorization": "test-key"}
        )
    assert refused.status_code == 401
    token = response.json()["token"]
    client = AsyncStreamingClient(StreamingClientOptions(token=token, api_host=fake.ws_url))
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    await seen.wait_for("Begin")
    await asyncio.wait_for(client.disconnect(terminate=True), 10)
    assert fake.sessions[0].headers["Authorization"] == token  # the SDK sends a token as the header

    again = AsyncStreamingClient(StreamingClientOptions(token=token, api_host=fake.ws_url))
    seen_again = Recorder(again)
    await asyncio.wait_for(again.connect(PARAMS), 5)
    (error,) = await seen_again.wait_for("Error")
    await asyncio.wait_for(again.disconnect(), 5)
    assert error.code == 1008  # a temporary token is single-use


async def test_malformed_json_is_skipped_by_the_sdk(fake: FakeAssemblyAI) -> None:
    fake.malformed = "json"
    client = client_for(fake)
    seen = Recorder(client)
    await asyncio.wait_for(client.connect(PARAMS), 5)
    for chunk in chunks(tone(400) + bytes(RATE)):
        await client.stream(chunk)
    turns = await seen.wait_for("Turn", count=4)
    await asyncio.wait_for(client.disconnect(terminate=True), 10)
    assert turns[-1].transcript == "Hello world."
