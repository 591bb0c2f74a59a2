"""One AssemblyAI streaming session, one graph: the browser session's machinery speaking v3 streaming.

``StreamingSession`` is a ``Session`` (so the server counts, drains, limits and measures it like any
conversation) that reads the client's messages with ``assemblyai_wire``: audio (50 to 1000 ms a
message, no faster than real time beyond ``RATE_SLACK_SECONDS``) goes to ``assemblyai.input`` through
the bounded ``Inbound``, ``ForceEndpoint`` too, in order; ``UpdateConfiguration`` changes the session's
settings; ``Terminate`` ends the input, so the graph drains: the last turn, then ``Termination``.

A session also ends, with ``Termination`` and the durations billed, after ``inactivity_timeout``
seconds without a message (the query's, else the server's ``idle_timeout``) and when the server stops
it. It ends with ``Error`` and a close with the same code when the client breaks the protocol (3006,
3007), when the graph falls ``BUFFERED_SECONDS`` behind the audio taken (3007: audio is never dropped
unsaid, and the message that would overflow is refused, not billed), when its ``expires_at`` passes
(3008), and when the graph fails (3005).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from aiohttp import WSMessage, WSMsgType, web

from pipeline.graph import Graph
from processors.vad.base import VadProcessor
from transports.dropin import assemblyai_wire as wire
from transports.dropin.assemblyai_nodes import Endpoint, StreamConnection, StreamLink
from transports.dropin.assemblyai_wire import StreamingConfig, WireError
from transports.websocket import protocol
from transports.websocket.protocol import Audio, ClientEvent
from transports.websocket.session import ConnectionNode, Session, SilentWire

__all__ = ["MAX_MESSAGE_BYTES", "StreamingSession", "StreamingWire"]

log = logging.getLogger("transports.dropin")

MAX_MESSAGE_BYTES = 96_000 + 1024
"""The largest message taken: 1000 ms of 48 kHz s16le audio (and room for JSON)."""
RATE_SLACK_SECONDS = 30.0
"""Audio may run this far ahead of the wall clock (a client catching up); beyond, it is refused (3007)."""
MIN_TURN_SILENCE = 0.1
"""Seconds of silence below which no turn ends, whatever ``max_turn_silence`` asks (VAD windows: ~30 ms)."""
BUFFERED_SECONDS = 60.0
"""Client audio held for a graph that is behind; a message beyond it ends the session (3007): a graph
slower than real time would otherwise fall further behind for the whole session."""


class StreamingWire(SilentWire):
    """The session's server messages: ``Begin`` first, ``Termination`` at the end (unless it failed).

    The browser protocol's other messages have no counterpart here (None: nothing is sent); an error a
    node reports without stopping the graph reaches the client as a ``Warning``, which ends nothing.
    """

    reader = "StreamingSession"

    def __init__(self, link: StreamLink, expires_at: int) -> None:
        self.link = link
        self.expires_at = expires_at  # Unix seconds, as Begin says
        self.failed = False  # the session ends with an Error: no Termination

    def session(self, session_id: str) -> str:
        return wire.begin(session_id, self.expires_at, self.link.config)

    def status(self, state: str) -> str | None:
        if state != "ended" or self.failed:
            return None
        link = self.link
        return wire.termination(link.audio_ms / 1000, time.monotonic() - link.opened)

    def error(self, message: str) -> str:
        return wire.warning(message)


class StreamingSession(Session):
    """Runs one graph for one AssemblyAI streaming client (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        ws: web.WebSocketResponse,
        graph: Graph,
        config: StreamingConfig,
        *,
        expires_at: int,
        idle_timeout: float = 0.0,
    ) -> None:
        idle = float(config.inactivity_timeout) if config.inactivity_timeout is not None else idle_timeout
        super().__init__(session_id, ws, graph, MAX_MESSAGE_BYTES, idle_timeout=idle)
        self.link = StreamLink(config)
        self.connection = StreamConnection(session_id, self.link)
        bytes_per_second = config.sample_rate * config.bytes_per_sample
        self.connection.inbound.max_audio_bytes = round(BUFFERED_SECONDS * bytes_per_second)
        self.wire = StreamingWire(self.link, expires_at)
        self.connection.wire = self.wire
        for node in graph.processors.values():
            if getattr(node, "connection_role", "") and hasattr(node, "bind_connection"):
                cast(ConnectionNode, node).bind_connection(self.connection)
        self.expires_in = max(0.0, expires_at - time.time())  # seconds until 3008
        tune_vads(graph, config)
        self.idle_ended = False  # ended by inactivity_timeout

    async def _read(self) -> None:
        """Read the client until it terminates, leaves, breaks the protocol, idles or expires."""
        loop = asyncio.get_running_loop()
        expiry = loop.time() + self.expires_in
        try:
            async with asyncio.timeout_at(expiry):
                await self._route(self.idle_timeout if self.idle_timeout > 0 else None)
        except TimeoutError:
            if loop.time() >= expiry:
                self._fail(wire.SESSION_EXPIRED, "Session Expired: Maximum session duration exceeded")
            else:  # billed to here: Termination says so
                log.info("session %s: no message for %g s; ending it", self.id, self.idle_timeout)
                self.idle_ended = True

    async def _end_graph(self, graph_task: asyncio.Task[None]) -> None:
        """After ``Terminate`` (or inactivity) every message taken is still transcribed: the input ends
        once the audio held is read, and the graph drains by itself (bounded by its ``end_timeout`` plus
        the audio held). Otherwise (the client left, the server stops, a violation) as a browser's."""
        graph, inbound = self.graph, self.connection.inbound
        clean = self.close_code == protocol.CLOSE_NORMAL and not self.wire.failed and not self.ws.closed
        if clean and graph.started.is_set() and not graph_task.done():
            config = self.link.config
            held = inbound.audio_bytes / (config.sample_rate * config.bytes_per_sample)
            inbound.end()
            if await graph.wait(graph.end_timeout + held):
                self.connection.hung_up = True
                await asyncio.wait({graph_task}, timeout=graph.cancel_timeout + 1.0)
                return
            log.warning("session %s: the last turns took over %.1f s; stopping", self.id, graph.end_timeout)
        await super()._end_graph(graph_task)

    async def _run_graph(self) -> None:
        await super()._run_graph()
        if self.close_code == protocol.CLOSE_INTERNAL_ERROR:  # the graph failed
            self._fail(wire.SERVER_ERROR, "Session Cancelled: An error occurred")

    def _take(self, message: WSMessage) -> bool:
        """One client message; False ends the input (Terminate, a violation, a broken connection)."""
        if message.type is WSMsgType.ERROR:
            log.info("session %s: connection error: %s", self.id, self.ws.exception())
            return False
        try:
            if message.type is WSMsgType.BINARY:
                return self._audio(message.data)
            if message.type is WSMsgType.TEXT:
                return self._control(wire.parse_text(message.data))
        except WireError as violation:
            log.info("session %s: %d %s", self.id, violation.code, violation.message)
            self._fail(violation.code, violation.message)
            return False
        return True

    def _audio(self, data: bytes) -> bool:
        """Take one audio message, or refuse it (3007) unbilled: too fast, or too far ahead of the graph."""
        link, inbound = self.link, self.connection.inbound
        received = link.audio_ms + wire.check_chunk(len(data), link.config)
        elapsed = time.monotonic() - link.opened
        if received / 1000 > elapsed + RATE_SLACK_SECONDS:
            raise WireError(
                wire.AUDIO_VIOLATION,
                f"Audio Transmission Rate Exceeded: Received {received / 1000:.1f} sec. audio in "
                f"{elapsed:.1f} sec",
            )
        if inbound.audio_bytes + len(data) > inbound.max_audio_bytes:  # Inbound would drop the oldest
            config = link.config
            held = inbound.audio_bytes / (config.sample_rate * config.bytes_per_sample)
            log.warning("session %s: the graph is %.1f s behind the client's audio; ending it", self.id, held)
            raise WireError(
                wire.AUDIO_VIOLATION,
                f"Audio Transmission Rate Exceeded: Transcription is too far behind: {held:.1f} sec. audio "
                "received is waiting",
            )
        link.audio_ms = received
        inbound.put(Audio(data))
        return True

    def _control(self, message: wire.ClientMessage) -> bool:
        if isinstance(message, wire.Terminate):
            return False
        if isinstance(message, wire.UpdateConfiguration):
            wire.apply(self.link.config, message.settings)
            tune_vads(self.graph, self.link.config)
        elif isinstance(message, wire.ForceEndpoint) and not self.connection.inbound.put(
            cast(ClientEvent, Endpoint())
        ):
            raise WireError(wire.SERVER_ERROR, "Too many messages wait for a busy session")
        return True

    def _fail(self, code: int, message: str) -> None:
        """End with ``Error`` (``code``, ``message``) and a close with the same code; no Termination."""
        if self.wire.failed:
            return
        self.wire.failed = True
        self.connection.send_nowait(wire.error(code, message))
        self.close_code = code


def tune_vads(graph: Graph, config: StreamingConfig) -> None:
    """Apply the client's turn settings to the session's VADs: ``max_turn_silence`` is the silence that
    ends a turn (``stop_secs``), ``vad_threshold`` the speech probability (``threshold``, if the VAD has
    one). Settings the client did not name keep the config's values."""
    for node in graph.processors.values():
        if not isinstance(node, VadProcessor):
            continue
        params = node.params
        if "max_turn_silence" in config.given:
            params.stop_secs = max(MIN_TURN_SILENCE, config.max_turn_silence / 1000)
        if "vad_threshold" in config.given and config.vad_threshold and hasattr(params, "threshold"):
            params.threshold = min(max(config.vad_threshold, 0.01), 0.99)
