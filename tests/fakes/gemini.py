"""A local Gemini API (``generateContent`` and ``streamGenerateContent``) over the real wire protocol.

``google-genai`` talks to it unchanged: ``genai.Client(api_key=..., http_options=HttpOptions(
base_url=fake.base_url))``. Bodies arrive camelCase with some nested keys snake_case, so the fake
reads both. Streams are SSE events ``data: <GenerateContentResponse>\\r\\n\\r\\n`` with no ``[DONE]``;
the last event carries ``finishReason`` and the full ``usageMetadata``. ``Fault`` knobs and the
request log come from ``HttpFake``.

Function calls arrive whole, several parts in one event (``args`` an object, ``id`` and a
``thoughtSignature`` only when the call sets them); ``function_calls`` may be computed from each
request (``when_asked``). A follow-up whose function-call turn is not answered by as many
``functionResponse`` parts, or (``require_signatures``) that drops a call's signature, gets the real
API's 400.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai import Exchange, Fault, HttpFake, Reply, split_words

__all__ = [
    "Exchange",
    "FakeFunctionCall",
    "FakeGemini",
    "Fault",
    "contents_text",
    "function_responses",
    "pick",
    "when_asked",
]

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_STATUS_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}


@dataclass(frozen=True, slots=True)
class FakeFunctionCall:
    """A function call the fake's model makes (Gemini sends each whole, in one part). ``call_id`` and
    ``thought_signature`` (base64 text, as thinking models send it) are left out when empty."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    call_id: str = ""
    thought_signature: str = ""


FunctionCalls = Iterable[FakeFunctionCall] | Callable[[dict[str, Any]], Iterable[FakeFunctionCall]]
"""Calls made in every reply, or computed from the request body."""


def pick(mapping: Any, camel: str) -> Any:
    """``mapping[camel]`` or its snake_case twin (the SDK sends some nested keys either way)."""
    if not isinstance(mapping, dict):
        return None
    if camel in mapping:
        return mapping[camel]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return mapping.get(snake)


