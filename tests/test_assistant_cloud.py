"""configs/assistant-cloud.yaml end to end: a browser-like client talks to the served config, whose
AssemblyAI, Gemini and OpenAI nodes reach local fakes of the three services through their real SDKs.

The client streams a real LibriVox clip in 20 ms frames at real time, then keeps the microphone open
on silence, as a browser does: the VAD ends the turn, AssemblyAI's final reaches Gemini, the reply is
spoken by OpenAI's speech endpoint and played back, and the recorder saves the conversation that the
REST API then serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from yarl import URL

from pipeline import config
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini, contents_text, pick
from tests.fakes.openai import SPEECH_RATE, FakeOpenAI
from tests.speech import LIBRIVOX, librivox, read_wav
from tests.test_websocket_server import Client, connect
from transports.websocket.server import VoiceServer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "assistant-cloud.yaml"
KEYS = ("ASSEMBLYAI_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY")
CLIP = "sense_and_sensibility_01_austen_64kb-0880.wav"
RATE = 16000
FRAME_BYTES = RATE * 20 // 1000 * 2  # 20 ms of 16 kHz mono s16le, what the browser page sends
TIMEOUT = 30.0


def echo(body: dict[str, object]) -> str:
    """The fake Gemini's answer: it repeats the last user turn, so the test sees what reached it."""
    contents = pick(body, "contents") or []
    return f"You said: {contents_text(contents[-1])} Anything else?"


@contextlib.asynccontextmanager
async def serving(env: dict[str, str]) -> AsyncIterator[tuple[VoiceServer, URL]]:
    """The config served as ``python -m pipeline run`` serves it: warm-up, then listen."""
    compiled, problems = config.compile_config(CONFIG, env=env)
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled)
    await asyncio.wait_for(server.warm_up(), TIMEOUT)
    await server.start()
    try:
        yield server, URL(server.url)
    finally:
        await asyncio.wait_for(server.stop(), TIMEOUT)


class Microphone:
    """Streams 20 ms frames at real time: the clip, then silence until ``close`` (an open mic)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, speech: bytes) -> None:
        self.ws = ws
        self.sent = bytearray()  # every byte sent, for comparing with the saved user.wav
        self._speech = speech
        self._open = True
        self._task = asyncio.create_task(self._stream())

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        while self._open:
            offset = index * FRAME_BYTES
            frame = self._speech[offset : offset + FRAME_BYTES]
            frame += bytes(FRAME_BYTES - len(frame))  # past the clip: silence
            await self.ws.send_bytes(frame)
            self.sent += frame
            index += 1
            await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))  # pace, not synchronise

    async def close(self) -> None:
        """Stop after the frame being sent (so every frame sent is whole)."""
        self._open = False
        await asyncio.wait_for(self._task, 5)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeAssemblyAI, FakeGemini, FakeOpenAI]]:
    words = LIBRIVOX[CLIP].split()
    async with (
        FakeAssemblyAI(api_key="aai-fake-key", words=words, ms_per_word=80, silence_rms=200.0) as stt,
        FakeGemini(reply=echo) as llm,
        FakeOpenAI(seconds_per_char=0.02) as tts,
    ):
        yield stt, llm, tts


def fake_env(stt: FakeAssemblyAI, llm: FakeGemini, tts: FakeOpenAI, recordings: Path) -> dict[str, str]:
    """Only what the config reads: a developer's real keys in os.environ never reach the test."""
    return {
        "ASSEMBLYAI_API_KEY": stt.api_key,
        "ASSEMBLYAI_API_HOST": stt.ws_url,
        "GEMINI_API_KEY": llm.api_key,
        "GEMINI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": tts.api_key,
        "OPENAI_BASE_URL": tts.base_url,
        "RECORDINGS": str(recordings),
        "PORT": "0",
    }


