"""The websocket server over real sockets: sessions, limits, errors, shutdown and the conversation API.

The graphs here use small processors defined below (``type: tests.test_websocket_server:...``):
``Counter`` answers a typed question with how much audio its own connection sent, like a tiny
assistant (transcript, streamed reply, TTS audio), and ``TranscriptSaver`` saves a conversation the
way the recorder does, so the session id, draining and the API are tested end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import numpy as np
import pytest
from yarl import URL

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    Frame,
    InterimTranscriptFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TranscriptFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
    UserTextFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from tests.speech import read_wav
from tests.spoken_replies import HeardTap, sentences, tone
from transports.websocket.api import Recordings
from transports.websocket.nodes import WebsocketInput
from transports.websocket.protocol import Audio, PushToTalk, Start, UserText
from transports.websocket.server import VoiceServer
from transports.websocket.session import Connection, Inbound

ROOT = Path(__file__).resolve().parent.parent
BOT_RATE = 24000
TIMEOUT = 10.0


# --- processors used by the test graphs ----------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class CounterParams:
    reply_ms: int = param(200, doc="bot audio per reply")


class Counter(Processor):
    """Counts its connection's audio; a typed message gets a reply saying how much arrived.

    ``long`` asks for 3 s of bot audio, ``barge`` starts an interruption, ``fail`` raises.
    """

    Params = CounterParams
    params: CounterParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, UserTextFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (
        InterimTranscriptFrame,
        TranscriptFrame,
        LLMTextFrame,
        TTSTextFrame,
        BotAudioFrame,
    )

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.audio_ms = 0.0

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            self.audio_ms += frame.duration * 1000
            await self.push(frame)  # user audio goes on, as a VAD or STT passes it
            return
        assert isinstance(frame, UserTextFrame)
        if frame.text == "barge":
            await self.interrupt()
            return
        if frame.text == "fail":
            raise RuntimeError("asked to fail")
        await self.push(InterimTranscriptFrame(text=frame.text.split()[0]))
        await self.push(UserStoppedSpeakingFrame(at=time.monotonic()))
        await self.push(TranscriptFrame(text=frame.text))
        if frame.text == "sentences":
            await self._sentences(3, 300)
            return
        reply_ms = 3000 if frame.text == "long" else self.params.reply_ms
        for frame_out in (
            LLMResponseStartFrame(),
            LLMTextFrame(text="heard "),
            LLMTextFrame(text=f"{self.audio_ms:.0f} ms"),
            LLMResponseEndFrame(),
            TTSStartedFrame(),
            TTSTextFrame(text=f"heard {self.audio_ms:.0f} ms"),
            BotAudioFrame(pcm=tone(reply_ms, BOT_RATE), sample_rate=BOT_RATE),
            TTSStoppedFrame(),
        ):
            await self.push(frame_out)

    async def _sentences(self, count: int, ms: int) -> None:
        for frame in sentences(count, ms, BOT_RATE):
            await self.push(frame)


class Engine(Processor):
    """Counts its starts and stops: the warm-up must start it once, then stop it."""

    handles: ClassVar[tuple[type[Frame], ...]] = ()
    events: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        Engine.events.append("start")

    async def on_stop(self) -> None:
        Engine.events.append("stop")


@dataclass(slots=True, kw_only=True)
class KeyedParams:
    api_key: str = param(doc="a provider key", secret=True)


class KeyedEngine(Processor):
    """Fails to start like an SDK refusing a key: its error quotes the request, key included."""

    Params = KeyedParams
    params: KeyedParams
    handles: ClassVar[tuple[type[Frame], ...]] = ()

    async def on_start(self) -> None:
        raise RuntimeError(f"401: Authorization: Bearer {self.params.api_key}")


@dataclass(slots=True, kw_only=True)
class SaverParams:
    directory: str = param(doc="where conversations are saved")
    session_id: str = param("offline", doc="the conversation's folder")


class TranscriptSaver(Processor):
    """Saves ``{directory}/{session_id}/transcript.json`` and a user.wav at the end, like the recorder."""

    Params = SaverParams
    params: SaverParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, UserTextFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, UserTextFrame)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.started = time.time()
        self.user_audio = bytearray()
        self.messages: list[dict[str, str]] = []
        self.session_id = self.params.session_id

    def bind_session(self, session_id: str) -> None:  # a ConversationKeeper, like the recorder
        self.session_id = session_id

    @property
    def conversations_directory(self) -> Path:
        return Path(self.params.directory)

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame) and not isinstance(frame, BotAudioFrame):
            self.user_audio += frame.pcm
        elif isinstance(frame, UserTextFrame):
            self.messages.append({"role": "user", "content": frame.text})
        await self.push(frame)

    async def on_stop(self) -> None:
        folder = Path(self.params.directory) / self.session_id
        folder.mkdir(parents=True, exist_ok=True)
        transcript = {
            "session_id": self.session_id,
            "start_time": self.started,
            "end_time": time.time(),
            "messages": self.messages,
            "ended_cleanly": self.ended or not self.inbox.closed,
        }
        (folder / "transcript.json").write_text(json.dumps(transcript))
        import wave

        with wave.open(str(folder / "user.wav"), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)
            wav.writeframes(bytes(self.user_audio))


HERE = "tests.test_websocket_server"
COUNTER_GRAPH = f"""
name: counter
server: {{type: websocket, port: 0, max_sessions: 3, max_message_bytes: 4096}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  counter: {{type: "{HERE}:Counter"}}
  out: {{type: websocket.output, realtime: REALTIME}}
edges:
  - mic -> counter -> out
"""
SAVER_GRAPH = f"""
name: saver
server: {{type: websocket, port: 0, max_sessions: 2}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  counter: {{type: "{HERE}:Counter"}}
  saver: {{type: "{HERE}:TranscriptSaver", directory: "DIRECTORY"}}
  out: {{type: websocket.output, realtime: false}}
edges:
  - mic -> saver -> counter -> out
"""


# --- harness -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(text: str, *overrides: str) -> AsyncIterator[tuple[VoiceServer, URL]]:
    compiled, problems = config.compile_text(text, "<test>", overrides)
    assert compiled is not None and not problems, problems
    quiet = LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None)  # admission: tests/test_admission.py
    server = VoiceServer(compiled, meter=quiet)
    await server.start()
    try:
        yield server, URL(server.url)
    finally:
        await asyncio.wait_for(server.stop(), 30)


class Client:
    """A websocket client that records every message; tests await what they expect."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any] | bytes] = []
        self._changed = asyncio.Event()
        self._replies = 0  # replies returned by reply()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
            elif message.type is aiohttp.WSMsgType.BINARY:
                self.messages.append(message.data)
            self._changed.set()
        self._changed.set()

    @property
    def json(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if isinstance(m, dict)]

    @property
    def audio(self) -> bytes:
        return b"".join(m for m in self.messages if isinstance(m, bytes))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.json if m["type"] == kind]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds, re-checking as messages arrive."""

        async def wait() -> None:
            while not condition():
                if self._reader.done():
                    raise AssertionError(f"closed before {what}; got {self.json}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no {what} within {TIMEOUT}s; got {self.json}") from None

    async def wait_for(self, accept: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first message (received or still to come) that ``accept`` takes."""
        await self.until(lambda: any(accept(m) for m in self.json), what)
        return next(m for m in self.json if accept(m))

    async def reply(self) -> str:
        """The next whole reply (final ``assistant_text``) not returned before."""
        wanted = self._replies + 1
        await self.until(lambda: len(self.finals) >= wanted, "a final reply")
        self._replies = wanted
        return str(self.finals[wanted - 1]["text"])

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.of("assistant_text") if m["final"]]

    async def closed(self) -> int | None:
        """The close code, once the server has closed the connection."""
        await asyncio.wait_for(asyncio.shield(self._reader), TIMEOUT)
        return self.ws.close_code

    def vanish(self) -> None:
        """Drop the TCP connection without a close frame, like a crashed browser tab."""
        self._reader.cancel()
        connection = self.ws._conn  # aiohttp keeps no public handle on the socket
        assert connection is not None and connection.transport is not None
        connection.transport.abort()


