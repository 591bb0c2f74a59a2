"""Phone calls through Twilio Media Streams, end to end against a fake carrier on 127.0.0.1.

The graph is light (``Answerer`` below speaks a tone per sentence when a key is pressed) so these
tests are about the call: the signed webhook and its TwiML, the signed upgrade and the one-time stream
token, caller audio at 8 kHz, DTMF, bot audio as paced 20 ms μ-law media, marks -> what was heard,
``clear`` at a barge-in, hang-up through Twilio's SDK when the graph ends the call, drain, and the
recorder's call metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import numpy as np
import pytest

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    DTMFFrame,
    Frame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
)
from pipeline.processor import Processor
from tests.fakes.carrier import AUTH_TOKEN, FakeTwilio, FakeTwilioRest, decoded_rms
from tests.spoken_replies import HeardTap, sentences
from transports.telephony import call as call_module
from transports.telephony import twilio_signature
from transports.websocket.server import VoiceServer

BOT_RATE = 8000
HERE = "tests.test_phone_twilio"


class Answerer(Processor):
    """Key ``1``: three 0.3 s sentences; ``2``: three 1.5 s ones; ``*``: a barge-in. Counts caller audio."""

    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, DTMFFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (
        AudioFrame,
        TTSStartedFrame,
        TTSTextFrame,
        BotAudioFrame,
        TTSStoppedFrame,
    )
    caller_audio: ClassVar[dict[int, float]] = {}  # sample rate -> seconds of caller audio seen
    digits: ClassVar[list[str]] = []

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, UserAudioFrame):
            Answerer.caller_audio[frame.sample_rate] = (
                Answerer.caller_audio.get(frame.sample_rate, 0) + frame.duration
            )
            await self.push(frame)
            return
        if not isinstance(frame, DTMFFrame):
            return
        Answerer.digits.append(frame.digit)
        if frame.digit == "*":
            await self.interrupt()
        elif frame.digit in "12":
            await self._reply(1500 if frame.digit == "2" else 300)

    async def _reply(self, ms: int) -> None:
        for frame in sentences(3, ms, BOT_RATE):
            await self.push(frame)


def graph(recordings: Path, rest_url: str, extra: str = "") -> str:
    return f"""
name: phone-test
server: {{type: websocket, port: 0, max_sessions: 25}}
settings: {{end_timeout: 3.0, cancel_timeout: 2.0, auto_resample: true}}
nodes:
  mic: {{type: phone.input, twilio_api_url: "{rest_url}"{extra}}}
  answer: {{type: "{HERE}:Answerer"}}
  heard: {{type: "tests.spoken_replies:HeardTap"}}
  recorder: {{type: recorder, directory: "{recordings}"}}
  speaker: {{type: phone.output}}
edges:
  - mic -> answer -> heard -> recorder -> speaker
