"""A local OpenAI Realtime server (GA protocol, ``ws://127.0.0.1:PORT/v1/realtime``) for tests.

It follows the fake-server checklist of ../shared/reference/speech-to-speech.md and
``tests/test_fake_openai_realtime.py`` proves it with the official SDK: ``session.created`` first,
``session.update`` merged and answered with the whole config (unknown keys and a missing
``session.type`` are errors naming the param), base64 audio counted as 24 kHz s16le, an energy VAD
(``speech_started`` / ``speech_stopped`` / ``committed`` / the user item / its transcription), and
responses in their own task: audio deltas of uneven sizes interleaved with transcript deltas, faster
than real time, always closed by ``response.done``. With tools in the session a turn may first get a
function call; the answer waits for ``function_call_output`` and ``response.create`` and speaks the
output. Speech during a response cancels it (``turn_detected``); ``response.cancel`` with nothing
active and a commit of less than 100 ms are ``error`` events; ``conversation.item.truncate`` is
checked against the audio sent. Knobs: the accepted key (others: HTTP 401, or ``error`` +
close 1008 for ``bad_key``), a fixed delay before each answer, a late transcription of the user's
turn (after the answer), and a close with a chosen code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.streaming_stt import LocalServer, StreamSession

RATE = 24000
BYTES_PER_MS = RATE * 2 // 1000
MIN_COMMIT_MS = 100
_SESSION_KEYS = {
    "type",
    "instructions",
    "output_modalities",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "truncation",
    "tracing",
    "include",
    "model",
    "prompt",
}
_AUDIO_KEYS = {"input", "output"}
_INPUT_KEYS = {"format", "transcription", "turn_detection", "noise_reduction"}
_OUTPUT_KEYS = {"format", "voice", "speed"}
_VAD_KEYS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "idle_timeout_ms",
    "eagerness",
}


class ClientError(Exception):
    """A client event the real server answers with an ``error`` event (the socket stays open)."""

    def __init__(
        self, code: str, message: str, param: str | None = None, kind: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.code = code
        self.param = param
        self.kind = kind


@dataclass
class Session(StreamSession):
    """One realtime session: what it received, sent, and decided, for assertions."""

    config: dict[str, Any] = field(default_factory=dict)
    truncates: list[dict[str, Any]] = field(default_factory=list)  # conversation.item.truncate events
    cancels: list[dict[str, Any]] = field(default_factory=list)  # response.cancel events
    tool_outputs: list[dict[str, Any]] = field(default_factory=list)  # function_call_output items
    committed_at: list[float] = field(default_factory=list)  # monotonic time of each commit
    first_audio_at: list[float] = field(default_factory=list)  # monotonic time of each first audio delta
    responses: list[dict[str, Any]] = field(default_factory=list)  # each response.done's response
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # conversation items by id

    def types_received(self) -> list[str]:
        """The ``type`` of each client event, in order."""
        return [str(m.get("type")) for m in self.received]

    def types_sent(self) -> list[str]:
        """The ``type`` of each server event, in order."""
        return [str(m.get("type")) for m in self.sent]


@dataclass
class _Turn:
    """VAD state of the input buffer."""

    buffer_ms: float = 0.0  # audio in the uncommitted buffer
    speaking: bool = False
    silence_ms: float = 0.0
    item_id: str = ""
    started_ms: float = 0.0


class FakeOpenAIRealtime(LocalServer):
    """OpenAI Realtime on 127.0.0.1. Use as ``async with FakeOpenAIRealtime(...) as fake``."""

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        bad_key: str = "sk-bad",
        transcripts: Sequence[str] = ("what is the weather in paris",),
        replies: Sequence[str] = ("It is sunny in Paris today, with a light breeze.",),
        reply_ms: int = 1500,
        speed: float = 4.0,
        response_delay: float = 0.0,
        transcript_delay: float = 0.0,
        tool_arguments: str | None = None,
        energy_threshold: float = 500.0,
        close_after_responses: int | None = None,
        close_sessions: int | None = None,
        close_code: int = 1011,
        close_reason: str = "internal error",
    ) -> None:
        super().__init__()
        self.api_key = api_key  # the key accepted
        self.bad_key = bad_key  # accepted at the upgrade, then error invalid_api_key + close 1008
        self.transcripts = list(transcripts)  # the user's words, one per turn (the last repeats)
        self.replies = list(replies)  # the bot's words, one per answer (the last repeats)
        self.reply_ms = reply_ms  # audio per answer
        self.speed = speed  # answers stream this many times faster than real time
        self.response_delay = response_delay  # seconds between a commit (or response.create) and the answer
        self.transcript_delay = transcript_delay  # seconds after a commit before the user's transcription
        self.tool_arguments = tool_arguments  # with tools: call the first one with these before answering
        self.energy_threshold = energy_threshold  # mean |sample| at or above this is speech
        self.close_after_responses = close_after_responses  # close the socket once this many were done
        self.close_sessions = close_sessions  # ... in this many first sessions (None: every one)
        self.close_code = close_code
        self.close_reason = close_reason
        self.sessions: list[Session] = []
        self.turns = 0  # user turns heard, over every session: the scripts go on across sessions
        self.answers = 0  # spoken answers given, over every session
        self._ids = itertools.count(1)
        self.app.router.add_get("/v1/realtime", self._session)

    @property
    def base_url(self) -> str:
        """What ``AsyncOpenAI(base_url=...)`` takes."""
        return f"{self.http_url}/v1"

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    # --- the socket ------------------------------------------------------------------------------------

    async def _session(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        key = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        if "OpenAI-Beta" in request.headers:
            return web.json_response({"error": {"message": "this server speaks the GA protocol"}}, status=400)
        if "model" not in request.query:
            return web.json_response({"error": {"message": "missing model", "param": "model"}}, status=400)
        if key not in (self.api_key, self.bad_key):
            body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
            return await self.refuse(request, "http", body, b"")
        ws = await self.accept(request)
        session = Session(query=dict(request.query), headers=dict(request.headers))
        session.config = _default_config(request.query["model"])
        self.sessions.append(session)
        self.changed()
        conversation = _Conversation(self, ws, session)
        try:
            await conversation.send({"type": "session.created", "session": session.config})
            if key == self.bad_key:
                await conversation.error(ClientError("invalid_api_key", "Incorrect API key provided"))
                await self._close(ws, session, 1008, "invalid_api_key")
                return ws
            await conversation.serve()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await conversation.stop()
            self.finished(ws, session)
        return ws

    async def _close(self, ws: web.WebSocketResponse, session: Session, code: int, reason: str) -> None:
        session.close_code = code
        await ws.close(code=code, message=reason.encode())


class _Conversation:
    """One session's protocol: events in, events out, the response task."""

    def __init__(self, fake: FakeOpenAIRealtime, ws: web.WebSocketResponse, session: Session) -> None:
        self.fake = fake
        self.ws = ws
        self.session = session
        self.turn = _Turn()
        self.turns = 0  # user turns committed
        self.response: asyncio.Task[None] | None = None
        self.response_id = ""
        self.pending_call: str | None = None  # call id waiting for its output
        self.tool_turns = 0  # user turns that got a function call already
        self.late: set[asyncio.Task[None]] = set()  # transcriptions sent late
        self.closing = False

    async def send(self, event: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        event = {"type": event["type"], "event_id": self.fake.new_id("event"), **event}
        await self.fake.send(self.ws, self.session, event)

    async def error(self, error: ClientError, event_id: str | None = None) -> None:
        body = {"type": error.kind, "code": error.code, "message": str(error), "param": error.param}
        await self.send({"type": "error", "error": {**body, "event_id": event_id}})

    async def serve(self) -> None:
        while not self.ws.closed and not self.closing:
            message = await self.ws.receive()
            if message.type != WSMsgType.TEXT:
                return
            event = json.loads(message.data)
            self.session.received.append(event)
            self.fake.changed()
            try:
                await self.handle(event)
            except ClientError as error:
                await self.error(error, event.get("event_id"))

    async def stop(self) -> None:
        tasks = {t for t in (self.response, *self.late) if t is not None and not t.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            _merge_session(self.session.config, event.get("session"))
            await self.send({"type": "session.updated", "session": self.session.config})
        elif kind == "input_audio_buffer.append":
            await self.audio(_decode(event.get("audio")))
        elif kind == "input_audio_buffer.commit":
            if self.turn.buffer_ms < MIN_COMMIT_MS:
                raise ClientError(
                    "input_audio_buffer_commit_empty",
                    f"buffer too small: expected at least {MIN_COMMIT_MS}ms, "
                    f"but buffer only has {self.turn.buffer_ms:.2f}ms of audio",
                )
            await self.commit()
        elif kind == "input_audio_buffer.clear":
            self.turn = _Turn()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "response.create":
            if self.response is not None and not self.response.done():
                raise ClientError("conversation_already_has_active_response", "a response is in progress")
            self.start_response()
        elif kind == "response.cancel":
            self.session.cancels.append(event)
            if self.response is None or self.response.done():
                raise ClientError(
                    "response_cancel_not_active", "Cancellation failed: no active response found"
                )
            await self.cancel_response("client_cancelled")
        elif kind == "conversation.item.create":
            await self.create_item(event.get("item") or {})
        elif kind == "conversation.item.truncate":
            await self.truncate(event)
        else:
            raise ClientError("invalid_type", f"Invalid value: '{kind}'", "type")

    # --- input audio and turns -------------------------------------------------------------------------

    def detection(self) -> dict[str, Any] | None:
        detection: dict[str, Any] | None = self.session.config["audio"]["input"]["turn_detection"]
        return detection

    async def audio(self, pcm: bytes) -> None:
        ms = len(pcm) / BYTES_PER_MS
        start = self.session.audio_ms
        self.session.chunks_ms.append(ms)
        self.turn.buffer_ms += ms
        detection = self.detection()
        if detection is None:
            return
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
        loud = bool(len(samples)) and float(np.abs(samples).mean()) >= self.fake.energy_threshold
        turn = self.turn
        if loud and not turn.speaking:
            turn.speaking, turn.silence_ms = True, 0.0
            turn.item_id, turn.started_ms = self.fake.new_id("item"), start
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": int(start),
                    "item_id": turn.item_id,
                }
            )
            if detection.get("interrupt_response", True) and self.response and not self.response.done():
                await self.cancel_response("turn_detected")
        elif turn.speaking and not loud:
            turn.silence_ms += ms
            if turn.silence_ms >= detection.get("silence_duration_ms", 500):
                end = int(self.session.audio_ms - turn.silence_ms)
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": end,
                        "item_id": turn.item_id,
                    }
                )
                await self.commit()
                if detection.get("create_response", True):
                    self.start_response()
        elif loud:
            turn.silence_ms = 0.0

    async def commit(self) -> None:
        item_id = self.turn.item_id or self.fake.new_id("item")
        self.session.committed_at.append(time.monotonic())
        self.turn = _Turn()
        text = self.fake.transcripts[min(self.fake.turns, len(self.fake.transcripts) - 1)]
        self.fake.turns += 1
        self.turns += 1
        item: dict[str, Any] = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.session.items[item_id] = item
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None}
        )
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": item})
        completed = {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id}
        usage = {"type": "duration", "seconds": 1.0}
        transcription = {**completed, "content_index": 0, "transcript": text, "usage": usage}
        if self.fake.transcript_delay:  # transcription runs beside the response: it may come last
            self.late.add(asyncio.get_running_loop().create_task(self.send_later(transcription)))
        else:
            await self.send(transcription)

    async def send_later(self, event: dict[str, Any]) -> None:
        await asyncio.sleep(self.fake.transcript_delay)
        await self.send(event)

    # --- responses -------------------------------------------------------------------------------------

    def start_response(self) -> None:
        self.response_id = self.fake.new_id("resp")
        self.response = asyncio.get_running_loop().create_task(self.respond(self.response_id))

    async def respond(self, response_id: str) -> None:
        await asyncio.sleep(self.fake.response_delay)
        response = {"object": "realtime.response", "id": response_id, "status": "in_progress", "output": []}
        await self.send({"type": "response.created", "response": response})
        if (
            self.session.config.get("tools")
            and self.fake.tool_arguments is not None
            and self.tool_turns < self.turns
        ):
            self.tool_turns = self.turns
            output = await self.call_tool(response_id)
        else:
            output = await self.speak(response_id)
        await self.done(response_id, "completed", None, output)

    async def call_tool(self, response_id: str) -> list[dict[str, Any]]:
        tool = self.session.config["tools"][0]
        call_id, item_id = self.fake.new_id("call"), self.fake.new_id("item")
        arguments = self.fake.tool_arguments or "{}"
        item = {
            "id": item_id,
            "type": "function_call",
            "name": tool["name"],
            "call_id": call_id,
            "arguments": "",
        }
        base = {"response_id": response_id, "item_id": item_id, "output_index": 0, "call_id": call_id}
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": {**item, "status": "in_progress"},
            }
        )
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            await self.send({"type": "response.function_call_arguments.delta", **base, "delta": piece})
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **base,
                "name": tool["name"],
                "arguments": arguments,
            }
        )
        done = {**item, "arguments": arguments, "status": "completed"}
        self.session.items[item_id] = done
        await self.send(
            {"type": "response.output_item.done", "response_id": response_id, "output_index": 0, "item": done}
        )
        self.pending_call = call_id
        return [done]

    async def speak(self, response_id: str) -> list[dict[str, Any]]:
        text = self.fake.replies[min(self.fake.answers, len(self.fake.replies) - 1)]
        outputs = [o for o in self.session.tool_outputs if o.get("answered") is None]
        for output in outputs:
            output["answered"] = response_id
            text = f"{text} The tool said: {output['output']}"
        self.fake.answers += 1
        item_id = self.fake.new_id("item")
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        self.session.items[item_id] = {**item, "audio_ms": 0.0, "transcript": ""}
        base = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {"type": "response.content_part.added", **base, "part": {"type": "audio", "transcript": ""}}
        )
        words = text.split(" ")
        pcm = _voice(self.fake.reply_ms)
        sizes = itertools.cycle((1440, 4800, 960, 2880, 7200))  # uneven deltas: 30, 100, 20, 60, 150 ms
        position, word = 0, 0
        while position < len(pcm):
            size = next(sizes)
            chunk = pcm[position : position + size]
            share = round(len(words) * min(1.0, (position + size) / len(pcm)))
            if share > word:
                piece = " ".join(words[word:share]) + ("" if share == len(words) else " ")
                await self.send({"type": "response.output_audio_transcript.delta", **base, "delta": piece})
                self.session.items[item_id]["transcript"] += piece
                word = share
            if position == 0:
                self.session.first_audio_at.append(time.monotonic())
            await self.send(
                {"type": "response.output_audio.delta", **base, "delta": base64.b64encode(chunk).decode()}
            )
            self.session.items[item_id]["audio_ms"] += len(chunk) / BYTES_PER_MS
            position += size
            await asyncio.sleep(len(chunk) / BYTES_PER_MS / 1000 / self.fake.speed)
        await self.send({"type": "response.output_audio.done", **base})
        await self.send({"type": "response.output_audio_transcript.done", **base, "transcript": text})
        await self.send(
            {"type": "response.content_part.done", **base, "part": {"type": "audio", "transcript": text}}
        )
        done = {**item, "status": "completed", "content": [{"type": "output_audio", "transcript": text}]}
        await self.send(
            {"type": "response.output_item.done", "response_id": response_id, "output_index": 0, "item": done}
        )
        return [done]

    async def done(
        self, response_id: str, status: str, reason: str | None, output: list[dict[str, Any]]
    ) -> None:
        details = None if reason is None else {"type": status, "reason": reason}
        usage = {"total_tokens": 10, "input_tokens": 6, "output_tokens": 4}
        response: dict[str, Any] = {
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "status_details": details,
        }
        response.update(output=output, usage=usage)
        self.session.responses.append(response)
        await self.send({"type": "response.done", "response": response})
        limit, sessions = self.fake.close_after_responses, self.fake.close_sessions
        closes = sessions is None or self.fake.sessions.index(self.session) < sessions
        if limit is not None and closes and len(self.session.responses) >= limit and not self.ws.closed:
            self.closing = True
            await self.fake._close(self.ws, self.session, self.fake.close_code, self.fake.close_reason)

    async def cancel_response(self, reason: str) -> None:
        task, response_id = self.response, self.response_id
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=2.0)
        await self.done(response_id, "cancelled", reason, [])

    # --- conversation items ----------------------------------------------------------------------------

    async def create_item(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "function_call_output":
            call_id = item.get("call_id")
            calls = [i for i in self.session.items.values() if i.get("type") == "function_call"]
            if not any(c["call_id"] == call_id for c in calls):
                raise ClientError(
                    "invalid_value", f"no function call with call_id '{call_id}'", "item.call_id"
                )
            if not isinstance(item.get("output"), str):
                raise ClientError("invalid_type", "output must be a string", "item.output")
            self.session.tool_outputs.append(dict(item))
            if call_id == self.pending_call:
                self.pending_call = None
        elif kind != "message":
            raise ClientError("invalid_value", f"Invalid value: '{kind}'", "item.type")
        item_id = item.get("id") or self.fake.new_id("item")
        self.session.items[item_id] = {**item, "id": item_id}
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": None, "item": {**item, "id": item_id}}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": None, "item": {**item, "id": item_id}}
        )

    async def truncate(self, event: dict[str, Any]) -> None:
        self.session.truncates.append(event)
        item = self.session.items.get(str(event.get("item_id")))
        if item is None or item.get("role") != "assistant":
            raise ClientError("invalid_value", f"no assistant item '{event.get('item_id')}'", "item_id")
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or end < 0 or end > item["audio_ms"] + 1:
            raise ClientError(
                "invalid_value",
                f"audio_end_ms {end} is beyond the item's audio ({item['audio_ms']:.0f} ms)",
                "audio_end_ms",
            )
        item["truncated_ms"] = end
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": end,
            }
        )


