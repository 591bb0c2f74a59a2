"""``POST /api/offer``: a browser's SDP offer in, the server's answer out, and a graph for the peer.

Request ``{"sdp": "...", "type": "offer"}`` with the credentials ``/ws`` takes (``Authorization:
Bearer`` or ``?token=``; a session token is used up as a ``/ws`` upgrade uses it); response
``{"sdp": "...", "type": "answer", "session": "<id>"}``. The page creates its data channel (label
``voxgraph``) and adds its microphone track before the offer, and gathers its ICE candidates first
(no trickle: aiortc puts all of its own in the answer).

The offer runs through ``VoiceServer.serve_session`` like every session: refused with HTTP 503 (and
``Retry-After``) while loading, draining or full, counted, measured, drained. ICE servers come from
``server.ice_servers`` (none by default: no request leaves the machine unless configured), UDP ports
from ``server.rtc_ports`` (``transports.webrtc.ports``); a server listening on loopback also offers a
loopback candidate, which aiortc leaves out on its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pipeline.config import Compiled, ServerSettings
from pipeline.config.server import is_loopback_host
from pipeline.graph import Graph
from transports.websocket.api import attempt_of

if TYPE_CHECKING:
    from transports.webrtc.peer import AnswerResponse
    from transports.websocket.server import VoiceServer

__all__ = ["OFFER_PATH", "add_webrtc_routes", "ice_servers", "serves_browsers"]

log = logging.getLogger("transports.webrtc")

OFFER_PATH = "/api/offer"
MAX_OFFER_BYTES = 64 * 1024
"""Largest offer taken (a browser's is ~3-6 kB)."""
NO_STORE = {"Cache-Control": "no-store"}
BROWSER_INPUTS = ("websocket.input", "webrtc.input")


def serves_browsers(compiled: Compiled) -> bool:
    """Whether the config's graph talks to the page (its input speaks the ``/ws`` protocol, streaming)."""
    for processor in compiled.processors.values():
        if getattr(processor, "connection_role", "") != "input":
            continue
        params = getattr(processor, "params", None)
        return (
            processor.type_name in BROWSER_INPUTS
            and getattr(params, "protocol", "voxgraph") == "voxgraph"
            and getattr(params, "audio_messages", "stream") == "stream"
        )
    return False


def add_webrtc_routes(app: web.Application, server: VoiceServer) -> None:
    """Add ``POST /api/offer`` if the config talks to the page and aiortc is installed (the ``webrtc``
    extra); without it the page stays on the websocket."""
    if not serves_browsers(server.compiled):
        return
    try:
        from transports.webrtc import jitter, loopback, ports
    except ImportError:
        log.info("aiortc is not installed (the webrtc extra): browsers use the websocket")
        return
    jitter.use_opus_jitter_buffer()
    if is_loopback_host(server.settings.host):
        loopback.offer_loopback_candidates()
    allowed = ports.parse_ports(server.settings.rtc_ports)
    if allowed is not None:
        ports.use_port_range(allowed)
    app.router.add_post(OFFER_PATH, Offers(server).offer)


def ice_servers(settings: ServerSettings, environ: dict[str, str] | os._Environ[str]) -> list[Any]:
    """``server.ice_servers`` as aiortc takes them; TURN URLs get the credentials from the environment
    variables ``server.ice_username_env`` and ``server.ice_credential_env``."""
    from aiortc import RTCIceServer

    username = environ.get(settings.ice_username_env) or None
    credential = environ.get(settings.ice_credential_env) or None
    servers = []
    for url in settings.ice_servers:
        if url.startswith(("turn:", "turns:")):
            servers.append(RTCIceServer(urls=url, username=username, credential=credential))
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


class Offers:
    """The offer handler of one server."""

    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self.ice = ice_servers(server.settings, os.environ)

    async def offer(self, request: web.Request) -> web.StreamResponse:
        verdict = self.server.guard.check(dataclasses.replace(attempt_of(request), path="/ws"))
        if not verdict.allowed:  # the middleware let the API route through; an offer is a /ws
            log.info("refused %s: %d %s", OFFER_PATH, verdict.status, verdict.reason)
            return web.json_response({"error": verdict.reason}, status=verdict.status, headers=NO_STORE)
        offer = await _read_offer(request)
        if isinstance(offer, web.Response):
            return offer
        unavailable = self.server.unavailable()
        if unavailable is not None:
            return unavailable
        response, problem = await self._answer(offer)
        if response is None:
            return _refuse(400, problem)
        try:
            return await self._serve(request, response)
        finally:
            await response.peer.close()

    async def _answer(self, offer: dict[str, str]) -> tuple[AnswerResponse | None, str]:
        """A peer connection for ``offer``, with the bot's track added and the answer ready; or None
        and why aiortc could not take the offer."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from transports.webrtc.peer import AnswerResponse, Peer
        from transports.webrtc.tracks import BotTrack

        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice))
        peer = Peer(pc, BotTrack())
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            pc.addTrack(peer.bot)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as error:  # an SDP aiortc cannot take: the client's mistake, said briefly
            await peer.close()
            log.info("refused an offer: %s: %s", type(error).__name__, str(error)[:200])
            return None, f"cannot answer this offer: {str(error)[:200]}"
        local = pc.localDescription
        return AnswerResponse(peer, {"sdp": local.sdp, "type": local.type}), ""

    async def _serve(self, request: web.Request, response: AnswerResponse) -> web.StreamResponse:
        from transports.webrtc.peer import PeerSession

        settings = self.server.settings

        def conversation(session_id: str, ws: web.WebSocketResponse, graph: Graph) -> PeerSession:
            return PeerSession(
                session_id, response, graph, settings.max_message_bytes, idle_timeout=settings.idle_timeout
            )

        ws: Any = response  # serve_session prepares and closes it as it does a websocket
        return await self.server.serve_session(
            request, ws, conversation, tell=None, kind="webrtc conversation"
        )


async def _read_offer(request: web.Request) -> dict[str, str] | web.Response:
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        return _refuse(413, f"an offer is at most {MAX_OFFER_BYTES} bytes")
    try:
        body = await request.content.read(MAX_OFFER_BYTES + 1)
        if len(body) > MAX_OFFER_BYTES:
            return _refuse(413, f"an offer is at most {MAX_OFFER_BYTES} bytes")
        offer = json.loads(body)
    except ValueError:
        return _refuse(400, 'send JSON: {"sdp": "...", "type": "offer"}')
    if not isinstance(offer, dict) or offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
        return _refuse(400, 'send JSON: {"sdp": "...", "type": "offer"}')
    return {"sdp": offer["sdp"], "type": "offer"}


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=NO_STORE)
