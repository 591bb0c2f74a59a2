"""The websocket server: a browser page, one graph per ``/ws`` connection, health and conversation API.

``python -m pipeline run`` calls ``serve`` for a config with ``server: {type: websocket}``. Routes:

* ``/`` the page, ``/static/...`` its scripts and styles;
* ``/ws`` a conversation: a new graph built from the config, bound to this connection
  (``transports.websocket.protocol`` describes the messages, or ``whisper_protocol`` when the input
  node says so); a websocket upgrade of ``/`` is taken the same way, for pages that connect there;
* ``/health`` ``{"status": "ok", "active_sessions": N, "active_connections": N, "max_sessions": M,
  "admitting": bool, "load": {...}}`` (and ``refusing``: why not, when not admitting);
* ``/livez`` ``{"status": "alive"}`` while the event loop answers; ``/readyz`` ``{"ready": true}``, or
  503 ``{"ready": false, "reason": ...}`` while models load, while draining and while full
  (``transports.websocket.readiness``); ``/load`` the figures behind it (sessions, capacity, CPU, loop
  lag, full, draining, ready, the admission sample), for a balancer or an operator;
* ``/metrics`` Prometheus metrics (``transports.websocket.prometheus``), for an API key or a scrape key;
* ``/api/conversations...`` saved conversations (``transports.websocket.api``);
* ``/api/auth`` whether a page needs a session token, ``/api/session-token`` mints one.

Access (``transports.websocket.auth``, applied by one middleware before any handler): Host and Origin
checks on ``/ws`` and the API (``/load`` and ``/metrics`` too), and with ``auth: api_key`` an API key or
session token on them (on ``/load`` and ``/metrics`` an API key or a scrape key only); the page, its
files, ``/health``, ``/livez`` and ``/readyz`` are open. The phone routes check the carrier's own
credentials (``transports.telephony.routes``) and run each call through ``serve_session`` as ``/ws``
runs a conversation: calls are admitted, counted, measured, logged and drained alike. Without auth the
server refuses to listen beyond loopback.

Limits: ``max_sessions`` conversations at once (another connection gets an ``error`` message and close
code 1013, try again later; with ``full_refusal: http`` HTTP 503 before the upgrade instead, as while
draining, so a balancer retries another worker), and fewer while the measured load leaves no headroom
for one more (``transports.websocket.admission``: CPU, event-loop lag, sessions falling behind); client
messages over ``max_message_bytes`` get an ``error`` reply and the session goes on, while those over
four times that close the connection with 1009 (the socket layer refuses to buffer them). A conversation
with no client message for ``idle_timeout`` seconds ends as a ``stop`` would (drained, saved; an
``error`` message says why, close code 1000), so an open but forgotten tab does not hold a slot
(heartbeats alone do not count). Every TCP connection goes through ``connections.ConnectionGuard``: its
headers (and a TLS handshake) within ``header_timeout``, idle keep-alive ends after
``keepalive_timeout``, and open connections stay below the open-files limit (the oldest that sent no
request makes room). Client audio waiting for a busy graph is bounded in bytes (``session.Inbound``).

Lifecycle: the server listens first, not ready ("loading models": ``/ws`` gets HTTP 503), warms the
models up, then becomes ready. SIGTERM or a first Ctrl-C drains: readiness turns false at once, new
``/ws`` connections get HTTP 503 (with ``Retry-After``) before the upgrade, so a balancer retries them
elsewhere, and every live session is told (``status: draining`` with ``deadline_s``) and goes on for up
to ``drain_timeout``; those left then stop as ``stop`` stops them (each graph drains, recordings are
saved, bounded by its ``end_timeout``; close 1001). A second signal cancels them at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline import logs, runner
from pipeline.capacity import Decision, LoadMeter, decide
from pipeline.config import Compiled, ServerSettings, session_graph
from pipeline.config.server import is_all_interfaces
from pipeline.config.sessions import conversations_directory
from pipeline.graph import Graph, GraphFailedError
from pipeline.processor import Processor
from pipeline.sessions import ConversationKeeper, new_session_id
from transports.dropin.assemblyai import add_assemblyai_routes
from transports.dropin.openai import add_openai_routes
from transports.telephony.call import HANG_UP_TIMEOUT
from transports.telephony.routes import add_phone_routes
from transports.webrtc.signalling import add_webrtc_routes, serves_browsers
from transports.websocket import protocol
from transports.websocket.admission import Admission, thresholds
from transports.websocket.api import Recordings, access_middleware, add_auth_routes, add_routes
from transports.websocket.auth import AuthConfigError, guard_for
from transports.websocket.connections import (
    ConnectionGuard,
    GuardedSite,
    QuietClientErrors,
    connection_cap,
    open_descriptors,
    raise_fd_limit,
    tls_context,
)
from transports.websocket.prometheus import ServerMetrics
from transports.websocket.readiness import Refusal, refusal
from transports.websocket.session import Session

log = logging.getLogger("transports.websocket")

PAGE = Path(__file__).parent / "page"
HARD_LIMIT_FACTOR = 4
"""Messages up to this many times ``max_message_bytes`` are read and refused; larger ones close."""
NO_STORE = {"Cache-Control": "no-store"}
"""Probes and load figures are about now: no cache may answer them."""
SessionFactory = Callable[[str, web.WebSocketResponse, Graph], Session]
"""Binds a new graph to a route's connection: (session id, websocket, graph) -> the session to run."""


