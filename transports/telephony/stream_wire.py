"""The part of a carrier wire every JSON media stream shares (Twilio's and Telnyx's differ in key names
and in ``start``): events in order, one stream id, sequence numbers, and the caller's track only."""

from __future__ import annotations

from typing import Any, ClassVar

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

__all__ = ["StreamWire"]


class StreamWire:
    """One call's media stream: parse what the carrier sends, never raising on its input.

    A subclass names its keys and parses its ``start`` (which sets ``started`` and the codec of the
    caller's audio); it may take events of its own in ``_other``.
    """

    carrier: ClassVar[str]
    events: ClassVar[tuple[str, ...]]
    stream_key: ClassVar[str]  # the stream id's key in every message after start
    sequence_key: ClassVar[str]
    inbound_tracks: ClassVar[tuple[str, ...]] = ("inbound", "inbound_track")
    """Track names of the caller's side (Twilio's media says ``inbound``, its dtmf ``inbound_track``)."""

    def __init__(self, max_bytes: int = wire.MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.started: Started | None = None  # the stream's start, once it came
        self.stopped = False  # a stop came: nothing more is taken
        self.sequence = wire.SequenceTracker()
        self._codec = wire.codec("PCMU")  # of the caller's audio; ``start`` may choose another

    def parse_binary(self, data: bytes) -> ProtocolError:
        """Carriers send only text: a binary frame is not one of their messages."""
        return ProtocolError(f"{self.carrier} sends JSON text; got a binary frame of {len(data)} bytes")

    def parse(self, text: str) -> CarrierEvent | ProtocolError:
        """One text message: an event, or what was wrong with it (unknown fields are ignored)."""
        try:
            return self._parse(wire.load(text, self.max_bytes, self.carrier))
        except wire.Malformed as problem:
            return ProtocolError(str(problem))

    def _parse(self, message: dict[str, Any]) -> CarrierEvent:
        event = message["event"]
        if event == "connected":
            version = message.get("version")
            return Connected(version if isinstance(version, str) else "")
        if event not in self.events:
            known = ", ".join(self.events)
            raise wire.Malformed(f"unknown {self.carrier} event {wire.shown(event)}; events are {known}")
        if self.stopped:
            raise wire.Malformed(f"{self.carrier} {event} after stop")
        number = wire.counter(message, self.sequence_key)
        result = self._event(event, message)
        self.sequence.see(number)
        self.stopped = isinstance(result, Stopped)
        return result

    def _event(self, event: str, message: dict[str, Any]) -> CarrierEvent:
        if event == "start":
            if self.started is not None:
                raise wire.Malformed(f"a second {self.carrier} start on one stream")
            self.started = self._start(message)
            return self.started
        if self.started is None:
            if event == "stop":
                return Stopped()  # the call ended before its stream began
            if event not in ("media", "dtmf", "mark"):
                return self._other(event, message)
            raise wire.Malformed(f"{self.carrier} {event} before start")
        stream_id = message.get(self.stream_key, self.started.stream_id)
        if stream_id != self.started.stream_id:
            raise wire.Malformed(f"{self.carrier} {event} for stream {wire.shown(stream_id)}, not this one")
        if event == "stop":
            return Stopped()
        if event not in ("media", "dtmf", "mark"):
            return self._other(event, message)
        body = wire.section(message, event)
        if event == "mark":
            return Mark(wire.mark_name(body))
        track = body.get("track")
        if track is not None and track not in self.inbound_tracks:
            raise wire.Malformed(
                f"{self.carrier} {event} on track {wire.shown(track)}: only the caller's is taken"
            )
        if event == "dtmf":
            return Dtmf(wire.digit(body))
        timestamp, chunk = wire.counter(body, "timestamp"), wire.counter(body, "chunk")
        audio = wire.payload(body, self._codec.bytes_per_sample)
        return Media(self._codec.decode(audio), timestamp_ms=timestamp, chunk=chunk)

    def _start(self, message: dict[str, Any]) -> Started:
        """The stream's ``start``; also sets the codec of the caller's audio."""
        raise NotImplementedError

    def _other(self, event: str, message: dict[str, Any]) -> CarrierEvent:
        """An event of this carrier's own (in ``events``, but none of the shared ones)."""
        raise wire.Malformed(f"{self.carrier} {event} is not taken")
