"""What every carrier wire shares: the interface the server uses, readers for the fields of carrier
messages, and the codecs of the audio inside them.

Carriers send JSON text with counters as strings ("1") or numbers (1); readers take both. A reader
raises ``Malformed`` saying what was wrong; a wire's ``parse`` turns that into the ``ProtocolError`` it
returns, so one check per field reads straight and nothing escapes to the server.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from pipeline import g711
from pipeline.errors import VoxgraphError
from pipeline.frames import DTMF_DIGITS
from transports.telephony.events import CarrierEvent, ProtocolError, Started

__all__ = [
    "MAX_MESSAGE_BYTES",
    "CarrierWire",
    "Codec",
    "Malformed",
    "SequenceTracker",
    "StreamNotStarted",
    "check_mark_name",
    "check_pcm",
    "codec",
    "counter",
    "custom_parameters",
    "digit",
    "dumps",
    "load",
    "mark_name",
    "payload",
    "section",
    "shown",
    "text",
]

MAX_MESSAGE_BYTES = 65536
"""Largest carrier message taken: 20 ms of 24 kHz L16 is under 1.5 KB of JSON; a message this size
holds 6 s of μ-law. Anything larger is refused before it is parsed."""
MAX_SHOWN = 40
"""Characters of a carrier's value quoted back in an error."""


class Malformed(VoxgraphError, ValueError):
    """A message a carrier should not have sent; ``parse`` returns it as ``ProtocolError(str(e))``."""


class StreamNotStarted(VoxgraphError):
    """Something was to be sent before the carrier's ``start`` named the stream: wait for ``Started``."""


class CarrierWire(Protocol):
    """One call's media stream, Sans-I/O: carrier text in -> events, our audio and marks out -> text."""

    started: Started | None
    """The stream's ``start``, once it came."""

    @property
    def carrier(self) -> str:
        """Short name of the carrier ("twilio", "telnyx"), for logs and metrics."""
        ...

    @property
    def send_rate(self) -> int:
        """Sample rate the PCM given to ``media`` must have."""
        ...

    def parse(self, text: str) -> CarrierEvent | ProtocolError: ...
    def parse_binary(self, data: bytes) -> ProtocolError: ...
    def media(self, pcm16: bytes) -> str: ...
    def mark(self, name: str) -> str: ...
    def clear(self) -> str: ...


# --- reading -------------------------------------------------------------------------------------


def load(text: str, max_bytes: int, carrier: str) -> dict[str, Any]:
    """A carrier message as a JSON object with a string ``event``, at most ``max_bytes`` of UTF-8."""
    size = len(text) if len(text) > max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise Malformed(f"{carrier} message of {size} bytes is over the limit of {max_bytes}")
    try:
        message = json.loads(text)
    except ValueError:
        raise Malformed(f"{carrier} messages are JSON objects; got text that is not JSON") from None
    except RecursionError:
        raise Malformed(f"{carrier} message nested too deeply to be a carrier message") from None
    if not isinstance(message, dict):
        raise Malformed(f"{carrier} messages are JSON objects; got a JSON {type(message).__name__}")
    if not isinstance(message.get("event"), str):
        raise Malformed(f'{carrier} message without an "event" name')
    return message


def shown(value: Any) -> str:
    """A carrier's value, short enough to quote in an error."""
    return repr(value)[:MAX_SHOWN]


def section(message: dict[str, Any], key: str) -> dict[str, Any]:
    """The object under ``key`` (``media``, ``start``...); absent is an empty one."""
    value = message.get(key, {})
    if not isinstance(value, dict):
        raise Malformed(f'"{key}" must be an object, got {shown(value)}')
    return value


def text(obj: dict[str, Any], key: str) -> str:
    """A string field; absent (or null) is ""."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Malformed(f'"{key}" must be a string, got {shown(value)}')
    return value


def counter(obj: dict[str, Any], key: str) -> int | None:
    """A non-negative count sent as a string ("12") or a number (12); None when absent."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    raise Malformed(f'"{key}" must be a count like "12", got {shown(value)}')


