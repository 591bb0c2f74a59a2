"""A local Gemini Live API (``BidiGenerateContent`` over a TLS websocket) for tests.

``google-genai`` connects to it unchanged: ``genai.Client(api_key=..., http_options=HttpOptions(
base_url=fake.base_url, api_version="v1beta"))`` with ``SSL_CERT_FILE=fake.cert_file`` (the SDK
always dials ``wss://``, so the fake serves TLS with a self-signed certificate for 127.0.0.1 that it
makes on start). See ../shared/reference/speech-to-speech.md §2 for the wire facts it follows.

A session: the ``setup`` message first (else close 1007), then ``{"setupComplete":{}}``. The user's
turns come from an energy VAD on the 16 kHz input (or ``audioStreamEnd``, ``activityEnd`` when the
client turned automatic activity detection off, a ``realtime_input.text``, a ``client_content``
turn). Each turn of the script answers: ``inputTranscription``, a ``toolCall`` when the turn has
calls and setup declared tools (it then waits for the ``tool_response`` with the same ids), audio
(24 kHz ``modelTurn`` parts) interleaved with ``outputTranscription`` pieces, ``generationComplete``,
``turnComplete``, ``usageMetadata``. Loud input while a reply is under way interrupts it
(``interrupted``, ``turnComplete``; ``toolCallCancellation`` first if a call was pending). Keys are
read in camelCase or snake_case, audio in either base64 alphabet, frames as text or binary. A bad key
closes 1008 after the setup; ``close_sessions`` and ``go_away`` let a test end sessions its way. A
setup that asks for session resumption gets a ``sessionResumptionUpdate`` handle after each turn; a
new session whose setup names one goes on with the script where that session was. ``setup_open``
cleared holds each new session's ``setupComplete`` until it is set again (a slow reconnect).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.certificates import self_signed
from tests.fakes.gemini import FakeFunctionCall, pick
from tests.fakes.streaming_stt import LocalServer

__all__ = ["FakeFunctionCall", "FakeGeminiLive", "LiveSession", "LiveTurn", "pick"]

PATH = "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"
OUTPUT_RATE = 24_000
BAD_KEY_REASON = "API key not valid. Please pass a valid API key."


@dataclass(frozen=True, slots=True)
class LiveTurn:
    """What the fake's model hears in one user turn and how it answers."""

    heard: str = "Hello there."  # sent as the input transcription
    reply: str = "Hi! How can I help?"  # spoken and transcribed; "{tool}" = the calls' responses as JSON
    calls: Sequence[FakeFunctionCall] = ()  # asked for before the reply when setup declared tools


@dataclass
class LiveSession:
    """What one websocket session received and sent, for assertions."""

    version: str  # the API version segment of the path
    headers: dict[str, str]  # the handshake's headers
    setup: dict[str, Any] = field(default_factory=dict)  # the ``setup`` message's body
    received: list[dict[str, Any]] = field(default_factory=list)  # client messages (audio data dropped)
    sent: list[dict[str, Any]] = field(default_factory=list)  # server messages (audio data dropped)
    audio_in_ms: float = 0.0  # user audio received
    audio_out_ms: float = 0.0  # bot audio sent
    input_rates: set[int] = field(default_factory=set)  # rates named by the input audio's mime types
    tool_responses: list[dict[str, Any]] = field(default_factory=list)  # each functionResponse
    user_turns: list[str] = field(default_factory=list)  # input transcriptions sent
    replies: list[str] = field(default_factory=list)  # output transcriptions of each reply, as sent
    interrupted: int = 0  # replies cut by the user
    cancelled_calls: list[str] = field(default_factory=list)  # ids sent in toolCallCancellation
    close_code: int | None = None  # the code the server closed with (None: the client closed)
    open: bool = True
    resumed_from: str | None = None  # the resumption handle this session's setup named
    turn_ends: list[float] = field(default_factory=list)  # time.monotonic() at each user turn's end
    first_audio: list[float] = field(default_factory=list)  # ... at each reply's first audio sent
    interrupts: list[float] = field(default_factory=list)  # ... at each reply the user interrupted

    def kinds_sent(self) -> list[str]:
        """Each server message's kind: its top-level key, or ``serverContent.<field>``."""
        kinds = []
        for message in self.sent:
            [(key, body)] = message.items()
            kinds += [f"{key}.{k}" for k in body] if key == "serverContent" else [key]
        return kinds


