"""llm.gemini against the local Gemini fake, through google-genai's async client."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

import pytest

from pipeline.conformance import check_llm, check_tools, scripted_tool_call
from pipeline.frames import InterruptionFrame, LLMTextFrame, LLMToolCallFrame, TranscriptFrame
from pipeline.graph import GraphFailedError
from pipeline.testing import Collector, run_processor
from processors.llm.gemini import GeminiLLM, function_declaration, response_object
from tests.fakes.gemini import (
    FakeFunctionCall,
    FakeGemini,
    Fault,
    contents_text,
    function_responses,
    pick,
    when_asked,
)
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


# --- tools: the calls are run and the reply goes on ---------------------------------------------

WEATHER = {"weather": "tests.tools_example:get_weather"}


def answer_with_results(body: dict[str, Any]) -> str:
    """The fake model's words once function responses are back (none while it calls)."""
    responses = function_responses(body)
    return "Here is what I found: " + " | ".join(json.dumps(pick(r, "response")) for r in responses)


def calls_then_answers() -> Callable[[dict[str, Any]], str]:
    """``answer_with_results`` that says nothing in the turn that calls."""
    return lambda body: answer_with_results(body) if function_responses(body) else ""


async def test_a_tool_call_is_run_and_answered_with_the_models_own_part(fake: FakeGemini) -> None:
    fake.require_signatures = True  # a thinking model: the signature must come back with the call
    fake.function_calls = when_asked(
        FakeFunctionCall("weather", {"city": "Paris"}, thought_signature="c2lnLTE=")
    )
    fake.reply = calls_then_answers()
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Weather in Paris?")])

    assert not out.errors
    assert out.kinds.count("llm_response_start") == out.kinds.count("llm_response_end") == 1
    assert '"temperature": 21' in replies(out)[0]
    first, follow_up = (r.body for r in fake.requests)
    assert follow_up["tools"] == first["tools"]
    assert [d["name"] for d in pick(first["tools"][0], "functionDeclarations")] == ["weather"]
    _, model, answers = follow_up["contents"]
    assert model["role"] == "model"
    (part,) = model["parts"]
    assert pick(part, "functionCall") == {"name": "weather", "args": {"city": "Paris"}}  # no id: none came
    assert pick(part, "thoughtSignature") == "c2lnLTE="
    assert answers["role"] == "user"
    (response,) = function_responses(follow_up)
    assert response["name"] == "weather" and "id" not in response
    assert response["response"]["output"]["temperature"] == 21  # the result object, as the output


async def test_two_calls_in_one_event_are_answered_in_one_turn(fake: FakeGemini) -> None:
    fake.function_calls = when_asked(
        FakeFunctionCall("weather", {"city": "Paris"}, call_id="fc-1"),
        FakeFunctionCall("weather", {"city": "Rome"}, call_id="fc-2"),
    )
    fake.reply = calls_then_answers()
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Paris and Rome?")])

    assert not out.errors
    assert [f.call_id for f in out.of(LLMToolCallFrame)] == ["fc-1", "fc-2"]
    responses = function_responses(fake.requests[1].body)
    temperatures = [(r["id"], r["response"]["output"]["temperature"]) for r in responses]
    assert temperatures == [("fc-1", 21), ("fc-2", 24)]
    assert "21" in replies(out)[0] and "24" in replies(out)[0]


async def test_a_failing_tool_answers_with_an_error_object(fake: FakeGemini) -> None:
    fake.function_calls = when_asked(FakeFunctionCall("weather", {"city": "Atlantis"}))
    fake.reply = calls_then_answers()
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Atlantis?")])

    assert not out.errors
    (response,) = function_responses(fake.requests[1].body)
    assert "no weather for Atlantis" in response["response"]["error"]
    assert "no weather for Atlantis" in replies(out)[0]


async def test_a_tool_that_times_out_answers_with_an_error_object(fake: FakeGemini) -> None:
    search = {"name": "search", "function": "tests.tools_example:slow_search", "timeout": 0.2}
    fake.function_calls = when_asked(FakeFunctionCall("search", {"query": "news", "seconds": 30}))
    fake.reply = calls_then_answers()
    out = await run_processor(make_llm(fake, tools=[search]), [TranscriptFrame(text="Any news?")])

    assert not out.errors
    (response,) = function_responses(fake.requests[1].body)
    assert "timed out" in response["response"]["error"]


async def test_a_result_that_is_no_object_is_wrapped(fake: FakeGemini) -> None:
    letters = {"letters": "tests.tools_example:count_letters"}
    fake.function_calls = when_asked(FakeFunctionCall("letters", {"word": "voice"}))
    fake.reply = calls_then_answers()
    out = await run_processor(make_llm(fake, tools=[letters]), [TranscriptFrame(text="Letters in voice?")])

    assert not out.errors
    (response,) = function_responses(fake.requests[1].body)
    assert response["response"] == {"output": 5}


