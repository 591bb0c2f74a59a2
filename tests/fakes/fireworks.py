"""A local Fireworks streaming-transcription server (``/v1/audio/transcriptions/streaming``) for tests.

The protocol as Fireworks documents it (see ../shared/reference/providers.md; there is no SDK): binary
PCM s16le 16 kHz mono in 50-400 ms chunks; ``verbose_json`` messages whose ``segments`` carry an ``id``
the client keys its state on (updates overwrite); ``{"checkpoint_id": ...}`` echoed once the audio
before it is transcribed; ``stt.state.clear`` and ``stt.input.trace`` answered. Words come from a
script (``tests.fakes.streaming_stt``); a segment closes after ``segment_silence_ms`` of silence or at
a checkpoint (any id is echoed: ``"final"`` at the end, the node's ``"endpoint-N"`` when the user
stopped), and its closing update revises the text (capital, full stop), as Whisper does.
"""

from __future__ import annotations

import asyncio
import json
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

PATH = "/v1/audio/transcriptions/streaming"
MODELS = ("whisper-v3", "whisper-v3-turbo")
RATE = 16000


@dataclass
class Session(StreamSession):
    """What one websocket session received and sent, for assertions."""

    bad_messages: list[str] = field(default_factory=list)  # text messages that were not JSON
    bad_chunks: list[float] = field(default_factory=list)  # durations outside 50-400 ms
    segments: list[str] = field(default_factory=list)  # latest text of each segment, by index
    received_at_ms: list[float] = field(default_factory=list)  # audio received before each JSON message
    closed: int = 0  # segments closed (their final text sent)

    @property
    def checkpoints(self) -> list[str]:
        """``checkpoint_id`` of each checkpoint the client sent."""
        return [str(m["checkpoint_id"]) for m in self.received if "checkpoint_id" in m]


