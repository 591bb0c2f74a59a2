"""One browser on WebRTC, one graph: ``PeerSession`` is a ``Session`` whose client is a peer connection.

The graph's connection nodes see the same ``Connection`` as over ``/ws``: client events in (the
microphone track as 16 kHz PCM, data-channel messages parsed as ``/ws`` messages), server messages
out (text on the data channel, bot PCM into the ``BotTrack``, which a barge-in clears at once). So
the server counts, limits, drains and measures a peer like any conversation, and the same config
serves the page over either transport.

The session ends when the page says ``stop``, closes the peer connection, stops its heartbeat for
``HEARTBEAT_TIMEOUT`` (a killed browser), never opens the data channel, or ICE fails; and, as over
``/ws``, after ``idle_timeout`` without a client message or microphone audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any, cast

from aiohttp import web
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from pipeline.graph import Graph
from transports.webrtc.channel import CONNECT_TIMEOUT, HEARTBEAT_TIMEOUT, LABEL, Ping, parse, pong
from transports.webrtc.channel import stats_metrics as _stats_metrics
from transports.webrtc.tracks import BotTrack, read_microphone
from transports.websocket import protocol
from transports.websocket.protocol import Audio, ProtocolError, Stop
from transports.websocket.session import Message, Outbox, Session

__all__ = ["AnswerResponse", "Peer", "PeerSession"]

log = logging.getLogger("transports.webrtc")

STATS_INTERVAL = 2.0
"""Seconds between ``metrics`` messages with the peer connection's figures."""
EARLY_MESSAGES = 64
"""Data-channel messages held while the session is not yet reading (the oldest go first)."""
CLOSED_CHECK = 0.25
"""Seconds between looks at the data channel's state: aiortc may leave a channel the page closed in
"closing" without an event."""
MIC_RATE = protocol.SAMPLE_RATE
"""The microphone reaches the graph as ``/ws`` audio does: 16 kHz mono."""


class Peer:
    """One ``RTCPeerConnection`` and what a session takes from it: the data channel, the microphone
    track, the bot's track, and whether the connection is gone."""

    def __init__(self, pc: RTCPeerConnection, bot: BotTrack) -> None:
        self.pc = pc
        self.bot = bot
        self.channel: RTCDataChannel | None = None
        self.microphone: MediaStreamTrack | None = None
        self.opened = asyncio.Event()  # the data channel is open
        self.gone = asyncio.Event()  # ICE failed or the connection closed
        self.listener: Any = None  # the session's message handler, once it reads
        self._early: deque[str | bytes] = deque(maxlen=EARLY_MESSAGES)
        self._closing: asyncio.Task[None] | None = None
        pc.on("datachannel", self._channel)
        pc.on("track", self._track)
        pc.on("connectionstatechange", self._state)

    def _channel(self, channel: RTCDataChannel) -> None:
        if channel.label != LABEL or self.channel is not None:
            log.info("ignored data channel %r", channel.label[:40])
            return
        self.channel = channel
        channel.on("message", self._message)
        channel.on("close", self.gone.set)
        if channel.readyState == "open":
            self.opened.set()
        channel.on("open", self.opened.set)

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.microphone is None:
            self.microphone = track
            for transceiver in self.pc.getTransceivers():  # a page that closes says so over DTLS
                transceiver.receiver.transport.on("statechange", self._state)

    @property
    def closed(self) -> bool:
        """Whether the connection is gone, or the data channel is closing or closed."""
        channel = self.channel
        return self.gone.is_set() or (channel is not None and channel.readyState in ("closing", "closed"))

    def _state(self) -> None:
        transports = [t.receiver.transport for t in self.pc.getTransceivers()]
        if self.pc.connectionState in ("failed", "closed") or any(
            t.state in ("failed", "closed") for t in transports
        ):
            self.gone.set()

    def _message(self, data: str | bytes) -> None:
        if self.listener is not None:
            self.listener(data)
        else:
            self._early.append(data)

    def listen(self, listener: Any) -> None:
        """Hand every message to ``listener`` from now on, those that came before first."""
        self.listener = listener
        while self._early:
            listener(self._early.popleft())

    def send(self, text: str) -> bool:
        """Send on the data channel if it is open; False if not."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(text)
        return True

    async def close(self) -> None:
        """Stop the bot's track and close the connection (idempotent: later calls wait for the first)."""
        if self._closing is None:
            self.bot.stop()
            self._closing = asyncio.ensure_future(self.pc.close())
        await asyncio.shield(self._closing)
        self.gone.set()


