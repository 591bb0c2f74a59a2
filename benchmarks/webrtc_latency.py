"""Browser -> server latency over WebRTC on loopback: aiortc's stock receive jitter buffer vs ours.

Two peers in one process (one clock): the "browser" sends a 20 ms click every 0.4 s on its microphone
track; the "server" reads the track as a session does (``read_microphone``) and notes when each click
is delivered. Latency = delivered - the moment the browser's track released the click to its encoder
(Opus encode, SRTP, UDP on loopback, jitter buffer, decode, resample). Packet loss is simulated on the
server's receiver (this kernel has no netem), seeded. One JSON line per (buffer, loss)::

    python benchmarks/webrtc_latency.py [--seconds 8] [--loss 0,0.02,0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioice import ice
from aiortc import RTCConfiguration, RTCPeerConnection, rtcrtpreceiver

from transports.webrtc import jitter
from transports.webrtc.tracks import BotTrack, read_microphone

CLICK_EVERY = 0.4


ORIGINAL_HANDLER = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet


def lossy_receivers(rate: float, seed: int) -> set[Any]:
    """Receivers added to the returned set drop ``rate`` of their RTP packets (seeded)."""
    lossy: set[Any] = set()
    rng = random.Random(seed)

    async def handle(self: Any, packet: Any, arrival_time_ms: int) -> None:
        if self in lossy and rng.random() < rate:
            return
        await ORIGINAL_HANDLER(self, packet, arrival_time_ms)

    rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = handle  # type: ignore[method-assign]
    return lossy


async def run(buffer: str, loss: float, seconds: float, seed: int = 1) -> dict[str, Any]:
    if buffer == "opus":
        jitter.use_opus_jitter_buffer()
    else:
        jitter.use_stock_jitter_buffer()
    lossy = lossy_receivers(loss, seed)
    browser, server = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    microphone = BotTrack(max_seconds=2.0)
    browser.addTrack(microphone)
    delivered: list[float] = []
    received_samples = 0
    quiet = True

    def deliver(pcm: bytes) -> None:
        nonlocal quiet, received_samples
        samples = np.frombuffer(pcm, np.int16)
        received_samples += len(samples)
        loud = len(samples) > 0 and int(np.abs(samples).max()) > 4000
        if loud and quiet:
            delivered.append(time.monotonic())
        quiet = not loud

    readers: list[asyncio.Task[None]] = []

    def on_track(track: Any) -> None:
        readers.append(asyncio.create_task(read_microphone(track, deliver)))

    server.on("track", on_track)
    await browser.setLocalDescription(await browser.createOffer())
    await server.setRemoteDescription(browser.localDescription)
    await server.setLocalDescription(await server.createAnswer())
    await browser.setRemoteDescription(server.localDescription)
    for transceiver in server.getTransceivers():
        lossy.add(transceiver.receiver)
    t = np.arange(960) / 48000
    click = (20000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16).tobytes()
    sent: list[float] = []
    await asyncio.sleep(1.0)  # connected, and the first packets through
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await microphone.play(click, 48000)
        before = microphone.audio_frames_sent
        while microphone.audio_frames_sent == before:
            await asyncio.sleep(0.002)
        assert microphone.first_audio_at is not None
        sent.append(microphone.first_audio_at)
        await asyncio.sleep(CLICK_EVERY)
    await asyncio.sleep(0.5)
    latencies = []
    for at in sent:
        after = [d - at for d in delivered if 0 <= d - at < CLICK_EVERY]
        if after:
            latencies.append(after[0] * 1000)
    await browser.close()
    await server.close()
    for reader in readers:
        reader.cancel()
    rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = ORIGINAL_HANDLER  # type: ignore[method-assign]
    return {
        "benchmark": "webrtc_browser_to_server",
        "jitter_buffer": buffer,
        "loss": loss,
        "clicks": len(sent),
        "heard": len(latencies),
        "median_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p90_ms": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "last_5_median_ms": round(statistics.median(latencies[-5:]), 1) if latencies else None,
    }


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--loss", default="0,0.02,0.05")
    args = parser.parse_args(argv)
    ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []  # loopback only
    for loss in (float(x) for x in args.loss.split(",")):
        for buffer in ("stock", "opus"):
            print(json.dumps(await run(buffer, loss, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
