"""Audio for the served OpenAI routes: uploads decoded for a recogniser, long files cut at pauses, and
the speech endpoint's streamed WAV header and compressed formats. Blocking: call from a thread.

Uploads are decoded by libsndfile (``soundfile``: WAV, FLAC, MP3, Ogg) or else by FFmpeg through PyAV
(installed with faster-whisper: M4A, MP4, WebM, MPEG), to 16 kHz mono 16-bit, and no further than
the longest audio taken, so a small compressed file cannot expand into hours of samples. Speech in
mp3, opus (in Ogg), aac (ADTS) or flac is encoded by FFmpeg through PyAV as it is made, so it streams.
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import VoxgraphError

__all__ = [
    "COMPRESSED",
    "RATE",
    "AudioUploadError",
    "CompressedAudio",
    "Piece",
    "decode_upload",
    "pieces",
    "streamed_wav_header",
]

RATE = 16000
"""What the recognisers take."""
PIECE_SECONDS = 28.0
"""Longest piece handed to the recogniser at once (Whisper reads 30 s windows)."""
SEARCH_SECONDS = 6.0
"""A piece ends at the quietest moment of its last ``SEARCH_SECONDS``, so no word is cut in two."""
WINDOW = RATE // 10
"""Loudness is compared over 100 ms windows."""


class AudioUploadError(VoxgraphError, ValueError):
    """The upload is no audio that can be decoded, or holds more than may be transcribed."""


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of the upload: 16 kHz mono s16le and where it lies (seconds)."""

    pcm: bytes
    start: float
    end: float


def decode_upload(data: bytes, max_seconds: float) -> np.ndarray[Any, Any]:
    """The upload as 16 kHz mono int16 samples; raises ``AudioUploadError``."""
    if not data:
        raise AudioUploadError("the file is empty")
    limit = int(max_seconds * RATE)
    try:
        samples = _with_soundfile(data, max_seconds)
    except _NotMine:
        samples = _with_av(data, limit)
    if len(samples) > limit:
        raise AudioUploadError(
            f"the audio is longer than {max_seconds:g} s, the most this server transcribes"
        )
    if not len(samples):
        raise AudioUploadError("the file holds no audio samples")
    return samples


class _NotMine(Exception):
    """libsndfile does not read this format."""


def _with_soundfile(data: bytes, max_seconds: float) -> np.ndarray[Any, Any]:
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            rate = file.samplerate  # read no further than the limit, whatever the header claims
            frames = file.read(int(max_seconds * rate) + rate, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as error:
        raise _NotMine from error
    mono = frames.mean(axis=1) if frames.shape[1] > 1 else frames[:, 0]
    return _to_int16(_resampled(mono, rate))


def _with_av(data: bytes, limit: int) -> np.ndarray[Any, Any]:
    try:
        import av
    except ImportError:  # pragma: no cover - installed with faster-whisper
        raise AudioUploadError("the file is no WAV, FLAC, MP3 or Ogg audio") from None
    chunks: list[np.ndarray[Any, Any]] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioUploadError("the file holds no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > limit:
                    break
    except AudioUploadError:
        raise
    except Exception as error:  # FFmpeg's errors: the upload is not audio it can read
        raise AudioUploadError(f"the file could not be decoded as audio ({type(error).__name__})") from error
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, dtype=np.int16)


def _resampled(mono: np.ndarray[Any, Any], rate: int) -> np.ndarray[Any, Any]:
    if rate == RATE:
        return mono
    import soxr

    return np.asarray(soxr.resample(mono, rate, RATE), dtype=np.float32)


def _to_int16(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def pieces(samples: np.ndarray[Any, Any]) -> list[Piece]:
    """``samples`` cut into pieces of at most ``PIECE_SECONDS``, each ending at a quiet moment."""
    longest, search = int(PIECE_SECONDS * RATE), int(SEARCH_SECONDS * RATE)
    out: list[Piece] = []
    start = 0
    while start < len(samples):
        end = len(samples)
        if end - start > longest:
            end = start + longest - search + _quietest(samples[start + longest - search : start + longest])
        out.append(Piece(samples[start:end].tobytes(), start / RATE, end / RATE))
        start = end
    return out


def _quietest(stretch: np.ndarray[Any, Any]) -> int:
    """Offset of the middle of the quietest 100 ms window of ``stretch``."""
    count = len(stretch) // WINDOW
    if count < 2:
        return len(stretch)
    windows = stretch[: count * WINDOW].astype(np.float32).reshape(count, WINDOW)
    return int(np.argmin((windows**2).mean(axis=1))) * WINDOW + WINDOW // 2


def streamed_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header for audio of unknown length (sizes 0xFFFFFFFF, as a stream sends)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


MUXER_OPTIONS = {"mp3": {"write_xing": "0"}}
"""A Xing header promises the stream's length, which a stream cannot know (decoders warn)."""
COMPRESSED: dict[str, tuple[str, str, str]] = {
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
    "aac": ("adts", "aac", "audio/aac"),
    "flac": ("flac", "flac", "audio/flac"),
}
"""Speech format -> (FFmpeg container, encoder, content type)."""


class CompressedAudio:
    """Mono s16le PCM in, a compressed stream out: each ``encode`` returns the bytes the muxer has
    written since the last call (a codec holds back a frame or two; ``close`` returns the rest)."""

    def __init__(self, kind: str, rate: int) -> None:
        import av

        container, codec, _ = COMPRESSED[kind]
        self._av = av
        self._buffer = io.BytesIO()  # the whole stream: a muxer may seek back (sent bytes stay as sent)
        self._sent = 0
        options = MUXER_OPTIONS.get(kind, {})
        self._out = av.open(self._buffer, mode="w", format=container, options=options)
        self._stream: Any = self._out.add_stream(codec, rate=rate, layout="mono")
        context: Any = self._stream.codec_context
        self._frame_size = context.frame_size or 1024
        self._fifo = av.AudioFifo()
        self._convert = av.AudioResampler(format=context.format.name, layout="mono", rate=rate)
        self.rate = rate
        self._closed = False
        self._lock = threading.Lock()  # a muxer cut short may be discarded while a thread still encodes

    def encode(self, pcm: bytes) -> bytes:
        """Take ``pcm``; the stream's new bytes."""
        with self._lock:
            return self._encode(pcm)

    def _encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        if samples.size:
            frame = self._av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.rate
            for converted in self._convert.resample(frame):
                self._fifo.write(converted)
        while self._fifo.samples >= self._frame_size:
            self._mux(self._fifo.read(self._frame_size))
        return self._new_bytes()

    def close(self) -> bytes:
        """The end of the stream."""
        with self._lock:
            rest = self._fifo.read()
            if rest is not None:
                self._mux(rest)
            self._mux(None)
            self._closed = True
            self._out.close()
            return self._new_bytes()

    @property
    def closed(self) -> bool:
        """Whether the muxer is closed (by ``close`` or ``discard``)."""
        return self._closed

    def discard(self) -> None:
        """Close the muxer without ending the stream (nothing more will be sent); no-op once closed.
        Safe while another thread encodes: it waits for that call to end."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._out.close()

    def _mux(self, frame: Any) -> None:
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def _new_bytes(self) -> bytes:
        written = self._buffer.getbuffer()
        new = bytes(written[self._sent :])
        self._sent = len(written)
        del written
        return new
