"""Tools: schemas from hints and docstrings, YAML entries, and running a call to a result text."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import aiohttp
import pytest

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.config import check_text
from pipeline.frames import (
    DTMFFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTextFrame,
    TranscriptFrame,
    UserTextFrame,
)
from pipeline.graph import Graph
from pipeline.processor import Processor
from pipeline.testing import Captured, Collector, run_graph, run_processor
from processors.llm.base import ChatLLM, ResumeReplyFrame
from processors.llm.tools import (
    BUILTIN_TOOLS,
    MAX_BACKGROUND_TOOLS,
    Tool,
    ToolCall,
    ToolContext,
    ToolSchemaError,
    ToolSet,
    TransferCallFrame,
    json_schema,
    parse_docstring,
    tool_from_function,
)
from tests import tools_example
from tests.drivers import Driver, Step


class Host:
    """A ToolHost that records what tools asked of it."""

    def __init__(self, transfers: bool = False) -> None:
        self.pushed: list[Frame] = []
        self.said: list[str] = []
        self.ended = 0
        self.transfers = transfers

    @property
    def session_id(self) -> str:
        return "s-1"

    async def push_from_tool(self, frame: Frame) -> None:
        self.pushed.append(frame)

    async def say_from_tool(self, text: str) -> None:
        self.said.append(text)

    def request_end(self) -> None:
        self.ended += 1

    def can_transfer(self) -> bool:
        return self.transfers


def call(name: str, arguments: Any = None, raw: str | None = None) -> ToolCall:
    text = raw if raw is not None else json.dumps(arguments or {})
    return ToolCall(call_id="c1", name=name, arguments=text)


async def run(
    tools: ToolSet, name: str, arguments: Any = None, raw: str | None = None, host: Host | None = None
) -> Any:
    made = call(name, arguments, raw)
    return json.loads(await tools.run(made, ToolContext(host or Host(), made)))


def example_tools(*names: str, **options: Any) -> ToolSet:
    return ToolSet([tool_from_function(getattr(tools_example, n), **options) for n in names])


# --- schemas -----------------------------------------------------------------------------------


def test_schema_from_hints_and_a_google_docstring() -> None:
    tool = tool_from_function(tools_example.get_weather)
    assert tool.schema() == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "the city's name, e.g. Paris"},
                    "unit": {
                        "type": "string",
                        "enum": ["celsius", "fahrenheit"],
                        "description": "the temperature unit to answer in",
                        "default": "celsius",
                    },
                },
                "required": ["city"],
            },
        },
    }


def test_schema_of_enums_lists_optional_annotated_and_the_context_left_out() -> None:
    tool = tool_from_function(tools_example.order_pizza)
    parameters = tool.parameters
    assert parameters["required"] == ["size", "toppings"]
    assert parameters["properties"] == {
        "size": {"type": "string", "enum": ["small", "large"], "description": "how big"},
        "toppings": {
            "type": "array",
            "items": {"type": "string"},
            "description": "what goes on it, at most five",
        },
        "note": {"type": "string", "description": "anything the kitchen should know", "default": ""},
        "extra_cheese": {"type": "boolean", "default": None},
    }
    assert tool.context_parameter == "context"
    assert tool.description == "Order a pizza; a confirmation is said at once."


def test_json_schema_of_each_shape() -> None:
    class Colour(enum.Enum):
        RED = 1
        BLUE = 2

    assert json_schema(int) == {"type": "integer"}
    assert json_schema(float) == {"type": "number"}
    assert json_schema(Optional[int]) == {"type": "integer"}  # noqa: UP045
    assert json_schema(list[float]) == {"type": "array", "items": {"type": "number"}}
    assert json_schema(dict[str, int]) == {"type": "object"}
    assert json_schema(Colour) == {"type": "integer", "enum": [1, 2]}
    assert json_schema(Literal["a", 1]) == {"enum": ["a", 1]}
    assert json_schema(int | str) == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert json_schema(Any) == {}
    assert json_schema(Annotated[int, "how many"]) == {"type": "integer", "description": "how many"}


def test_a_signature_without_a_schema_is_refused_by_name() -> None:
    def takes_anything(*things: str) -> None:
        """Nope."""

    def takes_a_date(day: datetime.date) -> None:
        """Nope."""

    with pytest.raises(ToolSchemaError, match="'things' is variadic positional"):
        tool_from_function(takes_anything)
    with pytest.raises(ToolSchemaError, match="'day': type date has no JSON schema"):
        tool_from_function(takes_a_date)


async def test_a_schema_given_in_yaml_serves_a_function_with_keyword_arguments() -> None:
    def anything(**fields: str) -> dict[str, str]:
        """Store whatever it is given."""
        return fields

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    tool = tool_from_function(anything, parameters=schema)
    assert tool.parameters == schema and tool.description == "Store whatever it is given."
    assert await run(ToolSet([tool]), "anything", {"name": "Ada"}) == {"name": "Ada"}
    # Keys the schema does not name reach **fields too: a result, never an exception.
    extra = {"name": "Ada", "city": "London"}
    assert await run(ToolSet([tool]), "anything", extra) == extra


def test_docstring_paragraph_and_args_with_types_and_continuations() -> None:
    doc = """Look a word up
    in the dictionary.

    More detail that is not the description.

    Args:
        word (str): the word
            to look up
        language: a two-letter code

    Returns:
        the definition
    """
    import inspect

    summary, described = parse_docstring(inspect.cleandoc(doc))
    assert summary == "Look a word up in the dictionary."
    assert described == {"word": "the word to look up", "language": "a two-letter code"}
    assert parse_docstring("") == ("", {})


# --- running -----------------------------------------------------------------------------------


async def test_a_call_returns_the_json_of_what_the_tool_returned() -> None:
    tools = example_tools("get_weather")
    result = await run(tools, "get_weather", {"city": "Paris"})
    assert result == {"city": "Paris", "temperature": 21, "unit": "celsius", "sky": "sunny"}
    assert (await run(tools, "get_weather", {"city": "Oslo", "unit": "fahrenheit"}))["temperature"] == 48


async def test_a_sync_tool_runs_in_a_thread_of_the_tools() -> None:
    import threading

    seen: list[str] = []

    def where(word: str) -> int:
        """Where it ran."""
        seen.append(threading.current_thread().name)
        return len(word)

    assert await run(ToolSet([tool_from_function(where)]), "where", {"word": "abc"}) == 3
    assert seen and seen[0].startswith("tool")  # the tools' own threads, not the models' ones


async def test_tool_faults_become_error_results_the_model_reads() -> None:
    tools = example_tools("get_weather", "failing_booking")
    failed = await run(tools, "failing_booking", {"day": "Friday"})
    assert failed == {
        "error": "tool 'failing_booking' failed: ConnectionError: booking system unreachable for Friday"
    }
    assert (
        "unknown tool 'get_wether'; the tools are: get_weather, failing_booking"
        in (await run(tools, "get_wether", {"city": "Paris"}))["error"]
    )
    assert "not valid JSON" in (await run(tools, "get_weather", raw='{"city": "Par'))["error"]
    assert "must be a JSON object" in (await run(tools, "get_weather", raw="[1]"))["error"]
    assert (await run(tools, "get_weather", {}))["error"] == "'get_weather' needs 'city'"
    assert (
        "takes no argument 'town'" in (await run(tools, "get_weather", {"city": "x", "town": "y"}))["error"]
    )
    wrong = await run(tools, "get_weather", {"city": 3})
    assert wrong["error"] == "argument 'city' of 'get_weather' must be string, got 3"
    wrong = await run(tools, "get_weather", {"city": "Paris", "unit": "kelvin"})
    assert 'must be one of "celsius", "fahrenheit"' in wrong["error"]


async def test_a_tool_that_runs_too_long_times_out() -> None:
    tools = example_tools("slow_search", timeout=0.05)
    result = await run(tools, "slow_search", {"query": "x", "seconds": 30})
    assert result == {"error": "tool 'slow_search' timed out after 0.05 s"}


async def test_cancelling_a_run_cancels_the_tool() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever() -> None:
        """Never returns."""
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    task = asyncio.ensure_future(run(ToolSet([tool_from_function(wait_forever)]), "wait_forever"))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_enum_arguments_arrive_as_members_and_the_context_is_given() -> None:
    host = Host()
    tools = example_tools("order_pizza")
    result = await run(tools, "order_pizza", {"size": "large", "toppings": ["ham"]}, host=host)
    assert result == {"size": "large", "toppings": ["ham"], "note": "", "extra_cheese": False}
    assert host.said == ["Order placed."]
    assert (
        "has an item that must be string"
        in (await run(tools, "order_pizza", {"size": "large", "toppings": [1]}))["error"]
    )
    # A schema given in YAML that allows a value the enum lacks: an error result, never an exception.
    loose = {"type": "object", "properties": {"size": {"type": "string"}, "toppings": {"type": "array"}}}
    given = ToolSet([tool_from_function(tools_example.order_pizza, parameters=loose)])
    wrong = await run(given, "order_pizza", {"size": "huge", "toppings": []})
    assert wrong["error"].endswith('\'size\' of \'order_pizza\' must be one of "small", "large", got "huge"')


async def test_none_reads_as_ok_and_odd_values_as_text() -> None:
    def nothing() -> None:
        """Returns nothing."""

    def when() -> datetime.date:
        """A date."""
        return datetime.date(2026, 1, 2)

    tools = ToolSet([tool_from_function(nothing), tool_from_function(when)])
    assert await run(tools, "nothing") == {"ok": True}
    assert await run(tools, "when") == "2026-01-02"


# --- built-ins ---------------------------------------------------------------------------------


async def test_end_call_asks_the_host_to_end_after_the_reply() -> None:
    host = Host()
    result = await run(ToolSet([BUILTIN_TOOLS["end_call"]]), "end_call", {}, host=host)
    assert result["ok"] is True
    assert host.ended == 1
    assert BUILTIN_TOOLS["end_call"].parameters == {"type": "object", "properties": {}}


async def test_transfer_is_an_error_result_unless_the_transport_can() -> None:
    tools = ToolSet([BUILTIN_TOOLS["transfer"]])
    assert await run(tools, "transfer", {"to": "+15550100"}) == {
        "error": "transfer is not supported by this transport"
    }
    host = Host(transfers=True)
    assert await run(tools, "transfer", {"to": "+15550100"}, host=host) == {"transferring_to": "+15550100"}
    assert host.pushed == [TransferCallFrame(to="+15550100")]


async def test_current_time_is_local_iso_with_its_time_zone() -> None:
    result = await run(ToolSet([BUILTIN_TOOLS["current_time"]]), "current_time")
    parsed = datetime.datetime.fromisoformat(result["iso"])
    assert parsed.tzinfo is not None
    assert abs((datetime.datetime.now().astimezone() - parsed).total_seconds()) < 60
    assert result["weekday"] == parsed.strftime("%A")


# --- YAML entries ------------------------------------------------------------------------------


def test_every_entry_form() -> None:
    tools, problems = ToolSet.from_config(
        [
            "end_call",
            {"weather": "tests.tools_example:get_weather"},
            {
                "name": "search",
                "function": "tests.tools_example:slow_search",
                "timeout": 20,
                "background": True,
                "filler": "Let me look.",
                "description": "Search the notes.",
            },
            {"name": "lookup", "description": "Look up.", "parameters": {"type": "object", "properties": {}}},
            {"type": "function", "function": {"name": "legacy", "parameters": {"type": "object"}}},
            {"name": "current_time", "timeout": 1},
        ]
    )
    assert problems == []
    assert list(tools.tools) == ["end_call", "weather", "search", "lookup", "legacy", "current_time"]
    search = tools.tools["search"]
    assert (search.timeout, search.background, search.filler) == (20.0, True, "Let me look.")
    assert search.description == "Search the notes."
    assert tools.tools["weather"].description == "The current weather in a city."
    assert tools.tools["lookup"].function is None and not tools.runs("lookup") and tools.runs("weather")
    assert tools.tools["current_time"].timeout == 1.0
    bare, _ = ToolSet.from_config([{"name": "ping"}])
    assert bare.schemas() == [
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    ]
    assert [s["function"]["name"] for s in tools.schemas()] == list(tools.tools)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("hang_up", "'hang_up' is no built-in tool (built-ins: end_call, transfer, current_time)"),
        ({"weather": "no_such_module_x:get"}, "cannot import module 'no_such_module_x'"),
        (
            {"weather": "tests.tools_example:nothing_here"},
            "module 'tests.tools_example' has no 'nothing_here'",
        ),
        ({"weather": "tests.tools_example"}, "is not 'module:callable'"),
        ({"weather": "tests.tools_example:WEATHER"}, "is not callable"),
        ({"name": "x", "parameters": {"type": "string"}}, "parameters must be a JSON schema of an object"),
        ({"name": "x", "parameters": {"type": "object", "required": ["a"]}}, "parameters.required must list"),
        ({"description": "nameless"}, "has no function name"),
        ({"name": "bad name!", "parameters": {"type": "object"}}, "tool name 'bad name!' is not usable"),
        ({"weather": "tests.tools_example:get_weather", "timeout": 0}, "unknown key 'weather'"),
        (
            {"name": "w", "function": "tests.tools_example:get_weather", "timeout": 0},
            "timeout 0 is not usable",
        ),
        ({"name": "w", "function": "tests.tools_example:get_weather", "background": "yes"}, "background"),
        (3, "expected a name or a mapping, got int"),
    ],
)
def test_unusable_entries_are_problems_by_index(entry: Any, message: str) -> None:
    tools, problems = ToolSet.from_config(["end_call", entry], node="llm")
    assert len(problems) == 1, problems
    assert problems[0].message.startswith("tools[1]")
    assert message in problems[0].message
    assert (problems[0].node, problems[0].key) == ("llm", "tools")
    assert list(tools.tools) == ["end_call"]


def test_two_tools_of_one_name_are_a_problem() -> None:
    _, problems = ToolSet.from_config(["end_call", "end_call"])
    assert [p.message for p in problems] == ["tools[1]: a second tool named 'end_call'"]


def test_a_schema_only_tool_is_not_run() -> None:
    tool = Tool(name="lookup", description="", parameters={"type": "object", "properties": {}})
    result = asyncio.run(ToolSet([tool]).run(call("lookup")))
    assert "not run here" in json.loads(result)["error"]


def test_only_a_background_tool_keeps_running_after_a_barge_in_and_only_up_to_the_cap() -> None:
    async def slow(query: str) -> str:
        """A lookup."""
        return query

    background = tool_from_function(slow, name="bg", background=True)
    tools = ToolSet([tool_from_function(slow, name="slow"), background])
    assert tools.keeps_running("bg", 0)
    assert tools.keeps_running("bg", MAX_BACKGROUND_TOOLS - 1)
    assert not tools.keeps_running("bg", MAX_BACKGROUND_TOOLS)
    assert not tools.keeps_running("slow", 0)
    assert not tools.keeps_running("missing", 0)


# --- the reply loop in ChatLLM -----------------------------------------------------------------

HOLD = object()
"""In a scripted round: wait here until cancelled."""

Round = list[object] | Callable[[list[dict[str, Any]]], list[object]]


class ToolLLM(ChatLLM):
    """Replies with scripted rounds (a list, or a function of the request) and records each request."""

    def __init__(self, rounds: Sequence[Round] = (), **params: Any) -> None:
        super().__init__(name="llm", **params)
        self.rounds = list(rounds)
        self.requests: list[list[dict[str, Any]]] = []
        self.asked = asyncio.Event()  # set at each request
        self.holding = asyncio.Event()

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        self.requests.append(json.loads(json.dumps(messages)))
        self.asked.set()
        script = self.rounds.pop(0) if self.rounds else ["(no more script)"]
        items = script(messages) if callable(script) else script
        for item in items:
            if item is HOLD:
                self.holding.set()
                await asyncio.Event().wait()
            assert isinstance(item, str | ToolCall)
            yield item


class QuietLLM(ChatLLM):
    """A ChatLLM a config can name by import path (it says one word)."""

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        yield "Hm."


def bot(out: Captured) -> list[str]:
    """The bot's text that left the LLM."""
    return [f.text for f in out.of(LLMTextFrame)]


