"""The offline assistant answers the phone: real speech as μ-law 8 kHz from a fake Twilio, a spoken reply
that, decoded from the μ-law the carrier received and transcribed by Whisper, says the bot's words.

Also measured (printed, never asserted): voice-to-voice on the phone call against the browser's
``/ws`` with the same graph and the same clip — from the end of the caller's speech to the first bot
audio the client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import soxr

from pipeline import config
from pipeline.capacity import LoadMeter
from tests.fakes.carrier import FakeTwilio, FakeTwilioRest
from tests.hearing import load_whisper_tiny, transcribe, wer
from tests.speech import librivox, read_wav
from tests.test_phone_twilio import (
    _fresh,  # noqa: F401  (autouse: the auth token)
    ended,
    transcripts,
)
from transports.websocket.server import VoiceServer

ASSISTANT = """
name: phone-assistant
server: {{type: websocket, port: 0, max_sessions: 2}}
settings: {{auto_resample: true, end_timeout: 10.0}}
nodes:
  mic: {{type: {input}{input_params}}}
  vad: {{type: vad.silero, start_secs: 0.15, stop_secs: 0.4, pause_secs: 0.15}}
  stt: {{type: stt.whisper}}
  turns: {{type: turn.taking}}
  llm: {{type: llm.local, max_tokens: 30, system_prompt: "Answer in one short sentence."}}
  tts: {{type: tts.piper, first_chunk_min_words: 4, first_chunk_max_words: 5}}
  recorder: {{type: recorder, directory: "{recordings}"}}
  speaker: {{type: {output}}}
edges:
  - mic -> vad -> stt -> turns -> llm -> tts -> recorder -> speaker
"""


@contextlib.asynccontextmanager
async def assistant(tmp_path: Path, phone: bool, rest_url: str = "") -> AsyncIterator[VoiceServer]:
    text = ASSISTANT.format(
        input="phone.input" if phone else "websocket.input",
        input_params=f', twilio_api_url: "{rest_url}"' if phone else "",
        output="phone.output" if phone else "websocket.output",
        recordings=tmp_path,
    )
    compiled, problems = config.compile_text(text, "<test>")
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    await server.warm_up()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), 60)


def clip(rate: int) -> bytes:
    samples, source = read_wav(librivox("0880"))
    return bytes(soxr.resample(samples, source, rate).astype("<i2").tobytes())


def replied(directory: Path) -> bool:
    """The recorder saved the assistant's reply (the LLM finished it)."""
    return any(m["role"] == "assistant" for t in transcripts(directory) for m in t["messages"])


def quiet(carrier: FakeTwilio, seconds: float = 0.6) -> bool:
    """All bot audio received has played and none came for ``seconds``."""
    media = carrier.times_of("media")
    return bool(media) and carrier.queued_seconds == 0 and time.monotonic() - media[-1] > seconds


@pytest.mark.slow
async def test_the_offline_assistant_answers_a_phone_call(tmp_path: Path) -> None:
    rest = FakeTwilioRest()
    await rest.start()
    try:
        async with assistant(tmp_path, phone=True, rest_url=rest.url) as server:
            carrier = FakeTwilio(server.url)
            await carrier.call()
            await carrier.silence(0.5)
            spoken_end = await carrier.speak(clip(8000))
            silence = asyncio.create_task(carrier.silence(20))
            await carrier.until(lambda: bool(carrier.of("media")), "the bot's voice", 40)
            first_audio = carrier.times_of("media")[0]
            await carrier.until(lambda: replied(tmp_path) and quiet(carrier), "the whole reply played", 60)
            silence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await silence
            await carrier.stop()
            await ended(server, 30)
    finally:
        await rest.stop()
    print(f"phone voice-to-voice: {(first_audio - spoken_end) * 1000:.0f} ms")
    assert carrier.violations == []
    assert len(carrier.played.pcm) > 2 * 8000 * 0.5  # at least half a second of speech
    [transcript] = transcripts(tmp_path)
    user = [m["content"].lower() for m in transcript["messages"] if m["role"] == "user"]
    assert user and "young man" in user[0], user  # whisper tiny.en through μ-law 8 kHz
    [reply] = [m["content"] for m in transcript["messages"] if m["role"] == "assistant"]
    assert transcript["metadata"]["call_id"] == carrier.call_sid
    # what the caller heard, decoded from the μ-law the carrier got, says the bot's words
    heard = transcribe(load_whisper_tiny(), bytes(carrier.played.pcm), 8000)
    error = wer(reply, heard)
    print(f"reply {reply!r}, heard on the line {heard!r}: WER {error:.2f}")
    assert error <= 0.3


@pytest.mark.slow
async def test_browser_voice_to_voice_on_the_same_clip(tmp_path: Path) -> None:
    """The same graph and clip through the browser's /ws, for comparison (printed)."""
    pcm = clip(16000)
    async with assistant(tmp_path, phone=False) as server, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/ws")
        await ws.send_str(json.dumps({"type": "start"}))
        loop = asyncio.get_running_loop()
        audio = bytes(16000) + pcm + bytes(2 * 16000 * 8)
        t0, step, spoken_end, first = loop.time(), 640, 0.0, 0.0

        async def read() -> None:
            nonlocal first
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY and not first:
                    first = time.monotonic()

        reader = asyncio.create_task(read())
        for n in range(len(audio) // step):
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
            await ws.send_bytes(audio[n * step : (n + 1) * step])
            if (n + 1) * step >= 16000 + len(pcm) and not spoken_end:
                spoken_end = time.monotonic()
            if first:
                break
        await ws.send_str(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 30)
        await ended(server, 30)
    assert first, "no bot audio"
    print(f"browser voice-to-voice: {(first - spoken_end) * 1000:.0f} ms")
