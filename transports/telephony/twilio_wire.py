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
from typing import Any, ClassVar

from transports.telephony import wire
from transports.telephony.events import Started
from transports.telephony.stream_wire import StreamWire

__all__ = ["ENCODING", "SAMPLE_RATE", "TwilioWire"]

SAMPLE_RATE = 8000
"""Twilio streams μ-law at 8 kHz, both ways, always."""
ENCODING = "audio/x-mulaw"


class TwilioWire(StreamWire):
    """One Twilio media stream: parse what Twilio sends, encode what we send back.

    Twilio's stream does not say who calls: ``Started.caller``/``called`` come from custom parameters
    of those names, which the TwiML that connects the stream should set.
    """

    carrier = "twilio"
    events: ClassVar[tuple[str, ...]] = ("connected", "start", "media", "dtmf", "mark", "stop")
    stream_key = "streamSid"
    sequence_key = "sequenceNumber"
    send_rate = SAMPLE_RATE

    def _start(self, message: dict[str, Any]) -> Started:
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
        return Started(
            stream_id=stream_id,
            call_id=call_id,
            account_id=wire.text(start, "accountSid"),
            caller=parameters.get("caller", ""),
            called=parameters.get("called", ""),
            custom_parameters=parameters,
            encoding="PCMU",
            sample_rate=SAMPLE_RATE,
        )

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
