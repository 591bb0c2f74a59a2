"""The Gemini Live fake is faithful: ``google-genai``'s live client connects to it over TLS, sends its
real setup and input messages, and parses everything the fake sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from google import genai
from google.genai import errors, types

from tests.fakes.gemini_live import BAD_KEY_REASON, FakeFunctionCall, FakeGeminiLive, LiveTurn, pick

TIMEOUT = 10.0
MODEL = "gemini-live-2.5-flash-preview"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Weather for a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
)


def speech(ms: int, loud: bool = True, rate: int = 16_000) -> bytes:
    """``ms`` of a loud tone (the fake's VAD hears speech) or of silence, s16le mono."""
    t = np.arange(rate * ms // 1000) / rate
    amplitude = 8000 if loud else 0
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


def client(fake: FakeGeminiLive, key: str | None = None) -> genai.Client:
    http = types.HttpOptions(base_url=fake.base_url, api_version="v1beta")
    return genai.Client(api_key=key or fake.api_key, http_options=http)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGeminiLive]:
    async with FakeGeminiLive() as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        yield server


async def say(session: Any, ms: int = 300, silence_ms: int = 400) -> None:
    """Stream a spoken turn in 20 ms chunks the way a microphone would (without its pace)."""
    for pcm in [speech(20)] * (ms // 20) + [speech(20, loud=False)] * (silence_ms // 20):
        await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=16000"))


async def one_turn(session: Any) -> list[types.LiveServerMessage]:
    """The messages of one model turn (``receive()`` stops after ``turnComplete``)."""

    async def collect() -> list[types.LiveServerMessage]:
        return [message async for message in session.receive()]

    return await asyncio.wait_for(collect(), TIMEOUT)


async def test_a_spoken_turn_with_transcripts_and_audio(fake: FakeGeminiLive) -> None:
    fake.turns = [LiveTurn(heard="What's up?", reply="Not much at all.")]
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction="You are terse.",
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
    )
    async with client(fake).aio.live.connect(model=MODEL, config=config) as session:
        await say(session)
        messages = await one_turn(session)
        after = await one_turn_start(session)
    [sent] = fake.sessions
    assert sent.version == "v1beta" and sent.headers["x-goog-api-key"] == fake.api_key
    assert sent.setup["model"] == f"models/{MODEL}"
    assert pick(pick(sent.setup, "generationConfig"), "responseModalities") == ["AUDIO"]
    assert sent.input_rates == {16_000} and sent.audio_in_ms == pytest.approx(700)
    contents = [m.server_content for m in messages if m.server_content is not None]
    heard = "".join(c.input_transcription.text or "" for c in contents if c.input_transcription)
    said = "".join(c.output_transcription.text or "" for c in contents if c.output_transcription)
    audio = b"".join(
        part.inline_data.data or b""
        for c in contents
        if c.model_turn
        for part in c.model_turn.parts or []
        if part.inline_data
    )
    mimes = {
        part.inline_data.mime_type
        for c in contents
        if c.model_turn
        for part in c.model_turn.parts or []
        if part.inline_data
    }
    assert heard == "What's up?" and said == "Not much at all."
    assert len(audio) == 2 * round(sent.audio_out_ms * 24) and mimes == {"audio/pcm;rate=24000"}
    assert [c.generation_complete for c in contents][-2:] == [True, None]
    assert contents[-1].turn_complete is True
    assert after.usage_metadata is not None and after.usage_metadata.total_token_count == 24


def spoken(messages: list[types.LiveServerMessage]) -> str:
    """The output transcription of ``messages``."""
    contents = [m.server_content for m in messages if m.server_content]
    return "".join(c.output_transcription.text or "" for c in contents if c.output_transcription)


async def one_turn_start(session: Any) -> types.LiveServerMessage:
    """The first message of the next ``receive()``."""

    async def first() -> types.LiveServerMessage:
        async for message in session.receive():
            first: types.LiveServerMessage = message
            return first
        raise AssertionError("receive() ended empty")

    return await asyncio.wait_for(first(), TIMEOUT)


async def test_tool_call_waits_for_the_response_with_its_id(fake: FakeGeminiLive) -> None:
    call = FakeFunctionCall("get_weather", {"city": "Paris"})
    fake.turns = [LiveTurn(heard="Weather in Paris?", reply="Sunny.", calls=[call])]
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO], tools=[types.Tool(function_declarations=[WEATHER])]
    )
    async with client(fake).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_realtime_input(text="Weather in Paris?")
        calls: list[types.FunctionCall] = []
        async for message in session.receive():
            if message.tool_call is not None:
                calls += message.tool_call.function_calls or []
                break
        [function_call] = calls
        assert (function_call.id, function_call.name, function_call.args) == (
            "function-call-1",
            "get_weather",
            {"city": "Paris"},
        )
        response = types.FunctionResponse(id=function_call.id, name="get_weather", response={"temp_c": 21})
        await session.send_tool_response(function_responses=[response])
        rest = await one_turn(session)
    [sent] = fake.sessions
    declared = pick(sent.setup, "tools")[0]
    assert pick(declared, "functionDeclarations")[0]["parameters_json_schema"]["type"] == "object"
    assert sent.tool_responses == [
        {"id": "function-call-1", "name": "get_weather", "response": {"temp_c": 21}}
    ]
    assert spoken(rest) == "Sunny."


