"""The ``whisper-json`` wire protocol, Sans-I/O: what "whisper websocket" demo pages speak.

Chosen with ``websocket.input {protocol: whisper-json}``; the default ``/ws`` protocol
(``transports.websocket.protocol``) is untouched. Nothing here touches a socket.

Client -> server, text JSON::

    {"type": "audio", "audio": "<base64>"}

The base64 holds 16 kHz mono PCM, signed 16-bit little-endian — or a WAV file (``RIFF`` header: PCM 8,
16, 24 or 32-bit, or float; any rate and channel count; it is mixed to mono and resampled). A data URL
prefix (``data:audio/wav;base64,``, what ``FileReader.readAsDataURL`` gives) is accepted, and so is
``"sample_rate": N`` for raw PCM at another rate. A binary message carries the same bytes without the
base64. Compressed recordings (WebM, Ogg, MP4, MP3, FLAC: ``MediaRecorder``'s output) are refused with
an error that says what to send instead, and so is audio that would decode to more than
``MAX_EXPANSION`` times the message limit (a low-rate WAV grows when resampled to 16 kHz). Whether one
message is a whole utterance or a piece of a microphone stream is the input node's ``audio_messages``
setting.

Server -> client, text JSON::

    {"type": "status", "message": "connected", "session_id": "..."}   # then ready, speech detected,
    {"type": "status", "message": "transcribing"}                      # transcribing, ended
    {"type": "transcription", "text": "...", "status": "success"}
    {"type": "error", "message": "..."}                                # the session goes on

Messages the default protocol has and this one lacks (interim transcripts, the assistant's reply,
bot audio and its format, barge-in, latency) encode to None: they are not sent.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import VoxgraphError
from transports.websocket.protocol import SAMPLE_RATE, Audio, ProtocolError, encode, json_object

__all__ = [
    "AudioError",
    "assistant_text",
    "audio_format",
    "decode_audio",
    "draining",
    "error",
    "interrupted",
    "metrics",
    "parse_binary",
    "parse_text",
    "read_wav",
    "session",
    "status",
    "transcript",
]

MIN_RATE, MAX_RATE = 1000, 384000
"""Sample rates taken (Hz); anything else is a broken header or field."""
MAX_EXPANSION = 4
"""Decoded 16 kHz audio may be at most this many times the message limit: a low-rate WAV grows when
resampled, and one message must not become minutes of audio and seconds of CPU on the event loop."""
STATUS_MESSAGES: dict[str, str | None] = {
    "starting": None,  # the "connected" status already said it
    "listening": "ready",
    "hearing": "speech detected",
    "thinking": "transcribing",
    "speaking": None,
    "ended": "ended",
}
"""Session state (the default protocol's ``status``) -> this protocol's status message; None: not sent."""
CONTAINERS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (0, b"OggS", "Ogg"),
    (0, b"fLaC", "FLAC"),
    (0, b"ID3", "MP3"),
    (4, b"ftyp", "MP4/M4A"),
)
"""(offset, magic bytes, name) of compressed formats a page may send instead of WAV or PCM."""
_SPACE = re.compile(r"\s")


class AudioError(VoxgraphError, ValueError):
    """Audio bytes that cannot be turned into 16 kHz mono PCM; the message says why and what to send."""


@dataclass(frozen=True, slots=True)
class WavFormat:
    """What a WAV file's ``fmt`` chunk says."""

    tag: int  # 1 integer PCM, 3 IEEE float
    channels: int
    rate: int
    bits: int


# --- client -> server ----------------------------------------------------------------------------


def parse_text(text: str, max_bytes: int) -> Audio | ProtocolError:
    """A text message: ``{"type": "audio", "audio": "<base64>"}``, at most ``max_bytes``."""
    message = json_object(text, max_bytes, '{"type": "audio", "audio": "<base64>"}')
    if isinstance(message, ProtocolError):
        return message
    kind = message.get("type")
    if kind == "audio":
        return _audio_message(message, max_bytes)
    if not isinstance(kind, str):
        return ProtocolError('a message needs a "type": "audio"')
    return ProtocolError(f'unknown message type {kind[:40]!r}; send {{"type": "audio", "audio": "<base64>"}}')


def parse_binary(data: bytes, max_bytes: int) -> Audio | ProtocolError:
    """A binary message: the audio bytes themselves (16 kHz s16le PCM or a WAV file)."""
    if len(data) > max_bytes:
        return ProtocolError(f"message of {len(data)} bytes is over the limit of {max_bytes}")
    return _audio(bytes(data), SAMPLE_RATE, max_bytes)


def _audio_message(message: dict[str, Any], max_bytes: int) -> Audio | ProtocolError:
    payload = message.get("audio")
    if not isinstance(payload, str) or not payload:
        return ProtocolError('audio needs "audio": a base64 string of 16 kHz 16-bit mono PCM or a WAV file')
    rate = message.get("sample_rate", message.get("sampleRate", SAMPLE_RATE))
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        return ProtocolError(f'"sample_rate" must be a whole number of Hz ({MIN_RATE}..{MAX_RATE})')
    try:
        data = _base64(payload)
    except ValueError as bad:
        return ProtocolError(f'"audio" is not valid base64: {bad}')
    return _audio(data, rate, max_bytes)


def _base64(payload: str) -> bytes:
    """Standard base64, from a data URL too; whitespace and missing padding are forgiven."""
    if payload.startswith("data:"):
        header, comma, payload = payload.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError("a data URL must be base64 (data:audio/wav;base64,...)")
    if _SPACE.search(payload):
        payload = "".join(payload.split())
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except binascii.Error as bad:
        raise ValueError(str(bad)) from None


def _audio(data: bytes, sample_rate: int, max_bytes: int) -> Audio | ProtocolError:
    try:
        return Audio(decode_audio(data, sample_rate, max_bytes * MAX_EXPANSION))
    except AudioError as bad:
        return ProtocolError(str(bad))


# --- audio ---------------------------------------------------------------------------------------


def decode_audio(data: bytes, sample_rate: int = SAMPLE_RATE, max_output: int = 0) -> bytes:
    """16 kHz mono s16le PCM from a WAV file's bytes, or from raw s16le mono PCM at ``sample_rate``.

    Args:
        max_output: refuse audio that would decode to more bytes than this (0: no limit).

    Raises:
        AudioError: empty, odd-length or compressed audio, a WAV file this cannot read, or too long.
    """
    if not data:
        raise AudioError("empty audio")
    if data[:4] == b"RIFF":
        samples, sample_rate = read_wav(data)
    else:
        for offset, magic, name in CONTAINERS:
            if data[offset : offset + len(magic)] == magic:
                raise AudioError(
                    f"{name} audio is not supported: send a WAV file or 16 kHz 16-bit mono PCM "
                    "(e.g. from an AudioWorklet) instead of MediaRecorder's compressed output"
                )
        if len(data) % 2:
            raise AudioError(f"PCM audio must be whole 16-bit samples; got an odd {len(data)} bytes")
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if not samples.size:
        raise AudioError("the audio holds no samples")
    output = samples.size * SAMPLE_RATE // sample_rate * 2
    if max_output and output > max_output:
        raise AudioError(
            f"{samples.size / sample_rate:.0f} s of audio at {sample_rate} Hz is {output} bytes at 16 kHz, "
            f"over the limit of {max_output}: send shorter pieces, or 16 kHz audio"
        )
    if sample_rate != SAMPLE_RATE:
        samples = _resampled(samples, sample_rate)
    finite: np.ndarray = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)  # a float WAV: NaN, inf
    return np.clip(np.round(finite * 32768.0), -32768, 32767).astype("<i2").tobytes()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channels averaged) and the sample rate of a WAV file's bytes.

    A ``data`` chunk whose size is a placeholder (0 or 0xFFFFFFFF, as streaming recorders write) or
    runs past the end is read to the end of the bytes.

    Raises:
        AudioError: not a WAV file, or an encoding other than integer PCM or float.
    """
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise AudioError("RIFF data that is not a WAVE file")
    fmt: WavFormat | None = None
    position = 12
    while position + 8 <= len(data):
        chunk, body = data[position : position + 4], position + 8
        size = int.from_bytes(data[position + 4 : body], "little")
        if chunk == b"fmt ":
            fmt = _wav_format(data[body : body + size])
        elif chunk == b"data":
            if fmt is None:
                raise AudioError("WAV file with its data before its fmt chunk")
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            return _wav_samples(data[body:end], fmt), fmt.rate
        position = body + size + (size & 1)
    raise AudioError("WAV file without a data chunk" if fmt else "WAV file without a fmt chunk")


def _wav_format(chunk: bytes) -> WavFormat:
    if len(chunk) < 16:
        raise AudioError("WAV fmt chunk is too short")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
    if tag == 0xFFFE and len(chunk) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
        tag = int.from_bytes(chunk[24:26], "little")
    if (tag, bits) not in ((1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)):
        raise AudioError(f"WAV encoding {tag} with {bits}-bit samples is not supported: use 16-bit PCM")
    if not 1 <= channels <= 32 or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"WAV header says {channels} channels at {rate} Hz: not a usable file")
    return WavFormat(tag, channels, rate, bits)


def _wav_samples(raw: bytes, fmt: WavFormat) -> np.ndarray:
    width = fmt.bits // 8
    block = width * fmt.channels
    raw = raw[: len(raw) // block * block]  # a truncated file loses its partial last frame
    if fmt.tag == 3:
        samples = np.frombuffer(raw, dtype=f"<f{width}").astype(np.float32)
    elif width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = ((values << 8) >> 8).astype(np.float32) / float(1 << 23)  # sign-extend 24 bits
    else:
        samples = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float32) / float(1 << (fmt.bits - 1))
    if fmt.channels > 1:
        samples = samples.reshape(-1, fmt.channels).mean(axis=1)
    return samples


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return np.asarray(soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ"), dtype=np.float32)


# --- server -> client ----------------------------------------------------------------------------


def session(session_id: str) -> str:
    """Sent first: the client is connected (``session_id`` names the conversation, if it is saved)."""
    return encode("status", message="connected", session_id=session_id)


def status(state: str) -> str | None:
    """The session's state as a status message (see ``STATUS_MESSAGES``)."""
    message = STATUS_MESSAGES.get(state, state)
    return None if message is None else encode("status", message=message)


def draining(deadline_s: float) -> str | None:
    """The server is shutting down: a ``draining`` status (the deadline is not in this protocol)."""
    return status("draining")


def transcript(text: str, final: bool) -> str | None:
    """A final transcript is a ``transcription``; interim ones are not sent."""
    return encode("transcription", text=text, status="success") if final else None


def error(message: str) -> str:
    """Something went wrong; unless the connection closes after it, the session goes on."""
    return encode("error", message=message)


def assistant_text(text: str, final: bool) -> str | None:
    """Not in this protocol."""
    return None


def audio_format(sample_rate: int, channels: int = 1) -> str | None:
    """Not in this protocol: it carries no bot audio."""
    return None


def interrupted() -> str | None:
    """Not in this protocol."""
    return None


def metrics(voice_to_voice_ms: float) -> str | None:
    """Not in this protocol."""
    return None
