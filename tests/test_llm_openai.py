"""llm.openai against the local OpenAI fake, through the real SDK: replies, tools, usage, failures."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pipeline.config import check_text
from pipeline.conformance import check_llm, check_tools, scripted_tool_call
from pipeline.errors import ValidationError
from pipeline.frames import (
    Direction,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    MetricsFrame,
    TranscriptFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.observers import Observer
from pipeline.processor import Processor
from pipeline.testing import Captured, Collector, run_graph, run_processor
from processors.llm.openai import OpenAILLM, _add_fragment, _finished
from tests.drivers import Driver, Step
from tests.fakes.openai import FakeOpenAI, FakeToolCall, Fault, tool_results, when_asked


class ErrorTap(Observer):
    """ErrorFrames as node ``source`` sends them (a fatal error ends the run before they are captured)."""

    def __init__(self, source: str = "llm") -> None:
        self.source = source
        self.errors: list[ErrorFrame] = []

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if isinstance(frame, ErrorFrame) and source.name == self.source:
            self.errors.append(frame)


async def converse(node: Processor, steps: Callable[[Collector], Sequence[Step]]) -> Captured:
    """driver -> node -> out, where the driver's ``steps`` may wait on what ``out`` has seen."""
    out = Collector(name="out")
    driver = Driver()
    driver.steps = steps(out)
    graph = Graph(
        {"driver": driver, node.name: node, "out": out}, [("driver", node.name), (node.name, "out")]
    )
    return await run_graph(graph, timeout=15)


def replies(out: Captured) -> list[str]:
    """The text of each reply, complete or cut short by an interruption."""
    texts: list[str] = []
    for frame in out.down:
        if isinstance(frame, LLMResponseStartFrame):
            texts.append("")
        elif isinstance(frame, LLMTextFrame):
            texts[-1] += frame.text
    return texts


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def make_llm(fake: FakeOpenAI, **params: Any) -> OpenAILLM:
    values: dict[str, Any] = {"api_key": fake.api_key, "base_url": fake.base_url, "max_retries": 0}
    return OpenAILLM(name="llm", **(values | params))


async def test_streams_a_reply(fake: FakeOpenAI) -> None:
    llm = make_llm(fake, system_prompt="Be brief.", temperature=0.3, max_tokens=80)
    out = await run_processor(llm, [TranscriptFrame(text="Hi there!")])

    assert out.kinds[:2] == ["transcript", "llm_response_start"]
    assert out.kinds[-1] == "llm_response_end"
    assert out.kinds.count("llm_text") > 3
    assert replies(out) == [fake.reply]
    assert not out.errors
    body = fake.requests[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there!"},
    ]
    assert (body["model"], body["stream"], body["temperature"], body["max_tokens"]) == (
        "gpt-4o-mini",
        True,
        0.3,
        80,
    )
    assert body["stream_options"] == {"include_usage": True}
    assert "tools" not in body
    usage = fake.requests[0].usage
    assert llm.usage == {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }
    assert len(llm.metrics.samples["ttfb"]) == 1


async def test_usage_metrics_frames(fake: FakeOpenAI) -> None:
    llm = make_llm(fake)
    llm.metrics.emit_frames = True
    out = await run_processor(llm, [TranscriptFrame(text="Hi")])

    counts = {f.metric: f.value for f in out.of(MetricsFrame) if f.metric.endswith("_tokens")}
    usage = fake.requests[0].usage
    assert counts == {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }


