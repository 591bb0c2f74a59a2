"""OpenAI's audio and chat endpoints served from the offline engines, driven by the official ``openai`` SDK.

One server (``configs/serve-openai.yaml``: Whisper tiny.en, Piper, SmolLM2) answers every test of
the module; auth and drain get their own servers, which reuse the process's loaded models. Real
speech in (LibriVox), real speech out (Piper, heard again by the served Whisper).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from pipeline import config
from pipeline.capacity import LoadMeter
from tests.hearing import wer
from tests.speech import LIBRIVOX, librivox, read_wav, write_wav
from transports.dropin import openai as routes
from transports.dropin.openai_audio import CompressedAudio
from transports.websocket import connections
from transports.websocket.server import VoiceServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "serve-openai.yaml"
TIMEOUT = 60.0
CLIP = "0870"
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Then it runs far away into the green forest."
SHARED = ("server.port=0", "openai.max_waiting=0", "openai.max_upload_bytes=2000000")
"""No waiting line (a second request on a busy engine is refused at once) and a 2 MB upload limit."""
API_KEY = "sk-voxgraph-test-0123456789abcdef"


@contextlib.asynccontextmanager
async def serving(*overrides: str) -> AsyncIterator[VoiceServer]:
    compiled, problems = config.compile_config(CONFIG, overrides)
    assert compiled is not None and not problems, problems
    quiet = LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None)  # the CPU never refuses here
    server = VoiceServer(compiled, meter=quiet)
    await server.start()
    try:
        await asyncio.wait_for(server.warm_up(), TIMEOUT)
        yield server
    finally:
        await asyncio.wait_for(server.stop(), TIMEOUT)


def client_of(server: VoiceServer, api_key: str = "anything") -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT
    )


async def ready(client: AsyncOpenAI) -> None:
    """Wait (bounded) until the routes' engines have started: 503 ``loading`` until then."""
    for _ in range(int(TIMEOUT / 0.1)):
        try:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
            )
            return
        except openai.InternalServerError as error:
            assert error.status_code == 503 and "loading" in str(error)
            await asyncio.sleep(0.1)
    raise AssertionError("the engines never started")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[VoiceServer]:
    async with serving(*SHARED) as served:
        await ready(client_of(served))
        yield served


@pytest.fixture
def client(server: VoiceServer) -> AsyncOpenAI:
    return client_of(server)


def active(server: VoiceServer, endpoint: str) -> float:
    """Requests of ``endpoint`` being answered now (admitted, waiting for the engine included)."""
    registry = server.metrics.registry
    return registry.get_sample_value("voxgraph_openai_requests_active", {"endpoint": endpoint}) or 0.0


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def answered(sock: socket.socket) -> bool:
    """Whether response headers wait in ``sock`` (peeked: the client still reads nothing)."""
    try:
        return sock.recv(16, socket.MSG_PEEK).startswith(b"HTTP/1.1 200")
    except BlockingIOError:
        return False


def as_wav(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm)
    return out.getvalue()


# --- transcriptions ----------------------------------------------------------------------------------


async def test_transcriptions_as_json_text_and_verbose_json_get_the_right_words(client: AsyncOpenAI) -> None:
    reference = LIBRIVOX[librivox(CLIP).name]
    plain = await client.audio.transcriptions.create(model="whisper-1", file=librivox(CLIP))
    assert wer(reference, plain.text) <= 0.1, plain.text
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=librivox(CLIP), response_format="text"
    )
    assert isinstance(text, str) and wer(reference, text) <= 0.1, text
    verbose = await client.audio.transcriptions.create(
        model="whisper-1",
        file=librivox(CLIP),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    samples, rate = read_wav(librivox(CLIP))
    assert verbose.duration == pytest.approx(len(samples) / rate, abs=0.01)
    assert verbose.language == "english" and wer(reference, verbose.text) <= 0.1
    assert verbose.segments and " ".join(s.text.strip() for s in verbose.segments) == verbose.text
    assert all(0 <= s.start < s.end <= verbose.duration + 0.05 for s in verbose.segments)
    assert verbose.words is not None and len(verbose.words) == len(verbose.text.split())
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts) and verbose.words[-1].end <= verbose.duration + 0.05


async def test_silence_is_transcribed_as_nothing(client: AsyncOpenAI) -> None:
    silence = ("silence.wav", as_wav(bytes(16000 * 2 * 3), 16000))
    assert (await client.audio.transcriptions.create(model="whisper-1", file=silence)).text == ""


