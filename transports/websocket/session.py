"""One browser connection, one graph: the bridge between the socket and the graph's websocket nodes.

``Connection`` is what the nodes see: client events in (bounded, oldest audio dropped when the graph
falls behind, so the socket is always read) and server messages out (bounded, written by one task,
queued bot audio dropped at a barge-in). ``Session`` runs the graph for as long as the client is
there: a ``stop`` message, a vanished client or a server shutdown all end the input, let the graph
drain (``end_timeout``, then cancel; recorders flush either way) and close the socket. A draining
server first only tells the client (``notify_draining``): the conversation goes on until it ends or the
server's deadline stops it.

The messages themselves are the connection's ``wire``: the default ``protocol`` module, or another
module with the same functions (``whisper_protocol``) when the input node says its client speaks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol as TypingProtocol
from typing import cast

from aiohttp import WSMessage, WSMsgType, web

from pipeline.frames import UPSTREAM, Direction, ErrorFrame, Frame
from pipeline.graph import Graph, GraphFailedError
from pipeline.processor import Processor
from transports.websocket import protocol
from transports.websocket.protocol import Audio, ClientEvent, ProtocolError, PushToTalk, Start, Stop

log = logging.getLogger("transports.websocket")

Message = str | bytes
"""A server message: JSON text, or bot PCM."""


class Wire(TypingProtocol):
    """A wire protocol: client messages in, server messages out (a module such as ``protocol``).

    An encoder that returns None has no such message in this protocol: nothing is sent.
    """

    def parse_binary(self, data: bytes, max_bytes: int) -> ClientEvent | ProtocolError: ...
    def parse_text(self, text: str, max_bytes: int) -> ClientEvent | ProtocolError: ...
    def session(self, session_id: str) -> str | None: ...
    def status(self, state: str) -> str | None: ...
    def draining(self, deadline_s: float) -> str | None: ...
    def error(self, message: str) -> str | None: ...
    def transcript(self, text: str, final: bool) -> str | None: ...
    def assistant_text(self, text: str, final: bool) -> str | None: ...
    def audio_format(self, sample_rate: int, channels: int = 1) -> str | None: ...
    def interrupted(self) -> str | None: ...
    def metrics(self, voice_to_voice_ms: float) -> str | None: ...


class SilentWire:
    """The browser protocol's messages for a session whose client speaks another wire (a carrier, a
    cloud API's clients): none is sent, and the client's messages are read by the session itself.
    Subclasses override the encoders that have a counterpart in their wire."""

    reader = "its session"
    """Who reads this client's messages, for the error if they ever reach here."""

    def parse_binary(self, data: bytes, max_bytes: int) -> ClientEvent | ProtocolError:
        return ProtocolError(f"this client's messages are read by {self.reader}")

    def parse_text(self, text: str, max_bytes: int) -> ClientEvent | ProtocolError:
        return ProtocolError(f"this client's messages are read by {self.reader}")

    def session(self, session_id: str) -> str | None:
        return None

    def status(self, state: str) -> str | None:
        return None

    def draining(self, deadline_s: float) -> str | None:
        return None

    def error(self, message: str) -> str | None:
        return None

    def transcript(self, text: str, final: bool) -> str | None:
        return None

    def assistant_text(self, text: str, final: bool) -> str | None:
        return None

    def audio_format(self, sample_rate: int, channels: int = 1) -> str | None:
        return None

    def interrupted(self) -> str | None:
        return None

    def metrics(self, voice_to_voice_ms: float) -> str | None:
        return None


MAX_BUFFERED_AUDIO = 160_000
"""Bytes of client audio held for the input node (5 s of 16 kHz s16le); older audio goes first."""
MAX_CONTROLS = 256
"""Control events (start, ptt, text) held at most: more means a client flooding a stalled graph."""


