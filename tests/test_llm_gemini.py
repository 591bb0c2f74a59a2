"""llm.gemini against the local Gemini fake, through google-genai's async client."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest

from pipeline.conformance import check_llm
from pipeline.frames import InterruptionFrame, LLMTextFrame, LLMToolCallFrame, TranscriptFrame
from pipeline.graph import GraphFailedError
from pipeline.testing import Collector, run_processor
from processors.llm.gemini import GeminiLLM
from tests.fakes.gemini import FakeFunctionCall, FakeGemini, Fault, contents_text, pick
from tests.test_llm_openai import ErrorTap, converse, replies


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


def make_llm(fake: FakeGemini, **params: Any) -> GeminiLLM:
    values: dict[str, Any] = {"api_key": fake.api_key, "base_url": fake.base_url, "max_retries": 0}
    return GeminiLLM(name="llm", **(values | params))


async def test_streams_a_reply_with_the_system_instruction(fake: FakeGemini) -> None:
    llm = make_llm(fake, system_prompt="Be brief.", temperature=0.3, max_tokens=80)
    out = await run_processor(llm, [TranscriptFrame(text="Hi there!")])

    assert out.kinds[:2] == ["transcript", "llm_response_start"]
    assert out.kinds[-1] == "llm_response_end"
    assert out.kinds.count("llm_text") > 1
    assert replies(out) == [fake.reply]
    assert not out.errors
    request = fake.requests[0]
    assert request.path == "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert contents_text(pick(request.body, "systemInstruction")) == "Be brief."
    assert request.body["contents"] == [{"role": "user", "parts": [{"text": "Hi there!"}]}]
    config = pick(request.body, "generationConfig")
    assert (config["temperature"], config["maxOutputTokens"]) == (0.3, 80)
    assert pick(pick(config, "thinkingConfig"), "thinkingBudget") == 0
    usage = request.usage
    assert llm.usage == {
        "prompt_tokens": usage["promptTokenCount"],
        "completion_tokens": usage["candidatesTokenCount"],
    }
    assert len(llm.metrics.samples["ttfb"]) == 1


async def test_assistant_turns_become_model_turns(fake: FakeGemini) -> None:
    fake.reply = lambda body: "You said: " + contents_text(body["contents"][-1])
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    assert replies(out) == ["You said: one", "You said: two"]
    turns = [(c["role"], contents_text(c)) for c in fake.requests[1].body["contents"]]
    assert turns == [("user", "one"), ("model", "You said: one"), ("user", "two")]


async def test_function_calls_become_tool_calls(fake: FakeGemini) -> None:
    fake.reply = "Checking."
    fake.function_calls = [FakeFunctionCall("get_weather", {"city": "Paris"}), FakeFunctionCall("get_time")]
    weather = {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    llm = make_llm(fake, tools=[weather, {"type": "function", "function": {"name": "get_time"}}])
    out = await run_processor(llm, [TranscriptFrame(text="Weather?")])

    calls = [(f.name, json.loads(f.arguments)) for f in out.of(LLMToolCallFrame)]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert len({f.call_id for f in out.of(LLMToolCallFrame)}) == 2
    assert replies(out) == ["Checking."]
    (tool,) = fake.requests[0].body["tools"]
    declarations = pick(tool, "functionDeclarations")
    assert [d["name"] for d in declarations] == ["get_weather", "get_time"]
    assert pick(declarations[0], "parametersJsonSchema") == weather["parameters"]


def test_empty_key_names_the_variable() -> None:
    [problem] = GeminiLLM(api_key=" ").check()
    assert problem.key == "api_key" and "GEMINI_API_KEY" in problem.message


async def test_rejected_key_ends_the_graph_without_showing_the_key(
    fake: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "AIza-wrong-but-secret-4242"
    tap = ErrorTap()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GraphFailedError) as caught:
        await run_processor(make_llm(fake, api_key=secret), [TranscriptFrame(text="Hi")], observers=[tap])

    message = str(caught.value)
    assert (
        "rejected the API key" in message and "GEMINI_API_KEY" in message and "API key not valid" in message
    )
    assert [e.fatal for e in tap.errors] == [True]
    assert fake.requests[0].headers["x-goog-api-key"] == secret
    assert secret not in message
    assert all(secret not in e.message for e in tap.errors)
    assert secret not in caplog.text


async def test_unknown_model_ends_the_graph(fake: FakeGemini) -> None:
    with pytest.raises(GraphFailedError, match="model 'gemini-nope' not found"):
        await run_processor(
            make_llm(fake, api_version="v9", model="gemini-nope"), [TranscriptFrame(text="Hi")]
        )


async def test_dropped_stream_fails_the_turn_only(fake: FakeGemini) -> None:
    fake.faults = [Fault(disconnect_after=1)]
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    (error,) = out.errors
    assert not error.fatal and "ConnectionError: connection to" in error.message
    first, second = replies(out)
    assert isinstance(fake.reply, str) and fake.reply.startswith(first) and first != fake.reply
    assert second == fake.reply


async def test_malformed_event_fails_the_turn_only(fake: FakeGemini) -> None:
    fake.faults = [Fault(malformed_at=1)]
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    (error,) = out.errors
    assert "unreadable event" in error.message
    assert replies(out)[1] == fake.reply


async def test_overloaded_server_fails_the_turn_only(fake: FakeGemini) -> None:
    fake.faults = [Fault(status=503)]
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    (error,) = out.errors
    assert "ServerError" in error.message and not error.fatal
    assert replies(out) == ["", fake.reply]


async def test_slow_server_shows_in_time_to_first_byte(fake: FakeGemini) -> None:
    fake.fault = Fault(first_byte_delay=0.3)
    llm = make_llm(fake)
    await run_processor(llm, [TranscriptFrame(text="Hi")])

    (ttfb,) = llm.metrics.samples["ttfb"]
    assert ttfb >= 0.3


async def test_interruption_closes_the_http_stream(fake: FakeGemini) -> None:
    fake.faults = [Fault(stall_after=1)]

    async def first_words_arrive(out: Collector) -> None:
        await out.wait_for(LLMTextFrame)

    async def stream_closed() -> None:
        first = await fake.request(0)
        assert await first.wait_finished() == "client_closed"

    out = await converse(
        make_llm(fake),
        lambda out: [
            TranscriptFrame(text="Tell me a story."),
            lambda: first_words_arrive(out),
            InterruptionFrame(),
            stream_closed,
            TranscriptFrame(text="Never mind."),
        ],
    )

    assert not out.errors
    assert replies(out)[-1] == fake.reply


async def test_closing_the_reply_stream_closes_the_http_stream(fake: FakeGemini) -> None:
    # The base closes the generator (aclose) when a barge-in lands while it waits to push a chunk.
    fake.fault = Fault(stall_after=1)
    llm = make_llm(fake)
    await llm.on_start()
    try:
        stream = cast(AsyncGenerator[Any, None], llm.stream_reply([{"role": "user", "content": "Hi"}]))
        assert await anext(stream) == "Hello! How can"
        await stream.aclose()
        assert await fake.requests[0].wait_finished() == "client_closed"
    finally:
        await llm.on_stop()


async def test_conforms(fake: FakeGemini) -> None:
    fake.fault = Fault(chunk_delay=0.01)  # replies still streaming when the check interrupts one
    fake.words_per_chunk = 1
    fake.reply = lambda body: "You said: " + contents_text(body["contents"][-1]) + " Anything else?"
    replies = await check_llm(lambda: make_llm(fake), timeout=10)
    assert replies[0] == "You said: Say hello. Anything else?"
