"""OpenAI's request and response shapes for the served ``/v1`` routes: pure, no sockets, no engines.

Requests are read the way OpenAI's API reads them (its parameter names, its limits, a 400 in its error
shape ``{"error": {"message", "type", "param", "code"}}`` for anything it would refuse); responses are
built as the official ``openai`` SDK parses them: chat completions and their stream chunks,
transcriptions as json, text, verbose_json (segments, words), srt and vtt, and the transcription
stream's ``transcript.text.delta`` / ``transcript.text.done`` events.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import VoxgraphError

__all__ = [
    "OPENAI_VOICES",
    "SPEECH_FORMATS",
    "TRANSCRIPTION_FORMATS",
    "ChatRequest",
    "RequestError",
    "Segment",
    "SpeechRequest",
    "TranscriptionRequest",
    "chat_chunk",
    "chat_completion",
    "error_body",
    "parse_chat",
    "parse_speech",
    "parse_transcription",
    "segments_of",
    "sse",
    "transcription_response",
]

OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)
"""Voice names OpenAI's speech endpoint knows: clients hard-code them, so each is served."""
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
"""``response_format`` values served, all 24 kHz mono (pcm: bare s16le); mp3 is OpenAI's default."""
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Roles a chat message may have, and the role the engine sees (``developer`` is the newer ``system``)."""
SENTENCE_END = re.compile(r"[.!?…]['\")\]]*$")
ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "vs.", "etc.", "e.g.", "i.e."}
)
"""Words ending in a full stop that end no sentence."""
SEGMENT_GAP = 1.0
"""Seconds of silence between two words that start a new segment."""
MAX_SEGMENT = 30.0


class RequestError(VoxgraphError):
    """A request OpenAI's API would refuse: the status and the error body's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind  # the error body's ``type``
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """The error body OpenAI sends."""
        return error_body(self.message, self.kind, self.code, self.param)


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI's API answers a refused request."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


# --- chat ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, checked."""

    model: str
    messages: list[dict[str, str]]  # role (system, user, assistant) and text content
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    max_tokens: int | None = None  # max_completion_tokens or max_tokens; None: the node's own
    temperature: float | None = None  # None: the node's own


def parse_chat(body: Any) -> ChatRequest:
    """``body`` as a ``ChatRequest``; raises ``RequestError`` (400) as OpenAI would."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "you must provide a model parameter", param="model")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty array", param="messages")
    messages = [_chat_message(index, message) for index, message in enumerate(raw)]
    if body.get("tools") or body.get("functions"):
        raise RequestError(400, "this server's models do not call tools", param="tools")
    if body.get("n") not in (None, 1):
        raise RequestError(400, "n must be 1: this server makes one choice per request", param="n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise RequestError(
            400, "max_completion_tokens must be a positive integer", param="max_completion_tokens"
        )
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2
    ):
        raise RequestError(400, "temperature must be a number from 0 to 2", param="temperature")
    options = body.get("stream_options") or {}
    return ChatRequest(
        model=model,
        messages=messages,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        max_tokens=limit,
        temperature=None if temperature is None else float(temperature),
    )


def _chat_message(index: int, message: Any) -> dict[str, str]:
    """One message as the engine takes it: its role and its text (text parts joined)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(400, f"{where} must be an object", param=where)
    role = CHAT_ROLES.get(message.get("role", ""))
    if role is None:
        shown = message.get("role")
        raise RequestError(
            400, f"{where}.role {shown!r} is not served: use system, user or assistant", param=where
        )
    content = message.get("content")
    if isinstance(content, list):
        if any(not isinstance(part, dict) or part.get("type") != "text" for part in content):
            raise RequestError(400, f"{where}: only text content parts are served", param=f"{where}.content")
        content = "".join(str(part.get("text", "")) for part in content)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise RequestError(400, f"{where}.content must be a string or text parts", param=f"{where}.content")
    return {"role": role, "content": content}


