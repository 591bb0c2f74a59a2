"""One phone call, one graph: the browser session's machinery with a carrier on the other end.

``PhoneCall`` is a ``Session`` (so the server counts, drains, limits and measures calls like browser
conversations) whose messages are a carrier's (``twilio_wire``, ``telnyx_wire``): ``start`` must pass
the route's ``admit`` check (a one-time stream token) before any audio is taken, ``media`` goes to
``phone.input`` through the same bounded ``Inbound``, keypresses too, echoed marks go to
``phone.output``, and ``stop`` ends the input. Nothing of the browser protocol is sent to a carrier
(it would be an invalid message there): status, transcripts and errors stay in the server's log.

When the call ends any other way than the carrier's ``stop`` (the graph ended it, the server stopped
it, the socket dropped), ``hang_up`` is awaited so the caller is not left on a silent line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import WSMessage, WSMsgType, web

from pipeline.graph import Graph
from pipeline.sessions import annotate_conversation
from transports.telephony.events import (
    CarrierError,
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from transports.telephony.nodes import SAMPLE_RATE, CallLink
from transports.telephony.wire import MAX_MESSAGE_BYTES, CarrierWire
from transports.websocket import protocol
from transports.websocket.protocol import Audio, ClientEvent
from transports.websocket.session import Connection, ConnectionNode, Session, SilentWire

__all__ = ["CallConnection", "PhoneCall"]

log = logging.getLogger("transports.telephony")

Admit = Callable[[Started], str | None]
"""Checks a call's ``start``: None admits it, else the reason it is refused (logged, socket closed)."""
HangUp = Callable[[Started], Awaitable[None]]
HANG_UP_TIMEOUT = 10.0
START_TIMEOUT = 10.0
"""Seconds from the upgrade to an admitted ``start``: the upgrade's signature is the same for every call
(it covers only the stream URL), so a signed upgrade alone must not hold a slot."""
MAX_LOGGED_PROBLEMS = 5
"""Unreadable carrier messages logged per call; the rest are only counted."""


class _Silent(SilentWire):
    """The browser protocol's encoders for a carrier: nothing is sent (see the module docstring)."""

    reader = "PhoneCall"


class CallConnection(Connection):
    """A session's connection whose client is a carrier: ``call`` holds what the phone nodes share."""

    def __init__(self, session_id: str, carrier: CarrierWire) -> None:
        super().__init__(session_id)
        self.call = CallLink(carrier)
        self.wire = _Silent()  # its encoders return None: "not in this protocol", nothing sent


