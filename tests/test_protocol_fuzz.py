"""Fuzzing both wire protocols: malformed messages always get an error, never a crash or a lost session.

A seeded generator makes each kind of bad message a client can send (random bytes, odd or truncated
PCM, bad JSON, deep nesting, wrong types, strings near and over the limit, bad base64, broken WAV
headers, compressed containers). Most of it runs Sans-I/O against ``parse_text`` / ``parse_binary``;
a few thousand per protocol go through a live server, in batches small enough that no error reply is
dropped, and the session must still answer afterwards.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import aiohttp
import numpy as np
import pytest

from pipeline.frames import Frame, TranscriptFrame, UserStoppedSpeakingFrame
from pipeline.processor import Processor
from tests.test_websocket_server import COUNTER_GRAPH, TIMEOUT, _until, serving
from transports.websocket import protocol, whisper_protocol
from transports.websocket.protocol import MAX_TEXT_CHARS, ProtocolError
from transports.websocket.session import Wire

SEED = 20261203
SANS_IO_COUNT = 10_000  # malformed messages per protocol, parsed directly
LIVE_COUNT = 3_000  # malformed messages per protocol, through a live server
BATCH = 32  # sent before awaiting their errors: the outbox (64) never has to drop one
LIMIT = 16384  # max_message_bytes here (the socket's hard limit is four times that)

Fuzz = Callable[[random.Random], str | bytes]
TEXT_POOL = '{}[]":,\\ \t\n0123456789.eE+-truefalsnul\u00e9\u2028\u0000\U0001f600abcxyz/'


# --- malformed messages --------------------------------------------------------------------------


def _random_text(rng: random.Random, size: int = 0) -> str:
    return "".join(rng.choice(TEXT_POOL) for _ in range(size or rng.randrange(1, 200)))


def _bad_json(rng: random.Random) -> str:
    """Text that is not a JSON object (random, truncated, or another JSON value)."""
    choice = rng.randrange(4)
    if choice == 0:
        text = _random_text(rng)
        try:
            return text if not isinstance(json.loads(text), dict) else "{" + text
        except ValueError:
            return text
    if choice == 1:  # a valid message cut short: never valid JSON
        whole = json.dumps({"type": rng.choice(["start", "ptt", "text", "audio"]), "pressed": True})
        return whole[: rng.randrange(1, len(whole))]
    if choice == 2:
        return json.dumps(rng.choice([[1, 2], 3.5, "start", None, True, [{"type": "start"}]]))
    return rng.choice(["", " ", "\n", "NaN", "{'type': 'start'}", '{"type": "start",}', "\ufeff{}"])


def _deep(rng: random.Random) -> str:
    """Nesting deep enough to exhaust a recursive parser (and shallower ones, still not messages)."""
    depth = rng.choice([rng.randrange(2, 50), rng.randrange(900, 1100), rng.randrange(1100, LIMIT // 7)])
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth * rng.randrange(2)
    inner = '{"type":"text","text":' + '{"a":' * depth + "1" + "}" * depth + "}"
    return inner if rng.random() < 0.5 else inner[: rng.randrange(1, len(inner))]


def _over_limit_text(rng: random.Random) -> str:
    size = LIMIT + 1 + rng.randrange(64)
    padding = "x" * (size - len('{"type":"start","pad":""}'))
    return '{"type":"start","pad":"' + padding + '"}'


def _no_bytes(rng: random.Random) -> bytes:
    return b""


def _odd_pcm(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 2001) // 2 * 2 + 1)


def _over_limit_binary(rng: random.Random) -> bytes:
    return bytes(LIMIT + 2 + 2 * rng.randrange(64))


def _wrong_types(rng: random.Random) -> str:
    odd: Any = rng.choice([None, 1, 2.5, True, [], {}, "", " ", "x" * 60, "START", "Start", "\u0000"])
    return json.dumps(
        rng.choice(
            [
                {"type": odd},
                {"no_type": "start"},
                {"type": "ptt", "pressed": rng.choice([None, 1, 0, "true", [], {}])},
                {"type": "ptt"},
                {"type": "text", "text": rng.choice([None, 1, [], {}, "", "   ", "\n\t"])},
                {"type": "text", "text": "y" * (MAX_TEXT_CHARS + 1 + rng.randrange(40))},
                {"type": "text"},
            ]
        )
    )


DEFAULT_CASES: tuple[Fuzz, ...] = (
    _bad_json,
    _deep,
    _over_limit_text,
    _odd_pcm,
    _over_limit_binary,
    _wrong_types,
    _no_bytes,
)


def _wav(
    rng: random.Random,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    frames: int = -1,
) -> bytes:
    """A WAV file with ``frames`` random frames (-1: a few)."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    frames = rng.randrange(0, 64) if frames < 0 else frames
    data = rng.randbytes(frames * channels * max(1, bits // 8))
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body


def _broken_wav(rng: random.Random) -> bytes:
    """A WAV file this reader refuses: every way a header can be wrong."""
    fmt16 = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    head = b"RIFF" + struct.pack("<I", rng.randrange(1 << 32))
    choice = rng.randrange(9)
    if choice == 0:
        return head + rng.choice([b"WAVX", b"", b"WA"]) + rng.randbytes(rng.randrange(40))
    if choice == 1:
        return head + b"WAVE" + _chunk(b"fmt ", fmt16[: rng.randrange(16)]) + _chunk(b"data", bytes(4))
    if choice == 2:
        tag, bits = rng.choice([(2, 16), (1, 12), (3, 16), (6, 8), (0xFFFE, 16), (1, 0)])
        return _wav(rng, tag=tag, bits=bits)
    if choice == 3:
        return _wav(rng, channels=rng.choice([0, 33, 255]))
    if choice == 4:
        return _wav(rng, rate=rng.choice([0, 1, 999, 384001, 1_000_000]))
    if choice == 5:
        return head + b"WAVE" + _chunk(b"data", bytes(8)) + _chunk(b"fmt ", fmt16)
    if choice == 6:
        return head + b"WAVE" + _chunk(b"fmt ", fmt16) + _chunk(b"LIST", bytes(6))
    if choice == 7:
        return head + b"WAVE" + _chunk(b"LIST", bytes(rng.randrange(20)))
    return head + b"WAVE" + _chunk(b"fmt ", fmt16) + b"data" + struct.pack("<I", 0)  # no samples


def _expanding_wav(rng: random.Random) -> bytes:
    """A low-rate WAV under the size limit that would resample to many times it (minutes of audio)."""
    return _wav(rng, rate=rng.choice([1000, 2000, 3000]), bits=8, frames=LIMIT - 64)


def _compressed(rng: random.Random) -> bytes:
    magic = rng.choice([b"\x1a\x45\xdf\xa3", b"OggS", b"fLaC", b"ID3", bytes(4) + b"ftyp"])
    return magic + rng.randbytes(rng.randrange(0, 200) // 2 * 2)


def _bad_audio_bytes(rng: random.Random) -> bytes:
    return rng.choice([_odd_pcm, _broken_wav, _compressed, _no_bytes])(rng)


def _bad_base64(rng: random.Random) -> str:
    return rng.choice(
        [
            "!!!!",
            "@@==",
            "a" * (4 * rng.randrange(1, 50) + 1),  # one character too many
            "QUJD*",
            "\u00e9\u00e9\u00e9\u00e9",
            "data:audio/wav,AAAA",
            "data:audio/wav;base64",
            "data:audio/wav;base64,!!",
            base64.b64encode(rng.randbytes(8)).decode() + "====x",
        ]
    )


def _whisper_text(rng: random.Random) -> str:
    choice = rng.randrange(6)
    if choice == 0:
        return json.dumps({"type": "audio", "audio": _bad_base64(rng)})
    if choice == 1:
        audio = base64.b64encode(_bad_audio_bytes(rng)).decode()
        if rng.random() < 0.3:
            audio = "data:audio/wav;base64," + audio
        return json.dumps({"type": "audio", "audio": audio})
    if choice == 2:
        rate = rng.choice([True, 0, -1, 999, 384001, 16000.5, "16000", None, [16000]])
        return json.dumps({"type": "audio", "audio": "AAAA", "sample_rate": rate})
    if choice == 3:
        field: Any = rng.choice([None, 1, [], {}, ""])
        return json.dumps(rng.choice([{"type": "audio", "audio": field}, {"type": "audio"}]))
    if choice == 4:
        return json.dumps({"type": rng.choice(["start", "stop", "text", None, 5, "AUDIO", "x" * 80])})
    size = LIMIT + 1 + rng.randrange(64)
    return '{"type":"audio","audio":"' + "A" * (size - 27) + '"}'


WHISPER_CASES: tuple[Fuzz, ...] = (
    _bad_json,
    _deep,
    _bad_audio_bytes,
    _over_limit_binary,
    _expanding_wav,
    _whisper_text,
    _whisper_text,
)


def malformed(cases: tuple[Fuzz, ...], count: int, seed: int = SEED) -> Iterator[str | bytes]:
    """``count`` malformed messages, the same ones for the same seed."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.choice(cases)(rng)


def parse(wire: Wire, message: str | bytes, limit: int = LIMIT) -> Any:
    if isinstance(message, bytes):
        return wire.parse_binary(message, limit)
    return wire.parse_text(message, limit)


# --- Sans-I/O ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "cases"),
    [(protocol, DEFAULT_CASES), (whisper_protocol, WHISPER_CASES)],
    ids=["voxgraph", "whisper-json"],
)
def test_every_malformed_message_is_an_error_with_a_short_reason(wire: Wire, cases: tuple[Fuzz, ...]) -> None:
    kinds: dict[str, int] = {}
    for message in malformed(cases, SANS_IO_COUNT):
        result = parse(wire, message)
        assert isinstance(result, ProtocolError), (message[:120], result)
        assert 0 < len(result.message) <= 300, result.message
        kinds[result.message[:20]] = kinds.get(result.message[:20], 0) + 1
    assert len(kinds) >= 8, kinds  # the generator reaches many different refusals


def test_odd_but_valid_audio_is_taken_without_warnings() -> None:
    rng = random.Random(SEED)
    floats = np.array([np.nan, np.inf, -np.inf, 0.5, -2.0], dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    nan_wav = b"RIFF" + struct.pack("<I", 0) + b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", floats)
    with np.errstate(all="raise"):
        pcm = whisper_protocol.decode_audio(nan_wav)
    assert list(np.frombuffer(pcm, "<i2")) == [0, 32767, -32768, 16384, -32768]
    for bits, rate, channels in ((8, 1000, 2), (24, 44100, 1), (32, 8000, 3)):
        wav = _wav(rng, rate=rate, bits=bits, channels=channels) + bytes(channels * bits // 8)
        assert isinstance(whisper_protocol.parse_binary(wav, LIMIT), protocol.Audio)


def test_a_low_rate_wav_may_not_grow_past_four_times_the_message_limit() -> None:
    # Before: one 1 MB WAV at 1000 Hz (8-bit) became 32 MB of 16 kHz PCM, 17 minutes of audio, and
    # held the event loop for about 2 s.
    rng = random.Random(SEED)
    telephone = _wav(rng, rate=8000, frames=LIMIT // 2 - 64)  # 16-bit at 8 kHz: twice its size, taken
    assert isinstance(whisper_protocol.parse_binary(telephone, LIMIT), protocol.Audio)
    refused = whisper_protocol.parse_binary(_expanding_wav(rng), LIMIT)
    assert isinstance(refused, ProtocolError) and "send shorter pieces, or 16 kHz audio" in refused.message


# --- live ----------------------------------------------------------------------------------------


class ClipCounter(Processor):
    """Answers each whisper clip with a transcription naming its number: proof the session is alive."""

    handles: ClassVar[tuple[type[Frame], ...]] = (UserStoppedSpeakingFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TranscriptFrame,)
    clips = 0

    async def process(self, frame: Frame) -> None:
        self.clips += 1
        await self.push(frame)
        await self.push(TranscriptFrame(text=f"clip {self.clips}"))


WHISPER_GRAPH = f"""
server: {{type: websocket, port: 0, max_message_bytes: {LIMIT}}}
nodes:
  mic: {{type: websocket.input, protocol: whisper-json, audio_messages: clip, clip_gap: 0}}
  clips: {{type: "tests.test_protocol_fuzz:ClipCounter"}}
  out: {{type: websocket.output, realtime: false}}
edges: [mic -> clips -> out]
"""


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data)
    return dict(json.loads(message.data))


async def _until_message(
    ws: aiohttp.ClientWebSocketResponse, accept: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first text message ``accept`` takes (bot audio is skipped)."""
    while True:
        message = await ws.receive(timeout=TIMEOUT)
        if message.type is aiohttp.WSMsgType.BINARY:
            continue
        assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data)
        if accept(parsed := json.loads(message.data)):
            return dict(parsed)


async def _fuzz_live(ws: aiohttp.ClientWebSocketResponse, cases: tuple[Fuzz, ...]) -> int:
    """Send ``LIVE_COUNT`` malformed messages in batches; each batch gets exactly its errors back."""
    messages = list(malformed(cases, LIVE_COUNT, SEED + 1))
    for start in range(0, len(messages), BATCH):
        await _send_batch(ws, messages[start : start + BATCH])
    return len(messages)


async def _send_batch(ws: aiohttp.ClientWebSocketResponse, batch: list[str | bytes]) -> None:
    for message in batch:
        await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
    for _ in batch:
        reply = await _receive(ws)
        assert reply["type"] == "error", reply


async def test_a_live_default_session_answers_every_malformed_message_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        serving(COUNTER_GRAPH.replace("REALTIME", "false"), f"server.max_message_bytes={LIMIT}") as (
            server,
            base,
        ),
        aiohttp.ClientSession() as http,
        http.ws_connect(base / "ws") as ws,
    ):
        await _until_message(ws, lambda m: m == {"type": "status", "state": "listening"})
        assert await _fuzz_live(ws, DEFAULT_CASES) == LIVE_COUNT
        for _ in range(500):  # a control flood: repeats coalesce, nothing is refused
            await ws.send_str('{"type":"start"}')
        await ws.send_bytes(bytes(640))
        await ws.send_str('{"type":"text","text":"still there?"}')
        reply = await _until_message(ws, lambda m: m["type"] == "error" or m.get("final") is True)
        assert reply["type"] == "transcript"  # the typed text, as the user's: then the reply
        reply = await _until_message(ws, lambda m: m["type"] == "error" or m["type"] == "assistant_text")
        assert reply == {"type": "assistant_text", "text": "heard ", "final": False}
        await ws.send_str('{"type":"stop"}')
        await _until_message(ws, lambda m: m == {"type": "status", "state": "ended"})
        assert (await ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1000
        await _until(lambda: not server.sessions, "the session to end")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_live_whisper_session_answers_every_malformed_message_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        serving(WHISPER_GRAPH) as (server, base),
        aiohttp.ClientSession() as http,
        http.ws_connect(base / "ws") as ws,
    ):
        await _until_message(ws, lambda m: m == {"type": "status", "message": "ready"})
        assert await _fuzz_live(ws, WHISPER_CASES) == LIVE_COUNT
        await ws.send_str(json.dumps({"type": "audio", "audio": base64.b64encode(bytes(3200)).decode()}))
        reply = await _until_message(ws, lambda m: m.get("type") in ("error", "transcription"))
        assert reply == {"type": "transcription", "text": "clip 1", "status": "success"}
        await ws.close()
        await _until(lambda: not server.sessions, "the session to end")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
