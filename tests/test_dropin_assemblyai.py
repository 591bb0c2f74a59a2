"""AssemblyAI v3 streaming served by Voxgraph (``configs/serve-assemblyai.yaml``), driven by the official
SDK (``assemblyai`` ``AsyncStreamingClient``) and by a raw websocket for what the SDK never sends.

The server is the real one (``VoiceServer``: auth, limits, drain, metrics) with the real graph (Silero
VAD, Whisper tiny.en); the speech is a LibriVox clip. Word error rates are measured against the clip's
reference text with the tolerance Whisper tiny.en meets on it elsewhere (0.25).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import aiohttp
import numpy as np
import pytest
from assemblyai.streaming import v3

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.config import ServerSettings
from pipeline.conformance import check_stt
from pipeline.frames import Frame, TranscriptFrame, UserAudioFrame
from pipeline.processor import Processor
from pipeline.registry import register
from processors.stt.assemblyai import AssemblyAISTT
from tests.certificates import self_signed
from tests.hearing import wer
from tests.speech import LIBRIVOX, librivox, read_wav
from tests.test_conformance_engines import SAID, speech
from transports.dropin import assemblyai_session
from transports.dropin import assemblyai_wire as wire
from transports.dropin.assemblyai import StreamingRoutes
from transports.dropin.assemblyai_wire import StreamingConfig, WireError
from transports.websocket.auth import Attempt, Guard, Keys, Policy, Scope, guard_for
from transports.websocket.server import VoiceServer

CONFIG = Path(__file__).parent.parent / "configs" / "serve-assemblyai.yaml"
CLIP = "sense_and_sensibility_01_austen_64kb-0870.wav"
MAX_WER = 0.25
RATE = 16000
CHUNK = RATE // 20  # 50 ms, what the service expects
KEY = "test-key-0123456789abcdef"
TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def served(*overrides: str) -> AsyncIterator[VoiceServer]:
    """``serve-assemblyai`` on a free loopback port, models warm (``overrides``: ``--set`` lines)."""
    text = CONFIG.read_text()
    compiled, problems = config.compile_text(text, str(CONFIG), ["server.port=0", *overrides])
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    await server.warm_up()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), 60)


@register("tests.stalled_stt")
class StalledSTT(Processor):
    """An STT slower than real time: it takes one frame and never finishes it."""

    handles: ClassVar[tuple[type[Frame], ...]] = (UserAudioFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TranscriptFrame,)

    async def process(self, frame: UserAudioFrame) -> None:
        await asyncio.Event().wait()  # cancelled when the session ends


STALLED = """
name: stalled
server: {type: websocket, host: 127.0.0.1, port: 0}
nodes:
  client: {type: assemblyai.input}
  stt: {type: tests.stalled_stt}
  out: {type: assemblyai.output}
edges:
  - client -> stt -> out
"""


def host(server: VoiceServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


@dataclass
class Events:
    """What an SDK client received, in order, and when."""

    begin: Any = None
    turns: list[Any] = field(default_factory=list)
    turn_times: list[float] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    termination: Any = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, client: v3.AsyncStreamingClient) -> None:
        def keep(name: str) -> Callable[[Any, Any], None]:
            def handler(_client: Any, event: Any) -> None:
                if name == "turns":
                    self.turns.append(event)
                    self.turn_times.append(time.monotonic())
                elif name == "errors":
                    self.errors.append(event)
                else:
                    setattr(self, name, event)
                self.changed.set()

            return handler

        client.on(v3.StreamingEvents.Begin, keep("begin"))
        client.on(v3.StreamingEvents.Turn, keep("turns"))
        client.on(v3.StreamingEvents.Error, keep("errors"))
        client.on(v3.StreamingEvents.Termination, keep("termination"))

    async def until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    def finals(self, formatted: bool) -> list[Any]:
        return [t for t in self.turns if t.end_of_turn and t.turn_is_formatted == formatted]


def clip_pcm(name: str = CLIP, lead: float = 0.5, tail: float = 1.5) -> bytes:
    samples, rate = read_wav(librivox(name))
    assert rate == RATE
    silence = np.zeros(round(lead * RATE), np.int16), np.zeros(round(tail * RATE), np.int16)
    return np.concatenate([silence[0], samples, silence[1]]).astype("<i2").tobytes()


def chunks(pcm: bytes, size: int = CHUNK) -> list[bytes]:
    whole = pcm + bytes(-len(pcm) % (2 * size))
    return [whole[i : i + 2 * size] for i in range(0, len(whole), 2 * size)]


async def connect(server: VoiceServer, events: Events, **params: Any) -> v3.AsyncStreamingClient:
    options = v3.StreamingClientOptions(api_key=params.pop("api_key", KEY), api_host=host(server))
    token = params.pop("token", None)
    if token is not None:
        options = v3.StreamingClientOptions(token=token, api_host=host(server))
    client = v3.AsyncStreamingClient(options)
    events.attach(client)
    await client.connect(v3.StreamingParameters(sample_rate=RATE, **params))
    return client


async def stream(client: v3.AsyncStreamingClient, pcm: bytes, realtime: bool) -> float:
    """Send ``pcm`` in 50 ms messages (paced in real time, or at once); the loop time it ended."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i, piece in enumerate(chunks(pcm)):
        if realtime:
            await asyncio.sleep(max(0.0, began + i * 0.05 - loop.time()))
        await client.stream(piece)
    return loop.time()