@dataclass
class _Vad:
    """Energy VAD: speech is a run of loud chunks; ``silence_ms`` of quiet after it ends the turn."""

    threshold: float
    silence_ms: float
    speech_ms: float = 0.0  # loud audio since the turn began
    quiet_ms: float = 0.0  # quiet audio since the last loud chunk

    def feed(self, pcm: bytes, rate: int) -> tuple[bool, bool]:
        """(speech under way, turn just ended) after one chunk."""
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
        duration = 1000.0 * len(samples) / rate
        loud = bool(len(samples)) and float(np.sqrt(np.mean(samples**2))) >= self.threshold
        if loud:
            self.speech_ms += duration
            self.quiet_ms = 0.0
            return True, False
        if self.speech_ms == 0.0:
            return False, False
        self.quiet_ms += duration
        if self.quiet_ms >= self.silence_ms:
            self.reset()
            return False, True
        return True, False

    def reset(self) -> None:
        self.speech_ms = self.quiet_ms = 0.0


class _Protocol(Exception):
    """The client broke the protocol: close with ``code`` and the message as the reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeGeminiLive(LocalServer):
    """Gemini Live on ``wss://127.0.0.1:PORT``. Use as ``async with FakeGeminiLive(...) as fake``."""

    def __init__(
        self,
        *,
        api_key: str = "AIza-live-fake-0123456789",
        turns: Sequence[LiveTurn] = (LiveTurn(),),
        response_delay: float = 0.0,
        ms_per_word: float = 240.0,
        chunk_ms: float = 40.0,
        chunk_delay: float = 0.0,
        silence_ms: float = 300.0,
        loud_rms: float = 500.0,
        barge_in_ms: float = 60.0,
        tool_response_timeout: float = 10.0,
        cancel_on_interrupt: bool = True,
    ) -> None:
        super().__init__()
        self.api_key = api_key  # the only key accepted
        self.turns = list(turns)  # the answer to the n-th user turn of a session (the last repeats)
        self.response_delay = response_delay  # seconds from the end of a user turn to the first answer
        self.ms_per_word = ms_per_word  # bot audio per word of a reply
        self.chunk_ms = chunk_ms  # bot audio per modelTurn message
        self.chunk_delay = chunk_delay  # seconds between audio messages (0: as fast as the socket goes)
        self.silence_ms = silence_ms  # quiet input that ends a user turn
        self.loud_rms = loud_rms  # input RMS at or above this is speech
        self.barge_in_ms = barge_in_ms  # speech during a reply that interrupts it
        self.tool_response_timeout = tool_response_timeout  # a pending call not answered: close 1011
        self.cancel_on_interrupt = cancel_on_interrupt  # False: calls stay pending through a barge-in
        self.sessions: list[LiveSession] = []
        self.setup_open = asyncio.Event()  # cleared: new sessions wait for it before setupComplete
        self.setup_open.set()
        self.handles: dict[str, int] = {}  # resumption handle given out -> user turns answered by then
        self.cert_file = Path()  # set by start(): the certificate a client must trust
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._open: dict[int, tuple[web.WebSocketResponse, LiveSession]] = {}
        self.app.router.add_get(PATH, self._session)

    @property
    def base_url(self) -> str:
        """What ``HttpOptions(base_url=...)`` takes."""
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Make a certificate for 127.0.0.1 and listen with TLS on a free loopback port."""
        from aiohttp.web_runner import AppRunner, SockSite

        self._folder = tempfile.TemporaryDirectory(prefix="fake-gemini-live-")
        self.cert_file, key_file = self_signed(Path(self._folder.name))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.cert_file, key_file)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._runner = AppRunner(self.app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await SockSite(self._runner, sock, ssl_context=tls).start()

    async def close(self) -> None:
        await super().close()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    async def close_sessions(self, code: int = 1011, reason: str = "Internal error encountered.") -> None:
        """Close every open session with ``code`` (1000 included: the SDK raises for any close)."""
        for ws, session in list(self._open.values()):
            session.close_code = code
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=code, message=reason.encode()), 2.0)

    async def go_away(self, time_left: str = "10s") -> None:
        """Tell every open session the connection ends soon."""
        for ws, session in list(self._open.values()):
            await self._send(ws, session, {"goAway": {"timeLeft": time_left}})

    def answer(self, turn: int) -> LiveTurn:
        """The script's answer to a session's ``turn``-th user turn (0-based)."""
        return self.turns[min(turn, len(self.turns) - 1)]

    async def _session(self, request: web.Request) -> web.StreamResponse:
        session = LiveSession(request.match_info["version"], dict(request.headers))
        self.sessions.append(session)
        ws = await self.accept(request)
        self._open[id(ws)] = (ws, session)
        try:
            await _Conversation(self, ws, session).run()
        except _Protocol as error:
            session.close_code = error.code
            await ws.close(code=error.code, message=str(error).encode()[:120])
        finally:
            del self._open[id(ws)]
            session.open = False
            self.untrack(ws)
            self.changed()
        return ws

    async def _send(self, ws: web.WebSocketResponse, session: LiveSession, message: dict[str, Any]) -> None:
        if ws.closed:
            return
        await ws.send_str(json.dumps(message))
        session.sent.append(_without_audio(message))
        self.changed()


class _Conversation:
    """One session's protocol: setup, the turns of the user and the model, interruptions."""

    def __init__(self, fake: FakeGeminiLive, ws: web.WebSocketResponse, session: LiveSession) -> None:
        self.fake = fake
        self.ws = ws
        self.session = session
        self.vad = _Vad(fake.loud_rms, fake.silence_ms)
        self.reply: asyncio.Task[None] | None = None  # the model's answer under way
        self.pending: dict[str, FakeFunctionCall] = {}  # calls sent, awaiting their responses
        self.responded = asyncio.Event()  # all pending calls answered
        self.barge_ms = 0.0  # speech heard while the reply runs
        self.turns = 0  # user turns answered
        self.manual = False  # automatic activity detection off: activityStart/End mark the turns
        self.resumable = False  # setup asked for session resumption: handles follow each turn

    async def run(self) -> None:
        first = await self._receive()
        if first is None:
            return
        setup = pick(first, "setup")
        if not isinstance(setup, dict):
            raise _Protocol(1007, "Invalid JSON payload: the first message must be 'setup'.")
        self.session.setup = setup
        if self.session.headers.get("x-goog-api-key") != self.fake.api_key:
            raise _Protocol(1008, BAD_KEY_REASON)
        detection = pick(pick(setup, "realtimeInputConfig"), "automaticActivityDetection")
        self.manual = bool(pick(detection, "disabled"))
        resumption = pick(setup, "sessionResumption")
        self.resumable = isinstance(resumption, dict)
        if self.resumable and (handle := pick(resumption, "handle")):
            if handle not in self.fake.handles:
                raise _Protocol(1007, "Invalid session resumption handle.")
            self.session.resumed_from = handle
            self.turns = self.fake.handles[handle]  # the conversation goes on where it was
        self.fake.changed()
        await self.fake.setup_open.wait()
        await self._send({"setupComplete": {}})
        try:
            while (message := await self._receive()) is not None:
                await self._handle(message)
        finally:
            if self.reply is not None:
                self.reply.cancel()
                await asyncio.wait({self.reply}, timeout=2.0)

    async def _receive(self) -> dict[str, Any] | None:
        """The next client message as JSON (text or binary frame); None once the socket closed."""
        message = await self.ws.receive()
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None
        try:
            parsed = json.loads(message.data)
        except ValueError:
            raise _Protocol(1007, "Invalid JSON payload received.") from None
        if not isinstance(parsed, dict):
            raise _Protocol(1007, "Invalid JSON payload received.")
        return parsed

    async def _send(self, message: dict[str, Any]) -> None:
        await self.fake._send(self.ws, self.session, message)

    async def _handle(self, message: dict[str, Any]) -> None:
        self.session.received.append(_without_audio(message))
        self.fake.changed()
        if (realtime := pick(message, "realtimeInput")) is not None:
            await self._realtime(realtime)
        elif (content := pick(message, "clientContent")) is not None:
            if pick(content, "turnComplete"):
                await self._end_of_turn()
        elif (response := pick(message, "toolResponse")) is not None:
            self._tool_response(response)
        elif pick(message, "setup") is not None:
            raise _Protocol(1007, "Invalid JSON payload: 'setup' may only be sent first.")

    async def _realtime(self, realtime: dict[str, Any]) -> None:
        audio = pick(realtime, "audio")
        if isinstance(audio, dict):
            await self._audio(audio)
        elif pick(realtime, "audioStreamEnd") and self.vad.speech_ms:
            self.vad.reset()
            await self._end_of_turn()
        elif pick(realtime, "activityStart") is not None and self.manual:
            await self._interrupt()
        elif (pick(realtime, "activityEnd") is not None and self.manual) or pick(realtime, "text"):
            await self._end_of_turn()

    async def _audio(self, blob: dict[str, Any]) -> None:
        mime = str(pick(blob, "mimeType") or "")
        rate = int(match[1]) if (match := re.search(r"rate=(\d+)", mime)) else 16_000
        self.session.input_rates.add(rate)
        try:
            pcm = base64.b64decode(str(pick(blob, "data") or "").replace("-", "+").replace("_", "/"))
        except ValueError:
            raise _Protocol(1007, "Invalid value at 'realtime_input.audio.data' (TYPE_BYTES).") from None
        self.session.audio_in_ms += 1000.0 * (len(pcm) // 2) / rate
        if self.manual:
            return
        speaking, ended = self.vad.feed(pcm, rate)
        if self.reply is not None and not self.reply.done() and speaking:
            self.barge_ms = self.vad.speech_ms
            if self.barge_ms >= self.fake.barge_in_ms:
                await self._interrupt()
        if ended:
            await self._end_of_turn()

    async def _end_of_turn(self) -> None:
        """The user finished a turn: answer it (a reply still under way is cut first)."""
        await self._interrupt()
        self.session.turn_ends.append(time.monotonic())
        answer = self.fake.answer(self.turns)
        self.turns += 1
        self.reply = asyncio.create_task(self._answer(answer), name="fake-gemini-live-reply")

    async def _interrupt(self) -> None:
        """Cut the reply under way, as the server does when the user speaks over it."""
        reply, self.reply = self.reply, None
        if reply is None or reply.done():
            return
        reply.cancel()
        await asyncio.wait({reply}, timeout=2.0)
        if self.pending and self.fake.cancel_on_interrupt:
            ids = list(self.pending)
            self.pending.clear()
            self.session.cancelled_calls += ids
            await self._send({"toolCallCancellation": {"ids": ids}})
        self.session.interrupted += 1
        self.session.interrupts.append(time.monotonic())
        await self._send({"serverContent": {"interrupted": True}})
        await self._send({"serverContent": {"turnComplete": True}})

    async def _answer(self, turn: LiveTurn) -> None:
        await asyncio.sleep(self.fake.response_delay)
        self.session.user_turns.append(turn.heard)
        await self._send({"serverContent": {"inputTranscription": {"text": turn.heard}}})
        reply = turn.reply
        if turn.calls and pick(self.session.setup, "tools"):
            answered = await self._call_tools(turn.calls)
            reply = reply.replace("{tool}", json.dumps([pick(a, "response") for a in answered]))
        self.session.replies.append("")
        self.session.first_audio.append(time.monotonic())
        await self._speak(reply)
        await self._send({"serverContent": {"generationComplete": True}})
        await self._send({"serverContent": {"turnComplete": True}})
        words = len(turn.reply.split())
        usage = {"promptTokenCount": 20, "responseTokenCount": words, "totalTokenCount": 20 + words}
        await self._send({"usageMetadata": usage})
        if self.resumable:
            handle = f"handle-{len(self.fake.handles) + 1}"
            self.fake.handles[handle] = self.turns
            await self._send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    async def _call_tools(self, calls: Sequence[FakeFunctionCall]) -> list[dict[str, Any]]:
        """Send the calls and wait until every one has its response; the responses."""
        start = len(self.session.tool_responses)
        functions = []
        for index, call in enumerate(calls):
            call_id = f"function-call-{start + index + 1}"
            self.pending[call_id] = call
            functions.append({"id": call_id, "name": call.name, "args": call.args})
        self.responded.clear()
        await self._send({"toolCall": {"functionCalls": functions}})
        try:
            await asyncio.wait_for(self.responded.wait(), self.fake.tool_response_timeout)
        except TimeoutError:
            await self.ws.close(code=1011, message=b"Deadline expired before operation could complete.")
        return self.session.tool_responses[start:]

    def _tool_response(self, response: dict[str, Any]) -> None:
        for answer in pick(response, "functionResponses") or []:
            call_id = pick(answer, "id")
            if call_id not in self.pending:
                raise _Protocol(1007, f"Invalid function response: unknown id '{call_id}'.")
            if pick(answer, "name") != self.pending[call_id].name:
                raise _Protocol(1007, f"Invalid function response: wrong name for id '{call_id}'.")
            del self.pending[call_id]
            self.session.tool_responses.append(answer)
        if not self.pending:
            self.responded.set()

    async def _speak(self, reply: str) -> None:
        """Audio parts for each word, each word's transcription after its first chunk."""
        chunk = int(OUTPUT_RATE * self.fake.chunk_ms / 1000)
        for word in re.findall(r"\s*\S+", reply):
            samples = int(OUTPUT_RATE * self.fake.ms_per_word / 1000)
            for index, offset in enumerate(range(0, samples, chunk)):
                await self._send_audio(_tone(min(chunk, samples - offset), offset))
                if index == 0:
                    self.session.replies[-1] += word
                    await self._send({"serverContent": {"outputTranscription": {"text": word}}})
                if self.fake.chunk_delay:
                    await asyncio.sleep(self.fake.chunk_delay)
                else:
                    await asyncio.sleep(0)

    async def _send_audio(self, pcm: bytes) -> None:
        data = base64.b64encode(pcm).decode()
        part = {"inlineData": {"mimeType": f"audio/pcm;rate={OUTPUT_RATE}", "data": data}}
        self.session.audio_out_ms += 1000.0 * (len(pcm) // 2) / OUTPUT_RATE
        await self._send({"serverContent": {"modelTurn": {"parts": [part]}}})


def _tone(samples: int, offset: int) -> bytes:
    """``samples`` of a 220 Hz tone at 24 kHz, continuing from sample ``offset``."""
    t = (np.arange(samples) + offset) / OUTPUT_RATE
    return (6000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def _without_audio(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with base64 audio replaced by its length, so logs stay small."""
    text = json.dumps(message)
    if '"data"' not in text:
        return message
    return json.loads(re.sub(r'"data": "([^"]*)"', lambda m: f'"data": {len(m[1])}', text))  # type: ignore[no-any-return]