async def test_a_spoken_question_is_answered_spoken_recorded_and_listed(
    fakes: tuple[FakeAssemblyAI, FakeGemini, FakeOpenAI], tmp_path: Path
) -> None:
    stt, llm, tts = fakes
    samples, rate = read_wav(librivox(CLIP))
    assert rate == RATE
    speech = samples.astype("<i2").tobytes()
    said = "He was not an ill disposed young man."  # the fake's formatted final of the clip's words
    answer = f"You said: {said} Anything else?"
    async with (
        asyncio.timeout(3 * TIMEOUT),
        serving(fake_env(stt, llm, tts, tmp_path)) as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        assert server.recordings.directory == tmp_path  # the API lists what the recorder saves
        session_id = (await client.wait_for(lambda m: m["type"] == "session", "a session id"))["session_id"]
        await client.wait_for(lambda m: m.get("state") == "listening", "listening")
        mic = Microphone(client.ws, speech)
        try:
            final = await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], "a transcript")
            assert final["text"] == said
            assert await client.reply() == answer
            await until_played(client)
        finally:
            await mic.close()
        await client.ws.send_str('{"type":"stop"}')
        assert await client.closed() == 1000

        assert [m["text"] for m in client.of("transcript") if m["final"]] == [said]  # one turn
        assert client.of("audio_format") == [
            {"type": "audio_format", "sample_rate": SPEECH_RATE, "channels": 1}
        ]
        first_audio = next(i for i, m in enumerate(client.messages) if isinstance(m, bytes))
        assert client.messages.index(client.of("audio_format")[0]) < first_audio
        speeches = [r for r in tts.requests if r.path == "/v1/audio/speech"]
        assert re.sub(r"\s+", " ", " ".join(r.body["input"] for r in speeches)).strip() == answer
        assert client.audio == b"".join(tts.speech_pcm(r.body["input"]) for r in speeches)
        assert {r.body["response_format"] for r in speeches} == {"pcm"}

        (request,) = llm.requests
        assert contents_text(pick(request.body, "contents")[-1]) == said
        assert "Vox" in contents_text(pick(request.body, "systemInstruction"))
        (session,) = stt.sessions  # the warm-up opens no (billed) session: only the conversation's
        assert session.types_received() == ["ForceEndpoint", "Terminate"] and session.terminated
        assert session.received_at_ms[0] < 1000 * (len(samples) / RATE + 1.5)  # the VAD ended the turn

        folder = tmp_path / session_id
        saved = json.loads((folder / "transcript.json").read_text())
        assert saved["session_id"] == session_id
        assert [(m["role"], m["content"]) for m in saved["messages"]] == [
            ("user", said),
            ("assistant", answer),
        ]
        user, user_rate = read_wav(folder / "user.wav")
        assert user_rate == RATE and user.tobytes() == bytes(mic.sent)  # every frame, none dropped
        bot, bot_rate = read_wav(folder / "bot.wav")
        assert bot_rate == SPEECH_RATE and np.count_nonzero(bot) >= 0.9 * len(client.audio) / 2
        mixed, mixed_rate = read_wav(folder / "mixed.wav")
        assert mixed_rate == RATE and len(mixed) >= len(user)

        listing = await (await http.get(base / "api/conversations")).json()
        assert [(c["id"], c["messages"], c["audio"]) for c in listing] == [
            (session_id, 2, ["bot.wav", "mixed.wav", "user.wav"])
        ]
        one = await http.get(base / "api/conversations" / session_id)
        assert one.status == 200 and await one.json() == saved


async def until_played(client: Client) -> None:
    """The reply has been played out: ``listening`` after the last ``speaking``."""

    def played() -> bool:
        states = [m["state"] for m in client.of("status")]
        return "speaking" in states and states[-1] == "listening"

    await client.until(played, "the reply played out")


# --- validation ----------------------------------------------------------------------------------


def validate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipeline", "validate", str(CONFIG.relative_to(ROOT))]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def clean_env(**values: str) -> dict[str, str]:
    """os.environ without any key or endpoint the config reads, plus ``values``."""
    names = {*KEYS, "ASSEMBLYAI_API_HOST", "GEMINI_BASE_URL", "OPENAI_BASE_URL", "GEMINI_MODEL"}
    return {k: v for k, v in os.environ.items() if k not in names} | values


def test_the_config_is_valid_with_keys_set() -> None:
    result = validate(clean_env(**{key: f"dummy-{key.lower()}" for key in KEYS}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize("missing", KEYS)
def test_a_missing_key_fails_validation_naming_it(missing: str) -> None:
    result = validate(clean_env(**{key: f"dummy-{key.lower()}" for key in KEYS if key != missing}))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"environment variable {missing} is not set" in output
    assert all(other not in output for other in KEYS if other != missing)
