"""OpenAI's audio and chat endpoints served from Voxgraph engines (``/v1/...``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from transports.websocket.server import VoiceServer


def add_openai_routes(app: web.Application, server: VoiceServer) -> None:
    """Add the OpenAI routes to ``app`` if ``server``'s config serves them."""
