"""Crash-safe WAV writing: a recording stays playable when the process dies mid-call.

A WAV header states the length of the audio after it, so a writer that fixes the header only on
close leaves a file that players read as empty after a crash. ``WavWriter`` writes a valid header at
once, appends PCM in a worker thread every ``flush_interval`` of audio and rewrites the header's sizes
every ``header_interval``: a SIGKILL loses at most the unflushed buffer plus the header's lag (under a
second with the defaults), and ``repair_wav`` recovers even the lag from the data on disk.

Writes reach the operating system (``flush``), not the platter (no ``fsync``): that survives a killed
process, which is the failure this guards against, without a disk sync per quarter second.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from pipeline.formats import AudioFormat
from pipeline.resampling import Int16Resampler

__all__ = ["HEADER_SIZE", "FormatConverter", "WavWriter", "repair_wav"]

log = logging.getLogger("pipeline.wavfile")

HEADER_SIZE = 44
"""Bytes before the audio in the files ``WavWriter`` writes (RIFF, ``fmt `` and ``data`` headers)."""
_MAX_DATA = 0xFFFFFFFF - HEADER_SIZE  # a RIFF size is 32 bits: beyond this the header saturates


def _header(sample_rate: int, channels: int, data_size: int) -> bytes:
    """The canonical 44-byte header of 16-bit PCM audio with ``data_size`` bytes of samples."""
    block = 2 * channels
    data_size = min(data_size, _MAX_DATA)
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_size,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block,
        block,
        16,
        b"data",
        data_size,
    )


class WavWriter:
    """Appends s16le PCM to a WAV file from async code, keeping the header close behind the data.

    Use ``await WavWriter.open(path, rate, channels)``, then ``await write(pcm)`` as audio arrives and
    ``await close()`` at the end. ``write`` only buffers, except every ``flush_interval`` of audio when
    it hands the buffer to a thread; it waits only if the previous disk write has not finished, so
    memory stays bounded by a slow disk instead of growing. ``append`` + ``drain`` split a write in
    its synchronous and its waiting half.
    """

    def __init__(
        self,
        file: BinaryIO,
        path: Path,
        sample_rate: int,
        channels: int,
        header_interval: float = 0.5,
        flush_interval: float = 0.25,
    ) -> None:
        """Wrap an open file whose header is written; use ``WavWriter.open`` instead."""
        self.path = path
        self.sample_rate = sample_rate
        self.channels = channels
        byte_rate = 2 * channels * sample_rate
        self._file = file
        self._flush_bytes = max(2 * channels, round(flush_interval * byte_rate))
        self._header_bytes = round(header_interval * byte_rate)
        self._buffer = bytearray()
        self._written = 0  # bytes of audio handed to the OS
        self._in_header = 0  # bytes of audio the header on disk accounts for
        self._queued = 0  # bytes passed to ``write`` so far
        self._flushing: asyncio.Future[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        sample_rate: int,
        channels: int = 1,
        *,
        header_interval: float = 0.5,
        flush_interval: float = 0.25,
    ) -> WavWriter:
        """Create (or replace) ``path`` with a valid, empty WAV header and return its writer."""
        path = Path(path)
        if sample_rate < 1 or channels < 1:
            raise ValueError(f"cannot write {sample_rate} Hz, {channels} channel WAV audio")
        file = await asyncio.to_thread(_create, path, sample_rate, channels)
        return cls(file, path, sample_rate, channels, header_interval, flush_interval)

    @property
    def duration(self) -> float:
        """Seconds of audio passed to ``write`` (on disk once flushed)."""
        return self._queued / (2 * self.channels * self.sample_rate)

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun."""
        return self._closed

    async def write(self, pcm: bytes) -> None:
        """Append interleaved s16le samples; they reach the disk within ``flush_interval`` of audio."""
        if self.append(pcm):
            await self.drain()

    def append(self, pcm: bytes) -> bool:
        """Buffer ``pcm`` without any I/O; True when a disk write is due (then ``await drain()``).

        For callers that must update several files as one step: append to each, then drain each, so
        a cancellation between the awaits cannot leave one file a frame behind another.
        """
        if self._closed:
            raise ValueError(f"write to closed WAV file '{self.path}'")
        self._buffer += pcm
        self._queued += len(pcm)
        return len(self._buffer) >= self._flush_bytes

    async def drain(self) -> None:
        """Hand the buffer to the disk thread if a write is due; waits only for the previous one."""
        if len(self._buffer) >= self._flush_bytes:
            await self._wait_for_disk()
            self._start_flush()

    async def flush(self) -> None:
        """Write everything buffered and bring the header up to date now."""
        await self._wait_for_disk()
        self._start_flush(header=True)
        await self._wait_for_disk()

    async def close(self) -> None:
        """Flush, fix the header and close the file. Safe to call twice, and after a cancellation."""
        if self._closed:
            return
        self._closed = True
        await self._wait_for_disk()
        data, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.shield(asyncio.to_thread(self._finish, data))

    async def _wait_for_disk(self) -> None:
        flushing = self._flushing
        if flushing is not None:
            # Shielded: a cancelled caller (an interruption) must not abandon a write half done.
            await asyncio.shield(flushing)
            self._flushing = None

    def _start_flush(self, header: bool = False) -> None:
        data = bytes(self._buffer)
        self._buffer.clear()
        self._flushing = asyncio.ensure_future(asyncio.to_thread(self._append, data, header))

    def _append(self, data: bytes, header: bool) -> None:
        """Runs in a thread: append ``data``, and rewrite the sizes when the header lags enough."""
        file = self._file
        if data:
            file.write(data)
            self._written += len(data)
        if header or self._written - self._in_header >= self._header_bytes:
            file.seek(0)
            file.write(_header(self.sample_rate, self.channels, self._written))
            file.seek(0, 2)
            self._in_header = self._written
        file.flush()

    def _finish(self, data: bytes) -> None:
        try:
            self._append(data, header=True)
        finally:
            self._file.close()


