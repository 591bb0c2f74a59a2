"""``tts.espeak``: Debian's espeak-ng as a subprocess per sentence, offline.

Robotic but tiny and instant (RTF ~0.006), with voices for over 100 languages: a fallback voice and a
fast test double of a real engine. ``espeak-ng --stdout`` streams a WAV: the header is parsed for the
format and the samples are yielded as they arrive. A barge-in kills the process; every read is bounded
by a timeout so a stuck process cannot hang the graph. The timeouts are ``asyncio.timeout`` scopes, not
``wait_for``: on Python 3.11 ``wait_for`` returns a read that completed in the same loop turn as a
cancel and drops the cancel, so a barge-in could be lost.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pipeline.errors import FatalProcessorError, Problem, VoxgraphError
from pipeline.params import param
from processors.tts.base import SpeechParams, SpeechSynthesizer

__all__ = ["EspeakParams", "EspeakTTS", "WavFormatError", "parse_fmt_chunk"]

READ_BYTES = 8192
READ_TIMEOUT = 10.0
"""Seconds a read from espeak-ng may take before the sentence is given up."""
MBROLA_RATE = 16000
"""MBROLA voices (``mb-*``) speak at 16 kHz; espeak-ng's own voices at 22,050 Hz."""


T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    """``awaitable`` bounded by ``READ_TIMEOUT``, in this task, so a cancel (barge-in) is never lost."""
    async with asyncio.timeout(READ_TIMEOUT):
        return await awaitable


class WavFormatError(VoxgraphError, RuntimeError):
    """espeak-ng wrote something that is not a 16-bit mono PCM WAV."""


@dataclass(slots=True, kw_only=True)
class EspeakParams(SpeechParams):
    """Params of ``tts.espeak``."""

    voice: str = param("en-us", doc="espeak-ng voice (espeak-ng --voices lists them), e.g. en-us, en-gb, de")
    words_per_minute: int = param(175, ge=80, le=450, doc="speaking rate")
    pitch: int = param(50, ge=0, le=99, doc="pitch")


class EspeakTTS(SpeechSynthesizer):
    """Speaks with espeak-ng, one subprocess per sentence."""

    Params: ClassVar[type[Any]] = EspeakParams
    params: EspeakParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.sample_rate = MBROLA_RATE if p.voice.startswith("mb-") else 22050
        self.process_in_flight: asyncio.subprocess.Process | None = None
        """The espeak-ng process of the sentence being synthesised, if any."""

    def check(self) -> list[Problem]:
        if shutil.which("espeak-ng") is None:
            return [Problem("espeak-ng is not installed", fix="apt-get install espeak-ng", node=self.name)]
        return []

    async def on_start(self) -> None:
        problems = self.check()
        if problems:
            raise FatalProcessorError(str(problems[0]))
        # One word proves the voice exists and speaks at the rate announced to negotiation.
        async for _ in self.synthesize("ok"):
            pass

    def command(self, text: str) -> list[str]:
        """The espeak-ng command line that speaks ``text`` as a WAV on stdout."""
        p = self.params
        binary = shutil.which("espeak-ng") or "espeak-ng"
        return [
            binary,
            "--stdout",
            "-v",
            p.voice,
            "-s",
            str(p.words_per_minute),
            "-p",
            str(p.pitch),
            "--",
            text,
        ]

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        process = await asyncio.create_subprocess_exec(
            *self.command(text),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        self.process_in_flight = process
        try:
            header = await _read_header(process.stdout)
            if header is None:
                await _within(process.wait())
                error = (await process.stderr.read()).decode(errors="replace").strip()
                raise FatalProcessorError(
                    f"espeak-ng voice {self.params.voice!r} failed: {error or 'no audio'}"
                )
            rate, channels, bits = header
            if (rate, channels, bits) != (self.sample_rate, 1, 16):
                raise WavFormatError(
                    f"espeak-ng voice {self.params.voice!r} speaks {rate} Hz, {channels} channel(s), "
                    f"{bits} bit; expected {self.sample_rate} Hz mono 16 bit"
                )
            odd = b""  # a sample split across two reads
            while pcm := await _within(process.stdout.read(READ_BYTES)):
                pcm = odd + pcm
                cut = len(pcm) // 2 * 2
                odd = pcm[cut:]
                if cut:
                    yield pcm[:cut]
            await _within(process.wait())
        finally:
            self.process_in_flight = None
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _read_header(stream: asyncio.StreamReader) -> tuple[int, int, int] | None:
    """Read a streamed WAV's header up to its samples: (rate, channels, bits), or None if empty."""
    try:
        riff = await _within(stream.readexactly(12))
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise WavFormatError("espeak-ng output ends inside the WAV header") from None
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise WavFormatError("espeak-ng output is not a WAV file")
    fmt: tuple[int, int, int] | None = None
    while True:
        kind, size = struct.unpack("<4sI", await _within(stream.readexactly(8)))
        if kind == b"data":
            if fmt is None:
                raise WavFormatError("WAV data before its fmt chunk")
            return fmt  # streamed: the data size is a placeholder, read to the end instead
        body = await _within(stream.readexactly(size + size % 2))
        if kind == b"fmt ":
            fmt = parse_fmt_chunk(body)


def parse_fmt_chunk(fmt_chunk: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, bits per sample) of a PCM ``fmt `` chunk body."""
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if tag != 1:
        raise WavFormatError(f"WAV format tag {tag} is not PCM")
    return rate, channels, bits