def _decode(audio: Any) -> bytes:
    if not isinstance(audio, str):
        raise ClientError("invalid_type", "audio must be a base64 string", "audio")
    try:
        return base64.b64decode(audio, validate=True)
    except binascii.Error:
        raise ClientError("invalid_value", "audio is not valid base64", "audio") from None


def _voice(ms: int) -> bytes:
    """``ms`` of a 24 kHz vowel-like tone: the bot's "speech"."""
    t = np.arange(RATE * ms // 1000) / RATE
    wave = 0.25 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    return (wave * 32767).astype("<i2").tobytes()


def _default_config(model: str) -> dict[str, Any]:
    detection = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
        "idle_timeout_ms": None,
    }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_fake",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": None,
                "turn_detection": detection,
            },
            "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy", "speed": 1.0},
        },
    }


def _merge_session(config: dict[str, Any], update: Any) -> None:
    """Apply a partial ``session.update`` as the server does, or raise the error it sends."""
    if not isinstance(update, dict):
        raise ClientError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
    if update.get("type") not in ("realtime", "transcription"):
        raise ClientError(
            "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
        )
    _check_keys(update, _SESSION_KEYS, "session")
    audio = update.get("audio", {})
    _check_keys(audio, _AUDIO_KEYS, "session.audio")
    _check_keys(audio.get("input", {}), _INPUT_KEYS, "session.audio.input")
    _check_keys(audio.get("output", {}), _OUTPUT_KEYS, "session.audio.output")
    detection = audio.get("input", {}).get("turn_detection")
    if detection is not None:
        _check_keys(detection, _VAD_KEYS, "session.audio.input.turn_detection")
    for side in ("input", "output"):
        fmt = audio.get(side, {}).get("format")
        if fmt is not None and fmt != {"type": "audio/pcm", "rate": RATE}:
            raise ClientError(
                "invalid_value", f"the fake takes audio/pcm at {RATE} Hz", f"session.audio.{side}.format"
            )
    for tool in update.get("tools", []):
        if tool.get("type") != "function" or "function" in tool or not tool.get("name"):
            raise ClientError(
                "invalid_value", "tools are {type: function, name, description, parameters}", "session.tools"
            )
    for key, value in update.items():
        if key == "audio":
            for side, settings in value.items():
                config["audio"][side].update(settings)
        else:
            config[key] = value


def _check_keys(value: Any, allowed: set[str], where: str) -> None:
    if not isinstance(value, dict):
        raise ClientError("invalid_type", f"Invalid type for '{where}'", where)
    for key in value:
        if key not in allowed:
            raise ClientError("unknown_parameter", f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}")
