"""AssemblyAI v3 streaming served from a Voxgraph graph (``/v3/ws``), for a config whose graph has the
``assemblyai.input`` and ``assemblyai.output`` nodes.

* ``/v3/ws`` — a streaming session (``transports.dropin.assemblyai_session``): the configuration in the
  query (``transports.dropin.assemblyai_wire`` checks it), ``Begin``, turns, ``Termination``. Each
  session runs through ``VoiceServer.serve_session`` like a browser conversation: admitted, counted,
  measured, drained. Credentials as the service takes them: the key raw in ``Authorization`` (the
  server's API keys, with ``auth: api_key``), or a temporary token from ``/v3/token`` in
  ``Authorization`` (raw or Bearer) or ``?token=``, single-use; a ``/ws`` session token does not open
  it. A refused one gets ``Error`` 1008 and a close 1008 after the upgrade, as the service answers; a
  wrong query ``Error`` 3006 and a close 3006.
* ``GET /v3/token?expires_in_seconds=N`` (1-600, as the service takes it;
  ``max_session_duration_seconds`` 60-10800 optional) — ``{"token": ...}``, minted by ``Guard.issue``
  like every session token: it lives N seconds or ``server.token_ttl``, whichever is shorter, and
  opens one ``/v3/ws`` session and nothing else (its scope names the route), which then lasts at most
  the duration asked (else three hours). An API key is required (HTTP 401 without one,
  ``transports.websocket.auth``), a token will not do.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from aiohttp import web

from pipeline.config import Compiled
from pipeline.graph import Graph
from transports.dropin import assemblyai_wire as wire
from transports.dropin.assemblyai_nodes import AssemblyAIInput
from transports.dropin.assemblyai_session import MAX_MESSAGE_BYTES, StreamingSession
from transports.dropin.assemblyai_wire import StreamingConfig, WireError
from transports.websocket.api import attempt_of
from transports.websocket.auth import TOKEN_PREFIX, Attempt, Scope, TokenError, sent_credential

if TYPE_CHECKING:
    from transports.websocket.server import VoiceServer

__all__ = ["STREAM_PATH", "TOKEN_PATH", "add_assemblyai_routes", "serves_assemblyai"]

log = logging.getLogger("transports.dropin")

STREAM_PATH = "/v3/ws"
TOKEN_PATH = "/v3/token"
MAX_SESSION_SECONDS = 3 * 3600
"""A session's longest life (the service's): then ``Error`` 3008."""
TOKEN_EXPIRY = (1, 600)
SESSION_LIMIT = (60, MAX_SESSION_SECONDS)
MAX_LIMITED_TOKENS = 4096
"""Tokens with a session limit remembered at once (each until it expires); the oldest go first."""
NO_STORE = {"Cache-Control": "no-store"}


def serves_assemblyai(compiled: Compiled) -> bool:
    """Whether the config's graph serves AssemblyAI streaming clients (it has ``assemblyai.input``)."""
    return any(isinstance(p, AssemblyAIInput) for p in compiled.processors.values())


def add_assemblyai_routes(app: web.Application, server: VoiceServer) -> None:
    """Add the AssemblyAI routes to ``app`` if ``server``'s config serves them."""
    if not serves_assemblyai(server.compiled):
        return
    routes = StreamingRoutes(server)
    app.router.add_get(STREAM_PATH, routes.stream)
    app.router.add_get(TOKEN_PATH, routes.token)