class Inbound:
    """Client events waiting for the input node, bounded in bytes of audio and in control events.

    When the graph falls behind, the oldest audio is dropped (counted): live audio that old is of no
    use, and the socket must always be read. The newest audio message is kept whole even if it alone
    is over the bound (a clip: one utterance), so the bound is ``max_audio_bytes`` plus one message.
    Control events are never dropped: ``put`` refuses one beyond ``max_controls`` and the session ends.
    A ``start`` or ``ptt`` that would leave the microphone as it is changes nothing, so it is not
    queued: a client repeating one is not flooding. ``received_audio_bytes`` counts all client audio
    taken, dropped later or not: what the client sent (as 16 kHz 16-bit PCM), for the server's metrics.
    """

    def __init__(
        self, name: str = "", max_audio_bytes: int = MAX_BUFFERED_AUDIO, max_controls: int = MAX_CONTROLS
    ) -> None:
        self.name = name  # the session, for the log
        self.max_audio_bytes = max_audio_bytes
        self.max_controls = max_controls
        self.dropped = 0  # audio messages dropped because the graph fell behind
        self.dropped_bytes = 0
        self.received_audio_bytes = 0  # client audio taken before the end, dropped later or not
        self._items: deque[ClientEvent] = deque()
        self._audio_bytes = 0  # audio held now
        self._controls = 0  # control events held now
        self._gate: Start | PushToTalk | None = None  # the last start or ptt queued
        self._ended = False
        self._arrived = asyncio.Event()

    @property
    def audio_bytes(self) -> int:
        """Bytes of audio held now."""
        return self._audio_bytes

    def put(self, event: ClientEvent) -> bool:
        """Queue an event without waiting (the socket reader must never block on the graph).

        False: a control event found ``max_controls`` already waiting; it was not queued.
        """
        if self._ended:
            return True
        if isinstance(event, Audio):
            self.received_audio_bytes += len(event.pcm)
            self._audio_bytes += len(event.pcm)
            self._items.append(event)
            self._drop_old_audio()
        elif isinstance(event, Start | PushToTalk) and event == self._gate:
            return True  # idempotent: coalesced with the one before
        elif self._controls >= self.max_controls:
            return False
        else:
            self._controls += 1
            self._items.append(event)
            if isinstance(event, Start | PushToTalk):
                self._gate = event
        self._arrived.set()
        return True

    def _drop_old_audio(self) -> None:
        while self._audio_bytes > self.max_audio_bytes:
            oldest = next(e for e in self._items if isinstance(e, Audio))
            if oldest is self._items[-1]:
                return  # the newest message alone: kept whole
            self._items.remove(oldest)
            self._audio_bytes -= len(oldest.pcm)
            self.dropped += 1
            self.dropped_bytes += len(oldest.pcm)
            if self.dropped == 1:
                log.warning(
                    "session %s: client audio arrives faster than the graph takes it; dropping the oldest "
                    "beyond %d bytes",
                    self.name,
                    self.max_audio_bytes,
                )

    def end(self) -> None:
        """No more events: ``get`` returns None once the queued ones are taken."""
        self._ended = True
        self._arrived.set()

    async def get(self) -> ClientEvent | None:
        """The next event, or None at the end of input."""
        while not self._items:
            if self._ended:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        event = self._items.popleft()
        if isinstance(event, Audio):
            self._audio_bytes -= len(event.pcm)
        else:
            self._controls -= 1
        return event