@contextlib.asynccontextmanager
async def connect(http: aiohttp.ClientSession, base: URL) -> AsyncIterator[Client]:
    async with http.ws_connect(base / "ws") as ws:
        yield Client(ws)


# --- sessions ------------------------------------------------------------------------------------


async def test_concurrent_sessions_each_run_their_own_graph() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false")) as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as a,
        connect(http, base) as b,
    ):
        ids = [
            (await c.wait_for(lambda m: m["type"] == "session", "a session id"))["session_id"] for c in (a, b)
        ]
        assert ids[0] != ids[1]
        assert set(server.sessions) == set(ids)
        for _ in range(20):
            await a.ws.send_bytes(bytes(640))  # 400 ms in 20 ms chunks
        for _ in range(50):
            await b.ws.send_bytes(bytes(640))  # 1000 ms
        await asyncio.gather(
            a.ws.send_str('{"type":"text","text":"how much?"}'),
            b.ws.send_str('{"type":"text","text":"how much?"}'),
        )
        assert await a.reply() == "heard 400 ms"
        assert await b.reply() == "heard 1000 ms"
        for client in (a, b):
            await client.wait_for(lambda m: m["type"] == "status" and m["state"] == "listening", "listening")
            assert client.of("audio_format")[0] == {
                "type": "audio_format",
                "sample_rate": BOT_RATE,
                "channels": 1,
            }
            assert client.of("transcript") == [
                {"type": "transcript", "text": "how", "final": False},
                {"type": "transcript", "text": "how much?", "final": True},
            ]
            chunks = [m["text"] for m in client.of("assistant_text") if not m["final"]]
            assert "".join(chunks) == client.of("assistant_text")[-1]["text"]
            assert len(client.audio) == 2 * BOT_RATE * 200 // 1000  # the reply's audio, not the user's
            assert client.of("metrics") and client.of("metrics")[0]["voice_to_voice_ms"] >= 0
        first_audio = next(i for i, m in enumerate(a.messages) if isinstance(m, bytes))
        assert a.messages.index(a.of("audio_format")[0]) < first_audio


