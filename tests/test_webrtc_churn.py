"""50 peers that connect, talk and leave: no task, thread or file descriptor is left behind; and the
microphone under 2% and 5% packet loss keeps the sender's timeline (lost packets become silence)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any

import numpy as np
import pytest
from aiortc import rtcrtpreceiver

from tests.webrtc_peers import loopback_only, serving
from transports.webrtc.client import PeerClient
from transports.websocket.server import VoiceServer

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_only(monkeypatch)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def one_conversation(server: VoiceServer) -> None:
    client = PeerClient(server.url)
    await client.connect()
    client.send({"type": "text", "text": "hi"})
    await client.wait_for(lambda m: m["type"] == "assistant_text" and m["final"])
    await client.close()
    async with asyncio.timeout(TIMEOUT):
        while server.sessions:
            await asyncio.sleep(0.02)


async def settled(baseline: int) -> int:
    """Tasks other than this one, once the closing peers' last callbacks have run (bounded)."""
    deadline = time.monotonic() + 5.0
    while True:
        tasks = len(asyncio.all_tasks()) - 1
        if tasks <= baseline or time.monotonic() > deadline:
            return tasks
        await asyncio.sleep(0.05)


async def test_fifty_connect_close_cycles_leave_nothing_behind() -> None:
    async with serving() as server:
        for _ in range(3):  # warm up: the default executor's threads, codecs, imports
            await one_conversation(server)
        tasks, threads, fds = len(asyncio.all_tasks()) - 1, threading.active_count(), open_fds()
        started = time.monotonic()
        for _ in range(50):
            await one_conversation(server)
        took = time.monotonic() - started
        after = await settled(tasks)
        print(f"\n50 cycles in {took:.1f} s; tasks {tasks}->{after}, threads {threads}->"
              f"{threading.active_count()}, fds {fds}->{open_fds()}")  # fmt: skip
        assert after <= tasks
        assert threading.active_count() <= threads + 1  # a pool thread may still be winding down
        assert open_fds() <= fds + 2


@pytest.mark.parametrize("loss", [0.02, 0.05])
async def test_microphone_audio_keeps_its_length_under_packet_loss(loss: float) -> None:
    rng = random.Random(3)
    original = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet
    servers_receivers: set[Any] = set()
    dropped = 0

    async def lossy(self: Any, packet: Any, arrival_time_ms: int) -> None:
        nonlocal dropped
        if self in servers_receivers and rng.random() < loss:
            dropped += 1
            return
        await original(self, packet, arrival_time_ms)

    rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = lossy  # type: ignore[method-assign]
    try:
        async with serving() as server:
            client = PeerClient(server.url)
            await client.connect()
            session: Any = next(iter(server.sessions.values()))
            servers_receivers.update(t.receiver for t in session.peer.pc.getTransceivers())
            t = np.arange(16000 * 4) / 16000
            speech = (6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).tobytes()
            await client.speak(speech, 16000)
            await asyncio.sleep(4.5)
            client.send({"type": "text", "text": "how much"})
            reply = await client.wait_for(lambda m: m["type"] == "assistant_text" and m["final"])
            heard_ms = float(reply["text"].split()[1])
            client.send({"type": "text", "text": "still there"})  # the session goes on
            await client.wait_for(lambda m: m["type"] == "assistant_text" and m["final"] and m is not reply)
            await client.close()
    finally:
        rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = original  # type: ignore[method-assign]
    print(f"\n{loss:.0%} loss: {dropped} packets dropped, {heard_ms:.0f} ms of audio in the graph")
    assert dropped > 0
    assert 4400 <= heard_ms <= 5200  # ~4.5 s sent: lost packets are silence, not missing time
