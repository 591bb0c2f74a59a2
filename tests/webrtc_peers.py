"""Shared by the WebRTC tests: a served graph on loopback and ICE kept on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from pipeline import config
from transports.websocket.server import VoiceServer

GRAPH = """
name: rtc
server: {{type: websocket, port: 0, max_sessions: {max_sessions}, auth: {auth}}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: webrtc.input}}
  counter: {{type: "tests.test_websocket_server:Counter"}}
  out: {{type: webrtc.output}}
edges:
  - mic -> counter -> out
"""


def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICE candidates on 127.0.0.1 only (for the test's peers and the server's): no traffic leaves."""
    from aioice import ice

    monkeypatch.setattr(
        ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    )


@contextlib.asynccontextmanager
async def serving(max_sessions: int = 4, auth: str = "none") -> AsyncIterator[VoiceServer]:
    compiled, problems = config.compile_text(
        GRAPH.format(max_sessions=max_sessions, auth=auth), "<webrtc test>", ()
    )
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
