"""AssemblyAI's v3 streaming protocol as a server speaks it, Sans-I/O: query and messages in, JSON out.

What a client sends: the session's configuration in the connection's query string (``sample_rate``,
``encoding``, ``speech_model``, ``format_turns``, end-of-turn settings...), then binary audio (50 to
1000 ms a message) and JSON ``UpdateConfiguration``, ``ForceEndpoint``, ``KeepAlive`` and ``Terminate``.
What it gets: ``Begin``, ``SpeechStarted``, ``Turn`` (partials with ``end_of_turn: false``, a final,
and with ``format_turns`` a formatted final), ``Termination`` with the durations billed, or ``Error``
followed by a close with the same code. Values are refused as the service refuses them: a
``WireError`` carries the code and the message the client gets. Nothing here touches a socket.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.errors import VoxgraphError

__all__ = [
    "ENCODINGS",
    "SPEECH_MODELS",
    "ForceEndpoint",
    "KeepAlive",
    "StreamingConfig",
    "Terminate",
    "UpdateConfiguration",
    "WireError",
    "Word",
    "begin",
    "chunk_ms",
    "error",
    "parse_query",
    "parse_text",
    "termination",
    "turn",
    "unformatted",
    "warning",
]

ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}
"""Encodings taken -> bytes per sample."""
COMPRESSED_ENCODINGS = ("opus", "ogg_opus", "aac")
SPEECH_MODELS = (
    "u3-rt-pro",
    "u3-rt-pro-beta-1",
    "u3-pro",
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "universal-3-5-pro",
    "universal-3-6",
    "universal-3-6-pro",
    "whisper-rt",
)
"""The streaming models the service names; every one is served by the same local graph."""
MIN_RATE, MAX_RATE = 8000, 48000
MIN_CHUNK_MS, MAX_CHUNK_MS = 50.0, 1000.0
MIN_INACTIVITY, MAX_INACTIVITY = 5, 3600
API_VERSION = "2025-05-12"

INPUT_VALIDATION = 3006
AUDIO_VIOLATION = 3007
SESSION_EXPIRED = 3008
SERVER_ERROR = 3005
UNAUTHORIZED = 1008
TRY_AGAIN = 1013

_BOOLEANS = {"true": True, "false": False}
_TRAILING_PUNCTUATION = re.compile(r"^[^\w']+|[^\w']+$")


class WireError(VoxgraphError):
    """The client broke the protocol: it gets ``Error`` with ``code`` and ``message``, then a close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True, kw_only=True)
class StreamingConfig:
    """One session's configuration: the query's values, then ``UpdateConfiguration``'s."""

    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    speech_model: str = "universal-streaming-english"
    format_turns: bool = False
    end_of_turn_confidence_threshold: float = 0.4
    min_turn_silence: int = 400  # ms
    max_turn_silence: int = 1280  # ms
    vad_threshold: float | None = None
    inactivity_timeout: int | None = None  # seconds without a message that end the session
    keyterms_prompt: list[str] = field(default_factory=list)
    prompt: str | None = None
    language_detection: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # accepted settings this server does not act on
    given: set[str] = field(default_factory=set)  # the settings the client named (query or update)

    @property
    def bytes_per_sample(self) -> int:
        return ENCODINGS[self.encoding]


_KNOWN = {f.name for f in fields(StreamingConfig)} - {"extra", "given"}
_FLOATS_0_1 = ("end_of_turn_confidence_threshold", "vad_threshold", "voice_focus_threshold")
_MILLISECONDS = ("min_turn_silence", "max_turn_silence", "interruption_delay", "turn_left_pad_ms")
_BOOLEAN_KEYS = (
    "format_turns",
    "language_detection",
    "speaker_labels",
    "continuous_partials",
    "filter_profanity",
    "include_partial_turns",
    "redact_pii",
    "session_heartbeat",
    "acknowledge_silence",
    "customer_support_audio_capture",
)
_LIST_KEYS = ("keyterms_prompt", "language_codes", "redact_pii_policies")
_TEXT_KEYS = ("prompt", "agent_context", "language_code", "domain", "mode", "voice_focus", "webhook_url")
SESSION_KEYS = frozenset(
    {
        "end_of_turn_confidence_threshold",
        "min_end_of_turn_silence_when_confident",
        "min_turn_silence",
        "max_turn_silence",
        "vad_threshold",
        "format_turns",
        "keyterms_prompt",
        "filter_profanity",
        "prompt",
        "agent_context",
        "interruption_delay",
        "turn_left_pad_ms",
        "language_codes",
        "session_heartbeat",
        "acknowledge_silence",
    }
)
"""What ``UpdateConfiguration`` may change (the SDK's session parameters)."""
IGNORED_QUERY_KEYS = frozenset({"token"})