async def test_srt_subtitles_number_their_cues(client: AsyncOpenAI) -> None:
    srt = await client.audio.transcriptions.create(
        model="whisper-1", file=librivox(CLIP), response_format="srt"
    )
    assert isinstance(srt, str) and srt.startswith("1\n00:00:00,")
    assert " --> 00:00:0" in srt and "Dashwood" in srt


async def test_a_streamed_transcription_sends_a_delta_per_piece_then_the_whole_text(
    client: AsyncOpenAI, tmp_path: Path
) -> None:
    clips = [read_wav(librivox(name))[0] for name in LIBRIVOX] * 2  # ~55 s: two pieces of at most 28 s
    long = write_wav(tmp_path / "long.wav", np.concatenate(clips), 16000)
    stream = await client.audio.transcriptions.create(model="gpt-4o-transcribe", file=long, stream=True)
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    (done,) = [e for e in events if e.type == "transcript.text.done"]
    assert events[-1] is done and len(deltas) >= 2
    assert "".join(deltas) == done.text
    reference = " ".join(LIBRIVOX.values()) * 1
    assert wer(reference + " " + reference, done.text) <= 0.15, done.text


async def test_whisper_1_answers_a_stream_request_in_one_piece_as_openai_does(server: VoiceServer) -> None:
    form = aiohttp.FormData({"model": "whisper-1", "stream": "true"})
    form.add_field("file", librivox(CLIP).read_bytes(), filename="clip.wav", content_type="audio/wav")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}v1/audio/transcriptions", data=form) as response,
    ):
        assert response.status == 200 and response.content_type == "application/json"
        assert "Dashwood" in (await response.json())["text"]


async def test_a_non_audio_upload_is_a_400_in_openais_shape(client: AsyncOpenAI, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not the sounds you are looking for\n" * 20)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.audio.transcriptions.create(model="whisper-1", file=notes)
    body: Any = refused.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == "file"
    assert body["message"].startswith("Invalid file format")


async def test_an_upload_over_the_limit_is_a_413(client: AsyncOpenAI) -> None:
    big = ("big.wav", as_wav(bytes(3_000_000), 16000), "audio/wav")
    with pytest.raises(openai.APIStatusError) as refused:
        await client.audio.transcriptions.create(model="whisper-1", file=big)
    assert refused.value.status_code == 413


async def test_a_form_with_two_files_or_too_many_fields_is_refused(server: VoiceServer) -> None:
    url = f"{server.url}v1/audio/transcriptions"
    clip = librivox(CLIP).read_bytes()
    two = aiohttp.FormData({"model": "whisper-1"})
    for name in ("a.wav", "b.wav"):
        two.add_field("file", clip, filename=name, content_type="audio/wav")
    crowded = aiohttp.FormData({"model": "whisper-1", **{f"x{i}": "y" * 1000 for i in range(100)}})
    crowded.add_field("file", clip, filename="a.wav", content_type="audio/wav")
    async with aiohttp.ClientSession() as http:
        for form, status in ((two, 400), (crowded, 413)):
            async with http.post(url, data=form) as response:
                assert response.status == status
                assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_uploads_past_the_waiting_line_are_refused_before_their_bodies_are_read(
    server: VoiceServer,
) -> None:
    boundary = "voxgraph-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    body = head + librivox(CLIP).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(head) + 1000
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), TIMEOUT)
    try:
        writer.write(request + body[:half])  # the first upload arrives, then its sender pauses
        await writer.drain()
        await until(lambda: active(server, "transcriptions") == 1, "the first upload to arrive")

        async def upload(http: aiohttp.ClientSession) -> int:
            form = aiohttp.FormData({"model": "whisper-1"})
            form.add_field("file", as_wav(bytes(32000), 16000), filename="b.wav", content_type="audio/wav")
            async with http.post(f"{server.url}v1/audio/transcriptions", data=form) as response:
                return response.status

        async with aiohttp.ClientSession() as http:  # max_waiting=0: one place, taken by the slow sender
            statuses = await asyncio.wait_for(asyncio.gather(*(upload(http) for _ in range(3))), TIMEOUT)
        assert statuses == [429, 429, 429]
        writer.write(body[half:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"Dashwood" in answer, answer[:200]


# --- speech ------------------------------------------------------------------------------------------


@pytest.fixture
def muxers(monkeypatch: pytest.MonkeyPatch) -> list[CompressedAudio]:
    """Every speech muxer the routes make from now on."""
    made: list[CompressedAudio] = []

    class Tracked(CompressedAudio):
        def __init__(self, kind: str, rate: int) -> None:
            super().__init__(kind, rate)
            made.append(self)

    monkeypatch.setattr(routes, "CompressedAudio", Tracked)
    return made


async def test_a_refused_or_abandoned_mp3_answer_leaves_no_muxer_open(
    client: AsyncOpenAI, muxers: list[CompressedAudio]
) -> None:
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SPEECH_TEXT * 6
    ) as held:
        await anext(held.iter_bytes())  # the engine's turn is this request's
        with pytest.raises(openai.RateLimitError):
            await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
        assert len(muxers) == 1  # the refused request made none
    # leaving the block hung up mid-answer
    await until(lambda: muxers[0].closed, "the abandoned answer's muxer to be closed")
    assert len(muxers) == 1


async def test_a_client_that_stops_reading_speech_loses_the_engine_after_send_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def slow_link(transport: asyncio.Transport, seconds: float) -> None:
        """No kernel-side timeout (as where TCP_USER_TIMEOUT is missing), and small send buffers: only
        the routes' own write bound can free the engine."""
        raw = transport.get_extra_info("socket")
        if raw is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    monkeypatch.setattr(connections, "_limit_unacknowledged", slow_link)
    body = json.dumps(
        {"model": "tts-1", "voice": "alloy", "input": SPEECH_TEXT * 8, "response_format": "pcm"}
    ).encode()
    request = (
        "POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with serving(*SHARED, "server.send_timeout=0.5") as served:
        client = client_of(served)
        await ready(client)
        loop = asyncio.get_running_loop()
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        with stalled:
            await asyncio.wait_for(loop.sock_connect(stalled, ("127.0.0.1", served.port)), TIMEOUT)
            await loop.sock_sendall(stalled, request + body)  # and never reads a byte of the answer
            await until(lambda: answered(stalled), "the stalled request's turn (its answer's headers)")
            for _ in range(int(TIMEOUT / 0.1)):  # max_waiting=0: 429 while the stalled request holds it
                with contextlib.suppress(openai.RateLimitError):
                    speech = await client.audio.speech.create(
                        model="tts-1", voice="alloy", input="Hello there.", response_format="pcm"
                    )
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the stalled client kept the engine")
            assert len(speech.content) > 24000  # a word or two of 24 kHz speech

            async def closed_by_the_server() -> None:  # what the kernel holds, then the end
                with contextlib.suppress(ConnectionResetError):
                    while await loop.sock_recv(stalled, 65536):
                        pass

            await asyncio.wait_for(closed_by_the_server(), TIMEOUT)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_speech_streams_pcm_and_wav_that_whisper_hears_as_the_input(client: AsyncOpenAI) -> None:
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SPEECH_TEXT, response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers.get("transfer-encoding") == "chunked"
        chunks = [chunk async for chunk in response.iter_bytes()]
    pcm = b"".join(chunks)
    assert len(pcm) % 2 == 0 and 3.0 < len(pcm) / 48000 < 12.0  # 24 kHz 16-bit: 48,000 bytes a second
    heard = await client.audio.transcriptions.create(model="whisper-1", file=("pcm.wav", as_wav(pcm, 24000)))
    assert wer(SPEECH_TEXT, heard.text) <= 0.2, heard.text

    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input=SPEECH_TEXT, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        wav = await response.read()
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt "
    heard = await client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav))
    assert wer(SPEECH_TEXT, heard.text) <= 0.2, heard.text


