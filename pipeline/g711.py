"""G.711 µ-law (PCMU) and A-law (PCMA): the 8-bit telephone codecs, on 16-bit little-endian PCM bytes.

Phone carriers send and expect 8 kHz G.711. ``audioop`` did this until Python 3.13 removed it; this
module gives the same codes for every input (the algorithms ``audioop.lin2ulaw``/``lin2alaw`` use:
floor the sample to 14 or 13 bits, then find its segment), so audio encoded here matches what other
software built on audioop produces byte for byte.

Each direction is a lookup table built once at import from the vectorised formulas below: 65,536
entries for encoding (one per int16 value), 256 for decoding. A 20 ms telephone frame is 160 samples,
so a call costs one numpy indexing per frame and each direction.

µ-law silence is ``0xFF`` (decodes to 0); A-law silence is ``0xD5`` (decodes to +8, the smallest step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ULAW_SILENCE = 0xFF
"""The µ-law code for 0: pad frames with it."""
ALAW_SILENCE = 0xD5
"""The A-law code nearest 0 (decodes to +8): pad frames with it."""

_INT16 = np.dtype("<i2")
_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_CLIP = 8158  # 32635 >> 2: larger 14-bit magnitudes all take the top code
_ULAW_BIAS = 33  # 0x84 >> 2: shifts each segment so its boundaries are powers of two


def _ulaw_codes(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """µ-law codes of int16 ``samples``: the 14-bit magnitude, biased, split into segment and step."""
    x = samples.astype(np.int32) >> 2  # floors negatives, as audioop does (-1 -> -1, not 0)
    mask = np.where(x < 0, 0x7F, 0xFF)  # codes go out inverted; the sign bit ends up 1 for positive
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude, side="left").astype(np.int32)
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    codes: np.ndarray[Any, Any] = (code ^ mask).astype(np.uint8)
    return codes


def _ulaw_samples(codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Linear int16 values of µ-law ``codes`` (range ±32124)."""
    u = ~codes.astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    samples: np.ndarray[Any, Any] = np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)
    return samples


def _alaw_codes(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A-law codes of int16 ``samples``: the 13-bit magnitude split into segment and step."""
    x = samples.astype(np.int32) >> 3
    negative = x < 0
    mask = np.where(negative, 0x55, 0xD5)  # A-law toggles the even bits
    value = np.where(negative, -x - 1, x)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, value, side="left").astype(np.int32)
    step = np.where(segment < 2, value >> 1, value >> np.maximum(segment, 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | step)
    codes: np.ndarray[Any, Any] = (code ^ mask).astype(np.uint8)
    return codes


def _alaw_samples(codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Linear int16 values of A-law ``codes`` (range ±32256)."""
    a = codes.astype(np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    segment = (a & 0x70) >> 4
    t = np.where(segment == 0, t + 8, np.where(segment == 1, t + 0x108, (t + 0x108) << (segment - 1)))
    samples: np.ndarray[Any, Any] = np.where(a & 0x80, t, -t).astype(np.int16)
    return samples


_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
_ALL_CODES = np.arange(256, dtype=np.uint8)
# Encoding tables are indexed by the sample's bit pattern read as uint16 (0..65535).
_ULAW_ENCODE = np.empty(65536, dtype=np.uint8)
_ULAW_ENCODE[_ALL_INT16.view(np.uint16)] = _ulaw_codes(_ALL_INT16)
_ALAW_ENCODE = np.empty(65536, dtype=np.uint8)
_ALAW_ENCODE[_ALL_INT16.view(np.uint16)] = _alaw_codes(_ALL_INT16)
_ULAW_DECODE = _ulaw_samples(_ALL_CODES).astype(_INT16)
_ALAW_DECODE = _alaw_samples(_ALL_CODES).astype(_INT16)


def _samples_of(pcm16: bytes) -> np.ndarray[Any, Any]:
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM has an even number of bytes, got {len(pcm16)}")
    return np.frombuffer(pcm16, dtype=_INT16)


def ulaw_encode_array(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """µ-law codes (uint8) of int16 ``samples``, one per sample."""
    codes: np.ndarray[Any, Any] = _ULAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)]
    return codes


def ulaw_decode_array(codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Int16 samples of µ-law ``codes`` (uint8)."""
    samples: np.ndarray[Any, Any] = _ULAW_DECODE[np.asarray(codes, dtype=np.uint8)].astype(np.int16)
    return samples


def alaw_encode_array(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A-law codes (uint8) of int16 ``samples``, one per sample."""
    codes: np.ndarray[Any, Any] = _ALAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)]
    return codes


def alaw_decode_array(codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Int16 samples of A-law ``codes`` (uint8)."""
    samples: np.ndarray[Any, Any] = _ALAW_DECODE[np.asarray(codes, dtype=np.uint8)].astype(np.int16)
    return samples


def ulaw_encode(pcm16: bytes) -> bytes:
    """µ-law bytes of s16le mono ``pcm16`` (half as many bytes). Raises ValueError on an odd length."""
    return ulaw_encode_array(_samples_of(pcm16)).tobytes()


def ulaw_decode(data: bytes) -> bytes:
    """S16le PCM of µ-law ``data`` (twice as many bytes)."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def alaw_encode(pcm16: bytes) -> bytes:
    """A-law bytes of s16le mono ``pcm16`` (half as many bytes). Raises ValueError on an odd length."""
    return alaw_encode_array(_samples_of(pcm16)).tobytes()


def alaw_decode(data: bytes) -> bytes:
    """S16le PCM of A-law ``data`` (twice as many bytes)."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()