@pytest.mark.slow
async def test_the_sdk_transcribes_a_librivox_clip_in_the_tutorials_flow() -> None:
    async with served() as server:
        events = Events()
        client = await connect(server, events, format_turns=True)
        await events.until(lambda: events.begin is not None)
        pcm = clip_pcm()
        await stream(client, pcm, realtime=True)
        await events.until(lambda: bool(events.finals(formatted=True)))
        await client.disconnect(terminate=True)
        await events.until(lambda: events.termination is not None)
    assert not events.errors
    said = LIBRIVOX[CLIP]
    partials = [t for t in events.turns if not t.end_of_turn]
    assert partials and all(t.turn_order == 0 for t in partials)
    plain, formatted = events.finals(formatted=False), events.finals(formatted=True)
    assert len(plain) == len(formatted) >= 1
    text = " ".join(t.transcript for t in formatted)
    assert wer(said, text) <= MAX_WER, text
    assert plain[0].transcript == plain[0].transcript.lower()
    words = [w for t in formatted for w in t.words]
    assert all(w.word_is_final for w in words)
    assert 400 <= words[0].start < words[-1].end <= len(pcm) / 2 / RATE * 1000
    assert events.termination.audio_duration_seconds == round(len(chunks(pcm)) * 0.05)


async def raw_session(
    server: VoiceServer,
    query: str,
    send: Sequence[bytes | str],
    *,
    key: str | None = KEY,
    pace: float = 0.0,
) -> tuple[list[dict[str, Any]], int | None]:
    """A raw websocket client: send ``send`` in order, read to the close; (messages, close code)."""
    headers = {"Authorization": key} if key is not None else {}
    received: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{host(server)}/v3/ws?{query}", headers=headers) as ws,
    ):
        for message in send:
            if ws.closed:
                break
            await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
            if pace:
                await asyncio.sleep(pace)  # pacing a live stream, not waiting for an event
        async with asyncio.timeout(TIMEOUT):
            async for reply in ws:
                if reply.type is aiohttp.WSMsgType.TEXT:
                    received.append(json.loads(reply.data))
        return received, ws.close_code


