"""The two audio tracks of a peer: the bot's voice out, paced in real time, and the browser's in.

``BotTrack`` is what aiortc's sender pulls: one 20 ms frame at 48 kHz per call, on the wall clock,
silence when nothing is queued (continuous RTP: after a pause the next reply plays at once instead of
arriving as a burst the browser's jitter buffer then holds). The queue is bounded (``play`` waits) and
``clear`` empties it at once for a barge-in; audio handed over before a clear is dropped, not played.

``read_microphone`` consumes the browser's track for as long as it lives (aiortc queues its frames
without bound when nobody reads), fills the gaps lost packets leave with silence so the stream keeps
the sender's timeline (VAD timing, recordings), and hands on mono PCM at the graph's rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["RATE", "BotTrack", "read_microphone"]

RATE = 48000
"""Opus's clock: frames go out at this rate."""
FRAME = RATE // 50
"""Samples in one 20 ms frame."""
LATE_RESET = 0.2
"""Seconds behind the clock (an event-loop stall) after which pacing starts again from now."""
MAX_GAP = 1.0
"""Longest loss filled with silence; a longer one is the sender pausing, not packets lost."""


class BotTrack(MediaStreamTrack):
    """The bot's voice as a server audio track (see the module docstring)."""

    kind = "audio"

    def __init__(self, max_seconds: float = 1.0) -> None:
        super().__init__()
        self.max_frames = max(1, round(max_seconds * RATE / FRAME))  # queued frames at most
        self.epoch = 0  # bumped by every clear: audio from before it is dropped
        self.frames_sent = 0
        self.audio_frames_sent = 0  # of which not silence
        self.first_audio_at: float | None = None  # monotonic time the latest audio after silence went out
        self._queue: deque[np.ndarray] = deque()
        self._pending = np.zeros(0, np.int16)  # less than a frame, waiting for more
        self._resampler: Any = None
        self._resampler_rate = 0
        self._room = asyncio.Event()
        self._start: float | None = None  # monotonic time of the frame at ``_clock`` 0
        self._clock = 0  # samples paced since ``_start``
        self._pts = 0
        self._silent = True

    @property
    def queued_seconds(self) -> float:
        """Audio waiting to be sent."""
        return (len(self._queue) * FRAME + len(self._pending)) / RATE

    async def play(self, pcm: bytes, rate: int, epoch: int | None = None) -> None:
        """Queue mono s16le ``pcm`` at ``rate``, waiting while the queue is full; dropped if a
        ``clear`` came after ``epoch`` (default: now)."""
        epoch = self.epoch if epoch is None else epoch
        while len(self._queue) >= self.max_frames and epoch == self.epoch and self.readyState == "live":
            self._room.clear()
            await self._room.wait()
        if epoch != self.epoch or not pcm:
            return
        samples = np.frombuffer(pcm, np.int16)
        if rate != RATE:
            if self._resampler is None or self._resampler_rate != rate:
                self._resampler = soxr.ResampleStream(rate, RATE, 1, dtype="int16")
                self._resampler_rate = rate
            samples = self._resampler.resample_chunk(samples)
        self._pending = np.concatenate((self._pending, samples))
        whole = len(self._pending) // FRAME * FRAME
        for offset in range(0, whole, FRAME):
            self._queue.append(self._pending[offset : offset + FRAME])
        self._pending = self._pending[whole:]

    def clear(self) -> None:
        """Drop everything queued now (a barge-in); audio ``play`` holds from before is dropped too."""
        self.epoch += 1
        self._queue.clear()
        self._pending = np.zeros(0, np.int16)
        self._resampler = None
        self._room.set()

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, when the wall clock says it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._clock += FRAME
            self._pts += FRAME
            due = self._start + self._clock / RATE
            if now - due > LATE_RESET:
                self._start, self._clock = now, 0
            elif due > now:
                await asyncio.sleep(due - now)
        self.frames_sent += 1
        if self._queue:
            chunk = self._queue.popleft()
            self._room.set()
            self.audio_frames_sent += 1
            if self._silent:
                self.first_audio_at = time.monotonic()
            self._silent = False
        else:
            chunk = np.zeros(FRAME, np.int16)
            self._silent = True
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, RATE)
        return frame

    def stop(self) -> None:
        super().stop()
        self._room.set()


async def read_microphone(
    track: MediaStreamTrack, deliver: Callable[[bytes], None], rate: int = 16000
) -> None:
    """Hand ``track``'s audio to ``deliver`` as mono s16le PCM at ``rate`` until the track ends;
    losses are filled with silence (see the module docstring)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    expected: int | None = None  # the pts the next frame should have (48 kHz samples)
    while True:
        try:
            frame = cast(av.AudioFrame, await track.recv())
        except MediaStreamError:
            return
        if expected is not None and frame.pts is not None and frame.pts > expected:
            gap = (frame.pts - expected) / (frame.sample_rate or RATE)
            if gap <= MAX_GAP:
                deliver(bytes(2 * round(gap * rate)))
        if frame.pts is not None:
            expected = frame.pts + frame.samples
        for converted in resampler.resample(frame):
            deliver(converted.to_ndarray().reshape(-1).tobytes())