def test_a_result_is_the_output_and_only_a_failure_is_the_error() -> None:
    assert response_object('{"error": "tool failed"}') == {"error": "tool failed"}
    assert response_object('{"temp": 21}') == {"output": {"temp": 21}}
    assert response_object('{"error": null, "temp": 21}') == {"output": {"error": None, "temp": 21}}
    assert response_object("[1, 2]") == {"output": [1, 2]}
    assert response_object("plain words") == {"output": "plain words"}


def test_a_declaration_from_an_openai_form_schema_keeps_its_json_schema() -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    function = {"name": "weather", "description": "The weather.", "parameters": parameters}
    for schema in ({"type": "function", "function": function}, function):
        declaration = function_declaration(schema)
        assert (declaration.name, declaration.description) == ("weather", "The weather.")
        assert declaration.parameters_json_schema == parameters
    assert function_declaration({"name": "now"}).parameters_json_schema is None


async def test_a_barge_in_during_a_tool_leaves_a_history_the_api_accepts(fake: FakeGemini) -> None:
    search = {"name": "search", "function": "tests.tools_example:slow_search"}
    fake.function_calls = lambda body: (
        [FakeFunctionCall("search", {"query": "news", "seconds": 60})]
        if contents_text(body["contents"][-1]) == "Any news?"
        else []
    )
    fake.reply = lambda body: "" if contents_text(body["contents"][-1]) == "Any news?" else "Sure, what then?"

    out = await converse(
        make_llm(fake, tools=[search]),
        lambda out: [
            TranscriptFrame(text="Any news?"),
            lambda: out.wait_for(LLMToolCallFrame),
            InterruptionFrame(),
            TranscriptFrame(text="Never mind."),
        ],
    )

    assert not out.errors  # the fake refuses (400) a call left without its response
    assert replies(out)[-1] == "Sure, what then?"
    contents = fake.requests[-1].body["contents"]
    assert contents_text(contents[-1]) == "Never mind."
    calls = [p for c in contents for p in c["parts"] if pick(p, "functionCall")]
    responses = [
        pick(p, "functionResponse") for c in contents for p in c["parts"] if pick(p, "functionResponse")
    ]
    assert len(calls) == len(responses)
    assert all("cancel" in json.dumps(r["response"]) for r in responses)


async def test_end_call_ends_the_session_after_the_goodbye(fake: FakeGemini) -> None:
    fake.function_calls = when_asked(FakeFunctionCall("end_call"))
    fake.reply = lambda body: "Goodbye!" if function_responses(body) else ""

    async def never() -> None:  # only the end of the session stops this driver
        await asyncio.Event().wait()

    out = await converse(
        make_llm(fake, tools=["end_call"]), lambda out: [TranscriptFrame(text="That's all."), never]
    )

    assert not out.errors
    assert replies(out) == ["Goodbye!"]
    assert len(fake.requests) == 2


async def test_calls_from_before_the_kept_parts_are_rebuilt(fake: FakeGemini) -> None:
    llm = make_llm(fake, tools=[WEATHER])
    await llm.on_start()
    try:
        history: list[dict[str, Any]] = [
            {"role": "user", "content": "Paris?"},
            {
                "role": "assistant",
                "content": "Let me see.",
                "tool_calls": [
                    {
                        "id": "fc-old",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "fc-old", "content": '"sunny"'},
            {"role": "assistant", "content": "Sunny."},
            {"role": "user", "content": "Thanks."},
        ]
        assert "".join([str(item) async for item in llm.stream_reply(history)]) == fake.reply
    finally:
        await llm.on_stop()

    roles = [c["role"] for c in fake.requests[0].body["contents"]]
    assert roles == ["user", "model", "user", "model", "user"]
    model = fake.requests[0].body["contents"][1]
    assert pick(model["parts"][0], "text") == "Let me see."
    assert pick(model["parts"][1], "functionCall") == {
        "id": "fc-old",
        "name": "weather",
        "args": {"city": "Paris"},
    }
    (response,) = function_responses({"contents": fake.requests[0].body["contents"][:3]})
    assert (response["id"], response["response"]) == ("fc-old", {"output": "sunny"})


async def test_tools_conform(fake: FakeGemini) -> None:
    def calls(body: dict[str, Any]) -> list[FakeFunctionCall]:
        call = None if function_responses(body) else scripted_tool_call(contents_text(body["contents"][-1]))
        return [FakeFunctionCall(call[0], call[1])] if call else []

    fake.function_calls = calls
    fake.reply = lambda body: (
        answer_with_results(body) if function_responses(body) else "" if calls(body) else "Hello!"
    )
    replies = await check_tools(lambda tools: make_llm(fake, tools=tools), timeout=10)
    assert "azure" in replies[0]
