"""What the streaming-STT fakes share: a loopback aiohttp server and a deterministic "recogniser".

The recogniser does not understand speech: it hands out the words of a script, one per ``ms_per_word``
of voiced audio (RMS at or above a threshold), so a test knows exactly which words a stream of real
speech or tones produces. Words of a turn that a dropped session never finalised go back to the
script, as if that audio had never been heard: a client that replays it gets them again, one that
does not loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
from aiohttp import WSMsgType, web


class WordScript:
    """The words every session of one fake server recognises, in order."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)  # the whole script
        self.position = 0  # index of the next word to hand out

    def take(self) -> str | None:
        """The next word, or None once the script is used up (more audio then yields nothing)."""
        if self.position >= len(self.words):
            return None
        word = self.words[self.position]
        self.position += 1
        return word

    def give_back(self, position: int) -> None:
        """Return the words handed out since ``position`` (their session died before finalising)."""
        self.position = min(self.position, position)


@dataclass(slots=True)
class Word:
    """One recognised word; times in milliseconds of the session's audio."""

    text: str
    start: int
    end: int


@dataclass(slots=True)
class VoicedWords:
    """Per-session recogniser state: turns words out of voiced audio, tracks the silence after them."""

    script: WordScript
    ms_per_word: int = 200  # voiced audio that makes one word
    silence_rms: float = 300.0  # chunks below this RMS are silence
    position_ms: float = 0.0  # audio received so far
    silence_ms: float = 0.0  # silence since the last voiced chunk
    in_speech: bool = False  # voiced audio seen since the last endpoint
    words: list[Word] = field(default_factory=list)  # words of the turn in progress
    turn_mark: int = 0  # script position when the turn in progress began
    _voiced_ms: float = 0.0
    _word_start: float = 0.0

    def feed(self, pcm: bytes, sample_rate: int) -> tuple[bool, list[Word]]:
        """Take one chunk; returns (speech just started, words recognised in it)."""
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
        duration = 1000.0 * len(samples) / sample_rate
        rms = float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0
        start, self.position_ms = self.position_ms, self.position_ms + duration
        if rms < self.silence_rms:
            self.silence_ms += duration
            return False, []
        started = not self.in_speech
        if started:
            self.in_speech = True
            self.turn_mark = self.script.position
        self.silence_ms = 0.0
        if self._voiced_ms == 0.0:
            self._word_start = start
        self._voiced_ms += duration
        new: list[Word] = []
        while self._voiced_ms >= self.ms_per_word:
            self._voiced_ms -= self.ms_per_word
            text = self.script.take()
            if text is not None:
                new.append(Word(text, round(self._word_start), round(self.position_ms)))
            self._word_start = self.position_ms
        self.words.extend(new)
        return started, new

    def endpoint(self) -> list[Word]:
        """End the turn in progress: its words, and a fresh state for the next one."""
        words, self.words = self.words, []
        self.in_speech = False
        self._voiced_ms = 0.0
        self.silence_ms = 0.0
        self.turn_mark = self.script.position
        return words

    def abandon(self) -> None:
        """The session died mid-turn: its unfinalised words return to the script."""
        if self.words or self.in_speech:
            self.script.give_back(self.turn_mark)
        self.words = []


@dataclass
class StreamSession:
    """What one websocket session received and sent, for assertions (each fake adds its own fields)."""

    query: dict[str, str]  # the connection's query parameters, as sent
    headers: dict[str, str]  # the handshake's headers
    received: list[dict[str, Any]] = field(default_factory=list)  # JSON messages from the client
    chunks_ms: list[float] = field(default_factory=list)  # duration of each audio chunk
    sent: list[dict[str, Any]] = field(default_factory=list)  # JSON messages to the client
    close_code: int | None = None  # the code the server closed with (None: the client closed)
    open: bool = True  # False once the websocket is done

    @property
    def audio_ms(self) -> float:
        """Audio received, in milliseconds."""
        return sum(self.chunks_ms)


class LocalServer:
    """An aiohttp app on 127.0.0.1 at a free port; closes every websocket it accepted on exit."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.port = 0  # set by start()
        self._runner: web.AppRunner | None = None
        self.rejected: list[dict[str, str]] = []  # handshake headers of connections refused for auth
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT``."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        """Close open websockets (1001 going away), then the server."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"server shutting down"), 1.0)
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 5.0)
            self._runner = None

    async def refuse(
        self, request: web.Request, how: Literal["http", "close"], body: dict[str, Any], reason: bytes
    ) -> web.StreamResponse:
        """Refuse a handshake's key: HTTP 401 with ``body``, or accept and close 1008 with ``reason``."""
        self.rejected.append(dict(request.headers))
        self.changed()
        if how == "http":
            return web.json_response(body, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=1008, message=reason)
        return ws

    async def accept(self, request: web.Request) -> web.WebSocketResponse:
        """Complete the websocket handshake and track the socket."""
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        self.track(ws)
        return ws

    async def send(self, ws: web.WebSocketResponse, session: StreamSession, message: dict[str, Any]) -> None:
        """Send a JSON message, unless the socket is closed, and record it."""
        if ws.closed:
            return
        await ws.send_json(message)
        session.sent.append(message)
        self.changed()

    def track(self, ws: web.WebSocketResponse) -> None:
        """Remember an accepted websocket so ``close`` can close it."""
        self._sockets.add(ws)

    def untrack(self, ws: web.WebSocketResponse) -> None:
        """Forget a finished websocket."""
        self._sockets.discard(ws)

    def finished(self, ws: web.WebSocketResponse, session: StreamSession) -> None:
        """A session's websocket is done: mark it closed, forget the socket, wake waiters."""
        session.open = False
        self.untrack(ws)
        self.changed()

    def changed(self) -> None:
        """Wake ``wait_until`` callers: the server's state moved on."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` is true; ``TimeoutError`` after ``timeout`` seconds."""

        async def poll() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(poll(), timeout)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def serve_messages(
    ws: web.WebSocketResponse,
    idle_timeout: float,
    on_audio: Callable[[bytes], Awaitable[None]],
    on_text: Callable[[str], Awaitable[None]],
) -> bool:
    """Hand each client message to ``on_audio`` / ``on_text`` until the socket closes (True) or the
    client sends nothing for ``idle_timeout`` seconds (False: the fake then ends the session its way)."""
    while not ws.closed:
        try:
            message = await ws.receive(timeout=idle_timeout)
        except TimeoutError:
            return False
        if message.type == WSMsgType.BINARY:
            await on_audio(message.data)
        elif message.type == WSMsgType.TEXT:
            await on_text(message.data)
        else:
            return True  # the client closed (or the connection broke)
    return True
