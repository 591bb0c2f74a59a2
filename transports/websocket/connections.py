"""Every TCP connection the server accepts: deadlines, a cap below the fd limit, and a lingering close.

aiohttp reads a request's headers for as long as a client takes, and a connection that never sends
one is kept for its ``keepalive_timeout``. ``ConnectionGuard`` wraps each connection's protocol:

* its request line and headers must arrive within ``header_timeout`` (a middleware marks the request
  as it reaches the application), else the connection is closed;
* open connections stay under a cap below the process's file-descriptor limit: at the cap, a new
  connection sheds the oldest one that has not sent a complete request (else it is itself refused),
  so ``accept`` never fails for want of descriptors and healthy clients are still served;
* data sent to a client may stay unacknowledged for ``send_timeout`` at most (the kernel's
  ``TCP_USER_TIMEOUT``): a client that stops reading cannot hold a download or a session;
* a connection closed while the client is still sending (a websocket message over the hard limit)
  is closed gracefully: what the server wrote (the close frame) goes out, the rest of the client's
  bytes are read and discarded for up to ``LINGER_SECONDS``, so the client sees the close code
  instead of a reset.

``GuardedSite`` is aiohttp's ``TCPSite`` listening through a guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("transports.websocket")

LINGER_SECONDS = 2.0
"""How long a connection closed under a sending client is drained before it is dropped."""
MIN_RESERVED_FDS = 32
"""File descriptors kept for everything but client connections (models, recordings, logs) at least."""
CLIENT_ERRNOS = frozenset({errno.ETIMEDOUT, errno.ECONNRESET, errno.EPIPE})
"""Socket errors that mean the client stopped reading, vanished or hung up."""
BACKLOG = 64
"""Listen backlog; asyncio also accepts up to this many connections at once before the guard sees
them, and as many connections shed to make room for them close only on the next loop turn, so the cap
leaves twice that many descriptors free."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
            pass
    return soft