def contents_text(content: Any) -> str:
    """The text parts of one ``Content`` joined."""
    parts = pick(content, "parts") or []
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def function_responses(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``functionResponse`` parts of the request's last turn (those the model answers now)."""
    contents = pick(body, "contents") or [{}]
    parts = pick(contents[-1], "parts") or []
    return [pick(p, "functionResponse") for p in parts if pick(p, "functionResponse") is not None]


def when_asked(*calls: FakeFunctionCall) -> Callable[[dict[str, Any]], list[FakeFunctionCall]]:
    """A model that makes ``calls`` when the last turn is the user's words, and answers (no calls)
    once the function responses have come back."""

    def decide(body: dict[str, Any]) -> list[FakeFunctionCall]:
        return [] if function_responses(body) else list(calls)

    return decide


def history_problem(contents: list[Any], signatures: dict[str, str]) -> str:
    """The 400 message the real API gives an invalid function-calling history, or "".

    A model turn with ``functionCall`` parts must be followed by a user turn with as many
    ``functionResponse`` parts; those must follow such a turn; a call sent with a thought signature
    (``signatures``: signature by call name and arguments) must be echoed with it.
    """
    expected = 0
    for content in [*contents, None]:
        parts = [p for p in (pick(content, "parts") or []) if isinstance(p, dict)]
        responses = [p for p in parts if pick(p, "functionResponse") is not None]
        if len(responses) != expected:
            return (
                "Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn."
            )
        calls = [p for p in parts if pick(p, "functionCall") is not None]
        for part in calls:
            signature = signatures.get(_call_key(pick(part, "functionCall")))
            if signature and pick(part, "thoughtSignature") != signature:
                name = pick(part, "functionCall").get("name")
                return (
                    f"Function call is missing a thought_signature in functionCall parts. This is required "
                    f"for tools to work correctly. Additional data, function call `default_api:{name}`."
                )
        expected = len(calls)
    return ""


def _call_key(call: Any) -> str:
    return json.dumps([pick(call, "name"), pick(call, "args") or {}], sort_keys=True)


class FakeGemini(HttpFake):
    """``POST /{v1,v1beta}/models/{model}:streamGenerateContent`` and ``:generateContent``.

    The model answers ``reply`` in pieces of ``words_per_chunk`` words, then makes ``function_calls``.
    """

    def __init__(
        self,
        *,
        api_key: str = "AIza-fake-0123456789",
        reply: Reply = "Hello! How can I help you today?",
        function_calls: FunctionCalls = (),
        require_signatures: bool = False,
        words_per_chunk: int = 3,
        models: Iterable[str] | None = None,
        fault: Fault | None = None,
    ) -> None:
        super().__init__(fault=fault)
        self.api_key = api_key  # the only key accepted
        self.reply = reply  # a callable gets the request body
        self.function_calls = function_calls if callable(function_calls) else list(function_calls)
        self.require_signatures = require_signatures  # a thinking model: signatures must come back
        self.signatures: dict[str, str] = {}  # signature of each call sent, by name and arguments
        self.words_per_chunk = words_per_chunk
        self.models = set(models) if models is not None else None  # None: every model name exists

    @property
    def base_url(self) -> str:
        """What ``HttpOptions(base_url=...)`` takes."""
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> Iterable[web.RouteDef]:
        return [web.post("/{version}/models/{target}", self._models)]

    async def _models(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        exchange = self.log(request, body if isinstance(body, dict) else {})
        model, _, method = request.match_info["target"].partition(":")
        version = request.match_info["version"]
        if version not in ("v1", "v1beta", "v1alpha") or method not in (
            "generateContent",
            "streamGenerateContent",
        ):
            return self._error(exchange, 404, f"Method not found: {version}/models/{model}:{method}")
        refused = self._refusal(request, exchange)
        if refused is not None:
            return refused
        if self.models is not None and model not in self.models:
            message = (
                f"models/{model} is not found for API version {version}, or is not supported for {method}."
            )
            return self._error(exchange, 404, message)
        if body is None:
            return self._error(exchange, 400, "Invalid JSON payload received.")
        if not pick(body, "contents"):
            return self._error(
                exchange, 400, "* GenerateContentRequest.contents: contents is not specified\n"
            )
        invalid = history_problem(pick(body, "contents"), self.signatures if self.require_signatures else {})
        if invalid:
            return self._error(exchange, 400, invalid)
        fault = self.next_fault()
        if fault.status:
            return self._error(exchange, fault.status, _STATUS_MESSAGES.get(fault.status, "Error."))
        responses = self._responses(body, model, exchange)
        if method == "generateContent":
            await asyncio.sleep(fault.first_byte_delay)
            return self.finish(exchange, web.json_response(_merged(responses)))
        if request.query.get("alt") != "sse":
            # Without alt=sse the API streams one JSON array; the fake sends it whole.
            return self.finish(exchange, web.json_response(responses))
        chunks = [b"data: " + json.dumps(r).encode() + b"\r\n\r\n" for r in responses]
        broken = b'data: {"candidates": [{"content": {"parts": [{"tex\r\n\r\n'
        return await self.stream(request, exchange, chunks, fault, "text/event-stream", broken)

    def _responses(self, body: dict[str, Any], model: str, exchange: Exchange) -> list[dict[str, Any]]:
        """The stream's events: text in pieces, function calls, then the finish reason and usage."""
        reply = self.reply(body) if callable(self.reply) else self.reply
        words = split_words(reply)
        step = max(1, self.words_per_chunk)
        pieces = ["".join(words[i : i + step]) for i in range(0, len(words), step)]
        parts: list[list[dict[str, Any]]] = [[{"text": piece}] for piece in pieces]
        calls = list(self.function_calls(body) if callable(self.function_calls) else self.function_calls)
        if calls:  # every call of the reply in one event, as the real API sends them
            parts.append([self._call_part(call) for call in calls])
        if not parts:
            parts = [[{"text": ""}]]
        prompt = sum(len(contents_text(c)) for c in pick(body, "contents") or []) // 4 + 1
        system = pick(body, "systemInstruction")
        prompt += len(contents_text(system)) // 4 if system else 0
        candidates = max(1, len(words)) + 5 * len(calls)
        exchange.usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates,
        }
        responses = []
        for index, part in enumerate(parts):
            candidate: dict[str, Any] = {"content": {"parts": part, "role": "model"}, "index": 0}
            usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            if index == len(parts) - 1:
                candidate["finishReason"] = "STOP"
                usage = dict(exchange.usage)
                usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
            responses.append(
                {
                    "candidates": [candidate],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": f"fake-response-{len(self.requests)}",
                }
            )
        return responses

    def _call_part(self, call: FakeFunctionCall) -> dict[str, Any]:
        function: dict[str, Any] = {"name": call.name, "args": call.args}
        if call.call_id:
            function["id"] = call.call_id
        part: dict[str, Any] = {"functionCall": function}
        if call.thought_signature:
            part["thoughtSignature"] = call.thought_signature
            self.signatures[_call_key(function)] = call.thought_signature
        return part

    def _refusal(self, request: web.Request, exchange: Exchange) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key == self.api_key:
            return None
        if not key:
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            return self._error(exchange, 403, message)
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
        return self._error(exchange, 400, "API key not valid. Please pass a valid API key.", details)

    def _error(
        self, exchange: Exchange, code: int, message: str, details: list[Any] | None = None
    ) -> web.Response:
        error: dict[str, Any] = {
            "code": code,
            "message": message,
            "status": _STATUS_NAMES.get(code, "UNKNOWN"),
        }
        if details:
            error["details"] = details
        return self.reject(exchange, code, {"error": error})


def _merged(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """One non-streamed response holding every streamed part."""
    parts: list[dict[str, Any]] = []
    for response in responses:
        for part in response["candidates"][0]["content"]["parts"]:
            if "text" in part and parts and "text" in parts[-1]:
                parts[-1] = {"text": parts[-1]["text"] + part["text"]}
            else:
                parts.append(part)
    last = responses[-1]
    candidate = dict(last["candidates"][0], content={"parts": parts, "role": "model"})
    return dict(last, candidates=[candidate])
