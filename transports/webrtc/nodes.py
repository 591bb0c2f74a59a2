"""``webrtc.input`` and ``webrtc.output``: the page's microphone and speaker, on WebRTC first.

They are the browser nodes (``websocket.input`` / ``websocket.output``) under the names a config uses
when the page is meant to reach it over WebRTC: a peer (``POST /api/offer``) binds them exactly as a
``/ws`` connection does, so the websocket stays the fallback. The input takes the microphone as the
peer delivers it (16 kHz mono, lost packets filled with silence); the output hands bot audio to the
peer's track in 20 ms pieces with a shorter lead, since the track itself paces and a barge-in clears it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.params import param
from transports.websocket.nodes import InputParams, OutputParams, WebsocketInput, WebsocketOutput

__all__ = ["WebrtcInput", "WebrtcOutput"]


@dataclass(slots=True, kw_only=True)
class WebrtcOutputParams(OutputParams):
    """Params of ``webrtc.output``: those of ``websocket.output``, with defaults for a paced track."""

    lead: float = param(0.06, ge=0, doc="seconds of bot audio handed to the track ahead of playback")
    chunk_ms: int = param(20, gt=0, doc="bot audio goes to the track in pieces of this length")


class WebrtcInput(WebsocketInput):
    """The page's microphone and keyboard, over WebRTC or the websocket (see the module docstring)."""

    type_name = "webrtc.input"
    Params = InputParams


class WebrtcOutput(WebsocketOutput):
    """The page's speaker and screen, over WebRTC or the websocket (see the module docstring)."""

    type_name = "webrtc.output"
    Params = WebrtcOutputParams
    params: WebrtcOutputParams