def connection_cap(fd_limit: int, configured: int = 0, in_use: int = 0) -> int:
    """Connections held open at most: ``configured`` (0: automatic), never so many that fds run out.

    ``in_use``: descriptors the process holds already (loaded libraries, models, the listening socket),
    which the reserve for everything else comes on top of."""
    automatic = max(8, fd_limit - in_use - max(MIN_RESERVED_FDS, fd_limit // 8) - 2 * BACKLOG)
    return min(configured, automatic) if configured > 0 else automatic


def open_descriptors() -> int:
    """File descriptors this process has open now (Linux; 0 where it cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class ConnectionGuard:
    """Tracks open connections: header deadlines, the cap, and shedding (see the module docstring)."""

    def __init__(self, header_timeout: float, max_connections: int, send_timeout: float = 0.0) -> None:
        self.header_timeout = header_timeout  # seconds for a connection's first request headers; 0: none
        self.max_connections = max_connections
        self.send_timeout = send_timeout  # seconds sent data may stay unacknowledged; 0: the system's
        self.timed_out = 0  # connections closed for sending no complete request in time
        self.shed = 0  # connections closed to make room (or refused) at the cap
        self._open: OrderedDict[_GuardedProtocol, None] = OrderedDict()  # oldest first
        self._waiting: OrderedDict[_GuardedProtocol, None] = OrderedDict()  # no request yet, oldest first
        self._by_handler: dict[object, _GuardedProtocol] = {}  # aiohttp's protocol -> its guard
        self._lingering: dict[_GuardedProtocol, _Linger] = {}  # closed, still draining the client

    @property
    def open(self) -> int:
        """Connections open now (lingering ones included: they hold a descriptor)."""
        return len(self._open)

    def factory(self, make: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``create_server`` that guards each protocol ``make`` returns."""
        return lambda: _GuardedProtocol(self, make())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks a request as arrived (its headers are complete); put it first in the chain."""
        guarded = self._by_handler.get(request.protocol)
        if guarded is not None:
            guarded.served()
            self._waiting.pop(guarded, None)
        return await handler(request)

    def _opened(self, guarded: _GuardedProtocol) -> bool:
        """Register a new connection; False: refused (at the cap with nobody to shed)."""
        while len(self._open) >= self.max_connections:
            if not self._waiting:
                self.shed += 1
                log.warning("%d connections are open, all busy: refusing a new one", len(self._open))
                return False
            oldest = next(iter(self._waiting))
            self.shed += 1
            log.warning(
                "%d connections are open (the limit): closing the oldest that sent no request",
                len(self._open),
            )
            oldest.abort()
            self._closed(oldest)  # its descriptor is freed as the loop runs its connection_lost
        self._open[guarded] = None
        self._waiting[guarded] = None
        self._by_handler[guarded.inner] = guarded
        return True

    def close(self) -> None:
        """Drop the connections still lingering (the server is stopping)."""
        for linger in list(self._lingering.values()):
            linger.finish()

    def _closed(self, guarded: _GuardedProtocol) -> None:
        self._lingering.pop(guarded, None)
        self._open.pop(guarded, None)
        self._waiting.pop(guarded, None)
        self._by_handler.pop(guarded.inner, None)

    def _released(self, guarded: _GuardedProtocol) -> None:
        """aiohttp is done with the connection; it may still linger (and hold its descriptor)."""
        self._waiting.pop(guarded, None)
        self._by_handler.pop(guarded.inner, None)


class _GuardedProtocol(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol: the deadline, the cap, the lingering close."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.BaseProtocol) -> None:
        self.guard = guard
        self.inner = inner  # aiohttp's RequestHandler
        self.transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._shed = False  # closed by the guard: no lingering
        self._passed = False  # aiohttp's protocol has the connection (it was not refused at the cap)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.guard._opened(self):
            self._shed = True
            transport.abort()  # connection_lost follows; aiohttp never sees this connection
            return
        if self.guard.header_timeout > 0:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.guard.header_timeout, self._too_slow)
        self._passed = True
        _limit_unacknowledged(transport, self.guard.send_timeout)
        self.inner.connection_made(transport)

    def served(self) -> None:
        """A request arrived: the header deadline is met."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def abort(self) -> None:
        """Drop the connection at once (shed to make room)."""
        self._shed = True
        if self.transport is not None:
            self.transport.abort()

    def _too_slow(self) -> None:
        self._deadline = None
        self.guard.timed_out += 1
        log.debug("a connection sent no complete request in %g s: closing it", self.guard.header_timeout)
        self._shed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.inner, asyncio.Protocol)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert isinstance(self.inner, asyncio.Protocol)
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.served()
        if not self._passed:
            self.guard._closed(self)  # refused at the cap: aiohttp never saw it
            return
        self.guard._released(self)
        try:
            self.inner.connection_lost(exc)
        finally:
            if exc is not None or self._shed or not self._linger():
                self.guard._closed(self)

    def _linger(self) -> bool:
        """If the client is still sending, keep reading (and discarding) for a while instead of the
        reset that closing a socket with unread bytes sends; True: lingering (``_closed`` follows)."""
        assert self.transport is not None
        raw = self.transport.get_extra_info("socket")
        if raw is None or self.transport.get_extra_info("sslcontext") is not None:
            return False
        try:
            kept = raw.dup()  # the transport closes its descriptor right after this returns
        except OSError:
            return False
        try:
            kept.setblocking(False)
            if not kept.recv(1, socket.MSG_PEEK):
                raise ConnectionError("the client has closed")
        except OSError:  # nothing pending (BlockingIOError) or gone: a plain close sends no reset
            kept.close()
            return False
        self.guard._lingering[self] = _Linger(kept, lambda: self.guard._closed(self))
        return True


def _limit_unacknowledged(transport: asyncio.Transport, seconds: float) -> None:
    """Have the kernel drop the connection once sent data stays unacknowledged this long (Linux's
    ``TCP_USER_TIMEOUT`` also covers a client advertising a zero window: one that stopped reading,
    which no read timeout sees and a ``sendfile`` download would otherwise wait on for ever)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    raw = transport.get_extra_info("socket")
    if seconds <= 0 or option is None or raw is None or raw.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.IPPROTO_TCP, option, max(1, round(seconds * 1000)))


class _Linger:
    """Reads and discards a closed connection's incoming bytes until the client closes or time is up."""

    def __init__(self, sock: socket.socket, done: Callable[[], None]) -> None:
        self.sock = sock
        self.done = done
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._drain)
        self.timer = self.loop.call_later(LINGER_SECONDS, self.finish)

    def _drain(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.finish()

    def finish(self) -> None:
        """Close the socket (once) and report it gone."""
        if self.sock.fileno() < 0:
            return
        self.timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.done()


class GuardedSite(web.TCPSite):
    """``TCPSite`` whose connections go through a ``ConnectionGuard`` (and TLS, if given a context)."""

    __slots__ = ("_guard", "handshake_timeout")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        ssl_context: SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=BACKLOG, **kwargs)
        self._guard = guard
        self.handshake_timeout = 10.0  # seconds for a TLS handshake

    async def start(self) -> None:
        """Listen as ``TCPSite.start`` does, through the guard."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        listening = await asyncio.get_running_loop().create_server(
            self._guard.factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.handshake_timeout if self._ssl_context else None,
        )
        self._server = listening
        sockets = listening.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def tls_context(cert: str | None, key: str | None) -> SSLContext | None:
    """The server's TLS context from PEM files (None without them); reads files: call off the loop.

    Raises:
        OSError: only one of the two is set, or they cannot be read or do not match.
    """
    if not cert and not key:
        return None
    if not cert or not key:
        raise OSError("tls_cert and tls_key go together: set both (PEM files) or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load tls_cert {cert!r} with tls_key {key!r}: {error}") from None
    return context


class QuietClientErrors(logging.Filter):
    """Drops aiohttp's tracebacks for what a client did, not the server: a request it could not parse
    (the client got a 400: a raw non-ASCII query, a malformed header) or a connection the client let
    time out (it stopped reading) or reset. A client can cause any number of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            return False
        return not (isinstance(error, OSError) and error.errno in CLIENT_ERRNOS)
