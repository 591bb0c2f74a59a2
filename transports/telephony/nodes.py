"""``phone.input`` and ``phone.output``: a graph's two ends when a caller on a phone is the user.

They run only in a served config, bound to one carrier connection (``/twilio`` or ``/telnyx``): the
route builds a graph per call, the session (``transports.telephony.call``) feeds them. The input
yields the caller's audio at the carrier's rate (8 kHz mono: the graph's resamplers are inserted where
an engine wants another rate) and keypresses as ``DTMFFrame``s. The output sends bot audio as 20 ms
media messages paced in real time through ``Playout`` (a barge-in silences it and sends ``clear`` at
once), and before each sentence's audio a ``mark``: the carrier echoes it when the caller starts
hearing that sentence, which becomes the ``SpokenTextFrame`` the LLM and the recorder keep as heard.
A mark echoed after a ``clear`` was dropped, not played: nothing of it is reported. A caller who hangs
up mid-reply cuts it as a barge-in would (``phone.input`` interrupts as the call's input ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.errors import FatalProcessorError
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotAudioFrame,
    DTMFFrame,
    Frame,
    SpokenTextFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
)
from pipeline.params import param
from pipeline.processor import Processor, Source
from transports.playout import Playout
from transports.telephony.events import Dtmf
from transports.websocket.protocol import Audio, Rechunker
from transports.websocket.session import Connection

__all__ = ["PhoneInput", "PhoneOutput", "bound_call"]

SAMPLE_RATE = 8000
"""Phone audio in the graph: what every carrier speaks (G.711 is 8 kHz)."""
FRAME_MS = 20
"""Bot audio leaves in pieces of this length, the size carriers send and expect."""
_UNBOUND = "it serves a phone call and runs only in a served config, on the /twilio or /telnyx route"
_UNBOUND_FIX = "add 'server: {type: websocket}' and point the carrier at /twilio/voice (or /telnyx)"


@dataclass(slots=True, kw_only=True)
class PhoneInputParams:
    """Params of ``phone.input``: the call's audio, and how the server answers the carrier."""

    frame_ms: int = param(20, gt=0, fix="use 10, 20 or 30 (what VADs take)", doc="caller audio frame length")
    public_url: str | None = param(
        None,
        doc="the server's public base URL as the carrier reaches it (https://bot.example.com); signatures "
        "are checked against it and the stream URL is built from it; default: the request's own",
    )
    twilio_auth_token_env: str = param(
        "TWILIO_AUTH_TOKEN", doc="environment variable holding the Twilio auth token (signatures, hang-up)"
    )
    twilio_api_url: str = param(
        "https://api.twilio.com", doc="Twilio's REST API, used to hang up when the graph ends the call"
    )
    hang_up: bool = param(
        True, doc="Twilio: hang the call up through its API when the graph ends first (Telnyx: not yet)"
    )
    max_call_seconds: float = param(0.0, ge=0, doc="end the call after this long (0: no limit)")


@dataclass(slots=True, kw_only=True)
class PhoneOutputParams:
    """Params of ``phone.output``."""

    lead: float = param(
        0.08,
        ge=0,
        le=2,
        doc="seconds of bot audio sent ahead of playback (more: robust to stalls, later clear)",
    )
    realtime: bool = param(True, doc="pace bot audio at playback speed; false sends it as it comes (tests)")


