"""``s2s.openai``: OpenAI's Realtime API (GA protocol) as one speech-to-speech node, through the
official SDK's realtime client (``AsyncOpenAI(...).realtime.connect``)::

    agent:
      type: s2s.openai
      api_key: ${OPENAI_API_KEY}
      model: gpt-realtime
      voice: marin

The session takes and sends 24 kHz s16le mono (``audio/pcm``), base64 in JSON events. With
``turn_detection: server`` the server's VAD ends each turn and answers (``server_vad``: a response is
created and an earlier one interrupted by the server itself); with ``local`` the session has no turn
detection and the node commits the input buffer and asks for a response when our VAD says the user
stopped. A barge-in sends ``response.cancel`` while a response is in progress and
``conversation.item.truncate`` with the milliseconds actually played, so the model forgets what the
user never heard. Tool calls (``response.function_call_arguments.done``) are answered with
``function_call_output`` items and a new ``response.create``: the server does not go on by itself.

Errors: an upgrade refused with HTTP 401 (or an ``invalid_api_key`` error event) ends the graph with a
message naming ``OPENAI_API_KEY``; other error events are logged (most are recoverable) — the
``response_cancel_not_active`` that a cancel crossing the server's ``response.done`` causes is
expected and ignored. A connection closed mid-call is replaced (``reconnect_attempts``): the new
session gets the conversation so far as text items (what the user said, what of each reply was
heard); when that fails the error says so and the rest of the call is recorded, not answered.

``base_url`` (``OPENAI_BASE_URL`` in the configs) is where the SDK derives the socket URL from
(http -> ws, ``/realtime`` appended); ``websocket_base_url`` overrides the socket URL alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.errors import FatalProcessorError, Problem
from pipeline.params import param
from processors.llm.openai import OPENAI_KEY_VARIABLE, OPENAI_URL, key_problems
from processors.llm.tools import ToolCall
from processors.s2s.base import (
    BotAudio,
    BotTranscript,
    Event,
    ProviderError,
    ResponseDone,
    ResponseStarted,
    SessionClosed,
    SpeechStarted,
    SpeechToSpeech,
    SpeechToSpeechParams,
    ToolCallsRequested,
    UserTranscript,
    UserTurnEnded,
)

if TYPE_CHECKING:
    import openai
    from openai.resources.realtime.realtime import AsyncRealtimeConnection

__all__ = ["OpenAIRealtime", "OpenAIRealtimeParams", "realtime_tools"]

log = logging.getLogger("processors.s2s")

RATE = 24000
_CANCEL_PREFIX = "voxgraph_cancel_"
_BENIGN_CODES = frozenset({"response_cancel_not_active"})
"""Error codes a barge-in's own cancel causes when it crosses the server's ``response.done``."""


@dataclass(slots=True, kw_only=True)
class OpenAIRealtimeParams(SpeechToSpeechParams):
    """Model, voice, server and turn detection of an ``s2s.openai`` node."""

    api_key: str = param(doc="API key: write ${OPENAI_API_KEY}", secret=True)
    model: str = param("gpt-realtime", doc="realtime model name")
    voice: str = param("marin", doc="the bot's voice (fixed once it has spoken)")
    base_url: str | None = param(None, doc="API base URL (the socket URL is derived from it); null = OpenAI")
    websocket_base_url: str | None = param(
        None, doc="socket base URL (ws://host/v1) when not derived from base_url; null or empty = derived"
    )
    transcription_model: str = param(
        "gpt-4o-mini-transcribe",
        doc="model that transcribes the user's turns (for the recording); empty = none",
    )
    silence_duration_ms: int = param(500, ge=0, doc="server VAD: silence that ends a turn, in ms")
    vad_threshold: float = param(0.5, ge=0, le=1, doc="server VAD: speech probability threshold")
    prefix_padding_ms: int = param(300, ge=0, doc="server VAD: audio kept before detected speech, in ms")
    reconnect_attempts: int = param(
        2, ge=0, doc="new sessions tried when the connection closes mid-call (given the history); 0 = none"
    )
    reconnect_backoff: float = param(
        0.5, ge=0, doc="seconds before the first reconnect; doubles each attempt"
    )


class OpenAIRealtime(SpeechToSpeech):
    """OpenAI Realtime through the official SDK (see the module docstring)."""

    Params: ClassVar[type[Any]] = OpenAIRealtimeParams
    params: OpenAIRealtimeParams
    service: ClassVar[str] = "OpenAI Realtime"
    input_rate: ClassVar[int] = RATE
    output_rate: ClassVar[int] = RATE

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._client: openai.AsyncOpenAI | None = None
        self._connection: AsyncRealtimeConnection | None = None
        self._response_id = ""  # the response in progress
        self._calls: list[ToolCall] = []  # calls of the response in progress
        self._cancel_ids = itertools.count(1)
        self._closing = False

    def check(self) -> list[Problem]:
        return super().check() + key_problems(self.params.api_key, OPENAI_KEY_VARIABLE, self.name)

    @property
    def server(self) -> str:
        """Where the socket goes, for messages."""
        return self.params.websocket_base_url or self.params.base_url or OPENAI_URL

    def session_config(self) -> dict[str, Any]:
        """The ``session`` of the ``session.update`` sent at the start."""
        p = self.params
        detection: dict[str, Any] | None = None
        if p.turn_detection == "server":
            detection = {
                "type": "server_vad",
                "threshold": p.vad_threshold,
                "prefix_padding_ms": p.prefix_padding_ms,
                "silence_duration_ms": p.silence_duration_ms,
                "create_response": True,
                "interrupt_response": True,
            }
        session: dict[str, Any] = {
            "type": "realtime",
            "instructions": p.system_prompt,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": {"model": p.transcription_model} if p.transcription_model else None,
                    "turn_detection": detection,
                },
                "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": p.voice},
            },
        }
        schemas = self.toolset.schemas()
        if schemas:
            session["tools"] = realtime_tools(schemas)
            session["tool_choice"] = "auto"
        return session

    # --- the session ---------------------------------------------------------------------------------

    async def open_session(self) -> None:
        import openai
        import websockets

        p = self.params
        self._closing = False
        self._response_id, self._calls = "", []
        self._client = openai.AsyncOpenAI(
            api_key=p.api_key,
            base_url=p.base_url or None,
            websocket_base_url=p.websocket_base_url or None,
            max_retries=0,
        )
        try:
            self._connection = await self._client.realtime.connect(model=p.model).enter()
        except websockets.exceptions.InvalidStatus as error:
            status = error.response.status_code
            if status in (401, 403):
                raise FatalProcessorError(
                    f"{self.name}: {self.server} rejected the API key (HTTP {status}): "
                    f"check {OPENAI_KEY_VARIABLE}"
                ) from None
            raise FatalProcessorError(
                f"{self.name}: {self.server} refused the realtime session (HTTP {status}): "
                f"check model '{p.model}' and base_url"
            ) from None
        except (OSError, websockets.exceptions.InvalidHandshake) as error:
            raise FatalProcessorError(
                f"{self.name}: cannot connect to {self.server}: {type(error).__name__}: {error}"
            ) from None
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # what closed it is read next
            await self._connection.session.update(session=self.session_config())  # type: ignore[arg-type]
        await self._configured()

    async def _configured(self) -> None:
        """Read until ``session.updated``: a rejected key or configuration ends the graph now."""
        import websockets

        assert self._connection is not None
        try:
            while True:
                event = await self._connection.recv()
                if event.type == "session.updated":
                    return
                if event.type == "error":
                    error = event.error
                    raise FatalProcessorError(
                        f"{self.name}: {self.server} rejected the session: "
                        f"{error.code or error.type}: {error.message}"
                        + (f" (check {OPENAI_KEY_VARIABLE})" if error.code == "invalid_api_key" else "")
                    )
        except websockets.exceptions.ConnectionClosed as closed:
            raise FatalProcessorError(
                f"{self.name}: {self.server} closed the session before it was configured: {_why(closed)}"
            ) from None

    async def events(self) -> AsyncIterator[Event]:
        import websockets

        assert self._connection is not None
        try:
            async for event in self._connection:
                for mine in self._translate(event):
                    yield mine
        except websockets.exceptions.ConnectionClosed as closed:
            if self._closing:
                return
            raise SessionClosed(
                f"{self.name}: the connection to {self.server} closed: {_why(closed)}; "
                "the rest of the conversation is recorded but not answered"
            ) from None
        if not self._closing:
            raise SessionClosed(
                f"{self.name}: {self.server} ended the session; "
                "the rest of the conversation is recorded but not answered"
            )

    def _translate(self, event: Any) -> list[Event]:
        kind = event.type
        if kind == "response.output_audio.delta":
            pcm = base64.b64decode(event.delta)
            return [BotAudio(pcm, event.item_id, event.response_id)]
        if kind == "response.output_audio_transcript.delta":
            return [BotTranscript(event.delta, event.item_id, event.response_id)]
        if kind == "input_audio_buffer.speech_started":
            return [SpeechStarted()]
        if kind == "input_audio_buffer.committed":
            return [UserTurnEnded()] if self.params.transcription_model else []
        if kind == "conversation.item.input_audio_transcription.completed":
            return [UserTranscript(event.transcript or "")]
        if kind == "conversation.item.input_audio_transcription.failed":
            return [UserTranscript("")]
        if kind == "response.created":
            self._response_id = event.response.id or ""
            self._calls = []
            return [ResponseStarted(self._response_id)]
        if kind == "response.function_call_arguments.done":
            self._calls.append(ToolCall(event.call_id, event.name, event.arguments or "{}"))
            return []
        if kind == "response.done":
            return self._finished(event.response)
        if kind == "error":
            return self._error(event.error)
        return []

    def _finished(self, response: Any) -> list[Event]:
        calls, self._calls = self._calls, []
        response_id = response.id or ""
        if response_id == self._response_id:
            self._response_id = ""
        status = response.status or "completed"
        details = response.status_details
        reason = str(getattr(details, "reason", "") or "") if details is not None else ""
        done: list[Event] = []
        if calls and status == "completed":
            done.append(ToolCallsRequested(calls, response_id))
        done.append(ResponseDone(response_id, status, reason))
        return done

    def _error(self, error: Any) -> list[Event]:
        code = error.code or ""
        if code in _BENIGN_CODES and str(error.event_id or "").startswith(_CANCEL_PREFIX):
            return []
        text = f"{code or error.type}: {error.message}"
        if code == "invalid_api_key":
            rejected = f"{self.server} rejected the API key ({text}): check {OPENAI_KEY_VARIABLE}"
            return [ProviderError(rejected, fatal=True)]
        return [ProviderError(text)]

    async def _send(self, send: Callable[[AsyncRealtimeConnection], Awaitable[None]]) -> None:
        """``send`` on the live connection. Between two sessions there is none and nothing is sent;
        a send that finds it closed is dropped quietly: the receiving side reports the close once,
        with its code and reason."""
        import websockets

        connection = self._connection
        if connection is None:
            return
        try:
            await send(connection)
        except websockets.exceptions.ConnectionClosed:
            log.debug("%s: a send found the connection closed", self.name)

    async def send_audio(self, pcm: bytes) -> None:
        audio = base64.b64encode(pcm).decode("ascii")
        await self._send(lambda connection: connection.input_audio_buffer.append(audio=audio))

    async def end_user_turn(self) -> None:
        async def commit(connection: AsyncRealtimeConnection) -> None:
            await connection.input_audio_buffer.commit()
            await connection.response.create()

        await self._send(commit)

    async def cancel_reply(self, response_active: bool, cuts: list[tuple[str, int]]) -> None:
        await self._send(lambda connection: self._cancel(connection, response_active, cuts))

    async def _cancel(
        self, connection: AsyncRealtimeConnection, response_active: bool, cuts: list[tuple[str, int]]
    ) -> None:
        if response_active:
            self.cancel_response(self._response_id)
            event_id = f"{_CANCEL_PREFIX}{next(self._cancel_ids)}"
            if self._response_id:
                await connection.response.cancel(event_id=event_id, response_id=self._response_id)
            else:
                await connection.response.cancel(event_id=event_id)
        for item_id, audio_end_ms in cuts:
            await connection.conversation.item.truncate(
                item_id=item_id, content_index=0, audio_end_ms=audio_end_ms
            )

    async def send_tool_results(self, results: list[tuple[ToolCall, str]], respond: bool) -> None:
        async def answer(connection: AsyncRealtimeConnection) -> None:
            for call, output in results:
                await connection.conversation.item.create(
                    item={"type": "function_call_output", "call_id": call.call_id, "output": output}
                )
            if respond:
                await connection.response.create()

        await self._send(answer)

    async def reopen_session(self) -> bool:
        p = self.params
        for attempt in range(p.reconnect_attempts):
            await asyncio.sleep(p.reconnect_backoff * 2**attempt)
            await self.close_session()
            try:
                await asyncio.wait_for(self.open_session(), p.connect_timeout)
                await self._restore(self.history.messages())
            except Exception as error:
                log.warning(
                    "%s: reconnect %d failed: %s", self.name, attempt + 1, self.hide_secrets(str(error))
                )
                continue
            log.warning(
                "%s: the connection to %s closed; a new session goes on with the history",
                self.name,
                self.server,
            )
            return True
        return False

    async def _restore(self, messages: list[dict[str, Any]]) -> None:
        """The conversation so far (what was said and heard) as items of the new session."""

        async def restore(connection: AsyncRealtimeConnection) -> None:
            for message in messages:
                role, text = message["role"], message["content"]
                if role not in ("user", "assistant") or not text:
                    continue  # the instructions went with session.update
                kind = "input_text" if role == "user" else "output_text"
                item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
                await connection.conversation.item.create(item=item)  # type: ignore[arg-type]

        await self._send(restore)

    async def close_session(self) -> None:
        self._closing = True
        connection, self._connection = self._connection, None
        client, self._client = self._client, None
        try:
            if connection is not None:
                await connection.close()
        finally:
            if client is not None:
                await client.close()


def realtime_tools(schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-completions tool schemas (``{"type": "function", "function": {...}}``) in the Realtime
    API's flat form (``{"type": "function", "name", "description", "parameters"}``)."""
    flat = []
    for schema in schemas:
        function = schema.get("function", schema)
        tool = {"type": "function", "name": function["name"]}
        if function.get("description"):
            tool["description"] = function["description"]
        tool["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        flat.append(tool)
    return flat


def _why(closed: Exception) -> str:
    """A close's code and reason, as the server sent them."""
    received = getattr(closed, "rcvd", None)
    if received is None:
        return "no close frame (the connection dropped)"
    return f"code {received.code}" + (f" ({received.reason})" if received.reason else "")