def tc(name: str, arguments: Any = None, call_id: str = "", raw: str | None = None) -> ToolCall:
    text = raw if raw is not None else json.dumps(arguments or {})
    return ToolCall(call_id=call_id or f"call_{name}", name=name, arguments=text)


def assert_valid_history(messages: list[dict[str, Any]]) -> None:
    """What providers demand: each assistant message with tool_calls is followed by exactly one tool
    message per call, in order; no tool message stands anywhere else."""
    index = 0
    while index < len(messages):
        message = messages[index]
        assert message["role"] != "tool", f"a tool result without its call at {index}: {messages}"
        index += 1
        if message["role"] == "assistant" and message.get("tool_calls"):
            ids = [call["id"] for call in message["tool_calls"]]
            results = [m.get("tool_call_id") for m in messages[index : index + len(ids)]]
            assert results == ids, f"calls {ids} are followed by results {results}: {messages}"
            index += len(ids)


def last_turn(request: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request from its last user message on."""
    start = max(i for i, m in enumerate(request) if m["role"] == "user")
    return request[start:]


async def test_one_call_runs_and_the_reply_goes_on_in_the_same_response() -> None:
    llm = ToolLLM(
        [["Let me check.", tc("weather", {"city": "Paris"})], ["It is 21 degrees", " in Paris."]],
        tools=[{"weather": "tests.tools_example:get_weather"}],
    )
    out = await run_processor(llm, [TranscriptFrame(text="Weather in Paris?")])
    assert not out.errors
    assert out.kinds == [
        "transcript",
        "llm_response_start",
        "llm_text",
        "llm_tool_call",
        "llm_text",
        "llm_text",
        "llm_response_end",
    ]
    assert bot(out) == ["Let me check.", " It is 21 degrees", " in Paris."]
    result = json.dumps({"city": "Paris", "temperature": 21, "unit": "celsius", "sky": "sunny"})
    assert last_turn(llm.requests[1]) == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_weather",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_weather", "content": result},
    ]
    assert llm.tool_schemas[0]["function"]["name"] == "weather"
    history = llm.context.messages()
    assert_valid_history(history)
    assert history[-1] == {"role": "assistant", "content": "It is 21 degrees in Paris."}


async def test_two_calls_of_one_round_run_in_parallel_and_answer_in_call_order() -> None:
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def meet(me: str, other: str) -> str:
        """Returns once the other call has started too: proof they run at the same time."""
        started[me].set()
        await asyncio.wait_for(started[other].wait(), 5)
        return me

    llm = ToolLLM(
        [
            [tc("meet", {"me": "a", "other": "b"}, "c1"), tc("meet", {"me": "b", "other": "a"}, "c2")],
            ["Both."],
        ]
    )
    llm.toolset = ToolSet([tool_from_function(meet)])
    out = await run_processor(llm, [TranscriptFrame(text="Go")])
    assert not out.errors
    assert last_turn(llm.requests[1])[1:] == [
        {"role": "assistant", "content": None, "tool_calls": ANY_CALLS},
        {"role": "tool", "tool_call_id": "c1", "content": '"a"'},
        {"role": "tool", "tool_call_id": "c2", "content": '"b"'},
    ]
    assert out.kinds.count("llm_response_start") == 1 and bot(out) == ["Both."]


class _AnyCalls:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, list) and all(isinstance(c, dict) and "id" in c for c in other)


ANY_CALLS = _AnyCalls()


async def test_faults_are_results_the_model_reads_and_the_reply_goes_on() -> None:
    llm = ToolLLM(
        [
            [
                tc("book", {"day": "Friday"}, "c1"),
                tc("weathr", {"city": "Paris"}, "c2"),
                tc("weather", raw='{"city": "Par', call_id="c3"),
            ],
            ["Sorry, I could not do that."],
        ],
        tools=[
            {"book": "tests.tools_example:failing_booking"},
            {"weather": "tests.tools_example:get_weather"},
        ],
    )
    out = await run_processor(llm, [TranscriptFrame(text="Book Friday")])
    assert not out.errors
    results = [json.loads(m["content"])["error"] for m in llm.requests[1] if m["role"] == "tool"]
    assert results[0] == "tool 'book' failed: ConnectionError: booking system unreachable for Friday"
    assert results[1].startswith("unknown tool 'weathr'")
    assert "not valid JSON" in results[2]
    assert bot(out) == ["Sorry, I could not do that."]
    assert_valid_history(llm.context.messages())


async def test_a_tool_that_runs_too_long_times_out_and_the_reply_goes_on() -> None:
    llm = ToolLLM(
        [[tc("search", {"query": "x", "seconds": 60})], ["It took too long."]],
        tools=[{"name": "search", "function": "tests.tools_example:slow_search", "timeout": 0.05}],
        filler_after=None,
    )
    out = await run_processor(llm, [TranscriptFrame(text="Search")])
    assert [m["content"] for m in llm.requests[1] if m["role"] == "tool"] == [
        '{"error": "tool \'search\' timed out after 0.05 s"}'
    ]
    assert bot(out) == ["It took too long."]


async def test_calls_with_no_tools_declared_or_to_schema_only_tools_are_passed_on() -> None:
    llm = ToolLLM(
        [["One moment.", tc("lookup", {"q": 1})]],
        tools=[{"name": "lookup", "description": "Look something up (handled by the application)."}],
    )
    out = await run_processor(llm, [TranscriptFrame(text="Look")])
    assert len(llm.requests) == 1
    assert out.kinds[-2:] == ["llm_tool_call", "llm_response_end"]
    assert llm.context.messages()[-1] == {"role": "assistant", "content": "One moment."}


async def test_an_interruption_cancels_the_running_tool_and_the_history_stays_valid() -> None:
    running, cancelled = asyncio.Event(), asyncio.Event()

    async def book(day: str) -> str:
        """Book a table."""
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return "never"

    llm = ToolLLM(
        [["Booking.", tc("book", {"day": "Friday"}, "c1")], ["Okay, what instead?"]], filler_after=None
    )
    llm.toolset = ToolSet([tool_from_function(book)])
    out = await converse(
        llm,
        lambda tap, out: [
            TranscriptFrame(text="Book Friday"),
            running.wait,
            InterruptionFrame(),
            TranscriptFrame(text="No, Saturday"),
        ],
    )
    assert cancelled.is_set()
    assert "llm_response_end" not in out.kinds[: out.kinds.index("interruption")]
    follow_up = llm.requests[1]
    assert_valid_history(follow_up)
    assert follow_up[-3:] == [
        {"role": "assistant", "content": "Booking.", "tool_calls": ANY_CALLS},
        {"role": "tool", "tool_call_id": "c1", "content": '{"error": "cancelled: the user interrupted"}'},
        {"role": "user", "content": "No, Saturday"},
    ]


async def test_a_background_tool_finishes_after_an_interruption_and_its_result_is_read_next_turn() -> None:
    running, release = asyncio.Event(), asyncio.Event()

    async def order(item: str, context: ToolContext) -> dict[str, str]:
        """Place an order (slow)."""
        running.set()
        await release.wait()
        await context.say("Ordered!")  # its reply was cut: not said, it would interleave with another
        return {"ordered": item, "number": "A7"}

    llm = ToolLLM(
        [[tc("order", {"item": "pizza"}, "c1")], ["Anything else?"], ["Your order number is A7."]],
        filler_after=None,
    )
    llm.toolset = ToolSet([tool_from_function(order, background=True)])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def finish_in_background() -> None:
            release.set()
            await asyncio.wait_for(_until(lambda: not llm._background), 5)

        return [
            TranscriptFrame(text="A pizza"),
            running.wait,
            InterruptionFrame(),
            TranscriptFrame(text="And?"),
            finish_in_background,
            TranscriptFrame(text="My number?"),
        ]

    out = await converse(llm, steps)
    assert "Ordered!" not in bot(out)
    second, third = llm.requests[1], llm.requests[2]
    assert_valid_history(second)
    assert_valid_history(third)
    tool_in = [m["content"] for m in second if m["role"] == "tool"]
    assert tool_in == ['{"status": "still running in the background after the user interrupted"}']
    assert [m["content"] for m in third if m["role"] == "tool"] == ['{"ordered": "pizza", "number": "A7"}']


async def test_a_background_tool_is_stopped_with_its_node_even_when_the_graph_cancels_the_stop() -> None:
    running, stopping = asyncio.Event(), asyncio.Event()

    async def fetch(item: str) -> str:
        """Fetch a record (slow; it takes a moment to stop, as closing a connection does)."""
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopping.set()
            await asyncio.sleep(0.3)
            raise
        return item

    llm = ToolLLM([[tc("fetch", {"item": "r1"}, "c1")], ["Anything else?"]], filler_after=None)
    llm.toolset = ToolSet([tool_from_function(fetch, background=True)])
    driver = Driver([])
    driver.steps = [TranscriptFrame(text="Fetch r1"), running.wait, InterruptionFrame()]
    graph = Graph(
        {"driver": driver, "llm": llm, "out": Collector(name="out")}, [("driver", "llm"), ("llm", "out")]
    )
    run = asyncio.ensure_future(run_graph(graph))
    await asyncio.wait_for(stopping.wait(), 5)  # the end reached the llm: its on_stop cancelled the tool
    await graph.cancel()  # a client that hangs up now: the llm's worker is cancelled mid-stop
    await asyncio.wait_for(run, 10)
    names = ("tool:fetch", "processor:llm")
    assert [t for t in asyncio.all_tasks() if not t.done() and t.get_name() in names] == []


async def test_the_filler_is_said_only_while_a_slow_tool_runs() -> None:
    release = asyncio.Event()

    async def slow(query: str) -> str:
        """A lookup that waits for the test."""
        await release.wait()
        return "found"

    async def fast(query: str) -> str:
        """A lookup that returns at once."""
        return "found"

    llm = ToolLLM(
        [["Let me see", tc("slow", {"query": "a"})], ["Found it."], [tc("fast", {"query": "b"})], ["Here."]],
        filler_after=0.01,
    )
    llm.toolset = ToolSet([tool_from_function(slow), tool_from_function(fast, filler="Never said.")])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def filler_then_release() -> None:
            await out.wait_for(lambda f: isinstance(f, LLMTextFrame) and "One moment." in f.text)
            release.set()
            await out.wait_for(LLMResponseEndFrame)

        return [TranscriptFrame(text="Find a"), filler_then_release, TranscriptFrame(text="Find b")]

    slow_llm_out = await converse(llm, steps)
    assert bot(slow_llm_out) == ["Let me see", " One moment.", " Found it.", "Here."]
    # The filler is bot text like any other: it is in the history of the call's message.
    assert llm.requests[1][-2]["content"] == "Let me see One moment."
    assert_valid_history(llm.context.messages())


async def test_a_tool_s_own_filler_and_said_text_are_part_of_the_reply() -> None:
    release = asyncio.Event()

    async def search(query: str, context: ToolContext) -> str:
        """Search, saying what it does."""
        await context.say("Searching the notes.")
        await release.wait()
        return "nothing"

    llm = ToolLLM([[tc("search", {"query": "x"})], ["Nothing there."]], filler_after=0.01)
    llm.toolset = ToolSet([tool_from_function(search, filler="Still looking.")])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def filler_then_release() -> None:
            await out.wait_for(lambda f: isinstance(f, LLMTextFrame) and "Still looking." in f.text)
            release.set()

        return [TranscriptFrame(text="Search"), filler_then_release]

    out = await converse(llm, steps)
    assert bot(out) == ["Searching the notes.", " Still looking.", " Nothing there."]
    assert llm.context.messages()[-3]["content"] == "Searching the notes. Still looking."


async def test_rounds_are_capped_with_a_clear_error_and_the_history_stays_valid() -> None:
    forever = [[f"Round {n}.", tc("current_time", call_id=f"c{n}")] for n in range(4)]
    llm = ToolLLM(forever, tools=["current_time"], max_tool_rounds=3)
    out = await run_processor(llm, [TranscriptFrame(text="Time?")])
    assert len(llm.requests) == 4
    assert out.kinds.count("llm_response_start") == out.kinds.count("llm_response_end") == 1
    [error] = out.errors
    assert "the model asked for tools 4 times in one reply (max_tool_rounds: 3)" in error.message
    history = llm.context.messages()
    assert_valid_history(history)
    assert history[-1] == {"role": "assistant", "content": "Round 3."}


async def test_end_call_ends_the_graph_after_the_goodbye() -> None:
    llm = ToolLLM([[tc("end_call")], ["Goodbye!"], ["Never said."]], tools=["end_call"])
    driver = Driver([])
    never = asyncio.Event()
    driver.steps = [TranscriptFrame(text="That's all, bye"), never.wait]  # the input would go on
    out = Collector(name="out")
    graph = Graph({"driver": driver, "llm": llm, "out": out}, [("driver", "llm"), ("llm", "out")])
    captured = await run_graph(graph, timeout=10)
    assert captured.ended
    assert bot(captured) == ["Goodbye!"]
    kinds = [f.kind for f in captured.all_down]
    assert kinds[-3:] == ["llm_text", "llm_response_end", "end"]
    assert_valid_history(llm.context.messages())


async def test_after_end_call_no_turn_is_answered_and_an_interruption_withdraws_it() -> None:
    llm = ToolLLM([[tc("end_call")], ["Bye!"]], tools=["end_call"])
    out = await run_processor(llm, [TranscriptFrame(text="Bye"), TranscriptFrame(text="Wait, one more")])
    assert bot(out) == ["Bye!"] and len(llm.requests) == 2

    llm = ToolLLM([[tc("end_call")], ["Bye!", HOLD], ["Sure, go on."]], tools=["end_call"])
    out = await converse(
        llm,
        lambda tap, o: [
            TranscriptFrame(text="Bye"),
            llm.holding.wait,
            InterruptionFrame(),
            TranscriptFrame(text="Wait"),
        ],
    )
    assert bot(out)[-1] == "Sure, go on."


def test_tools_in_yaml_are_checked_by_node_and_key() -> None:
    config = """
nodes:
  llm:
    type: tests.test_llm_tools:QuietLLM
    tools:
      - end_call
      - weather: tests.tools_example:get_wether
      - {name: search, function: tests.tools_example:slow_search, timeout: -1}
  out: {type: debug.null}
edges: [llm -> out]
"""
    problems = [p for p in check_text(config, env={}) if p.node == "llm" and p.key is not None]
    assert problems[0].fix == "did you mean 'tests.tools_example:get_weather'?"
    assert [(p.node, p.key, p.message) for p in problems] == [
        ("llm", "tools", "tools[1]: module 'tests.tools_example' has no 'get_wether'"),
        ("llm", "tools", "tools[2]: timeout -1 is not usable"),
    ]
    good = config.replace("get_wether", "get_weather").replace("timeout: -1", "timeout: 5")
    assert [p for p in check_text(good, env={}) if p.key is not None] == []


async def converse(llm: ChatLLM, steps: Callable[[Collector, Collector], Sequence[Step]]) -> Captured:
    """driver -> tap -> llm -> out; ``steps`` may use the tap (upstream) and out (downstream)."""
    tap, out = Collector(name="tap"), Collector(name="out")
    driver = Driver([])
    driver.steps = steps(tap, out)
    graph = Graph(
        {"driver": driver, "tap": tap, "llm": llm, "out": out},
        [("driver", "tap"), ("tap", "llm"), ("llm", "out")],
    )
    return await run_graph(graph)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


# --- end_call in a served conversation ---------------------------------------------------------

SESSIONS: list[str] = []
"""Session ids the note_session tool saw."""


def note_session(context: ToolContext) -> str:
    """Note the conversation's id."""
    SESSIONS.append(context.session_id)
    return context.session_id


class GoodbyeLLM(ChatLLM):
    """Notes the session and ends the call at the first turn, then says goodbye."""

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        if messages[-1]["role"] == "user":
            yield ToolCall("c1", "note_session", "{}")
            yield ToolCall("c2", "end_call", "{}")
        else:
            yield "Goodbye!"


async def test_end_call_ends_a_served_conversation_after_the_goodbye(tmp_path: Path) -> None:
    from tests.test_websocket_server import connect, serving

    served = f"""
name: goodbye
server: {{type: websocket, port: 0, max_sessions: 1}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  llm:
    type: tests.test_llm_tools:GoodbyeLLM
    tools: [end_call, {{note_session: "tests.test_llm_tools:note_session"}}]
  recorder: {{type: recorder, directory: "{tmp_path}"}}
  out: {{type: websocket.output, realtime: false}}
edges:
  - mic -> llm -> recorder -> out
"""
    SESSIONS.clear()
    async with serving(served) as (_, base), aiohttp.ClientSession() as http, connect(http, base) as client:
        session = await client.wait_for(lambda m: m["type"] == "session", "a session id")
        await client.ws.send_str('{"type": "text", "text": "That is all, bye"}')
        assert await client.closed() == 1000  # the client never said stop: the graph ended it
        assert await client.reply() == "Goodbye!"
        assert client.of("status")[-1]["state"] == "ended"
    assert [session["session_id"]] == SESSIONS  # the tool knew which conversation it served
    saved = json.loads((tmp_path / session["session_id"] / "transcript.json").read_text())
    assert saved["end_time"] is not None  # the recorder was stopped, not cancelled
    assert [m["content"] for m in saved["messages"]] == ["That is all, bye", "Goodbye!"]


class KeypadTurns(Processor):
    """A caller's key ``#`` is the turn "That is all, bye" (a phone graph without speech recognition)."""

    handles: ClassVar[tuple[type[Frame], ...]] = (DTMFFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (UserTextFrame,)

    async def process(self, frame: DTMFFrame) -> None:
        if frame.digit == "#":
            await self.push(UserTextFrame(text="That is all, bye"))


@pytest.mark.slow
async def test_end_call_on_a_phone_call_speaks_the_goodbye_then_hangs_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.carrier import AUTH_TOKEN, FakeTwilio, FakeTwilioRest
    from tests.test_phone_twilio import ended
    from transports.websocket.server import VoiceServer

    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    rest = FakeTwilioRest()
    await rest.start()
    phone = f"""
name: phone-goodbye
server: {{type: websocket, port: 0, max_sessions: 1}}
settings: {{end_timeout: 5.0, cancel_timeout: 2.0, auto_resample: true}}
nodes:
  mic: {{type: phone.input, twilio_api_url: "{rest.url}"}}
  keys: {{type: "tests.test_llm_tools:KeypadTurns"}}
  llm:
    type: tests.test_llm_tools:GoodbyeLLM
    tools: [end_call, {{note_session: "tests.test_llm_tools:note_session"}}]
  tts: {{type: tts.espeak, first_chunk_min_words: 0}}
  speaker: {{type: phone.output}}
edges:
  - mic -> keys -> llm -> tts -> speaker
"""
    compiled, problems = config.compile_text(phone, "<test>")
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    try:
        carrier = FakeTwilio(server.url)
        await carrier.call()
        await carrier.silence(0.2)
        await carrier.dtmf("#")
        await carrier.silence_until(carrier.closed.is_set, "the server ending the call", 20)
        await asyncio.wait_for(rest.hung_up.wait(), 10)
        await carrier.close()
        await ended(server)
    finally:
        await asyncio.wait_for(server.stop(), 30)
        await rest.stop()
    assert carrier.violations == []
    # The goodbye (one sentence, about 0.9 s) played to its end before the line closed: its mark came
    # back and its audio was heard.
    assert carrier.played.marks == ["s1"]
    assert len(carrier.played.pcm) / 2 / 8000 > 0.6
    assert len(rest.requests) == 1  # hung up once, through the carrier's API


class Switchboard(Processor):
    """A node that can transfer calls: it takes ``TransferCallFrame``s (and keeps them)."""

    handles_transfer: ClassVar[bool] = True
    handles: ClassVar[tuple[type[Frame], ...]] = (TransferCallFrame,)
    transfers: ClassVar[list[str]] = []

    async def process(self, frame: TransferCallFrame) -> None:
        Switchboard.transfers.append(frame.to)


@pytest.mark.parametrize("can", [True, False])
async def test_transfer_reaches_a_node_that_can_or_is_an_error_result(can: bool) -> None:
    Switchboard.transfers.clear()
    llm = ToolLLM([[tc("transfer", {"to": "+15550100"})], ["Transferring you now."]], tools=["transfer"])
    nodes: dict[str, Processor] = {"driver": Driver([TranscriptFrame(text="A human, please")]), "llm": llm}
    nodes["out"] = Switchboard(name="out") if can else Collector(name="out")
    await run_graph(Graph(nodes, [("driver", "llm"), ("llm", "out")]))
    [result] = [m["content"] for m in llm.requests[1] if m["role"] == "tool"]
    if can:
        assert json.loads(result) == {"transferring_to": "+15550100"}
        assert Switchboard.transfers == ["+15550100"]
    else:
        assert json.loads(result) == {"error": "transfer is not supported by this transport"}


async def test_a_false_interruption_runs_the_cancelled_tools_again_and_the_reply_goes_on() -> None:
    runs: list[str] = []
    running, release = asyncio.Event(), asyncio.Event()

    async def book(day: str) -> str:
        """Book a table."""
        runs.append(day)
        running.set()
        await release.wait()
        return f"booked {day}"

    llm = ToolLLM(
        [["Booking.", tc("book", {"day": "Friday"}, "c1")], ["Done, Friday it is."]], filler_after=None
    )
    llm.toolset = ToolSet([tool_from_function(book)])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def running_again() -> None:
            await asyncio.wait_for(_until(lambda: len(runs) == 2), 5)
            release.set()

        return [
            TranscriptFrame(text="Book Friday"),
            running.wait,
            InterruptionFrame(),  # a cough: no words came
            ResumeReplyFrame(),
            running_again,
        ]

    out = await converse(llm, steps)
    assert runs == ["Friday", "Friday"]
    assert bot(out)[-1] == "Done, Friday it is."
    assert out.kinds.count("llm_response_start") == 2 and out.kinds.count("llm_response_end") == 1
    follow_up = llm.requests[1]
    assert_valid_history(follow_up)
    assert follow_up[-1] == {"role": "tool", "tool_call_id": "c1", "content": '"booked Friday"'}
    assert llm.context.messages()[-1] == {"role": "assistant", "content": "Done, Friday it is."}
