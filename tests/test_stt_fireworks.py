"""``stt.fireworks`` and its local fake: the fake's protocol seen by a raw websocket client (Fireworks
has no SDK), then the node through the real runtime, then the shipped config through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from pipeline.errors import ValidationError
from pipeline.frames import (
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.graph import Graph, GraphFailedError
from pipeline.testing import Captured, Collector, run_graph, run_processor
from processors.stt.fireworks import FireworksSTT
from tests.drivers import Driver
from tests.fakes.fireworks import PATH, FakeFireworks
from tests.speech import LIBRIVOX, audio_frames, librivox, read_wav, silence, tone, write_wav

RATE = 16000
WORDS = ["hello", "world", "how", "are", "you"]
ROOT = Path(__file__).resolve().parent.parent


def pcm(*parts: np.ndarray) -> bytes:
    return np.concatenate(parts).astype("<i2").tobytes()


def stt(fake: FakeFireworks, **params: Any) -> FireworksSTT:
    values: dict[str, Any] = {
        "api_key": "test-key",
        "base_url": fake.ws_url,
        "reconnect_backoff": 0.05,
        "connect_timeout": 5.0,
    }
    values.update(params)
    return FireworksSTT(name="stt", **values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeFireworks]:
    async with FakeFireworks(words=WORDS, ms_per_word=200) as server:
        yield server


# --- the fake's protocol, raw --------------------------------------------------------------------


async def receive_json(ws: ClientConnection) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(message, dict)
    return message


async def test_fake_sends_segments_by_id_and_echoes_checkpoints(fake: FakeFireworks) -> None:
    url = f"{fake.ws_url}{PATH}?model=whisper-v3&response_format=verbose_json&language=en"
    async with connect(url, additional_headers={"Authorization": "test-key"}, open_timeout=5) as ws:
        data = pcm(tone(0.4), silence(0.5))
        for i in range(0, len(data), 1600):
            await ws.send(data[i : i + 1600])
        updates = [await receive_json(ws) for _ in range(3)]
        await ws.send(json.dumps({"checkpoint_id": "final"}))
        echo = await receive_json(ws)
        await ws.send(json.dumps({"object": "stt.state.clear", "event_id": "e1", "reset_id": "r1"}))
        cleared = await receive_json(ws)
        await ws.send(json.dumps({"object": "stt.input.trace", "trace_id": "t1"}))
        trace = await receive_json(ws)

    assert [(u["segments"][0]["id"], u["segments"][0]["text"]) for u in updates] == [
        ("0", "hello"),
        ("0", "hello world"),
        ("0", "Hello world."),  # the closing update revises the segment
    ]
    last = updates[-1]
    assert last["task"] == "transcribe" and last["language"] == "en" and last["text"] == "Hello world."
    assert last["segments"][0]["words"][1] == {"word": "world.", "start": 0.2, "end": 0.4, "probability": 0.9}
    assert echo == {"checkpoint_id": "final"}
    assert cleared == {"event_id": "e1", "object": "stt.state.cleared", "reset_id": "r1"}
    assert trace == {"object": "stt.output.trace", "trace_id": "t1"}
    assert fake.sessions[0].headers["Authorization"] == "test-key"


async def test_fake_takes_the_key_as_a_query_param_and_refuses_a_bad_one(fake: FakeFireworks) -> None:
    async with connect(f"{fake.ws_url}{PATH}?Authorization=test-key", open_timeout=5):
        pass
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"{fake.ws_url}{PATH}", additional_headers={"Authorization": "nope"}, open_timeout=5
        ):
            pass
    assert refused.value.response.status_code == 401
    assert len(fake.sessions) == 1 and len(fake.rejected) == 1


# --- the node --------------------------------------------------------------------------------------


def interims(out: Captured) -> list[str]:
    return [f.text for f in out.of(InterimTranscriptFrame)]


async def test_interims_then_finals_when_a_later_segment_appears_and_at_the_end(fake: FakeFireworks) -> None:
    script = audio_frames(tone(0.6), silence(0.5), tone(0.4))  # no silence at the end: only the checkpoint
    out = await run_processor(stt(fake, language="en"), script, timeout=20)

    assert interims(out) == [
        "hello",
        "hello world",
        "hello world how",
        "Hello world how.",
        "are",
        "are you",
        "Are you.",
    ]
    assert out.transcripts == ["Hello world how.", "Are you."]
    second = out.of(TranscriptFrame)[1]
    assert second.language == "en"
    assert [(w["text"], w["start"], w["end"]) for w in second.words or []] == [
        ("Are", 1.1, 1.3),
        ("you.", 1.3, 1.5),
    ]
    assert out.audio == b"".join(f.pcm for f in script if isinstance(f, AudioFrame))  # audio passes on
    assert not out.errors
    (session,) = fake.sessions
    assert session.query == {
        "model": "whisper-v3",
        "response_format": "verbose_json",
        "language": "en",
        "temperature": "0",
        "timestamp_granularities": "word,segment",
    }
    assert session.headers["Authorization"] == "test-key"  # the bare key, no "Bearer"
    assert set(session.chunks_ms) == {50.0} and not session.bad_chunks
    assert session.checkpoints == ["final"]


@pytest.mark.parametrize("id_style", ["int", "mixed"])
async def test_segment_ids_as_numbers_or_strings_are_one_key(fake: FakeFireworks, id_style: str) -> None:
    fake.id_style = id_style  # type: ignore[assignment]
    out = await run_processor(stt(fake), audio_frames(tone(0.6), silence(0.5), tone(0.4)), timeout=20)
    assert out.transcripts == ["Hello world how.", "Are you."]


async def test_chunk_ms_sets_the_message_size(fake: FakeFireworks) -> None:
    await run_processor(stt(fake, chunk_ms=100), audio_frames(tone(0.6), silence(0.5)), timeout=20)
    assert set(fake.sessions[0].chunks_ms) == {100.0}


async def test_real_speech_is_streamed_and_recognised() -> None:
    name = "sense_and_sensibility_01_austen_64kb-0930.wav"
    samples, _ = read_wav(librivox("0930"))
    async with FakeFireworks(words=LIBRIVOX[name].split(), ms_per_word=80, silence_rms=200.0) as server:
        out = await run_processor(stt(server), audio_frames(samples, silence(0.5)), timeout=20)
    said = " ".join(out.transcripts)
    assert re.sub(r"[^a-z ]", "", said.lower()) == LIBRIVOX[name]


@pytest.mark.parametrize("failure, how", [("http", "HTTP 401"), ("close", "close 1008")])
async def test_a_bad_key_ends_the_graph_with_a_clear_message(failure: str, how: str) -> None:
    async with FakeFireworks(auth_failure=failure) as server:  # type: ignore[arg-type]
        with pytest.raises(GraphFailedError) as failed:
            await run_processor(stt(server, api_key="fw-wrong-5678"), audio_frames(tone(0.2)), timeout=20)
    message = str(failed.value)
    assert f"Fireworks rejected the API key ({how}): check FIREWORKS_API_KEY" in message
    assert "fw-wrong-5678" not in message
    assert len(server.rejected) == 1


async def test_an_unknown_model_is_a_clear_fatal_error(fake: FakeFireworks) -> None:
    with pytest.raises(
        GraphFailedError, match=r"Fireworks refused the request \(handshake refused \(HTTP 400\)"
    ):
        await run_processor(stt(fake, model="whisper-v9"), audio_frames(tone(0.2)), timeout=20)


def test_an_empty_key_a_bad_url_and_a_chunk_out_of_range_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match="FIREWORKS_API_KEY"):
        FireworksSTT(api_key="")
    with pytest.raises(ValidationError, match=r"(?s)base_url 'https://example.com' is not usable.*wss://"):
        FireworksSTT(api_key="k", base_url="https://example.com")  # a declared limit
    with pytest.raises(ValidationError, match=r"(?s)chunk_ms 20 is out of range.*use 50 to 400"):
        FireworksSTT(api_key="k", chunk_ms=20)  # a declared limit: checked with the other params


async def test_a_drop_mid_segment_reconnects_and_loses_no_final(fake: FakeFireworks) -> None:
    fake.drop_after_ms = 500  # the first connection dies after "hello world", mid-segment
    out = await run_processor(stt(fake), audio_frames(tone(1.0), silence(0.5)), timeout=20)

    assert out.transcripts == ["Hello world how are you."]
    assert out.of(TranscriptFrame)[0].words[0]["start"] == 0.0  # type: ignore[index]
    assert len(fake.sessions) == 2 and fake.sessions[0].close_code == 1011
    (error,) = out.errors
    assert "1011" in error.message and "reconnecting" in error.message and not error.fatal


async def test_connections_that_keep_dropping_end_the_graph(fake: FakeFireworks) -> None:
    fake.drop_after_ms, fake.drop_sessions = 300, 100
    with pytest.raises(GraphFailedError, match="dropped 3 times"):
        await run_processor(
            stt(fake, reconnect_attempts=2), audio_frames(tone(1.0), silence(0.5)), timeout=20
        )
    assert len(fake.sessions) == 3


async def test_a_slow_server_still_delivers_every_final(fake: FakeFireworks) -> None:
    fake.response_delay = 0.1
    out = await run_processor(stt(fake), audio_frames(tone(0.6), silence(0.5), tone(0.4)), timeout=20)
    assert out.transcripts == ["Hello world how.", "Are you."]


async def test_a_message_that_is_not_json_is_reported_and_the_stream_goes_on(fake: FakeFireworks) -> None:
    fake.malformed_after_words = 1
    out = await run_processor(stt(fake), audio_frames(tone(1.0), silence(0.5)), timeout=20)
    assert out.transcripts == ["Hello world how are you."]
    (error,) = out.errors
    assert "not JSON" in error.message and not error.fatal
    assert len(fake.sessions) == 1


async def test_without_the_final_echo_the_open_segments_are_still_emitted(fake: FakeFireworks) -> None:
    fake.echo_final = False
    out = await run_processor(stt(fake, final_timeout=0.5), audio_frames(tone(0.6)), timeout=20)
    assert out.transcripts == ["Hello world how."]


def spoken_turn(stopped: UserStoppedSpeakingFrame | None = None) -> list[Frame]:
    """Three words, the VAD's stop (it overtakes the queued audio), then 0.2 s of silence: too short
    for the server to close the segment by itself."""
    stop = stopped or UserStoppedSpeakingFrame(stream_time=0.6)
    return [*audio_frames(tone(0.6)), stop, *audio_frames(silence(0.2))]


async def converse(node: FireworksSTT, turn: list[Frame], later: list[Frame]) -> tuple[Captured, list[Frame]]:
    """Send ``turn``, wait for its final, then send ``later`` (the user's next words) and end.

    Returns what came out, and what had come out when ``later`` began.
    """
    out = Collector(name="out")
    seen: list[Frame] = []

    async def final() -> None:
        await out.wait_for(TranscriptFrame, timeout=5)
        seen.extend(out.frames)

    driver = Driver([*turn, final, *later])
    graph = Graph({"driver": driver, "stt": node, "out": out}, [("driver", "stt"), ("stt", "out")])
    return await run_graph(graph, timeout=20), seen


async def test_the_vad_stopping_sends_a_checkpoint_whose_echo_makes_the_turn_final(
    fake: FakeFireworks,
) -> None:
    stopped = UserStoppedSpeakingFrame(at=0.0, stream_time=0.6)
    node = stt(fake)  # the user's next words come only once the final is out
    out, before_later = await converse(node, spoken_turn(stopped), audio_frames(tone(0.4), silence(0.2)))

    assert [f.text for f in before_later if isinstance(f, TranscriptFrame)] == ["Hello world how."]
    assert out.transcripts == ["Hello world how.", "Are you."]
    (session,) = fake.sessions
    assert session.checkpoints == ["endpoint-1", "final"]
    assert session.received_at_ms[0] >= 600  # sent once the audio up to the stop was out
    assert session.received_at_ms[0] < 800  # ... and not held until the end
    assert stopped in out.down  # system frames pass on
    assert len(node.metrics.samples["stt_final"]) == 1
    assert not out.errors


async def test_a_drop_around_the_stop_still_ends_the_turn_on_the_new_connection(fake: FakeFireworks) -> None:
    fake.drop_after_ms = 500  # before the stop: its checkpoint waits for, or is sent again after, the replay
    out, before_later = await converse(stt(fake), spoken_turn(), audio_frames(tone(0.4), silence(0.2)))

    assert [f.text for f in before_later if isinstance(f, TranscriptFrame)] == ["Hello world how."]
    assert out.transcripts == ["Hello world how.", "Are you."]
    assert len(fake.sessions) == 2
    assert fake.sessions[1].checkpoints[0].startswith("endpoint-")


async def test_without_checkpoint_on_vad_stop_the_final_waits_for_the_end(fake: FakeFireworks) -> None:
    out = await run_processor(stt(fake, checkpoint_on_vad_stop=False), spoken_turn(), timeout=20)
    assert out.transcripts == ["Hello world how."]
    assert fake.sessions[0].checkpoints == ["final"]


async def test_words_added_to_a_segment_after_its_final_become_a_new_final(fake: FakeFireworks) -> None:
    fake.checkpoint_keeps_segment = True  # the server keeps segment 0 open after the checkpoint
    out, _ = await converse(stt(fake), spoken_turn(), audio_frames(tone(0.4), silence(0.2)))

    # The closing revision "Hello world how are you." adds "are you." past what was final: only that.
    assert out.transcripts == ["hello world how", "are you."]
    assert [(w["text"], w["start"], w["end"]) for w in out.of(TranscriptFrame)[1].words or []] == [
        ("are", 0.8, 1.0),
        ("you.", 1.0, 1.2),
    ]
    assert fake.finals == ["Hello world how are you."]  # one segment id on the server's side


# --- the shipped config, through the CLI ---------------------------------------------------------


async def test_fireworks_file_config_prints_segments(fake: FakeFireworks, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "speech.wav", np.concatenate([tone(0.6), silence(0.5), tone(0.4)]), RATE)
    env = {
        **os.environ,
        "INPUT": str(wav),
        "FIREWORKS_API_KEY": "test-key",
        "FIREWORKS_BASE_URL": fake.ws_url,
    }
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "configs/fireworks-file.yaml",
        "--set",
        "file.realtime=false",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == ["you: Hello world how.", "you: Are you."]
    assert fake.sessions[0].checkpoints == ["final"] and "test-key" not in stderr.decode()
