"""A local OpenAI API: chat completions, speech and transcriptions over the real wire protocol.

The official ``openai`` SDK talks to it unchanged (``AsyncOpenAI(base_url=fake.base_url, ...)``), so
processors are tested through the same client, parser and error classes they use in production. The
wire format follows ``shared/reference/providers.md``; ``tests/test_fake_openai.py`` proves it with
the SDK.

The chat model can call tools: ``tool_calls`` (fixed, or computed from each request, e.g.
``when_asked(...)``: call when the user asks, answer once the results are back) stream as the real API
streams them, and a follow-up whose history is invalid (a call without its result, a result without
its call) is refused with the real API's 400, so a test sees exactly what a provider would reject.

Responses misbehave on request: ``Fault`` delays the first byte or every chunk, drops the connection,
breaks a chunk's JSON, stalls, or answers with an HTTP error. ``HttpFake`` (the server lifecycle,
request log and faulty streaming) is shared with the Gemini fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Self

import numpy as np
from aiohttp import BodyPartReader, web

STALL_LIMIT = 10.0
"""Seconds a stalled response waits for the client to hang up before the fake drops it itself."""


@dataclass(slots=True)
class Fault:
    """How one response misbehaves. Chunk indexes count the response's body chunks from 0."""

    first_byte_delay: float = 0.0  # seconds before the status line (a slow server)
    chunk_delay: float = 0.0  # seconds between body chunks
    disconnect_after: int | None = None  # drop the connection after this many chunks
    malformed_at: int | None = None  # replace this chunk with broken JSON
    stall_after: int | None = None  # stop sending after this many chunks until the client hangs up
    status: int | None = None  # answer with this HTTP error instead


@dataclass(slots=True)
class Exchange:
    """One request the fake received, and how its response ended."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]  # the JSON body, or the multipart fields other than files
    file: bytes | None = None  # an uploaded file's bytes
    filename: str | None = None
    outcome: str = "open"  # completed | client_closed | dropped | rejected
    chunks_sent: int = 0
    usage: dict[str, int] = field(default_factory=dict)  # token counts the fake reported
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def wait_finished(self, timeout: float = 5.0) -> str:
        """The outcome, once the response has ended one way or another."""
        await asyncio.wait_for(self.finished.wait(), timeout)
        return self.outcome


class HttpFake:
    """An aiohttp server on 127.0.0.1 with a request log and fault injection; use ``async with``.

    ``fault`` applies to every response; ``faults`` (a list) overrides it for the next responses,
    one entry each, so a test can break the first turn and let the second succeed.
    """

    def __init__(self, *, fault: Fault | None = None) -> None:
        self.fault = fault or Fault()  # what every response does unless ``faults`` says otherwise
        self.faults: list[Fault] = []  # one-shot faults, consumed in order by the next responses
        self.requests: list[Exchange] = []  # every request received, in order
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()
        self._closing = asyncio.Event()

    def routes(self) -> Iterable[web.RouteDef]:
        """The fake's endpoints."""
        return ()

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(list(self.routes()))
        # handler_cancellation: a client hanging up cancels the handler, as it would end a real stream.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 10.0)
            self._runner = None

    async def request(self, index: int = 0, timeout: float = 5.0) -> Exchange:
        """The ``index``-th request received, waiting for it to arrive."""

        async def arrived() -> Exchange:
            while len(self.requests) <= index:
                await self._arrived.wait()
            return self.requests[index]

        return await asyncio.wait_for(arrived(), timeout)

    def log(self, request: web.Request, body: dict[str, Any], **extra: Any) -> Exchange:
        """Record a request (called by every handler first)."""
        exchange = Exchange(path=request.path_qs, headers=dict(request.headers), body=body, **extra)
        self.requests.append(exchange)
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()
        return exchange

    def next_fault(self) -> Fault:
        """The fault for the response being started."""
        return self.faults.pop(0) if self.faults else self.fault

    async def stream(
        self,
        request: web.Request,
        exchange: Exchange,
        chunks: Iterable[bytes],
        fault: Fault,
        content_type: str,
        malformed: bytes = b"",
    ) -> web.StreamResponse:
        """Send ``chunks`` as a chunked body, misbehaving as ``fault`` says."""
        try:
            await asyncio.sleep(fault.first_byte_delay)
            response = web.StreamResponse(headers={"Content-Type": content_type})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for index, chunk in enumerate(chunks):
                if index == fault.disconnect_after:
                    return self._drop(request, exchange)
                if index == fault.stall_after:
                    await self._stall()
                    return self._drop(request, exchange)
                if index and fault.chunk_delay:
                    await asyncio.sleep(fault.chunk_delay)
                await response.write(malformed if index == fault.malformed_at else chunk)
                exchange.chunks_sent += 1
            if fault.stall_after is not None and fault.stall_after >= exchange.chunks_sent:
                await self._stall()
                return self._drop(request, exchange)
            await response.write_eof()
            exchange.outcome = "completed"
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            if exchange.outcome == "open":
                exchange.outcome = "client_closed"
            raise
        finally:
            exchange.finished.set()

    def reject(self, exchange: Exchange, status: int, payload: Any) -> web.Response:
        """An error response (logged as ``rejected``)."""
        exchange.outcome = "rejected"
        exchange.finished.set()
        return web.json_response(payload, status=status)

    def finish(self, exchange: Exchange, response: web.StreamResponse) -> web.StreamResponse:
        """Mark a complete non-streamed response."""
        exchange.outcome = "completed"
        exchange.finished.set()
        return response

    async def _stall(self) -> None:
        """Wait until the client hangs up (the handler is then cancelled), bounded by ``STALL_LIMIT``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), STALL_LIMIT)

    def _drop(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        """Close the socket mid-body: the client sees an incomplete chunked response."""
        exchange.outcome = "dropped"
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp treats a cancelled handler on a dead socket quietly


def split_words(text: str) -> list[str]:
    """``text`` in token-like pieces that concatenate back to it (``"Hi there"`` → ``"Hi", " there"``)."""
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) or ([text] if text else [])


def openai_error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    404: ("Not found.", "invalid_request_error", None),
    429: ("Rate limit reached for requests. Please try again in 20ms.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}

TRANSCRIBE_FORMATS = {"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm"}
SPEECH_RATE = 24000
"""``response_format="pcm"`` is 24 kHz signed 16-bit little-endian mono, no header."""

Reply = str | Callable[[dict[str, Any]], str]
"""A fixed reply, or one computed from the request body (echo the last user turn, say)."""


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    """A function call the fake's model makes. ``arguments`` is JSON text, streamed in fragments."""

    name: str
    arguments: str
    call_id: str = ""


