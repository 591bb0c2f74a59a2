"""The WebRTC transport over real sockets on loopback: a Python peer (aiortc, as the page uses it)
against the server's ``POST /api/offer``: replies heard on the track, barge-in, the data channel's
errors and heartbeat, a killed client, admission and credentials, the peer's metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.webrtc_peers import loopback_only, serving
from transports.webrtc.client import PeerClient
from transports.websocket.server import VoiceServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_only(monkeypatch)


@pytest.fixture
async def server() -> AsyncIterator[VoiceServer]:
    async with serving() as running:
        yield running


async def ended(server: VoiceServer, timeout: float = TIMEOUT) -> float:
    """Seconds until no session is left."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while server.sessions:
            await asyncio.sleep(0.02)
    return time.monotonic() - started


def tone(ms: int, rate: int = 16000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).tobytes()


async def test_a_typed_turn_is_answered_and_its_audio_heard_on_the_track(server: VoiceServer) -> None:
    client = PeerClient(server.url)
    answer = await client.connect()
    assert answer["type"] == "answer" and answer["session"] in server.sessions
    await client.speak(tone(1000), 16000)
    await asyncio.sleep(1.2)
    client.send({"type": "text", "text": "hello there"})
    reply = await client.wait_for(lambda m: m["type"] == "assistant_text" and m["final"])
    heard_ms = float(reply["text"].split()[1])
    assert 1000 <= heard_ms <= 1600  # the microphone arrived as 16 kHz PCM, in real time
    await client.wait_for(lambda m: m.get("state") == "listening" and m["_at"] > reply["_at"], TIMEOUT)
    loud = client.received.loud_frames()
    assert 8 <= len(loud) <= 12, len(loud)  # the 200 ms reply, in 20 ms frames
    assert max(loud) - min(loud) < 0.5
    types = [m["type"] for m in client.messages]
    assert types[:2] == ["session", "status"] and "transcript" in types
    await client.close()
    assert await ended(server) < 2.0


async def test_barge_in_silences_the_track_at_once(server: VoiceServer) -> None:
    client = PeerClient(server.url)
    await client.connect()
    client.send({"type": "text", "text": "long"})
    async with asyncio.timeout(TIMEOUT):
        while len(client.received.loud_frames()) < 25:  # half a second of the 3 s reply
            await client.received.arrived.wait()
            client.received.arrived.clear()
    client.send({"type": "text", "text": "barge"})
    interrupted = await client.wait_for(lambda m: m["type"] == "interrupted")
    await asyncio.sleep(0.5)
    after = [at for at in client.received.loud_frames() if at > interrupted["_at"]]
    quiet_ms = ((max(after) if after else interrupted["_at"]) - interrupted["_at"]) * 1000
    print(f"\nbot audio after the interruption message: {quiet_ms:.0f} ms")
    assert quiet_ms < 150
    assert len(client.received.loud_frames()) < 100  # far from the 150 frames of the whole reply
    await client.close()


async def test_malformed_messages_get_an_error_and_the_session_goes_on(server: VoiceServer) -> None:
    client = PeerClient(server.url)
    await client.connect()
    for bad in ("not json", '{"type": "nope"}', "[1, 2]", '{"type": "ptt"}', "{" * 5000):
        client.send(bad)
    client.channel.send(b"\x01\x02\x03")  # odd bytes: not whole samples
    async with asyncio.timeout(TIMEOUT):
        while len([m for m in client.messages if m["type"] == "error"]) < 6:
            await client.wait_for(lambda m: m["type"] == "error")
            await asyncio.sleep(0.05)
    client.send({"type": "text", "text": "still there"})
    await client.wait_for(lambda m: m["type"] == "assistant_text" and m["final"])
    assert len(server.sessions) == 1
    await client.close()


async def test_a_page_whose_heartbeat_stops_is_gone_within_five_seconds(server: VoiceServer) -> None:
    client = PeerClient(server.url)
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "pong", 3.0)
    client.heartbeat = False
    stopped = time.monotonic()
    await ended(server)
    took = time.monotonic() - stopped
    print(f"\nsession ended {took:.2f} s after the last ping")
    assert took < 6.5
    await client.close()


async def test_a_killed_client_is_noticed_within_five_seconds_and_its_graph_ends(server: VoiceServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "transports.webrtc.client", server.url, "--seconds", "60", "--loopback",
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            while b"connected_ms" not in await process.stdout.readline():
                pass
            await asyncio.sleep(1.5)  # a ping or two
        assert len(server.sessions) == 1
        session = next(iter(server.sessions.values()))
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await ended(server)
        took = time.monotonic() - killed
        print(f"\nkilled client noticed after {took:.2f} s")
        assert took < 6.5
        assert session.graph.failed is None
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_a_full_server_refuses_an_offer_with_503_before_any_peer_is_made() -> None:
    async with serving(max_sessions=1) as server:
        first = PeerClient(server.url)
        await first.connect()
        second = PeerClient(server.url)
        with pytest.raises(aiohttp.ClientResponseError) as refused:
            await second.connect()
        assert refused.value.status == 503
        await second.close()
        await first.close()
        assert await ended(server) < 2.0


async def test_offers_take_the_credentials_ws_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRAPH_API_KEYS", "k" * 32)
    async with serving(auth="api_key") as server, aiohttp.ClientSession() as http:
        anonymous = PeerClient(server.url)
        with pytest.raises(aiohttp.ClientResponseError) as refused:
            await anonymous.connect()
        assert refused.value.status == 401
        await anonymous.close()
        headers = {"Authorization": "Bearer " + "k" * 32}
        async with http.post(server.url + "api/session-token", headers=headers) as response:
            token = (await response.json())["token"]
        client = PeerClient(server.url, token=token)
        await client.connect()
        again = PeerClient(server.url, token=token)
        with pytest.raises(aiohttp.ClientResponseError) as reused:
            await again.connect()
        assert reused.value.status == 401  # a token opens one conversation, as on /ws
        await again.close()
        await client.close()


async def test_bad_offers_are_refused_with_400(server: VoiceServer) -> None:
    async with aiohttp.ClientSession() as http:
        for body in (b"nope", b'{"type": "answer", "sdp": ""}', b'{"type": "offer", "sdp": "v=0"}'):
            async with http.post(server.url + "api/offer", data=body) as response:
                assert response.status == 400, body
    assert not server.sessions


async def test_metrics_carry_the_peer_connections_round_trip_jitter_and_loss(server: VoiceServer) -> None:
    client = PeerClient(server.url)
    await client.connect()
    await client.speak(tone(6000), 16000)
    metrics = await client.wait_for(lambda m: m["type"] == "metrics" and "rtt_ms" in m, 12.0)
    assert metrics["transport"] == "webrtc"
    assert 0 <= metrics["rtt_ms"] < 100 and metrics["jitter_ms"] >= 0 and metrics["loss"] == 0
    await client.close()