class AnswerResponse(web.Response):
    """The HTTP answer to an offer, sent once the session has an id (``PeerSession.run``).

    ``VoiceServer.serve_session`` runs every session on a "websocket" it prepares and closes; for an
    offer that is this response: its first ``prepare`` waits for the session (the answer carries the
    session id), ``close`` closes the peer connection, and a session refused or failed before it
    started gets HTTP 503 or 500 instead of the answer.
    """

    def __init__(self, peer: Peer, answer: dict[str, str]) -> None:
        super().__init__(status=200, headers={"Cache-Control": "no-store", "Connection": "close"})
        self.peer = peer
        self.answer = answer
        self._request: web.BaseRequest | None = None

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._request is None:
            self._request = request  # the session sends the answer when it starts
            return None
        return await super().prepare(request)

    async def send_answer(self, session_id: str) -> None:
        """Send the SDP answer and the session id; the HTTP exchange ends here, the session goes on."""
        assert self._request is not None
        self.content_type = "application/json"
        self.text = json.dumps({**self.answer, "session": session_id})
        await super().prepare(self._request)
        await self.write_eof()

    async def close(self, *, code: int = protocol.CLOSE_NORMAL, message: bytes = b"") -> bool:
        if not self.prepared:
            refused = code == protocol.CLOSE_TRY_AGAIN_LATER or code == protocol.CLOSE_GOING_AWAY
            self.set_status(503 if refused else 500)
            self.content_type = "application/json"
            reason = message.decode(errors="replace") or "the conversation could not start"
            self.text = json.dumps({"error": reason})
        await self.peer.close()
        return True


class PeerOutbox(Outbox):
    """The session's outbox: a barge-in (``drop_audio``) also clears the bot's track at once."""

    def __init__(self, bot: BotTrack) -> None:
        super().__init__()
        self.bot = bot

    def put_nowait(self, message: Message, drop_audio: bool = False) -> None:
        if drop_audio:
            self.bot.clear()
        super().put_nowait(message, drop_audio)