class Outbox:
    """Server messages waiting for the socket. Bounded; closed once the client is gone (sends are dropped)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size  # messages held at most
        self.closed = False
        self._items: deque[Message] = deque()
        self._changed = asyncio.Event()

    async def put(self, message: Message) -> None:
        """Queue a message, waiting while the outbox is full (backpressure on the graph's output)."""
        while len(self._items) >= self.size and not self.closed:
            self._changed.clear()
            await self._changed.wait()
        if not self.closed:
            self._items.append(message)
            self._changed.set()

    def put_nowait(self, message: Message, drop_audio: bool = False) -> None:
        """Queue a control message at once; ``drop_audio`` discards bot audio not yet sent (barge-in).

        When full, the oldest queued audio (else the oldest message) makes room.
        """
        if self.closed:
            return
        if drop_audio:
            self._items = deque(m for m in self._items if isinstance(m, str))
        if len(self._items) >= self.size:
            oldest_audio = next((m for m in self._items if isinstance(m, bytes)), self._items[0])
            self._items.remove(oldest_audio)
        self._items.append(message)
        self._changed.set()

    async def get(self) -> Message | None:
        """The next message to send, or None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        message = self._items.popleft()
        self._changed.set()  # room for a waiting put
        return message

    def close(self) -> None:
        """Stop taking messages; ``get`` drains what is queued, then returns None."""
        self.closed = True
        self._changed.set()

    def discard(self) -> None:
        """Close and forget what is queued (the client is gone)."""
        self._items.clear()
        self.close()


class Connection:
    """What a session's websocket nodes share: the session id, client events in, messages out."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.inbound = Inbound(session_id)
        self.outbox = Outbox()
        self.hung_up = False  # the client stopped or left: the graph drains, nobody listens to audio
        self.wire: Wire = protocol  # what the client speaks: the input node may choose another

    @property
    def closed(self) -> bool:
        """True once nothing more reaches the client."""
        return self.outbox.closed

    async def send(self, message: Message | None) -> None:
        """Send in order, waiting while the outbox is full; None (not in the wire protocol) is skipped."""
        if message is not None:
            await self.outbox.put(message)

    def send_nowait(self, message: Message | None, drop_audio: bool = False) -> None:
        """Send a control message now (see ``Outbox.put_nowait``); None is skipped."""
        if message is not None:
            self.outbox.put_nowait(message, drop_audio)


class ConnectionNode(TypingProtocol):
    """A node that talks to the client: ``websocket.input`` or ``websocket.output``."""

    connection_role: str

    def bind_connection(self, connection: Connection) -> None: ...


class Session:
    """Runs one graph for one websocket client."""

    def __init__(
        self,
        session_id: str,
        ws: web.WebSocketResponse,
        graph: Graph,
        max_message_bytes: int,
        *,
        idle_timeout: float = 0.0,
    ) -> None:
        self.id = session_id
        self.ws = ws
        self.graph = graph
        self.max_message_bytes = max_message_bytes  # larger messages get an error reply
        self.idle_timeout = idle_timeout  # seconds without a client message that end it; 0: never
        self.connection = Connection(session_id)
        self.close_code = protocol.CLOSE_NORMAL
        self.outcome: str | None = None  # how it ended, when the close code cannot say (metrics)
        self._reader: asyncio.Task[None] | None = None
        nodes = [cast(ConnectionNode, p) for p in graph.processors.values() if _is_connection_node(p)]
        for node in nodes:
            node.bind_connection(self.connection)
        if not nodes:
            raise ValueError(f"graph '{graph.name}' has no websocket.input or websocket.output node")
        graph.output_handler = self._left_graph

    async def run(self) -> None:
        """Serve the client until it stops, leaves, or the graph ends; then drain and close."""
        send, wire = self.connection.send_nowait, self.connection.wire
        send(wire.session(self.id))
        send(wire.status("starting"))
        writer = asyncio.create_task(self._write(), name=f"ws-writer:{self.id}")
        graph_task = asyncio.create_task(self._run_graph(), name=f"ws-graph:{self.id}")
        self._reader = asyncio.create_task(self._read(), name=f"ws-reader:{self.id}")
        try:
            await asyncio.wait({graph_task, self._reader}, return_when=asyncio.FIRST_COMPLETED)
            if self._reader.done() and not self._reader.cancelled() and self._reader.exception():
                log.error("session %s: reading the client failed: %r", self.id, self._reader.exception())
            await self._end_graph(graph_task)
            send(wire.status("ended"))
        finally:
            await _cancelled(self._reader)
            if not graph_task.done():
                await _cancelled(graph_task)
            # Both point back here (a cancelled reader through its traceback): cycles would outlive us.
            self.graph.output_handler = None
            self._reader = None
            self.connection.outbox.close()
            try:
                await asyncio.wait_for(writer, 5.0)  # what the graph said last still reaches the client
            except TimeoutError:
                log.warning("session %s: the client did not take the last messages in 5 s", self.id)
            await _cancelled(writer)
            with contextlib.suppress(Exception):
                await self.ws.close(code=self.close_code)
            inbound = self.connection.inbound
            if inbound.dropped:
                log.warning(
                    "session %s: the graph fell behind; %d client audio messages (%d bytes) dropped",
                    self.id,
                    inbound.dropped,
                    inbound.dropped_bytes,
                )

    def notify_draining(self, deadline_s: float) -> None:
        """The server is draining: tell the client, who may go on for ``deadline_s`` seconds."""
        self.connection.send_nowait(self.connection.wire.draining(deadline_s))

    def stop(self) -> None:
        """Server shutdown: end the input as if the client had left; ``run`` drains and closes."""
        self.close_code = protocol.CLOSE_GOING_AWAY
        if self._reader is not None:
            self._reader.cancel()

    async def _run_graph(self) -> None:
        graph = self.graph
        announce = asyncio.create_task(self._announce_listening())
        try:
            await graph.run()
        except GraphFailedError as failure:
            log.error("session %s: %s", self.id, failure)
            self.connection.send_nowait(self.connection.wire.error(f"the conversation failed: {failure}"))
            self.close_code = protocol.CLOSE_INTERNAL_ERROR
        finally:
            announce.cancel()

    async def _announce_listening(self) -> None:
        await self.graph.started.wait()
        self.connection.send_nowait(self.connection.wire.status("listening"))

    async def _end_graph(self, graph_task: asyncio.Task[None]) -> None:
        """End the input and let the graph drain (bounded by its end and cancel timeouts)."""
        self.connection.hung_up = True
        self.connection.inbound.end()
        if graph_task.done():
            return
        graph = self.graph
        if not graph.started.is_set():  # still loading models: nothing to drain
            await _cancelled(graph_task)
            return
        bound = graph.end_timeout + graph.cancel_timeout * 2 + 1.0
        try:
            await asyncio.wait_for(graph.stop(), bound)
        except TimeoutError:
            log.warning("session %s: the graph did not stop within %.1fs", self.id, bound)
        try:
            await asyncio.wait_for(asyncio.shield(graph_task), graph.cancel_timeout + 1.0)
        except TimeoutError:
            await _cancelled(graph_task)

    async def _read(self) -> None:
        """Route client messages until the client stops, leaves or stays silent for ``idle_timeout``."""
        idle = self.idle_timeout
        if idle <= 0:
            await self._route()
            return
        try:
            await self._route(idle)
        except TimeoutError:  # pongs do not count: an open tab nobody uses would keep its slot
            log.info("session %s: no client message for %g s; ending it", self.id, idle)
            wire = self.connection.wire
            self.connection.send_nowait(wire.error(f"no message for {idle:g} s: the conversation ended"))

    async def _route(self, idle: float | None = None) -> None:
        """Route client messages; with ``idle``, raise ``TimeoutError`` after that long without one."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(None if idle is None else loop.time() + idle) as silence:
            async for message in self.ws:
                if idle is not None:
                    silence.reschedule(loop.time() + idle)
                if not self._take(message):
                    return

    def _take(self, message: WSMessage) -> bool:
        """Route one client message (protocol errors get a reply); False: the session ends."""
        wire, inbound = self.connection.wire, self.connection.inbound
        if message.type is WSMsgType.ERROR:
            log.info("session %s: connection error: %s", self.id, self.ws.exception())
            return False
        if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            return True
        try:
            event = self._parse(message)
        except Exception:  # a parser bug must cost the client one message, not the conversation
            log.exception("session %s: cannot parse a client message", self.id)
            event = ProtocolError("the server could not read this message")
        if isinstance(event, ProtocolError):
            self.connection.send_nowait(wire.error(event.message))
        elif isinstance(event, Stop):
            return False
        elif not inbound.put(event):
            log.warning("session %s: over %d control messages queued; closing", self.id, inbound.max_controls)
            reason = f"over {inbound.max_controls} messages wait for a busy conversation: it ended"
            self.connection.send_nowait(wire.error(reason))
            self.close_code = protocol.CLOSE_POLICY_VIOLATION
            return False
        return True

    def _parse(self, message: WSMessage) -> ClientEvent | ProtocolError:
        wire, limit = self.connection.wire, self.max_message_bytes
        if message.type is WSMsgType.BINARY:
            return wire.parse_binary(message.data, limit)
        return wire.parse_text(message.data, limit)

    async def _write(self) -> None:
        outbox, ws = self.connection.outbox, self.ws
        while (message := await outbox.get()) is not None:
            try:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
            except (ConnectionError, RuntimeError) as gone:  # closed or closing under us
                log.info("session %s: client gone (%s)", self.id, gone)
                outbox.discard()
                return

    def _left_graph(self, processor: Processor, frame: Frame, direction: Direction) -> None:
        if direction is UPSTREAM and isinstance(frame, ErrorFrame):
            self.connection.send_nowait(self.connection.wire.error(f"{frame.processor}: {frame.message}"))


def _is_connection_node(processor: Processor) -> bool:
    return bool(getattr(processor, "connection_role", "")) and hasattr(processor, "bind_connection")


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` (if still running) and wait for it to finish."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