def parse_query(query: Mapping[str, str]) -> StreamingConfig:
    """The session's configuration from the connection's query. Raises ``WireError`` (3006)."""
    config = StreamingConfig()
    encoding = query.get("encoding", "pcm_s16le")
    if encoding in COMPRESSED_ENCODINGS:
        raise WireError(INPUT_VALIDATION, f"Invalid encoding: {encoding} is not served here; send pcm_s16le")
    if encoding not in ENCODINGS:
        raise WireError(INPUT_VALIDATION, f"Invalid encoding: {encoding!r} (pcm_s16le or pcm_mulaw)")
    config.encoding = encoding
    config.sample_rate = _sample_rate(query.get("sample_rate"))
    model = query.get("speech_model", config.speech_model)
    if model not in SPEECH_MODELS:
        raise WireError(INPUT_VALIDATION, f"Invalid speech_model: {model!r}")
    config.speech_model = model
    settings = {k: v for k, v in query.items() if k not in ("encoding", "sample_rate", "speech_model")}
    apply(config, {k: _from_query(k, v) for k, v in settings.items() if k not in IGNORED_QUERY_KEYS})
    if config.inactivity_timeout is not None and not (
        MIN_INACTIVITY <= config.inactivity_timeout <= MAX_INACTIVITY
    ):
        raise WireError(
            INPUT_VALIDATION,
            f"Invalid inactivity_timeout: must be between {MIN_INACTIVITY} and {MAX_INACTIVITY} seconds",
        )
    return config


def apply(config: StreamingConfig, settings: Mapping[str, Any]) -> None:
    """Check ``settings`` (query values or an update's) and set them on ``config``. Raises ``WireError``."""
    for key, value in settings.items():
        name = "min_turn_silence" if key == "min_end_of_turn_silence_when_confident" else key
        checked = _checked(name, value)
        if name in _KNOWN:
            setattr(config, name, checked)
        else:
            config.extra[name] = checked
        config.given.add(name)
    if config.min_turn_silence > config.max_turn_silence:
        raise WireError(INPUT_VALIDATION, "Invalid min_turn_silence: it must not exceed max_turn_silence")


def _sample_rate(text: str | None) -> int:
    try:
        rate = int(text or "")
    except ValueError:
        rate = 0
    if not MIN_RATE <= rate <= MAX_RATE:
        raise WireError(
            INPUT_VALIDATION, f"Invalid sample_rate: a whole number from {MIN_RATE} to {MAX_RATE} is required"
        )
    return rate


def _from_query(key: str, text: str) -> Any:
    """A query string's value as JSON would carry it (booleans come as ``true`` or ``True``)."""
    if key in _TEXT_KEYS:
        return text
    if text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    if key in _LIST_KEYS:
        try:
            return json.loads(text)
        except ValueError:
            raise WireError(INPUT_VALIDATION, f"Invalid {key}: a JSON list is required") from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _checked(key: str, value: Any) -> Any:
    """``value`` if it suits ``key``, else ``WireError`` (3006) naming the key."""
    kind = type(value)
    if key in _BOOLEAN_KEYS:
        ok = kind is bool
    elif key in _FLOATS_0_1:
        ok = kind in (int, float) and 0.0 <= float(value) <= 1.0
        value = float(value) if ok else value
    elif key in _MILLISECONDS or key in ("inactivity_timeout", "max_speakers"):
        ok = kind is int and value >= 0
    elif key in _LIST_KEYS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif key in _TEXT_KEYS:
        ok = isinstance(value, str)
    else:
        ok = not isinstance(value, dict)  # a setting this server does not act on: kept as sent
    if not ok:
        raise WireError(INPUT_VALIDATION, f"Invalid {key}: {value!r}")
    return value


# --- client messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Terminate:
    """End the session: the last turn, then ``Termination``."""


@dataclass(frozen=True, slots=True)
class ForceEndpoint:
    """End the turn in progress now."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Nothing to do: the session is in use."""


@dataclass(frozen=True, slots=True)
class UpdateConfiguration:
    """New values for session settings (``SESSION_KEYS``)."""

    settings: dict[str, Any]


