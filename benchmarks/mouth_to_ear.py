"""One-way mouth-to-ear latency of the page, WebRTC vs websocket, measured with click markers.

Headless Chromium's fake microphone plays a file of 1 kHz clicks (60 ms, one a second after 3 s of
silence) into the page, which the real server serves with a graph that only echoes: ``ClickEcho``
notes the wall-clock time each click reaches the graph and at once answers with a click of its own.

* **browser → server**: from the page's meter on the microphone seeing a click (the page's clock) to
  the input node handing the audio frame holding it to the graph (the server's clock);
* **server → browser**: from the graph pushing the answering click to the page's meter on the bot's
  voice (after the same gain the speakers get) seeing it.

Both clocks are this machine's: the page's ``performance.timeOrigin + now()`` and ``time.time()`` agree
to a fraction of a millisecond. The page's microphone tap itself lags the real capture by a few tens
of ms (Chromium's capture buffers), which neither leg includes. Also reported per run: set-up (Start
→ link open, Start → conversation ready) and, over WebRTC, the link's RTT/jitter as the page saw them.

``--loss 0.02`` drops that share of the browser's RTP packets on arrival (seeded), as this kernel has
no netem; ``--stock-jitter-buffer`` puts aiortc's own receive buffer back (holds each packet until 4
newer arrive, then ~280 ms behind after one loss) for a before/after.

``--cpu 1 5``: CPU of the server and of Chromium at 1 and 5 sessions instead (the file loops).

Run from the repo root: ``python benchmarks/mouth_to_ear.py`` (both transports, 10 clicks each, ~40 s).
JSON lines on stdout (one per run), a summary on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from playwright.async_api import async_playwright

from pipeline import config
from pipeline.frames import BotAudioFrame, Frame, UserAudioFrame
from pipeline.processor import Processor
from transports.websocket.server import VoiceServer

CHROMIUM = Path("/usr/bin/chromium")
RATE = 48000
CLICK_S = 0.06
LEAD_S = 3.0
THRESHOLD = 0.1
"""Onset level (of full scale) on the server; the page's meters use 0.05."""
QUIET_S = 0.3
"""Silence before a rise that makes it a new click."""
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]
GRAPH = """
name: mouth-to-ear
server: {type: websocket, port: 0, max_sessions: 4, max_cpu: 1.0, max_loop_lag: 5.0, load_window: 3600}
settings: {end_timeout: 2.0}
nodes:
  mic: {type: websocket.input}
  clicks: {type: "benchmarks.mouth_to_ear:ClickEcho"}
  out: {type: websocket.output}
edges:
  - mic -> clicks -> out
"""


