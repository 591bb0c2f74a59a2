"""Overload: does each admitted conversation keep its latency when more people call than fit?

Serves ``configs/assistant.yaml`` on loopback (a ``python -m pipeline run`` subprocess, so the server's
own CPU meter sees only the server) and talks to it like browsers would: each client streams 16 kHz
PCM in real time, continuously (silence between turns, as an open microphone does), speaks the
LibriVox / spoken-command clips that ``benchmarks/voice_to_voice.py`` uses as turns, listens to the
answer (until the bot is done, or ``--listen`` seconds, then speaks over it), and times each turn
from the end of its clip to the first bot audio arriving back (``v2v``). The server's own figure
(``metrics`` messages: true end of speech → first audio playing) is reported beside it.

1. **single**: one client alone: the reference latency.
2. **overload**: ``--clients`` clients (default 4 x ``--capacity``), joining ``--stagger`` seconds
   apart so the load they add is measured before the next one asks. Each is admitted or refused
   (close 1013 with a reason); the admitted ones report their latency, its ratio to the single
   session, and whether it grew from their first turns to their last.

Run from the repo root: ``python benchmarks/overload.py`` (~4 min) or ``--turns 3 --clients 4``
(~2 min). JSON lines on stdout, progress and a table on stderr. Latency figures on a shared machine
are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.voice_to_voice import CLIPS, emit, summary

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "assistant.yaml"
RATE = 16000
CHUNK_S = 0.02
CHUNK_BYTES = int(RATE * CHUNK_S) * 2
TURN_TIMEOUT = 30.0
"""Seconds a turn may wait for its first bot audio before it counts as unanswered."""
START_TIMEOUT = 300.0
"""Seconds the server may take to load its models and listen."""


@dataclass
class Conversation:
    """What one client saw."""

    name: str
    admitted: bool = False
    refusal: str = ""
    v2v: list[float] = field(default_factory=list)  # seconds, per answered turn, in order
    server_v2v: list[float] = field(default_factory=list)  # the server's metrics messages
    unanswered: int = 0


class Client:
    """A browser tab: an open microphone streaming in real time, speaking a clip when told to."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, record: Conversation) -> None:
        self.ws = ws
        self.record = record
        self.speech = b""  # what the microphone still has to say; silence when empty
        self.said = asyncio.Event()  # set when the current clip has been sent in full
        self.bot_audio = asyncio.Event()  # set at each binary message
        self.listening = asyncio.Event()  # set at status "listening" (the reply played to its end)
        self.closed = False

    async def microphone(self) -> None:
        """20 ms of PCM every 20 ms on an absolute schedule (no drift), speech or silence."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self.closed:
            chunk, self.speech = self.speech[:CHUNK_BYTES], self.speech[CHUNK_BYTES:]
            if chunk and not self.speech:
                self.said.set()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(chunk.ljust(CHUNK_BYTES, b"\0"))
            due += CHUNK_S
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def receive(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.BINARY:
                self.bot_audio.set()
            elif message.type is aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                if data.get("type") == "metrics":
                    self.record.server_v2v.append(data["voice_to_voice_ms"] / 1000)
                elif data.get("type") == "status" and data.get("state", data.get("status")) == "listening":
                    self.listening.set()
        self.closed = True

    async def turn(self, pcm: bytes, listen: float) -> None:
        """Say ``pcm``; time the first bot audio after it; listen to the reply (at most ``listen`` s)."""
        self.said.clear()
        self.speech = pcm
        await asyncio.wait_for(self.said.wait(), len(pcm) / (2 * RATE) + 10)
        ended = time.monotonic()
        self.bot_audio.clear()
        self.listening.clear()
        try:
            await asyncio.wait_for(self.bot_audio.wait(), TURN_TIMEOUT)
        except TimeoutError:
            self.record.unanswered += 1
            return
        self.record.v2v.append(time.monotonic() - ended)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), listen)
        await asyncio.sleep(0.5)


def read_clip(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (RATE, 1, 2):
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit")
        return wav.readframes(wav.getnframes())


async def converse(
    url: str, name: str, clips: list[bytes], listen: float, http: aiohttp.ClientSession
) -> Conversation:
    """One client's whole conversation: connect, speak every clip as a turn, stop."""
    record = Conversation(name)
    async with http.ws_connect(url, max_msg_size=0) as ws:
        first = await asyncio.wait_for(ws.receive(), 30)
        data = json.loads(first.data) if first.type is aiohttp.WSMsgType.TEXT else {}
        if data.get("type") != "session":
            record.refusal = str(data.get("message", f"closed {ws.close_code}"))
            return record
        record.admitted = True
        client = Client(ws, record)
        await ws.send_str(json.dumps({"type": "start"}))
        tasks = [asyncio.create_task(client.microphone()), asyncio.create_task(client.receive())]
        try:
            for pcm in clips:
                if client.closed:
                    break
                await client.turn(pcm, listen)
            await ws.send_str(json.dumps({"type": "stop"}))
            await asyncio.wait_for(asyncio.shield(tasks[1]), 30)
        except (TimeoutError, ConnectionError) as error:
            print(f"[overload] {name}: {type(error).__name__}", file=sys.stderr)
        finally:
            client.closed = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return record