def chat_completion(
    ident: str, model: str, created: int, text: str, finish: str, usage: Mapping[str, int]
) -> dict[str, Any]:
    """A whole (non-streamed) chat completion."""
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": dict(usage),
        "system_fingerprint": None,
    }


def chat_chunk(
    ident: str,
    model: str,
    created: int,
    delta: Mapping[str, Any] | None,
    finish: str | None = None,
    usage: Mapping[str, int] | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``: a delta (None: the usage chunk, with no choices)."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish}]
    )
    chunk: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if with_usage:
        chunk["usage"] = dict(usage) if usage is not None else None
    return chunk


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """A chat ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --- speech ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """A speech request, checked."""

    model: str
    text: str
    voice: str
    response_format: str


def parse_speech(body: Any, voices: Sequence[str], max_chars: int) -> SpeechRequest:
    """``body`` as a ``SpeechRequest``; raises ``RequestError`` (400) as OpenAI would.

    ``voices``: the voice names served. The format is OpenAI's default, mp3, unless the body says.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model, text, voice = body.get("model"), body.get("input"), body.get("voice")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "you must provide a model parameter", param="model")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "input must be a non-empty string", param="input")
    if len(text) > max_chars:
        raise RequestError(
            400, f"input is {len(text)} characters; at most {max_chars} are taken", param="input"
        )
    if isinstance(voice, dict):  # {"id": "..."}: a custom voice
        voice = voice.get("id")
    if not isinstance(voice, str) or voice not in voices:
        shown = ", ".join(sorted(voices))
        raise RequestError(400, f"voice {voice!r} is not served; voices: {shown}", param="voice")
    kind = body.get("response_format", "mp3")
    if kind not in SPEECH_FORMATS:
        message = f"response_format {kind!r} is not served: use one of " + ", ".join(SPEECH_FORMATS)
        raise RequestError(400, message, param="response_format")
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4.0:
        raise RequestError(400, "speed must be a number from 0.25 to 4.0", param="speed")
    return SpeechRequest(model=model, text=text, voice=voice, response_format=kind)


# --- transcriptions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """A transcription request's fields (the file travels apart), checked."""

    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    stream: bool = False  # transcript.text.delta / done events (not for whisper-1, as OpenAI does)
    words: bool = False  # timestamp_granularities[] includes word


def parse_transcription(fields: Mapping[str, Sequence[str]]) -> TranscriptionRequest:
    """The multipart fields (name -> values) as a ``TranscriptionRequest``; raises ``RequestError``."""

    def one(name: str) -> str | None:
        values = fields.get(name)
        return values[-1] if values else None

    model = one("model")
    if not model:
        raise RequestError(400, "you must provide a model parameter", param="model")
    kind = one("response_format") or "json"
    if kind not in TRANSCRIPTION_FORMATS:
        shown = ", ".join(TRANSCRIPTION_FORMATS)
        raise RequestError(
            400, f"response_format {kind!r} is not served; use one of {shown}", param="response_format"
        )
    language = one("language") or None
    if language is not None and not re.fullmatch(r"[a-z]{2,3}", language):
        raise RequestError(
            400, f"language {language!r} is not an ISO-639-1 code such as en", param="language"
        )
    granularities = [*fields.get("timestamp_granularities[]", ()), *fields.get("timestamp_granularities", ())]
    if any(g not in ("word", "segment") for g in granularities):
        raise RequestError(
            400, "timestamp_granularities takes word and segment", param="timestamp_granularities"
        )
    if granularities and kind != "verbose_json":
        raise RequestError(
            400, "timestamp_granularities needs response_format verbose_json", param="timestamp_granularities"
        )
    stream = (one("stream") or "false").lower() == "true" and model != "whisper-1"
    return TranscriptionRequest(
        model=model,
        language=language,
        prompt=one("prompt") or None,
        response_format=kind,
        stream=stream,
        words="word" in granularities,
    )