async def test_history_carries_the_previous_reply(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: f"You said: {body['messages'][-1]['content']}"
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    assert replies(out) == ["You said: one", "You said: two"]
    assert [(m["role"], m["content"]) for m in fake.requests[1].body["messages"][1:]] == [
        ("user", "one"),
        ("assistant", "You said: one"),
        ("user", "two"),
    ]


async def test_tool_calls_are_assembled_from_fragments(fake: FakeOpenAI) -> None:
    fake.reply = "Let me check."
    fake.tool_calls = [
        FakeToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', "call_a"),
        FakeToolCall("get_time", '{"zone": "Europe/Paris"}', "call_b"),
    ]
    weather = {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    full_form = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    out = await run_processor(make_llm(fake, tools=[weather, full_form]), [TranscriptFrame(text="Weather?")])

    calls = [(f.call_id, f.name, f.arguments) for f in out.of(LLMToolCallFrame)]
    assert calls == [
        ("call_a", "get_weather", '{"city": "Paris", "unit": "celsius"}'),
        ("call_b", "get_time", '{"zone": "Europe/Paris"}'),
    ]
    assert out.kinds.index("llm_tool_call") < out.kinds.index("llm_response_end")
    assert fake.requests[0].body["tools"] == [{"type": "function", "function": weather}, full_form]


def test_tools_without_a_name_are_rejected() -> None:
    [problem] = OpenAILLM(api_key="sk-x", tools=[{"description": "nameless"}]).check()
    assert (problem.key, problem.message) == ("tools", "tools[0] has no function name")


def test_empty_key_names_the_variable() -> None:
    [problem] = OpenAILLM(api_key="").check()
    assert problem.key == "api_key" and "OPENAI_API_KEY" in problem.message


def test_retries_and_timeout_are_range_checked() -> None:
    with pytest.raises(ValidationError) as caught:
        OpenAILLM(api_key="sk-x", max_retries=-1, timeout=0)
    assert [p.message for p in caught.value.problems] == [
        "max_retries -1 is out of range",
        "timeout 0 is out of range",
    ]


def test_unset_variable_in_a_config_is_reported() -> None:
    config = """
nodes:
  llm: {type: llm.openai, api_key: "${OPENAI_API_KEY}"}
  out: {type: debug.null}
edges: [llm -> out]
"""
    problems = [p for p in check_text(config, env={}) if p.key == "api_key"]
    assert problems
    assert all("OPENAI_API_KEY" in p.message for p in problems)


async def test_rejected_key_ends_the_graph_without_showing_the_key(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.leak_key = True  # worst case: the server echoes the key in its error
    secret = "sk-wrong-but-secret-4242"
    tap = ErrorTap()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GraphFailedError) as caught:
        await run_processor(make_llm(fake, api_key=secret), [TranscriptFrame(text="Hi")], observers=[tap])

    assert "rejected the API key" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)
    assert [e.fatal for e in tap.errors] == [True]
    assert "OPENAI_API_KEY" in tap.errors[0].message
    assert secret in fake.requests[0].headers["Authorization"]  # it was sent, and echoed back...
    assert secret not in str(caught.value)  # ...but shown nowhere
    assert all(secret not in e.message for e in tap.errors)
    assert secret not in caplog.text


async def test_dropped_stream_fails_the_turn_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(disconnect_after=4)]
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    (error,) = out.errors
    assert not error.fatal and "APIConnectionError" in error.message and "incomplete" in error.message
    first, second = replies(out)
    assert isinstance(fake.reply, str) and fake.reply.startswith(first) and first != fake.reply
    assert second == fake.reply
    assert fake.requests[0].outcome == "dropped"


async def test_malformed_chunk_fails_the_turn_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(malformed_at=3)]
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    (error,) = out.errors
    assert "unreadable chunk" in error.message
    assert replies(out)[1] == fake.reply


async def test_server_error_fails_the_turn_only(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(status=503)]
    out = await run_processor(make_llm(fake), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])

    (error,) = out.errors
    assert "InternalServerError" in error.message and not error.fatal
    assert replies(out) == ["", fake.reply]


async def test_slow_server_shows_in_time_to_first_byte(fake: FakeOpenAI) -> None:
    fake.fault = Fault(first_byte_delay=0.3)
    llm = make_llm(fake)
    await run_processor(llm, [TranscriptFrame(text="Hi")])

    (ttfb,) = llm.metrics.samples["ttfb"]
    assert ttfb >= 0.3


async def test_interruption_closes_the_http_stream(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(stall_after=3)]  # the first reply hangs after a few chunks, until the client leaves

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
    assert [m["content"] for m in fake.requests[1].body["messages"] if m["role"] == "user"][
        -1
    ] == "Never mind."


async def test_unknown_model_ends_the_graph(fake: FakeOpenAI) -> None:
    fake.models = {"gpt-4o-mini"}
    with pytest.raises(GraphFailedError, match="model 'gpt-nope' not found"):
        await run_processor(make_llm(fake, model="gpt-nope"), [TranscriptFrame(text="Hi")])


async def test_closing_the_reply_stream_closes_the_http_stream(fake: FakeOpenAI) -> None:
    # The base closes the generator (aclose) when a barge-in lands while it waits to push a chunk.
    fake.fault = Fault(stall_after=3)
    llm = make_llm(fake)
    await llm.on_start()
    try:
        stream = cast(AsyncGenerator[Any, None], llm.stream_reply([{"role": "user", "content": "Hi"}]))
        assert await anext(stream) == "Hello!"
        await stream.aclose()
        assert await fake.requests[0].wait_finished() == "client_closed"
    finally:
        await llm.on_stop()