async def health(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "health", timeout=aiohttp.ClientTimeout(total=5)) as response:
        return dict(await response.json())


async def wait_until_serving(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await health(http, base)
                return
            await asyncio.sleep(0.5)
    raise SystemExit(f"the server did not listen within {START_TIMEOUT:.0f} s")


async def watch_load(base: str, seen: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """Poll ``/health`` every second: the load the server measured while the clients talked."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                seen.append(await health(http, base))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run_phase(
    base: str, clients: int, stagger: float, clips: list[bytes], listen: float
) -> tuple[list[Conversation], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_load(base, seen, stop))
    url = base.replace("http://", "ws://") + "ws"

    async def one(index: int) -> Conversation:
        await asyncio.sleep(index * stagger)
        print(f"[overload] client {index + 1}/{clients} calls", file=sys.stderr, flush=True)
        start = index % len(clips)  # each client starts at a different clip
        return await converse(url, f"client-{index + 1}", clips[start:] + clips[:start], listen, http)

    async with aiohttp.ClientSession() as http:
        records = await asyncio.gather(*(one(i) for i in range(clients)))
    stop.set()
    await watcher
    return list(records), seen


def growth(records: list[Conversation]) -> dict[str, Any]:
    """First vs last turns of every admitted conversation (the mean of each session's first / last
    third, pooled): a session that falls ever further behind shows a ratio well above 1."""
    firsts, lasts = [], []
    for record in records:
        n = len(record.v2v)
        if n >= 2:
            k = max(1, n // 3)
            firsts.append(statistics.fmean(record.v2v[:k]))
            lasts.append(statistics.fmean(record.v2v[-k:]))
    if not firsts:
        return {"sessions": 0}
    first, last = statistics.median(firsts), statistics.median(lasts)
    return {
        "sessions": len(firsts),
        "first_turns_ms": round(first * 1000, 1),
        "last_turns_ms": round(last * 1000, 1),
        "ratio": round(last / first, 2) if first > 0 else None,
    }


def peak_load(seen: list[dict[str, Any]]) -> dict[str, Any]:
    cpus = [s["load"]["cpu"] for s in seen if s.get("load", {}).get("cpu") is not None]
    lags = [s["load"]["loop_lag_ms"] for s in seen if "load" in s]
    return {
        "cpu_max": max(cpus, default=None),
        "cpu_p50": round(statistics.median(cpus), 3) if cpus else None,
        "loop_lag_ms_max": max(lags, default=None),
        "refusing_share": round(sum("refusing" in s for s in seen) / len(seen), 2) if seen else None,
        "refusing_kinds": sorted({re.sub(r"[\d.]+", "#", s["refusing"]) for s in seen if "refusing" in s}),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, recordings: str, overrides: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "RECORDINGS": recordings}
    command = [sys.executable, "-m", "pipeline", "run", str(CONFIG)]
    for override in overrides:
        command += ["--set", override]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def table_row(label: str, stats: dict[str, Any]) -> str:
    if not stats.get("count"):
        return f"{label:<28}{'-':>10}{'-':>10}"
    return f"{label:<28}{stats['p50_ms']:>10}{stats['p95_ms']:>10}"


async def main_async(args: argparse.Namespace) -> None:
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: run ./setup.sh (it installs pocketsphinx-testdata)")
    clips = [read_clip(CLIPS[i % len(CLIPS)]) for i in range(args.turns)]
    clients = args.clients or 4 * args.capacity
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as recordings:
        server = start_server(port, recordings, args.set)
        try:
            print("[overload] loading models…", file=sys.stderr, flush=True)
            await wait_until_serving(base, server)
            print(f"[overload] single: 1 client, {args.turns} turns", file=sys.stderr, flush=True)
            single, single_load = await run_phase(base, 1, 0.0, clips, args.listen)
            await asyncio.sleep(args.settle)  # the single run leaves the load window
            print(f"[overload] overload: {clients} clients, {args.stagger:g} s apart", file=sys.stderr)
            crowd, crowd_load = await run_phase(base, clients, args.stagger, clips, args.listen)
        finally:
            stop_server(server)
    report(single[0], single_load, crowd, crowd_load, clients)


def report(
    single: Conversation,
    single_load: list[dict[str, Any]],
    crowd: list[Conversation],
    crowd_load: list[dict[str, Any]],
    clients: int,
) -> None:
    alone = summary(single.v2v) if single.v2v else {"count": 0}
    admitted = [r for r in crowd if r.admitted]
    pooled = [v for r in admitted for v in r.v2v]
    together = summary(pooled) if pooled else {"count": 0}
    ratio = (
        round(together["p50_ms"] / alone["p50_ms"], 2)
        if together.get("count") and alone.get("count")
        else None
    )
    emit(
        {
            "benchmark": "overload",
            "phase": "single",
            "v2v": alone,
            "server_v2v": summary(single.server_v2v) if single.server_v2v else {"count": 0},
            "unanswered": single.unanswered,
            "load": peak_load(single_load),
        }
    )
    for record in crowd:
        emit(
            {
                "benchmark": "overload",
                "phase": "overload",
                "client": record.name,
                "admitted": record.admitted,
                "refusal": record.refusal or None,
                "v2v_ms": [round(v * 1000, 1) for v in record.v2v],
                "unanswered": record.unanswered,
            }
        )
    emit(
        {
            "benchmark": "overload",
            "phase": "overload",
            "clients": clients,
            "admitted": len(admitted),
            "refused": len(crowd) - len(admitted),
            "refusals": sorted({r.refusal for r in crowd if r.refusal}),
            "v2v": together,
            "v2v_p50_ratio_to_single": ratio,
            "server_v2v": summary(s) if (s := [v for r in admitted for v in r.server_v2v]) else {"count": 0},
            "unanswered": sum(r.unanswered for r in admitted),
            "growth": growth(admitted),
            "load": peak_load(crowd_load),
        }
    )
    print(f"{'v2v (client-side)':<28}{'p50 ms':>10}{'p95 ms':>10}", file=sys.stderr)
    print(table_row("single session", alone), file=sys.stderr)
    print(table_row(f"{len(admitted)} admitted of {clients}", together), file=sys.stderr)
    print(f"ratio (p50) {ratio}; growth first→last {growth(admitted)}", file=sys.stderr)
    for reason in sorted({r.refusal for r in crowd if r.refusal}):
        print(f"refused: {reason}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=6, help="turns per conversation")
    parser.add_argument("--capacity", type=int, default=2, help="sessions the machine is expected to serve")
    parser.add_argument("--clients", type=int, default=0, help="concurrent clients (default 4x --capacity)")
    parser.add_argument("--stagger", type=float, default=4.0, help="seconds between clients joining")
    parser.add_argument("--listen", type=float, default=4.0, help="most seconds of each reply listened to")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the two phases")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. server.max_cpu=0.7"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
