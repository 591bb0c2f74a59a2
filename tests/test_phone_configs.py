"""The shipped phone configs: valid as shipped, and 8 kHz where the line is, 16 kHz only where needed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import config, negotiate
from pipeline.capacity import LoadMeter
from pipeline.formats import AudioFormat
from pipeline.graph import Graph
from tests.fakes.carrier import AUTH_TOKEN, FakeTwilio, FakeTwilioRest
from tests.test_phone_assistant import clip
from tests.test_phone_twilio import ended, transcripts
from transports.websocket.server import VoiceServer

REPO = Path(__file__).resolve().parent.parent
OFFLINE = "configs/phone-twilio.yaml"
CLOUD = "configs/phone-twilio-cloud.yaml"
KEYS = {"ASSEMBLYAI_API_KEY": "test-key", "OPENAI_API_KEY": "test-key"}
LINE = AudioFormat(8000, 1)


def validate(path: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipeline", "validate", path]
    for override in overrides:
        command += ["--set", override]
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PUBLIC_URL")} | KEYS
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def formats_into(graph: Graph) -> dict[str, AudioFormat | None]:
    """The audio format on the edge into each node (a node with one input)."""
    return {dst: fmt for (_, dst), fmt in negotiate.edge_formats(graph.processors, graph.edges).items()}


@pytest.mark.parametrize("path", [OFFLINE, CLOUD])
def test_python_m_pipeline_validate_accepts_it(path: str) -> None:
    done = validate(path)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, f"{path}: valid", "")


@pytest.mark.parametrize("path", [OFFLINE, CLOUD])
def test_listening_beyond_loopback_needs_auth_as_its_comment_says(path: str) -> None:
    exposed = validate(path, "server.host=0.0.0.0")
    assert exposed.returncode == 2 and "without auth" in exposed.stderr
    assert validate(path, "server.host=0.0.0.0", "server.auth=api_key").returncode == 0


@pytest.mark.parametrize("path", [OFFLINE, CLOUD])
def test_the_caller_is_a_phone_and_the_vad_judges_the_line_as_it_comes(path: str) -> None:
    graph = config.load(REPO / path, env=KEYS)
    types = {name: node.type_name for name, node in graph.processors.items()}
    assert types["caller"] == "phone.input" and types["speaker"] == "phone.output"
    into = formats_into(graph)
    assert into["vad"] == LINE  # Silero takes 8 kHz: no resampler in front of it
    assert into["speaker"] == LINE


def test_offline_whisper_gets_16k_through_one_inserted_resampler() -> None:
    graph = config.load(REPO / OFFLINE, env=KEYS)
    resamplers = [n for n, p in graph.processors.items() if p.type_name == "audio.resample"]
    assert len(resamplers) == 2  # the caller's 8k up for Whisper, Piper's 22.05k down for the line
    assert formats_into(graph)["stt"] == AudioFormat(16000, 1)


def test_cloud_stt_takes_the_line_rate_without_resampling() -> None:
    graph = config.load(REPO / CLOUD, env=KEYS)
    into = formats_into(graph)
    assert into["stt"] == LINE
    resamplers = [n for n, p in graph.processors.items() if p.type_name == "audio.resample"]
    assert len(resamplers) == 1  # only OpenAI's 24 kHz speech, down to the line


@pytest.mark.slow
async def test_the_shipped_offline_config_answers_a_fake_twilio_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/phone-twilio.yaml as shipped (only port, folder, REST URL and reply length changed):
    real speech as µ-law 8 kHz in, Silero cuts it at 8 kHz, Whisper hears it, the reply is played."""
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    for name in ("TWILIO_REGION", "TWILIO_EDGE", "PUBLIC_URL", "HOST"):
        monkeypatch.delenv(name, raising=False)
    rest = FakeTwilioRest()
    await rest.start()
    try:
        overrides = [
            "server.port=0",
            f"recorder.directory={tmp_path}",
            f"caller.twilio_api_url={rest.url}",
            "llm.max_tokens=30",
        ]
        compiled, problems = config.compile_config(REPO / OFFLINE, overrides)
        assert compiled is not None and not problems, problems
        server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
        await server.start()
        try:
            await server.warm_up()
            carrier = FakeTwilio(server.url)
            await carrier.call()
            await carrier.silence(0.5)
            await carrier.speak(clip(8000))
            silence = asyncio.create_task(carrier.silence(20))
            await carrier.until(
                lambda: bool(carrier.played.marks) and carrier.queued_seconds == 0, "the reply", 40
            )
            silence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await silence
            await carrier.stop()
            await ended(server, 30)
        finally:
            await asyncio.wait_for(server.stop(), 60)
    finally:
        await rest.stop()
    assert carrier.violations == []
    assert len(carrier.played.pcm) > 2 * 8000 * 0.5  # at least half a second of the bot's voice
    [transcript] = transcripts(tmp_path)
    user = [m["content"].lower() for m in transcript["messages"] if m["role"] == "user"]
    assert user and "young man" in user[0], user
    assert any(m["role"] == "assistant" for m in transcript["messages"])
    assert transcript["metadata"]["call_id"] == carrier.call_sid
