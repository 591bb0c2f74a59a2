"""configs/examples/assistant-tools.yaml end to end, headless: a spoken question about the weather, a
tool call, and a spoken answer that says the tool's result.

The config runs as a user runs it (``python -m pipeline run``) with every engine real — Silero VAD,
Whisper, Piper — except the model, which is the local OpenAI fake reached through the real SDK: it
calls ``weather`` for the city it heard, and answers with what the tool returned. Whisper then
listens to the reply WAV.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from processors.turn import words_of
from tests.fakes.openai import FakeOpenAI, FakeToolCall, tool_results
from tests.hearing import load_whisper_tiny, transcribe
from tests.speech import espeak, read_wav

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "examples" / "assistant-tools.yaml"
RUN_TIMEOUT = 300.0


def weather_call(body: dict[str, Any]) -> list[FakeToolCall]:
    """The model asks the weather of the city in the user's words (Paris, or one the tool lacks)."""
    last = body["messages"][-1]
    if last["role"] != "user":
        return []
    city = "Paris" if "paris" in str(last["content"]).lower() else "Atlantis"
    return [FakeToolCall("weather", json.dumps({"city": city}))]


def weather_answer(body: dict[str, Any]) -> str:
    """The model's words once the result is back: the result, said."""
    results = tool_results(body)
    if not results:
        return ""
    found = json.loads(results[0])
    if "error" in found:
        return "Sorry, I could not find that."
    return f"In {found['city']} it is {found['temperature']} degrees and {found['sky']}."


async def test_the_spoken_reply_says_what_the_tool_returned(tmp_path: Path) -> None:
    question = espeak("What is the weather in Paris?", tmp_path / "question.wav")
    reply = tmp_path / "reply.wav"
    async with FakeOpenAI(reply=weather_answer, tool_calls=weather_call) as fake:
        env = {
            **os.environ,
            "OPENAI_API_KEY": fake.api_key,
            "OPENAI_BASE_URL": fake.base_url,
            "INPUT": str(question),
            "OUTPUT": str(reply),
            "RECORDINGS": str(tmp_path / "recordings"),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(CONFIG),
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, err.decode()[-3000:]

    asked, answered = (r.body for r in fake.requests if r.path == "/v1/chat/completions")
    assert "paris" in str(asked["messages"][-1]["content"]).lower()  # Whisper heard the question
    assert [t["function"]["name"] for t in asked["tools"]] == ["weather", "current_time", "end_call"]
    (result,) = tool_results(answered)
    assert json.loads(result) == {"city": "Paris", "temperature": 21, "unit": "celsius", "sky": "sunny"}

    (session,) = (tmp_path / "recordings").iterdir()
    saved = json.loads((session / "transcript.json").read_text())
    said = " ".join(str(m.get("content") or "") for m in saved["messages"] if m["role"] == "assistant")
    assert "21 degrees and sunny" in said

    samples, rate = read_wav(reply)
    heard = words_of(transcribe(load_whisper_tiny(), samples.astype("<i2").tobytes(), rate))
    assert "sunny" in heard and ("21" in heard or "twenty" in heard), heard
