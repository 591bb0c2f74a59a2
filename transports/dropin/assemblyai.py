"""AssemblyAI v3 streaming served from a Voxgraph graph (``/v3/ws``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from transports.websocket.server import VoiceServer


def add_assemblyai_routes(app: web.Application, server: VoiceServer) -> None:
    """Add the AssemblyAI routes to ``app`` if ``server``'s config serves them."""