class VoiceServer:
    """Serves one validated config: each connection runs its own graph built from it."""

    def __init__(
        self, compiled: Compiled, settings: ServerSettings | None = None, meter: LoadMeter | None = None
    ) -> None:
        self.compiled = compiled
        self.settings = settings or compiled.server or ServerSettings()
        self.recordings = Recordings(recordings_directory(compiled, self.settings))
        self.sessions: dict[str, Session] = {}  # session id -> running session
        self.admission = Admission(self.sessions, thresholds(self.settings), meter)  # headroom for one more
        self.metrics = ServerMetrics(compiled)  # Prometheus figures, at /metrics
        self.closing = False  # set at shutdown: new connections are refused
        self.loading = False  # models warming up: not ready, /ws refused before the upgrade
        self.draining = False  # set at the first shutdown signal: not ready, live sessions go on
        self._drain_deadline = 0.0  # loop time at which a drain stops the sessions left
        self._shutdown = asyncio.Event()  # the first shutdown signal: ``run`` drains
        self._hurry = asyncio.Event()  # a further signal: stop every session now
        self._signals = 0  # shutdown signals received
        self._handlers: set[asyncio.Task[Any]] = set()  # the route handler of each session
        self._runner: web.AppRunner | None = None
        self.connections = ConnectionGuard(self.settings.header_timeout, self.settings.max_connections or 1)
        self.guard = guard_for(self.settings, compiled.spec.name, os.environ)  # or AuthConfigError
        self.app = self._application()

    @property
    def url(self) -> str:
        """Where the page is from this machine (with the real port once started)."""
        host = "127.0.0.1" if is_all_interfaces(self.settings.host) else self.settings.host
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{_bracketed(host)}:{self.port}/"

    @property
    def listening(self) -> str:
        """Where the server really listens, for the start banner: a URL, or all interfaces and the port."""
        if not is_all_interfaces(self.settings.host):
            return f"at {self.url}"
        bound = self._runner.addresses if self._runner is not None else []
        addresses = ", ".join(sorted({str(address[0]) for address in bound})) or self.settings.host
        return (
            f"on all interfaces ({addresses}), port {self.port}: "
            f"http://{socket.gethostname()}:{self.port}/ from other machines, {self.url} here"
        )

    @property
    def port(self) -> int:
        """The port listened on (the one picked when ``port: 0``)."""
        if self._runner is not None:
            for address in self._runner.addresses:
                return int(address[1])
        return self.settings.port

    async def start(self) -> None:
        """Listen; returns once connections are accepted.

        Every connection goes through ``self.connections``: its headers must come within
        ``header_timeout``, and open connections stay below the open-files limit (raised to the hard
        limit first), so a flood of silent sockets cannot starve the server of descriptors. Repeated
        warnings (a flood's failed accepts, refusals) are rate-limited rather than filling the disk.
        """
        settings = self.settings
        logs.rate_limit("asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.websocket", log.name)
        quiet = logging.getLogger("aiohttp.server")
        if not any(isinstance(f, QuietClientErrors) for f in quiet.filters):
            quiet.addFilter(QuietClientErrors())
        self.connections.max_connections = connection_cap(
            raise_fd_limit(), settings.max_connections, open_descriptors()
        )
        self.connections.send_timeout = settings.send_timeout
        tls = await asyncio.to_thread(tls_context, settings.tls_cert, settings.tls_key)
        self.app.middlewares.insert(0, self.connections.middleware)  # first: it marks the headers' arrival
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=settings.keepalive_timeout
        )
        await self._runner.setup()
        site = GuardedSite(self._runner, settings.host, settings.port, self.connections, ssl_context=tls)
        site.handshake_timeout = settings.header_timeout or 60.0  # a TLS client that never says hello
        await site.start()

    async def stop(self) -> None:
        """Refuse new connections, stop every session (each drains, bounded), then stop listening."""
        self.closing = True
        for session in list(self.sessions.values()):
            session.stop()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self._drain_bound())
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.connections.close()

    async def warm_up(self) -> None:
        """Load models before the first visitor: start one graph's engines and stop them again.

        Engines keep loaded models process-wide, so each conversation then starts at once. Nodes
        that belong to one conversation (connection nodes, conversation keepers: the recorder)
        and nodes whose start would open a billed provider session (``warm_up = False``) are left
        out. Raises ``GraphFailedError`` if an engine cannot start. Not ready (``loading``) until done.
        """
        self.loading = True
        await self._start_engines()
        self.loading = False
        if self._runner is not None:
            await self._metering()

    async def _start_engines(self) -> None:
        graph = session_graph(self.compiled)
        engines = [
            p
            for p in graph.processors.values()
            if p.warm_up and not getattr(p, "connection_role", "") and not isinstance(p, ConversationKeeper)
        ]
        if not engines:
            return
        starts = [asyncio.ensure_future(p.on_start()) for p in engines]
        try:
            done, pending = await asyncio.wait(starts, timeout=graph.start_timeout)
            failures = [  # printed: an SDK's error may quote the node's API key
                f"{p.name}: " + p.hide_secrets(f"{type(error).__name__}: {error}")
                for p, t in zip(engines, starts, strict=True)
                if t in done and (error := t.exception()) is not None
            ]
            failures += [
                f"{p.name}: took longer than {graph.start_timeout:.0f}s"
                for p, t in zip(engines, starts, strict=True)
                if t in pending
            ]
            if failures:
                raise GraphFailedError("cannot start the graph:\n  " + "\n  ".join(failures))
        finally:
            for task in starts:
                task.cancel()
            await asyncio.gather(*(_stopped(p, graph.cancel_timeout) for p in engines))

    def shutdown(self) -> None:
        """SIGTERM or Ctrl-C: the first drains (``run`` returns once done), a further one stops now."""
        self._signals += 1
        if self._signals > 1:
            print(f"stopping now: cancelling {len(self.sessions)} conversation(s)", file=sys.stderr)
            self.cancel_sessions()
            return
        if self.loading:
            print("\nstopping: models were still loading", file=sys.stderr)
        else:
            print(
                f"\ndraining: {len(self.sessions)} conversation(s), up to {self.settings.drain_timeout:g} s; "
                "Ctrl-C again to stop now",
                file=sys.stderr,
            )
        self.begin_drain()
        self._shutdown.set()

    def begin_drain(self, timeout: float | None = None) -> None:
        """Not ready from now on, new connections refused (HTTP 503), live sessions told their deadline:
        ``timeout`` seconds (default ``drain_timeout``). Idempotent; ``drain`` waits and stops."""
        if self.draining:
            return
        timeout = self.settings.drain_timeout if timeout is None else timeout
        self.draining = True
        self._drain_deadline = asyncio.get_running_loop().time() + timeout
        for session in list(self.sessions.values()):
            session.notify_draining(timeout)

    async def drain(self, timeout: float | None = None) -> None:
        """Let live sessions go on until they end, the deadline passes or ``cancel_sessions`` hurries
        them; then ``stop`` (those left drain, are saved and closed with 1001)."""
        self.begin_drain(timeout)
        left = self._drain_deadline - asyncio.get_running_loop().time()
        handlers = set(self._handlers)
        if handlers and left > 0 and not self._hurry.is_set():
            ended = asyncio.ensure_future(asyncio.wait(handlers))
            hurried = asyncio.ensure_future(self._hurry.wait())
            try:
                await asyncio.wait({ended, hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                hurried.cancel()
        await self.stop()

    def cancel_sessions(self) -> None:
        """Stop every session now (a second signal): a drain stops waiting, each graph is cancelled (its
        recorder saves what it has) and its socket closed with 1001; ``stop`` then finishes at once."""
        self._hurry.set()
        for session in list(self.sessions.values()):
            session.stop()
            session.graph.in_background(session.graph.cancel(), f"cancel:{session.id}")

    async def run(self, name: str) -> int:
        """Listen (not ready), warm up, serve until ``shutdown``, drain; returns the exit code."""
        self.loading = True  # from the first request on, until the warm-up is done
        try:
            try:
                await self.start()
            except OSError as error:
                where = f"{self.settings.host}:{self.settings.port}"
                print(f"error: cannot listen on {where}: {error}", file=sys.stderr)
                return 1
            print("loading models…", file=sys.stderr, flush=True)
            failed = await self._load_models()
            if failed is not None:
                return failed
            page = " — open it in a browser" if serves_browsers(self.compiled) else ""
            print(f"Voxgraph: serving '{name}' {self.listening}{page} (Ctrl-C stops)", flush=True)
            await self._shutdown.wait()
            await self.drain()
        finally:
            await self.stop()
        return 0

    async def _load_models(self) -> int | None:
        """Warm up unless a signal comes first: None once ready, else the exit code (0 stopped, 1 failed)."""
        warm_up = asyncio.create_task(self.warm_up())
        interrupted = asyncio.create_task(self._shutdown.wait())
        await asyncio.wait({warm_up, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not warm_up.done():  # a signal while loading
            warm_up.cancel()
            await asyncio.wait({warm_up})
            return 0
        if warm_up.exception() is not None:
            print(f"error: {warm_up.exception()}", file=sys.stderr)
            return 1
        return None

    def _drain_bound(self) -> float:
        graphs = [s.graph for s in self.sessions.values()]
        slowest = max((g.end_timeout + 2 * g.cancel_timeout for g in graphs), default=0.0)
        # + the last messages to the client (5 s), closing the socket, and a phone call's hang-up
        return slowest + 8.0 + HANG_UP_TIMEOUT

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[access_middleware(self.guard)])
        app.on_startup.append(lambda _: self._metering())
        app.on_cleanup.append(lambda _: self.admission.stop())
        app.router.add_get("/", self._index)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/load", self._load)
        app.router.add_get("/ws", self._websocket)
        app.router.add_static("/static/", PAGE, follow_symlinks=False)
        add_routes(app, self.recordings)
        add_auth_routes(app, self.guard)
        add_phone_routes(app, self)  # /twilio/voice, /twilio, /telnyx when the graph answers calls
        add_webrtc_routes(app, self)  # POST /api/offer when the graph talks to the page (webrtc extra)
        add_assemblyai_routes(app, self)  # /v3/ws when the config serves AssemblyAI's streaming protocol
        add_openai_routes(app, self)  # /v1/... when the config serves OpenAI's audio and chat endpoints
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return web.FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-cache"})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "active_sessions": len(self.sessions),
                "active_connections": len(self.sessions),  # the name whisper websocket servers use
                "max_sessions": self.settings.max_sessions,
                **self._admitting(),
            }
        )

    def _admitting(self) -> dict[str, Any]:
        """``admitting``, why not (``refusing``), and the measured ``load`` behind the decision."""
        refused = self._refusal()
        report: dict[str, Any] = {"admitting": refused is None, "load": self.admission.sample().as_dict()}
        if refused is not None:
            report["refusing"] = refused.message
        return report

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers=NO_STORE)

    async def _readyz(self, request: web.Request) -> web.Response:
        refused = self._refusal()
        if refused is None:
            return web.json_response({"ready": True}, headers=NO_STORE)
        return web.json_response({"ready": False, "reason": refused.reason}, status=503, headers=NO_STORE)

    async def _load(self, request: web.Request) -> web.Response:
        return web.json_response(self.load(), headers=NO_STORE)

    def load(self) -> dict[str, Any]:
        """What ``/load`` shows: sessions against capacity, CPU (over ``load_window``), loop lag (s), whether
        full, draining and ready (and why not), and the admission sample and decision."""
        sample = self.admission.sample()
        decision = decide(sample, self.admission.limits)
        refused = self._refusal(decision)
        figures = sample.as_dict()
        draining = self.draining or self.closing
        return {
            "sessions": len(self.sessions),
            "capacity": self.settings.max_sessions,
            "cpu": figures["cpu"],
            "loop_lag": round(sample.loop_lag, 4),
            "full": len(self.sessions) >= self.settings.max_sessions or not decision.admit,
            "loading": self.loading,
            "draining": draining,
            "drain_left_s": max(0, round(self._drain_deadline - _now())) if draining else None,
            "ready": refused is None,
            "reason": None if refused is None else refused.reason,
            "admission": {"admit": decision.admit, "reason": decision.reason or None, **figures},
        }

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        limit = self.settings.max_message_bytes
        ws = web.WebSocketResponse(
            max_msg_size=limit * HARD_LIMIT_FACTOR, heartbeat=20.0, compress=False, timeout=2.0
        )

        def conversation(session_id: str, ws: web.WebSocketResponse, graph: Graph) -> Session:
            return Session(session_id, ws, graph, limit, idle_timeout=self.settings.idle_timeout)

        return await self.serve_session(request, ws, conversation, tell=protocol.error)

    async def serve_session(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        new_session: SessionFactory,
        *,
        tell: Callable[[str], str] | None,
        kind: str = "conversation",
    ) -> web.StreamResponse:
        """Run one session on ``request``'s websocket upgrade: the one path every route's sessions take.

        Refused while loading or draining (HTTP 503 before the upgrade, so a balancer or a carrier
        retries elsewhere), or full (after the upgrade, an error message and close code 1013, unless
        ``full_refusal: http``). Otherwise ``ws`` is prepared, a graph is built from the config and
        ``new_session(session_id, ws, graph)`` binds it to the connection; the session is then counted
        (``sessions``, admission, metrics), its handler awaited by a drain and by ``stop``, and logged
        as it starts and ends. ``tell`` encodes a message the client can read (``protocol.error``);
        None for a client that reads none (a carrier): it is refused before the upgrade whatever the
        reason, and closed without a word. ``kind`` names the session in the log.
        """
        refused = self._refusal()
        if refused is not None and (refused.before_upgrade or tell is None):
            self._refused(refused)
            return refusal_response(refused)
        await ws.prepare(request)
        refused = self._refusal()  # again: a drain may have begun during the upgrade
        if refused is not None:
            self._refused(refused)
            if tell is not None:
                await ws.send_str(tell(refused.message))
            await ws.close(code=refused.close_code, message=refused.message.encode()[:120])
            return ws
        session_id = new_session_id()
        try:
            session = new_session(session_id, ws, session_graph(self.compiled, session_id))
        except Exception as error:  # validated at start, so this is a bug or the environment changed
            log.exception("cannot build the graph for %s %s", kind, session_id)
            if tell is not None:
                await ws.send_str(tell(f"cannot start a conversation: {error}"))
            await ws.close(code=protocol.CLOSE_INTERNAL_ERROR)
            return ws
        self.sessions[session_id] = session
        self.metrics.session_started(session)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        log.info("session %s started: %s (%d active)", session_id, kind, len(self.sessions))
        try:
            await session.run()
        finally:
            del self.sessions[session_id]
            self.metrics.session_ended(session)
            self._handlers.discard(handler)
            log.info("session %s ended (%d active)", session_id, len(self.sessions))
        return ws

    def unavailable(self) -> web.Response | None:
        """HTTP 503 (logged and counted as a refusal) if a new session cannot start now, else None: for a
        route that promises a session before any upgrade, as a carrier's voice webhook does."""
        refused = self._refusal()
        if refused is None:
            return None
        self._refused(refused)
        return refusal_response(refused)

    def _refusal(self, decision: Decision | None = None) -> Refusal | None:
        """Why a new connection cannot start a session now, or None (``decision``: admission's, if known)."""
        return refusal(
            loading=self.loading,
            draining=self.draining or self.closing,
            sessions=len(self.sessions),
            max_sessions=self.settings.max_sessions,
            admission=(lambda: decision) if decision is not None else self.admission.decision,
            full_over_http=self.settings.full_refusal == "http",
        )

    async def _metering(self) -> None:
        """Measure load once ready: the warm-up's CPU and loop stalls must not count against the first
        conversations (admission looks ``load_window`` seconds back)."""
        if not self.loading:
            self.admission.start()

    def _refused(self, refused: Refusal) -> None:
        """Every refused connection passes here (loading and draining before the upgrade, full after
        unless ``full_refusal: http``)."""
        log.info("refused a connection: %s", refused.reason)
        self.metrics.refused(refused.kind)


