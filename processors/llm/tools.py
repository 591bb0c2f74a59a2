"""Tools an LLM node can call: declared in YAML, described to the model by a JSON schema, run here.

A ``tools:`` entry names a Python callable by import path (``weather: mytools:get_weather``); its
schema comes from the type hints and the docstring (first paragraph: the description; ``Args:``
lines: each parameter's), or is written out in YAML. ``ToolSet.run`` runs one call and always returns
the text the model reads next: the JSON of what the tool returned, or ``{"error": ...}`` when the tool
raised, timed out, is unknown, or got arguments that are not what its schema says. A tool fault never
raises: the model reads the error and carries on with the reply.

A tool that declares a parameter annotated ``ToolContext`` gets one (it is left out of the schema):
it can push frames (play a sound, say something), end the call after the goodbye is spoken, or ask
the transport to transfer the call. The built-ins ``end_call``, ``transfer`` and ``current_time``
need no network and are named in YAML by their bare names.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import datetime
import enum
import functools
import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Union, get_args, get_origin

from pipeline.errors import Problem, VoxgraphError
from pipeline.frames import DataFrame, Frame
from pipeline.params import did_you_mean
from pipeline.processor import Processor
from pipeline.sessions import ConversationKeeper

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TOOL_TIMEOUT",
    "MAX_BACKGROUND_TOOLS",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolHost",
    "ToolSchemaError",
    "ToolSet",
    "TransferCallFrame",
    "end_session",
    "error_result",
    "graph_can_transfer",
    "json_schema",
    "parse_docstring",
    "result_text",
    "session_of",
    "tool_from_entry",
    "tool_from_function",
]

DEFAULT_TOOL_TIMEOUT = 10.0
"""Seconds a tool may run before the model is told it timed out."""
MAX_BACKGROUND_TOOLS = 8
"""Background tools still running at once per node; beyond this an interruption cancels them like the rest."""
TOOL_THREADS = 8
"""Sync tools running at once in a process; more wait for a thread (within their timeout)."""
TRANSFER_UNSUPPORTED = "transfer is not supported by this transport"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
"""A function name every provider accepts (OpenAI: ``^[a-zA-Z0-9_-]{1,64}$``)."""
_ENTRY_KEYS = {"name", "function", "description", "parameters", "timeout", "background", "filler", "type"}


class ToolSchemaError(VoxgraphError, TypeError):
    """A callable's signature cannot be described as a JSON schema (``*args``, an unknown type...)."""


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A tool call the model asked for; ``arguments`` is the JSON text it produced."""

    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class TransferCallFrame(DataFrame):
    """Hand the call over to ``to`` (a phone number or SIP address). An interface only: a transport
    that can transfer declares ``handles_transfer = True`` and handles this frame; none does yet."""

    to: str = ""
    kind: ClassVar[str] = "transfer_call"


class ToolHost(Protocol):
    """What the node running a tool offers it (the LLM node implements this)."""

    @property
    def session_id(self) -> str: ...

    async def push_from_tool(self, frame: Frame) -> None: ...

    async def say_from_tool(self, text: str) -> None: ...

    def request_end(self) -> None: ...

    def can_transfer(self) -> bool: ...


class ToolContext:
    """Given to a tool that declares a parameter annotated ``ToolContext``: its way into the session."""

    def __init__(self, host: ToolHost, call: ToolCall) -> None:
        self._host = host
        self.call = call  # the call being run (its id, name and arguments as the model wrote them)

    @property
    def session_id(self) -> str:
        """The conversation's id (the recording's folder name); empty when nothing names it."""
        return self._host.session_id

    async def push(self, frame: Frame) -> None:
        """Send ``frame`` downstream from the LLM node, in order with the reply (a sound, a text)."""
        await self._host.push_from_tool(frame)

    async def say(self, text: str) -> None:
        """Speak ``text`` now, as part of the reply under way (kept in the history like any bot
        text); a background tool whose reply was cut is not heard (its result is read next turn)."""
        await self._host.say_from_tool(text)

    def end_call(self) -> None:
        """End the session once the reply under way (the goodbye) has been spoken."""
        self._host.request_end()

    async def transfer(self, to: str) -> str:
        """Ask the transport to transfer the call to ``to``; the result text for the model."""
        if not self._host.can_transfer():
            return error_result(TRANSFER_UNSUPPORTED)
        await self._host.push_from_tool(TransferCallFrame(to=to))
        return json.dumps({"transferring_to": to})


@dataclass(slots=True, frozen=True)
class Tool:
    """One tool: what the model is told about it and, unless schema-only, what runs it."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    function: Callable[..., Any] | None = None  # None: schema only; the call is passed on, nothing runs
    timeout: float = DEFAULT_TOOL_TIMEOUT
    background: bool = False  # an interruption lets it finish; its result is kept for the next turn
    filler: str | None = None  # spoken when it runs longer than the node's filler_after
    context_parameter: str | None = None  # the parameter that takes the ToolContext
    enums: Mapping[str, type[enum.Enum]] = dataclasses.field(default_factory=dict)  # args to convert

    def schema(self) -> dict[str, Any]:
        """The tool in OpenAI's function form."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


def error_result(message: str) -> str:
    """The result text of a call that failed."""
    return json.dumps({"error": message}, ensure_ascii=False)


def result_text(value: Any) -> str:
    """A tool's return value as the JSON text the model reads (None reads as ``{"ok": true}``)."""
    if value is None:
        return '{"ok": true}'
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


