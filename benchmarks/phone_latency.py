"""Voice-to-voice on a phone call against the browser, for the same graph and the same clips.

The offline assistant (Silero VAD, Whisper tiny.en, SmolLM2 at temperature 0, Piper) is served twice
in one process, once with ``phone.input``/``phone.output`` (a fake Twilio on 127.0.0.1 sends the clip
as 20 ms μ-law media in real time, the server's reply comes back as paced μ-law media) and once with
``websocket.input``/``websocket.output`` (the browser's ``/ws``: 16 kHz PCM in, PCM out). Turns
alternate between the two, one fresh session each, so machine noise hits both alike; the models are
loaded once and shared.

Voice-to-voice: from the moment the message carrying the true end of the clip's speech (an energy
threshold on the clean clip) leaves the client, to the first bot audio the client receives. The call
adds the 8 kHz line (resampling in, μ-law both ways) and 20 ms pacing.

Run from the repo root: ``python -m benchmarks.phone_latency`` (4 turns each, ~2 min) or ``--turns N``.
JSON lines on stdout (one per turn, then a summary with the medians and their ratio), progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import aiohttp
import soxr

from pipeline import config
from pipeline.capacity import LoadMeter
from tests.fakes.carrier import AUTH_TOKEN, FRAME_S, FakeTwilio
from tests.speech import librivox, read_wav, speech_regions
from transports.websocket.server import VoiceServer

CLIPS = ("0880", "0930", "0890")
LEAD_SECONDS = 0.5
"""Silence before each clip, as a caller says nothing for a moment after the line opens."""
TURN_TIMEOUT = 60.0
GRAPH = """
name: latency-{kind}
server: {{type: websocket, port: 0, max_sessions: 2}}
settings: {{auto_resample: true, end_timeout: 5.0}}
nodes:
  mic: {{type: {input}}}
  vad: {{type: vad.silero, threshold: 0.5, start_secs: 0.15, stop_secs: 0.4, pause_secs: 0.15}}
  stt: {{type: stt.whisper}}
  turns: {{type: turn.taking}}
  llm: {{type: llm.local, max_tokens: 30, temperature: 0, system_prompt: "Answer in one short sentence."}}
  tts: {{type: tts.piper, first_chunk_min_words: 4, first_chunk_max_words: 5}}
  speaker: {{type: {output}}}
edges:
  - mic -> vad -> stt -> turns -> llm -> tts -> speaker
"""


def clip(name: str, rate: int) -> tuple[bytes, float]:
    """A LibriVox clip at ``rate`` (s16le) and where its speech ends, in seconds."""
    samples, source = read_wav(librivox(name))
    _, end = speech_regions(samples, source)
    return bytes(soxr.resample(samples, source, rate).astype("<i2").tobytes()), end


async def serving(phone: bool) -> VoiceServer:
    inputs = (
        ("phone.input, hang_up: false", "phone.output") if phone else ("websocket.input", "websocket.output")
    )
    text = GRAPH.format(kind="phone" if phone else "browser", input=inputs[0], output=inputs[1])
    compiled, problems = config.compile_text(text, "<benchmark>")
    if compiled is None or problems:
        raise SystemExit(f"the benchmark graph does not compile: {problems}")
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    await server.warm_up()
    return server


async def idle(server: VoiceServer) -> None:
    """Wait for the last session to end, so it does not load the next turn."""
    async with asyncio.timeout(TURN_TIMEOUT):
        while server.sessions:
            await asyncio.sleep(0.02)


async def phone_turn(server: VoiceServer, name: str, number: int) -> float:
    """One call, one turn: seconds from the end of the caller's speech to the first bot media."""
    pcm, speech_end = clip(name, 8000)
    carrier = FakeTwilio(server.url, call_number=number)
    try:
        await carrier.call()
        await carrier.silence(LEAD_SECONDS)
        first = len(carrier.media_sent)
        await carrier.speak(pcm)
        spoken_end = carrier.media_sent[first + int(speech_end / FRAME_S)]
        await carrier.silence_until(lambda: bool(carrier.of("media")), "the bot's voice", TURN_TIMEOUT)
        answered = carrier.times_of("media")[0]
        await carrier.stop()
    finally:
        await carrier.close()
    await idle(server)
    return answered - spoken_end