ToolCalls = Iterable[FakeToolCall] | Callable[[dict[str, Any]], Iterable[FakeToolCall]]
"""Calls made in every reply, or computed from the request body (see ``when_asked``)."""


def when_asked(*calls: FakeToolCall) -> Callable[[dict[str, Any]], list[FakeToolCall]]:
    """A model that makes ``calls`` when the last message is the user's, and answers (no calls) once
    the results have come back: one tool round per user turn, as a real model mostly does."""

    def decide(body: dict[str, Any]) -> list[FakeToolCall]:
        messages = body.get("messages") or [{}]
        return list(calls) if messages[-1].get("role") == "user" else []

    return decide


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results at the end of a chat request (those the model is answering now)."""
    results: list[str] = []
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "tool":
            break
        results.insert(0, str(message.get("content")))
    return results


def history_problem(messages: list[Any]) -> tuple[str, str] | None:
    """(message, param) of the 400 the real API answers to an invalid tool-call history, or None.

    Every assistant message with ``tool_calls`` must be followed by one ``tool`` message per call id,
    and a ``tool`` message must answer a call of the assistant message before it.
    """
    open_calls: list[str] = []
    answered: set[str] = set()
    for index, message in enumerate([*messages, None]):  # None: the end also closes the last calls
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(message, dict) and role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls or call_id in answered:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'.",
                    f"messages.[{index}].role",
                )
            if not isinstance(message.get("content"), (str, list)):
                return ("Invalid type for 'content': expected a string.", f"messages.[{index}].content")
            answered.add(call_id)
            continue
        missing = [c for c in open_calls if c not in answered]
        if missing:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(missing),
                "messages",
            )
        open_calls, answered = [], set()
        if isinstance(message, dict) and role == "assistant":
            calls = message.get("tool_calls") or []
            if message.get("content") is None and not calls:
                return (
                    "Invalid value for 'content': expected a string, got null.",
                    f"messages.[{index}].content",
                )
            for call in calls:
                function = call.get("function") or {}
                if (
                    not call.get("id")
                    or not function.get("name")
                    or not isinstance(function.get("arguments"), str)
                ):
                    return (
                        "Missing required parameter: 'tool_calls.id/function'.",
                        f"messages.[{index}].tool_calls",
                    )
                open_calls.append(call["id"])
    return None


class FakeOpenAI(HttpFake):
    """``/v1/chat/completions``, ``/v1/audio/speech`` and ``/v1/audio/transcriptions``.

    The chat model answers ``reply`` (and makes ``tool_calls``), the speech endpoint synthesises a
    tone lasting ``seconds_per_char`` per input character, and the transcription endpoint
    "recognises" ``transcript``.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-fake-0123456789",
        reply: Reply = "Hello! How can I help you today?",
        tool_calls: ToolCalls = (),
        repeat_call_heads: bool = False,
        transcript: Reply = "hello world",
        seconds_per_char: float = 0.05,
        speech_chunk_bytes: int = 4801,
        leak_key: bool = False,
        models: Iterable[str] | None = None,
        fault: Fault | None = None,
    ) -> None:
        super().__init__(fault=fault)
        self.api_key = api_key  # the only key accepted
        self.reply = reply
        self.tool_calls = tool_calls if callable(tool_calls) else list(tool_calls)
        self.repeat_call_heads = repeat_call_heads  # id and name in every fragment, as llama.cpp's server
        self.transcript = transcript  # what any audio "says"; a callable gets the form fields
        self.seconds_per_char = seconds_per_char
        self.speech_chunk_bytes = speech_chunk_bytes  # odd by default: a sample straddles two chunks
        self.leak_key = leak_key  # echo a wrong key in full in the 401 (the real API masks it)
        self.models = set(models) if models is not None else None  # None: every model name exists

    @property
    def base_url(self) -> str:
        """What ``AsyncOpenAI(base_url=...)`` takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    def routes(self) -> Iterable[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/audio/speech", self._speech),
            web.post("/v1/audio/transcriptions", self._transcriptions),
        ]

    # --- chat ------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        exchange = self.log(request, body)
        refused = self._refusal(request, exchange)
        if refused is not None:
            return refused
        if not body.get("model") or not isinstance(body.get("messages"), list) or not body["messages"]:
            message = "you must provide a model parameter and a non-empty messages array"
            return self.reject(exchange, 400, openai_error(400, message, "invalid_request_error", None))
        invalid = history_problem(body["messages"])
        if invalid is not None:
            message, param = invalid
            return self.reject(
                exchange, 400, openai_error(400, message, "invalid_request_error", None, param)
            )
        unknown = self._unknown_model(exchange, body["model"])
        if unknown is not None:
            return unknown
        fault = self.next_fault()
        if fault.status:
            return self._status_error(exchange, fault.status)
        reply = self.reply(body) if callable(self.reply) else self.reply
        calls = self._tool_calls(body)
        pieces = split_words(reply)
        prompt_tokens = max(1, sum(len(json.dumps(m.get("content"))) for m in body["messages"]) // 4)
        completion_tokens = len(pieces) + sum(max(1, len(c.arguments) // 4) for c in calls)
        exchange.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        ident, model, created = f"chatcmpl-fake{len(self.requests)}", body["model"], int(time.time())
        if not body.get("stream"):
            return self.finish(
                exchange, web.json_response(self._completion(ident, model, created, reply, calls, exchange))
            )
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = [
            _sse(chunk)
            for chunk in self._chunks(ident, model, created, pieces, calls, exchange.usage if usage else None)
        ]
        chunks.append(b"data: [DONE]\n\n")
        broken = (
            b'data: {"id": "' + ident.encode() + b'", "object": "chat.completion.chunk", "choices": [{"de\n\n'
        )
        return await self.stream(request, exchange, chunks, fault, "text/event-stream; charset=utf-8", broken)

    def _tool_calls(self, body: dict[str, Any]) -> list[FakeToolCall]:
        """This reply's calls; those without an id get one unique in this fake's life."""
        calls = self.tool_calls(body) if callable(self.tool_calls) else self.tool_calls
        return [
            replace(call, call_id=call.call_id or f"call_fake{len(self.requests)}_{index}")
            for index, call in enumerate(calls)
        ]

    def _completion(
        self, ident: str, model: str, created: int, reply: str, calls: list[FakeToolCall], exchange: Exchange
    ) -> Any:
        message: dict[str, Any] = {"role": "assistant", "content": reply or None, "refusal": None}
        if calls:
            message["tool_calls"] = [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": exchange.usage,
            "system_fingerprint": "fp_fake",
        }

    def _chunks(
        self,
        ident: str,
        model: str,
        created: int,
        pieces: list[str],
        calls: list[FakeToolCall],
        usage: dict[str, int] | None,
    ) -> list[Any]:
        """The stream: role, content pieces, tool-call fragments, finish reason, then usage."""

        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> Any:
            choices = (
                []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            )
            out: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if usage is not None:
                out["usage"] = None
            return out

        # A reply that only calls tools opens with content null, as the real API's does.
        chunks = [
            chunk({"role": "assistant", "content": None if calls and not pieces else "", "refusal": None})
        ]
        chunks += [chunk({"content": piece}) for piece in pieces]
        for index, call in enumerate(calls):
            head = {"index": index, "id": call.call_id, "type": "function"}
            head["function"] = {"name": call.name, "arguments": ""}
            chunks.append(chunk({"tool_calls": [head]}))
            for start in range(0, len(call.arguments), 7):
                fragment: dict[str, Any] = {"index": index}
                if self.repeat_call_heads:
                    fragment |= {"id": call.call_id, "type": "function"}
                    fragment["function"] = {"name": call.name}
                fragment["function"] = fragment.get("function", {}) | {
                    "arguments": call.arguments[start : start + 7]
                }
                chunks.append(chunk({"tool_calls": [fragment]}))
        chunks.append(chunk({}, "tool_calls" if calls else "stop"))
        if usage is not None:
            last = chunk(None)
            last["usage"] = usage
            chunks.append(last)
        return chunks

    # --- speech ----------------------------------------------------------------------------------

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        exchange = self.log(request, body)
        refused = self._refusal(request, exchange)
        if refused is not None:
            return refused
        text, kind = body.get("input"), body.get("response_format", "mp3")
        if not body.get("model") or not body.get("voice") or not isinstance(text, str) or not text:
            message = "model, voice and a non-empty input are required"
            return self.reject(exchange, 400, openai_error(400, message, "invalid_request_error", None))
        if kind not in ("pcm", "wav"):
            message = f"the fake speaks pcm and wav only, not {kind!r}"
            return self.reject(
                exchange, 400, openai_error(400, message, "invalid_request_error", None, "response_format")
            )
        unknown = self._unknown_model(exchange, body["model"])
        if unknown is not None:
            return unknown
        fault = self.next_fault()
        if fault.status:
            return self._status_error(exchange, fault.status)
        audio = self.speech_pcm(text)
        if kind == "wav":
            audio = to_wav(audio, SPEECH_RATE)
        size = self.speech_chunk_bytes
        chunks = [audio[start : start + size] for start in range(0, len(audio), size)]
        content_type = "audio/pcm" if kind == "pcm" else "audio/wav"
        return await self.stream(request, exchange, chunks, fault, content_type, b"\x00")

    def speech_pcm(self, text: str) -> bytes:
        """The audio the fake speaks for ``text``: a 220 Hz tone, ``seconds_per_char`` per character."""
        count = round(SPEECH_RATE * self.seconds_per_char * len(text))
        phase = 2 * math.pi * 220 / SPEECH_RATE * np.arange(count)
        return bytes((np.sin(phase) * 8000).astype("<i2").tobytes())

    # --- transcriptions --------------------------------------------------------------------------

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        fields, upload, filename = await _multipart(request)
        exchange = self.log(request, fields, file=upload, filename=filename)
        refused = self._refusal(request, exchange)
        if refused is not None:
            return refused
        invalid = _invalid_upload(fields, upload, filename)
        if invalid:
            return self.reject(
                exchange, 400, openai_error(400, invalid, "invalid_request_error", "invalid_value", "file")
            )
        unknown = self._unknown_model(exchange, fields["model"])
        if unknown is not None:
            return unknown
        fault = self.next_fault()
        if fault.status:
            return self._status_error(exchange, fault.status)
        text = self.transcript(fields) if callable(self.transcript) else self.transcript
        model, kind = fields["model"], fields.get("response_format", "json")
        words = len(split_words(text))
        usage: dict[str, Any] = {
            "type": "tokens",
            "input_tokens": 50,
            "output_tokens": words,
            "total_tokens": 50 + words,
        }
        # whisper-1 cannot stream: the real API ignores stream=true for it and answers in one piece.
        if fields.get("stream") == "true" and model != "whisper-1":
            events: list[dict[str, Any]] = [
                {"type": "transcript.text.delta", "delta": piece, "logprobs": None}
                for piece in split_words(text)
            ]
            events.append({"type": "transcript.text.done", "text": text, "logprobs": None, "usage": usage})
            broken = b'data: {"type": "transcript.text.delta", "del\n\n'
            return await self.stream(
                request,
                exchange,
                [_sse(e) for e in events],
                fault,
                "text/event-stream; charset=utf-8",
                broken,
            )
        await asyncio.sleep(fault.first_byte_delay)
        if kind == "text":
            return self.finish(exchange, web.Response(text=text + "\n", content_type="text/plain"))
        if model == "whisper-1":
            payload: dict[str, Any] = {
                "text": text,
                "usage": {"type": "duration", "seconds": _duration(upload)},
            }
        else:
            payload = {"text": text, "usage": usage}
        return self.finish(exchange, web.json_response(payload))

    # --- shared ----------------------------------------------------------------------------------

    def _refusal(self, request: web.Request, exchange: Exchange) -> web.Response | None:
        """A 401 unless the request carries ``Authorization: Bearer <api_key>``."""
        auth = request.headers.get("Authorization", "")
        if auth == f"Bearer {self.api_key}":
            return None
        if not auth.startswith("Bearer ") or not auth[7:]:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return self.reject(exchange, 401, openai_error(401, message, "invalid_request_error", None))
        key = auth[7:]
        shown = key if self.leak_key else f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
        message = (
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return self.reject(
            exchange, 401, openai_error(401, message, "invalid_request_error", "invalid_api_key")
        )

    def _unknown_model(self, exchange: Exchange, model: str) -> web.Response | None:
        if self.models is None or model in self.models:
            return None
        message = f"The model `{model}` does not exist or you do not have access to it."
        return self.reject(
            exchange, 404, openai_error(404, message, "invalid_request_error", "model_not_found")
        )

    def _status_error(self, exchange: Exchange, status: int) -> web.Response:
        message, kind, code = _STATUS_ERRORS.get(status, ("Error.", "server_error", None))
        return self.reject(exchange, status, openai_error(status, message, kind, code))


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _multipart(request: web.Request) -> tuple[dict[str, Any], bytes | None, str | None]:
    """Form fields (repeated fields as lists), and the uploaded file's bytes and name."""
    fields: dict[str, Any] = {}
    upload: bytes | None = None
    filename: str | None = None
    if not request.content_type.startswith("multipart/"):
        return fields, upload, filename
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.filename is not None:
            upload, filename = bytes(await part.read()), part.filename
            continue
        value = await part.text()
        name = part.name.removesuffix("[]")
        if name in fields:
            previous = fields[name]
            fields[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[name] = [value] if part.name.endswith("[]") else value
    return fields, upload, filename


def _invalid_upload(fields: dict[str, Any], upload: bytes | None, filename: str | None) -> str:
    """What the real API would complain about in a transcription upload, or ""."""
    if not fields.get("model"):
        return "you must provide a model parameter"
    if upload is None or filename is None:
        return "you must provide a file"
    extension = filename.rpartition(".")[2].lower()
    if extension not in TRANSCRIBE_FORMATS:
        return f"Invalid file format. Supported formats: {sorted(TRANSCRIBE_FORMATS)}"
    if extension == "wav" and _duration(upload) <= 0:
        return "Audio file might be corrupted or unsupported"
    return ""


def _duration(upload: bytes | None) -> float:
    """Seconds of audio in a WAV upload (0 when it does not parse)."""
    try:
        with wave.open(io.BytesIO(upload or b""), "rb") as file:
            return file.getnframes() / file.getframerate()
    except (wave.Error, EOFError):
        return 0.0


def to_wav(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    """``pcm`` (s16le) in a WAV container."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm)
    return out.getvalue()


def wav_format(data: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, frames) of a WAV file's bytes."""
    with wave.open(io.BytesIO(data), "rb") as file:
        return file.getframerate(), file.getnchannels(), file.getnframes()
