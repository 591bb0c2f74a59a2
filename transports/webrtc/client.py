"""A WebRTC peer in Python that talks to ``POST /api/offer`` as the page does.

It sends a microphone track (PCM you queue, paced in real time, silence in between), opens the
``voxgraph`` data channel, sends a ping every second, keeps every message received, and records the
bot's audio with its arrival times. Tests and benchmarks use it; from the command line it checks that
a server answers over WebRTC::

    python -m transports.webrtc.client http://127.0.0.1:8000/ --text "hello there"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from transports.webrtc.channel import LABEL
from transports.webrtc.tracks import BotTrack

__all__ = ["PeerClient", "Received"]

PING_INTERVAL = 1.0


class Received:
    """The bot's audio as it arrived: 48 kHz mono samples, and the monotonic arrival time of each frame."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, np.ndarray]] = []  # (arrival, samples)
        self.arrived = asyncio.Event()  # set at every frame

    def samples(self) -> np.ndarray:
        """All audio so far, in order."""
        if not self.frames:
            return np.zeros(0, np.int16)
        return np.concatenate([samples for _, samples in self.frames])

    def loud_frames(self, threshold: int = 500) -> list[float]:
        """Arrival times of the frames whose peak is over ``threshold``."""
        return [at for at, samples in self.frames if len(samples) and int(np.abs(samples).max()) > threshold]


class PeerClient:
    """One peer connection to a Voxgraph server (see the module docstring)."""

    def __init__(self, base_url: str, *, token: str | None = None, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.api_key = api_key
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.microphone = BotTrack(max_seconds=120.0)  # the same paced queue the server speaks through
        self.pc.addTrack(self.microphone)
        self.channel = self.pc.createDataChannel(LABEL, ordered=True)
        self.messages: list[dict[str, Any]] = []
        self.received = Received()
        self.session: str | None = None
        self.heartbeat = True  # False: stop pinging (a frozen page)
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        self._changed = asyncio.Event()
        self._opened = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._message)
        self.pc.on("track", self._track)

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Offer, take the answer, wait for the data channel; returns the answer's JSON.
        Raises ``aiohttp.ClientResponseError`` with the server's status if it refuses."""
        async with asyncio.timeout(timeout):
            await self.pc.setLocalDescription(await self.pc.createOffer())
            offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            params = {"token": self.token} if self.token else {}
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    self.base_url + "api/offer", json=offer, headers=headers, params=params
                ) as response,
            ):
                body = await response.json()
                if response.status != 200:
                    raise aiohttp.ClientResponseError(
                        response.request_info, (), status=response.status, message=str(body.get("error"))
                    )
            self.session = body["session"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
            await self._opened.wait()
        self._tasks.append(asyncio.create_task(self._ping()))
        return dict(body)

    def send(self, message: dict[str, Any] | str) -> None:
        """Send a message on the data channel (a dict as JSON, a string as it is)."""
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

    async def speak(self, pcm: bytes, rate: int) -> None:
        """Queue microphone audio (mono s16le at ``rate``); it goes out in real time."""
        await self.microphone.play(pcm, rate)

    async def wait_for(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first message (received so far or later) for which ``check`` holds."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages[seen:]:
                    if check(message):
                        return message
                seen = len(self.messages)
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        """Close the peer connection, as a page that leaves does."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.microphone.stop()
        await self.pc.close()

    def _message(self, data: str | bytes) -> None:
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                message = json.loads(data)
                message["_at"] = time.monotonic()
                self.messages.append(message)
                if self.on_message is not None:
                    self.on_message(message)
                self._changed.set()

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = cast(av.AudioFrame, await track.recv())
            except MediaStreamError:
                return
            at = time.monotonic()
            samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].copy()
            self.received.frames.append((at, samples))
            self.received.arrived.set()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            if self.heartbeat and self.channel.readyState == "open":
                self.channel.send('{"type":"ping"}')


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's page, e.g. http://127.0.0.1:8000/")
    parser.add_argument("--text", help="a typed message to send once connected")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to stay connected")
    parser.add_argument("--token", help="a session token (server.auth: api_key)")
    parser.add_argument("--loopback", action="store_true", help="offer a 127.0.0.1 candidate")
    args = parser.parse_args(argv)
    if args.loopback:
        from transports.webrtc.loopback import offer_loopback_candidates

        offer_loopback_candidates()
    client = PeerClient(args.url, token=args.token)
    client.on_message = lambda message: print(json.dumps({k: v for k, v in message.items() if k != "_at"}))
    started = time.monotonic()
    await client.connect()
    print(json.dumps({"connected_ms": round((time.monotonic() - started) * 1000, 1)}), flush=True)
    if args.text:
        client.send({"type": "text", "text": args.text})
    await asyncio.sleep(args.seconds)
    heard = len(client.received.loud_frames()) * 20
    print(json.dumps({"bot_audio_ms": heard}), flush=True)
    await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