async def test_malformed_and_oversized_messages_get_errors_and_the_session_goes_on() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false")) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.ws.send_str("{not json")
        await client.ws.send_str('{"type":"sing"}')
        await client.ws.send_str('{"type":"ptt","pressed":"maybe"}')
        await client.ws.send_bytes(b"\x00\x01\x02")
        await client.ws.send_bytes(bytes(4096 + 2))  # over max_message_bytes, under the hard limit
        await client.ws.send_str(json.dumps({"type": "text", "text": "x" * 5000}))
        await client.ws.send_bytes(bytes(640))
        await client.ws.send_str('{"type":"text","text":"still there?"}')
        assert await client.reply() == "heard 20 ms"
        errors = [m["message"] for m in client.of("error")]
        assert len(errors) == 6, errors
        assert "JSON" in errors[0] and "sing" in errors[1] and "pressed" in errors[2]
        assert "odd" in errors[3] and "over the limit" in errors[4] and "over the limit" in errors[5]


async def test_a_message_beyond_the_hard_limit_closes_with_1009() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false")) as (server, base),
        aiohttp.ClientSession() as http,
    ):
        async with connect(http, base) as client:
            await client.wait_for(lambda m: m["type"] == "session", "a session id")
            await client.ws.send_bytes(bytes(4 * 4096 + 2))
            assert await client.closed() == 1009
        await _until(lambda: not server.sessions, "the session to end")


async def test_processor_errors_reach_the_client_and_the_session_goes_on() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false")) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.ws.send_str('{"type":"text","text":"fail"}')
        error = await client.wait_for(lambda m: m["type"] == "error", "an error")
        assert "counter" in error["message"] and "asked to fail" in error["message"]
        await client.ws.send_str('{"type":"text","text":"ok?"}')
        assert await client.reply() == "heard 0 ms"


async def test_a_node_that_fails_to_start_does_not_show_its_key_to_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "sk-live-0123456789abcdef"
    graph = f"""
server: {{type: websocket, port: 0}}
nodes:
  mic: {{type: websocket.input}}
  keyed: {{type: "{HERE}:KeyedEngine", api_key: "{key}"}}
  out: {{type: websocket.output}}
edges:
  - mic -> keyed -> out
"""
    async with serving(graph) as (_, base), aiohttp.ClientSession() as http, connect(http, base) as client:
        assert await client.closed() == 1011
        [error] = client.of("error")
        assert "the conversation failed" in error["message"] and "Bearer ***" in error["message"]
        assert key not in json.dumps(client.json)
    assert key not in caplog.text


async def test_barge_in_stops_bot_audio_at_once_and_says_interrupted() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "true")) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.ws.send_str('{"type":"text","text":"long"}')
        await client.wait_for(lambda m: m["type"] == "status" and m["state"] == "speaking", "speaking")
        await client.until(lambda: len(client.audio) > 0, "bot audio")
        await client.ws.send_str('{"type":"text","text":"barge"}')
        await client.wait_for(lambda m: m["type"] == "interrupted", "interrupted")
        at = next(i for i, m in enumerate(client.messages) if m == {"type": "interrupted"})
        await client.ws.send_str('{"type":"stop"}')
        assert await client.closed() == 1000
        assert not any(isinstance(m, bytes) for m in client.messages[at:]), "bot audio after the interruption"
        sent_seconds = len(client.audio) / (2 * BOT_RATE)
        assert sent_seconds < 1.0, f"{sent_seconds:.2f}s of a 3 s reply went out before the barge-in"