def click(rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A 1 kHz burst with 5 ms ramps (no spectral splatter for the codec to smear)."""
    t = np.arange(round(CLICK_S * rate)) / rate
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)
    burst: np.ndarray = (np.sin(2 * np.pi * 1000 * t) * ramp * amplitude * 32767).astype(np.int16)
    return burst


class ClickEcho(Processor):
    """Notes when each click of the user's audio arrives and answers it with a click at once."""

    handles: ClassVar[tuple[type[Frame], ...]] = (UserAudioFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (BotAudioFrame,)
    arrivals: ClassVar[list[float]] = []
    """Wall-clock times clicks reached the graph (the input node made their frame), all sessions."""
    answers: ClassVar[list[float]] = []
    """Wall-clock times the answering clicks were pushed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._quiet = 0  # samples since the last over the threshold
        self._wall = time.time() - time.monotonic()  # monotonic -> wall clock

    async def process(self, frame: Any) -> None:
        samples = np.frombuffer(frame.pcm, dtype=np.int16)
        loud = np.flatnonzero(np.abs(samples) > THRESHOLD * 32768)
        quiet_needed = round(QUIET_S * frame.sample_rate)
        onset = bool(len(loud)) and self._quiet + int(loud[0]) >= quiet_needed
        self._quiet = len(samples) - 1 - int(loud[-1]) if len(loud) else self._quiet + len(samples)
        if not onset:
            return
        ClickEcho.arrivals.append(frame.created / 1e9 + self._wall)
        ClickEcho.answers.append(time.time())
        await self.push(BotAudioFrame(pcm=click(frame.sample_rate).tobytes(), sample_rate=frame.sample_rate))


def clicks_file(path: Path, count: int, every: float) -> Path:
    import wave

    audio = np.zeros(round((LEAD_S + count * every + 2.0) * RATE), dtype=np.int16)
    burst = click(RATE)
    for n in range(count):
        start = round((LEAD_S + n * every) * RATE)
        audio[start : start + len(burst)] = burst
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(RATE)
        file.writeframes(audio.tobytes())
    return path


@contextmanager
def lossy_receiver(loss: float, seed: int = 7) -> Iterator[dict[str, int]]:
    """Drop ``loss`` of the RTP packets every aiortc receiver gets, as a lossy network would."""
    counts = {"received": 0, "dropped": 0}
    if not loss:
        yield counts
        return
    from aiortc import rtcrtpreceiver

    original = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet
    chance = random.Random(seed)

    async def handle(self: Any, packet: Any, arrival_time_ms: int) -> None:
        counts["received"] += 1
        if chance.random() < loss:
            counts["dropped"] += 1
            return
        await original(self, packet, arrival_time_ms)

    rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = handle  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = original  # type: ignore[method-assign]


def matched(earlier: list[float], later: list[float], window_ms: float) -> list[float]:
    """For each time in ``later``, ms since the last time in ``earlier`` before it, within the window."""
    delays = []
    for t in later:
        before = [e for e in earlier if e <= t and t - e < window_ms]
        if before:
            delays.append(t - max(before))
    return delays


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": round(statistics.median(ordered), 1),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
    }


async def run(
    transport: str, wav: Path, count: int, every: float, loss: float, stock: bool
) -> dict[str, Any]:
    compiled, problems = config.compile_text(GRAPH, "<mouth-to-ear>")
    assert compiled is not None and not problems, problems
    echo = importlib.import_module("benchmarks.mouth_to_ear").ClickEcho  # the graph's, not __main__'s
    echo.arrivals.clear()
    echo.answers.clear()
    voice = VoiceServer(compiled)
    await voice.start()
    if stock:
        from transports.webrtc.jitter import use_stock_jitter_buffer

        use_stock_jitter_buffer()  # the server installed its own as it started
    try:
        with lossy_receiver(loss) as counts:
            page_state = await converse(voice.url, transport, wav, count, every)
    finally:
        await voice.stop()
    arrivals = [t * 1000 for t in echo.arrivals]
    answers = [t * 1000 for t in echo.answers]
    up = matched(page_state["mic"], arrivals, 500)
    down = matched(answers, page_state["bot"], 1000)
    marks = page_state["marks"]
    link = [s for s in page_state["linkHistory"] if s.get("rtt_ms") is not None]
    return {
        "transport": page_state["transport"],
        "loss": loss,
        "receive_buffer": "aiortc stock" if stock else "voxgraph opus",
        "clicks": count,
        "heard_by_server": len(arrivals),
        "heard_by_page": len(page_state["bot"]),
        "browser_to_server_ms": summary(up),
        "server_to_browser_ms": summary(down),
        "setup_ms": {
            "start_to_open": round(marks["open"] - marks["start"], 1),
            "start_to_ready": round(marks["ready"] - marks["start"], 1),
        },
        "page_rtt_ms": summary([s["rtt_ms"] for s in link]),
        "page_jitter_ms": summary([s["jitter_ms"] for s in link if s.get("jitter_ms") is not None]),
        "page_jitter_buffer_ms": summary([s["jitter_buffer_ms"] for s in link if s.get("jitter_buffer_ms")]),
        "rtp_dropped": counts["dropped"] if loss else None,
        "rtp_received": counts["received"] if loss else None,
    }


async def converse(url: str, transport: str, wav: Path, count: int, every: float) -> dict[str, Any]:
    flags = [*FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
        try:
            page = await browser.new_page()
            await page.goto(f"{url}?raw=1&transport={transport}")
            await page.click("#start")
            await page.wait_for_function("window.voxgraph.marks.microphone !== undefined", timeout=30_000)
            wait_ms = round((LEAD_S + count * every + 1.5) * 1000)
            await page.wait_for_timeout(wait_ms)
            seen: dict[str, Any] = await page.evaluate(
                """() => {
                  const v = window.voxgraph;
                  return {
                    transport: v.transport, marks: v.marks, linkHistory: v.linkHistory,
                    mic: v.meters.mic.onsets.map(v.wallTime), bot: v.meters.bot.onsets.map(v.wallTime),
                  };
                }"""
            )
        finally:
            await browser.close()
    return seen


async def cpu(transport: str, wav: Path, sessions: int, seconds: float) -> dict[str, Any]:
    """CPU of the server (this process: the server and the idle Playwright client) and of Chromium
    while ``sessions`` pages each hold a conversation whose microphone clicks twice a second."""
    compiled, problems = config.compile_text(GRAPH.replace("max_sessions: 4", "max_sessions: 8"), "<cpu>")
    assert compiled is not None and not problems, problems
    voice = VoiceServer(compiled)
    await voice.start()
    flags = [*FLAGS, f"--use-file-for-fake-audio-capture={wav}"]  # looping: steady load
    try:
        async with async_playwright() as playwright:
            launcher = playwright.chromium
            browser = await launcher.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
            try:
                pages = [await browser.new_page() for _ in range(sessions)]
                for page in pages:
                    await page.goto(f"{voice.url}?raw=1&transport={transport}")
                    await page.click("#start")
                for page in pages:
                    await page.wait_for_function("window.voxgraph.marks.microphone", timeout=30_000)
                    assert await page.evaluate("window.voxgraph.transport") == transport
                await asyncio.sleep(2.0)  # past the set-up
                own, chrome, wall = time.process_time(), chromium_cpu(), time.monotonic()
                await asyncio.sleep(seconds)
                elapsed = time.monotonic() - wall
                own, chrome = time.process_time() - own, chromium_cpu() - chrome
                threads = len(list(Path("/proc/self/task").iterdir()))
                live = int(voice.load()["sessions"])
            finally:
                await browser.close()
    finally:
        await voice.stop()
    return {
        "transport": transport,
        "sessions": sessions,
        "seconds": round(elapsed, 1),
        "server_cpu_pct": round(100 * own / elapsed, 1),
        "server_cpu_pct_per_session": round(100 * own / elapsed / sessions, 1),
        "chromium_cpu_pct": round(100 * chrome / elapsed, 1),
        "server_threads": threads,
        "server_sessions": live,
    }


def chromium_cpu() -> float:
    """CPU seconds of the Chromium processes below this one."""
    tick = float(os.sysconf("SC_CLK_TCK"))
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                comm = (entry / "comm").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            if "chrom" in comm:
                stats[int(entry.name)] = fields
    me = os.getpid()

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return sum((int(f[11]) + int(f[12])) / tick for pid, f in stats.items() if below(pid))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=["webrtc", "websocket", "both"], default="both")
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between clicks")
    parser.add_argument("--loss", type=float, default=0.0, help="share of the browser's RTP packets dropped")
    parser.add_argument("--stock-jitter-buffer", action="store_true", help="aiortc's own receive buffer")
    parser.add_argument("--cpu", type=int, nargs="*", metavar="N", help="CPU at N sessions (e.g. 1 5)")
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    args = parser.parse_args()
    transports = ["webrtc", "websocket"] if args.transport == "both" else [args.transport]
    with tempfile.TemporaryDirectory() as tmp:
        wav = clicks_file(Path(tmp) / "clicks.wav", args.clicks, args.every)
        for transport in transports if args.cpu else ():
            for sessions in args.cpu:
                usage = await cpu(transport, wav, sessions, args.cpu_seconds)
                print(json.dumps(usage), flush=True)
                print(
                    f"{transport:>9} {sessions} session(s): server {usage['server_cpu_pct']}% of a core "
                    f"({usage['server_cpu_pct_per_session']}% each), Chromium {usage['chromium_cpu_pct']}%",
                    file=sys.stderr,
                )
        for transport in transports if not args.cpu else ():
            result = await run(transport, wav, args.clicks, args.every, args.loss, args.stock_jitter_buffer)
            print(json.dumps(result), flush=True)
            up, down = result["browser_to_server_ms"], result["server_to_browser_ms"]
            print(
                f"{result['transport']:>9} loss {args.loss:.0%} ({result['receive_buffer']}): "
                f"browser->server median {up.get('median')} ms (n={up['n']}), "
                f"server->browser median {down.get('median')} ms (n={down['n']}), "
                f"open {result['setup_ms']['start_to_open']} ms",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the graph imports benchmarks.*
    asyncio.run(main())