async def test_conforms(fake: FakeOpenAI) -> None:
    fake.fault = Fault(chunk_delay=0.01)  # replies still streaming when the check interrupts one
    fake.reply = lambda body: f"You said: {body['messages'][-1]['content']} Anything else I can do for you?"
    replies = await check_llm(lambda: make_llm(fake), timeout=10)
    assert replies[0] == "You said: Say hello. Anything else I can do for you?"


async def test_openai_itself_gets_max_completion_tokens(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no base_url the node talks to OpenAI, whose reasoning models refuse max_tokens; the SDK's
    # OPENAI_BASE_URL lets this test stand in for it.
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    out = await run_processor(make_llm(fake, base_url=None, max_tokens=60), [TranscriptFrame(text="Hi")])

    assert replies(out) == [fake.reply]
    body = fake.requests[0].body
    assert body["max_completion_tokens"] == 60 and "max_tokens" not in body


# --- tools: the calls are run and the reply goes on ---------------------------------------------

WEATHER = {"weather": "tests.tools_example:get_weather"}


def answer_with_results(body: dict[str, Any]) -> str:
    """The fake model's words once tool results are back (none while it calls)."""
    results = tool_results(body)
    return f"Here is what I found: {' | '.join(results)}" if results else ""


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


async def test_a_tool_call_is_run_and_the_reply_goes_on(fake: FakeOpenAI) -> None:
    fake.tool_calls = when_asked(FakeToolCall("weather", '{"city": "Paris"}', "call_1"))
    fake.reply = answer_with_results
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Weather in Paris?")])

    assert not out.errors
    assert out.kinds[:3] == ["transcript", "llm_response_start", "llm_tool_call"]
    assert out.kinds.count("llm_response_start") == out.kinds.count("llm_response_end") == 1
    (reply,) = replies(out)
    assert '"temperature": 21' in reply
    first, follow_up = (r.body for r in fake.requests)
    assert (
        follow_up["tools"]
        == first["tools"]
        == [{"type": "function", "function": first["tools"][0]["function"]}]
    )
    assert first["tools"][0]["function"]["name"] == "weather"
    assistant, result = follow_up["messages"][-2:]
    assert assistant["role"] == "assistant" and not assistant.get("content")
    assert assistant["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert result["role"] == "tool" and result["tool_call_id"] == "call_1"
    assert json.loads(result["content"])["temperature"] == 21


async def test_two_calls_in_one_turn_run_and_answer_in_order(fake: FakeOpenAI) -> None:
    fake.tool_calls = when_asked(
        FakeToolCall("weather", '{"city": "Paris"}', "call_p"),
        FakeToolCall("weather", '{"city": "Rome"}', "call_r"),
    )
    fake.reply = answer_with_results
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Paris and Rome?")])

    assert not out.errors and len(out.of(LLMToolCallFrame)) == 2
    results = tool_messages(fake.requests[1].body)
    assert [m["tool_call_id"] for m in results] == ["call_p", "call_r"]
    assert [json.loads(m["content"])["temperature"] for m in results] == [21, 24]
    assert "21" in replies(out)[0] and "24" in replies(out)[0]


async def test_a_failing_tool_gives_the_model_an_error_to_read(fake: FakeOpenAI) -> None:
    fake.tool_calls = when_asked(FakeToolCall("weather", '{"city": "Atlantis"}'))
    fake.reply = answer_with_results
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Atlantis?")])

    assert not out.errors
    (result,) = tool_messages(fake.requests[1].body)
    assert "no weather for Atlantis" in json.loads(result["content"])["error"]
    assert "no weather for Atlantis" in replies(out)[0]


async def test_a_tool_that_times_out_gives_an_error_result(fake: FakeOpenAI) -> None:
    search = {"name": "search", "function": "tests.tools_example:slow_search", "timeout": 0.2}
    fake.tool_calls = when_asked(FakeToolCall("search", '{"query": "news", "seconds": 30}'))
    fake.reply = answer_with_results
    out = await run_processor(make_llm(fake, tools=[search]), [TranscriptFrame(text="Any news?")])

    assert not out.errors
    (result,) = tool_messages(fake.requests[1].body)
    assert "timed out" in json.loads(result["content"])["error"]
    assert len(replies(out)) == 1 and "timed out" in replies(out)[0]


async def test_a_barge_in_during_a_tool_leaves_a_history_the_api_accepts(fake: FakeOpenAI) -> None:
    search = {"name": "search", "function": "tests.tools_example:slow_search"}
    fake.tool_calls = lambda body: (
        [FakeToolCall("search", '{"query": "news", "seconds": 60}', "call_s")]
        if body["messages"][-1] == {"role": "user", "content": "Any news?"}
        else []
    )
    fake.reply = lambda body: "" if body["messages"][-1]["content"] == "Any news?" else "Sure, what then?"

    out = await converse(
        make_llm(fake, tools=[search]),
        lambda out: [
            TranscriptFrame(text="Any news?"),
            lambda: out.wait_for(LLMToolCallFrame),
            InterruptionFrame(),
            TranscriptFrame(text="Never mind."),
        ],
    )

    assert not out.errors  # the fake refuses (400) a call left without its result
    assert replies(out)[-1] == "Sure, what then?"
    next_turn = fake.requests[-1].body["messages"]
    assert next_turn[-1] == {"role": "user", "content": "Never mind."}
    calls = [m for m in next_turn if m.get("tool_calls")]
    results = tool_messages(fake.requests[-1].body)
    assert [c["id"] for m in calls for c in m["tool_calls"]] == [r["tool_call_id"] for r in results]
    assert all("cancel" in r["content"] for r in results)


async def test_end_call_ends_the_session_after_the_goodbye(fake: FakeOpenAI) -> None:
    fake.tool_calls = when_asked(FakeToolCall("end_call", "{}"))
    fake.reply = lambda body: "Goodbye!" if tool_results(body) else ""

    async def never() -> None:  # only the end of the session stops this driver
        await asyncio.Event().wait()

    out = await converse(
        make_llm(fake, tools=["end_call"]),
        lambda out: [TranscriptFrame(text="That's all, thanks."), never],
    )

    assert not out.errors
    assert replies(out) == ["Goodbye!"]
    assert out.kinds[-1] == "llm_response_end"
    assert len(fake.requests) == 2


def plays_the_tool_check(fake: FakeOpenAI) -> None:
    """Script ``fake`` as the model ``check_tools`` expects."""

    def calls(body: dict[str, Any]) -> list[FakeToolCall]:
        last = body["messages"][-1]
        call = scripted_tool_call(str(last["content"])) if last["role"] == "user" else None
        return [FakeToolCall(call[0], json.dumps(call[1]))] if call else []

    fake.tool_calls = calls
    fake.reply = lambda body: answer_with_results(body) or ("" if calls(body) else "Hello!")


async def test_tools_conform(fake: FakeOpenAI) -> None:
    plays_the_tool_check(fake)
    replies = await check_tools(lambda tools: make_llm(fake, tools=tools), timeout=10)
    assert "azure" in replies[0]


async def test_a_compatible_server_that_repeats_id_and_name_in_every_fragment(fake: FakeOpenAI) -> None:
    fake.repeat_call_heads = True  # as llama.cpp's server streams calls
    fake.tool_calls = when_asked(
        FakeToolCall("weather", '{"city": "Paris"}', "call_p"),
        FakeToolCall("weather", '{"city": "Rome"}', "call_r"),
    )
    fake.reply = answer_with_results
    out = await run_processor(make_llm(fake, tools=[WEATHER]), [TranscriptFrame(text="Paris and Rome?")])

    assert not out.errors
    calls = [(f.call_id, f.name, f.arguments) for f in out.of(LLMToolCallFrame)]
    assert calls == [("call_p", "weather", '{"city": "Paris"}'), ("call_r", "weather", '{"city": "Rome"}')]


def test_fragments_without_an_index_start_a_call_per_new_id() -> None:
    def fragment(call_id: str | None, name: str | None, arguments: str) -> Any:
        return SimpleNamespace(
            index=None, id=call_id, function=SimpleNamespace(name=name, arguments=arguments)
        )

    calls: dict[int, Any] = {}
    for piece in [
        fragment("a", "weather", '{"city": '),
        fragment(None, None, '"Paris"}'),
        fragment("b", "weather", '{"city": "Rome"}'),
        fragment(None, "", ""),
    ]:
        _add_fragment(calls, piece)
    assert [(c.call_id, c.name, c.arguments) for c in _finished(calls)] == [
        ("a", "weather", '{"city": "Paris"}'),
        ("b", "weather", '{"city": "Rome"}'),
    ]
