"""The OpenAI fake is faithful: the official ``openai`` SDK parses everything it sends.

If these fail after an SDK upgrade, the fake (and so every processor test built on it) no longer
matches what the SDK expects of the real API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.fakes.openai import (
    FakeOpenAI,
    FakeToolCall,
    Fault,
    to_wav,
    tool_results,
    wav_format,
    when_asked,
)

MESSAGES: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
    yield sdk
    await sdk.close()


def speech_wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    return to_wav(b"\x10\x00" * int(seconds * rate), rate)


async def test_streamed_chat_with_usage(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == fake.requests[0].usage
    request = fake.requests[0]
    assert request.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert request.body["messages"] == MESSAGES
    assert request.outcome == "completed"


async def test_non_streamed_chat(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.choices[0].message.content == fake.reply
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


async def test_streamed_tool_call_fragments_assemble(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.reply = ""
    fake.tool_calls = [FakeToolCall("get_weather", '{"city": "Paris, France"}')]
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
    )
    names, arguments, ids, finish = [], "", [], None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or []:
            ids += [call.id] if call.id else []
            if call.function and call.function.name:
                names.append(call.function.name)
            arguments += (call.function.arguments or "") if call.function else ""

    assert names == ["get_weather"] and ids == ["call_fake1_0"]
    assert json.loads(arguments) == {"city": "Paris, France"}
    assert finish == "tool_calls"
    assert fake.requests[0].body["tools"] == [WEATHER_TOOL]


async def collect_calls(stream: Any) -> tuple[dict[int, dict[str, str]], str | None]:
    """Tool calls of a chat stream assembled per index as the reference says: id and name assigned,
    arguments appended; the usage chunk (no choices) skipped."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for fragment in choice.delta.tool_calls or []:
                call = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = fragment.id or call["id"]
                if fragment.function is not None:
                    call["name"] = fragment.function.name or call["name"]
                    call["arguments"] += fragment.function.arguments or ""
    return calls, finish


@pytest.mark.parametrize("repeat_call_heads", [False, True])
async def test_parallel_calls_then_the_follow_up_the_sdk_sends(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, repeat_call_heads: bool
) -> None:
    fake.reply = lambda body: f"Results: {', '.join(tool_results(body))}" if tool_results(body) else ""
    fake.tool_calls = when_asked(
        FakeToolCall("get_weather", '{"city": "Paris"}', "call_abc"),
        FakeToolCall("get_weather", '{"city": "Rome"}', "call_def"),
    )
    fake.repeat_call_heads = repeat_call_heads  # llama.cpp's server repeats id and name in every chunk
    messages: Any = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    calls, finish = await collect_calls(stream)

    assert finish == "tool_calls"
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("call_abc", "get_weather", {"city": "Paris"}),
        ("call_def", "get_weather", {"city": "Rome"}),
    ]
    follow_up = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for _, c in sorted(calls.items())
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "call_def", "content": '{"temp_c": 25}'},
    ]
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=follow_up, tools=[WEATHER_TOOL], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert text == 'Results: {"temp_c": 21}, {"temp_c": 25}'
    body = fake.requests[1].body
    assert body["messages"] == follow_up and body["tools"] == [WEATHER_TOOL]


@pytest.mark.parametrize(
    ("history", "said"),
    [
        (  # a call whose result is missing
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
                {"role": "user", "content": "and?"},
            ],
            "did not have response messages: c2",
        ),
        (  # a result with no call before it
            [{"role": "tool", "tool_call_id": "c9", "content": "1"}, {"role": "user", "content": "and?"}],
            "must be a response to a preceeding message with 'tool_calls'",
        ),
    ],
)
async def test_an_invalid_tool_history_is_refused_as_the_api_does(
    client: openai.AsyncOpenAI, history: Any, said: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=said):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}, *history], stream=True
        )


async def test_wrong_key_is_an_authentication_error(fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-wrong-key-1234", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key-1234" not in str(caught.value)  # the real API masks the key it echoes


async def test_server_errors_map_to_sdk_errors(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.faults = [Fault(status=500), Fault(status=429)]
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)


async def test_dropped_stream_is_a_connection_error(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.fault = Fault(disconnect_after=3)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)

    assert len(received) == 3
    assert fake.requests[0].outcome == "dropped"


async def test_malformed_chunk_fails_to_parse(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.fault = Fault(malformed_at=2)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _ in stream:
            pass


async def test_closing_a_stalled_stream_closes_the_connection(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.fault = Fault(stall_after=2)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    await anext(aiter(stream))
    await stream.close()

    assert await fake.requests[0].wait_finished() == "client_closed"


async def test_speech_streams_24khz_pcm(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    text = "The quick brown fox."
    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="pcm", instructions="Cheerful."
    ) as response:
        chunks = [chunk async for chunk in response.iter_bytes()]

    assert len(chunks) > 1
    assert b"".join(chunks) == fake.speech_pcm(text)
    assert len(fake.speech_pcm(text)) == 2 * round(24000 * fake.seconds_per_char * len(text))
    assert fake.requests[0].body == {
        "input": text,
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "instructions": "Cheerful.",
        "response_format": "pcm",
    }


async def test_transcription_json_and_text(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.transcript = "he was not an ill disposed young man"
    result = await client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", speech_wav()), language="en", prompt="Austen"
    )
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", speech_wav()), response_format="text"
    )

    assert result.text == fake.transcript
    assert text.strip() == fake.transcript
    first = fake.requests[0]
    assert first.body == {"model": "whisper-1", "language": "en", "prompt": "Austen"}
    assert first.filename == "speech.wav" and first.file is not None
    assert wav_format(first.file) == (16000, 1, 8000)


async def test_transcription_stream_deltas_then_done(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.transcript = "hello there world"
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("speech.wav", speech_wav()), stream=True
    )
    events = [event async for event in stream]

    assert [e.type for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == "hello there world"  # type: ignore[union-attr]
    assert events[-1].text == "hello there world"  # type: ignore[union-attr]
    assert fake.requests[0].body["stream"] == "true"


async def test_transcription_rejects_unknown_formats(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.audio.transcriptions.create(model="whisper-1", file=("speech.raw", b"\x00" * 100))