ClientMessage = Terminate | ForceEndpoint | KeepAlive | UpdateConfiguration


def parse_text(text: str) -> ClientMessage:
    """One JSON message from the client. Raises ``WireError`` (3006) as the service does."""
    try:
        message = json.loads(text)
    except ValueError:
        raise WireError(INPUT_VALIDATION, f"Invalid JSON: {text[:80]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise WireError(INPUT_VALIDATION, f"Invalid Message: {text[:80]}")
    kind = message["type"]
    if kind == "Terminate":
        return Terminate()
    if kind == "ForceEndpoint":
        return ForceEndpoint()
    if kind == "KeepAlive":
        return KeepAlive()
    if kind == "UpdateConfiguration":
        settings = {k: v for k, v in message.items() if k != "type"}
        unknown = sorted(set(settings) - SESSION_KEYS)
        if unknown:
            raise WireError(INPUT_VALIDATION, f"Invalid Message: unknown settings {', '.join(unknown)}")
        return UpdateConfiguration(settings)
    raise WireError(INPUT_VALIDATION, f"Invalid Message Type: {kind[:80]}")


def chunk_ms(size: int, config: StreamingConfig) -> float:
    """Milliseconds of audio in a binary message of ``size`` bytes."""
    return 1000.0 * size / config.bytes_per_sample / config.sample_rate


def check_chunk(size: int, config: StreamingConfig) -> float:
    """The message's milliseconds if 50 to 1000, else ``WireError`` (3007)."""
    ms = chunk_ms(size, config)
    if not MIN_CHUNK_MS - 1e-6 <= ms <= MAX_CHUNK_MS + 1e-6:
        raise WireError(
            AUDIO_VIOLATION,
            f"Input duration violation: {ms:.0f} ms. Expected between {MIN_CHUNK_MS:.0f} and "
            f"{MAX_CHUNK_MS:.0f} ms",
        )
    return ms


# --- server messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a turn: milliseconds from the start of the session's audio."""

    text: str
    start: int
    end: int
    confidence: float = 0.9
    final: bool = True


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def begin(session_id: str, expires_at: int, config: StreamingConfig) -> str:
    """``Begin``: the session's id and when it expires (Unix seconds)."""
    configuration = {"model": config.speech_model, "api_version": API_VERSION}
    return _encode(
        {"type": "Begin", "id": session_id, "expires_at": expires_at, "configuration": configuration}
    )


def speech_started(timestamp_ms: int) -> str:
    return _encode({"type": "SpeechStarted", "timestamp": timestamp_ms, "confidence": 0.9})


def turn(
    order: int,
    words: list[Word],
    *,
    end_of_turn: bool,
    formatted: bool,
    confidence: float,
    language: str | None = "en",
) -> str:
    """A ``Turn``: its transcript is the words joined, ``utterance`` only once the turn ended."""
    transcript = " ".join(w.text for w in words)
    message: dict[str, Any] = {
        "type": "Turn",
        "turn_order": order,
        "turn_is_formatted": formatted,
        "end_of_turn": end_of_turn,
        "transcript": transcript,
        "utterance": transcript if end_of_turn else "",
        "end_of_turn_confidence": round(confidence, 4),
        "words": [
            {
                "start": w.start,
                "end": w.end,
                "text": w.text,
                "confidence": round(w.confidence, 4),
                "word_is_final": w.final,
            }
            for w in words
        ],
    }
    if language:
        message["language_code"] = language
        message["language_confidence"] = 1.0
    return _encode(message)


def termination(audio_seconds: float, session_seconds: float) -> str:
    """``Termination``: the audio received and the time the session was open, in whole seconds."""
    return _encode(
        {
            "type": "Termination",
            "audio_duration_seconds": round(audio_seconds),
            "session_duration_seconds": round(session_seconds),
        }
    )


def error(code: int, message: str) -> str:
    """``Error``: the client then sees the socket close with ``code``."""
    return _encode({"type": "Error", "error_code": code, "error": message})


def warning(message: str, code: int = 0) -> str:
    """``Warning``: something went wrong that ends nothing."""
    return _encode({"type": "Warning", "warning_code": code, "warning": message})


def unformatted(text: str) -> str:
    """A word as an unformatted turn has it: lower-case, no punctuation around it."""
    return _TRAILING_PUNCTUATION.sub("", text).lower()
