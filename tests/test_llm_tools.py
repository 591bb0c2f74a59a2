"""Tools: schemas from hints and docstrings, YAML entries, and running a call to a result text."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
from typing import Annotated, Any, Literal, Optional

import pytest

from pipeline.frames import Frame
from processors.llm.tools import (
    BUILTIN_TOOLS,
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


async def test_a_sync_tool_runs_in_a_thread() -> None:
    import threading

    seen: list[str] = []

    def where(word: str) -> int:
        """Where it ran."""
        seen.append(threading.current_thread().name)
        return len(word)

    assert await run(ToolSet([tool_from_function(where)]), "where", {"word": "abc"}) == 3
    assert seen and seen[0] != threading.main_thread().name


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
        ({"name": "x"}, "names no function and gives no parameters"),
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
    assert problems[0].message.startswith("tools[1]: ")
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
