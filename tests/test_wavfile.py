"""pipeline.wavfile: a WAV file that stays readable while written, repair of a lagging header, conversion."""

from __future__ import annotations

import asyncio
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.formats import AudioFormat
from pipeline.wavfile import HEADER_SIZE, FormatConverter, WavWriter, repair_wav

RATE = 16000


def ramp(samples: int, channels: int = 1) -> bytes:
    return (np.arange(samples * channels) % 30000).astype("<i2").tobytes()


def on_disk(path: Path) -> tuple[int, int, bytes]:
    """(rate, channels, audio) as the standard library reads the file right now."""
    with wave.open(str(path), "rb") as wav:
        return wav.getframerate(), wav.getnchannels(), wav.readframes(wav.getnframes())


async def test_the_header_is_valid_from_the_start(tmp_path: Path) -> None:
    writer = await WavWriter.open(tmp_path / "a.wav", RATE, 2)
    assert on_disk(tmp_path / "a.wav") == (RATE, 2, b"")
    await writer.close()
    assert (tmp_path / "a.wav").stat().st_size == HEADER_SIZE


async def test_after_each_flush_the_file_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    writer = await WavWriter.open(path, RATE)
    written = b""
    for size in (1, 333, 4000, 8000):
        chunk = ramp(size)
        await writer.write(chunk)
        await writer.flush()
        written += chunk
        assert on_disk(path) == (RATE, 1, written)
    await writer.close()
    assert on_disk(path) == (RATE, 1, written)
    assert writer.duration == pytest.approx(len(written) / 2 / RATE)


async def test_while_writing_the_header_lags_the_audio_by_under_a_second(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    writer = await WavWriter.open(path, RATE)
    frame = ramp(320)  # 20 ms
    for count in range(1, 301):  # 6 s of audio, checked after every frame
        await writer.write(frame)
        await writer._wait_for_disk()  # the thread's write has landed (what a crash would find)
        _, _, audio = on_disk(path)
        assert count * 640 - len(audio) <= 2 * RATE * 0.75 + 640  # flush (0.25 s) + header (0.5 s) lag
        assert audio == (frame * count)[: len(audio)]
    await writer.close()


async def test_a_cancelled_write_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    writer = await WavWriter.open(path, RATE, flush_interval=0.01)
    first = asyncio.ensure_future(writer.write(ramp(1000)))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(writer.write(ramp(1000)))  # waits for the first flush ...
    await asyncio.sleep(0)
    second.cancel()  # ... and is cancelled meanwhile, as an interruption would
    await asyncio.wait({first, second})
    await writer.close()
    assert on_disk(path)[2] == ramp(1000) * 2
    with pytest.raises(ValueError, match="closed"):
        await writer.write(b"\0\0")


def crashed(path: Path, audio: bytes, declared: int, channels: int = 1) -> Path:
    """A file as a crash leaves it: the header states ``declared`` bytes, ``audio`` follows."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        *(b"RIFF", 36 + declared, b"WAVE", b"fmt ", 16, 1, channels, RATE),
        *(RATE * 2 * channels, 2 * channels, 16, b"data", declared),
    )
    path.write_bytes(header + audio)
    return path


def test_repair_sets_the_sizes_from_the_audio_on_disk(tmp_path: Path) -> None:
    audio = ramp(16000)
    path = crashed(tmp_path / "user.wav", audio + b"\x07", declared=6400)  # header lags; torn sample
    assert len(on_disk(path)[2]) == 6400
    assert repair_wav(path) is True
    assert on_disk(path) == (RATE, 1, audio)
    assert path.stat().st_size == HEADER_SIZE + len(audio)
    assert repair_wav(path) is False  # now consistent


def test_repair_also_fixes_a_header_that_claims_too_much(tmp_path: Path) -> None:
    path = crashed(tmp_path / "bot.wav", ramp(100, channels=2), declared=10_000, channels=2)
    assert repair_wav(path) is True
    assert on_disk(path) == (RATE, 2, ramp(100, channels=2))


def test_repair_leaves_a_consistent_file_with_trailing_chunks_alone(tmp_path: Path) -> None:
    path = tmp_path / "tagged.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(ramp(100))
    listing = b"LIST" + struct.pack("<I", 4) + b"INFO"
    data = path.read_bytes() + listing
    path.write_bytes(data[:4] + struct.pack("<I", len(data) - 8) + data[8:])
    assert repair_wav(path) is False
    assert path.read_bytes() == data[:4] + struct.pack("<I", len(data) - 8) + data[8:]


async def test_repair_leaves_a_file_that_is_still_being_written_alone(tmp_path: Path) -> None:
    path = tmp_path / "live.wav"
    writer = await WavWriter.open(path, RATE, header_interval=60)
    await writer.write(ramp(16000))
    await writer._wait_for_disk()  # the audio is on disk, the header not caught up (on purpose)
    before = path.read_bytes()
    assert on_disk(path)[2] == b""
    assert repair_wav(path) is False
    assert path.read_bytes() == before
    await writer.close()
    assert on_disk(path)[2] == ramp(16000)


@pytest.mark.parametrize("content", [b"", b"RIFF", b"not a wave file at all", b"RIFF\0\0\0\0WAVEfmt "])
def test_repair_refuses_what_is_not_a_wav_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        repair_wav(path)


def test_conversion_resamples_and_flushes_the_held_tail() -> None:
    converter = FormatConverter(AudioFormat(24000, 1), AudioFormat(16000, 1))
    t = np.arange(24000) / 24000
    tone = np.rint(10000 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
    out = b"".join(converter.convert(tone[i : i + 480].tobytes()) for i in range(0, 24000, 480))
    out += converter.flush()
    samples = np.frombuffer(out, dtype="<i2").astype(np.float64)
    assert len(samples) == 16000
    expected = 10000 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert np.max(np.abs(samples[400:-400] - expected[400:-400])) < 100


def test_conversion_mixes_channels_down_by_mean_and_up_by_copy() -> None:
    stereo = np.array([[100, 300], [-50, -150]], dtype="<i2").tobytes()
    down = FormatConverter(AudioFormat(RATE, 2), AudioFormat(RATE, 1))
    assert np.frombuffer(down.convert(stereo), dtype="<i2").tolist() == [200, -100]
    up = FormatConverter(AudioFormat(RATE, 1), AudioFormat(RATE, 2))
    assert np.frombuffer(up.convert(ramp(2)), dtype="<i2").tolist() == [0, 0, 1, 1]
    assert up.flush() == b""
