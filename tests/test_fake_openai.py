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

from tests.fakes.openai import FakeOpenAI, FakeToolCall, Fault, to_wav, wav_format

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

    assert names == ["get_weather"] and ids == ["call_fake0"]
    assert json.loads(arguments) == {"city": "Paris, France"}
    assert finish == "tool_calls"
    assert fake.requests[0].body["tools"] == [WEATHER_TOOL]


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
