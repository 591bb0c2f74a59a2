"""Telnyx media streaming over WebSocket (bidirectional ``rtp`` mode), Sans-I/O.

Telnyx -> us, JSON text with snake_case keys: ``connected``, ``start`` (``stream_id``, the call's
``call_control_id``, ``from``/``to``, the caller's ``media_format``), ``media`` (base64 RTP payload,
no RTP header), ``dtmf``, ``mark`` (the echo of one we sent), ``stop``, and ``error`` (Telnyx refused
something we sent). Us -> Telnyx: ``media``, ``mark``, ``clear`` — no stream id needed.

Codecs taken: PCMU and PCMA at 8 kHz, and L16 (16-bit PCM) at 8, 16 or 24 kHz. What we send is the
stream's *bidirectional* codec, set when the stream was started (``stream_bidirectional_codec``,
PCMU unless chosen) and possibly not the one we receive: the wire is told it, not guessed. Telnyx
does not state L16's byte order; big-endian (network order, as in RTP) is the default and either can
be chosen. The stream must be in ``rtp`` mode: in the default ``mp3`` mode Telnyx wants whole MP3
files instead. Each ``media`` we send should hold at least 20 ms of audio.

Telnyx does not promise order: ``Media.chunk`` and ``timestamp_ms`` tell a late chunk from the next,
and ``sequence`` counts the messages that came out of order.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Literal

from transports.telephony import wire
from transports.telephony.events import CarrierError, CarrierEvent, Started
from transports.telephony.stream_wire import StreamWire

__all__ = ["L16_RATES", "TelnyxWire"]

G711_RATE = 8000
L16_RATES = (8000, 16000, 24000)
"""Rates Telnyx streams L16 at (``stream_bidirectional_sampling_rate``)."""
CODECS = ("PCMU", "PCMA", "L16")


class TelnyxWire(StreamWire):
    """One Telnyx media stream: parse what Telnyx sends, encode what we send back.

    ``send_codec``/``send_rate`` must match the stream's bidirectional codec and sampling rate;
    ``l16_byteorder`` is L16's byte order on the wire, both ways.
    """

    carrier = "telnyx"
    events: ClassVar[tuple[str, ...]] = ("connected", "start", "media", "dtmf", "mark", "stop", "error")
    stream_key = "stream_id"
    sequence_key = "sequence_number"

    def __init__(
        self,
        max_bytes: int = wire.MAX_MESSAGE_BYTES,
        *,
        send_codec: str = "PCMU",
        send_rate: int = G711_RATE,
        l16_byteorder: Literal["big", "little"] = "big",
    ) -> None:
        super().__init__(max_bytes)
        problem = _codec_problem(send_codec, send_rate)
        if problem:
            raise ValueError(f"Telnyx cannot be sent {problem}")
        self.l16_byteorder = l16_byteorder
        self.send_rate = send_rate
        self._send_codec = wire.codec(send_codec, l16_byteorder)

    def _start(self, message: dict[str, Any]) -> Started:
        start = wire.section(message, "start")
        stream_id = wire.text(message, "stream_id") or wire.text(start, "stream_id")
        call_id = wire.text(start, "call_control_id")
        if not stream_id or not call_id:
            raise wire.Malformed("telnyx start needs a stream_id and a call_control_id")
        encoding, rate = _media_format(start.get("media_format"))
        self._codec = wire.codec(encoding, self.l16_byteorder)
        return Started(
            stream_id=stream_id,
            call_id=call_id,
            account_id=wire.text(start, "user_id"),
            caller=wire.text(start, "from"),
            called=wire.text(start, "to"),
            custom_parameters=wire.custom_parameters(start.get("custom_parameters")),
            encoding=encoding,
            sample_rate=rate,
        )

    def _other(self, event: str, message: dict[str, Any]) -> CarrierEvent:
        """``error``: Telnyx refused something we sent (malformed frame, invalid media, rate limit)."""
        body = wire.section(message, "payload")
        code = body.get("code")
        if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 20:
            code = int(code)
        if not isinstance(code, int) or isinstance(code, bool):
            code = None
        return CarrierError(code, wire.text(body, "title")[:200], wire.text(body, "detail")[:500])

    # --- us -> Telnyx ------------------------------------------------------------------------------

    def media(self, pcm16: bytes) -> str:
        """Bot audio (s16le mono at ``send_rate``; 20 ms or more) as one ``media`` message."""
        wire.check_pcm(pcm16)
        audio = base64.b64encode(self._send_codec.encode(pcm16)).decode("ascii")
        return wire.dumps({"event": "media", "media": {"payload": audio}})

    def mark(self, name: str) -> str:
        """Ask Telnyx to echo ``name`` once the caller has heard everything sent before it."""
        wire.check_mark_name(name)
        return wire.dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        """Stop playback and drop what Telnyx has queued (barge-in); it echoes every pending mark."""
        return wire.dumps({"event": "clear"})


def _codec_problem(encoding: Any, rate: int | None) -> str:
    """What is wrong with this codec and rate ("" if nothing)."""
    if encoding not in CODECS:
        return f"codec {wire.shown(encoding)}: use PCMU, PCMA or L16 (set the stream's codec to one)"
    if encoding == "L16" and rate not in L16_RATES:
        return f"L16 at {rate} Hz: L16 runs at {', '.join(map(str, L16_RATES))} Hz"
    if encoding != "L16" and rate != G711_RATE:
        return f"{encoding} at {rate} Hz: {encoding} runs at {G711_RATE} Hz"
    return ""


def _media_format(value: Any) -> tuple[str, int]:
    """The caller's codec and rate from ``start.media_format``; absent means PCMU at 8 kHz."""
    if value is None:
        return "PCMU", G711_RATE
    if not isinstance(value, dict):
        raise wire.Malformed(f"telnyx media_format must be an object, got {wire.shown(value)}")
    encoding = value.get("encoding", "PCMU")
    encoding = encoding.upper() if isinstance(encoding, str) else encoding
    rate = wire.counter(value, "sample_rate")
    rate = G711_RATE if rate is None else rate
    channels = wire.counter(value, "channels")
    problem = _codec_problem(encoding, rate) or ("" if channels in (None, 1) else f"{channels} channels")
    if problem:
        raise wire.Malformed(f"telnyx stream of {problem}; only mono is spoken")
    return encoding, rate