class CallLink:
    """What a call's phone nodes share besides the session's ``Connection``: the carrier's wire, the
    ``start`` that named the call, and the marks the carrier echoed (taken by ``phone.output``)."""

    def __init__(self, carrier: Any) -> None:
        self.carrier = carrier  # a ``transports.telephony.wire.CarrierWire``
        self.started = asyncio.Event()  # the carrier's start came and the call was admitted
        self.echoes: asyncio.Queue[str] = asyncio.Queue(maxsize=1024)  # mark names, as echoed
        self.caller_hung_up = False  # the carrier said stop: nothing in flight will be heard

    def echo(self, name: str) -> None:
        """The carrier echoed mark ``name`` (dropped if ``phone.output`` fell 1024 marks behind)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.echoes.put_nowait(name)


def bound_call(connection: Connection | None) -> CallLink | None:
    """The call behind ``connection``, or None for a browser connection (or none)."""
    link = getattr(connection, "call", None)
    return link if isinstance(link, CallLink) else None


class PhoneInput(Source):
    """The caller: 8 kHz mono audio frames, and ``DTMFFrame``s for keys pressed."""

    type_name = "phone.input"
    connection_role: ClassVar[str] = "input"
    Params = PhoneInputParams
    params: PhoneInputParams
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, DTMFFrame)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._connection: Connection | None = None

    def bind_connection(self, connection: Connection) -> None:
        """Take the caller's events from ``connection`` (called by the call before the graph starts)."""
        self._connection = connection

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(SAMPLE_RATE, 1)

    async def on_start(self) -> None:
        if bound_call(self._connection) is None:
            raise FatalProcessorError(f"{self.type_name} '{self.name}': {_UNBOUND}; {_UNBOUND_FIX}")

    async def generate(self) -> AsyncIterator[Frame]:
        connection = self._connection
        if connection is None:
            return
        chunker = Rechunker(2 * SAMPLE_RATE * self.params.frame_ms // 1000)
        limit = self.params.max_call_seconds
        deadline = None if limit <= 0 else asyncio.get_running_loop().time() + limit
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    event = await connection.inbound.get()
            except TimeoutError:
                break  # the call's time is up: the graph ends, the call is hung up
            if event is None:
                break
            if isinstance(event, Audio):
                for pcm in chunker.feed(event.pcm):
                    yield UserAudioFrame(pcm=pcm, sample_rate=SAMPLE_RATE)
            elif isinstance(event, Dtmf):
                yield DTMFFrame(digit=event.digit)
        rest = chunker.flush()
        if rest:
            yield UserAudioFrame(pcm=rest, sample_rate=SAMPLE_RATE)
        link = bound_call(connection)
        if link is not None and link.caller_hung_up:
            # Like a barge-in: the reply in flight stops, and the LLM's history and the recording keep
            # only what the caller heard before hanging up, not what was generated after.
            await self.interrupt()


class PhoneOutput(Processor):
    """The caller's earpiece: bot audio as paced 20 ms media messages, a mark before each sentence,
    ``clear`` at a barge-in (see the module docstring)."""

    type_name = "phone.output"
    connection_role: ClassVar[str] = "output"
    Params = PhoneOutputParams
    params: PhoneOutputParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, TTSTextFrame, TTSStoppedFrame)
    accepts_audio = AudioCaps.of(SAMPLE_RATE, 1)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.playout = Playout(self, realtime=self.params.realtime, lead=self.params.lead)
        self._connection: Connection | None = None
        self._sentence: str | None = None  # text whose audio has not begun: a mark goes before it
        self._marks = 0  # marks sent so far: each name is unique in the call
        self._pending: dict[str, str] = {}  # mark name -> the sentence it starts, until echoed or cleared
        self._echoes: asyncio.Task[None] | None = None

    def bind_connection(self, connection: Connection) -> None:
        """Write to ``connection`` (called by the call before the graph starts)."""
        self._connection = connection

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None  # a sink

    async def on_start(self) -> None:
        link = bound_call(self._connection)
        if link is None:
            raise FatalProcessorError(f"{self.type_name} '{self.name}': {_UNBOUND}; {_UNBOUND_FIX}")
        self._echoes = asyncio.create_task(self._heard(link), name=f"marks:{self.name}")

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, BotAudioFrame):
            await self._play(frame)
        elif isinstance(frame, TTSTextFrame):
            if frame.text.strip():
                self._sentence = frame.text if self._sentence is None else f"{self._sentence} {frame.text}"
        elif isinstance(frame, TTSStoppedFrame):
            self._sentence = None  # text no audio followed: nobody will hear it
            await self.playout.finished()
        # the caller's own audio stops here: it is never sent back

    async def on_interrupt(self) -> None:
        self.playout.interrupted()
        self._sentence = None
        self._pending.clear()  # their echoes now mean "cleared", not "heard"
        link, connection = bound_call(self._connection), self._connection
        if link is not None and connection is not None and link.started.is_set() and not connection.hung_up:
            connection.send_nowait(link.carrier.clear(), drop_audio=True)

    async def on_stop(self) -> None:
        connection = self._connection
        listening = connection is not None and not connection.hung_up and not self.inbox.closed
        await self.playout.close(drain=listening)
        if self._echoes is not None:
            self._echoes.cancel()
            await asyncio.wait({self._echoes})
            self._echoes = None

    async def _play(self, frame: AudioFrame) -> None:
        connection, link = self._connection, bound_call(self._connection)
        if connection is None or link is None or not link.started.is_set() or not frame.pcm:
            return  # no stream yet (or no more): nobody would hear it
        if frame.sample_rate != SAMPLE_RATE or frame.channels != 1:
            raise ValueError(
                f"{self.type_name} takes {SAMPLE_RATE} Hz mono audio, got {frame.sample_rate} Hz "
                f"{frame.channels} channel(s) from a node that declared another format: fix that node's "
                "output_format, or set settings.auto_resample: true"
            )
        if connection.hung_up:
            self.playout.realtime = False  # nobody listens any more: drain without waiting for playback
        if self._sentence is not None:
            name, self._marks = f"s{self._marks + 1}", self._marks + 1
            self._pending[name] = self._sentence
            self._sentence = None
            cue = dataclasses.replace(frame, pcm=b"")  # no audio: the writer sends the mark in its turn
            await self.playout.audio(cue, lambda _: connection.send(link.carrier.mark(name)))
        step = 2 * frame.channels * SAMPLE_RATE * FRAME_MS // 1000
        for offset in range(0, len(frame.pcm), step):
            piece = dataclasses.replace(frame, pcm=frame.pcm[offset : offset + step])
            await self.playout.audio(piece, self._write)

    async def _write(self, frame: AudioFrame) -> None:
        """Send one paced piece of bot audio (called by the playout's writer task)."""
        link, connection = bound_call(self._connection), self._connection
        if link is not None and connection is not None:
            await connection.send(link.carrier.media(frame.pcm))

    async def _heard(self, link: CallLink) -> None:
        """Echoed marks: the sentence after each began playing to the caller (cleared ones are gone)."""
        while True:
            name = await link.echoes.get()
            text = self._pending.pop(name, None)
            if text is not None:
                await self.push(SpokenTextFrame(text=text), UPSTREAM)
