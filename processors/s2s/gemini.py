"""``s2s.gemini``: Gemini Live as one speech-to-speech node, through ``google-genai``
(``client.aio.live.connect``)::

    live:
      type: s2s.gemini
      api_key: ${GEMINI_API_KEY}
      model: gemini-live-2.5-flash-preview
      voice: Puck

The user's audio goes to the model as it comes (16 kHz s16le, ``realtime_input``); the model's voice
comes back at 24 kHz with both transcriptions. ``turn_detection: server`` lets Gemini's own VAD end
turns and interrupt its replies; ``local`` turns that off (``automatic_activity_detection.disabled``)
and marks each turn with ``activityStart`` / ``activityEnd`` from our VAD's frames.

Gemini's turn has no response id: the node numbers the model's turns, a turn running from its first
content to ``turnComplete``. The input transcription comes in pieces; they are joined into one user
turn when the model starts answering. A barge-in is the server's ``interrupted`` (or, once the model's
turn is complete but its audio still plays, the user's next words being transcribed): the unplayed
audio is dropped. Gemini keeps no item to truncate, so the model's own context keeps the whole reply
it generated, while the recording and the transcript keep what was heard. Tool calls (``toolCall``)
run through ``tools:`` and are answered with ``send_tool_response`` and the same ids, declared and
answered as the chat node ``llm.gemini`` does it (``function_declaration``, ``response_object``); the
model goes on by itself. A ``toolCallCancellation`` cancels the calls it names and their results are
never sent (Gemini cancels pending calls itself when the user interrupts, so the node sends no
cancelled results; a ``background`` call that finishes after a barge-in is answered unless the server
cancelled it).

The SDK dials ``wss://`` whatever the scheme of ``base_url``; a server with its own certificate
authority (a TLS proxy, a test server) is trusted through ``SSL_CERT_FILE``, which the SDK reads.
``api_version`` is ``v1beta`` (the Live API's; the SDK's own default is ``v1``). A key or model refused
at setup (close 1007/1008) ends the graph with a clear message; a connection closed later ends the
node's conversation with its close code and reason, what was said so far being recorded.

A connection lives ~10 minutes; the server says ``goAway`` before it closes one. The setup asks for
session resumption, so the server hands out a handle after each turn; the close that follows a
``goAway`` is resumed from the last handle on a new connection (``resume: false`` ends the call
there instead). A reply the close cut ends as heard (a tool call it made runs to its end, but its
result is not sent: the new connection does not know the call), and the user's audio of the moment
between the two connections is recorded but not heard by the model. With ``turn_detection: local`` the turn
marks of that moment are sent on the new connection: a turn our VAD ended meanwhile is still
answered, and a turn under way is opened again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.errors import FatalProcessorError, Problem
from pipeline.formats import AudioCaps
from pipeline.params import param
from pipeline.resampling import Int16Resampler
from processors.llm.gemini import GEMINI_KEY_VARIABLE, GEMINI_URL, function_declaration, response_object
from processors.llm.openai import key_problems
from processors.llm.tools import ToolCall
from processors.s2s.base import (
    CANCELLED_RESULT,
    BotAudio,
    BotTranscript,
    Event,
    ResponseDone,
    ResponseStarted,
    SessionClosed,
    SpeechStarted,
    SpeechToSpeech,
    SpeechToSpeechParams,
    ToolCallsRequested,
    UserTranscript,
)

if TYPE_CHECKING:
    from google import genai
    from google.genai import live, types

__all__ = ["GeminiLive", "GeminiLiveParams"]

log = logging.getLogger("processors.s2s")

INPUT_RATE = 16_000
"""The rate Gemini Live hears (``audio/pcm;rate=16000``)."""
OUTPUT_RATE = 24_000
"""The rate Gemini Live speaks at."""
UNWANTED_KEPT = 64
"""Call ids kept whose results must not be sent (cancelled by the server, or of a closed connection)."""
SETUP_REFUSALS = {1007: "rejected the setup", 1008: "refused the session"}
"""Close codes Gemini answers a bad setup with: 1007 invalid argument, 1008 policy (key, model)."""


@dataclass(slots=True, kw_only=True)
class GeminiLiveParams(SpeechToSpeechParams):
    """Model, voice and server of an ``s2s.gemini`` node."""

    api_key: str = param(doc="API key: write ${GEMINI_API_KEY}", secret=True)
    model: str = param("gemini-live-2.5-flash-preview", doc="Gemini Live model name")
    voice: str | None = param(None, doc="prebuilt voice (Puck, Charon, Kore, Aoede, ...); null = default")
    base_url: str | None = param(None, doc="API endpoint (the SDK always dials wss://); null = Google's")
    api_version: str = param("v1beta", doc="API version segment of the Live endpoint")
    resume: bool = param(
        True, doc="when the server says goAway (a connection lasts ~10 min), resume on a new connection"
    )


class GeminiLive(SpeechToSpeech):
    """Gemini Live through ``google-genai`` (see the module docstring)."""

    Params: ClassVar[type[Any]] = GeminiLiveParams
    params: GeminiLiveParams
    service: ClassVar[str] = "Gemini Live"
    input_rate: ClassVar[int] = INPUT_RATE
    output_rate: ClassVar[int] = OUTPUT_RATE
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(INPUT_RATE, 1)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # totals over the session
        self.server_session_id: str | None = None  # the server's session id, when it names one
        self._client: genai.Client | None = None
        self._connection: Any = None  # the SDK's connect() context manager, entered
        self._session: live.AsyncSession | None = None
        self._turns = itertools.count(1)
        self._turn = ""  # the model's turn in progress ("" between turns)
        self._heard: list[str] = []  # pieces of the user's transcription not yet sent as a turn
        self._unwanted: dict[str, None] = {}  # call ids whose results are not sent, oldest first
        self._resume_handle: str | None = None  # the last resumption handle the server gave
        self._going_away = False  # the server said goAway: the next close is resumed from
        self._resuming = False  # between two connections: user audio is not sent
        self._marking = asyncio.Lock()  # local turns: a mark is sent, or noted for the next connection
        self._user_speaking = False  # local turns: our VAD's turn is under way
        self._missed_end = False  # local turns: a turn ended when no connection could take its end
        self.resumptions = 0  # connections resumed after a goAway
        self._resampler: tuple[int, Int16Resampler] | None = None  # the turn's, for audio at another rate
        self._closing = False

    def check(self) -> list[Problem]:
        return super().check() + key_problems(self.params.api_key, GEMINI_KEY_VARIABLE, self.name)

    @property
    def server(self) -> str:
        """Where the socket goes, for messages."""
        return self.params.base_url or GEMINI_URL

    def live_config(self) -> types.LiveConnectConfig:
        """The session's setup: audio replies, both transcriptions, voice, tools, turn detection."""
        from google.genai import types

        p = self.params
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            system_instruction=p.system_prompt or None,
            input_audio_transcription=types.AudioTranscriptionConfig(),
            output_audio_transcription=types.AudioTranscriptionConfig(),
        )
        if p.voice:
            voice = types.PrebuiltVoiceConfig(voice_name=p.voice)
            config.speech_config = types.SpeechConfig(
                voice_config=types.VoiceConfig(prebuilt_voice_config=voice)
            )
        declarations = [function_declaration(schema) for schema in self.toolset.schemas()]
        if declarations:
            config.tools = [types.Tool(function_declarations=declarations)]
        if p.resume:
            config.session_resumption = types.SessionResumptionConfig(handle=self._resume_handle)
        if p.turn_detection == "local":
            config.realtime_input_config = types.RealtimeInputConfig(
                automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
            )
        return config

    # --- the session ---------------------------------------------------------------------------------

    async def open_session(self) -> None:
        from google import genai
        from google.genai import types

        p = self.params
        http = types.HttpOptions(base_url=p.base_url or None, api_version=p.api_version)
        self._client = genai.Client(api_key=p.api_key, http_options=http)
        await self._connect()

    async def _connect(self) -> None:
        """Open a connection and complete its setup (resuming from the last handle when there is one)."""
        import websockets
        from google.genai import errors

        assert self._client is not None
        connection = self._client.aio.live.connect(model=self.params.model, config=self.live_config())
        try:
            self._session = await connection.__aenter__()
        except errors.APIError as error:
            raise FatalProcessorError(f"{self.name}: {self._refusal(error)}") from None
        except websockets.exceptions.InvalidStatus as error:
            status = error.response.status_code
            raise FatalProcessorError(
                f"{self.name}: {self.server} refused the websocket (HTTP {status}): "
                f"check base_url and api_version ('{self.params.api_version}')"
            ) from None
        except ssl.SSLError as error:
            raise FatalProcessorError(
                f"{self.name}: TLS with {self.server} failed: {error}; a server with its own certificate "
                "authority is trusted through SSL_CERT_FILE"
            ) from None
        except (OSError, websockets.exceptions.InvalidHandshake) as error:
            raise FatalProcessorError(
                f"{self.name}: cannot connect to {self.server}: {type(error).__name__}: {error}"
            ) from None
        self._connection = connection
        self.server_session_id = self._session.session_id

    def _refusal(self, error: Any) -> str:
        """Why the server closed the socket instead of completing the setup, and what to check."""
        reason = self.hide_secrets(str(error.details or error.message or "no reason"))
        said = f"close {error.code}: {reason}"
        refused = SETUP_REFUSALS.get(error.code, "closed the connection at setup")
        if "key" in reason.lower():
            hint = f"check {GEMINI_KEY_VARIABLE}"
        else:
            hint = f"check the model '{self.params.model}' and the node's settings"
        return f"{self.server} {refused} ({said}): {hint}"

    async def events(self) -> AsyncIterator[Event]:
        from google.genai import errors

        while not self._closing:
            try:
                async for message in self._sdk_session().receive():  # one model turn per receive()
                    for event in self._translate(message):
                        yield event
            except errors.APIError as error:
                if self._closing:
                    return
                reason = self.hide_secrets(str(error.details or error.message or "no reason"))
                if not (self._going_away and self._resume_handle and self.params.resume):
                    closed = f"the connection to {self.server} closed (close {error.code}: {reason})"
                    raise SessionClosed(
                        f"{self.name}: {closed}; the rest of the conversation is recorded but not answered"
                    ) from None
                for event in await self._resume():
                    yield event

    async def _resume(self) -> list[Event]:
        """The server closed the connection it announced it would close: go on on a new one, from
        the last handle. A turn the close cut ends as it was heard."""
        self._resuming = True
        self._going_away = False
        events: list[Event] = []
        if self._turn:
            events.append(ResponseDone(self._turn, "incomplete"))
            self._turn = ""
        self._resampler = None  # the cut turn's last few ms go with it
        # Calls of the old connection run to their end, but the new one never saw them: an unknown id.
        self._never_answer([call.call_id for call in self._tools.values()])
        old, self._connection, self._session = self._connection, None, None
        if old is not None:
            with contextlib.suppress(Exception):  # the socket is closed already
                await old.__aexit__(None, None, None)
        try:
            await asyncio.wait_for(self._connect(), self.params.connect_timeout)
        except (FatalProcessorError, TimeoutError) as error:
            self._resuming = False
            raise SessionClosed(
                f"{self.name}: resuming the session after goAway failed ({error or 'timed out'}); "
                "the rest of the conversation is recorded but not answered"
            ) from None
        async with self._marking:  # the turn marks of the moment between the two connections
            self._resuming = False
            await self._remark()
        self.resumptions += 1
        log.info("%s: %s session resumed on a new connection", self.name, self.service)
        return events

    def _translate(self, message: types.LiveServerMessage) -> list[Event]:
        """The base's events for one server message, in the order they must be handled."""
        events: list[Event] = []
        content = message.server_content
        if content is not None:
            if content.input_transcription and content.input_transcription.text:
                events += self._user_words(content.input_transcription.text)
            audio = [
                part.inline_data
                for part in (content.model_turn.parts if content.model_turn else None) or []
                if part.inline_data is not None and part.inline_data.data
            ]
            for blob in audio:
                events += self._model_content()
                pcm = self._at_output_rate(blob.data or b"", blob.mime_type)
                if pcm:
                    events.append(BotAudio(pcm, "", self._turn))
            if content.output_transcription and content.output_transcription.text:
                events += self._model_content()
                events.append(BotTranscript(content.output_transcription.text, "", self._turn))
            if content.interrupted:
                events.append(SpeechStarted())  # the server cut its turn for the user's speech
            if content.turn_complete:
                events += self._turn_complete()
        if message.tool_call is not None:
            events += self._model_content()
            calls = [
                ToolCall(call.id or f"{self._turn}-call-{n}", call.name or "", json.dumps(call.args or {}))
                for n, call in enumerate(message.tool_call.function_calls or [], 1)
            ]
            events.append(ToolCallsRequested(calls, self._turn))
        if message.tool_call_cancellation is not None:
            self.cancel_tool_calls(message.tool_call_cancellation.ids or [])
        if message.go_away is not None:
            self._going_away = True
            left, then = (
                message.go_away.time_left,
                "resuming then" if self.params.resume else "ending the call",
            )
            log.info("%s: %s closes the connection in %s (goAway): %s", self.name, self.service, left, then)
        update = message.session_resumption_update
        if update is not None and update.resumable and update.new_handle:
            self._resume_handle = update.new_handle
        if message.usage_metadata is not None:
            self.usage["prompt_tokens"] += message.usage_metadata.prompt_token_count or 0
            self.usage["completion_tokens"] += message.usage_metadata.response_token_count or 0
        return events

    def _user_words(self, text: str) -> list[Event]:
        """A piece of the user's transcription. Between model turns, while the last reply still
        plays, it is the user speaking over it (the server sends no ``interrupted`` then)."""
        self._heard.append(text)
        if not self._turn and self.clock.playing(time.monotonic()):
            return [SpeechStarted()]
        return []

    def _model_content(self) -> list[Event]:
        """The model's first content of a turn opens it: the user's words so far are their turn."""
        if self._turn:
            return []
        self._turn = f"turn-{next(self._turns)}"
        return [*self._flush_user_turn(), ResponseStarted(self._turn)]

    def _turn_complete(self) -> list[Event]:
        tail = self._resampled_tail()
        turn, self._turn = self._turn, ""
        events = self._flush_user_turn()
        if turn:
            if tail:
                events.append(BotAudio(tail, "", turn))
            events.append(ResponseDone(turn, "completed"))
        return events

    def _at_output_rate(self, pcm: bytes, mime_type: str | None) -> bytes:
        """``pcm`` at ``OUTPUT_RATE``: a part whose mime type names another rate goes through one
        resampler for the turn, so the filter runs across the parts (no clicks where they meet)."""
        match = re.search(r"rate=(\d+)", mime_type or "")
        rate = int(match[1]) if match else OUTPUT_RATE
        if rate == OUTPUT_RATE:
            return pcm
        head = b""
        if self._resampler is None or self._resampler[0] != rate:
            head = self._resampled_tail()  # a turn that changes rates: the old filter's rest first
            self._resampler = (rate, Int16Resampler(rate, OUTPUT_RATE, 1))
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").reshape(-1, 1)
        return head + self._resampler[1].resample(samples).tobytes()

    def _resampled_tail(self) -> bytes:
        """What the turn's resampler still holds (its last few ms); the next turn starts afresh."""
        resampler, self._resampler = self._resampler, None
        return resampler[1].flush().tobytes() if resampler is not None else b""

    def _flush_user_turn(self) -> list[Event]:
        text, self._heard = "".join(self._heard).strip(), []
        return [UserTranscript(text)] if text else []

    def cancel_tool_calls(self, ids: list[str]) -> None:
        """The server no longer wants these calls answered: cancel those still running and never send
        their results. (A hook the base lacks: it knows calls only by the task running each.)"""
        self._never_answer(ids)
        for task, call in list(self._tools.items()):
            if call.call_id in ids:
                task.cancel()
                del self._tools[task]

    def _never_answer(self, ids: list[str]) -> None:
        """Results of these calls are not sent (the latest ``UNWANTED_KEPT`` ids are kept)."""
        for call_id in ids:
            self._unwanted.pop(call_id, None)
            self._unwanted[call_id] = None
        while len(self._unwanted) > UNWANTED_KEPT:
            del self._unwanted[next(iter(self._unwanted))]

    async def send_audio(self, pcm: bytes) -> None:
        import websockets
        from google.genai import types

        session = self._session
        if session is None or self._resuming:
            return  # between two connections: the model misses it (the recording keeps it)
        try:
            await session.send_realtime_input(
                audio=types.Blob(data=pcm, mime_type=f"audio/pcm;rate={INPUT_RATE}")
            )
        except websockets.exceptions.ConnectionClosed:
            return  # the receiving side reports the close, or resumes

    async def begin_user_turn(self) -> None:
        async with self._marking:
            self._user_speaking = True
            await self._mark(start=True)

    async def end_user_turn(self) -> None:
        async with self._marking:
            self._user_speaking = False
            if not await self._mark(start=False):
                self._missed_end = True  # answered once a connection is back

    async def _mark(self, start: bool) -> bool:
        """Send ``activityStart`` (or ``activityEnd``); False when no connection took it (a resume is
        under way, or the connection just closed): ``_remark`` sends what is due after reconnecting."""
        import websockets
        from google.genai import types

        session = self._session
        if session is None or self._resuming:
            return False
        try:
            if start:
                await session.send_realtime_input(activity_start=types.ActivityStart())
            else:
                await session.send_realtime_input(activity_end=types.ActivityEnd())
        except websockets.exceptions.ConnectionClosed:
            return False
        return True

    async def _remark(self) -> None:
        """On a new connection: a turn that ended while there was none is marked (start and end) so it
        is answered; a turn under way is opened, so the audio that follows belongs to it."""
        if self._missed_end:
            self._missed_end = not (await self._mark(start=True) and await self._mark(start=False))
        if self._user_speaking:
            await self._mark(start=True)

    async def cancel_reply(self, response_active: bool, cuts: list[tuple[str, int]]) -> None:
        """Gemini stops its turn itself (server VAD, or the ``activityStart`` that follows in local
        mode) and has nothing to truncate: the rest of the turn is dropped here until it completes."""
        if response_active and self._turn:
            self.cancel_response(self._turn)

    async def send_tool_results(self, results: list[tuple[ToolCall, str]], respond: bool) -> None:
        from google.genai import types

        # Gemini goes on by itself once answered (``respond`` has nothing to ask for). Calls a barge-in
        # cancelled are not answered: Gemini cancels the calls of the turn it interrupted itself.
        responses = [
            types.FunctionResponse(id=call.call_id, name=call.name, response=response_object(output))
            for call, output in results
            if call.call_id not in self._unwanted and output != CANCELLED_RESULT
        ]
        if responses:
            await self._sdk_session().send_tool_response(function_responses=responses)

    async def close_session(self) -> None:
        self._closing = True
        connection, self._connection, self._session = self._connection, None, None
        client, self._client = self._client, None
        try:
            if connection is not None:
                await connection.__aexit__(None, None, None)
        except Exception as error:  # a dead socket: nothing left to close
            log.debug("%s: closing the session: %s", self.name, error)
        finally:
            if client is not None:
                await client.aio.aclose()

    def _sdk_session(self) -> live.AsyncSession:
        if self._session is None:
            raise SessionClosed(f"{self.name}: the {self.service} session is not open")
        return self._session
