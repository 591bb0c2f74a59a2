"""The ``/ws`` wire protocol, Sans-I/O: client messages in -> events or errors, server messages out.

Client -> server:

* binary: 16 kHz mono PCM, signed 16-bit little-endian (any whole number of samples; 20 ms is usual);
* text JSON ``{"type": "start"}`` (microphone open, hands-free), ``{"type": "stop"}`` (end the
  conversation: it drains and is saved), ``{"type": "ptt", "pressed": true|false}`` (hold-to-talk:
  only audio sent while pressed counts as speech), ``{"type": "text", "text": "..."}`` (a typed message).

Server -> client, text JSON (``type`` first): ``session``, ``audio_format``, ``transcript``,
``assistant_text``, ``status``, ``interrupted``, ``metrics``, ``error`` — see the encoders below —
and binary bot PCM at the rate the last ``audio_format`` announced.

Nothing here touches a socket: the server feeds bytes and text in, and sends what comes out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SAMPLE_RATE = 16000
"""Rate of the PCM the client sends (mono, s16le)."""
MAX_TEXT_CHARS = 4000
"""Longest typed message taken."""
CLIENT_TYPES = ("start", "stop", "ptt", "text")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down (after a drain's deadline)
CLOSE_POLICY_VIOLATION = 1008  # the client flooded a busy conversation with control messages
CLOSE_TOO_BIG = 1009  # a message beyond the transport's hard limit
CLOSE_INTERNAL_ERROR = 1011  # the graph failed
CLOSE_TRY_AGAIN_LATER = 1013  # every session slot is taken


@dataclass(frozen=True, slots=True)
class Audio:
    """Microphone PCM (16 kHz mono s16le)."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class Start:
    """The microphone is open, hands-free: every chunk counts."""


@dataclass(frozen=True, slots=True)
class Stop:
    """End the conversation."""


@dataclass(frozen=True, slots=True)
class PushToTalk:
    """Hold-to-talk button (or space bar) pressed or released."""

    pressed: bool


@dataclass(frozen=True, slots=True)
class UserText:
    """A typed message."""

    text: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A message the server cannot take; the client gets ``message`` and the session goes on."""

    message: str


ClientEvent = Audio | Start | Stop | PushToTalk | UserText


def parse_binary(data: bytes, max_bytes: int) -> Audio | ProtocolError:
    """A binary message: whole s16le samples, at most ``max_bytes``."""
    if len(data) > max_bytes:
        return ProtocolError(f"message of {len(data)} bytes is over the limit of {max_bytes}")
    if not data:
        return ProtocolError("empty audio message")
    if len(data) % 2:
        return ProtocolError(f"audio must be whole 16-bit samples; got an odd {len(data)} bytes")
    return Audio(bytes(data))


def json_object(text: str, max_bytes: int, example: str) -> dict[str, Any] | ProtocolError:
    """A text message as a JSON object of at most ``max_bytes``; ``example`` shows the expected shape."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return ProtocolError(f"message of {size} bytes is over the limit of {max_bytes}")
    try:
        message = json.loads(text)
    except ValueError:
        return ProtocolError(f"text messages must be JSON, like {example}")
    except RecursionError:  # the parser recurses per level: a deep nest must not end the session
        return ProtocolError(f"JSON nested too deeply; send a flat object like {example}")
    if not isinstance(message, dict):
        return ProtocolError('a text message must be a JSON object with a "type"')
    return message


def parse_text(text: str, max_bytes: int) -> ClientEvent | ProtocolError:
    """A text message: one JSON object with a known ``type`` and valid fields (unknown fields ignored)."""
    message = json_object(text, max_bytes, '{"type": "start"}')
    if isinstance(message, ProtocolError):
        return message
    kind = message.get("type")
    if kind == "start":
        return Start()
    if kind == "stop":
        return Stop()
    if kind == "ptt":
        pressed = message.get("pressed")
        if not isinstance(pressed, bool):
            return ProtocolError('ptt needs "pressed": true or false')
        return PushToTalk(pressed)
    if kind == "text":
        return _user_text(message.get("text"))
    known = ", ".join(CLIENT_TYPES)
    if not isinstance(kind, str):
        return ProtocolError(f'a message needs a "type" (one of {known})')
    return ProtocolError(f"unknown message type {kind[:40]!r}; types are {known}")


