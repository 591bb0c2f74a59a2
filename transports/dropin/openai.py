"""OpenAI's audio and chat endpoints served from Voxgraph engines (``/v1/...``).

A config with an ``openai.api`` node (``transports.dropin.openai_node``) gets these routes, answered
by the config's own engine nodes, so a client written for OpenAI runs unchanged against the server
(``OpenAI(base_url="http://host:8000/v1", api_key=...)``):

* ``POST /v1/audio/transcriptions``: a multipart upload (any format libsndfile or FFmpeg reads, up to
  ``max_upload_bytes``, else 413) transcribed by the recogniser node; ``response_format`` json, text,
  verbose_json (segments, and words with ``timestamp_granularities[]=word``), srt or vtt;
  ``stream=true`` sends ``transcript.text.delta`` events as each piece (up to 28 s, cut at a pause)
  is transcribed, then ``transcript.text.done`` (not for ``whisper-1``, as OpenAI does).
* ``POST /v1/audio/speech``: ``input`` spoken by the TTS node, sentence by sentence, streamed as it is
  made (chunked), at 24 kHz mono: ``mp3`` (OpenAI's default), ``opus``, ``aac``, ``flac``, ``wav`` or
  ``pcm`` (s16le). Every OpenAI voice name is served; ``speed`` and ``instructions`` are not applied.
* ``POST /v1/chat/completions``: the LLM node answers the messages as given, streamed (SSE chunks,
  ``data: [DONE]``, a usage chunk with ``stream_options.include_usage``) or whole;
  ``max_completion_tokens`` / ``max_tokens`` and ``temperature`` apply to the request.
* ``GET /v1/models``: what is served.

The same access rules as the rest of the API (``Authorization: Bearer KEY`` with ``auth: api_key``).
Admission is the server's: while models load, while draining, or while the server is full (as a new
conversation would be refused), a request gets 503 with ``Retry-After``; an engine whose waiting line
(``max_waiting``, counted from a request's arrival: an upload being read waits too) is full answers 429
with ``Retry-After``, before the body is read; errors are in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. A drain lets requests in flight finish (until the
drain's deadline). A client that stops reading a streamed answer is dropped once a write has waited
``server.send_timeout`` seconds, so it cannot keep an engine from the requests behind it.
Prometheus: ``voxgraph_openai_requests{endpoint,status}``,
``voxgraph_openai_request_seconds{endpoint}``, ``voxgraph_openai_first_byte_seconds{endpoint}`` and
``voxgraph_openai_requests_active{endpoint}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import BodyPartReader, web
from prometheus_client import Counter, Gauge, Histogram

from pipeline.errors import VoxgraphError
from pipeline.resampling import Int16Resampler
from pipeline.utterances import Utterance
from processors.llm.streams import closing_stream
from processors.stt.segmented import SILENCE_PEAK
from processors.tts.sentences import SentenceChunker
from transports.dropin import openai_wire as wire
from transports.dropin.openai_audio import (
    COMPRESSED,
    RATE,
    AudioUploadError,
    CompressedAudio,
    Piece,
    decode_upload,
    pieces,
    streamed_wav_header,
)
from transports.dropin.openai_engines import Engine, EngineBusy, Engines
from transports.dropin.openai_node import OpenAIApi, OpenAIApiParams

if TYPE_CHECKING:
    from transports.websocket.server import VoiceServer

__all__ = ["add_openai_routes", "openai_api"]

log = logging.getLogger("transports.dropin.openai")

SPEECH_RATE = 24000
"""OpenAI's pcm and wav speech: 24 kHz 16-bit mono."""
RETRY_AFTER_BUSY = 1
"""Seconds a client refused by a full waiting line is asked to wait."""
RETRY_AFTER_LOADING = 5
STOP_WAIT = 5.0
"""Seconds requests cut off at shutdown get to end."""
MAX_SPEECH_BODY = 256 * 1024
"""Largest speech request body (its input is at most ``max_speech_chars``)."""
MAX_FIELD_BYTES = 64 * 1024
"""Most bytes of the multipart fields other than the file (a prompt, say), together."""
UPLOAD_FORMATS = "wav, flac, mp3, ogg, m4a, mp4, mpeg, mpga, webm"
"""What an upload may be (libsndfile's formats, then FFmpeg's)."""
TIMING_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
NO_STORE = {"Cache-Control": "no-store"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Sender = Callable[[bytes | None], Awaitable[None]]


class ClientStalled(VoxgraphError, ConnectionResetError):
    """The client stopped reading a streamed response for longer than the server's ``send_timeout``."""


def openai_api(server: VoiceServer) -> OpenAIApiParams | None:
    """The params of the config's ``openai.api`` node, or None when the config serves no OpenAI routes."""
    for processor in server.compiled.processors.values():
        if isinstance(processor, OpenAIApi):
            return processor.params
    return None


def add_openai_routes(app: web.Application, server: VoiceServer) -> None:
    """Add the OpenAI routes to ``app`` if ``server``'s config serves them."""
    params = openai_api(server)
    if params is None:
        return
    routes = OpenAIRoutes(server, params)
    app.on_startup.append(lambda _: routes.start())
    app.on_shutdown.append(lambda _: routes.finish())
    app.on_cleanup.append(lambda _: routes.engines.stop())
    endpoints = routes.endpoints
    if "transcriptions" in endpoints:
        app.router.add_post(
            "/v1/audio/transcriptions", routes.handler("transcriptions", routes.transcriptions)
        )
    if "speech" in endpoints:
        app.router.add_post("/v1/audio/speech", routes.handler("speech", routes.speech))
    if "chat" in endpoints:
        app.router.add_post("/v1/chat/completions", routes.handler("chat", routes.chat))
    app.router.add_get("/v1/models", routes.handler("models", routes.models))


class RouteMetrics:
    """The routes' figures, in the server's Prometheus registry (labels: the four endpoints, statuses)."""

    def __init__(self, server: VoiceServer) -> None:
        registry = server.metrics.registry
        self.requests = Counter(
            "voxgraph_openai_requests",
            "OpenAI-compatible requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "voxgraph_openai_request_seconds",
            "Time to answer an OpenAI-compatible request in full.",
            ["endpoint"],
            buckets=TIMING_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            "voxgraph_openai_first_byte_seconds",
            "From a request's arrival to its first transcript piece, audio byte or token.",
            ["endpoint"],
            buckets=TIMING_BUCKETS,
            registry=registry,
        )
        self.active = Gauge(
            "voxgraph_openai_requests_active",
            "OpenAI-compatible requests being answered now (waiting for an engine included).",
            ["endpoint"],
            registry=registry,
        )


class OpenAIRoutes:
    """The handlers of one server's OpenAI routes."""

    def __init__(self, server: VoiceServer, params: OpenAIApiParams) -> None:
        self.server = server
        self.params = params
        api = next(p for p in server.compiled.processors.values() if isinstance(p, OpenAIApi))
        self.endpoints = api.endpoints()
        routed = dict(self.endpoints)  # endpoint, or ``voice:<name>`` -> the node answering it
        if "speech" in self.endpoints:
            routed |= {f"voice:{voice}": self.endpoints["speech"] for voice in wire.OPENAI_VOICES}
        routed |= {f"voice:{voice}": node for voice, node in params.voices.items()}
        self.engines = Engines(server.compiled, routed, params.max_waiting)
        self.voices = sorted(
            (wire.OPENAI_VOICES if "speech" in self.endpoints else set()) | set(params.voices)
        )
        self.metrics = RouteMetrics(server)
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.engines.start()

    async def finish(self) -> None:
        """At shutdown: let requests in flight finish until the drain's deadline, then cut them off."""
        tasks = {t for t in self._in_flight if t is not asyncio.current_task()}
        if not tasks:
            return
        left = self.server.load().get("drain_left_s") or 0
        if left > 0:
            await asyncio.wait(tasks, timeout=left)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_WAIT)

    def handler(self, endpoint: str, serve: Handler) -> Handler:
        """``serve`` with admission, OpenAI-shaped errors, drain tracking and metrics around it."""

        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            self.metrics.active.labels(endpoint).inc()
            status = 500
            try:
                refused = self._unavailable() if endpoint != "models" else None
                response = refused or await serve(request)
                status = response.status
                return response
            except wire.RequestError as error:
                status = error.status
                return web.json_response(error.body(), status=error.status, headers=NO_STORE)
            except EngineBusy:
                status = 429
                waiting = self.params.max_waiting
                message = f"the {endpoint} engine is busy and {waiting} requests wait for it; retry shortly"
                body = wire.error_body(message, "requests", "rate_limit_exceeded")
                return web.json_response(
                    body, status=429, headers={"Retry-After": str(RETRY_AFTER_BUSY), **NO_STORE}
                )
            except ConnectionResetError:  # the client hung up or stalled mid-answer: its turn has ended
                status = 499
                return web.Response(status=499)  # aiohttp finds the connection closed and lets it go
            except asyncio.CancelledError:
                status = 499  # the server stopped
                raise
            finally:
                if task is not None:
                    self._in_flight.discard(task)
                self.metrics.active.labels(endpoint).dec()
                self.metrics.requests.labels(endpoint, str(status)).inc()
                self.metrics.seconds.labels(endpoint).observe(time.perf_counter() - started)

        return handle

    def _unavailable(self) -> web.Response | None:
        """503 in OpenAI's shape while the server refuses new work (loading, draining, full), or while
        the routes' engines are not started; else None."""
        refused = self.server.unavailable()
        if refused is not None:
            said = json.loads(refused.text or "{}")
            body = wire.error_body(
                str(said.get("error", "unavailable")), "server_error", str(said.get("reason", ""))
            )
            retry = {"Retry-After": refused.headers.get("Retry-After", str(RETRY_AFTER_LOADING))}
            return web.json_response(body, status=503, headers={**retry, **NO_STORE})
        if not self.engines.ready.is_set():
            body = wire.error_body(
                "the server is loading models; try again shortly", "server_error", "loading"
            )
            return web.json_response(
                body, status=503, headers={"Retry-After": str(RETRY_AFTER_LOADING), **NO_STORE}
            )
        if self.engines.failure is not None:
            message = "an engine failed to start; the server's log says why"  # it may name paths
            body = wire.error_body(message, "server_error", "engine_failed")
            return web.json_response(body, status=503, headers=NO_STORE)
        return None

    # --- GET /v1/models ----------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        created = wire.now()
        data = [
            {"id": node, "object": "model", "created": created, "owned_by": f"voxgraph:{endpoint}"}
            for endpoint, node in self.endpoints.items()
        ]
        return web.json_response({"object": "list", "data": data}, headers=NO_STORE)

    # --- POST /v1/audio/transcriptions -------------------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        limit = self.params.max_upload_bytes
        if (request.content_length or 0) > limit + 2 * MAX_FIELD_BYTES:
            raise wire.RequestError(413, f"the upload is larger than {limit} bytes", param="file")
        engine = self._engine("transcriptions")
        with engine.admitted():  # from before the upload is read and decoded: a burst waits in line too
            return await self._transcribe(request, engine, started)

    async def _transcribe(self, request: web.Request, engine: Engine, started: float) -> web.StreamResponse:
        fields, upload = await _read_multipart(request, self.params.max_upload_bytes)
        transcription = wire.parse_transcription(fields)
        if upload is None:
            raise wire.RequestError(400, "you must provide a file", param="file")
        model = getattr(engine.defaults, "model", "")
        if isinstance(model, str) and model.endswith(".en") and transcription.language not in (None, "en"):
            raise wire.RequestError(
                400, f"this server's model ({model}) understands English only", param="language"
            )
        try:
            samples = await asyncio.to_thread(decode_upload, upload, self.params.max_audio_seconds)
        except AudioUploadError as error:
            message = f"Invalid file format: {error}. Supported formats: {UPLOAD_FORMATS}"
            raise wire.RequestError(400, message, param="file") from None
        duration = len(samples) / RATE
        settings = {
            "language": transcription.language,
            "initial_prompt": transcription.prompt,
            "word_timestamps": True
            if transcription.response_format in ("verbose_json", "srt", "vtt")
            else None,
        }
        async with engine.serving(**settings) as stt:
            if transcription.stream:
                return await self._stream_transcript(request, stt, samples, duration, started)
            texts, segments, language = [], [], None
            async with contextlib.aclosing(_transcribed(stt, samples)) as results:
                async for piece, result in results:
                    texts.append(result.text)
                    segments += wire.segments_of(result.text, piece.start, piece.end, result.words)
                    language = language or result.language
        self.metrics.first_byte.labels("transcriptions").observe(time.perf_counter() - started)
        content_type, body = wire.transcription_response(
            transcription, " ".join(texts), segments, duration, language
        )
        return web.Response(text=body, headers={"Content-Type": content_type, **NO_STORE})

    async def _stream_transcript(
        self, request: web.Request, stt: Any, samples: np.ndarray[Any, Any], duration: float, started: float
    ) -> web.StreamResponse:
        response = _event_stream()
        await response.prepare(request)
        send = self._sender(request, response)
        texts: list[str] = []
        async with contextlib.aclosing(_transcribed(stt, samples)) as results:
            async for _, result in results:
                if not texts:
                    self.metrics.first_byte.labels("transcriptions").observe(time.perf_counter() - started)
                delta = (" " if texts else "") + result.text
                texts.append(result.text)
                await send(wire.sse(wire.transcript_delta(delta)))
        await send(wire.sse(wire.transcript_done(" ".join(texts), duration)))
        await send(None)
        return response

    # --- POST /v1/audio/speech ---------------------------------------------------------------------

    async def speech(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await _json_body(request, MAX_SPEECH_BODY)
        speech = wire.parse_speech(body, self.voices, self.params.max_speech_chars)
        engine = self._engine(f"voice:{speech.voice}")
        with engine.admitted():
            async with engine.serving() as tts:
                return await self._speak(request, tts, speech.text, speech.response_format, started)

    async def _speak(
        self, request: web.Request, tts: Any, text: str, kind: str, started: float
    ) -> web.StreamResponse:
        """``text`` spoken in ``kind``, streamed as it is made (in the engine's turn: the muxer, made
        here and closed whatever happens, lives no longer than the request)."""
        content_type = COMPRESSED[kind][2] if kind in COMPRESSED else f"audio/{kind}"
        response = web.StreamResponse(headers={"Content-Type": content_type, **NO_STORE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        send = self._sender(request, response)
        encoder = CompressedAudio(kind, SPEECH_RATE) if kind in COMPRESSED else None  # quick: no await
        try:
            if kind == "wav":
                await send(streamed_wav_header(SPEECH_RATE))
            first = True
            async with contextlib.aclosing(_spoken(tts, text)) as audio:
                async for pcm in audio:
                    data = await asyncio.to_thread(encoder.encode, pcm) if encoder is not None else pcm
                    if first and data:
                        self.metrics.first_byte.labels("speech").observe(time.perf_counter() - started)
                        first = False
                    if data:
                        await send(data)
            if encoder is not None:
                await send(await asyncio.to_thread(encoder.close))
            await send(None)
        finally:
            if encoder is not None and not encoder.closed:  # cut short: free the muxer, send nothing more
                await asyncio.to_thread(encoder.discard)  # runs to its end even if this task is cancelled
        return response

    # --- POST /v1/chat/completions -----------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        engine = self._engine("chat")
        with engine.admitted():
            chat = wire.parse_chat(await _json_body(request, self.params.max_chat_bytes))
            return await self._answer(request, engine, chat, started)

    async def _answer(
        self, request: web.Request, engine: Engine, chat: wire.ChatRequest, started: float
    ) -> web.StreamResponse:
        prompt_tokens = await asyncio.to_thread(_prompt_tokens, engine.processor, chat.messages)
        defaults = engine.defaults  # the config's: another request's turn may have its own in force now
        context = getattr(defaults, "n_ctx", None)
        wanted = chat.max_tokens or int(defaults.max_tokens)
        if isinstance(context, int):
            if prompt_tokens >= context:
                message = f"the messages take ~{prompt_tokens} tokens; this model's context holds {context}"
                raise wire.RequestError(400, message, code="context_length_exceeded", param="messages")
            wanted = min(wanted, context - prompt_tokens)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", wire.now()
        async with engine.serving(max_tokens=wanted, temperature=chat.temperature) as llm:
            if not chat.stream:
                pieces_: list[str] = []
                async with contextlib.aclosing(_reply(llm, chat.messages)) as reply:
                    async for piece in reply:
                        if not pieces_:
                            self.metrics.first_byte.labels("chat").observe(time.perf_counter() - started)
                        pieces_.append(piece)
                finish = "length" if len(pieces_) >= wanted else "stop"
                usage = wire.usage_of(prompt_tokens, len(pieces_))
                payload = wire.chat_completion(ident, chat.model, created, "".join(pieces_), finish, usage)
                return web.json_response(payload, headers=NO_STORE)
            response = _event_stream()
            await response.prepare(request)
            send = self._sender(request, response)

            def chunk(
                delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None
            ) -> bytes:
                made = wire.chat_chunk(ident, chat.model, created, delta, finish, usage, chat.include_usage)
                return wire.sse(made)

            await send(chunk({"role": "assistant", "content": "", "refusal": None}))
            count = 0
            async with contextlib.aclosing(_reply(llm, chat.messages)) as reply:
                async for piece in reply:
                    if not count:
                        self.metrics.first_byte.labels("chat").observe(time.perf_counter() - started)
                    count += 1
                    await send(chunk({"content": piece}))
            await send(chunk({}, "length" if count >= wanted else "stop"))
            if chat.include_usage:
                await send(chunk(None, usage=wire.usage_of(prompt_tokens, count)))
            await send(b"data: [DONE]\n\n")
            await send(None)
        return response

    def _sender(self, request: web.Request, response: web.StreamResponse) -> Sender:
        """Writes to ``response`` (None: its end), each bounded by the server's ``send_timeout``: a
        client that stops reading is dropped (``ClientStalled``) instead of holding the engine's turn."""
        timeout = self.server.settings.send_timeout or None

        async def send(data: bytes | None) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await (response.write(data) if data is not None else response.write_eof())
            except TimeoutError:
                if request.transport is not None:
                    request.transport.abort()
                raise ClientStalled(f"the client read nothing for {timeout:g} s") from None

        return send

    def _engine(self, name: str) -> Engine:
        engine = self.engines.get(name)
        if engine is None:  # the route exists only when its engine does
            raise wire.RequestError(404, f"{name} is not served here", code="not_found")
        return engine


def _event_stream() -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    response.enable_chunked_encoding()
    return response


async def _json_body(request: web.Request, limit: int) -> Any:
    """The request's JSON body, at most ``limit`` bytes (else 413); 400 if it is not JSON."""
    if (request.content_length or 0) > limit:
        raise wire.RequestError(413, f"the request body is larger than {limit} bytes")
    data = bytearray()
    while chunk := await request.content.read(65536):
        data += chunk
        if len(data) > limit:
            raise wire.RequestError(413, f"the request body is larger than {limit} bytes")
    try:
        return json.loads(data)
    except ValueError:
        raise wire.RequestError(400, "the request body is not valid JSON") from None


async def _read_multipart(request: web.Request, limit: int) -> tuple[dict[str, list[str]], bytes | None]:
    """The form fields (name -> values) and the uploaded ``file``; 413 past ``limit``, 400 if not a form."""
    if not request.content_type.startswith("multipart/"):
        raise wire.RequestError(400, "send the file as multipart/form-data", param="file")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as error:
        raise wire.RequestError(400, f"the form could not be read: {error}", param="file") from None
    fields: dict[str, list[str]] = {}
    upload: bytes | None = None
    form_bytes = 0  # every field but the file, together
    while True:
        try:
            part = await reader.next()
        except ValueError as error:
            raise wire.RequestError(400, f"the form could not be read: {error}", param="file") from None
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            continue
        is_file = part.name == "file"
        if is_file and upload is not None:
            raise wire.RequestError(400, "send one file per request", param="file")
        data = await _read_part(part, limit if is_file else MAX_FIELD_BYTES, is_file)
        if is_file:
            upload = data
            continue
        form_bytes += len(data)
        if form_bytes > MAX_FIELD_BYTES:
            raise wire.RequestError(413, f"the form's fields take more than {MAX_FIELD_BYTES} bytes")
        if part.name:
            fields.setdefault(part.name, []).append(data.decode("utf-8", "replace"))
    return fields, upload


async def _read_part(part: BodyPartReader, limit: int, is_file: bool) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(65536):
        data += chunk
        if len(data) > limit:
            what = "the upload" if is_file else f"the field {part.name!r}"
            raise wire.RequestError(413, f"{what} is larger than {limit} bytes", param=part.name)
    return bytes(data)


async def _transcribed(stt: Any, samples: np.ndarray[Any, Any]) -> AsyncGenerator[tuple[Piece, Any], None]:
    """Each piece of ``samples`` with what the recogniser heard in it; silent pieces and pieces heard as
    nothing are left out (Whisper makes up words for silence)."""
    for piece in pieces(samples):
        if int(np.abs(np.frombuffer(piece.pcm, dtype="<i2").astype(np.int32)).max()) < SILENCE_PEAK:
            continue
        result = await stt.transcribe(Utterance(piece.pcm, RATE, 1, piece.start, piece.end))
        if result.text:
            yield piece, result


async def _spoken(tts: Any, text: str) -> AsyncGenerator[bytes, None]:
    """``text`` spoken sentence by sentence as 24 kHz s16le, each chunk as soon as it is made."""
    chunker = SentenceChunker(first_chunk_min_words=tts.params.first_chunk_min_words)
    sentences = chunker.feed(text) + chunker.feed("\n")
    rest = chunker.flush()
    if rest:
        sentences.append(rest)
    resampler = (
        Int16Resampler(int(tts.sample_rate), SPEECH_RATE, 1) if tts.sample_rate != SPEECH_RATE else None
    )
    odd = b""
    for sentence in sentences:
        if not any(c.isalnum() for c in sentence):
            continue
        async with closing_stream(tts.synthesize(sentence)) as stream:
            async for pcm in stream:
                pcm, odd = odd + pcm, b""
                if len(pcm) % 2:
                    pcm, odd = pcm[:-1], pcm[-1:]
                out = _resample(resampler, pcm)
                if out:
                    yield out
    if resampler is not None:
        tail = resampler.flush().tobytes()
        if tail:
            yield tail


def _resample(resampler: Int16Resampler | None, pcm: bytes) -> bytes:
    if resampler is None or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, 1)
    return bytes(resampler.resample(samples).astype("<i2").tobytes())


async def _reply(llm: Any, messages: list[dict[str, str]]) -> AsyncGenerator[str, None]:
    """The engine's reply to ``messages``, text piece by piece (one token each for llm.local)."""
    async with closing_stream(llm.stream_reply(messages)) as stream:
        async for item in stream:
            if isinstance(item, str) and item:
                yield item


def _prompt_tokens(llm: Any, messages: list[dict[str, str]]) -> int:
    """Tokens the messages take (each message's text, plus ~4 for its role and separators)."""
    return sum(int(llm.count_tokens(m["content"])) + 4 for m in messages if m["content"]) + 3
