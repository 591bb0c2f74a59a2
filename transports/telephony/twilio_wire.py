"""Twilio Media Streams (bidirectional, ``<Connect><Stream>``), Sans-I/O.

Twilio -> us, JSON text: ``connected``, ``start`` (stream and call ids, custom parameters, μ-law
8 kHz), ``media`` (base64 μ-law, 20 ms each), ``dtmf``, ``mark`` (the echo of one we sent), ``stop``.
Counters arrive as strings. Us -> Twilio: ``media``, ``mark`` and ``clear``, each with exactly the
keys Twilio accepts and the ``streamSid`` of ``start`` — an extra key or another stream id is an
"Invalid Message" on Twilio's side.

Nothing here touches a socket: ``TwilioWire`` keeps one stream's state (its id, its sequence
numbers), turns each message into an event or a ``ProtocolError``, and never raises on input.
"""

from __future__ import annotations

import base64
from typing import Any

from transports.telephony import wire
from transports.telephony.events import (
    CarrierEvent,
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Started,
    Stopped,
)

__all__ = ["ENCODING", "EVENTS", "SAMPLE_RATE", "TwilioWire"]

SAMPLE_RATE = 8000
"""Twilio streams μ-law at 8 kHz, both ways, always."""
ENCODING = "audio/x-mulaw"
EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")
INBOUND_TRACKS = ("inbound", "inbound_track")
"""Track names of the caller's side (media says ``inbound``, dtmf ``inbound_track``)."""


class TwilioWire:
    """One Twilio media stream: parse what Twilio sends, encode what we send back."""

    carrier = "twilio"
    send_rate = SAMPLE_RATE

    def __init__(self, max_bytes: int = wire.MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.started: Started | None = None  # the stream's start, once it came
        self.stopped = False  # a stop came: nothing more is taken
        self.sequence = wire.SequenceTracker()
        self._codec = wire.codec("PCMU")

    # --- Twilio -> us ------------------------------------------------------------------------------

    def parse_binary(self, data: bytes) -> ProtocolError:
        """Twilio sends only text: a binary frame is not one of its messages."""
        return ProtocolError(f"twilio sends JSON text; got a binary frame of {len(data)} bytes")

    def parse(self, text: str) -> CarrierEvent | ProtocolError:
        """One text message from Twilio: an event, or what was wrong with it (unknown fields ignored)."""
        try:
            return self._parse(wire.load(text, self.max_bytes, self.carrier))
        except wire.Malformed as problem:
            return ProtocolError(str(problem))

    def _parse(self, message: dict[str, Any]) -> CarrierEvent:
        event = message["event"]
        if event == "connected":
            version = message.get("version")
            return Connected(version if isinstance(version, str) else "")
        if event not in EVENTS:
            raise wire.Malformed(f"unknown twilio event {wire.shown(event)}; events are {', '.join(EVENTS)}")
        if self.stopped:
            raise wire.Malformed(f"twilio {event} after stop")
        number = wire.counter(message, "sequenceNumber")
        if event == "start":
            result: CarrierEvent = self._start(message)
        elif self.started is None and event == "stop":
            result = Stopped()  # the call ended before its stream began
        elif self.started is None:
            raise wire.Malformed(f"twilio {event} before start")
        else:
            result = self._in_stream(event, message, self.started.stream_id)
        self.sequence.see(number)
        self.stopped = isinstance(result, Stopped)
        return result

    def _start(self, message: dict[str, Any]) -> Started:
        if self.started is not None:
            raise wire.Malformed("a second twilio start on one stream")
        start = wire.section(message, "start")
        outer = wire.text(message, "streamSid")
        stream_id = wire.text(start, "streamSid") or outer
        call_id = wire.text(start, "callSid")
        if not stream_id or not call_id:
            raise wire.Malformed("twilio start needs a streamSid and a callSid")
        if outer and outer != stream_id:
            raise wire.Malformed("twilio start names two different streamSids")
        _check_media_format(start.get("mediaFormat"))
        parameters = wire.custom_parameters(start.get("customParameters"))
        self.started = Started(
            stream_id=stream_id,
            call_id=call_id,
            account_id=wire.text(start, "accountSid"),
            caller=parameters.get("caller", ""),
            called=parameters.get("called", ""),
            custom_parameters=parameters,
            encoding="PCMU",
            sample_rate=SAMPLE_RATE,
        )
        return self.started

    def _in_stream(self, event: str, message: dict[str, Any], stream_id: str) -> CarrierEvent:
        if message.get("streamSid", stream_id) != stream_id:
            other = wire.shown(message["streamSid"])
            raise wire.Malformed(f"twilio {event} for stream {other}, not this one")
        if event == "stop":
            return Stopped()
        body = wire.section(message, event)
        if event == "mark":
            return Mark(wire.mark_name(body))
        track = body.get("track")
        if track is not None and track not in INBOUND_TRACKS:
            raise wire.Malformed(f"twilio {event} on track {wire.shown(track)}: only the caller's is taken")
        if event == "dtmf":
            return Dtmf(wire.digit(body))
        timestamp, chunk = wire.counter(body, "timestamp"), wire.counter(body, "chunk")
        return Media(self._codec.decode(wire.payload(body)), timestamp_ms=timestamp, chunk=chunk)

    # --- us -> Twilio ------------------------------------------------------------------------------

    def media(self, pcm16: bytes) -> str:
        """Bot audio (s16le mono at 8 kHz, any length) as one μ-law ``media`` message."""
        wire.check_pcm(pcm16)
        audio = base64.b64encode(self._codec.encode(pcm16)).decode("ascii")
        return wire.dumps({"event": "media", "streamSid": self._stream_id(), "media": {"payload": audio}})

    def mark(self, name: str) -> str:
        """Ask Twilio to echo ``name`` once the caller has heard everything sent before it."""
        wire.check_mark_name(name)
        return wire.dumps({"event": "mark", "streamSid": self._stream_id(), "mark": {"name": name}})

    def clear(self) -> str:
        """Drop the audio Twilio has buffered (barge-in); it echoes every pending mark."""
        return wire.dumps({"event": "clear", "streamSid": self._stream_id()})

    def _stream_id(self) -> str:
        if self.started is None:
            raise wire.StreamNotStarted("twilio has not started the stream yet: send after its start")
        return self.started.stream_id


def _check_media_format(value: Any) -> None:
    """``start.mediaFormat`` must be absent, or μ-law 8 kHz mono."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise wire.Malformed(f"twilio mediaFormat must be an object, got {wire.shown(value)}")
    encoding = value.get("encoding", ENCODING)
    rate = wire.counter(value, "sampleRate")
    channels = wire.counter(value, "channels")
    if encoding != ENCODING or rate not in (None, SAMPLE_RATE) or channels not in (None, 1):
        raise wire.Malformed(
            f"twilio media format {wire.shown(encoding)} at {rate} Hz, {channels} channels:"
            f" only {ENCODING} at {SAMPLE_RATE} Hz mono is spoken"
        )
