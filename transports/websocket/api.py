"""The conversation API: saved conversations, read from the recordings directory.

Layout (what the ``recorder`` node writes)::

    {recordings}/{session_id}/transcript.json   {"session_id", "start_time", "end_time", "messages": [...]}
    {recordings}/{session_id}/user.wav, bot.wav, mixed.wav

Routes: ``GET /api/conversations`` (newest first; ``?limit=`` at most 500, ``?offset=`` to page on),
``GET /api/conversations/{id}`` (the transcript) and ``GET /api/conversations/{id}/audio/{file}``
(a download). Ids and file names must match strict patterns and every resolved path must stay inside
the directory (symlinks included): anything else is a 404, never a file from elsewhere.

Access (``transports.websocket.auth`` decides, ``access_middleware`` applies it to every route):
``GET /api/auth`` tells a page whether it needs a session token; ``POST /api/session-token`` mints one
with an API key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from transports.dropin.openai_wire import error_body
from transports.websocket.auth import Attempt, Guard, Scope

log = logging.getLogger("transports.websocket.api")

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
AUDIO_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.wav")
TRANSCRIPT = "transcript.json"
MAX_TRANSCRIPT_BYTES = 16 * 1024 * 1024
MAX_LISTED = 500
"""Conversations listed at most in one page (the newest by default)."""
MAX_MINT_BODY = 4096
MINT_KEYS = frozenset({"ttl", "config", "conversation"})
OPENAI_PREFIX = "/v1/"
"""Paths answered in OpenAI's shape (``transports.dropin.openai``), refusals included."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recordings:
    """Reads saved conversations from one directory; every path it returns is inside it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def conversations(self, limit: int = MAX_LISTED, offset: int = 0) -> list[dict[str, Any]]:
        """A summary of saved conversations, newest first (unreadable ones are left out): ``limit`` of
        them after the newest ``offset``.

        Session ids sort by start time, so folders are taken newest first by name and only the
        transcripts of the page asked for are read: a listing costs the same with 50 000 saved.
        """
        root = self._root()
        if root is None:
            return []
        names = sorted((f.name for f in root.iterdir() if SESSION_ID.fullmatch(f.name)), reverse=True)
        entries: list[dict[str, Any]] = []
        skipped = 0
        for name in names:
            if len(entries) >= limit:
                break
            transcript = self.transcript(name)
            if transcript is None:
                continue  # still recording, or not a conversation
            if skipped < offset:
                skipped += 1
                continue
            messages = transcript.get("messages")
            entries.append(
                {
                    "id": name,
                    "start_time": transcript.get("start_time"),
                    "end_time": transcript.get("end_time"),
                    "messages": len(messages) if isinstance(messages, list) else 0,
                    "audio": self.audio_files(name),
                }
            )
        entries.sort(key=lambda e: (str(e["start_time"] or ""), e["id"]), reverse=True)
        return entries

    def transcript(self, session_id: str) -> dict[str, Any] | None:
        """The conversation's transcript JSON, or None if there is none (or it is unreadable)."""
        path = self.path(session_id, TRANSCRIPT)
        if path is None:
            return None
        try:
            if path.stat().st_size > MAX_TRANSCRIPT_BYTES:
                log.warning("%s is over %d bytes: not served", path, MAX_TRANSCRIPT_BYTES)
                return None
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("cannot read %s: %s", path, error)
            return None
        return data if isinstance(data, dict) else None

    def audio_files(self, session_id: str) -> list[str]:
        """Names of the conversation's WAV files."""
        folder = self.path(session_id)
        if folder is None:
            return []
        names = (p.name for p in folder.iterdir() if AUDIO_FILE.fullmatch(p.name))
        return sorted(name for name in names if self.path(session_id, name) is not None)

    def path(self, session_id: str, file: str | None = None) -> Path | None:
        """The conversation's folder (or a file in it) if the names are valid and it exists as a plain
        folder (file) of the directory: a symlink anywhere below the directory is refused."""
        root = self._root()
        if root is None or not SESSION_ID.fullmatch(session_id):
            return None
        if file is not None and file != TRANSCRIPT and not AUDIO_FILE.fullmatch(file):
            return None
        expected = root / session_id if file is None else root / session_id / file
        try:
            resolved = expected.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if resolved != expected:
            return None
        return resolved if (resolved.is_dir() if file is None else resolved.is_file()) else None

    def _root(self) -> Path | None:
        try:
            root = self.directory.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return root if root.is_dir() else None


