"""A Telnyx media stream (``rtp`` mode, PCMU) on ``/telnyx``, end to end with the light test graph.

A small fake Telnyx on 127.0.0.1 streams caller audio in real time, presses a key, plays the bot's
audio in real time and echoes marks when reached; it checks that every message it gets has Telnyx's
shape (no stream id, exactly these keys). The server runs without auth on loopback; with auth the
upgrade takes the server's credentials, as ``/ws`` does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from pipeline import g711
from tests.spoken_replies import HeardTap
from tests.test_phone_twilio import (
    Answerer,
    _fresh,  # noqa: F401  (autouse: the auth token, counters reset)
    ended,
    serving,
    transcripts,
)

EXPECTED_KEYS = {"media": {"event", "media"}, "mark": {"event", "mark"}, "clear": {"event"}}


async def test_a_telnyx_call_end_to_end(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, _), aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/telnyx")
        got: list[dict[str, Any]] = []
        played = bytearray()
        marks: list[str] = []

        async def read() -> None:
            due = time.monotonic()
            async for message in ws:
                event = json.loads(message.data)
                got.append(event)
                if event["event"] == "media":
                    pcm = g711.ulaw_decode(base64.b64decode(event["media"]["payload"]))
                    played.extend(pcm)
                    due = max(due, time.monotonic()) + len(pcm) / 2 / 8000
                elif event["event"] == "mark":  # reached once what came before it has played
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    marks.append(event["mark"]["name"])
                    await ws.send_str(json.dumps({"event": "mark", "stream_id": "s1", "mark": event["mark"]}))

        reader = asyncio.create_task(read())
        await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
        start = {
            "event": "start",
            "sequence_number": "1",
            "stream_id": "s1",
            "start": {
                "user_id": "u1",
                "call_control_id": "v2:call-1",
                "call_session_id": "cs-1",
                "from": "+13122010094",
                "to": "+13122123456",
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            },
        }
        await ws.send_str(json.dumps(start))
        silence = base64.b64encode(bytes([g711.ULAW_SILENCE]) * 160).decode()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for n in range(50):
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
            media = {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20), "payload": silence}
            await ws.send_str(
                json.dumps(
                    {"event": "media", "sequence_number": str(n + 2), "stream_id": "s1", "media": media}
                )
            )
        await ws.send_str(
            json.dumps({"event": "dtmf", "stream_id": "s1", "sequence_number": "60", "dtmf": {"digit": "1"}})
        )
        deadline = time.monotonic() + 15
        while len(marks) < 3 or len(played) < 2 * 8000 * 0.9:
            assert time.monotonic() < deadline, got[-3:]
            await asyncio.sleep(0.02)
        await ws.send_str(
            json.dumps({"event": "stop", "sequence_number": "61", "stream_id": "s1", "stop": {}})
        )
        await ws.close()
        reader.cancel()
        await ended(server)
    assert Answerer.digits == ["1"]
    assert Answerer.caller_audio[8000 if 8000 in Answerer.caller_audio else 0] > 0.9
    assert all(set(m) == EXPECTED_KEYS[m["event"]] for m in got), [
        m for m in got if set(m) != EXPECTED_KEYS.get(m["event"])
    ]
    assert HeardTap.spoken == ["Sentence 0.", "Sentence 1.", "Sentence 2."]
    [transcript] = transcripts(tmp_path)
    assert transcript["metadata"]["carrier"] == "telnyx"
    assert transcript["metadata"]["call_id"] == "v2:call-1"
    assert transcript["metadata"]["caller"] == "+13122010094"
