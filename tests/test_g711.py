"""G.711 µ-law and A-law: bit-exact codes, and the quality a caller hears on real speech."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipeline import g711
from tests.speech import LIBRIVOX, librivox, read_wav

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype("<i2")
ALL_CODES = bytes(range(256))

# x -> (µ-law code, its decoded value, A-law code, its decoded value)
VECTORS = {
    0: (0xFF, 0, 0xD5, 8),
    1: (0xFF, 0, 0xD5, 8),
    -1: (0x7E, -8, 0x55, -8),
    100: (0xF2, 104, 0xD3, 104),
    -100: (0x72, -104, 0x53, -104),
    1000: (0xCE, 988, 0xFA, 1008),
    -1000: (0x4E, -988, 0x7A, -1008),
    4000: (0xAF, 4092, 0x9A, 4032),
    12345: (0x97, 12412, 0xBD, 12544),
    -12345: (0x17, -12412, 0x3D, -12544),
    32767: (0x80, 32124, 0xAA, 32256),
    32635: (0x80, 32124, 0xAA, 32256),
    32124: (0x80, 32124, 0xAA, 32256),
    -32768: (0x00, -32124, 0x2A, -32256),
}
# SHA-256 of ulaw_encode(all int16) + alaw_encode(all int16) + ulaw_decode(0..255) + alaw_decode(0..255),
# as audioop computes them.
GOLDEN_SHA256 = "6fbb88439e2a27c2147efc4dcbebc6025818c442ea5316cfb74b304ac144fdf7"


def pcm(*samples: int) -> bytes:
    return np.array(samples, dtype="<i2").tobytes()


def samples_of(data: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(data, dtype="<i2")]


@pytest.mark.parametrize("x", list(VECTORS))
def test_reference_vectors(x: int) -> None:
    ulaw, ulaw_lin, alaw, alaw_lin = VECTORS[x]
    assert g711.ulaw_encode(pcm(x)) == bytes([ulaw])
    assert samples_of(g711.ulaw_decode(bytes([ulaw]))) == [ulaw_lin]
    assert g711.alaw_encode(pcm(x)) == bytes([alaw])
    assert samples_of(g711.alaw_decode(bytes([alaw]))) == [alaw_lin]


def test_whole_tables_match_the_golden_hash() -> None:
    everything = (
        g711.ulaw_encode(ALL_INT16.tobytes())
        + g711.alaw_encode(ALL_INT16.tobytes())
        + g711.ulaw_decode(ALL_CODES)
        + g711.alaw_decode(ALL_CODES)
    )
    assert hashlib.sha256(everything).hexdigest() == GOLDEN_SHA256


def reference_ulaw(x: int) -> int:
    """µ-law of one sample, step by step as the G.711 reference describes it."""
    x14 = x >> 2
    mag, mask = (-x14, 0x7F) if x14 < 0 else (x14, 0xFF)
    mag = min(mag, 8158) + 33
    seg = sum(1 for end in (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF) if end < mag)
    return ((seg << 4) | ((mag >> (seg + 1)) & 0x0F)) ^ mask


def reference_alaw(x: int) -> int:
    """A-law of one sample, step by step as the G.711 reference describes it."""
    x13 = x >> 3
    mask, v = (0xD5, x13) if x13 >= 0 else (0x55, -x13 - 1)
    seg = sum(1 for end in (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF) if end < v)
    code = 0x7F if seg == 8 else (seg << 4) | (((v >> 1) if seg < 2 else (v >> seg)) & 0x0F)
    return code ^ mask


def reference_ulaw_decode(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def reference_alaw_decode(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = t + 8 if seg == 0 else t + 0x108 if seg == 1 else (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def test_every_int16_encodes_as_the_reference_algorithm() -> None:
    values = [int(x) for x in ALL_INT16]
    assert g711.ulaw_encode(ALL_INT16.tobytes()) == bytes(reference_ulaw(x) for x in values)
    assert g711.alaw_encode(ALL_INT16.tobytes()) == bytes(reference_alaw(x) for x in values)


def test_every_code_decodes_as_the_reference_algorithm() -> None:
    assert samples_of(g711.ulaw_decode(ALL_CODES)) == [reference_ulaw_decode(c) for c in ALL_CODES]
    assert samples_of(g711.alaw_decode(ALL_CODES)) == [reference_alaw_decode(c) for c in ALL_CODES]


def test_decoded_values_encode_back_to_their_code() -> None:
    # µ-law has two zeros (0xFF and 0x7F); encoding 0 gives 0xFF. A-law has no negative zero.
    ulaw_again = g711.ulaw_encode(g711.ulaw_decode(ALL_CODES))
    assert ulaw_again == bytes(0xFF if c == 0x7F else c for c in ALL_CODES)
    assert g711.alaw_encode(g711.alaw_decode(ALL_CODES)) == ALL_CODES


def test_silence_codes_decode_to_the_quietest_value() -> None:
    assert samples_of(g711.ulaw_decode(bytes([g711.ULAW_SILENCE]))) == [0]
    assert samples_of(g711.alaw_decode(bytes([g711.ALAW_SILENCE]))) == [8]


def test_one_byte_per_sample_and_array_forms_agree() -> None:
    frame = np.random.default_rng(7).integers(-32768, 32768, 160).astype("<i2")
    assert len(g711.ulaw_encode(frame.tobytes())) == 160
    assert len(g711.ulaw_decode(bytes(160))) == 320
    assert g711.ulaw_encode_array(frame).tobytes() == g711.ulaw_encode(frame.tobytes())
    assert g711.alaw_encode_array(frame).tobytes() == g711.alaw_encode(frame.tobytes())
    codes = g711.ulaw_encode_array(frame)
    assert g711.ulaw_decode_array(codes).tobytes() == g711.ulaw_decode(codes.tobytes())
    assert g711.alaw_decode_array(codes).tobytes() == g711.alaw_decode(codes.tobytes())
    assert g711.ulaw_encode(b"") == b"" and g711.alaw_decode(b"") == b""


@pytest.mark.parametrize("encode", [g711.ulaw_encode, g711.alaw_encode])
def test_odd_byte_counts_are_refused(encode: Callable[[bytes], bytes]) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        encode(b"\x00\x01\x02")


# --- quality on real speech -------------------------------------------------------------------------

Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]
CODECS: dict[str, Codec] = {
    "ulaw": (g711.ulaw_encode_array, g711.ulaw_decode_array),
    "alaw": (g711.alaw_encode_array, g711.alaw_decode_array),
}
# An 8-bit logarithmic code quantises every sample to ~1/16 of its segment, so its signal-to-noise ratio
# is nearly independent of level: 6.02 * 8 + 4.77 - 20 * log10(ln(1 + 255)) = 38.1 dB for µ-law,
# 6.02 * 8 + 4.77 - 20 * log10(1 + ln 87.6) = 38.2 dB for A-law. Speech spends time in quiet segments
# where the steps are coarser relative to the signal, so measured speech sits a little lower.
THEORY_DB = 38.1
SPEECH_FLOOR_DB = THEORY_DB - 3


def snr_db(clean: np.ndarray[Any, Any], coded: np.ndarray[Any, Any]) -> float:
    signal = clean.astype(np.float64)
    noise = signal - coded.astype(np.float64)
    return float(10 * np.log10((signal**2).sum() / (noise**2).sum()))


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("clip", [name[-8:-4] for name in LIBRIVOX])
def test_round_trip_on_real_speech_keeps_telephone_quality(
    codec: str, clip: str, record_property: Callable[[str, object], None]
) -> None:
    encode, decode = CODECS[codec]
    speech, _ = read_wav(librivox(clip))
    snr = snr_db(speech, decode(encode(speech)))
    record_property(f"snr_db_{codec}_{clip}", round(snr, 2))
    assert SPEECH_FLOOR_DB < snr < THEORY_DB + 1.5, f"{codec} SNR {snr:.2f} dB on clip {clip}"


@pytest.mark.parametrize("codec", list(CODECS))
def test_quieter_speech_keeps_nearly_the_same_snr(codec: str) -> None:
    """Companding: 10 dB quieter speech loses ~1 dB of SNR; an 8-bit linear code would lose 10 dB."""
    encode, decode = CODECS[codec]
    speech, _ = read_wav(librivox("0880"))
    quieter = np.round(speech.astype(np.float64) * 10 ** (-10 / 20)).astype(np.int16)
    loud, quiet = snr_db(speech, decode(encode(speech))), snr_db(quieter, decode(encode(quieter)))
    assert loud - quiet < 3, f"{codec}: {loud:.2f} dB at speech level, {quiet:.2f} dB 10 dB below"
