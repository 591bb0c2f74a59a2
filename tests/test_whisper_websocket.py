"""The whisper-json websocket protocol: its Sans-I/O parser and encoders, clip framing in the input node,
and configs/whisper-websocket.yaml served for real against the local OpenAI fake, in process and
through ``python -m pipeline run``: a page sends ``{"type": "audio", "audio": base64}`` with real
LibriVox speech and gets a status, then ``{"type": "transcription", ..., "status": "success"}``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from yarl import URL

from pipeline import config
from pipeline.frames import AudioFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame
from pipeline.graph import Graph
from pipeline.testing import run_graph
from tests.fakes.openai import FakeOpenAI, Fault, to_wav, wav_format
from tests.speech import LIBRIVOX, librivox, read_wav
from tests.test_websocket_server import Client, _until, connect
from transports.websocket import whisper_protocol as wire
from transports.websocket.nodes import WebsocketInput
from transports.websocket.protocol import Audio, ProtocolError
from transports.websocket.server import VoiceServer
from transports.websocket.session import Connection

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "whisper-websocket.yaml"
RATE = 16000
CLIP = "0880"
TRANSCRIPT = next(text for name, text in LIBRIVOX.items() if CLIP in name)
LIMIT = 4 * 1024 * 1024
TIMEOUT = 15.0


def speech() -> np.ndarray:
    """The LibriVox clip: 16 kHz mono int16."""
    samples, rate = read_wav(librivox(CLIP))
    assert rate == RATE
    return samples


def audio_message(data: bytes, **fields: Any) -> str:
    return json.dumps({"type": "audio", "audio": base64.b64encode(data).decode(), **fields})


def tone(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * math.pi * frequency * t) * amplitude).astype(np.float64)


def wav_bytes(
    channels: list[np.ndarray],
    rate: int,
    *,
    tag: int = 1,
    bits: int = 16,
    extensible: bool = False,
    data_size: int | None = None,
) -> bytes:
    """A WAV file of float ``channels`` (-1..1) in any encoding, with a LIST chunk before the data."""
    frames = np.stack(channels, axis=1)
    if tag == 3:
        raw = frames.astype(f"<f{bits // 8}").tobytes()
    elif bits == 8:
        raw = (np.round(frames * 127) + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.round(frames * 8388607).astype("<i4").reshape(-1)
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = np.round(frames * (2 ** (bits - 1) - 1)).astype(f"<i{bits // 8}").tobytes()
    block = len(channels) * bits // 8
    fmt = struct.pack(
        "<HHIIHH", 0xFFFE if extensible else tag, len(channels), rate, rate * block, block, bits
    )
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    listing = b"INFOISFT\x05\x00\x00\x00test\x00"  # odd-sized: padded to an even length
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", len(listing)) + listing + b"\x00"
    chunks += b"data" + struct.pack("<I", len(raw) if data_size is None else data_size) + raw
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def pcm_of(event: Audio | ProtocolError) -> np.ndarray:
    assert isinstance(event, Audio), event
    return np.frombuffer(event.pcm, dtype="<i2")


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


# --- client -> server ----------------------------------------------------------------------------


def test_base64_pcm_is_taken_as_it_is() -> None:
    pcm = speech().tobytes()
    assert pcm_of(wire.parse_text(audio_message(pcm), LIMIT)).tobytes() == pcm
    assert pcm_of(wire.parse_binary(pcm, LIMIT)).tobytes() == pcm  # binary: the same bytes, no base64


def test_data_urls_whitespace_and_missing_padding_are_forgiven() -> None:
    pcm = speech()[:1001].tobytes()  # 2002 bytes: base64 ends in "=" padding
    encoded = base64.b64encode(pcm).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # base64.encodebytes
    for payload in (f"data:audio/wav;base64,{encoded}", wrapped, encoded.rstrip("=")):
        event = wire.parse_text(json.dumps({"type": "audio", "audio": payload}), LIMIT)
        assert pcm_of(event).tobytes() == pcm


@pytest.mark.parametrize(
    ("rate", "tag", "bits", "extensible"),
    [
        (48000, 1, 16, False),
        (44100, 3, 32, False),
        (22050, 1, 24, False),
        (8000, 1, 8, False),
        (32000, 1, 32, True),
        (24000, 3, 64, True),
    ],
)
def test_wav_of_any_rate_encoding_and_layout_becomes_16khz_mono(
    rate: int, tag: int, bits: int, extensible: bool
) -> None:
    left = tone(0.5, rate)
    data = wav_bytes([left, left * 0.5], rate, tag=tag, bits=bits, extensible=extensible)
    samples = pcm_of(wire.parse_text(audio_message(data), LIMIT))

    assert abs(len(samples) - RATE // 2) <= 2
    assert abs(dominant_frequency(samples, RATE) - 440) <= 4
    expected = 0.75 * 0.5 / math.sqrt(2) * 32768  # the two channels averaged
    assert rms(samples) == pytest.approx(expected, rel=0.03)


def test_16khz_mono_wav_keeps_its_samples_exactly() -> None:
    samples = speech()
    assert pcm_of(wire.parse_binary(to_wav(samples.tobytes(), RATE), LIMIT)).tobytes() == samples.tobytes()


def test_wav_from_a_streaming_recorder_is_read_to_the_end() -> None:
    data = wav_bytes([tone(0.25, RATE)], RATE, data_size=0xFFFFFFFF)  # size not known when written
    assert len(pcm_of(wire.parse_binary(data, LIMIT))) == RATE // 4
    truncated = wav_bytes([tone(0.25, RATE)], RATE)[:-3]  # cut mid-sample: the partial sample goes
    assert len(pcm_of(wire.parse_binary(truncated, LIMIT))) == RATE // 4 - 2


def test_raw_pcm_at_another_rate_says_so() -> None:
    pcm = (tone(0.5, 48000) * 32767).astype("<i2").tobytes()
    for field in ("sample_rate", "sampleRate"):
        samples = pcm_of(wire.parse_text(audio_message(pcm, **{field: 48000}), LIMIT))
        assert abs(len(samples) - RATE // 2) <= 2
        assert abs(dominant_frequency(samples, RATE) - 440) <= 4


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        ("{not json", "must be JSON"),
        ("[1, 2]", "JSON object"),
        ('{"audio": "AAAA"}', 'needs a "type"'),
        ('{"type": "sing"}', "unknown message type 'sing'"),
        ('{"type": "audio"}', 'needs "audio"'),
        ('{"type": "audio", "audio": 5}', 'needs "audio"'),
        ('{"type": "audio", "audio": "**not base64**"}', "not valid base64"),
        ('{"type": "audio", "audio": "data:audio/wav,AAAA"}', "data URL must be base64"),
        (audio_message(b"\x00\x01\x02"), "odd 3 bytes"),
        (audio_message(b"\x1a\x45\xdf\xa3" + bytes(64)), "WebM/Matroska audio is not supported"),
        (audio_message(b"OggS" + bytes(64)), "Ogg audio is not supported"),
        (audio_message(b"\x00\x00\x00\x20ftypM4A " + bytes(64)), "MP4/M4A audio is not supported"),
        (audio_message(bytes(640), sample_rate="fast"), '"sample_rate" must be'),
        (audio_message(bytes(640), sample_rate=True), '"sample_rate" must be'),
        (audio_message(b"RIFF\x04\x00\x00\x00AVI "), "not a WAVE file"),
        (audio_message(wav_bytes([tone(0.1, RATE)], RATE, tag=2)), "encoding 2 with 16-bit"),
        (audio_message(wav_bytes([tone(0.1, RATE)], RATE)[:36]), "without a data chunk"),
        (audio_message(b"RIFF\x04\x00\x00\x00WAVEdata\x00\x00\x00\x00"), "data before its fmt"),
        (audio_message(wav_bytes([np.zeros(0)], RATE)), "no samples"),
        (json.dumps({"type": "audio", "audio": "A" * LIMIT}), "over the limit"),
    ],
)
def test_malformed_messages_are_explained(message: str, complaint: str) -> None:
    event = wire.parse_text(message, LIMIT)
    assert isinstance(event, ProtocolError)
    assert complaint in event.message


def test_empty_and_oversized_binary_messages_are_refused() -> None:
    empty = wire.parse_binary(b"", LIMIT)
    assert isinstance(empty, ProtocolError) and "empty audio" in empty.message
    big = wire.parse_binary(bytes(LIMIT + 2), LIMIT)
    assert isinstance(big, ProtocolError) and "over the limit" in big.message


# --- server -> client ----------------------------------------------------------------------------


def test_server_messages() -> None:
    assert json.loads(wire.session("s-1")) == {"type": "status", "message": "connected", "session_id": "s-1"}
    assert json.loads(wire.status("thinking") or "") == {"type": "status", "message": "transcribing"}
    assert wire.status("starting") is None and wire.status("speaking") is None
    assert json.loads(wire.transcript("hi there", final=True) or "") == {
        "type": "transcription",
        "text": "hi there",
        "status": "success",
    }
    assert wire.transcript("hi", final=False) is None
    assert json.loads(wire.error("no")) == {"type": "error", "message": "no"}
    assert wire.audio_format(24000) is None and wire.interrupted() is None
    assert wire.assistant_text("x", final=True) is None and wire.metrics(1.0) is None


# --- clip framing --------------------------------------------------------------------------------


async def test_each_clip_is_one_utterance_followed_by_silence() -> None:
    mic = WebsocketInput(name="mic", protocol="whisper-json", audio_messages="clip", clip_gap=0.5)
    connection = Connection("s-1")
    mic.bind_connection(connection)
    assert connection.wire is wire
    first, second = bytes(2 * 16000 + 100), b"\x01\x00" * 8000  # 1.003 s (not whole frames), 0.5 s
    connection.inbound.put(Audio(first))
    connection.inbound.put(Audio(second))
    connection.inbound.end()
    out = await run_graph(Graph({"mic": mic}, []), timeout=TIMEOUT)

    starts = [f.stream_time for f in out.of(UserStartedSpeakingFrame)]
    stops = [f.stream_time for f in out.of(UserStoppedSpeakingFrame)]
    first_padded = 1.02  # whole 20 ms frames
    assert starts == [0.0, pytest.approx(first_padded + 0.5)]
    assert stops == [pytest.approx(len(first) / 2 / RATE), pytest.approx(first_padded + 0.5 + 0.5)]
    audio = b"".join(f.pcm for f in out.of(AudioFrame))
    assert len(audio) == 2 * round(RATE * (first_padded + 0.5 + 0.5 + 0.5))
    second_at = 2 * round(RATE * (first_padded + 0.5))
    assert audio[second_at : second_at + len(second)] == second
    assert not any(audio[second_at + len(second) :])  # the gap is silence
    assert {len(f.pcm) for f in out.of(AudioFrame)} == {640}


# --- served for real -----------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(transcript=TRANSCRIPT) as server:
        yield server


def fake_env(fake: FakeOpenAI) -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url, "PORT": "0"}


@contextlib.asynccontextmanager
async def serving(
    fake: FakeOpenAI, text: str | None = None, *overrides: str
) -> AsyncIterator[tuple[VoiceServer, URL]]:
    """configs/whisper-websocket.yaml (or ``text``) served on a free port, transcribing with ``fake``."""
    env = fake_env(fake)
    if text is None:
        compiled, problems = config.compile_config(CONFIG, ["stt.max_retries=0", *overrides], env)
    else:
        compiled, problems = config.compile_text(text, "<test>", overrides, env)
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled)
    await server.start()
    try:
        yield server, URL(server.url)
    finally:
        await asyncio.wait_for(server.stop(), 30)


async def health(http: aiohttp.ClientSession, base: URL) -> dict[str, Any]:
    async with http.get(base / "health", timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as response:
        assert response.status == 200
        return dict(await response.json())


def transcriptions(client: Client) -> list[dict[str, Any]]:
    return client.of("transcription")


async def next_transcription(client: Client, count: int) -> dict[str, Any]:
    await client.until(lambda: len(transcriptions(client)) >= count, f"transcription {count}")
    return transcriptions(client)[count - 1]


async def test_a_whisper_page_gets_a_status_then_its_transcription(fake: FakeOpenAI) -> None:
    samples = speech()
    clip_seconds = len(samples) / RATE
    async with (
        serving(fake) as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        connected = await client.wait_for(lambda m: m["type"] == "status", "the first status")
        assert connected["message"] == "connected" and connected["session_id"] in server.sessions
        await client.wait_for(lambda m: m.get("message") == "ready", "ready")
        assert (await health(http, base))["active_connections"] == 1

        sent_at = len(client.messages)
        await client.ws.send_str(audio_message(samples.tobytes()))
        first = await next_transcription(client, 1)
        assert first == {"type": "transcription", "text": TRANSCRIPT, "status": "success"}
        replies = client.messages[sent_at : client.messages.index(first)]
        assert {"type": "status", "message": "transcribing"} in replies  # a status came first

        await client.ws.send_str("{not json")
        await client.ws.send_str('{"type": "audio", "audio": "%%%"}')
        await client.ws.send_str('{"type": "transcribe"}')
        stereo_48k = soxr_up(samples)
        wav = wav_bytes([stereo_48k, stereo_48k], 48000)
        data_url = "data:audio/wav;base64," + base64.b64encode(wav).decode()
        await client.ws.send_str(json.dumps({"type": "audio", "audio": data_url}))
        second = await next_transcription(client, 2)
        assert second["text"] == TRANSCRIPT and second["status"] == "success"

        errors = [m["message"] for m in client.of("error")]
        assert len(errors) == 3, errors
        assert "JSON" in errors[0] and "base64" in errors[1] and "'transcribe'" in errors[2]
        assert not client.audio  # no bot audio in this protocol
        assert {m["type"] for m in client.json} == {"status", "transcription", "error"}

    assert len(fake.requests) == 2
    for request in fake.requests:
        assert request.path == "/v1/audio/transcriptions"
        assert request.headers["Authorization"] == f"Bearer {fake.api_key}"
        assert request.headers["Content-Type"].startswith("multipart/form-data")
        assert request.body == {"model": "whisper-1", "response_format": "json"}
        assert request.filename == "utterance.wav" and request.file is not None
        rate, channels, frames = wav_format(request.file)
        assert (rate, channels) == (RATE, 1)
        # The clip plus the recogniser's post-roll (and, for the second, pre-roll) of silence.
        assert clip_seconds <= frames / rate <= clip_seconds + 0.5


def soxr_up(samples: np.ndarray) -> np.ndarray:
    """The 16 kHz clip as a browser would record it: 48 kHz float."""
    import soxr

    return np.asarray(soxr.resample(samples.astype(np.float32) / 32768, RATE, 48000), dtype=np.float64)


async def test_health_counts_connections_and_the_root_path_takes_websockets(fake: FakeOpenAI) -> None:
    async with serving(fake) as (server, base), aiohttp.ClientSession() as http:
        before = await health(http, base)
        assert before["status"] == "ok" and before["active_connections"] == before["active_sessions"] == 0
        async with http.ws_connect(base) as ws:  # ws://host:port/ as well as /ws
            client = Client(ws)
            await client.wait_for(lambda m: m.get("message") == "ready", "ready")
            assert (await health(http, base))["active_connections"] == 1
            await ws.send_bytes(to_wav(speech().tobytes(), RATE))  # a binary WAV is a clip too
            assert (await next_transcription(client, 1))["text"] == TRANSCRIPT
        await _until(lambda: not server.sessions, "the session to end")
        assert (await health(http, base))["active_connections"] == 0
        async with http.get(base) as page:
            assert page.content_type == "text/html"  # the page is still served there


async def test_a_failed_transcription_is_an_error_and_the_session_goes_on(fake: FakeOpenAI) -> None:
    fake.faults = [Fault(status=500)]
    async with (
        serving(fake) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.ws.send_str(audio_message(speech().tobytes()))
        error = await client.wait_for(lambda m: m["type"] == "error", "an error")
        assert error["message"].startswith("stt:")
        await client.ws.send_str(audio_message(speech().tobytes()))
        assert (await next_transcription(client, 1))["text"] == TRANSCRIPT
        assert len(transcriptions(client)) == 1


VAD_VARIANT = CONFIG.read_text().replace("audio_messages: clip", "audio_messages: stream")
VAD_VARIANT = VAD_VARIANT.replace(
    "  out: {type: websocket.output}", "  vad: {type: vad.webrtc}\n  out: {type: websocket.output}"
)
VAD_VARIANT = VAD_VARIANT.replace("mic -> stt -> out", "mic -> vad -> stt -> out")


async def test_the_vad_variant_transcribes_each_utterance_of_a_streamed_microphone(fake: FakeOpenAI) -> None:
    assert "vad.webrtc" in VAD_VARIANT and "mic -> vad -> stt" in VAD_VARIANT
    samples = speech()
    silence = np.zeros(RATE, dtype=np.int16)
    stream = np.concatenate([silence, samples, silence, samples, silence]).tobytes()
    chunk = 2 * 4096  # what a ScriptProcessor(4096) page sends
    async with (
        serving(fake, VAD_VARIANT, "stt.max_retries=0") as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        for offset in range(0, len(stream), chunk):
            await client.ws.send_str(audio_message(stream[offset : offset + chunk]))
        second = await next_transcription(client, 2)
        assert second == {"type": "transcription", "text": TRANSCRIPT, "status": "success"}
        statuses = [m["message"] for m in client.of("status")]
        assert statuses.count("speech detected") == 2 and statuses.count("transcribing") == 2
    clip_seconds = len(samples) / RATE
    for request in fake.requests:
        assert request.file is not None
        rate, _, frames = wav_format(request.file)
        assert clip_seconds - 0.2 <= frames / rate <= clip_seconds + 0.7  # the VAD's cut, with rolls


# --- the CLI -------------------------------------------------------------------------------------


def test_the_config_validates() -> None:
    env = {**os.environ, "OPENAI_API_KEY": "sk-dummy"}
    env.pop("OPENAI_BASE_URL", None)
    command = [sys.executable, "-m", "pipeline", "validate", str(CONFIG)]
    valid = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "valid" in valid.stdout
    del env["OPENAI_API_KEY"]
    missing = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "OPENAI_API_KEY" in missing.stdout + missing.stderr


async def test_pipeline_run_serves_the_config_until_ctrl_c(fake: FakeOpenAI) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(CONFIG),
        cwd=ROOT,
        env={**fake_env(fake), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert "Voxgraph: serving 'whisper-websocket' at http://127.0.0.1:" in line, line
        base = URL(line.split(" at ")[1].split()[0])
        async with aiohttp.ClientSession() as http, connect(http, base) as client:
            await client.ws.send_str(audio_message(speech().tobytes()))
            transcription = await next_transcription(client, 1)
            assert transcription == {"type": "transcription", "text": TRANSCRIPT, "status": "success"}
            assert (await health(http, base))["active_connections"] == 1
            process.send_signal(signal.SIGINT)  # drains: the client is told, the session goes on
            await client.wait_for(lambda m: m.get("message") == "draining", "the draining status")
            process.send_signal(signal.SIGINT)  # a second Ctrl-C stops it now
            assert await client.closed() == 1001
            assert client.of("status")[-1]["message"] == "ended"
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert fake.requests[0].body["model"] == "whisper-1"
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)