def add_routes(app: web.Application, recordings: Recordings) -> None:
    """Serve ``recordings`` under ``/api/conversations``."""

    async def listing(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", MAX_LISTED))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            limit = offset = -1
        if not (1 <= limit <= MAX_LISTED and offset >= 0):
            return web.json_response(
                {"error": f"limit must be 1..{MAX_LISTED} and offset 0 or more (whole numbers)"}, status=400
            )
        return web.json_response(await asyncio.to_thread(recordings.conversations, limit, offset))

    async def conversation(request: web.Request) -> web.Response:
        transcript = await asyncio.to_thread(recordings.transcript, request.match_info["id"])
        if transcript is None:
            return _not_found()
        return web.json_response(transcript)

    async def audio(request: web.Request) -> web.StreamResponse:
        session_id, file = request.match_info["id"], request.match_info["file"]
        path = await asyncio.to_thread(recordings.path, session_id, file)
        if path is None or file == TRANSCRIPT:
            return _not_found()
        disposition = f'attachment; filename="{session_id}-{file}"'  # both names match strict patterns
        return web.FileResponse(
            path, headers={"Content-Disposition": disposition, "Content-Type": "audio/wav"}
        )

    app.router.add_get("/api/conversations", listing)
    app.router.add_get("/api/conversations/{id}", conversation)
    app.router.add_get("/api/conversations/{id}/audio/{file}", audio)


def _not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)


def access_middleware(guard: Guard) -> Middleware:
    """Every request through ``guard`` before its handler: refusals (401, 403) come before any
    websocket upgrade, and carry a short reason only."""

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        verdict = guard.check(attempt_of(request))
        if verdict.allowed:
            response = await handler(request)
            if verdict.headers and not response.prepared:
                response.headers.update(verdict.headers)
            return response
        if verdict.status == 204:
            return web.Response(status=204, headers=verdict.headers)
        log.info("refused %s %s: %d %s", request.method, request.path, verdict.status, verdict.reason)
        body: dict[str, Any] = {"error": verdict.reason}
        if request.path.startswith(OPENAI_PREFIX):  # OpenAI's clients read their own error shape
            code = "invalid_api_key" if verdict.status == 401 else None
            body = error_body(verdict.reason, "invalid_request_error", code)
        return web.json_response(body, status=verdict.status, headers=verdict.headers)

    return check_access


def attempt_of(request: web.Request) -> Attempt:
    """What ``Guard.check`` needs from an aiohttp request."""
    headers = request.headers
    return Attempt(
        method=request.method,
        path=request.path,
        host=headers.get("Host"),
        origin=headers.get("Origin"),
        authorization=headers.get("Authorization"),
        query_token=request.query.get("token"),
        upgrade=headers.get("Upgrade", "").lower() == "websocket",
        conversation=request.match_info.get("id"),
        preflight=headers.get("Access-Control-Request-Method") if request.method == "OPTIONS" else None,
    )


def add_auth_routes(app: web.Application, guard: Guard) -> None:
    """``GET /api/auth`` (open: what a page needs to know) and ``POST /api/session-token``."""

    async def describe(request: web.Request) -> web.Response:
        mode = "api_key" if guard.enabled else "none"
        return web.json_response({"auth": mode, "token_ttl": guard.token_ttl if guard.enabled else None})

    async def session_token(request: web.Request) -> web.Response:
        if not guard.enabled:
            return web.json_response(
                {"error": "server.auth is none: there are no session tokens"}, status=404
            )
        body = await request.content.read(MAX_MINT_BODY + 1)
        if len(body) > MAX_MINT_BODY:
            return web.json_response({"error": f"the body is over {MAX_MINT_BODY} bytes"}, status=413)
        try:
            ttl, scope = _mint_request(body, guard.config_name)
            return web.json_response(guard.mint(ttl, scope))
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)

    app.router.add_get("/api/auth", describe)
    app.router.add_post("/api/session-token", session_token)


def _mint_request(body: bytes, config_name: str | None) -> tuple[int | None, Scope]:
    """The ttl and scope a mint request asks for (all optional). Raises ``ValueError`` saying why not."""
    usage = "send a JSON object with any of: ttl (seconds), config, conversation"
    try:
        fields: Any = json.loads(body) if body.strip() else {}
    except ValueError:
        raise ValueError(f"the body is not JSON: {usage}") from None
    if not isinstance(fields, dict) or not set(fields) <= MINT_KEYS:
        raise ValueError(usage)
    ttl = fields.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
        raise ValueError("ttl must be a whole number of seconds")
    config = fields.get("config", config_name)
    conversation = fields.get("conversation")
    if not all(value is None or isinstance(value, str) for value in (config, conversation)):
        raise ValueError("config and conversation must be strings (or null)")
    if conversation is not None and not SESSION_ID.fullmatch(conversation):
        raise ValueError("conversation must be a conversation id, as /api/conversations lists them")
    return ttl, Scope(config, conversation)