async def test_barge_in_interrupts_and_a_pending_call_is_cancelled(fake: FakeGeminiLive) -> None:
    fake.turns = [
        LiveTurn(heard="Tell me a story.", reply="Once upon a time " * 20),
        LiveTurn(heard="Look it up.", reply="Done.", calls=[FakeFunctionCall("get_weather")]),
    ]
    fake.chunk_delay = 0.01
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO], tools=[types.Tool(function_declarations=[WEATHER])]
    )
    async with client(fake).aio.live.connect(model=MODEL, config=config) as session:
        await say(session)
        [sent] = fake.sessions
        await fake.wait_until(lambda: sent.audio_out_ms > 200, TIMEOUT)
        await say(session, ms=100, silence_ms=0)  # speech over the reply
        messages = await one_turn(session)
        assert messages[-2].server_content and messages[-2].server_content.interrupted is True
        assert not any(m.server_content and m.server_content.generation_complete for m in messages)
        await say(session, ms=0, silence_ms=400)  # the interrupting turn ends: it gets a tool call
        await fake.wait_until(lambda: "toolCall" in sent.kinds_sent(), TIMEOUT)
        await say(session, ms=100, silence_ms=0)  # the user talks over the pending call
        messages = await one_turn(session)
    kinds = [m.tool_call_cancellation.ids for m in messages if m.tool_call_cancellation]
    assert kinds == [["function-call-1"]] and sent.cancelled_calls == ["function-call-1"]
    assert sent.interrupted == 2


async def test_manual_activity_marks_the_turn(fake: FakeGeminiLive) -> None:
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
        ),
    )
    async with client(fake).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await say(session, ms=100, silence_ms=600)  # silence alone does not end a manual turn
        assert fake.sessions[0].user_turns == []
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        messages = await one_turn(session)
    assert messages[-1].server_content and messages[-1].server_content.turn_complete


async def test_a_wrong_key_is_closed_1008_after_setup(fake: FakeGeminiLive) -> None:
    with pytest.raises(errors.APIError) as raised:
        async with client(fake, key="AIza-wrong").aio.live.connect(model=MODEL):
            pass
    assert raised.value.code == 1008 and raised.value.details == BAD_KEY_REASON


async def test_a_server_close_and_go_away_reach_the_client(fake: FakeGeminiLive) -> None:
    async with client(fake).aio.live.connect(model=MODEL) as session:
        await fake.go_away("5s")
        first = await one_turn_start(session)
        assert first.go_away is not None and first.go_away.time_left == "5s"
        await fake.close_sessions(1011, "Internal error encountered.")
        with pytest.raises(errors.APIError) as raised:
            await one_turn(session)
    assert raised.value.code == 1011 and raised.value.details == "Internal error encountered."


async def test_an_unknown_tool_response_id_closes_1007(fake: FakeGeminiLive) -> None:
    async with client(fake).aio.live.connect(model=MODEL) as session:
        response = types.FunctionResponse(id="nope", name="x", response={})
        await session.send_tool_response(function_responses=[response])
        with pytest.raises(errors.APIError) as raised:
            await one_turn(session)
    assert raised.value.code == 1007 and "unknown id 'nope'" in str(raised.value.details)


async def test_a_session_resumes_from_a_handle(fake: FakeGeminiLive) -> None:
    fake.turns = [LiveTurn(heard="One.", reply="First."), LiveTurn(heard="Two.", reply="Second.")]
    config = types.LiveConnectConfig(session_resumption=types.SessionResumptionConfig())
    async with client(fake).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_realtime_input(text="one")
        await one_turn(session)
        after = [await one_turn_start(session), await one_turn_start(session)]
    [update] = [m.session_resumption_update for m in after if m.session_resumption_update]
    assert update.resumable is True and update.new_handle == "handle-1"
    config = types.LiveConnectConfig(
        session_resumption=types.SessionResumptionConfig(handle=update.new_handle)
    )
    async with client(fake).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_realtime_input(text="two")
        messages = await one_turn(session)
    assert spoken(messages) == "Second."
    assert fake.sessions[1].resumed_from == "handle-1"
    with pytest.raises(errors.APIError) as raised:
        config = types.LiveConnectConfig(session_resumption=types.SessionResumptionConfig(handle="nope"))
        async with client(fake).aio.live.connect(model=MODEL, config=config):
            pass
    assert raised.value.code == 1007