def payload(media: dict[str, Any], bytes_per_sample: int = 1) -> bytes:
    """The base64 audio of a media message (standard alphabet, padded): whole samples, not empty."""
    value = media.get("payload")
    if not isinstance(value, str) or not value:
        raise Malformed('media needs a non-empty base64 "payload" string')
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("media payload is not valid base64") from None
    if not data:
        raise Malformed("media payload decodes to no audio")
    if len(data) % bytes_per_sample:
        raise Malformed(f"media payload of {len(data)} bytes is not whole {8 * bytes_per_sample}-bit samples")
    return data


def digit(dtmf: dict[str, Any]) -> str:
    """A keypress: one of ``0-9 * # A-D`` (letters in either case)."""
    value = dtmf.get("digit")
    if isinstance(value, str) and len(value) == 1 and value.upper() in DTMF_DIGITS:
        return value.upper()
    raise Malformed(f'dtmf needs a "digit" (0-9, *, #, A-D), got {shown(value)}')


def mark_name(mark: dict[str, Any]) -> str:
    """A mark's non-empty name."""
    value = mark.get("name")
    if isinstance(value, str) and value:
        return value
    raise Malformed(f'mark needs a non-empty "name", got {shown(value)}')


def custom_parameters(value: Any) -> dict[str, str]:
    """Parameters the call's markup attached to the stream: string values kept, others dropped."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"custom parameters must be an object, got {shown(value)}")
    return {k: v for k, v in value.items() if isinstance(v, str)}


class SequenceTracker:
    """Counts sequence numbers that skip ahead or go back: a carrier that lost or reordered messages.

    Nothing is refused on their account (Telnyx does not promise order); the counts are for logs.
    """

    def __init__(self) -> None:
        self.last: int | None = None  # highest sequence number seen
        self.gaps = 0  # messages that skipped at least one number
        self.out_of_order = 0  # messages at or below a number already seen

    def see(self, number: int | None) -> None:
        """Note one message's sequence number (None: it had none)."""
        if number is None:
            return
        if self.last is not None and number <= self.last:
            self.out_of_order += 1
            return
        if self.last is not None and number > self.last + 1:
            self.gaps += 1
        self.last = number


# --- writing -------------------------------------------------------------------------------------


def dumps(message: dict[str, Any]) -> str:
    """One outbound message, compact JSON."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def check_pcm(pcm16: bytes) -> None:
    """Outbound audio must be whole s16le samples, at least one."""
    if not pcm16 or len(pcm16) % 2:
        raise ValueError(f"media needs whole 16-bit samples; got {len(pcm16)} bytes")


def check_mark_name(name: str) -> None:
    """A mark we send needs a name to be told apart when it is echoed."""
    if not name:
        raise ValueError("a mark needs a non-empty name")


# --- codecs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """How the audio inside media messages is coded: ``decode`` to s16le PCM, ``encode`` from it."""

    name: str  # PCMU, PCMA or L16
    decode: Callable[[bytes], bytes]
    encode: Callable[[bytes], bytes]
    bytes_per_sample: int


def _swap16(data: bytes) -> bytes:
    """16-bit samples with their bytes swapped (big-endian <-> little-endian)."""
    return np.frombuffer(data, dtype="<i2").byteswap().tobytes()


def _same(data: bytes) -> bytes:
    return bytes(data)


def codec(name: str, l16_byteorder: Literal["big", "little"] = "big") -> Codec:
    """The codec called ``name`` (PCMU, PCMA or L16); ``l16_byteorder`` is L16's byte order on the wire."""
    if name == "PCMU":
        return Codec("PCMU", g711.ulaw_decode, g711.ulaw_encode, 1)
    if name == "PCMA":
        return Codec("PCMA", g711.alaw_decode, g711.alaw_encode, 1)
    if name == "L16":
        convert = _swap16 if l16_byteorder == "big" else _same
        return Codec("L16", convert, convert, 2)
    raise ValueError(f"unknown codec {name!r}: use PCMU, PCMA or L16")
