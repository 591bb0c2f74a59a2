"""A fake phone carrier on 127.0.0.1: Twilio's voice webhook, media stream and REST API, as tests need them.

``FakeTwilio`` plays the carrier side of one call: it POSTs the signed voice webhook, reads the TwiML,
opens the stream it names with a signed upgrade, sends ``connected`` and ``start`` (with the TwiML's
custom parameters), then the caller's audio as 20 ms μ-law ``media`` messages on an absolute real-time
schedule, ``dtmf`` between them, and ``stop``. It checks every message the server sends (text, JSON,
``media``/``mark``/``clear`` with exactly Twilio's keys and this stream's id, base64 audio without a
file header, nothing before ``start``) and models playback: bot audio is queued and played in real
time, a mark is echoed when playback reaches it (at once if nothing is queued), and ``clear`` drops the
queue and echoes every pending mark. What was played, and when each message arrived, is recorded.

``FakeTwilioRest`` answers the one REST call the server makes (hang up) and records it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import aiohttp
import numpy as np
from aiohttp import web

from pipeline import g711
from transports.telephony import twilio_signature

ACCOUNT_SID = "AC" + "a" * 32
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
RATE = 8000
FRAME_BYTES = 160  # 20 ms of μ-law
FRAME_S = 0.020
TWILIO_OUT_KEYS = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}


class CarrierViolation(AssertionError):
    """The server sent something a real carrier would refuse."""


@dataclass
class Played:
    """What the fake caller heard: bot audio (8 kHz s16le) in play order, and marks as reached."""

    pcm: bytearray = field(default_factory=bytearray)
    marks: list[str] = field(default_factory=list)  # echoed because played
    marks_at: list[int] = field(default_factory=list)  # bytes of ``pcm`` played when each was reached
    cleared_marks: list[str] = field(default_factory=list)  # echoed by a clear


class FakeTwilio:
    """One call from the carrier's side (see the module docstring)."""

    def __init__(self, server_url: str, *, auth_token: str = AUTH_TOKEN, call_number: int = 1) -> None:
        self.server_url = server_url.rstrip("/")
        self.auth_token = auth_token
        self.call_sid = f"CA{call_number:032x}"
        self.stream_sid = f"MZ{call_number:032x}"
        self.caller = f"+1555123{call_number:04d}"
        self.called = "+15559870002"
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.received: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, message) in order
        self.media_sent: list[float] = []  # monotonic time each caller media message went out
        self.played = Played()
        self.violations: list[str] = []
        self.cleared_at: list[float] = []
        self.closed = asyncio.Event()
        self._sequence = 0
        self._chunk = 0
        self._queue: deque[bytes | str] = deque()  # bot audio pieces and mark names, in play order
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._echoes: set[asyncio.Future[None]] = set()  # marks a clear is echoing
        self._started_at = 0.0

    async def __aenter__(self) -> FakeTwilio:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- call control -------------------------------------------------------------------------------

    def webhook_form(self) -> dict[str, str]:
        return {
            "AccountSid": ACCOUNT_SID,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": self.caller,
            "To": self.called,
        }

    async def ring(
        self, form: dict[str, str] | None = None, signature: str | None = "sign"
    ) -> aiohttp.ClientResponse:
        """POST the voice webhook (signed unless ``signature`` is None or given); returns the response."""
        form = self.webhook_form() if form is None else form
        url = f"{self.server_url}/twilio/voice"
        headers = {}
        if signature == "sign":
            headers[twilio_signature.HEADER] = twilio_signature.compute(self.auth_token, url, form)
        elif signature is not None:
            headers[twilio_signature.HEADER] = signature
        session = await self._session()
        response = await session.post(url, data=form, headers=headers)
        await response.read()
        return response

    async def answer(self) -> tuple[str, dict[str, str]]:
        """Ring and read the TwiML: the stream URL and its custom parameters."""
        response = await self.ring()
        assert response.status == 200, (response.status, await response.text())
        assert response.content_type == "text/xml"
        return parse_twiml(await response.text())

    async def open_stream(
        self, url: str, parameters: dict[str, str], signature: str | None = "sign"
    ) -> aiohttp.ClientWebSocketResponse:
        """The signed upgrade, then ``connected`` and ``start``; playback and checking begin."""
        headers = {}
        if signature == "sign":
            headers[twilio_signature.HEADER] = twilio_signature.compute(self.auth_token, url, None)
        elif signature is not None:
            headers[twilio_signature.HEADER] = signature
        session = await self._session()
        self.ws = await session.ws_connect(url, headers=headers, autoping=True)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._play())]
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._sequence = 1
        await self._send(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )
        self._started_at = time.monotonic()
        return self.ws

    async def call(self) -> None:
        """Ring, then open the stream the TwiML names."""
        url, parameters = await self.answer()
        await self.open_stream(url, parameters)

    # --- the caller ---------------------------------------------------------------------------------

    async def speak(self, pcm8k: bytes, dtmf_at: dict[int, str] | None = None) -> float:
        """Send ``pcm8k`` (s16le, 8 kHz) as 20 ms μ-law media in real time, ``dtmf_at`` {frame: digit}
        between frames; returns the monotonic time the last frame went out."""
        data = g711.ulaw_encode(pcm8k)
        data += bytes([g711.ULAW_SILENCE]) * (-len(data) % FRAME_BYTES)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for n in range(len(data) // FRAME_BYTES):
            deadline = t0 + n * FRAME_S
            if deadline > loop.time():
                await asyncio.sleep(deadline - loop.time())
            if dtmf_at and n in dtmf_at:
                await self.dtmf(dtmf_at[n])
            await self.media(data[n * FRAME_BYTES : (n + 1) * FRAME_BYTES])
        return time.monotonic()

    async def silence(self, seconds: float) -> None:
        await self.speak(bytes(2 * round(seconds * RATE)))

    async def silence_until(self, condition: Any, what: str, timeout: float = 15.0) -> None:
        """Send 20 ms of silence at a time, in real time (a line is never quiet on the wire), until
        ``condition()`` holds."""
        silent = bytes([g711.ULAW_SILENCE]) * FRAME_BYTES
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = 0
        while not condition():
            if loop.time() - t0 > timeout:
                raise AssertionError(
                    f"no {what} within {timeout}s; got {[m['event'] for _, m in self.received]}"
                )
            deadline = t0 + n * FRAME_S
            if deadline > loop.time():
                await asyncio.sleep(deadline - loop.time())
            try:
                await self.media(silent)
            except ConnectionError:  # the server is closing the stream: wait for it, then judge
                await self.wait_closed(5.0)
                if condition():
                    return
                raise
            n += 1

    async def media(self, ulaw: bytes) -> None:
        self._chunk += 1
        timestamp = round((self._chunk - 1) * FRAME_S * 1000)
        await self._send(
            {
                "event": "media",
                "sequenceNumber": str(self._next()),
                "media": {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    "timestamp": str(timestamp),
                    "payload": base64.b64encode(ulaw).decode(),
                },
                "streamSid": self.stream_sid,
            }
        )
        self.media_sent.append(time.monotonic())

    async def dtmf(self, digit: str) -> None:
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": str(self._next()),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        """The caller hangs up: ``stop``, then the socket closes."""
        await self._send(
            {
                "event": "stop",
                "sequenceNumber": str(self._next()),
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )
        await self.close()

    async def close(self) -> None:
        """Close the socket (without ``stop``: a dropped call) and everything of this fake."""
        if self.ws is not None:
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def wait_closed(self, timeout: float = 15.0) -> None:
        """Wait until the server closes the stream."""
        await asyncio.wait_for(self.closed.wait(), timeout)

    # --- what the server sent -----------------------------------------------------------------------

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for _, m in self.received if m.get("event") == event]

    def times_of(self, event: str) -> list[float]:
        return [t for t, m in self.received if m.get("event") == event]

    async def until(self, condition: Any, what: str, timeout: float = 15.0) -> None:
        """Poll ``condition()`` (every 10 ms) until it holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {timeout}s; got {[m['event'] for _, m in self.received]}"
                )
            await asyncio.sleep(0.01)

    @property
    def queued_seconds(self) -> float:
        return sum(len(item) / 2 / RATE for item in self._queue if isinstance(item, bytes))

    # --- internals ----------------------------------------------------------------------------------

    async def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return self.session

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                now = time.monotonic()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    self.violations.append(f"a {message.type.name} frame (Twilio takes text only)")
                    continue
                parsed = self._check(message.data)
                if parsed is None:
                    continue
                self.received.append((now, parsed))
                self._take(parsed, now)
        finally:
            self.closed.set()

    def _check(self, text: str) -> dict[str, Any] | None:
        try:
            message = json.loads(text)
        except ValueError:
            self.violations.append(f"not JSON: {text[:60]!r}")
            return None
        event = message.get("event") if isinstance(message, dict) else None
        if event not in TWILIO_OUT_KEYS:
            self.violations.append(f"unknown event {event!r}")
            return None
        if set(message) != TWILIO_OUT_KEYS[event]:
            self.violations.append(f"{event} with keys {sorted(message)}")
        if message.get("streamSid") != self.stream_sid:
            self.violations.append(f"{event} for stream {message.get('streamSid')!r}")
        if event == "media":
            media = message.get("media")
            if not isinstance(media, dict) or set(media) != {"payload"}:
                self.violations.append(f"media body {media!r}")
                return None
            try:
                audio = base64.b64decode(media["payload"], validate=True)
            except ValueError:
                self.violations.append("media payload is not base64")
                return None
            if not audio or audio[:4] in (b"RIFF", b"ID3\x03", b"ID3\x04"):
                self.violations.append("empty media, or a file header in it")
        if event == "mark":
            mark = message.get("mark")
            if not isinstance(mark, dict) or set(mark) != {"name"} or not mark.get("name"):
                self.violations.append(f"mark body {mark!r}")
                return None
        return dict(message)

    def _take(self, message: dict[str, Any], now: float) -> None:
        event = message["event"]
        if event == "media":
            ulaw = base64.b64decode(message["media"]["payload"])
            self._queue.append(g711.ulaw_decode(ulaw))
        elif event == "mark":
            self._queue.append(message["mark"]["name"])
        else:  # clear: drop the queued audio, echo every pending mark at once
            self.cleared_at.append(now)
            pending = [item for item in self._queue if isinstance(item, str)]
            self._queue.clear()
            for name in pending:
                self.played.cleared_marks.append(name)
                self._echoes.add(echo := asyncio.ensure_future(self._echo(name)))
                echo.add_done_callback(self._echoes.discard)
        self._queued.set()

    async def _echo(self, name: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._send(
                {
                    "event": "mark",
                    "sequenceNumber": str(self._next()),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )

    async def _play(self) -> None:
        """Play the queue in real time: audio takes its duration, a mark is echoed when reached."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
                due = max(due, loop.time())
            item = self._queue.popleft()
            if isinstance(item, str):
                self.played.marks.append(item)
                self.played.marks_at.append(len(self.played.pcm))
                await self._echo(item)
                continue
            self.played.pcm += item
            due += len(item) / 2 / RATE
            if due > loop.time():
                await asyncio.sleep(due - loop.time())


def parse_twiml(text: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream url>`` of TwiML and its ``<Parameter>``s."""
    root = ElementTree.fromstring(text)
    stream = root.find("./Connect/Stream")
    assert root.tag == "Response" and stream is not None, text
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], parameters


class FakeTwilioRest:
    """Twilio's REST API as far as hanging up goes: ``POST /2010-04-01/Accounts/{A}/Calls/{C}.json``."""

    def __init__(self, auth_token: str = AUTH_TOKEN) -> None:
        self.auth_token = auth_token
        self.requests: list[dict[str, Any]] = []
        self.ended: set[str] = set()
        self.hung_up = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _update(self, request: web.Request) -> web.Response:
        account, call = request.match_info["account"], request.match_info["call"]
        form = await request.post()
        expected = "Basic " + base64.b64encode(f"{account}:{self.auth_token}".encode()).decode()
        self.requests.append(
            {
                "account": account,
                "call": call,
                "form": dict(form),
                "auth_ok": request.headers.get("Authorization") == expected,
            }
        )
        if request.headers.get("Authorization") != expected:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        if form.get("Status") != "completed":
            return web.json_response({"code": 21218, "message": "bad Status", "status": 400}, status=400)
        if call in self.ended:
            body = {"code": 20404, "message": "not found", "more_info": "", "status": 404}
            return web.json_response(body, status=404)
        self.ended.add(call)
        self.hung_up.set()
        return web.json_response({"sid": call, "status": "completed"})


def decoded_rms(pcm: bytes) -> float:
    """RMS of s16le samples (0 for none)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