class PhoneCall(Session):
    """Runs one graph for one carrier media stream (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        ws: web.WebSocketResponse,
        graph: Graph,
        carrier: CarrierWire,
        *,
        admit: Admit,
        hang_up: HangUp | None = None,
        idle_timeout: float = 0.0,
    ) -> None:
        super().__init__(session_id, ws, graph, MAX_MESSAGE_BYTES, idle_timeout=idle_timeout)
        self.connection = CallConnection(session_id, carrier)
        for node in graph.processors.values():
            if getattr(node, "connection_role", "") and hasattr(node, "bind_connection"):
                cast(ConnectionNode, node).bind_connection(self.connection)
        self.carrier = carrier
        self.admit = admit
        self.hang_up = hang_up
        self.started: Started | None = None  # the admitted start
        self.carrier_stopped = False  # the carrier said stop: the call is over on its side
        self.problems = 0  # carrier messages that could not be read

    async def run(self) -> None:
        """Serve the call until it stops; then, unless the carrier ended it, hang it up."""
        try:
            await super().run()
        finally:
            started = self.started
            if started is not None and not self.carrier_stopped and self.hang_up is not None:
                await self._hang_up(self.hang_up, started)

    async def _read(self) -> None:
        """Read the carrier's messages; end the call if no ``start`` is admitted within ``START_TIMEOUT``."""
        reader = asyncio.create_task(super()._read(), name=f"call-reader:{self.id}")
        admitted = asyncio.create_task(cast(CallConnection, self.connection).call.started.wait())
        try:
            await asyncio.wait({reader, admitted}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if not admitted.done() and not reader.done():
                log.warning("call %s: no admitted start within %g s; ending it", self.id, START_TIMEOUT)
                self._refuse()
                return
            await reader
        finally:
            for task in (reader, admitted):
                task.cancel()
            await asyncio.gather(reader, admitted, return_exceptions=True)

    def _refuse(self) -> None:
        """End a stream that was not admitted: a policy close, counted as refused (not as a flood)."""
        self.close_code = protocol.CLOSE_POLICY_VIOLATION
        self.outcome = "refused"

    async def _hang_up(self, hang_up: HangUp, started: Started) -> None:
        try:
            async with asyncio.timeout(HANG_UP_TIMEOUT):
                await hang_up(started)
        except Exception as error:  # the call may stay up: say so, never the credentials
            log.warning("call %s: hanging up %s failed: %s", self.id, started.call_id, type(error).__name__)
        else:
            log.info("call %s: hung up %s", self.id, started.call_id)

    def _take(self, message: WSMessage) -> bool:
        """One carrier message; False ends the call."""
        if message.type is WSMsgType.ERROR:
            log.info("call %s: connection error: %s", self.id, self.ws.exception())
            return False
        if message.type is WSMsgType.BINARY:
            return self._event(self.carrier.parse_binary(message.data))
        if message.type is WSMsgType.TEXT:
            try:
                return self._event(self.carrier.parse(message.data))
            except Exception:  # a parser bug must cost one message, not the call
                log.exception("call %s: cannot parse a carrier message", self.id)
        return True

    def _event(self, event: object) -> bool:
        connection = cast(CallConnection, self.connection)
        if isinstance(event, Media):
            if self.started is not None:
                connection.inbound.put(Audio(event.pcm))
        elif isinstance(event, Mark):
            connection.call.echo(event.name)
        elif isinstance(event, Dtmf):
            if self.started is not None and not connection.inbound.put(cast(ClientEvent, event)):
                return False  # a flood of keys for a stalled graph
        elif isinstance(event, Started):
            return self._start(event)
        elif isinstance(event, Stopped):
            self.carrier_stopped = connection.call.caller_hung_up = True
            return False
        elif isinstance(event, ProtocolError | CarrierError):
            self._problem(event)
        elif not isinstance(event, Connected):
            log.debug("call %s: ignored %r", self.id, event)
        return True

    def _start(self, started: Started) -> bool:
        refused = self.admit(started)
        if refused is None and started.sample_rate != SAMPLE_RATE:
            refused = f"the caller's audio is {started.sample_rate} Hz; phone.input takes {SAMPLE_RATE} Hz"
        if refused is not None:
            log.warning("call %s: refused the stream of call %s: %s", self.id, started.call_id, refused)
            self._refuse()
            return False
        self.started = started
        annotate_conversation(self.graph.processors.values(), call_metadata(self.carrier.carrier, started))
        cast(CallConnection, self.connection).call.started.set()
        log.info("call %s: %s call %s started", self.id, self.carrier.carrier, started.call_id)
        return True

    def _problem(self, problem: ProtocolError | CarrierError) -> None:
        self.problems += 1
        if self.problems <= MAX_LOGGED_PROBLEMS:
            said = (
                problem.message if isinstance(problem, ProtocolError) else f"{problem.code} {problem.title}"
            )
            log.info("call %s: carrier message not taken: %s", self.id, said)


def call_metadata(carrier: str, started: Started) -> dict[str, str]:
    """What a recorder keeps about the call: the carrier, its call and stream ids, who called whom."""
    metadata = {
        "carrier": carrier,
        "call_id": started.call_id,
        "stream_id": started.stream_id,
        "caller": started.caller,
        "called": started.called,
    }
    return {key: value for key, value in metadata.items() if value}