def bearer_of(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def the_error(messages: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [m for m in messages if m["type"] == "Error"]
    assert len(errors) == 1, messages
    return errors[0]


async def test_bad_configuration_and_chunks_are_refused_with_the_services_codes() -> None:
    async with served() as server:
        for query in (
            "sample_rate=abc",
            "sample_rate=0",
            "sample_rate=16000&encoding=opus",
            "sample_rate=16000&speech_model=nope",
            "sample_rate=16000&end_of_turn_confidence_threshold=2",
            "sample_rate=16000&inactivity_timeout=1",
            "sample_rate=16000&format_turns=maybe",
        ):
            messages, code = await raw_session(server, query, [])
            assert code == 3006 and the_error(messages)["error_code"] == 3006, (query, messages)
            assert "Begin" not in kinds(messages)
        small, large = bytes(2 * RATE // 50), bytes(2 * RATE * 3 // 2)  # 20 ms, 1.5 s
        for chunk, said in ((small, "20 ms"), (large, "1500 ms")):
            messages, code = await raw_session(server, "sample_rate=16000", [chunk])
            assert code == 3007, messages
            assert kinds(messages)[0] == "Begin"
            assert (
                said in the_error(messages)["error"]
                and "Expected between 50 and 1000 ms" in the_error(messages)["error"]
            )
        for text, said in (
            ("{nope", "Invalid JSON"),
            ('{"type": "Shout"}', "Invalid Message Type"),
            ("[]", "Invalid Message"),
            ('{"type": "UpdateConfiguration", "colour": "red"}', "Invalid Message"),
            ('{"type": "UpdateConfiguration", "max_turn_silence": -5}', "Invalid max_turn_silence"),
        ):
            messages, code = await raw_session(server, "sample_rate=16000", [text])
            assert code == 3006 and said in the_error(messages)["error"], (text, messages)
        # What the service takes goes on: a mu-law stream at 8 kHz, updates, keep-alives, then Terminate.
        ok: list[bytes | str] = [
            bytes(400),
            '{"type": "KeepAlive"}',
            '{"type": "UpdateConfiguration", "max_turn_silence": 900}',
            '{"type": "ForceEndpoint"}',
            '{"type": "Terminate"}',
        ]
        messages, code = await raw_session(
            server, "sample_rate=8000&encoding=pcm_mulaw&format_turns=True", ok
        )
        assert code == 1000 and kinds(messages) == ["Begin", "Termination"], messages
    assert server.metrics is not None


async def test_the_sdk_sees_a_bad_sample_rate_as_an_error() -> None:
    async with served() as server:
        events = Events()
        options = v3.StreamingClientOptions(api_key=KEY, api_host=host(server))
        client = v3.AsyncStreamingClient(options)
        events.attach(client)
        await client.connect(v3.StreamingParameters(sample_rate=7))  # type: ignore[call-arg]
        await events.until(lambda: bool(events.errors))
        await client.disconnect()
    assert events.begin is None and events.errors[0].code == 3006


async def test_keys_and_temporary_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRAPH_API_KEYS", KEY)
    async with served("server.auth=api_key") as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}/v3/token"
        for headers, status in (
            ({}, 401),
            ({"Authorization": "wrong-key-0123456789"}, 401),
            ({"Authorization": KEY}, 400),
        ):
            async with http.get(base, headers=headers) as response:
                assert response.status == status
        # The SDK's call (https only: see the TLS test), made as it makes it: the key raw.
        params = {"expires_in_seconds": "60", "max_session_duration_seconds": "60"}
        async with http.get(base, params=params, headers={"Authorization": KEY}) as response:
            token = (await response.json())["token"]
        async with http.get(
            base, params={"expires_in_seconds": "60"}, headers={"Authorization": token}
        ) as response:
            assert response.status == 401  # a token mints no tokens

        refused = Events()
        client = await connect(server, refused, api_key="wrong-key-0123456789")
        await refused.until(lambda: bool(refused.errors))
        await client.disconnect()
        assert refused.begin is None and refused.errors[0].code == 1008
        messages, code = await raw_session(server, "sample_rate=16000", [], key=None)
        assert code == 1008 and the_error(messages)["error_code"] == 1008

        for use, expect_begin in ((1, True), (2, False)):  # single-use
            seen = Events()
            client = await connect(server, seen, token=token)
            await seen.until(lambda seen=seen: seen.begin is not None or bool(seen.errors))  # type: ignore[misc]
            await client.disconnect(terminate=True)
            assert (seen.begin is not None) is expect_begin, use
            if expect_begin:  # the session lasts what the token asked for
                assert seen.begin.expires_at.timestamp() - time.time() <= 61
        messages, code = await raw_session(server, "sample_rate=16000", ['{"type": "Terminate"}'])
        assert code == 1000 and kinds(messages) == ["Begin", "Termination"]

        # Sent as Bearer, a token keeps the session limit it asked for.
        async with http.get(base, params=params, headers={"Authorization": KEY}) as response:
            bearer = (await response.json())["token"]
        messages, code = await raw_session(
            server, "sample_rate=16000", ['{"type": "Terminate"}'], key=f"Bearer {bearer}"
        )
        assert kinds(messages)[0] == "Begin" and messages[0]["expires_at"] - time.time() <= 61

        # Each token opens only its own route: a /v3 token nothing else, a /ws token not /v3/ws. Tokens
        # live at most server.token_ttl, however long they ask.
        long = {"expires_in_seconds": "600"}
        async with http.get(base, params=long, headers={"Authorization": KEY}) as response:
            v3_token = (await response.json())["token"]
        claims = server.guard.signer.verify(v3_token, time.time())
        assert claims.expires_at - time.time() <= server.guard.token_ttl == 300
        root = f"http://127.0.0.1:{server.port}"
        for method, path in (("GET", "/api/conversations"), ("POST", "/v1/chat/completions")):
            async with http.request(method, root + path, headers=bearer_of(v3_token)) as response:
                assert response.status == 401, path
        async with http.get(f"{root}/ws", params={"token": v3_token}) as response:
            assert response.status == 401
        async with http.post(f"{root}/api/session-token", headers=bearer_of(KEY)) as response:
            browser = (await response.json())["token"]
        messages, code = await raw_session(server, "sample_rate=16000", [], key=browser)
        assert code == 1008 and "token not valid here" in the_error(messages)["error"]
        terminate = ['{"type": "Terminate"}']
        messages, code = await raw_session(server, "sample_rate=16000", terminate, key=v3_token)
        assert code == 1000 and kinds(messages) == ["Begin", "Termination"]  # its own route, once


async def test_sessions_are_limited_drained_and_counted_like_every_served_session() -> None:
    async with served("server.max_sessions=1") as server, aiohttp.ClientSession() as http:
        url = f"{host(server)}/v3/ws?sample_rate=16000"
        async with http.ws_connect(url, headers={"Authorization": KEY}) as first:
            assert json.loads((await first.receive(timeout=TIMEOUT)).data)["type"] == "Begin"
            messages, code = await raw_session(server, "sample_rate=16000", [])
            assert code == 1013 and the_error(messages)["error_code"] == 1013  # full: try again later
            server.begin_drain(timeout=30)
            async with http.get(url, headers={"Authorization": KEY}) as refused:
                assert refused.status == 503  # draining: before the upgrade, so a balancer retries
            await first.send_str('{"type": "Terminate"}')  # the live session goes on to its end
            ended = [json.loads(m.data) async for m in first if m.type is aiohttp.WSMsgType.TEXT]
            assert kinds(ended) == ["Termination"] and first.close_code == 1000
        async with http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
            metrics = await response.text()
    assert 'voxgraph_sessions_total{outcome="normal"} 1.0' in metrics
    assert 'voxgraph_connections_refused_total{reason="full"} 1.0' in metrics


async def test_the_clients_turn_settings_reach_its_sessions_vad() -> None:
    async with served() as server, aiohttp.ClientSession() as http:
        url = f"{host(server)}/v3/ws?sample_rate=16000&max_turn_silence=900&vad_threshold=0.6"
        async with http.ws_connect(url, headers={"Authorization": KEY}) as ws:
            assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "Begin"
            (session,) = server.sessions.values()
            vad = session.graph.processors["vad"].params
            assert (vad.stop_secs, vad.threshold) == (0.9, 0.6)
            await ws.send_str('{"type": "UpdateConfiguration", "max_turn_silence": 1500}')
            await ws.send_str('{"type": "Terminate"}')
            assert [json.loads(m.data)["type"] async for m in ws] == ["Termination"]
            assert vad.stop_secs == 1.5
        async with http.ws_connect(f"{host(server)}/v3/ws?sample_rate=16000") as ws:
            assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "Begin"
            (session,) = server.sessions.values()
            assert session.graph.processors["vad"].params.stop_secs == 0.5  # unnamed: the config's
            await ws.send_str('{"type": "Terminate"}')


async def test_a_client_that_goes_quiet_is_ended_and_billed() -> None:
    async with served("server.idle_timeout=1") as server:
        loop = asyncio.get_running_loop()
        began = loop.time()
        second = [bytes(2 * CHUNK)] * 20  # 1 s of audio, then nothing: no Terminate
        messages, code = await raw_session(server, "sample_rate=16000", second)
        took = loop.time() - began
    assert code == 1000 and kinds(messages) == ["Begin", "Termination"], messages
    ended = messages[-1]
    assert ended["audio_duration_seconds"] == 1
    assert 1 <= ended["session_duration_seconds"] <= round(took) + 1


@pytest.mark.slow
async def test_force_endpoint_ends_the_turn_the_vad_would_hold_open() -> None:
    # A VAD that waits 30 s of silence: only ForceEndpoint can end this turn. The client streams on
    # (a live microphone does), so the recogniser gets its post-roll after the cut.
    async with served("vad.stop_secs=30") as server:
        events = Events()
        client = await connect(server, events)
        await events.until(lambda: events.begin is not None)
        await stream(client, clip_pcm("0880", tail=0.5), realtime=False)
        await client.force_endpoint()
        silence = asyncio.ensure_future(stream(client, bytes(2 * RATE * 5), realtime=True))
        await events.until(lambda: bool(events.finals(formatted=False)))
        silence.cancel()
        finals = events.finals(formatted=False)
        await client.disconnect(terminate=True)
        await events.until(lambda: events.termination is not None)
    assert wer(LIBRIVOX[next(k for k in LIBRIVOX if "0880" in k)], finals[0].transcript) <= MAX_WER
    assert not events.finals(formatted=True)  # format_turns is off by default


@pytest.mark.slow
async def test_the_assemblyai_node_passes_the_stt_conformance_check_against_the_served_route() -> None:
    # Bounds for a loaded CI machine: the last turn is transcribed after Terminate, on shared cores.
    async with served("settings.end_timeout=60") as server:
        transcripts = await check_stt(
            lambda: AssemblyAISTT(
                name="stt", api_key=KEY, api_host=host(server), connect_timeout=5.0, terminate_timeout=60.0
            ),
            speech().script,
            timeout=TIMEOUT,
        )
    assert wer(f"{SAID} {SAID}", " ".join(transcripts)) <= MAX_WER, transcripts


def test_the_wire_reads_the_query_as_the_sdk_writes_it() -> None:
    sdk_query = {
        "sample_rate": "16000",
        "encoding": "pcm_s16le",
        "speech_model": "u3-rt-pro",
        "format_turns": "True",
        "end_of_turn_confidence_threshold": "0.7",
        "min_turn_silence": "160",
        "max_turn_silence": "1200",
        "keyterms_prompt": '["Dashwood"]',
        "inactivity_timeout": "30",
        "speaker_labels": "true",
    }
    parsed = wire.parse_query(sdk_query)
    assert parsed == StreamingConfig(
        speech_model="u3-rt-pro",
        format_turns=True,
        end_of_turn_confidence_threshold=0.7,
        min_turn_silence=160,
        max_turn_silence=1200,
        keyterms_prompt=["Dashwood"],
        inactivity_timeout=30,
        extra={"speaker_labels": True},
        given=set(sdk_query) - {"sample_rate", "encoding", "speech_model"},
    )
    wire.apply(parsed, {"min_end_of_turn_silence_when_confident": 300})
    assert parsed.min_turn_silence == 300
    with pytest.raises(WireError) as refused:
        wire.apply(parsed, {"min_turn_silence": 5000})
    assert refused.value.code == 3006
    assert (
        wire.check_chunk(1600, parsed) == 50.0
        and wire.check_chunk(800, wire.parse_query({"sample_rate": "16000", "encoding": "pcm_mulaw"})) == 50.0
    )
    assert json.loads(wire.termination(1.4, 2.6)) == {
        "type": "Termination",
        "audio_duration_seconds": 1,
        "session_duration_seconds": 3,
    }
    assert [wire.unformatted(w) for w in ("Mr.", "Dashwood's,", "“Hello”", "--")] == [
        "mr",
        "dashwood's",
        "hello",
        "",
    ]


async def test_the_sdk_with_a_bare_host_reaches_a_tls_server_and_fetches_its_own_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bare api_host means https:// for tokens and wss:// for sessions: with TLS the SDK needs no
    # other change than its host (the certificate is trusted through SSL_CERT_FILE).
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("VOXGRAPH_API_KEYS", KEY)
    tls = (f"server.tls_cert={cert}", f"server.tls_key={key}", "server.auth=api_key")
    async with served(*tls) as server:
        bare = f"127.0.0.1:{server.port}"
        minter = v3.AsyncStreamingClient(v3.StreamingClientOptions(api_key=KEY, api_host=bare))
        token = await minter.create_temporary_token(expires_in_seconds=60)
        await minter.disconnect()
        events = Events()
        client = v3.AsyncStreamingClient(v3.StreamingClientOptions(token=token, api_host=bare))
        events.attach(client)
        await client.connect(v3.StreamingParameters(sample_rate=RATE))  # type: ignore[call-arg]
        await events.until(lambda: events.begin is not None or bool(events.errors))
        await client.disconnect(terminate=True)
        await events.until(lambda: events.termination is not None or bool(events.errors))
    assert not events.errors and events.termination is not None


def test_raw_keys_open_only_the_assemblyai_routes() -> None:
    env = {"VOXGRAPH_API_KEYS": KEY}
    guard = guard_for(ServerSettings(auth="api_key"), "serve-assemblyai", env)

    def attempt(path: str, authorization: str | None, upgrade: bool = True) -> Attempt:
        return Attempt("GET", path, authorization=authorization, upgrade=upgrade)

    assert guard.check(attempt("/v3/ws", None)).allowed  # the route decides, to answer in band
    assert guard.check_socket(attempt("/v3/ws", KEY)).allowed
    assert guard.check_socket(attempt("/v3/ws", f"Bearer {KEY}")).allowed
    assert guard.check_socket(attempt("/v3/ws", "wrong-key-0123456789")).status == 401
    assert guard.check(attempt("/v3/token", KEY, upgrade=False)).allowed
    assert guard.check(attempt("/v3/token", None, upgrade=False)).status == 401
    assert guard.check(attempt("/ws", KEY)).status == 401  # elsewhere a key is a Bearer key only
    assert guard.check(attempt("/api/session-token", KEY, upgrade=False)).status == 401
    browser = guard.mint()["token"]
    assert guard.check_socket(attempt("/v3/ws", browser)).reason == "token not valid here"
    token, _ = guard.issue(60, Scope("serve-assemblyai", route="/v3/ws"))
    assert guard.check(attempt("/v3/token", token, upgrade=False)).status == 401  # tokens mint nothing
    assert guard.check_socket(attempt("/v3/ws", token)).allowed
    assert guard.check_socket(attempt("/v3/ws", token)).status == 401  # single-use


async def test_a_graph_too_far_behind_ends_the_session_with_3007_and_drops_nothing_unsaid(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(assemblyai_session, "BUFFERED_SECONDS", 1.0)  # 60 s would take 30 s of waiting
    compiled, problems = config.compile_text(STALLED, "<test>", [])
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    try:
        audio = [bytes(2 * CHUNK)] * 400  # 20 s at once: within the rate slack
        messages, code = await raw_session(server, "sample_rate=16000", audio, key=None)
    finally:
        await asyncio.wait_for(server.stop(), TIMEOUT)
    assert code == 3007 and kinds(messages) == ["Begin", "Error"], messages
    assert "too far behind" in the_error(messages)["error"]
    assert not [r for r in caplog.records if "dropping the oldest" in r.getMessage()]


def test_a_temporary_tokens_session_limit_holds_however_it_is_sent_on_the_guards_clock() -> None:
    past = 1_000_000_000.0  # the guard's clock, not the machine's, says whether a token is alive
    guard = Guard(Policy(), keys=Keys([KEY]), config_name="c", clock=lambda: past)
    routes = StreamingRoutes(SimpleNamespace(guard=guard))  # type: ignore[arg-type]
    for how in ("raw", "bearer", "query"):
        text, token = guard.issue(60, Scope("c", route="/v3/ws"))
        routes._remember(token.id, token.expires_at, 120)
        attempt = {
            "raw": Attempt("GET", "/v3/ws", authorization=text, upgrade=True),
            "bearer": Attempt("GET", "/v3/ws", authorization=f"Bearer {text}", upgrade=True),
            "query": Attempt("GET", "/v3/ws", query_token=text, upgrade=True),
        }[how]
        assert routes._session_seconds(attempt) == 120, how
