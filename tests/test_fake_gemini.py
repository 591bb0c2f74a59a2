"""The Gemini fake is faithful: ``google-genai``'s async client parses everything it sends.

Only the async client is used: the sync one would block the loop that serves the fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from google import genai
from google.genai import errors, types

from tests.fakes.gemini import (
    FakeFunctionCall,
    FakeGemini,
    Fault,
    contents_text,
    function_responses,
    pick,
    when_asked,
)

CONTENTS: Any = [
    types.Content(role="user", parts=[types.Part(text="Hi!")]),
    types.Content(role="model", parts=[types.Part(text="Hello.")]),
    types.Content(role="user", parts=[types.Part(text="What's the weather in Paris?")]),
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


def make_client(fake: FakeGemini, api_key: str | None = None, **options: Any) -> genai.Client:
    http = types.HttpOptions(
        base_url=fake.base_url, retry_options=types.HttpRetryOptions(attempts=1), **options
    )
    return genai.Client(api_key=api_key or fake.api_key, http_options=http)


async def drain(client: genai.Client, contents: Any) -> list[types.GenerateContentResponse]:
    """Every response of a stream. The request is sent on the first iteration, not by the call."""
    stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents=contents)
    return [response async for response in stream]


@pytest.fixture
async def client(fake: FakeGemini) -> AsyncIterator[genai.Client]:
    sdk = make_client(fake)
    yield sdk
    await sdk.aio.aclose()


async def test_stream_with_system_instruction(fake: FakeGemini, client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        system_instruction="Be brief.", temperature=0.2, max_output_tokens=64
    )
    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=CONTENTS, config=config
    )
    responses = [response async for response in stream]

    assert len(responses) > 1
    assert "".join(r.text or "" for r in responses) == fake.reply
    assert (responses[-1].candidates or [])[0].finish_reason == types.FinishReason.STOP
    usage = responses[-1].usage_metadata
    assert (
        usage is not None and usage.candidates_token_count == fake.requests[0].usage["candidatesTokenCount"]
    )
    request = fake.requests[0]
    assert request.path == "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert request.headers["x-goog-api-key"] == fake.api_key
    assert contents_text(pick(request.body, "systemInstruction")) == "Be brief."
    assert [c["role"] for c in request.body["contents"]] == ["user", "model", "user"]
    assert pick(request.body, "generationConfig") == {"temperature": 0.2, "maxOutputTokens": 64}


async def test_function_call(fake: FakeGemini, client: genai.Client) -> None:
    fake.reply = ""
    fake.function_calls = [FakeFunctionCall("get_weather", {"city": "Paris"})]
    declaration = types.FunctionDeclaration(
        name="get_weather",
        description="Current weather in a city.",
        parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[declaration])])
    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=CONTENTS, config=config
    )
    calls = [call for response in [r async for r in stream] for call in response.function_calls or []]

    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"})]
    (tool,) = fake.requests[0].body["tools"]
    assert pick(tool, "functionDeclarations")[0]["name"] == "get_weather"


WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather in a city.",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
)


async def test_parallel_calls_and_the_follow_up_with_the_models_own_parts(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.require_signatures = True
    fake.function_calls = when_asked(
        FakeFunctionCall("get_weather", {"city": "Paris"}, thought_signature="c2lnLTE="),
        FakeFunctionCall("get_weather", {"city": "Rome"}, call_id="fc-2"),
    )
    fake.reply = lambda body: f"{len(function_responses(body))} answers" if function_responses(body) else ""
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    question = types.Content(role="user", parts=[types.Part(text="Weather in Paris and Rome?")])
    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=[question], config=config
    )
    responses = [r async for r in stream]
    calls = [c for r in responses for c in r.function_calls or []]
    assert [(c.id, c.name, c.args) for c in calls] == [
        (None, "get_weather", {"city": "Paris"}),
        ("fc-2", "get_weather", {"city": "Rome"}),
    ]
    # Both calls came in one event; its parts are what the follow-up echoes (the signature with them).
    (event,) = [r for r in responses if r.function_calls]
    own_parts = (event.candidates or [])[0].content.parts  # type: ignore[union-attr]
    assert own_parts is not None and own_parts[0].thought_signature == b"sig-1"
    answers = types.Content(
        role="user",
        parts=[
            types.Part.from_function_response(name="get_weather", response={"result": {"temp_c": 21}}),
            types.Part(
                function_response=types.FunctionResponse(
                    id="fc-2", name="get_weather", response={"temp_c": 25}
                )
            ),
        ],
    )
    follow_up = [question, types.Content(role="model", parts=own_parts), answers]
    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=follow_up, config=config
    )
    assert "".join([r.text or "" async for r in stream]) == "2 answers"
    model_turn = fake.requests[1].body["contents"][1]
    assert pick(model_turn["parts"][0], "thoughtSignature") == "c2lnLTE="
    assert [pick(r, "id") for r in function_responses(fake.requests[1].body)] == [None, "fc-2"]

    # Rebuilt from the calls instead of echoed, the parts lose the signature: the API refuses them.
    rebuilt = types.Content(role="model", parts=[types.Part(function_call=c) for c in calls])
    with pytest.raises(errors.ClientError, match="thought_signature"):
        await drain_with(client, [question, rebuilt, answers], config)
    # And a call left without its response is refused too.
    with pytest.raises(errors.ClientError, match="number of function response parts"):
        await drain_with(client, [question, types.Content(role="model", parts=own_parts)], config)


async def drain_with(client: genai.Client, contents: Any, config: types.GenerateContentConfig) -> None:
    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=contents, config=config
    )
    async for _ in stream:
        pass


async def test_non_streamed_and_v1beta(fake: FakeGemini) -> None:
    sdk = make_client(fake, api_version="v1beta")
    try:
        response = await sdk.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi!")
    finally:
        await sdk.aio.aclose()

    assert response.text == fake.reply
    assert fake.requests[0].path == "/v1beta/models/gemini-2.5-flash:generateContent"


async def test_wrong_key_is_a_client_error(fake: FakeGemini) -> None:
    sdk = make_client(fake, api_key="AIza-wrong-key")
    try:
        with pytest.raises(errors.ClientError) as caught:
            await drain(sdk, "Hi!")
    finally:
        await sdk.aio.aclose()

    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert "API key not valid" in str(caught.value.message)


async def test_overload_is_a_server_error(fake: FakeGemini, client: genai.Client) -> None:
    fake.faults = [Fault(status=503)]
    with pytest.raises(errors.ServerError) as caught:
        await drain(client, "Hi!")
    assert caught.value.code == 503


async def test_dropped_stream_fails_the_iteration(fake: FakeGemini, client: genai.Client) -> None:
    fake.fault = Fault(disconnect_after=1)
    stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi!")
    with pytest.raises(aiohttp.ClientPayloadError):
        async for _ in stream:
            pass
    assert fake.requests[0].outcome == "dropped"


async def test_malformed_event_fails_to_parse(fake: FakeGemini, client: genai.Client) -> None:
    fake.fault = Fault(malformed_at=1)
    stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi!")
    with pytest.raises(errors.UnknownApiResponseError):
        async for _ in stream:
            pass


async def test_cancelling_a_stalled_stream_closes_the_connection(
    fake: FakeGemini, client: genai.Client
) -> None:
    # What an interruption does to an LLM processor. (aclose() on the stream would not do: the SDK's
    # inner generator keeps the connection until it is garbage-collected or the client is closed.)
    fake.fault = Fault(stall_after=1)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Hi!"
        ):
            first.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    await asyncio.wait({task})

    assert await fake.requests[0].wait_finished() == "client_closed"