class PeerSession(Session):
    """Runs one graph for one peer connection (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        response: AnswerResponse,
        graph: Graph,
        max_message_bytes: int,
        *,
        idle_timeout: float = 0.0,
    ) -> None:
        super().__init__(
            session_id,
            cast(web.WebSocketResponse, response),
            graph,
            max_message_bytes,
            idle_timeout=idle_timeout,
        )
        self.response = response
        self.peer = response.peer
        self.connection.outbox = PeerOutbox(self.peer.bot)
        self.pings = 0  # heartbeats received
        now = asyncio.get_running_loop().time()
        self._heard_at = now  # loop time of the last data-channel message
        self._active_at = now  # ... of the last client message or microphone audio (pings do not count)
        self._heard = False
        self._done = asyncio.Event()  # the client said stop, or flooded: the input ends
        self._reading = asyncio.Event()  # set once the reader has ended
        self._bot_rate = 0  # the rate the last ``audio_format`` announced

    async def run(self) -> None:
        """Send the answer, then serve the peer until it ends (``Session.run``); the connection closes."""
        await self.response.send_answer(self.id)
        tasks = [asyncio.create_task(self._stats(), name=f"rtc-stats:{self.id}")]
        if self.peer.microphone is not None:
            reader = read_microphone(self.peer.microphone, self._microphone, MIC_RATE)
            tasks.append(asyncio.create_task(reader, name=f"rtc-mic:{self.id}"))
        try:
            await super().run()
        finally:
            await self.peer.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _microphone(self, pcm: bytes) -> None:
        self._active_at = asyncio.get_running_loop().time()
        self.connection.inbound.put(Audio(pcm))

    async def _read(self) -> None:
        """Take data-channel messages until the input ends (see the module docstring for when)."""
        self.peer.listen(self._message)
        loop = asyncio.get_running_loop()
        ended = asyncio.ensure_future(self._done.wait())
        gone = asyncio.ensure_future(self.peer.gone.wait())
        try:
            while not (ended.done() or gone.done() or self.peer.closed):
                heartbeat = self._heard_at + (HEARTBEAT_TIMEOUT if self._heard else CONNECT_TIMEOUT)
                idle = self._active_at + self.idle_timeout if self.idle_timeout > 0 else float("inf")
                now = loop.time()
                if now >= heartbeat:
                    log.info(
                        "session %s: no heartbeat for %.1f s: the peer is gone", self.id, now - self._heard_at
                    )
                    return
                if now >= idle:
                    log.info("session %s: no client message for %g s; ending it", self.id, self.idle_timeout)
                    message = f"no message for {self.idle_timeout:g} s: the conversation ended"
                    self.connection.send_nowait(self.connection.wire.error(message))
                    return
                await asyncio.wait({ended, gone}, timeout=min(heartbeat, idle, now + CLOSED_CHECK) - now)
            if not ended.done():
                log.info("session %s: the peer connection closed", self.id)
        finally:
            self.peer.listener = None
            ended.cancel()
            gone.cancel()
            self._reading.set()

    def _message(self, data: str | bytes) -> None:
        """One data-channel message (protocol errors get a reply and the session goes on)."""
        now = asyncio.get_running_loop().time()
        self._heard_at, self._heard = now, True
        try:
            event = parse(data, self.max_message_bytes)
        except Exception:  # a parser bug must cost the client one message, not the conversation
            log.exception("session %s: cannot parse a client message", self.id)
            event = ProtocolError("the server could not read this message")
        if isinstance(event, Ping):
            self.pings += 1
            self.peer.send(pong())
            return
        self._active_at = now
        inbound, send = self.connection.inbound, self.connection.send_nowait
        if isinstance(event, ProtocolError):
            send(self.connection.wire.error(event.message))
        elif isinstance(event, Stop):
            self._done.set()
        elif not inbound.put(event):
            log.warning("session %s: over %d control messages queued; closing", self.id, inbound.max_controls)
            send(
                self.connection.wire.error(
                    f"over {inbound.max_controls} messages wait for a busy conversation"
                )
            )
            self.close_code = protocol.CLOSE_POLICY_VIOLATION
            self._done.set()

    async def _write(self) -> None:
        """Server messages out: text on the data channel (once open), bot audio into the track."""
        outbox, peer = self.connection.outbox, self.peer
        opened = asyncio.ensure_future(peer.opened.wait())
        reading = asyncio.ensure_future(self._reading.wait())
        try:
            await asyncio.wait({opened, reading}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            reading.cancel()
        if not peer.opened.is_set():
            outbox.discard()  # never connected: nobody to tell
            return
        while (message := await outbox.get()) is not None:
            if isinstance(message, bytes):
                if self._bot_rate:
                    await peer.bot.play(message, self._bot_rate)
                continue
            if message.startswith('{"type":"audio_format"'):
                self._bot_rate = int(json.loads(message)["sample_rate"])
            if not peer.send(message):
                log.info("session %s: data channel closed", self.id)
                outbox.discard()
                return

    async def _stats(self) -> None:
        """Every ``STATS_INTERVAL``: a ``metrics`` message with RTT, jitter and loss."""
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            with contextlib.suppress(Exception):  # stats of a closing connection: skip this round
                message = _stats_metrics(await self.peer.pc.getStats())
                if message is not None:
                    self.connection.send_nowait(message)