"""


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    for name in ("TWILIO_REGION", "TWILIO_EDGE"):
        monkeypatch.delenv(name, raising=False)
    Answerer.caller_audio.clear()
    Answerer.digits.clear()
    HeardTap.spoken.clear()


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, extra: str = "") -> AsyncIterator[tuple[VoiceServer, FakeTwilioRest]]:
    rest = FakeTwilioRest()
    await rest.start()
    compiled, problems = config.compile_text(graph(tmp_path, rest.url, extra), "<test>")
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    try:
        yield server, rest
    finally:
        await asyncio.wait_for(server.stop(), 30)
        await rest.stop()


async def ended(server: VoiceServer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while server.sessions:
        assert time.monotonic() < deadline, "the call did not end"
        await asyncio.sleep(0.02)


def transcripts(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*/transcript.json"))]


async def test_a_call_end_to_end(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, rest):
        carrier = FakeTwilio(server.url)
        url, parameters = await carrier.answer()
        assert url == f"ws://127.0.0.1:{server.port}/twilio"
        assert set(parameters) == {"token", "caller", "called"} and parameters["caller"] == carrier.caller
        await carrier.open_stream(url, parameters)
        speech = (np.sin(2 * math.pi * 200 * np.arange(8000) / 8000) * 6000).astype("<i2").tobytes()
        await carrier.speak(speech, dtmf_at={49: "1"})  # 1 s of caller audio, key 1 before its end
        await carrier.until(lambda: len(carrier.played.marks) == 3, "three sentences heard")
        await carrier.until(
            lambda: carrier.queued_seconds == 0 and len(carrier.played.pcm) >= 2 * 8000 * 0.85,
            "the reply played",
        )
        await carrier.stop()
        await ended(server)
    assert carrier.violations == []
    assert Answerer.digits == ["1"]
    assert set(Answerer.caller_audio) == {8000} and Answerer.caller_audio[8000] == pytest.approx(
        1.0, abs=0.05
    )
    # 0.9 s of bot audio, resampled from 24 kHz to 8 kHz by the graph, arrived as 20 ms messages
    media = carrier.of("media")
    assert {len(m["media"]["payload"]) for m in media} == {216}  # 160 μ-law bytes each
    assert len(carrier.played.pcm) / 2 / 8000 == pytest.approx(0.9, abs=0.03)
    assert decoded_rms(bytes(carrier.played.pcm)) > 3000
    # a mark before each sentence, each echoed as played: the caller heard all three
    assert [m["mark"]["name"] for m in carrier.of("mark")] == carrier.played.marks
    assert HeardTap.spoken == ["Sentence 0.", "Sentence 1.", "Sentence 2."]
    assert rest.requests == []  # the caller hung up: nothing to hang up
    [transcript] = transcripts(tmp_path)
    assert transcript["metadata"] == {
        "carrier": "twilio",
        "call_id": carrier.call_sid,
        "stream_id": carrier.stream_sid,
        "caller": carrier.caller,
        "called": carrier.called,
    }


async def test_forged_unsigned_and_replayed_requests_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, _):
        carrier = FakeTwilio(server.url)
        assert (await carrier.ring(signature=None)).status == 403  # unsigned
        assert (await carrier.ring(signature="Aq3J4ARZrNrpTIMITgDjappXE/k=")).status == 403  # forged
        signed = carrier.webhook_form()

        sig = twilio_signature.compute(AUTH_TOKEN, f"{carrier.server_url}/twilio/voice", signed)
        replayed = {**signed, "From": "+15550000000"}
        assert (await carrier.ring(replayed, signature=sig)).status == 403  # another caller, same signature
        url, parameters = await carrier.answer()
        for bad in (None, "jv31GfTxPUcTBiKdnswIUT4zC/0="):  # unsigned, signed for another URL
            async with FakeTwilio(server.url) as forger:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await forger.open_stream(url, parameters, signature=bad)
            assert refused.value.status == 403
        # a signed upgrade without the token, or with a token minted for another call: closed, no call
        for params in ({**parameters, "token": ""}, {**parameters}):
            other = FakeTwilio(server.url, call_number=2 if params["token"] else 3)
            await other.open_stream(url, params)
            await other.wait_closed()
            assert other.ws is not None and other.ws.close_code == 1008
            await other.close()
        # the real call's token works once; the same start replayed is refused
        await carrier.open_stream(url, parameters)
        await carrier.until(lambda: bool(server.sessions), "the call")
        replay = FakeTwilio(server.url)
        await replay.open_stream(url, parameters)
        await replay.wait_closed()
        assert replay.ws is not None and replay.ws.close_code == 1008
        await replay.close()
        await carrier.stop()
        await ended(server)
    assert carrier.violations == []


async def test_a_signed_upgrade_that_never_starts_is_ended_and_counted_as_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade's signature is the same for every call: without an admitted start it holds no slot."""
    monkeypatch.setattr(call_module, "START_TIMEOUT", 0.5)
    async with serving(tmp_path) as (server, _):
        carrier = FakeTwilio(server.url)
        url, _parameters = await carrier.answer()
        headers = {twilio_signature.HEADER: twilio_signature.compute(AUTH_TOKEN, url, None)}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            closed = await ws.receive(timeout=10.0)  # no start: the server ends the stream
            assert closed.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
        await ended(server)
        async with aiohttp.ClientSession() as http, http.get(server.url + "metrics") as response:
            text = await response.text()
        assert 'voxgraph_sessions_total{outcome="refused"} 1.0' in text
        assert 'voxgraph_sessions_total{outcome="flood"} 0.0' in text
        await carrier.close()


