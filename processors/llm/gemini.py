"""``llm.gemini``: chat replies from Google Gemini through the official ``google-genai`` SDK.

::

    llm:
      type: llm.gemini
      api_key: ${GEMINI_API_KEY}
      model: gemini-2.5-flash

The history maps onto Gemini's form: the system prompt becomes the ``system_instruction``, user turns
stay ``user`` and assistant turns become ``model``. Replies stream (``generate_content_stream``).
Thinking is off by default (``thinking_budget: 0``): it delays the first word, which a voice
conversation cannot afford.

Tools (see ``processors.llm.tools``) are declared as ``FunctionDeclaration`` objects (JSON schemas, never
Python callables: those would make the SDK run functions itself). Gemini sends each call whole, with
``args`` an object and often no id (one is made up then, and never sent back). The calls of a reply
are collected over all its events and handed to the base at the end. In a follow-up the assistant's
calls go back as the model's *own* parts, kept per call id (a bounded map), so a thinking model gets
its ``thoughtSignature`` back; the results follow as one ``user`` turn of ``functionResponse`` parts
in call order, each response a JSON object in the keys Gemini documents (``response_object``): a
failure as ``{"error": message}``, any other result as ``{"output": value}``. ``function_declaration``
and ``response_object`` are shared with ``s2s.gemini``, so a tool looks and answers the same on both.

A rejected key or unknown model ends the graph; a dropped or garbled stream fails that turn only.
The stream is read by a task a few chunks ahead: the SDK closes its HTTP connection only when a read
is cancelled, so closing the reply (a barge-in) cancels that task and the server stops generating.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from pipeline.errors import FatalProcessorError, Problem
from pipeline.params import hide_secret_params, param
from processors.llm.base import ChatLLM, ChatParams, ToolCall
from processors.llm.openai import key_problems, record_usage

if TYPE_CHECKING:
    from google import genai
    from google.genai import types

__all__ = ["GEMINI_KEY_VARIABLE", "GeminiLLM", "GeminiLLMParams", "function_declaration", "response_object"]

GEMINI_KEY_VARIABLE = "GEMINI_API_KEY"
GEMINI_URL = "https://generativelanguage.googleapis.com"
READ_AHEAD = 32
"""Chunks the reader task may get ahead of the consumer (a few sentences)."""
REMEMBERED_CALLS = 64
"""Function-call parts kept to echo in follow-ups (a few turns' worth; older calls are rebuilt)."""
MADE_UP_ID = "gemini-local-"
"""Prefix of the ids given to calls Gemini sent without one; those are never sent back."""


@dataclass(slots=True, kw_only=True)
class GeminiLLMParams(ChatParams):
    """Model and server of an ``llm.gemini`` node."""

    api_key: str = param(doc="API key: write ${GEMINI_API_KEY}", secret=True)
    model: str = param("gemini-2.5-flash", doc="Gemini model name")
    base_url: str | None = param(None, doc="API endpoint; null = Google's")
    api_version: str | None = param(None, doc="API version (v1, v1beta); null = the SDK's default")
    thinking_budget: int | None = param(
        0, doc="tokens the model may think before answering; 0 = off (2.5 Pro needs >= 128); null = default"
    )
    max_retries: int = param(
        2, ge=0, doc="retries of a failed request (connection errors, 429, 5xx) before it fails"
    )
    timeout: float = param(30.0, gt=0, doc="seconds a whole request may take, stream included")


class GeminiLLM(ChatLLM):
    """Streams ``generate_content`` replies through ``google-genai``'s async client."""

    Params: ClassVar[type[Any]] = GeminiLLMParams
    params: GeminiLLMParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # totals over the session
        self._client: genai.Client | None = None
        self._call_parts: OrderedDict[str, types.Part] = OrderedDict()  # the model's own, by call id

    def check(self) -> list[Problem]:
        return [*super().check(), *key_problems(self.params.api_key, GEMINI_KEY_VARIABLE, self.name)]

    async def on_start(self) -> None:
        from google import genai
        from google.genai import types

        p = self.params
        http = types.HttpOptions(
            base_url=p.base_url,
            api_version=p.api_version,
            timeout=int(p.timeout * 1000),
            # Explicit retry options also turn off the SDK's own 1-10 s sleep-and-retry on connection errors.
            retry_options=types.HttpRetryOptions(attempts=p.max_retries + 1),
        )
        self._client = genai.Client(api_key=p.api_key, http_options=http)

    async def on_stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        assert self._client is not None, "on_start has not run"
        system, contents = _contents(messages, self._call_parts)
        items: asyncio.Queue[str | ToolCall | _Finished] = asyncio.Queue(maxsize=READ_AHEAD)
        # The SDK's stream only lets go of its connection when cancelled mid-read (closing it leaves
        # an inner generator holding it), so a task reads and this generator cancels it when closed.
        reader = asyncio.create_task(
            self._read(contents, self._config(system), items), name=f"read:{self.name}"
        )
        try:
            while not isinstance(item := await items.get(), _Finished):
                yield item
            if item.error is not None:
                self._raise_explained(item.error)
        finally:
            reader.cancel()
            await asyncio.wait({reader})

    async def _read(
        self, contents: list[types.Content], config: types.GenerateContentConfig, items: asyncio.Queue[Any]
    ) -> None:
        """Put the reply's text chunks on ``items``, its tool calls once it has ended, then how the
        stream ended."""
        assert self._client is not None
        calls: list[ToolCall] = []
        try:
            stream = await self._client.aio.models.generate_content_stream(
                model=self.params.model, contents=contents, config=config
            )
            async for response in stream:  # the request goes out on the first iteration
                for item in self._items(response):
                    if isinstance(item, ToolCall):
                        calls.append(item)
                    else:
                        await items.put(item)
            for call in calls:
                await items.put(call)
        except Exception as error:
            await items.put(_Finished(error))
        else:
            await items.put(_Finished())

    def _config(self, system: str) -> types.GenerateContentConfig:
        from google.genai import types

        p = self.params
        config = types.GenerateContentConfig(
            system_instruction=system or None,
            temperature=p.temperature,
            max_output_tokens=p.max_tokens,
        )
        if self.tool_schemas:
            declarations = [function_declaration(schema) for schema in self.tool_schemas]
            config.tools = [types.Tool(function_declarations=declarations)]
            config.automatic_function_calling = types.AutomaticFunctionCallingConfig(disable=True)
        if p.thinking_budget is not None:
            config.thinking_config = types.ThinkingConfig(thinking_budget=p.thinking_budget)
        return config

    def _items(self, response: types.GenerateContentResponse) -> list[str | ToolCall]:
        """Reply text and tool calls of one streamed response; the last one's usage is recorded."""
        items: list[str | ToolCall] = []
        for candidate in (response.candidates or [])[:1]:
            for part in (candidate.content.parts if candidate.content else None) or []:
                if part.function_call is not None:
                    items.append(self._remember(part, part.function_call))
                elif part.text and not part.thought:
                    items.append(part.text)
        usage = response.usage_metadata
        if usage is not None and response.candidates and response.candidates[0].finish_reason is not None:
            record_usage(self, usage.prompt_token_count, usage.candidates_token_count)
        return items

    def _remember(self, part: types.Part, call: types.FunctionCall) -> ToolCall:
        """The tool call of a ``functionCall`` part; the part is kept to be echoed in the follow-up."""
        call_id = call.id or f"{MADE_UP_ID}{uuid.uuid4().hex[:16]}"
        self._call_parts[call_id] = part
        while len(self._call_parts) > REMEMBERED_CALLS:
            self._call_parts.popitem(last=False)
        return ToolCall(call_id, call.name or "", json.dumps(call.args or {}, ensure_ascii=False))

    def _raise_explained(self, error: Exception) -> NoReturn:
        """Raise ``error`` in the words of this node: configuration mistakes end the graph with a clear
        message (the key masked, no SDK traceback); others fail the turn."""
        import aiohttp
        from google.genai import errors

        where = self.params.base_url or GEMINI_URL
        if isinstance(error, aiohttp.ClientError):
            raise ConnectionError(f"connection to {where} failed: {error}") from error
        if isinstance(error, errors.UnknownApiResponseError):
            raise ValueError(f"unreadable event in the reply stream from {where}: {error}") from error
        if not isinstance(error, errors.APIError):
            raise error
        said = hide_secret_params(str(error.message or error), self.params)
        if error.code in (401, 403) or "API_KEY_INVALID" in str(error.details):
            raise FatalProcessorError(
                f"{where} rejected the API key (HTTP {error.code}): check {GEMINI_KEY_VARIABLE} ({said})"
            ) from None
        if error.code == 404:
            raise FatalProcessorError(
                f"{where}: model '{self.params.model}' not found (HTTP 404): {said}"
            ) from None
        raise error


@dataclass(slots=True, frozen=True)
class _Finished:
    """The end of a reply stream, and the error that ended it if any."""

    error: Exception | None = None


def _contents(
    messages: list[dict[str, Any]], call_parts: dict[str, types.Part]
) -> tuple[str, list[types.Content]]:
    """(system instruction, Gemini contents) of an OpenAI-form chat. Assistant tool calls become the
    model's own parts (``call_parts``, by call id) or, when no longer kept, parts rebuilt from the
    call; the ``tool`` messages after them become one user turn of function responses."""
    from google.genai import types

    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    contents: list[types.Content] = []
    names: dict[str, str] = {}  # call id -> function name, for the responses
    answering = False  # the last content is a user turn of function responses
    for message in messages:
        role, text = message["role"], message.get("content")
        if role == "tool":
            call_id = str(message.get("tool_call_id"))
            part = types.Part.from_function_response(
                name=names.get(call_id, ""), response=response_object(str(text or ""))
            )
            if part.function_response is not None and not call_id.startswith(MADE_UP_ID):
                part.function_response.id = call_id  # echo the provider's own id
            if answering and contents[-1].parts is not None:
                contents[-1].parts.append(part)
            else:
                contents.append(types.Content(role="user", parts=[part]))
                answering = True
            continue
        answering = False
        if role == "user" and text:
            contents.append(types.Content(role="user", parts=[types.Part(text=text)]))
        elif role == "assistant":
            parts = [types.Part(text=text)] if text else []
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                names[call["id"]] = function.get("name", "")
                parts.append(call_parts.get(call["id"]) or _rebuilt_call(call["id"], function))
            if parts:
                contents.append(types.Content(role="model", parts=parts))
    return system, contents


def _rebuilt_call(call_id: str, function: dict[str, Any]) -> types.Part:
    """A ``functionCall`` part from an OpenAI-form call (its original part is no longer kept)."""
    from google.genai import types

    try:
        args = json.loads(function.get("arguments") or "{}")
    except ValueError:
        args = {}
    made_up = call_id.startswith(MADE_UP_ID)
    call = types.FunctionCall(
        id=None if made_up else call_id,
        name=function.get("name", ""),
        args=args if isinstance(args, dict) else {},
    )
    return types.Part(function_call=call)


def response_object(result_text: str) -> dict[str, Any]:
    """The ``FunctionResponse.response`` of a tool's result text, in the keys Gemini documents: a failure
    (the ``{"error": message}`` a tool fault becomes) stays as it is; any other result, object or not,
    is the ``output`` (so a result's own ``error`` or ``output`` field is never misread)."""
    try:
        value = json.loads(result_text)
    except ValueError:
        value = result_text
    if isinstance(value, dict) and set(value) == {"error"}:
        return value
    return {"output": value}


def function_declaration(schema: dict[str, Any]) -> types.FunctionDeclaration:
    """The ``FunctionDeclaration`` of one tool schema in OpenAI's form (``{"type": "function",
    "function": {...}}``, or the inner function object), its parameters kept as JSON schema."""
    from google.genai import types

    function = schema.get("function", schema)
    declaration = types.FunctionDeclaration(name=function["name"], description=function.get("description"))
    if function.get("parameters"):
        declaration.parameters_json_schema = function["parameters"]
    return declaration