async def browser_turn(server: VoiceServer, name: str) -> float:
    """One ``/ws`` conversation, one turn: the same measure as ``phone_turn``."""
    pcm, speech_end = clip(name, 16000)
    step = 2 * 16000 * 20 // 1000
    audio = bytes(round(2 * 16000 * LEAD_SECONDS)) + pcm
    end_index = (len(audio) - len(pcm) + round(2 * 16000 * speech_end)) // step
    answered = asyncio.get_running_loop().create_future()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/ws")
        await ws.send_str(json.dumps({"type": "start"}))

        async def read() -> None:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY and not answered.done():
                    answered.set_result(time.monotonic())

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        t0, n, spoken_end = loop.time(), 0, 0.0
        silence = bytes(step)
        async with asyncio.timeout(TURN_TIMEOUT):
            while not answered.done():
                await asyncio.sleep(max(0.0, t0 + n * FRAME_S - loop.time()))
                piece = audio[n * step : (n + 1) * step] or silence
                await ws.send_bytes(piece.ljust(step, b"\0"))
                if n == end_index:
                    spoken_end = time.monotonic()
                n += 1
        await ws.send_str(json.dumps({"type": "stop"}))
        async with asyncio.timeout(TURN_TIMEOUT):
            await reader
    await idle(server)
    return float(answered.result()) - spoken_end


async def run(turns: int) -> dict[str, Any]:
    os.environ["TWILIO_AUTH_TOKEN"] = AUTH_TOKEN  # the fake carrier's; no real carrier is reached
    for variable in ("TWILIO_REGION", "TWILIO_EDGE"):
        os.environ.pop(variable, None)
    phone, browser = await serving(phone=True), await serving(phone=False)
    results: dict[str, list[float]] = {"phone": [], "browser": []}
    try:
        for turn in range(turns):
            name = CLIPS[turn % len(CLIPS)]
            order = ("phone", "browser") if turn % 2 == 0 else ("browser", "phone")
            for kind in order:
                if kind == "phone":
                    seconds = await phone_turn(phone, name, turn + 1)
                else:
                    seconds = await browser_turn(browser, name)
                results[kind].append(seconds)
                record = {
                    "transport": kind,
                    "turn": turn + 1,
                    "clip": name,
                    "voice_to_voice_ms": seconds * 1000,
                }
                print(json.dumps({k: round(v) if isinstance(v, float) else v for k, v in record.items()}))
                print(
                    f"turn {turn + 1} {kind:7} {name}: {seconds * 1000:.0f} ms", file=sys.stderr, flush=True
                )
    finally:
        await phone.stop()
        await browser.stop()
    medians = {kind: statistics.median(values) for kind, values in results.items()}
    return {
        "summary": "voice_to_voice",
        "turns": turns,
        "phone_median_ms": round(medians["phone"] * 1000),
        "browser_median_ms": round(medians["browser"] * 1000),
        "phone_over_browser": round(medians["phone"] / medians["browser"], 3),
        "phone_ms": [round(v * 1000) for v in results["phone"]],
        "browser_ms": [round(v * 1000) for v in results["browser"]],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=4, help="turns per transport (3 or more)")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(max(1, args.turns)))
    print(json.dumps(summary), flush=True)
    phone, browser = summary["phone_median_ms"], summary["browser_median_ms"]
    ratio = summary["phone_over_browser"]
    print(f"median voice-to-voice: phone {phone} ms, browser {browser} ms (x{ratio})", file=sys.stderr)


if __name__ == "__main__":
    main()
