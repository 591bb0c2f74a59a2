"""A local AssemblyAI streaming v3 server (``/v3/ws`` and ``/v3/token``) for tests.

It speaks the protocol the official SDK speaks (see ../shared/reference/providers.md): ``Begin``,
``SpeechStarted``, partial and final ``Turn``s with every required field, ``Termination`` after
``Terminate``, ``Error`` followed by a close with the same code, close 1008 for a bad key, temporary
tokens. Words come from a script (``tests.fakes.streaming_stt``); a turn ends after
``max_turn_silence`` ms of silence, on ``ForceEndpoint`` or on ``Terminate``. Knobs make it misbehave
the ways real sessions do: reject the key, expire a session mid-turn, answer slowly, send garbage.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from aiohttp import web

from tests.fakes.streaming_stt import (
    LocalServer,
    StreamSession,
    VoicedWords,
    Word,
    WordScript,
    serve_messages,
)

SPEECH_MODELS = (
    "u3-rt-pro",
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "whisper-rt",
)
_BOOLEANS = {"true": True, "false": False}
_FLOATS = ("end_of_turn_confidence_threshold", "vad_threshold")
_INTS = ("min_turn_silence", "max_turn_silence", "inactivity_timeout")
_SESSION_KEYS = (
    "end_of_turn_confidence_threshold",
    "min_turn_silence",
    "max_turn_silence",
    "vad_threshold",
    "format_turns",
    "keyterms_prompt",
    "prompt",
    "filter_profanity",
    "interruption_delay",
)


class ProtocolViolation(Exception):
    """The client broke the protocol: the fake answers with an Error and closes with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session(StreamSession):
    """What one websocket session received and sent, for assertions."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    config: dict[str, Any] = field(default_factory=dict)  # parsed configuration, updates applied
    received_at_ms: list[float] = field(default_factory=list)  # audio received before each message
    updates: list[dict[str, Any]] = field(default_factory=list)  # UpdateConfiguration messages
    finals: list[str] = field(default_factory=list)  # final transcripts sent
    turn_order: int = 0
    terminated: bool = False  # ended by Terminate -> Termination

    def types_received(self) -> list[str]:
        """The ``type`` of each JSON message from the client, in order."""
        return [str(m.get("type")) for m in self.received]


class FakeAssemblyAI(LocalServer):
    """AssemblyAI streaming v3 on 127.0.0.1. Use as ``async with FakeAssemblyAI(...) as fake``."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        words: Sequence[str] = ("hello", "world"),
        ms_per_word: int = 200,
        silence_rms: float = 300.0,
        auth_failure: Literal["close", "http"] = "close",
        expire_after_ms: float | None = None,
        expire_sessions: int = 1,
        response_delay: float = 0.0,
        malformed: Literal["json", "turn"] | None = None,
        malformed_after_words: int = 1,
        max_sessions: int = 10,
        max_session_ms: float = 120_000.0,
        idle_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key  # the one key accepted
        self.script = WordScript(words)  # what every session "recognises", in order
        self.ms_per_word = ms_per_word  # voiced audio per recognised word
        self.silence_rms = silence_rms  # below this a chunk is silence
        self.auth_failure = auth_failure  # bad key: "close" = accept then close 1008; "http" = 401
        self.expire_after_ms = expire_after_ms  # Error 3008 + close once a session got this much audio
        self.expire_sessions = expire_sessions  # ... in this many first sessions
        self.response_delay = response_delay  # seconds before each Turn (a slow server)
        self.malformed = malformed  # send one broken message: "json" (not JSON) or "turn" (fields missing)
        self.malformed_after_words = malformed_after_words  # ... once this many words were recognised
        self.max_sessions = max_sessions  # sessions beyond this get Error 3009
        self.max_session_ms = max_session_ms  # audio per session before it expires (3008)
        self.idle_timeout = idle_timeout  # seconds without a message before the server gives up
        self.sessions: list[Session] = []
        self.token_requests: list[dict[str, str]] = []  # query of each /v3/token request
        self.tokens: dict[str, float] = {}  # unused temporary token -> expiry (time.time())
        self._words_sent = 0
        self._malformed_sent = False
        self.app.router.add_get("/v3/ws", self._session)
        self.app.router.add_get("/v3/token", self._token)

    @property
    def finals(self) -> list[str]:
        """Every final transcript sent, across sessions, in order."""
        return [text for session in self.sessions for text in session.finals]

    # --- HTTP: temporary tokens --------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        self.changed()
        if request.headers.get("Authorization") != self.api_key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        try:
            expires = int(request.query.get("expires_in_seconds", ""))
        except ValueError:
            expires = 0
        if not 1 <= expires <= 600:
            return web.json_response({"error": "expires_in_seconds must be between 1 and 600"}, status=400)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + expires
        return web.json_response({"token": token})

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        if header is not None and header == self.api_key:
            return True
        token = request.query.get("token") or header
        expiry = self.tokens.pop(token, None) if token else None  # a temporary token is single-use
        return expiry is not None and expiry >= time.time()

    # --- websocket sessions ------------------------------------------------------------------------

    async def _session(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            body = {"error": "Invalid API key"}
            return await self.refuse(request, self.auth_failure, body, b"Invalid API key")
        ws = await self.accept(request)
        session = Session(query=dict(request.query), headers=dict(request.headers))
        self.sessions.append(session)
        self.changed()
        recogniser = VoicedWords(self.script, self.ms_per_word, self.silence_rms)
        try:
            if len(self.sessions) > self.max_sessions:
                raise ProtocolViolation(3009, "Too many concurrent sessions")
            session.config = _configuration(session.query)
            await self._send(ws, session, _begin(session))
            await self._serve(ws, session, recogniser)
        except ProtocolViolation as violation:
            await self._fail(ws, session, violation.code, str(violation))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if not session.terminated:
                recogniser.abandon()
            self.finished(ws, session)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords) -> None:
        on_audio = partial(self._audio, ws, session, recogniser)
        on_text = partial(self._control, ws, session, recogniser)
        if not await serve_messages(ws, self.idle_timeout, on_audio, on_text):
            raise ProtocolViolation(3005, f"no message for {self.idle_timeout:g}s")

    async def _audio(
        self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords, pcm: bytes
    ) -> None:
        rate = int(session.config["sample_rate"])
        duration = 1000.0 * len(pcm) / 2 / rate
        if not 50.0 - 1e-6 <= duration <= 1000.0 + 1e-6:
            raise ProtocolViolation(
                3007, f"Input duration violation: {duration:.0f} ms. Expected between 50 and 1000 ms"
            )
        session.chunks_ms.append(duration)
        expires = self.expire_after_ms is not None and len(self.sessions) <= self.expire_sessions
        if (expires and session.audio_ms >= (self.expire_after_ms or 0)) or (
            session.audio_ms >= self.max_session_ms
        ):
            recogniser.abandon()
            raise ProtocolViolation(3008, "Session Expired: Maximum session duration exceeded")
        before = recogniser.position_ms
        started, new = recogniser.feed(pcm, rate)
        if started:
            await self._send(
                ws, session, {"type": "SpeechStarted", "timestamp": round(before), "confidence": 0.9}
            )
        if new:
            self._words_sent += len(new)
            await self._send(
                ws, session, _turn(session, recogniser.words, end_of_turn=False, formatted=False)
            )
            await self._maybe_malformed(ws, session)
        if recogniser.in_speech and recogniser.silence_ms >= session.config["max_turn_silence"]:
            await self._end_turn(ws, session, recogniser)

    async def _control(
        self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords, text: str
    ) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise ProtocolViolation(4100, "Endpoint received invalid JSON") from None
        session.received.append(message)
        session.received_at_ms.append(session.audio_ms)
        self.changed()
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "Terminate":
            await self._end_turn(ws, session, recogniser)
            seconds = round(session.audio_ms / 1000)
            await self._send(
                ws,
                session,
                {
                    "type": "Termination",
                    "audio_duration_seconds": seconds,
                    "session_duration_seconds": seconds,
                },
            )
            session.terminated = True
            session.close_code = 1000
            await ws.close(code=1000)
        elif kind == "ForceEndpoint":
            await self._end_turn(ws, session, recogniser)
        elif kind == "UpdateConfiguration":
            update = {k: v for k, v in message.items() if k != "type"}
            unknown = sorted(set(update) - set(_SESSION_KEYS))
            if unknown:
                raise ProtocolViolation(4101, f"UpdateConfiguration has unknown keys {unknown}")
            session.updates.append(update)
            session.config.update(update)
        elif kind != "KeepAlive":
            raise ProtocolViolation(4101, f"Endpoint received a message with an invalid schema: {kind!r}")

    async def _end_turn(self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords) -> None:
        words = recogniser.endpoint()
        if not words:
            return
        final = _turn(session, words, end_of_turn=True, formatted=False)
        await self._send(ws, session, final)
        if session.config.get("format_turns"):
            final = _turn(session, words, end_of_turn=True, formatted=True)
            await self._send(ws, session, final)
        session.finals.append(final["transcript"])
        session.turn_order += 1
        self.changed()

    async def _maybe_malformed(self, ws: web.WebSocketResponse, session: Session) -> None:
        if self.malformed is None or self._malformed_sent or self._words_sent < self.malformed_after_words:
            return
        self._malformed_sent = True
        if self.malformed == "json":
            await ws.send_str('{"type": "Turn", "transcript": ')
        else:
            await ws.send_json({"type": "Turn", "turn_order": session.turn_order, "transcript": "oops"})

    async def _send(self, ws: web.WebSocketResponse, session: Session, message: dict[str, Any]) -> None:
        if self.response_delay and message.get("type") == "Turn":
            await asyncio.sleep(self.response_delay)
        await self.send(ws, session, message)

    async def _fail(self, ws: web.WebSocketResponse, session: Session, code: int, reason: str) -> None:
        if ws.closed:
            return
        await self._send(ws, session, {"type": "Error", "error_code": code, "error": reason})
        session.close_code = code
        await ws.close(code=code, message=reason.encode()[:120])