async def test_barge_in_clears_at_once_and_only_heard_text_is_kept(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, _):
        carrier = FakeTwilio(server.url)
        await carrier.call()
        await carrier.silence(0.2)
        await carrier.dtmf("2")  # three 1.5 s sentences
        await carrier.until(lambda: len(carrier.played.pcm) >= 2 * 8000 * 2.0, "2 s of the reply played")
        barged = time.monotonic()
        await carrier.dtmf("*")
        await carrier.until(lambda: bool(carrier.cleared_at), "a clear")
        latency = carrier.cleared_at[0] - barged
        await carrier.silence(0.5)
        await carrier.stop()
        await ended(server)
    assert carrier.violations == []
    print(f"barge-in (key) to clear: {latency * 1000:.1f} ms")
    # nothing was sent after the clear; the caller heard about 2 s, not 4.5
    clear_at = carrier.cleared_at[0]
    assert not [t for t in carrier.times_of("media") if t > clear_at]
    assert len(carrier.played.pcm) / 2 / 8000 < 3.0
    # the second sentence was playing: heard; the third was cleared before it began
    assert HeardTap.spoken == ["Sentence 0.", "Sentence 1."]
    [transcript] = transcripts(tmp_path)
    assert transcript["metadata"]["caller"] == carrier.caller


async def test_when_the_graph_ends_the_call_it_is_hung_up_through_the_sdk(tmp_path: Path) -> None:
    async with serving(tmp_path, ", max_call_seconds: 1.0") as (server, rest):
        carrier = FakeTwilio(server.url)
        await carrier.call()
        speaking = asyncio.create_task(carrier.silence(5.0))
        await asyncio.wait_for(rest.hung_up.wait(), 10)
        await carrier.wait_closed()
        speaking.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
            await speaking
        await carrier.close()
        await ended(server)
    [request] = rest.requests
    assert request == {
        "account": "AC" + "a" * 32,
        "call": carrier.call_sid,
        "form": {"Status": "completed"},
        "auth_ok": True,
    }


async def test_a_draining_server_refuses_new_calls_and_live_ones_go_on(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, _):
        live = FakeTwilio(server.url)
        await live.call()
        async with (
            FakeTwilio(server.url, call_number=2) as second,
            FakeTwilio(server.url, call_number=3) as third,
        ):
            url, parameters = await second.answer()
            server.begin_drain(30)
            assert (await third.ring()).status == 503
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await second.open_stream(url, parameters)
            assert refused.value.status == 503
        await live.dtmf("1")
        await live.until(lambda: len(live.played.marks) == 3, "the live call's reply")
        await live.stop()
        await ended(server)
    assert live.violations == []
    # the server's one session path: counted and refused exactly as browser conversations are
    sample = server.metrics.registry.get_sample_value
    assert sample("voxgraph_connections_refused_total", {"reason": "draining"}) == 2  # webhook, upgrade
    assert sample("voxgraph_sessions_total", {"outcome": "normal"}) == 1
    assert sample("voxgraph_sessions_active") == 0


@pytest.mark.slow
async def test_outbound_audio_is_paced_in_real_time_20ms_messages(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, _):
        carrier = FakeTwilio(server.url)
        await carrier.call()
        await carrier.dtmf("2")  # 4.5 s of bot audio, made much faster than real time
        await carrier.until(
            lambda: len(carrier.of("mark")) == 3 and carrier.queued_seconds == 0, "the reply", 20
        )
        await carrier.until(lambda: len(carrier.played.pcm) >= 2 * 8000 * 4.45, "the reply played", 10)
        await carrier.stop()
        await ended(server)
    times = np.array(carrier.times_of("media"))
    assert len(times) == 225  # 4.5 s in 20 ms messages
    span = times[-1] - times[0]
    # sent over the reply's own duration (less the lead sent at once), not in a burst
    assert 4.2 < span < 4.8, span
    gaps = np.diff(times[10:])  # after the lead
    jitter = np.percentile(abs(gaps - 0.02), 99)
    print(f"pacing: mean {gaps.mean() * 1000:.2f} ms, p99 |gap - 20 ms| {jitter * 1000:.1f} ms")
    assert gaps.mean() == pytest.approx(0.020, abs=0.002)
    # never ahead of playback by more than the lead: the carrier's queue stays short
    assert carrier.violations == []