def refusal_response(refused: Refusal) -> web.Response:
    """HTTP 503 for a refused session: why (``error``, ``reason``) and when to try again."""
    body = {"error": refused.message, "reason": refused.kind}
    headers = {"Retry-After": str(refused.retry_after), **NO_STORE}
    return web.json_response(body, status=503, headers=headers)


def _bracketed(host: str) -> str:
    """An IPv6 address as a URL needs it: ``[::1]``."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def recordings_directory(compiled: Compiled, settings: ServerSettings) -> Path:
    """``server.recordings``, else where the config's recorder saves conversations, else ``recordings``."""
    if settings.recordings:
        return Path(settings.recordings)
    return conversations_directory(compiled) or Path("recordings")


async def serve(compiled: Compiled) -> int:
    """Serve until SIGTERM or Ctrl-C, then drain; returns the exit code. A second signal stops at once."""
    try:
        server = VoiceServer(compiled)
    except AuthConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    installed = runner.install_signal_handlers(loop, server.shutdown)
    try:
        return await server.run(compiled.spec.name)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _stopped(processor: Processor, timeout: float) -> None:
    """Stop a processor that was started outside a running graph (its ``on_stop`` runs)."""
    try:
        await asyncio.wait_for(processor.cancel(), timeout)
    except TimeoutError:
        log.warning("%s did not stop within %.1fs", processor.name, timeout)


def _now() -> float:
    return asyncio.get_running_loop().time()
