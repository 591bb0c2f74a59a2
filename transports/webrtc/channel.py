"""The data channel's messages: the ``/ws`` JSON protocol, plus a heartbeat.

Every text message is what ``/ws`` carries (``transports.websocket.protocol``), both ways. The page
also sends ``{"type": "ping"}`` every second and the server answers ``{"type": "pong"}``: aiortc has
no "disconnected" state (a browser that vanished is noticed by ICE only after ~30 s), so a peer whose
pings stop for ``HEARTBEAT_TIMEOUT`` is taken as gone. The server's own periodic ``metrics`` message
carries the peer connection's figures (``stats_metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transports.websocket import protocol
from transports.websocket.protocol import ClientEvent, ProtocolError

__all__ = ["HEARTBEAT_TIMEOUT", "LABEL", "Ping", "parse", "pong", "stats_metrics"]

LABEL = "voxgraph"
"""The data channel the page opens."""
HEARTBEAT_TIMEOUT = 5.0
"""Seconds without any data-channel message (pings come every second) after which the peer is gone."""
CONNECT_TIMEOUT = 10.0
"""Seconds from the answer for the data channel's first message (ICE, DTLS and SCTP set up)."""


@dataclass(frozen=True, slots=True)
class Ping:
    """The page's heartbeat."""


def parse(data: str | bytes, max_bytes: int) -> ClientEvent | ProtocolError | Ping:
    """One data-channel message: a heartbeat, or a ``/ws`` client message (binary: audio)."""
    if isinstance(data, bytes):
        return protocol.parse_binary(data, max_bytes)
    if len(data) < 40 and data.replace(" ", "") == '{"type":"ping"}':
        return Ping()
    return protocol.parse_text(data, max_bytes)


def pong() -> str:
    """The answer to a ping."""
    return protocol.encode("pong")


def stats_metrics(report: dict[str, Any]) -> str | None:
    """The ``metrics`` message of a peer connection's stats (``await pc.getStats()``), or None if it has
    none yet: the browser's audio as received here (``jitter_ms``, ``packets_lost``, ``loss`` as a
    fraction of packets expected) and the round-trip time the browser's receiver reports (``rtt_ms``)."""
    fields: dict[str, Any] = {"transport": "webrtc"}
    for stats in report.values():
        kind = getattr(stats, "type", "")
        if kind == "inbound-rtp" and getattr(stats, "kind", "") == "audio":
            received, lost = stats.packetsReceived, max(0, stats.packetsLost)
            fields["jitter_ms"] = round(stats.jitter / 48.0, 1)  # RTP units of Opus's 48 kHz clock
            fields["packets_lost"] = lost
            fields["loss"] = round(lost / (received + lost), 4) if received + lost else 0.0
        elif kind == "remote-inbound-rtp" and getattr(stats, "kind", "") == "audio":
            fields["rtt_ms"] = round(stats.roundTripTime * 1000, 1)
    return protocol.encode("metrics", **fields) if len(fields) > 1 else None
