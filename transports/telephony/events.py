"""What a carrier's media stream says, one dataclass per message, the same for every carrier.

A wire (``twilio_wire.TwilioWire``, ``telnyx_wire.TelnyxWire``) parses each text message into one of
these or a ``ProtocolError`` (the browser protocol's: a message that cannot be taken; the call goes on).
Audio arrives already decoded to PCM, so nothing downstream knows G.711.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transports.websocket.protocol import ProtocolError

__all__ = [
    "CarrierError",
    "CarrierEvent",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "ProtocolError",
    "Started",
    "Stopped",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """The carrier opened the stream; ``start`` follows."""

    version: str = ""


@dataclass(frozen=True, slots=True)
class Started:
    """The call's stream began: who is calling, and the caller's audio format.

    ``encoding`` is one name whatever the carrier calls it (``PCMU``, ``PCMA`` or ``L16``) and
    ``sample_rate`` is the rate of every following ``Media.pcm``. ``caller``/``called`` are "" when the
    carrier does not say (Twilio's stream does not: a ``caller``/``called`` custom parameter does).
    """

    stream_id: str
    call_id: str
    account_id: str = ""
    caller: str = ""
    called: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "PCMU"
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class Media:
    """The caller's audio: mono signed 16-bit little-endian PCM at ``Started.sample_rate``.

    ``timestamp_ms`` is the carrier's position of this chunk in the stream and ``chunk`` its counter
    (None when absent): Telnyx does not promise order, so they tell a late chunk from the next one.
    """

    pcm: bytes
    timestamp_ms: int | None = None
    chunk: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """The carrier reached a mark we sent: the caller heard everything before it — or a ``clear``
    dropped it (a clear echoes every pending mark at once)."""

    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key: ``0``-``9``, ``*``, ``#`` (or ``A``-``D``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The call's stream ended (hung up, or the call moved on); nothing follows."""


@dataclass(frozen=True, slots=True)
class CarrierError:
    """The carrier refused something we sent (Telnyx: a malformed frame, invalid media, a rate limit)."""

    code: int | None
    title: str
    detail: str = ""


CarrierEvent = Connected | Started | Media | Mark | Dtmf | Stopped | CarrierError