async def test_speech_in_openais_default_mp3_and_in_opus_is_heard_as_the_input(client: AsyncOpenAI) -> None:
    mp3 = await client.audio.speech.create(model="tts-1", voice="alloy", input=SPEECH_TEXT)  # no format: mp3
    assert mp3.response.headers["content-type"] == "audio/mpeg"
    heard = await client.audio.transcriptions.create(model="whisper-1", file=("speech.mp3", mp3.content))
    assert wer(SPEECH_TEXT, heard.text) <= 0.2, heard.text
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="echo", input=SPEECH_TEXT, response_format="opus"
    ) as response:
        assert response.headers["content-type"] == "audio/ogg"
        opus = await response.read()
    heard = await client.audio.transcriptions.create(model="whisper-1", file=("speech.ogg", opus))
    assert wer(SPEECH_TEXT, heard.text) <= 0.2, heard.text


@pytest.mark.parametrize(
    ("voice", "kind", "param"),
    [("robot", "pcm", "voice"), ("alloy", "m4a", "response_format"), ("alloy", "ogg", "response_format")],
)
async def test_speech_refuses_an_unknown_voice_or_format(
    client: AsyncOpenAI, voice: str, kind: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.audio.speech.create(model="tts-1", voice=voice, input="Hello.", response_format=kind)
    body: Any = refused.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"


# --- chat and models -----------------------------------------------------------------------------------


MESSAGES: Any = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


async def test_chat_streams_chunks_with_usage_and_answers_whole(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=40,
    )
    chunks = [chunk async for chunk in stream]
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.model == "gpt-4o-mini"
    text = "".join(c.choices[0].delta.content or "" for c in middle)
    assert text.strip() and finish.choices[0].finish_reason in ("stop", "length")
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == len(middle) <= 40 and usage.usage.prompt_tokens > 10

    whole = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=40, temperature=0
    )
    assert whole.choices[0].message.content and whole.usage is not None
    cut = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=3
    )
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None
    assert cut.usage.completion_tokens == 3