class FakeFireworks(LocalServer):
    """Fireworks streaming ASR on 127.0.0.1. Use as ``async with FakeFireworks(...) as fake``."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        words: tuple[str, ...] | list[str] = ("hello", "world"),
        ms_per_word: int = 200,
        silence_rms: float = 300.0,
        segment_silence_ms: float = 400.0,
        id_style: Literal["str", "int", "mixed"] = "str",
        auth_failure: Literal["http", "close"] = "http",
        drop_after_ms: float | None = None,
        drop_sessions: int = 1,
        drop_code: int = 1011,
        response_delay: float = 0.0,
        malformed_after_words: int | None = None,
        echo_final: bool = True,
        checkpoint_keeps_segment: bool = False,
        max_sessions: int = 10,
        idle_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key  # the one key accepted
        self.script = WordScript(words)  # what every session "recognises", in order
        self.ms_per_word = ms_per_word  # voiced audio per recognised word
        self.silence_rms = silence_rms  # below this a chunk is silence
        self.segment_silence_ms = segment_silence_ms  # silence that closes a segment
        self.id_style = id_style  # segment ids as "0" strings, 0 numbers, or both alternating
        self.auth_failure = auth_failure  # bad key: "http" = 401 at the handshake; "close" = close 1008
        self.drop_after_ms = drop_after_ms  # close abnormally once a session got this much audio
        self.drop_sessions = drop_sessions  # ... in this many first sessions
        self.drop_code = drop_code  # ... with this close code
        self.response_delay = response_delay  # seconds before each transcription message (slow server)
        self.malformed_after_words = malformed_after_words  # send one non-JSON message after N words
        self.echo_final = echo_final  # False: never echo the "final" checkpoint (a stuck server)
        # True: a checkpoint other than "final" leaves the segment open, so later words extend the same
        # id (what the real service does mid-stream is undocumented)
        self.checkpoint_keeps_segment = checkpoint_keeps_segment
        self.max_sessions = max_sessions  # sessions beyond this are refused (HTTP 429)
        self.idle_timeout = idle_timeout  # seconds without a message before the server closes
        self.sessions: list[Session] = []
        self._words_sent = 0
        self._malformed_sent = False
        self.app.router.add_get(PATH, self._session)

    @property
    def finals(self) -> list[str]:
        """The closed segments' final texts, across sessions, in order."""
        return [text for s in self.sessions for text in s.segments[: s.closed]]

    def _segment_id(self, index: int) -> str | int:
        if self.id_style == "int" or (self.id_style == "mixed" and index % 2):
            return index
        return str(index)

    async def _session(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization") or request.query.get("Authorization")
        if key != self.api_key:
            body = {"error": {"message": "Unauthorized", "code": 401}}
            return await self.refuse(request, self.auth_failure, body, b"Unauthorized")
        problem = _query_problem(request.query)
        if problem:
            return web.json_response({"error": {"message": problem, "code": 400}}, status=400)
        if len(self.sessions) >= self.max_sessions:
            return web.json_response({"error": {"message": "too many sessions", "code": 429}}, status=429)
        ws = await self.accept(request)
        session = Session(query=dict(request.query), headers=dict(request.headers))
        self.sessions.append(session)
        self.changed()
        recogniser = VoicedWords(self.script, self.ms_per_word, self.silence_rms)
        try:
            await self._serve(ws, session, recogniser)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            recogniser.abandon()
            self.finished(ws, session)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords) -> None:
        on_audio = partial(self._audio, ws, session, recogniser)
        on_text = partial(self._control, ws, session, recogniser)
        if not await serve_messages(ws, self.idle_timeout, on_audio, on_text):
            await self._close(ws, session, 1000, "idle")

    async def _audio(
        self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords, pcm: bytes
    ) -> None:
        duration = 1000.0 * len(pcm) / 2 / RATE
        if not 50.0 - 1e-6 <= duration <= 400.0 + 1e-6:
            session.bad_chunks.append(duration)
        session.chunks_ms.append(duration)
        drops = self.drop_after_ms is not None and len(self.sessions) <= self.drop_sessions
        if drops and session.audio_ms >= (self.drop_after_ms or 0):
            await self._close(ws, session, self.drop_code, "internal error")  # the open segment is lost
            return
        _, new = recogniser.feed(pcm, RATE)
        if new:
            self._words_sent += len(new)
            await self._update(ws, session, recogniser.words, closing=False)
            await self._maybe_malformed(ws)
        if recogniser.words and recogniser.silence_ms >= self.segment_silence_ms:
            await self._close_segment(ws, session, recogniser)
        elif (
            not recogniser.words and recogniser.in_speech and recogniser.silence_ms >= self.segment_silence_ms
        ):
            recogniser.endpoint()

    async def _maybe_malformed(self, ws: web.WebSocketResponse) -> None:
        after = self.malformed_after_words
        if after is None or self._malformed_sent or self._words_sent < after:
            return
        self._malformed_sent = True
        await ws.send_str('{"segments": [{"id": "0", "text": ')

    async def _control(
        self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords, text: str
    ) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            session.bad_messages.append(text)
            return
        session.received.append(message)
        session.received_at_ms.append(session.audio_ms)
        self.changed()
        if not isinstance(message, dict):
            return
        if "checkpoint_id" in message:
            final = message["checkpoint_id"] == "final"
            if final or not self.checkpoint_keeps_segment:
                await self._close_segment(ws, session, recogniser)
            if not final or self.echo_final:
                await self.send(ws, session, {"checkpoint_id": message["checkpoint_id"]})
        elif message.get("object") == "stt.state.clear":
            recogniser.endpoint()
            reply = {"event_id": message.get("event_id"), "object": "stt.state.cleared"}
            await self.send(ws, session, {**reply, "reset_id": message.get("reset_id")})
        elif message.get("object") == "stt.input.trace":
            await self.send(ws, session, {"object": "stt.output.trace", "trace_id": message.get("trace_id")})

    async def _close_segment(
        self, ws: web.WebSocketResponse, session: Session, recogniser: VoicedWords
    ) -> None:
        words = recogniser.endpoint()
        if words:
            await self._update(ws, session, words, closing=True)
            session.closed += 1
            self.changed()

    async def _update(
        self, ws: web.WebSocketResponse, session: Session, words: list[Word], *, closing: bool
    ) -> None:
        """A transcription message carrying the open segment (revised with punctuation when it closes)."""
        index = session.closed
        texts = [w.text for w in words]
        if closing:
            texts[0] = texts[0][:1].upper() + texts[0][1:]
            texts[-1] += "."
        text = " ".join(texts)
        if index < len(session.segments):
            session.segments[index] = text
        else:
            session.segments.append(text)
        word_list = [
            {"word": t, "start": w.start / 1000, "end": w.end / 1000, "probability": 0.9}
            for w, t in zip(words, texts, strict=True)
        ]
        segment = {
            "id": self._segment_id(index),
            "start": words[0].start / 1000,
            "end": words[-1].end / 1000,
            "text": text,
            "words": word_list,
        }
        message = {
            "task": "transcribe",
            "language": session.query.get("language") or "en",
            "text": " ".join(session.segments),
            "words": word_list,
            "segments": [segment],
        }
        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        await self.send(ws, session, message)

    async def _close(self, ws: web.WebSocketResponse, session: Session, code: int, reason: str) -> None:
        session.close_code = code
        await ws.close(code=code, message=reason.encode())


def _query_problem(query: Any) -> str | None:
    """Why the service would refuse this query (HTTP 400), or None."""
    if query.get("model", "whisper-v3") not in MODELS:
        return f"unknown model {query.get('model')!r}"
    if query.get("response_format", "verbose_json") != "verbose_json":
        return "streaming supports response_format=verbose_json only"
    try:
        float(query.get("temperature", "0"))
    except ValueError:
        return "temperature must be a number"
    return None
