"""The phone routes a served config gets when its graph answers calls (it has a ``phone.input`` node).

* ``POST /twilio/voice`` — Twilio's voice webhook. The ``X-Twilio-Signature`` must be Twilio's for the
  public URL and every form field (else 403); the answer is TwiML (built with Twilio's SDK) connecting a
  bidirectional media stream to ``/twilio``, with a one-time stream token, the caller and the called
  number as custom parameters. A server that cannot take the call now (loading, draining, full) says
  503 and no stream is opened.
* ``/twilio`` — the media stream (websocket). The upgrade's signature covers the ``wss://`` URL
  (else 403 before the upgrade); the stream's ``start`` must carry a token minted for this call and
  not used before (else the socket closes), so a recorded upgrade cannot be replayed.
* ``/telnyx`` — a Telnyx media stream (websocket, ``rtp`` mode), opened with the server's own
  credentials like ``/ws``: an API key, or a one-time session token in ``?token=`` of the stream URL.

Each call is a ``PhoneCall`` (a session like a browser's: counted against ``max_sessions``, drained,
measured). The carrier routes are outside the API's key check (``transports.websocket.auth``): a
carrier authenticates with its signature and the stream token instead. Twilio's auth token is read
from the environment (``phone.input``'s ``twilio_auth_token_env``); without it ``/twilio`` refuses all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from pipeline.config import Compiled
from pipeline.graph import Graph
from transports.telephony import twilio_signature
from transports.telephony.call import Admit, HangUp, PhoneCall
from transports.telephony.events import Started
from transports.telephony.hangup import twilio_hang_up
from transports.telephony.nodes import PhoneInput, PhoneInputParams
from transports.telephony.twilio_wire import TwilioWire
from transports.telephony.wire import CarrierWire
from transports.websocket.api import attempt_of
from transports.websocket.auth import Guard, Scope, TokenError

if TYPE_CHECKING:
    from transports.websocket.server import VoiceServer

__all__ = ["PHONE_PATHS", "add_phone_routes", "phone_params"]

log = logging.getLogger("transports.telephony")

TWILIO_VOICE = "/twilio/voice"
TWILIO_STREAM = "/twilio"
TELNYX_STREAM = "/telnyx"
PHONE_PATHS = (TWILIO_VOICE, TWILIO_STREAM, TELNYX_STREAM)
STREAM_TOKEN_TTL = 60
"""Seconds between Twilio fetching the TwiML and opening the stream it names."""
TOKEN_PARAMETER = "token"
MAX_WEBHOOK_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def phone_params(compiled: Compiled) -> PhoneInputParams | None:
    """The params of the config's ``phone.input`` node: None if the graph answers no calls."""
    for processor in compiled.processors.values():
        if isinstance(processor, PhoneInput):
            return processor.params
    return None


def add_phone_routes(app: web.Application, server: VoiceServer) -> None:
    """Add the phone routes to ``app`` if ``server``'s config answers calls."""
    params = phone_params(server.compiled)
    if params is None:
        return
    routes = PhoneRoutes(server, params, os.environ.get(params.twilio_auth_token_env, ""))
    app.router.add_post(TWILIO_VOICE, routes.twilio_voice)
    app.router.add_get(TWILIO_STREAM, routes.twilio_stream)
    app.router.add_get(TELNYX_STREAM, routes.telnyx_stream)