async def test_chat_refuses_what_it_cannot_serve(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}], temperature=3
        )
    assert refused.value.body["param"] == "temperature"  # type: ignore[index]
    huge: Any = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="m", messages=huge)
    assert refused.value.code == "context_length_exceeded"


async def test_the_synchronous_client_works_too(server: VoiceServer) -> None:
    def chat() -> str:  # in a thread: the sync client must not block the loop serving it
        with openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0) as sync:
            reply = sync.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
            return reply.choices[0].message.content or ""

    assert (await asyncio.wait_for(asyncio.to_thread(chat), TIMEOUT)).strip()


async def test_models_lists_the_served_engines(client: AsyncOpenAI) -> None:
    models = {model.id: model.owned_by async for model in client.models.list()}
    assert models == {"stt": "voxgraph:transcriptions", "tts": "voxgraph:speech", "llm": "voxgraph:chat"}


async def test_a_busy_engine_with_a_full_waiting_line_answers_429(client: AsyncOpenAI) -> None:
    long: Any = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    stream = await client.chat.completions.create(model="m", messages=long, stream=True, max_tokens=150)
    await anext(aiter(stream))  # the engine is this request's now
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="m", messages=long, max_tokens=1)
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.code == "rate_limit_exceeded"
    await stream.close()
    for _ in range(int(TIMEOUT / 0.1)):  # the engine is free again once the first reply stops
        with contextlib.suppress(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=long, max_tokens=1)
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the engine stayed busy after the client hung up")


async def test_the_routes_count_in_the_servers_metrics(server: VoiceServer, client: AsyncOpenAI) -> None:
    await client.models.list()
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}metrics") as response:
        text = await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("voxgraph_openai_requests_total", (("endpoint", "models"), ("status", "200")))] >= 1
    assert samples[("voxgraph_openai_requests_total", (("endpoint", "chat"), ("status", "429")))] >= 1
    assert (
        samples[("voxgraph_openai_requests_total", (("endpoint", "transcriptions"), ("status", "400")))] >= 1
    )
    assert samples[("voxgraph_openai_first_byte_seconds_count", (("endpoint", "speech"),))] >= 2


async def test_a_request_without_max_tokens_gets_the_configs_while_another_sets_its_own() -> None:
    story = "The river runs past the old mill, the bridge and the quiet town square. " * 80
    long: Any = [{"role": "user", "content": f"Summarise this: {story}"}]
    short: Any = [{"role": "user", "content": "Name three colours."}]
    async with serving("server.port=0", "openai.max_waiting=2") as served:
        client = client_of(served)
        await ready(client)
        cut = await client.chat.completions.create(model="m", messages=long, stream=True, max_tokens=1)
        await anext(aiter(cut))  # its turn: max_tokens=1 is in force on the engine while its prompt is read
        plain = await client.chat.completions.create(model="m", messages=short)
        rest = [chunk async for chunk in cut]
    assert rest[-1].choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens > 1, plain


# --- auth and drain ------------------------------------------------------------------------------------


async def test_a_bad_key_is_refused_with_401(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRAPH_API_KEYS", API_KEY)
    async with serving("server.port=0", "server.auth=api_key") as served:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client_of(served, "sk-wrong-key-0123456789").models.list()
        assert refused.value.code == "invalid_api_key"  # OpenAI's error shape, read by the SDK
        assert [m.id async for m in client_of(served, API_KEY).models.list()] == ["stt", "tts", "llm"]


async def test_draining_refuses_new_requests_with_503_and_lets_those_in_flight_finish() -> None:
    async with serving("server.port=0") as served:
        client = client_of(served)
        await ready(client)
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, max_tokens=30
        )
        first = await anext(aiter(stream))
        served.begin_drain(TIMEOUT)
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
        assert refused.value.status_code == 503 and refused.value.code == "draining"
        assert refused.value.response.headers["retry-after"] == "1"
        drained = asyncio.create_task(served.drain())  # no conversation: it stops listening at once
        rest = [chunk async for chunk in stream]  # while the request in flight runs to its end
        assert first.choices[0].delta.role == "assistant" and rest[-1].choices[0].finish_reason
        await asyncio.wait_for(drained, TIMEOUT)
