"""Reading audio files: the one reader behind every node that plays a file (``file.input``,
``file.turns``, ``source.wav``), so they all accept the same formats and fail with the same advice.

16-bit PCM WAV needs only the standard library. Everything else goes through libsndfile (the
``soundfile`` package, in the ``offline`` extra): other WAV encodings (8/24/32-bit, float, µ-law,
A-law), FLAC, MP3, Ogg and AIFF. Whatever the file holds comes out as interleaved s16le at the file's
own rate and channels. Every call here blocks: run it in a thread.
"""

from __future__ import annotations

import logging
import struct
import wave
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from pipeline.errors import VoxgraphError
from pipeline.formats import AudioFormat

__all__ = [
    "SUPPORTED",
    "AudioFileError",
    "AudioReader",
    "UnknownAudioFormatError",
    "open_audio",
    "probe_audio",
    "read_audio",
]

log = logging.getLogger("pipeline.audiofile")

SUPPORTED = "WAV (8/16/24/32-bit PCM, float, µ-law, A-law), FLAC, MP3, Ogg Vorbis/Opus or AIFF"
"""What ``open_audio`` decodes (all but 16-bit WAV through ``soundfile``): named in every error."""
_INSTALL_SOUNDFILE = "pip install soundfile (part of voxgraph[offline])"
_UNKNOWN_SIZES = (0xFFFFFFFF, 0x7FFFFFFF)  # what streaming writers put in a header they cannot fix
_EXACT_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "PCM_S8", "PCM_U8")


class AudioFileError(VoxgraphError):
    """An audio file is missing or cannot be decoded; ``fix`` says what to do about it."""

    def __init__(self, message: str, fix: str = "", key: str = "path") -> None:
        super().__init__(message)
        self.fix = fix  # what the user should do
        self.key = key  # the param at fault


class UnknownAudioFormatError(AudioFileError):
    """The file is no audio format libsndfile knows (it may be headerless PCM)."""


class _Backend(Protocol):
    def read(self, samples: int) -> bytes: ...

    def close(self) -> None: ...


class AudioReader:
    """An open audio file, read as interleaved s16le block by block; use as a context manager.

    A WAV header that claims more audio than the file holds is warned about once, when reading
    reaches the real end: a truncated download or copy otherwise plays short without a word.
    """

    def __init__(self, path: Path, fmt: AudioFormat, backend: _Backend, claimed: int | None = None) -> None:
        self.path = path
        self.format = fmt
        self._backend = backend
        self._claimed = claimed  # samples per channel the header promises, when it says
        self._delivered = 0
        self._warned = False

    def read(self, samples: int) -> bytes:
        """Up to ``samples`` per channel; fewer only at the end, ``b""`` after it."""
        data = self._backend.read(samples)
        block = 2 * self.format.channels
        self._delivered += len(data) // block
        if len(data) < samples * block:
            self._check_length()
        return data

    def read_all(self) -> bytes:
        """Everything from here to the end."""
        chunks = []
        while chunk := self.read(self.format.sample_rate * 10):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_length(self) -> None:
        claimed = self._claimed
        if self._warned or claimed is None or self._delivered >= claimed:
            return
        self._warned = True
        rate = self.format.sample_rate
        log.warning(
            "'%s': its header claims %.2f s of audio but the file holds only %.2f s (cut short?); "
            "playing what is there",
            self.path,
            claimed / rate,
            self._delivered / rate,
        )


def open_audio(path: str | Path, raw: AudioFormat | None = None) -> AudioReader:
    """Open ``path`` for reading; ``raw`` reads it as headerless s16le PCM in that format.

    Raises ``AudioFileError`` saying what is wrong with the file and what to do.
    """
    path = Path(path)
    size = _size(path)
    if raw is not None:
        return AudioReader(path, raw, _RawBackend(path, raw))
    if size == 0:
        fix = "point path at a file with audio in it (was it still being written?)"
        raise AudioFileError(f"'{path}' is empty (0 bytes)", fix)
    claimed = _claimed_samples(path)
    return _open_wave(path, claimed) or _open_soundfile(path, size, claimed)


def probe_audio(path: str | Path) -> AudioFormat:
    """The rate and channels of a file, reading only its header."""
    with open_audio(path) as reader:
        return reader.format


def read_audio(path: str | Path) -> tuple[AudioFormat, bytes]:
    """The format and the whole of a file's audio as s16le (for short files: turns, prompts)."""
    with open_audio(path) as reader:
        return reader.format, reader.read_all()


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            raise AudioFileError(f"'{path}' is a folder", "point path at an audio file in it")
        return path.stat().st_size
    except FileNotFoundError:
        raise AudioFileError(
            f"audio file '{path}' not found (relative paths start from {Path.cwd()})",
            "check the path; relative paths start from the folder you run in",
        ) from None
    except OSError as error:
        reason = error.strerror or error
        raise AudioFileError(f"cannot open '{path}': {reason}", "check its permissions") from None