class PhoneRoutes:
    """The handlers; ``auth_token`` is Twilio's (never logged), "" when not configured."""

    def __init__(self, server: VoiceServer, params: PhoneInputParams, auth_token: str) -> None:
        self.server = server
        self.params = params
        self._auth_token = auth_token
        if not auth_token:
            log.warning("%s is not set: /twilio refuses every request", params.twilio_auth_token_env)

    def __repr__(self) -> str:
        return "PhoneRoutes(***)"

    # --- Twilio --------------------------------------------------------------------------------------

    async def twilio_voice(self, request: web.Request) -> web.StreamResponse:
        """The voice webhook: signed form in, TwiML out."""
        if request.content_length is None:  # chunked: its size is known only once read
            return _refuse(411, "the webhook body needs a Content-Length")
        if request.content_length > MAX_WEBHOOK_BYTES:
            return _refuse(413, "the webhook body is too large")
        form = await request.post()
        fields = {name: [str(v) for v in form.getall(name)] for name in form}
        url = self.public_url(request, request.path_qs)
        signature = request.headers.get(twilio_signature.HEADER)
        if not twilio_signature.validate(self._auth_token, url, fields, signature):
            log.info("refused %s: no valid Twilio signature", TWILIO_VOICE)
            return _refuse(403, "invalid signature")
        unavailable = self.server.unavailable()
        if unavailable is not None:
            return unavailable
        call_sid = _first(fields, "CallSid")
        if not _call_sid_ok(call_sid):
            return _refuse(400, "CallSid missing or malformed")
        token = self._mint(call_sid)
        twiml = stream_twiml(
            self.stream_url(request, TWILIO_STREAM),
            {TOKEN_PARAMETER: token, "caller": _first(fields, "From"), "called": _first(fields, "To")},
        )
        return web.Response(text=twiml, content_type="text/xml", headers=NO_STORE)

    async def twilio_stream(self, request: web.Request) -> web.StreamResponse:
        """The media stream: a signed upgrade, then a ``start`` with this call's token."""
        url = self.stream_url(request, request.path_qs)
        signature = request.headers.get(twilio_signature.HEADER)
        if not twilio_signature.validate(self._auth_token, url, None, signature):
            log.info("refused %s: no valid Twilio signature on the upgrade", TWILIO_STREAM)
            return _refuse(403, "invalid signature")
        hang_up = self._twilio_hang_up if self.params.hang_up else None
        return await self._serve(request, TwilioWire(), self._admit_token, hang_up)

    def _mint(self, call_sid: str) -> str:
        """A token for this call's media stream only: it opens no ``/ws`` and reads no conversation."""
        guard: Guard = self.server.guard
        scope = Scope(self.server.compiled.spec.name, call_sid, route=TWILIO_STREAM)
        text, _ = guard.issue(min(STREAM_TOKEN_TTL, guard.token_ttl), scope)
        return text

    def _admit_token(self, started: Started) -> str | None:
        """None if ``start`` carries a token minted for this call, unexpired and not used before."""
        guard: Guard = self.server.guard
        text = started.custom_parameters.get(TOKEN_PARAMETER, "")
        now = guard.clock()
        try:
            token = guard.signer.verify(text, now)
        except TokenError as error:
            return f"stream token: {error}"
        if (
            token.scope.config != self.server.compiled.spec.name
            or token.scope.conversation != started.call_id
            or token.scope.route != TWILIO_STREAM
        ):
            return "stream token: minted for another call"
        try:
            fresh = guard.used.use(token, now)
        except OverflowError:
            return "stream token: too many recent calls"
        return None if fresh else "stream token: already used"

    async def _twilio_hang_up(self, started: Started) -> None:
        await twilio_hang_up(
            started.account_id, started.call_id, self._auth_token, self.params.twilio_api_url
        )

    # --- Telnyx --------------------------------------------------------------------------------------

    async def telnyx_stream(self, request: web.Request) -> web.StreamResponse:
        """A Telnyx media stream, opened with the server's credentials as ``/ws`` is."""
        try:
            from transports.telephony.telnyx_wire import TelnyxWire
        except ImportError:
            return _refuse(404, "this server has no Telnyx support")
        verdict = self.server.guard.check(dataclasses.replace(attempt_of(request), path="/ws"))
        if not verdict.allowed:
            log.info("refused %s: %d %s", TELNYX_STREAM, verdict.status, verdict.reason)
            return _refuse(verdict.status, verdict.reason)
        return await self._serve(request, TelnyxWire(), _admit_any, None)

    # --- shared --------------------------------------------------------------------------------------

    def public_url(self, request: web.Request, path_qs: str) -> str:
        """The URL the carrier requested: ``public_url`` (or this request's scheme and host) + path."""
        base = self.params.public_url or f"{request.scheme}://{request.host}"
        parts = urlsplit(base.rstrip("/"))
        path, _, query = path_qs.partition("?")
        return urlunsplit((parts.scheme, parts.netloc, parts.path + path, query, ""))

    def stream_url(self, request: web.Request, path_qs: str) -> str:
        """The websocket URL of ``path_qs``: ``wss://`` for an https public URL, ``ws://`` for http."""
        url = self.public_url(request, path_qs)
        scheme, _, rest = url.partition("://")
        return ("wss" if scheme in ("https", "wss") else "ws") + "://" + rest

    async def _serve(
        self, request: web.Request, carrier: CarrierWire, admit: Admit, hang_up: HangUp | None
    ) -> web.StreamResponse:
        """Run one call on this upgrade through the server's one session path (as ``/ws`` runs its)."""
        idle_timeout = self.server.settings.idle_timeout

        def call(session_id: str, ws: web.WebSocketResponse, graph: Graph) -> PhoneCall:
            return PhoneCall(
                session_id, ws, graph, carrier, admit=admit, hang_up=hang_up, idle_timeout=idle_timeout
            )

        ws = web.WebSocketResponse(heartbeat=20.0, compress=False, timeout=2.0, max_msg_size=4 * 65536)
        return await self.server.serve_session(request, ws, call, tell=None, kind=f"{carrier.carrier} call")


def stream_twiml(url: str, parameters: dict[str, str]) -> str:
    """TwiML connecting a bidirectional media stream to ``url`` with custom ``parameters``."""
    from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

    stream = Stream(url=url)
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value)
    connect = Connect()
    connect.append(stream)
    response = VoiceResponse()
    response.append(connect)
    return str(response)


def _call_sid_ok(value: str) -> bool:
    """A call id that can name a token's scope (letters, digits, '-', '_')."""
    return bool(value) and len(value) <= 128 and value.replace("_", "").replace("-", "").isalnum()


def _first(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name) or [""]
    return values[0]


def _admit_any(started: Started) -> str | None:
    return None


def _refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers={**NO_STORE, **(headers or {})})