# --- schemas from signatures ---------------------------------------------------------------------


def tool_from_function(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TOOL_TIMEOUT,
    background: bool = False,
    filler: str | None = None,
) -> Tool:
    """A ``Tool`` for ``function``; its schema from the hints and docstring unless given.

    Raises ``ToolSchemaError`` when the signature cannot be described.
    """
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as error:
        raise ToolSchemaError(f"the type hints of {_qualname(function)} cannot be read: {error}") from error
    summary, arg_docs = parse_docstring(inspect.getdoc(function) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    context_parameter = None
    enums: dict[str, type[enum.Enum]] = {}
    for parameter in signature.parameters.values():
        hint = hints.get(parameter.name, Any)
        if _bare(hint) is ToolContext:
            context_parameter = parameter.name
            continue
        inner = _without_none(hint)
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            enums[parameter.name] = inner
        if parameters is not None:
            continue  # the schema is given: the signature only says what to pass and convert
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise ToolSchemaError(
                f"{_qualname(function)}: parameter '{parameter.name}' is {parameter.kind.description}; "
                "a tool takes named parameters only"
            )
        try:
            schema = json_schema(hint)
        except ToolSchemaError as error:
            raise ToolSchemaError(f"{_qualname(function)}: parameter '{parameter.name}': {error}") from None
        if parameter.name in arg_docs:
            schema["description"] = arg_docs[parameter.name]
        if parameter.default is parameter.empty:
            required.append(parameter.name)
        elif _is_json(parameter.default):
            schema["default"] = parameter.default
        properties[parameter.name] = schema
    built: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        built["required"] = required
    return Tool(
        name=name or function.__name__,
        description=description if description is not None else summary,
        parameters=parameters if parameters is not None else built,
        function=function,
        timeout=timeout,
        background=background,
        filler=filler,
        context_parameter=context_parameter,
        enums=enums,
    )


def json_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint: str, int, float, bool, list[...], dict, Literal, Enum, Optional."""
    if hint is Any:
        return {}
    origin = get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = get_args(hint)
        schema = json_schema(base)
        notes = [extra for extra in extras if isinstance(extra, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(hint) if option is not type(None)]
        if len(options) == 1:
            return json_schema(options[0])
        return {"anyOf": [json_schema(option) for option in options]}
    if origin is Literal:
        values = list(get_args(hint))
        return {**_type_of_values(values), "enum": values}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        items = [item for item in get_args(hint) if item is not Ellipsis]
        if len(set(items)) == 1:
            return {"type": "array", "items": json_schema(items[0])}
        return {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [member.value for member in hint]
        return {**_type_of_values(values), "enum": values}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if hint in simple:
        return {"type": simple[hint]}
    raise ToolSchemaError(
        f"type {getattr(hint, '__name__', hint)!s} has no JSON schema here; use str, int, "
        "float, bool, list[...], dict, Literal[...] or an Enum"
    )


def _type_of_values(values: list[Any]) -> dict[str, Any]:
    kinds = {_JSON_TYPES.get(type(value)) for value in values}
    return {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else {}


_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _bare(hint: Any) -> Any:
    """``hint`` without its ``Annotated`` wrapper."""
    return get_args(hint)[0] if get_origin(hint) is typing.Annotated else hint


def _without_none(hint: Any) -> Any:
    hint = _bare(hint)
    if get_origin(hint) in (Union, types.UnionType):
        options = [option for option in get_args(hint) if option is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns?|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring.

    The description is the first paragraph joined into one line; parameters come from the ``Args:``
    section, where a line ``name (type): text`` starts one and deeper-indented lines continue it.
    """
    lines = doc.expandtabs().splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            if first:
                break
            continue
        first.append(line.strip())
    described: dict[str, str] = {}
    in_args, indent, current = False, 0, ""
    for line in lines:
        stripped = line.strip()
        section = _SECTION.match(stripped)
        if section is not None:
            in_args = section.group(1) in ("Args", "Arguments", "Parameters", "Params")
            indent, current = 0, ""
            continue
        if not in_args or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(stripped)
        if match is not None and (not indent or depth <= indent):
            indent, current = depth, match.group(1).lstrip("*")
            described[current] = match.group(2).strip()
        elif current and depth > indent:
            described[current] = f"{described[current]} {stripped}".strip()
        elif depth < indent:
            in_args = False
    return " ".join(first), described


def _qualname(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', function)}"


# --- running -------------------------------------------------------------------------------------


class ToolSet:
    """The tools of one LLM node: their schemas for the provider, and ``run`` for each call."""

    def __init__(self, tools: list[Tool] | tuple[Tool, ...] = ()) -> None:
        self.tools: dict[str, Tool] = {tool.name: tool for tool in tools}  # by name, in YAML order

    @classmethod
    def from_config(cls, entries: list[Any], node: str | None = None) -> tuple[ToolSet, list[Problem]]:
        """The tools of a ``tools:`` list, and a problem for each entry that cannot be used (by index)."""
        tools: list[Tool] = []
        problems: list[Problem] = []
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            try:
                tool = tool_from_entry(entry)
            except _EntryError as error:
                problems.append(Problem(error.about(index), fix=error.fix, node=node, key="tools"))
                continue
            if tool.name in seen:
                fix = "give each tool its own name ({name: other_name, function: ...})"
                problems.append(
                    Problem(
                        f"tools[{index}]: a second tool named '{tool.name}'", fix=fix, node=node, key="tools"
                    )
                )
                continue
            seen.add(tool.name)
            tools.append(tool)
        return cls(tools), problems

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if there is one."""
        return self.tools.get(name)

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool in OpenAI's form: ``[{"type": "function", "function": {name, description,
        parameters}}]``."""
        return [tool.schema() for tool in self.tools.values()]

    def runs(self, name: str) -> bool:
        """Whether a call to ``name`` runs here (an unknown tool too: its error result is the reply)."""
        tool = self.tools.get(name)
        return tool is None or tool.function is not None

    def keeps_running(self, name: str, running: int) -> bool:
        """Whether a call to ``name`` may run on after a barge-in while ``running`` background tools
        already do: a ``background`` tool, within ``MAX_BACKGROUND_TOOLS``."""
        tool = self.tools.get(name)
        return tool is not None and tool.background and running < MAX_BACKGROUND_TOOLS

    async def run(self, call: ToolCall, context: ToolContext | None = None) -> str:
        """Run one call; the result text for the model. Tool faults become ``{"error": ...}``; only a
        cancellation (the user interrupted) propagates."""
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return error_result(f"unknown tool '{call.name}'; the tools are: {known}")
        if tool.function is None:
            return error_result(f"tool '{call.name}' is not run here: its call was passed on")
        arguments = _arguments(call, tool)
        if isinstance(arguments, str):
            return error_result(arguments)
        if tool.context_parameter is not None:
            if context is None:
                return error_result(f"tool '{call.name}' needs a session and none was given")
            arguments[tool.context_parameter] = context
        try:
            async with asyncio.timeout(tool.timeout):
                value = await _invoke(tool.function, arguments)
        except TimeoutError:
            return error_result(f"tool '{call.name}' timed out after {tool.timeout:g} s")
        except Exception as error:
            return error_result(f"tool '{call.name}' failed: {type(error).__name__}: {error}")
        if isinstance(value, str) and _is_result_text(value):
            return value  # a tool that already returns result text (end_call, transfer)
        try:
            return result_text(value)
        except (TypeError, ValueError) as error:
            return error_result(f"tool '{call.name}' returned something that is not JSON: {error}")


_tool_threads: concurrent.futures.ThreadPoolExecutor | None = None


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    """The threads sync tools run in: their own, so tools stuck past their timeout (a thread cannot be
    stopped) never take the threads that model inference runs in."""
    global _tool_threads
    if _tool_threads is None:
        _tool_threads = concurrent.futures.ThreadPoolExecutor(TOOL_THREADS, thread_name_prefix="tool")
    return _tool_threads


async def _invoke(function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """Await an async tool; a sync one runs in a thread so it cannot block the event loop."""
    if inspect.iscoroutinefunction(function):
        return await function(**arguments)
    call = functools.partial(contextvars.copy_context().run, function, **arguments)
    value = await asyncio.get_running_loop().run_in_executor(_threads(), call)
    if inspect.isawaitable(value):
        return await value
    return value


def _is_result_text(value: str) -> bool:
    """Whether a returned string is already a JSON object (passed on as it is)."""
    if not value.startswith("{"):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def _arguments(call: ToolCall, tool: Tool) -> dict[str, Any] | str:
    """The call's arguments checked against the tool's schema, or what is wrong with them."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as error:
        return f"the arguments of '{call.name}' are not valid JSON ({error}): resend the call"
    if not isinstance(arguments, dict):
        return f"the arguments of '{call.name}' must be a JSON object, got {type(arguments).__name__}"
    properties = tool.parameters.get("properties", {})
    unknown = [key for key in arguments if key not in properties]
    if unknown and not (tool.function is not None and _accepts_extra(tool.function)):
        return f"'{call.name}' takes no argument {', '.join(repr(k) for k in unknown)}; it takes: " + (
            ", ".join(properties) or "nothing"
        )
    missing = [key for key in tool.parameters.get("required", []) if key not in arguments]
    if missing:
        return f"'{call.name}' needs {', '.join(repr(k) for k in missing)}"
    for key, value in arguments.items():
        wrong = _mismatch(value, properties.get(key, {}))  # a key only **kwargs takes has no schema
        if wrong:
            return f"argument '{key}' of '{call.name}' {wrong}"
    for key, kind in tool.enums.items():
        if arguments.get(key) is not None:
            try:
                arguments[key] = kind(arguments[key])
            except ValueError:  # a schema given in YAML may allow what the enum lacks
                allowed = ", ".join(json.dumps(member.value) for member in kind)
                got = json.dumps(arguments[key])
                return f"argument '{key}' of '{call.name}' must be one of {allowed}, got {got}"
    return arguments


def _accepts_extra(function: Callable[..., Any]) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in parameters)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _mismatch(value: Any, schema: Any) -> str:
    """What is wrong with ``value`` for a (simple) JSON schema; empty when it fits."""
    if not isinstance(schema, dict):
        return ""
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {', '.join(json.dumps(v) for v in schema['enum'])}, got {json.dumps(value)}"
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if kinds and value is not None and not any(_CHECKS.get(k, lambda v: True)(value) for k in kinds):
        return f"must be {' or '.join(kinds)}, got {json.dumps(value)}"
    if "anyOf" in schema and not any(not _mismatch(value, option) for option in schema["anyOf"]):
        return f"fits none of its types, got {json.dumps(value)}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            wrong = _mismatch(item, schema["items"])
            if wrong:
                return f"has an item that {wrong}"
    return ""


# --- YAML entries --------------------------------------------------------------------------------


class _EntryError(Exception):
    def __init__(self, message: str, fix: str = "", *, predicate: bool = False) -> None:
        super().__init__(message)
        self.fix = fix
        self.predicate = predicate  # reads on from the entry's index: "tools[1] has no function name"

    def about(self, index: int) -> str:
        return f"tools[{index}] {self}" if self.predicate else f"tools[{index}]: {self}"


def tool_from_entry(entry: Any) -> Tool:
    """One ``tools:`` entry: a built-in's name, ``{name: module:function}``, or a full mapping."""
    if isinstance(entry, str):
        builtin = BUILTIN_TOOLS.get(entry)
        if builtin is None:
            raise _EntryError(
                f"'{entry}' is no built-in tool (built-ins: {', '.join(BUILTIN_TOOLS)})",
                fix=f"write '{{{entry}: module:function}}' for a tool of your own",
            )
        return builtin
    if not isinstance(entry, dict):
        raise _EntryError(f"expected a name or a mapping, got {type(entry).__name__}")
    if entry.get("type") == "function" and isinstance(entry.get("function"), dict):
        entry = dict(entry["function"])  # the full OpenAI form
    elif len(entry) == 1 and not set(entry) & _ENTRY_KEYS:
        [(name, target)] = entry.items()
        entry = {"name": name, "function": target}
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise _EntryError(
            f"unknown key {', '.join(repr(k) for k in sorted(unknown))}",
            fix="a tool takes name, function, description, parameters, timeout, background, filler",
        )
    name = entry.get("name")
    target = entry.get("function")
    if target is None and name in BUILTIN_TOOLS and "parameters" not in entry:
        return dataclasses.replace(BUILTIN_TOOLS[name], **_options(entry, BUILTIN_TOOLS[name]))
    if name is None:
        raise _EntryError(
            "has no function name",
            fix="write {name: get_weather, function: mytools:get_weather}",
            predicate=True,
        )
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _EntryError(
            f"tool name {name!r} is not usable",
            fix="a name of letters, digits, '_' or '-', at most 64, e.g. {name: get_weather, ...}",
        )
    parameters = entry.get("parameters")
    if parameters is not None:
        _check_schema(parameters)
    if target is None:  # schema only: the call is passed on, nothing runs here
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        return Tool(
            name=name,
            description=str(entry.get("description", "")),
            parameters=parameters,
            **_options(entry, None),
        )
    function = _import_callable(target)
    try:
        tool = tool_from_function(
            function, name=name, description=entry.get("description"), parameters=parameters
        )
    except ToolSchemaError as error:
        raise _EntryError(str(error), fix="annotate the parameters, or give 'parameters:' in YAML") from None
    return dataclasses.replace(tool, **_options(entry, tool))


def _options(entry: dict[str, Any], base: Tool | None) -> dict[str, Any]:
    """timeout, background and filler of an entry, checked."""
    options: dict[str, Any] = {}
    if "timeout" in entry:
        timeout = entry["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise _EntryError(f"timeout {timeout!r} is not usable", fix="seconds, more than 0 (e.g. 10)")
        options["timeout"] = float(timeout)
    if "background" in entry:
        if not isinstance(entry["background"], bool):
            raise _EntryError(f"background {entry['background']!r} is not true or false")
        options["background"] = entry["background"]
    if "filler" in entry:
        if entry["filler"] is not None and not isinstance(entry["filler"], str):
            raise _EntryError(f"filler {entry['filler']!r} is not a text", fix="e.g. filler: Let me look.")
        options["filler"] = entry["filler"] or None
    if base is not None and "description" in entry and entry["description"] is not None:
        options["description"] = str(entry["description"])
    return options


def _check_schema(parameters: Any) -> None:
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise _EntryError(
            "parameters must be a JSON schema of an object",
            fix="parameters: {type: object, properties: {city: {type: string}}, required: [city]}",
        )
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(p, dict) for p in properties.values()):
        raise _EntryError("parameters.properties must map each argument to its schema")
    required = parameters.get("required", [])
    if not isinstance(required, list) or any(key not in properties for key in required):
        raise _EntryError("parameters.required must list names from parameters.properties")


def _import_callable(target: Any) -> Callable[..., Any]:
    fix = "write module:callable, e.g. function: mytools:get_weather (the module on PYTHONPATH)"
    if not isinstance(target, str) or ":" not in target:
        raise _EntryError(f"function {target!r} is not 'module:callable'", fix=fix)
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise _EntryError(
            f"cannot import module '{module_name}' for tool function '{target}': "
            f"{type(error).__name__}: {error}",
            fix="check the module is installed or on PYTHONPATH (run from its folder)",
        ) from None
    found: Any = module
    for part in attribute.split("."):
        owner, found = found, getattr(found, part, None)
        if found is None:
            names = [name for name in dir(owner) if not name.startswith("_")]
            guess = did_you_mean(part, names)
            hint = f"did you mean '{module_name}:{attribute.replace(part, guess)}'?" if guess else fix
            raise _EntryError(f"module '{module_name}' has no '{attribute}'", fix=hint)
    if not callable(found):
        raise _EntryError(f"'{target}' is not callable", fix=fix)
    return typing.cast(Callable[..., Any], found)


# --- the session a tool runs in -----------------------------------------------------------------
# A ToolHost (an LLM or speech-to-speech node) answers its tools' questions about the session from the
# graph it runs in (``Processor.runtime``).


def session_of(processor: Processor) -> str:
    """The id of the conversation ``processor`` serves, as the graph's recorder (its
    ``ConversationKeeper``) keeps it; empty when nothing names it."""
    for node in processor.runtime.nodes():
        if isinstance(node, ConversationKeeper):
            session_id: object = getattr(node, "session_id", "")
            if isinstance(session_id, str) and session_id:
                return session_id
    return ""


def graph_can_transfer(processor: Processor) -> bool:
    """Whether a node of ``processor``'s graph hands calls over (``handles_transfer = True``: it
    handles ``TransferCallFrame``)."""
    return any(getattr(node, "handles_transfer", False) is True for node in processor.runtime.nodes())


def end_session(processor: Processor) -> bool:
    """End ``processor``'s session gracefully: the graph's sources stop, and their end drains behind
    everything already sent (a goodbye is spoken and played out; a phone call is then hung up). False
    when ``processor`` runs in no graph."""
    return processor.runtime.end_input()


# --- built-in tools ------------------------------------------------------------------------------


async def end_call(context: ToolContext) -> str:
    """End the call once the user is done or says goodbye. Say a short goodbye in the same reply:
    the call ends after it has been spoken."""
    context.end_call()
    return json.dumps({"ok": True, "note": "the call ends after this reply; say goodbye now"})


async def transfer(to: str, context: ToolContext) -> str:
    """Transfer the call to a person or another number.

    Args:
        to: the phone number or SIP address to transfer the call to
    """
    return await context.transfer(to)


def current_time() -> dict[str, str]:
    """The current local date and time, with the time zone."""
    now = datetime.datetime.now().astimezone()
    return {
        "iso": now.isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
        "timezone": now.tzname() or "",
    }


BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        tool_from_function(end_call, timeout=5.0),
        tool_from_function(transfer, timeout=10.0),
        tool_from_function(current_time, timeout=2.0),
    )
}
"""Tools named in YAML by their bare name."""