async def test_stop_drains_the_graph_and_saves_the_conversation(tmp_path: Path) -> None:
    graph = SAVER_GRAPH.replace("DIRECTORY", str(tmp_path))
    async with serving(graph) as (server, base), aiohttp.ClientSession() as http:
        assert server.recordings.directory == tmp_path  # from the node that keeps conversations
        async with connect(http, base) as client:
            session_id = (await client.wait_for(lambda m: m["type"] == "session", "a session id"))[
                "session_id"
            ]
            await client.ws.send_bytes(bytes(640) * 10)
            await client.ws.send_str('{"type":"text","text":"hello"}')
            await client.ws.send_str('{"type":"stop"}')
            assert await client.closed() == 1000
            assert client.of("assistant_text")[-1]["text"] == "heard 200 ms"  # the drain delivered it
            assert client.of("status")[-1]["state"] == "ended"
        saved = json.loads((tmp_path / session_id / "transcript.json").read_text())
        assert saved["session_id"] == session_id and saved["ended_cleanly"]
        listing = await (await http.get(base / "api/conversations")).json()
        assert [c["id"] for c in listing] == [session_id]
        assert listing[0]["messages"] == 1 and listing[0]["audio"] == ["user.wav"]
        one = await (await http.get(base / "api/conversations" / session_id)).json()
        assert one["messages"] == [{"role": "user", "content": "hello"}]
        download = await http.get(base / "api/conversations" / session_id / "audio/user.wav")
        assert download.status == 200 and len(await download.read()) == 44 + 6400


async def test_a_vanished_client_ends_its_graph_cleanly_mid_utterance(tmp_path: Path) -> None:
    graph = SAVER_GRAPH.replace("DIRECTORY", str(tmp_path))
    async with serving(graph) as (server, base), aiohttp.ClientSession() as http:
        async with connect(http, base) as client:
            session_id = (await client.wait_for(lambda m: m["type"] == "session", "a session id"))[
                "session_id"
            ]
            await client.wait_for(lambda m: m.get("state") == "listening", "listening")
            await client.ws.send_bytes(tone(300, 16000))  # speech in progress...
            await client.ws.send_str('{"type":"text","text":"half a sent"}')
            client.vanish()
        await _until(lambda: not server.sessions, "the session to end")
        saved = json.loads((tmp_path / session_id / "transcript.json").read_text())
        assert saved["ended_cleanly"] and saved["messages"] == [{"role": "user", "content": "half a sent"}]
        assert (tmp_path / session_id / "user.wav").stat().st_size == 44 + 2 * 16000 * 300 // 1000