def _create(path: Path, sample_rate: int, channels: int) -> BinaryIO:
    file = path.open("wb")
    try:
        _lock(file)  # held while open: ``repair_wav`` leaves a file that is still being written alone
        file.write(_header(sample_rate, channels, 0))
        file.flush()
    except BaseException:
        file.close()
        raise
    return file


def _lock(file: BinaryIO) -> None:
    """An exclusive advisory lock, released when the file is closed or its process dies."""
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def repair_wav(path: str | Path) -> bool:
    """Make a WAV file's sizes match the audio actually in it; True if the file was changed.

    For files whose ``data`` chunk runs to the end of the file (what ``WavWriter`` and most recorders
    write): the sizes are set from the file's length, a torn last sample is cut off. A file a
    ``WavWriter`` (in any process) still has open is left alone: its header lags on purpose. Raises
    ``ValueError`` for a file that is not a PCM WAV file with readable ``fmt `` and ``data`` chunks.
    """
    path = Path(path)
    with path.open("r+b") as file:
        try:
            _lock(file)
        except BlockingIOError:
            return False  # being written right now; a crash releases the lock
        riff = file.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
            raise ValueError(f"'{path}' is not a RIFF/WAVE file")
        block_align = 0
        while True:
            head = file.read(8)
            if len(head) < 8:
                raise ValueError(f"'{path}' has no 'data' chunk")
            chunk_id, size = struct.unpack("<4sI", head)
            if chunk_id == b"data":
                break
            body = file.read(size + (size & 1))
            if chunk_id == b"fmt " and len(body) >= 14:
                block_align = struct.unpack_from("<H", body, 12)[0]
        if block_align < 1:
            raise ValueError(f"'{path}' has no usable 'fmt ' chunk before its audio")
        data_start = file.tell()
        file_size = file.seek(0, 2)
        declared_riff = struct.unpack_from("<I", riff, 4)[0]
        if data_start + size <= file_size and abs(declared_riff + 8 - file_size) <= 1:
            return False  # consistent (chunks after the audio, if any, are kept)
        available = file_size - data_start
        data_size = min(available - available % block_align, _MAX_DATA)
        riff_size = data_start - 8 + data_size
        file.truncate(data_start + data_size)
        file.seek(4)
        file.write(struct.pack("<I", riff_size))
        file.seek(data_start - 4)
        file.write(struct.pack("<I", data_size))
    log.info("repaired WAV sizes of '%s': %d bytes of audio", path, data_size)
    return True


class FormatConverter:
    """Brings s16le PCM of one format to a file's format, chunk by chunk: a WAV file has one format,
    audio that arrives in another (a second TTS voice, a resampled stream) is converted to it.

    The resampler keeps its filter state across chunks, so there are no clicks at chunk edges;
    ``HQ`` output comes in bursts (up to ~37 ms held), which ``flush`` releases at the end.
    """

    def __init__(self, source: AudioFormat, target: AudioFormat, quality: Literal["HQ", "QQ"] = "HQ") -> None:
        self.source = source
        self.target = target
        self._stream: Int16Resampler | None = None
        if source.sample_rate != target.sample_rate:
            self._stream = Int16Resampler(source.sample_rate, target.sample_rate, target.channels, quality)

    def convert(self, pcm: bytes) -> bytes:
        """``pcm`` in the target format (fewer, or no, samples while the filter fills)."""
        if self.source == self.target:
            return pcm
        samples = _remix(
            np.frombuffer(pcm, dtype="<i2").reshape(-1, self.source.channels), self.target.channels
        )
        if self._stream is not None:
            samples = self._stream.resample(samples)
        return np.ascontiguousarray(samples, dtype="<i2").tobytes()

    def flush(self) -> bytes:
        """What the filter still holds; the converter starts afresh afterwards."""
        if self._stream is None:
            return b""
        return np.ascontiguousarray(self._stream.flush(), dtype="<i2").tobytes()


def _remix(samples: np.ndarray[Any, Any], channels: int) -> np.ndarray[Any, Any]:
    """Average into mono, then copy that into every output channel."""
    if samples.shape[1] == channels:
        return samples
    mono = samples
    if samples.shape[1] > 1:
        mono = np.rint(samples.astype(np.float32).mean(axis=1, keepdims=True)).astype("<i2")
    return np.repeat(mono, channels, axis=1) if channels > 1 else mono