def _user_text(text: Any) -> UserText | ProtocolError:
    if not isinstance(text, str) or not text.strip():
        return ProtocolError('text needs a non-empty "text" string')
    if len(text) > MAX_TEXT_CHARS:
        return ProtocolError(f"text of {len(text)} characters is over the limit of {MAX_TEXT_CHARS}")
    return UserText(text.strip())


# --- server -> client ----------------------------------------------------------------------------


def encode(kind: str, **fields: Any) -> str:
    """One server message as JSON text."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))


def session(session_id: str) -> str:
    """Sent first: the id under which the conversation is saved (``/api/conversations/{id}``)."""
    return encode("session", session_id=session_id)


def audio_format(sample_rate: int, channels: int = 1) -> str:
    """Sent before the first bot audio and whenever its format changes."""
    return encode("audio_format", sample_rate=sample_rate, channels=channels)


def transcript(text: str, final: bool) -> str:
    """What the user said: interim (to be rewritten) or final."""
    return encode("transcript", text=text, final=final)


def assistant_text(text: str, final: bool) -> str:
    """A chunk of the reply to append (``final`` false), or the whole reply once it is complete."""
    return encode("assistant_text", text=text, final=final)


def status(state: str) -> str:
    """starting, listening, hearing, thinking, speaking or ended."""
    return encode("status", state=state)


def draining(deadline_s: float) -> str:
    """The server is shutting down: the conversation goes on for up to ``deadline_s`` seconds, then is
    stopped (saved) and closed with 1001; a new one should be opened elsewhere."""
    return encode("status", state="draining", deadline_s=round(deadline_s))


def interrupted() -> str:
    """The user barged in: stop playing bot audio at once."""
    return encode("interrupted")


def metrics(voice_to_voice_ms: float) -> str:
    """Per turn: from the true end of the user's speech to the first bot audio sent."""
    return encode("metrics", voice_to_voice_ms=round(voice_to_voice_ms, 1))


def error(message: str) -> str:
    """Something went wrong; unless the connection closes after it, the session goes on."""
    return encode("error", message=message)


# --- input state ---------------------------------------------------------------------------------


class MicGate:
    """Whether incoming audio counts as the user's: hands-free, or only while hold-to-talk is held.

    Gated audio is replaced by silence rather than dropped, so the stream's clock (and a VAD's
    timestamps) stay continuous and a release ends the utterance like a pause would.
    """

    def __init__(self) -> None:
        self.push_to_talk = False  # True once a ptt message arrived, until a start
        self.pressed = False

    def feed(self, event: Start | PushToTalk) -> None:
        """Update from a ``start`` (hands-free) or ``ptt`` message."""
        if isinstance(event, Start):
            self.push_to_talk = self.pressed = False
        else:
            self.push_to_talk = True
            self.pressed = event.pressed

    @property
    def open(self) -> bool:
        """Whether audio arriving now is passed on as it is."""
        return not self.push_to_talk or self.pressed

    def apply(self, pcm: bytes) -> bytes:
        """``pcm`` when open, else the same length of silence."""
        return pcm if self.open else bytes(len(pcm))


class Rechunker:
    """Cuts a byte stream into fixed-size chunks (whole audio frames), keeping the remainder."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"chunk size must be positive, got {size}")
        self.size = size
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole chunks now available."""
        self._pending += data
        whole = len(self._pending) // self.size * self.size
        chunks = [bytes(self._pending[i : i + self.size]) for i in range(0, whole, self.size)]
        del self._pending[:whole]
        return chunks

    def flush(self) -> bytes:
        """What is left (less than one chunk), padded with silence to a whole chunk; b"" if nothing."""
        rest, self._pending = bytes(self._pending), bytearray()
        return rest + bytes(self.size - len(rest)) if rest else b""