async def test_an_idle_client_is_ended_cleanly_and_its_slot_freed(tmp_path: Path) -> None:
    # Heartbeat pongs keep a forgotten tab's socket open; only client messages count as activity.
    graph = SAVER_GRAPH.replace("DIRECTORY", str(tmp_path))
    async with (
        serving(graph, "server.idle_timeout=0.5") as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        session_id = (await client.wait_for(lambda m: m["type"] == "session", "a session id"))["session_id"]
        await client.ws.send_str('{"type":"text","text":"anyone?"}')
        assert await client.reply() == "heard 0 ms"
        assert await client.closed() == 1000  # then nothing more from the client
        assert client.of("error")[-1]["message"] == "no message for 0.5 s: the conversation ended"
        assert client.of("status")[-1]["state"] == "ended"
        await _until(lambda: not server.sessions, "the slot to be freed")
    saved = json.loads((tmp_path / session_id / "transcript.json").read_text())
    assert saved["ended_cleanly"] and saved["messages"] == [{"role": "user", "content": "anyone?"}]


def test_client_audio_waiting_for_the_graph_is_bounded_in_bytes_and_controls_are_kept() -> None:
    inbound = Inbound("s", max_audio_bytes=3200, max_controls=3)  # 100 ms of audio
    chunks = [Audio(bytes([i]) * 640) for i in range(10)]  # 10 x 20 ms
    events: list[Any] = [Start(), *chunks[:4], PushToTalk(True), *chunks[4:], UserText("hi")]
    assert all(inbound.put(event) for event in events)
    assert inbound.audio_bytes == 3200 and inbound.dropped == 5 and inbound.dropped_bytes == 5 * 640
    queued = [inbound._items.popleft() for _ in range(len(inbound._items))]
    assert queued == [Start(), PushToTalk(True), *chunks[5:], UserText("hi")]  # oldest audio went

    inbound = Inbound("s", max_audio_bytes=3200, max_controls=3)
    inbound.put(Audio(bytes(640)))
    clip = Audio(bytes(32000))  # one message over the bound alone (a whole clip): kept whole
    inbound.put(clip)
    assert list(inbound._items) == [clip] and inbound.audio_bytes == 32000
    assert [inbound.put(UserText(str(i))) for i in range(4)] == [True, True, True, False]


def test_uploading_clients_get_a_larger_audio_bound_than_a_live_microphone() -> None:
    bounds = {}
    for params in ({}, {"protocol": "whisper-json"}, {"audio_messages": "clip"}):
        connection = Connection("s")
        WebsocketInput(name="mic", **params).bind_connection(connection)
        bounds[str(params)] = connection.inbound.max_audio_bytes
    assert list(bounds.values()) == [160_000, 60 * 32000, 60 * 32000]


async def test_inbound_counts_what_the_input_node_takes() -> None:
    inbound = Inbound("s", max_audio_bytes=1280, max_controls=1)
    inbound.put(Audio(bytes(640)))
    inbound.put(UserText("a"))
    assert not inbound.put(UserText("b"))
    assert await asyncio.wait_for(inbound.get(), TIMEOUT) == Audio(bytes(640))
    assert await asyncio.wait_for(inbound.get(), TIMEOUT) == UserText("a")
    assert inbound.audio_bytes == 0 and inbound.put(UserText("b"))  # room again


async def test_max_sessions_refuses_extra_connections_with_a_clear_message_and_1013() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false"), "server.max_sessions=2") as (server, base),
        aiohttp.ClientSession() as http,
    ):
        health = await (await http.get(base / "health")).json()
        assert {key: health[key] for key in ("status", "active_sessions", "active_connections")} == {
            "status": "ok",
            "active_sessions": 0,
            "active_connections": 0,
        }
        assert health["max_sessions"] == 2 and health["admitting"] is True
        async with connect(http, base) as a, connect(http, base) as b:
            for client in (a, b):
                await client.wait_for(lambda m: m["type"] == "session", "a session id")
            assert (await (await http.get(base / "health")).json())["active_sessions"] == 2
            async with connect(http, base) as extra:
                assert await extra.closed() == 1013
                assert "busy" in extra.of("error")[0]["message"]
                assert not extra.of("session")
            await a.ws.send_str('{"type":"stop"}')
            await a.closed()
            await _until(lambda: len(server.sessions) == 1, "a slot to free up")
            async with connect(http, base) as again:
                await again.wait_for(lambda m: m["type"] == "session", "a session in the freed slot")


async def test_server_stop_drains_every_session_and_closes_with_1001(tmp_path: Path) -> None:
    graph = SAVER_GRAPH.replace("DIRECTORY", str(tmp_path))
    compiled, problems = config.compile_text(graph, "<test>")
    assert compiled is not None and not problems
    server = VoiceServer(compiled)
    await server.start()
    async with (
        aiohttp.ClientSession() as http,
        connect(http, URL(server.url)) as a,
        connect(http, URL(server.url)) as b,
    ):
        ids = [(await c.wait_for(lambda m: m["type"] == "session", "id"))["session_id"] for c in (a, b)]
        for client in (a, b):
            await client.wait_for(lambda m: m.get("state") == "listening", "listening")
        await asyncio.wait_for(server.stop(), 20)
        assert [await a.closed(), await b.closed()] == [1001, 1001]
    for session_id in ids:
        assert json.loads((tmp_path / session_id / "transcript.json").read_text())["ended_cleanly"]


RECORDER_GRAPH = f"""
name: recorded
server: {{type: websocket, port: 0}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: websocket.input}}
  counter: {{type: "{HERE}:Counter"}}
  recorder: {{type: recorder, directory: "DIRECTORY"}}
  out: {{type: websocket.output, realtime: false}}
edges:
  - mic -> counter -> recorder -> out
"""


async def test_the_recorder_saves_a_vanished_clients_conversation_under_its_session_id(
    tmp_path: Path,
) -> None:
    async with (
        serving(RECORDER_GRAPH.replace("DIRECTORY", str(tmp_path))) as (server, base),
        aiohttp.ClientSession() as http,
    ):
        assert server.recordings.directory == tmp_path  # the recorder's directory, by default
        async with connect(http, base) as client:
            session_id = (await client.wait_for(lambda m: m["type"] == "session", "a session id"))[
                "session_id"
            ]
            await client.wait_for(lambda m: m.get("state") == "listening", "listening")
            await client.ws.send_bytes(tone(500, 16000))
            await client.ws.send_str('{"type":"text","text":"are you recording?"}')
            assert await client.reply() == "heard 500 ms"
            await client.ws.send_bytes(tone(300, 16000))  # mid-utterance...
            client.vanish()
        await _until(lambda: not server.sessions, "the session to end")
        folder = tmp_path / session_id
        saved = json.loads((folder / "transcript.json").read_text())
        assert saved["session_id"] == session_id
        assert [(m["role"], m["content"]) for m in saved["messages"]] == [
            ("user", "are you recording?"),
            ("assistant", "heard 500 ms"),
        ]
        user, rate = read_wav(folder / "user.wav")
        assert rate == 16000 and len(user) >= 16000 * 0.8  # both bursts, the unfinished one too
        listing = await (await http.get(base / "api/conversations")).json()
        assert listing[0]["id"] == session_id and listing[0]["messages"] == 2
        assert listing[0]["audio"] == ["bot.wav", "mixed.wav", "user.wav"]