@dataclass(slots=True)
class Segment:
    """A stretch of the transcript with its times (seconds from the file's start)."""

    start: float
    end: float
    text: str
    words: list[dict[str, Any]] = field(default_factory=list)


def segments_of(
    text: str, start: float, end: float, words: Sequence[Mapping[str, Any]] | None
) -> list[Segment]:
    """The segments of one transcribed piece of audio (``start``..``end`` in the file): split at sentence
    ends and pauses when word timings are known (times relative to the piece), else the piece whole."""
    if not text:
        return []
    if not words:
        return [Segment(start, end, text)]
    segments: list[Segment] = []
    current: Segment | None = None
    for word in words:
        text_, begin = str(word["text"]), round(start + float(word["start"]), 2)
        finish = round(start + float(word["end"]), 2)
        gap = current is not None and begin - current.end > SEGMENT_GAP
        if current is None or gap or finish - current.start > MAX_SEGMENT:
            current = Segment(begin, finish, "")
            segments.append(current)
        current.words.append({"word": text_, "start": begin, "end": finish})
        current.text = f"{current.text} {text_}".strip()
        current.end = finish
        if SENTENCE_END.search(text_) and text_.lower() not in ABBREVIATIONS:
            current = None
    return segments


def transcription_response(
    request: TranscriptionRequest,
    text: str,
    segments: Sequence[Segment],
    duration: float,
    language: str | None,
) -> tuple[str, str]:
    """(content type, body) of a finished transcription in the format asked for."""
    kind = request.response_format
    if kind == "text":
        return "text/plain; charset=utf-8", text + "\n"
    if kind == "srt":
        return "text/plain; charset=utf-8", _subtitles(segments, ",", numbered=True)
    if kind == "vtt":
        return "text/vtt; charset=utf-8", "WEBVTT\n\n" + _subtitles(segments, ".", numbered=False)
    usage = {"type": "duration", "seconds": max(1, round(duration))}
    if kind == "json":
        return "application/json", json.dumps({"text": text, "usage": usage})
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": _language_name(language or request.language or "en"),
        "duration": round(duration, 2),
        "text": text,
        "segments": [_segment_json(index, s) for index, s in enumerate(segments)],
        "usage": usage,
    }
    if request.words:
        body["words"] = [word for s in segments for word in s.words]
    return "application/json", json.dumps(body)


def transcript_delta(delta: str) -> dict[str, Any]:
    """A ``transcript.text.delta`` event."""
    return {"type": "transcript.text.delta", "delta": delta, "logprobs": None}


def transcript_done(text: str, duration: float) -> dict[str, Any]:
    """The ``transcript.text.done`` event ending a streamed transcription."""
    seconds = max(1, round(duration))
    return {
        "type": "transcript.text.done",
        "text": text,
        "logprobs": None,
        "usage": {"type": "duration", "seconds": seconds},
    }


def _segment_json(index: int, segment: Segment) -> dict[str, Any]:
    """A verbose_json segment (the decoder's own figures are not kept: neutral values stand in)."""
    return {
        "id": index,
        "seek": round(segment.start * 100),
        "start": round(segment.start, 2),
        "end": round(segment.end, 2),
        "text": " " + segment.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.0,
    }


def _subtitles(segments: Sequence[Segment], comma: str, numbered: bool) -> str:
    cues = []
    for index, s in enumerate(segments, 1):
        times = f"{_timestamp(s.start, comma)} --> {_timestamp(s.end, comma)}"
        cues.append((f"{index}\n" if numbered else "") + f"{times}\n{s.text}\n")
    return "\n".join(cues)


def _timestamp(seconds: float, comma: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{comma}{millis:03d}"


_LANGUAGES = {
    "en": "english",
    "fr": "french",
    "de": "german",
    "es": "spanish",
    "it": "italian",
    "nl": "dutch",
}


def _language_name(code: str) -> str:
    """verbose_json names the language in full, as Whisper does (``english``)."""
    return _LANGUAGES.get(code, code)


def now() -> int:
    """Unix time, for ``created`` fields."""
    return int(time.time())