class StreamingRoutes:
    """The handlers, and the session limit of each unexpired temporary token that asked for one."""

    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self._limits: OrderedDict[str, tuple[int, int]] = OrderedDict()  # token id -> (expiry, seconds)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """A streaming session: credentials, then the query, then the session."""
        attempt = attempt_of(request)
        verdict = self.server.guard.check_socket(attempt)
        if verdict.status == 401:
            log.info("refused %s: %s", STREAM_PATH, verdict.reason)
            return await _refuse_in_band(
                request, wire.UNAUTHORIZED, f"Unauthorized Connection: {verdict.reason}"
            )
        if not verdict.allowed:  # a foreign Host or Origin, or too many tokens in use: before the upgrade
            log.info("refused %s: %d %s", STREAM_PATH, verdict.status, verdict.reason)
            return web.json_response({"error": verdict.reason}, status=verdict.status, headers=NO_STORE)
        try:
            config = wire.parse_query(request.query)
        except WireError as violation:
            return await _refuse_in_band(request, violation.code, violation.message)
        expires_at = int(self.server.guard.clock()) + self._session_seconds(attempt)
        return await self._serve(request, config, expires_at)

    async def token(self, request: web.Request) -> web.Response:
        """A temporary token (the API key was checked by the access middleware)."""
        query = request.query
        expires = _whole(query.get("expires_in_seconds"), *TOKEN_EXPIRY)
        if expires is None:
            return _bad_request(
                f"expires_in_seconds must be a whole number from {TOKEN_EXPIRY[0]} to {TOKEN_EXPIRY[1]}"
            )
        limit = None
        if "max_session_duration_seconds" in query:
            limit = _whole(query["max_session_duration_seconds"], *SESSION_LIMIT)
            if limit is None:
                return _bad_request(
                    f"max_session_duration_seconds must be a whole number from "
                    f"{SESSION_LIMIT[0]} to {SESSION_LIMIT[1]}"
                )
        guard = self.server.guard
        try:  # the server's token_ttl bounds every token; a longer ask gets a shorter life, not a 400
            scope = Scope(guard.config_name, route=STREAM_PATH)
            text, token = guard.issue(min(expires, guard.token_ttl), scope)
        except ValueError as error:
            return _bad_request(str(error))
        if limit is not None:
            self._remember(token.id, token.expires_at, limit)
        return web.json_response({"token": text}, headers=NO_STORE)

    async def _serve(
        self, request: web.Request, config: StreamingConfig, expires_at: int
    ) -> web.StreamResponse:
        idle_timeout = self.server.settings.idle_timeout

        def session(session_id: str, ws: web.WebSocketResponse, graph: Graph) -> StreamingSession:
            return StreamingSession(
                session_id, ws, graph, config, expires_at=expires_at, idle_timeout=idle_timeout
            )

        ws = web.WebSocketResponse(
            heartbeat=20.0, compress=False, timeout=2.0, max_msg_size=MAX_MESSAGE_BYTES
        )
        return await self.server.serve_session(
            request, ws, session, tell=_try_again, kind="AssemblyAI stream"
        )

    def _session_seconds(self, attempt: Attempt) -> int:
        """How long the session may last: what its temporary token asked for, else three hours. The
        token is read where ``Guard.check_socket`` found it (raw, Bearer or ``?token=``)."""
        text = sent_credential(attempt) or attempt.query_token or ""
        if not text.startswith(TOKEN_PREFIX):
            return MAX_SESSION_SECONDS
        guard = self.server.guard
        try:
            token = guard.signer.verify(text, guard.clock())
        except TokenError:
            return MAX_SESSION_SECONDS
        _, seconds = self._limits.pop(token.id, (0, MAX_SESSION_SECONDS))
        return seconds

    def _remember(self, token_id: str, expires_at: int, seconds: int) -> None:
        now = self.server.guard.clock()
        for key in [k for k, (expiry, _) in self._limits.items() if expiry <= now]:
            del self._limits[key]
        while len(self._limits) >= MAX_LIMITED_TOKENS:
            self._limits.popitem(last=False)
        self._limits[token_id] = (expires_at, seconds)


async def _refuse_in_band(request: web.Request, code: int, message: str) -> web.WebSocketResponse:
    """Upgrade, send ``Error`` and close with ``code``: how the service refuses a session."""
    ws = web.WebSocketResponse(compress=False, timeout=2.0, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    await ws.send_str(wire.error(code, message))
    await ws.close(code=code, message=message.encode()[:120])
    return ws


def _try_again(message: str) -> str:
    return wire.error(wire.TRY_AGAIN, message)


def _whole(text: str | None, low: int, high: int) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value if low <= value <= high else None


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400, headers=NO_STORE)