async def test_hold_to_talk_passes_audio_only_while_held(tmp_path: Path) -> None:
    async with (
        serving(SAVER_GRAPH.replace("DIRECTORY", str(tmp_path))) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        session_id = (await client.wait_for(lambda m: m["type"] == "session", "a session id"))["session_id"]
        speech = tone(100, 16000)
        await client.ws.send_str('{"type":"ptt","pressed":false}')
        await client.ws.send_bytes(speech)  # not held: silence
        await client.ws.send_str('{"type":"ptt","pressed":true}')
        await client.ws.send_bytes(speech)  # held: heard
        await client.ws.send_str('{"type":"ptt","pressed":false}')
        await client.ws.send_bytes(speech)
        await client.ws.send_str('{"type":"start"}')  # hands-free again
        await client.ws.send_bytes(speech)
        await client.ws.send_str('{"type":"stop"}')
        assert await client.closed() == 1000
    user, _ = read_wav(tmp_path / session_id / "user.wav")
    quarters = np.split(user, 4)
    assert [bool(np.abs(q).max()) for q in quarters] == [False, True, False, True]


async def test_paced_bot_audio_never_deadlocks_with_the_text_it_sends_upstream() -> None:
    # Small queues: the tap fills up while the output paces audio, and the output must still send
    # each sentence's SpokenTextFrame up through the tap without waiting for room in it.
    graph = f"""
server: {{type: websocket, port: 0}}
nodes:
  mic: {{type: websocket.input}}
  counter: {{type: "{HERE}:Counter"}}
  tap: {{type: "tests.spoken_replies:HeardTap", queue: {{size: 2}}}}
  out: {{type: websocket.output, queue: {{size: 2}}}}
edges:
  - mic -> counter -> tap -> out
"""
    HeardTap.spoken.clear()
    async with serving(graph) as (_, base), aiohttp.ClientSession() as http, connect(http, base) as client:
        await client.ws.send_str('{"type":"text","text":"sentences"}')
        await client.wait_for(lambda m: m.get("state") == "speaking", "speaking")
        expected = 3 * 2 * BOT_RATE * 300 // 1000
        await client.until(
            lambda: len(client.audio) == expected and client.of("status")[-1]["state"] == "listening",
            "the whole reply played",
        )
        assert HeardTap.spoken == ["Sentence 0.", "Sentence 1.", "Sentence 2."]


async def test_warm_up_starts_and_stops_the_engines_but_not_the_per_conversation_nodes(
    tmp_path: Path,
) -> None:
    graph = f"""
server: {{type: websocket, port: 0}}
nodes:
  mic: {{type: websocket.input}}
  engine: {{type: "{HERE}:Engine"}}
  saver: {{type: "{HERE}:TranscriptSaver", directory: "{tmp_path}"}}
  out: {{type: websocket.output}}
edges:
  - mic -> engine -> saver -> out
"""
    compiled, problems = config.compile_text(graph, "<test>")
    assert compiled is not None and not problems
    Engine.events.clear()
    await VoiceServer(compiled).warm_up()
    assert Engine.events == ["start", "stop"]
    assert list(tmp_path.iterdir()) == []  # the saver (a session_id node) never ran


# --- conversation API ----------------------------------------------------------------------------


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    root = tmp_path / "recordings"
    good = root / "20250101-120000-abcdef"
    good.mkdir(parents=True)
    (good / "transcript.json").write_text(
        json.dumps(
            {
                "session_id": good.name,
                "start_time": "2025-01-01T12:00:00",
                "end_time": "x",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            }
        )
    )
    for name in ("user.wav", "bot.wav", "mixed.wav"):
        (good / name).write_bytes(b"RIFF" + bytes(40))
    (tmp_path / "secret.wav").write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "transcript.json").write_text('{"messages": ["leak"]}')
    (good / "evil.wav").symlink_to(tmp_path / "secret.wav")
    (root / "linked").symlink_to(tmp_path / "outside")
    (root / "broken").mkdir()
    (root / "broken" / "transcript.json").write_text("{not json")
    return root