def _open_wave(path: Path, claimed: int | None) -> AudioReader | None:
    """16-bit PCM WAV through the standard library; None when the file needs libsndfile."""
    try:
        wav = wave.open(str(path), "rb")  # noqa: SIM115 (closed by the reader)
    except (wave.Error, EOFError, OSError):
        return None
    if wav.getsampwidth() != 2:
        wav.close()
        return None
    return AudioReader(path, AudioFormat(wav.getframerate(), wav.getnchannels()), _WaveBackend(wav), claimed)


def _open_soundfile(path: Path, size: int, claimed: int | None) -> AudioReader:
    try:
        import soundfile
    except ImportError:
        raise AudioFileError(
            f"'{path}' is not 16-bit PCM WAV ({_describe(path)}); reading it needs the soundfile package",
            f"{_INSTALL_SOUNDFILE}; with it Voxgraph reads {SUPPORTED}",
        ) from None
    try:
        file = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        kind = UnknownAudioFormatError if "not recognised" in str(error).lower() else AudioFileError
        reason, fix = _reason(path, size, error)
        raise kind(f"cannot read '{path}': {reason}", fix) from None
    backend = _SoundFileBackend(file)
    return AudioReader(path, AudioFormat(file.samplerate, file.channels), backend, claimed)


def _reason(path: Path, size: int, error: BaseException) -> tuple[str, str]:
    """Why libsndfile refused the file, and the fix: its own message names the file and little else."""
    head = _head(path, 12)
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and _claimed_samples(path) is None:
        reason = f"it ends after {size} bytes, inside its WAV header, before any audio"
        return reason, "the file is incomplete: copy, download or record it again"
    text = str(error).split(": ", 1)[-1].strip() or type(error).__name__
    if "not recognised" in text.lower():
        text = f"its format is not one Voxgraph reads (it starts with {head[:4]!r}, {size} bytes)"
    return text, f"use a file in one of: {SUPPORTED}"


def _describe(path: Path) -> str:
    """What the standard library sees in a WAV it will not read, for the install hint."""
    try:
        with wave.open(str(path), "rb") as wav:
            return f"{8 * wav.getsampwidth()}-bit"
    except (wave.Error, EOFError, OSError) as error:
        return str(error) or "not a complete WAV file"


def _head(path: Path, count: int) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(count)
    except OSError:
        return b""


def _claimed_samples(path: Path) -> int | None:
    """Samples per channel a RIFF/WAVE header promises; None for other files or when it does not say."""
    try:
        with path.open("rb") as file:
            riff = file.read(12)
            if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
                return None
            block_align = 0
            while len(head := file.read(8)) == 8:
                chunk_id, size = struct.unpack("<4sI", head)
                if chunk_id == b"data":
                    if block_align < 1 or size in _UNKNOWN_SIZES:
                        return None
                    return int(size // block_align)
                body = file.read(size + (size & 1))
                if chunk_id == b"fmt " and len(body) >= 14:
                    block_align = struct.unpack_from("<H", body, 12)[0]
    except OSError:
        return None
    return None


class _WaveBackend:
    def __init__(self, wav: wave.Wave_read) -> None:
        self._wav = wav

    def read(self, samples: int) -> bytes:
        return self._wav.readframes(samples)

    def close(self) -> None:
        self._wav.close()


class _SoundFileBackend:
    def __init__(self, file: Any) -> None:
        self._file = file
        self._exact = file.subtype in _EXACT_SUBTYPES

    def read(self, samples: int) -> bytes:
        block: np.ndarray[Any, Any]
        if self._exact:  # integer sources convert exactly; floats are scaled and clipped here
            block = self._file.read(samples, dtype="int16")
        else:
            block = np.clip(np.rint(self._file.read(samples, dtype="float32") * 32768.0), -32768, 32767)
        return block.astype("<i2", copy=False).tobytes()

    def close(self) -> None:
        self._file.close()


class _RawBackend:
    """Headerless s16le PCM in a format the caller knows."""

    def __init__(self, path: Path, fmt: AudioFormat) -> None:
        self._file = path.open("rb")
        self._sample_bytes = 2 * fmt.channels

    def read(self, samples: int) -> bytes:
        data = self._file.read(samples * self._sample_bytes)
        return data[: len(data) - len(data) % self._sample_bytes]  # a torn last sample is dropped

    def close(self) -> None:
        self._file.close()
