"""``stt.assemblyai`` against the local AssemblyAI fake, through the real SDK and the real runtime."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from yarl import URL

from pipeline import config
from pipeline.errors import ValidationError
from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    STTUpdateSettingsFrame,
    TranscriptFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.negotiate import check
from pipeline.sources import ToneSource
from pipeline.testing import Captured, Collector, ScriptedSource, run_graph, run_processor
from processors.stt.assemblyai import AssemblyAISTT
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.speech import LIBRIVOX, audio_frames, librivox, read_wav, silence, tone
from transports.websocket.server import VoiceServer

RATE = 16000
WORDS = ["hello", "world", "how", "are", "you"]
ROOT = Path(__file__).resolve().parent.parent


def stt(fake: FakeAssemblyAI, **params: Any) -> AssemblyAISTT:
    values: dict[str, Any] = {
        "api_key": "test-key",
        "api_host": fake.ws_url,
        "max_turn_silence": 400,
        "reconnect_backoff": 0.05,
        "connect_timeout": 5.0,
    }
    values.update(params)
    return AssemblyAISTT(name="stt", **values)


def interims(out: Captured) -> list[str]:
    return [f.text for f in out.of(InterimTranscriptFrame)]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAssemblyAI]:
    async with FakeAssemblyAI(words=WORDS, ms_per_word=200) as server:
        yield server


async def test_interims_then_a_final_with_word_times(fake: FakeAssemblyAI) -> None:
    script = audio_frames(tone(1.0), silence(0.6))
    out = await run_processor(stt(fake), script, timeout=20)

    assert interims(out) == [
        "hello",
        "hello world",
        "hello world how",
        "hello world how are",
        "hello world how are you",
    ]
    (final,) = out.of(TranscriptFrame)
    assert final.text == "Hello world how are you." and final.language == "en"
    assert [(w["text"], w["start"], w["end"]) for w in final.words or []] == [
        ("Hello", 0.0, 0.2),
        ("world", 0.2, 0.4),
        ("how", 0.4, 0.6),
        ("are", 0.6, 0.8),
        ("you.", 0.8, 1.0),
    ]
    assert out.audio == b"".join(f.pcm for f in script if isinstance(f, AudioFrame))  # audio passes on
    assert not out.errors
    (session,) = fake.sessions
    assert set(session.chunks_ms) == {50.0}
    assert session.query["speech_model"] == "u3-rt-pro" and session.query["format_turns"] == "True"
    assert session.types_received() == ["Terminate"] and session.terminated  # billing stops


async def test_real_speech_is_streamed_and_recognised() -> None:
    name = "sense_and_sensibility_01_austen_64kb-0880.wav"
    samples, rate = read_wav(librivox("0880"))
    assert rate == RATE
    words = LIBRIVOX[name].split()
    async with FakeAssemblyAI(words=words, ms_per_word=80, silence_rms=200.0) as server:
        out = await run_processor(
            stt(server, max_turn_silence=None), audio_frames(samples, silence(1.5)), timeout=20
        )
    said = " ".join(out.transcripts)
    assert re.sub(r"[^a-z ]", "", said.lower()) == LIBRIVOX[name]
    assert server.sessions[0].audio_ms >= 1000 * len(samples) / RATE


@pytest.mark.parametrize("failure, how", [("close", "close 1008"), ("http", "HTTP 401")])
async def test_a_bad_key_ends_the_graph_with_a_clear_message(
    failure: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeAssemblyAI(auth_failure=failure) as server:  # type: ignore[arg-type]
        with pytest.raises(GraphFailedError) as failed:
            await run_processor(stt(server, api_key="sk-wrong-1234"), audio_frames(tone(0.2)), timeout=20)
    message = str(failed.value)
    assert f"AssemblyAI rejected the API key ({how}): check ASSEMBLYAI_API_KEY" in message
    assert "sk-wrong-1234" not in message
    # websockets itself logs handshake headers at DEBUG (the CLI keeps it at WARNING below -vvv)
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets")]
    assert not [line for line in ours if "sk-wrong-1234" in line]
    assert len(server.rejected) == 1  # a refused key is not retried


def test_an_empty_key_is_a_validation_error_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="ASSEMBLYAI_API_KEY"):
        AssemblyAISTT(api_key="  ")


def test_it_asks_for_16_khz_mono_so_negotiation_resamples() -> None:
    nodes = {"tone": ToneSource(sample_rate=48000), "stt": AssemblyAISTT(api_key="k")}
    (problem,) = check(nodes, [("tone", "stt")])
    assert "16000 Hz mono" in problem.message and "audio.resample" in problem.fix


async def test_a_session_expiring_mid_turn_reconnects_and_loses_no_final(fake: FakeAssemblyAI) -> None:
    fake.expire_after_ms = 500  # the first session dies after "hello world", before the turn ends
    out = await run_processor(stt(fake), audio_frames(tone(1.0), silence(0.6)), timeout=20)

    assert out.transcripts == ["Hello world how are you."]
    assert out.of(TranscriptFrame)[0].words[0]["start"] == 0.0  # type: ignore[index]
    assert len(fake.sessions) == 2 and fake.sessions[0].close_code == 3008
    assert fake.sessions[1].audio_ms >= 1600  # the whole turn was sent again, then the rest
    (error,) = out.errors
    assert "3008" in error.message and "reconnecting" in error.message and not error.fatal


async def test_sessions_that_keep_dropping_end_the_graph(fake: FakeAssemblyAI) -> None:
    fake.expire_after_ms, fake.expire_sessions = 300, 100
    with pytest.raises(GraphFailedError, match="dropped 3 times"):
        await run_processor(
            stt(fake, reconnect_attempts=2), audio_frames(tone(1.0), silence(0.6)), timeout=20
        )
    assert len(fake.sessions) == 3


async def test_a_slow_server_still_delivers_the_last_final_before_the_end(fake: FakeAssemblyAI) -> None:
    fake.response_delay = 0.1
    out = await run_processor(
        stt(fake), audio_frames(tone(0.6)), timeout=20
    )  # no silence: only Terminate ends it
    assert out.transcripts == ["Hello world how."]
    assert out.all_down.index(out.of(TranscriptFrame)[0]) < len(out.all_down) - 1  # before the end


async def test_malformed_json_from_the_server_is_skipped(fake: FakeAssemblyAI) -> None:
    fake.malformed = "json"
    out = await run_processor(stt(fake), audio_frames(tone(1.0), silence(0.6)), timeout=20)
    assert out.transcripts == ["Hello world how are you."] and len(fake.sessions) == 1


async def test_a_turn_the_sdk_cannot_parse_is_treated_as_a_drop(fake: FakeAssemblyAI) -> None:
    fake.malformed = "turn"  # kills the SDK's reader task: without a watch the session goes silent
    out = await run_processor(stt(fake), audio_frames(tone(1.0), silence(0.6)), timeout=20)
    assert out.transcripts == ["Hello world how are you."]
    assert len(fake.sessions) == 2
    assert "reader failed" in out.errors[0].message


async def hold_until_final(node: AssemblyAISTT, script: list[Frame]) -> tuple[Collector, Captured]:
    """Run ``script`` through ``node`` but keep the stream open until a final transcript is out."""
    source = ScriptedSource(script)
    source.hold_end = asyncio.Event()
    collector = Collector()
    graph = Graph({"script": source, "stt": node, "out": collector}, [("script", "stt"), ("stt", "out")])
    running = asyncio.ensure_future(run_graph(graph, timeout=20))
    try:
        await collector.wait_for(TranscriptFrame, timeout=10)
    finally:
        source.hold_end.set()
    return collector, await running


async def test_the_vad_stopping_forces_the_endpoint_once_its_audio_is_sent(fake: FakeAssemblyAI) -> None:
    stopped = UserStoppedSpeakingFrame(at=0.0, stream_time=0.6)
    script = [*audio_frames(tone(0.6)), stopped, *audio_frames(silence(0.2))]
    _, out = await hold_until_final(stt(fake, max_turn_silence=5000), script)

    assert out.transcripts == ["Hello world how."]
    session = fake.sessions[0]
    assert session.types_received() == ["ForceEndpoint", "Terminate"]
    assert session.received_at_ms[0] >= 600  # the stop overtook queued audio; the endpoint waited for it
    assert stopped in out.down  # system frames pass on


async def test_without_force_endpoint_the_final_waits_for_terminate(fake: FakeAssemblyAI) -> None:
    script = [
        *audio_frames(tone(0.6)),
        UserStoppedSpeakingFrame(stream_time=0.6),
        *audio_frames(silence(0.2)),
    ]
    out = await run_processor(stt(fake, max_turn_silence=5000, force_endpoint_on_vad_stop=False), script)
    assert out.transcripts == ["Hello world how."]
    assert fake.sessions[0].types_received() == ["Terminate"]


async def test_settings_frames_become_update_configuration(fake: FakeAssemblyAI) -> None:
    script = [
        *audio_frames(tone(0.2)),
        STTUpdateSettingsFrame(settings={"max_turn_silence": 300, "end_of_turn_confidence_threshold": 0.5}),
        STTUpdateSettingsFrame(settings={"max_turn_sience": 300}),
        *audio_frames(tone(0.2), silence(0.4)),
    ]
    out = await run_processor(stt(fake), script, timeout=20)
    session = fake.sessions[0]
    assert session.updates == [{"max_turn_silence": 300, "end_of_turn_confidence_threshold": 0.5}]
    assert session.config["max_turn_silence"] == 300
    (error,) = out.errors
    assert "unknown AssemblyAI setting(s) max_turn_sience" in error.message and not error.fatal
    assert out.transcripts == ["Hello world."]


async def test_a_temporary_token_is_fetched_for_the_connection(fake: FakeAssemblyAI) -> None:
    out = await run_processor(
        stt(fake, use_temporary_token=True, token_expires_in=30),
        audio_frames(tone(0.4), silence(0.6)),
        timeout=20,
    )
    assert out.transcripts == ["Hello world."]
    assert fake.token_requests == [{"expires_in_seconds": "30"}]
    authorization = fake.sessions[0].headers["Authorization"]
    assert authorization != "test-key" and not fake.tokens  # connected with the token, which is spent


async def test_cancel_closes_the_session_at_once_without_terminate(fake: FakeAssemblyAI) -> None:
    source = ScriptedSource(audio_frames(tone(0.4)))
    source.hold_end = asyncio.Event()  # a live stream that never ends by itself
    graph = Graph(
        {"script": source, "stt": stt(fake), "out": Collector()}, [("script", "stt"), ("stt", "out")]
    )
    await graph.start()
    try:
        await fake.wait_until(lambda: fake.sessions and fake.sessions[0].audio_ms >= 400, timeout=10)
        await asyncio.wait_for(graph.cancel(), 5)
        await fake.wait_until(lambda: not fake.sessions[0].open, timeout=5)
    finally:
        await asyncio.wait_for(graph.stop(), 10)
    assert "Terminate" not in fake.sessions[0].types_received()


async def test_transcribe_assemblyai_config_captions_browser_speech() -> None:
    """The shipped browser config: mic -> VAD -> stt.assemblyai -> websocket.output, on the fake."""
    name = "sense_and_sensibility_01_austen_64kb-0880.wav"
    samples, _ = read_wav(librivox("0880"))
    speech = np.concatenate([silence(0.3), samples, silence(1.0)]).astype("<i2").tobytes()
    async with FakeAssemblyAI(words=LIBRIVOX[name].split(), ms_per_word=80, silence_rms=200.0) as server:
        env = {"ASSEMBLYAI_API_KEY": "test-key", "ASSEMBLYAI_API_HOST": server.ws_url}
        compiled, problems = config.compile_config(
            ROOT / "configs/transcribe-assemblyai.yaml", ["server.port=0"], env
        )
        assert compiled is not None, problems
        voice = VoiceServer(compiled)
        await voice.start()
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(URL(voice.url) / "ws") as ws:
                await ws.send_str('{"type": "start"}')
                for i in range(0, len(speech), 640):
                    await ws.send_bytes(speech[i : i + 640])
                finals = await asyncio.wait_for(_final_transcripts(ws, count=1), 20)
                await ws.send_str('{"type": "stop"}')
                await server.wait_until(lambda: not server.sessions[0].open, timeout=10)
        finally:
            await asyncio.wait_for(voice.stop(), 30)
    assert re.sub(r"[^a-z ]", "", " ".join(finals).lower()) == LIBRIVOX[name]
    assert server.sessions[0].types_received() == ["ForceEndpoint", "Terminate"]  # the VAD ended the turn


async def _final_transcripts(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[str]:
    finals: list[str] = []
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            data = json.loads(message.data)
            if data["type"] == "transcript" and data["final"]:
                finals.append(data["text"])
                if len(finals) == count:
                    return finals
    raise AssertionError(f"the connection closed after {finals}")