async def test_the_api_lists_and_serves_saved_conversations(recordings: Path) -> None:
    graph = COUNTER_GRAPH.replace("REALTIME", "false")
    async with (
        serving(graph, f"server.recordings={recordings}") as (_, base),
        aiohttp.ClientSession() as http,
    ):
        listing = await (await http.get(base / "api/conversations")).json()
        assert listing == [
            {
                "id": "20250101-120000-abcdef",
                "start_time": "2025-01-01T12:00:00",
                "end_time": "x",
                "messages": 2,
                "audio": ["bot.wav", "mixed.wav", "user.wav"],  # not evil.wav: a symlink out
            }
        ]
        one = await http.get(base / "api/conversations/20250101-120000-abcdef")
        assert (await one.json())["messages"][1]["content"] == "hello"
        wav = await http.get(base / "api/conversations/20250101-120000-abcdef/audio/mixed.wav")
        assert wav.status == 200 and await wav.read() == b"RIFF" + bytes(40)
        assert "attachment" in wav.headers["Content-Disposition"]


async def test_the_listing_reads_only_the_newest_transcripts_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "recordings"
    ids = [f"20250101-1200{second:02d}-abcdef" for second in range(12)]
    for session_id in ids:
        (root / session_id).mkdir(parents=True)
        (root / session_id / "transcript.json").write_text(
            json.dumps({"session_id": session_id, "start_time": session_id, "messages": []})
        )
    (root / ids[-2] / "transcript.json").unlink()  # still recording: skipped, the page is still full
    recordings = Recordings(root)
    read: list[str] = []
    real_transcript = Recordings.transcript

    def counted(self: Recordings, session_id: str) -> dict[str, Any] | None:
        read.append(session_id)
        return real_transcript(self, session_id)

    monkeypatch.setattr(Recordings, "transcript", counted)
    listed = [c["id"] for c in recordings.conversations(limit=3)]
    assert listed == [ids[-1], ids[-3], ids[-4]]
    assert read == [ids[-1], ids[-2], ids[-3], ids[-4]]  # the other eight were never opened
    read.clear()
    assert [c["id"] for c in recordings.conversations(limit=2, offset=3)] == [ids[-5], ids[-6]]
    assert len(read) == 6
    graph = COUNTER_GRAPH.replace("REALTIME", "false")
    async with serving(graph, f"server.recordings={root}") as (_, base), aiohttp.ClientSession() as http:
        page = await (await http.get(base / "api/conversations" % {"limit": "2", "offset": "1"})).json()
        assert [c["id"] for c in page] == [ids[-3], ids[-4]]
        assert len(await (await http.get(base / "api/conversations")).json()) == 11
        for query in ({"limit": "0"}, {"limit": "501"}, {"offset": "-1"}, {"limit": "x"}):
            assert (await http.get(base / "api/conversations" % query)).status == 400


@pytest.mark.parametrize(
    "path",
    [
        "/api/conversations/../secret.wav",
        "/api/conversations/%2e%2e",
        "/api/conversations/%2e%2e/audio/secret.wav",
        "/api/conversations/20250101-120000-abcdef/audio/..%2F..%2Fsecret.wav",
        "/api/conversations/20250101-120000-abcdef/audio/%2e%2e%2f%2e%2e%2fsecret.wav",
        "/api/conversations/20250101-120000-abcdef/audio/..%5C..%5Csecret.wav",
        "/api/conversations/20250101-120000-abcdef/audio/%2Fetc%2Fpasswd",
        "/api/conversations/%2Ftmp/audio/secret.wav",
        "/api/conversations/20250101-120000-abcdef/audio/evil.wav",
        "/api/conversations/20250101-120000-abcdef/audio/transcript.json",
        "/api/conversations/20250101-120000-abcdef/audio/user.WAV.txt",
        "/api/conversations/linked",
        "/api/conversations/linked/audio/secret.wav",
        "/api/conversations/broken",
        "/api/conversations/nope",
        "/api/conversations/20250101-120000-abcdef/audio/nope.wav",
    ],
)
async def test_download_routes_never_leave_the_recordings_directory(recordings: Path, path: str) -> None:
    graph = COUNTER_GRAPH.replace("REALTIME", "false")
    async with (
        serving(graph, f"server.recordings={recordings}") as (_, base),
        aiohttp.ClientSession() as http,
    ):
        response = await http.get(URL(str(base).rstrip("/") + path, encoded=True))
        body = await response.read()
        assert response.status in (400, 404), (response.status, body)
        assert b"secret" not in body and b"leak" not in body