def _configuration(query: dict[str, str]) -> dict[str, Any]:
    """The session configuration from the connection's query, validated as the service does."""
    config: dict[str, Any] = {
        "speech_model": "universal-streaming-english",
        "encoding": "pcm_s16le",
        "format_turns": False,
        "end_of_turn_confidence_threshold": 0.4,
        "min_turn_silence": 400,
        "max_turn_silence": 1280,
    }
    try:
        sample_rate = int(query["sample_rate"])
    except (KeyError, ValueError):
        raise ProtocolViolation(3006, "Invalid sample_rate: a positive integer is required") from None
    if sample_rate <= 0:
        raise ProtocolViolation(3006, "Invalid sample_rate: a positive integer is required")
    config["sample_rate"] = sample_rate
    for key, value in query.items():
        if key in ("sample_rate", "token"):
            continue
        config[key] = _parse_value(key, value)
    if config["encoding"] != "pcm_s16le":
        raise ProtocolViolation(
            3006, f"Unsupported encoding {config['encoding']!r} (the fake takes pcm_s16le)"
        )
    if config["speech_model"] not in SPEECH_MODELS:
        raise ProtocolViolation(3006, f"Invalid speech_model {config['speech_model']!r}")
    return config


def _parse_value(key: str, value: str) -> Any:
    try:
        if value.lower() in _BOOLEANS:
            return _BOOLEANS[value.lower()]
        if key in _FLOATS:
            return float(value)
        if key in _INTS:
            return int(value)
        if key == "keyterms_prompt":
            terms = json.loads(value)
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
                raise ValueError("a JSON list of strings is required")
            return terms
    except ValueError as error:
        raise ProtocolViolation(3006, f"Invalid {key}: {error}") from None
    return value


def _begin(session: Session) -> dict[str, Any]:
    return {
        "type": "Begin",
        "id": session.id,
        "expires_at": int(time.time()) + 3 * 3600,
        "configuration": {"model": session.config["speech_model"], "api_version": "2025-05-12"},
    }


def _turn(session: Session, words: list[Word], *, end_of_turn: bool, formatted: bool) -> dict[str, Any]:
    texts = [w.text for w in words]
    if formatted and texts:
        texts[0] = texts[0][:1].upper() + texts[0][1:]
        texts[-1] += "."
    transcript = " ".join(texts)
    return {
        "type": "Turn",
        "turn_order": session.turn_order,
        "turn_is_formatted": formatted,
        "end_of_turn": end_of_turn,
        "transcript": transcript,
        "utterance": transcript if end_of_turn else "",
        "end_of_turn_confidence": 1.0 if end_of_turn else 0.2,
        "words": [
            {
                "start": w.start,
                "end": w.end,
                "text": text,
                "confidence": 0.95,
                "word_is_final": end_of_turn or i < len(words) - 1,
            }
            for i, (w, text) in enumerate(zip(words, texts, strict=True))
        ],
        "language_code": "en",
        "language_confidence": 0.99,
    }
