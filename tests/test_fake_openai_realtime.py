"""The OpenAI Realtime fake is faithful: the official SDK's realtime client talks to it unchanged.

If ``AsyncOpenAI(...).realtime.connect`` can open a session, send every client event ``s2s.openai``
sends, and parse every server event the fake sends into the SDK's own types, then tests of the node
against the fake test the real protocol (the client half: see ../shared/reference/speech-to-speech.md).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import openai
import pytest
import websockets
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from tests.fakes.openai_realtime import FakeOpenAIRealtime

RATE = 24000
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def loud(ms: int) -> str:
    t = np.arange(RATE * ms // 1000) / RATE
    return base64.b64encode((np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype("<i2").tobytes()).decode()


def quiet(ms: int) -> str:
    return base64.b64encode(bytes(RATE * 2 * ms // 1000)).decode()


@asynccontextmanager
async def connected(fake: FakeOpenAIRealtime, key: str = "sk-test") -> AsyncIterator[AsyncRealtimeConnection]:
    client = openai.AsyncOpenAI(api_key=key, base_url=fake.base_url, max_retries=0)
    try:
        async with client.realtime.connect(model="gpt-realtime") as connection:
            yield connection
    finally:
        await client.close()


async def until(connection: AsyncRealtimeConnection, kind: str, timeout: float = 5.0) -> list[Any]:
    """Every event up to and including the first of ``kind``, parsed by the SDK."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1].type != kind:
            seen.append(await connection.recv())
    return seen


async def speak(connection: AsyncRealtimeConnection, speech_ms: int = 400, silence_ms: int = 600) -> None:
    for _ in range(speech_ms // 20):
        await connection.input_audio_buffer.append(audio=loud(20))
    for _ in range(silence_ms // 20):
        await connection.input_audio_buffer.append(audio=quiet(20))


async def test_session_created_first_and_update_merged() -> None:
    async with FakeOpenAIRealtime() as fake, connected(fake) as connection:
        created = await connection.recv()
        assert created.type == "session.created"
        await connection.session.update(
            session={"type": "realtime", "instructions": "Be terse.", "audio": {"output": {"voice": "marin"}}}
        )
        updated = await connection.recv()
        assert updated.type == "session.updated"
        assert updated.session.instructions == "Be terse."  # type: ignore[union-attr]
        assert fake.sessions[0].config["audio"]["output"]["voice"] == "marin"
        assert fake.sessions[0].config["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # kept
        typo: Any = {"type": "session.update", "session": {"type": "realtime", "instrucions": "x"}}
        await connection.send(typo)
        error = await connection.recv()
        assert error.type == "error" and error.error.param == "session.instrucions"
        headers = fake.sessions[0].headers
        assert headers["Authorization"] == "Bearer sk-test" and "OpenAI-Beta" not in headers
        assert fake.sessions[0].query == {"model": "gpt-realtime"}


async def test_a_spoken_turn_is_heard_transcribed_and_answered() -> None:
    async with FakeOpenAIRealtime(reply_ms=600, speed=20) as fake, connected(fake) as connection:
        await until(connection, "session.created")
        await speak(connection)
        events = await until(connection, "response.done")
        kinds = [e.type for e in events]
        for kind in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.output_audio_transcript.done",
        ):
            assert kind in kinds, kind
        started = events[kinds.index("input_audio_buffer.speech_started")]
        stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
        assert started.audio_start_ms == 0 and stopped.audio_end_ms == 400
        heard = events[kinds.index("conversation.item.input_audio_transcription.completed")]
        assert heard.transcript == "what is the weather in paris"
        deltas = [base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"]
        assert len({len(d) for d in deltas}) > 1 and sum(len(d) for d in deltas) == RATE * 2 * 600 // 1000
        text = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
        assert text == events[kinds.index("response.output_audio_transcript.done")].transcript
        assert events[-1].response.status == "completed"


async def test_manual_turns_and_protocol_errors_keep_the_socket_open() -> None:
    async with FakeOpenAIRealtime(reply_ms=200, speed=20) as fake, connected(fake) as connection:
        await until(connection, "session.created")
        await connection.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await until(connection, "session.updated")
        await connection.input_audio_buffer.append(audio=loud(40))
        await connection.input_audio_buffer.commit()
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "input_audio_buffer_commit_empty"
        await connection.response.cancel(event_id="c1")
        error = (await until(connection, "error"))[-1]
        assert error.error.code == "response_cancel_not_active" and error.error.event_id == "c1"
        await connection.input_audio_buffer.append(audio=loud(200))
        await connection.input_audio_buffer.commit()
        await connection.response.create()
        events = await until(connection, "response.done")
        assert "input_audio_buffer.speech_started" not in [e.type for e in events]  # no VAD
        assert events[-1].response.status == "completed"
        assert fake.sessions[0].types_received().count("input_audio_buffer.commit") == 2


async def test_a_tool_call_waits_for_its_output_and_response_create() -> None:
    arguments = '{"city": "Paris"}'
    fake = FakeOpenAIRealtime(reply_ms=200, speed=20, tool_arguments=arguments)
    async with fake, connected(fake) as connection:
        session = {"type": "realtime", "tools": TOOLS, "tool_choice": "auto"}
        await connection.session.update(session=session)  # type: ignore[arg-type]
        await until(connection, "session.updated")
        await speak(connection)
        events = await until(connection, "response.done")
        call = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert (call.name, call.arguments) == ("get_weather", arguments)
        assert events[-1].response.output[0].type == "function_call"
        await connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}
        )
        await connection.response.create()
        events = await until(connection, "response.done")
        said = next(e for e in events if e.type == "response.output_audio_transcript.done").transcript
        assert said.endswith('The tool said: {"temp_c": 21}')
        await connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": "call_unknown", "output": "{}"}
        )
        error = (await until(connection, "error"))[-1]
        assert error.error.param == "item.call_id"


async def test_speech_during_an_answer_cancels_it_and_truncate_is_checked() -> None:
    async with FakeOpenAIRealtime(reply_ms=3000, speed=2) as fake, connected(fake) as connection:
        await speak(connection)
        events = await until(connection, "response.output_audio.delta")
        item_id = events[-1].item_id
        await connection.input_audio_buffer.append(audio=loud(60))
        events = await until(connection, "response.done")
        assert events[-1].response.status == "cancelled"
        assert events[-1].response.status_details.reason == "turn_detected"
        await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=20)
        truncated = (await until(connection, "conversation.item.truncated"))[-1]
        assert truncated.audio_end_ms == 20
        await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=60_000)
        error = (await until(connection, "error"))[-1]
        assert error.error.param == "audio_end_ms"
        assert [t["audio_end_ms"] for t in fake.sessions[0].truncates] == [20, 60_000]


async def test_a_missing_key_is_refused_at_the_upgrade() -> None:
    async with FakeOpenAIRealtime() as fake:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connected(fake, key="sk-wrong"):
                pass
        assert refused.value.response.status_code == 401


async def test_a_bad_key_gets_an_error_event_and_close_1008() -> None:
    async with FakeOpenAIRealtime() as fake, connected(fake, key="sk-bad") as connection:
        events = await until(connection, "error")
        assert events[-1].error.code == "invalid_api_key"
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
            await asyncio.wait_for(connection.recv(), 5.0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_the_server_can_close_mid_session_with_a_code() -> None:
    fake = FakeOpenAIRealtime(reply_ms=100, speed=20, close_after_responses=1)
    async with fake, connected(fake) as connection:
        await speak(connection)
        await until(connection, "response.done")
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
            await asyncio.wait_for(connection.recv(), 5.0)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "internal error")