async def test_the_page_and_its_files_are_served() -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false")) as (_, base),
        aiohttp.ClientSession() as http,
    ):
        page = await http.get(base)
        assert page.status == 200 and "<title>Voxgraph</title>" in await page.text()
        for name in ("app.js", "capture-worklet.js", "style.css"):
            assert (await http.get(base / "static" / name)).status == 200
        assert (await http.get(base / "static/../server.py")).status == 404


# --- the CLI -------------------------------------------------------------------------------------


def test_run_serves_until_ctrl_c_then_exits_cleanly() -> None:
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "configs/examples/echo-websocket.yaml",
        "--set",
        "server.port=0",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the server prints where it listens
        assert "Voxgraph: serving 'echo-websocket' at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]

        async def check() -> None:
            async with aiohttp.ClientSession() as http:
                assert (await (await http.get(url + "health")).json())["status"] == "ok"
                async with connect(http, URL(url)) as client:
                    await client.ws.send_bytes(bytes(640) * 5)
                    await client.ws.send_str('{"type":"text","text":"echo"}')
                    assert await client.reply() == "echo"
                    await client.until(lambda: len(client.audio) == 640 * 5, "the loopback audio")
                    process.send_signal(signal.SIGINT)  # Ctrl-C with a conversation going on: it drains
                    await client.wait_for(lambda m: m.get("state") == "draining", "the draining notice")
                    await client.ws.send_str('{"type":"stop"}')  # the conversation ends by itself
                    assert await client.closed() == 1000
                    assert client.of("status")[-1]["state"] == "ended"

        asyncio.run(check())
        assert process.wait(timeout=15) == 0
        assert "draining: 1 conversation(s), up to 300 s; Ctrl-C again to stop now" in (
            process.stderr.read() if process.stderr else ""
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_validate_rejects_websocket_nodes_without_a_server() -> None:
    text = "nodes:\n  mic: {type: websocket.input}\n  out: {type: websocket.output}\nedges: [mic -> out]\n"
    problems = config.check_text(text)
    assert [p.node for p in problems] == ["mic", "out"]
    assert all("runs only under a server" in p.message for p in problems)


async def _until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll a condition that no event announces (a socket's far end, a registry entry)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_the_server_section_is_checked_with_the_rest_of_the_config() -> None:
    text = (
        "server:\n  type: websockets\n  prot: 80\n  max_sessions: 0\n"
        "nodes:\n  mic: {type: websocket.input}\n  out: {type: websocket.output}\nedges: [mic -> out]\n"
    )
    problems = config.check_text(text, "served.yaml", overrides=["server.port=70000"])
    shown = [(p.line, p.file, p.message) for p in problems]
    assert (2, "served.yaml", "unknown server type 'websockets'") in shown
    assert (3, "served.yaml", "unknown server key 'prot'") in shown
    assert (4, "served.yaml", "server max_sessions 0 is out of range") in shown
    assert (None, "--set server.port", "server port 70000 is out of range") in shown
    assert len(problems) == 4
    compiled, problems = config.compile_text(
        text.replace("websockets", "websocket")
        .replace("  prot: 80\n", "")
        .replace("max_sessions: 0", "max_sessions: 2"),
        "ok.yaml",
    )
    assert compiled is not None and compiled.server == config.ServerSettings(max_sessions=2)
    assert config.check_text("nodes: {t: {type: source.tone}}\n", overrides=["server.port=1"])[0].message == (
        "the config has no server: section"
    )


def test_idle_timeout_is_a_server_key_of_seconds_and_0_turns_it_off() -> None:
    text = "server: {type: websocket}\nnodes:\n  mic: {type: websocket.input}\n"
    text += "  out: {type: websocket.output}\nedges: [mic -> out]\n"
    assert config.check_text(text, overrides=["server.idle_timeout=0"]) == []
    [problem] = config.check_text(text, overrides=["server.idle_timeout=-1"])
    assert "idle_timeout" in problem.message and "out of range" in problem.message
    assert config.ServerSettings().idle_timeout == 120.0


def test_a_served_graph_takes_one_input_and_one_output_node() -> None:
    text = (
        "server: {type: websocket}\nnodes:\n  a: {type: websocket.input}\n  b: {type: websocket.input}\n"
        "  out: {type: websocket.output}\nedges: [a -> out, b -> out]\n"
    )
    problems = config.check_text(text)
    assert [(p.node, p.line) for p in problems] == [("b", 4)]
    assert "'a' is one already" in problems[0].message
