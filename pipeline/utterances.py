"""Cut an audio stream into utterances from the VAD's speaking frames, whatever order they arrive in.

Speaking frames are system frames: they overtake audio still queued in front of a busy processor, and
a recogniser may already have consumed the first syllables when the start frame arrives. So cuts are
made on the stream clock instead: the VAD stamps each speaking frame with ``stream_time`` (seconds of
audio it had received), and the collector counts the audio *it* receives the same way. Audio from a
little before the start (``pre_roll``) is kept in a short history so the first syllable is never lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pipeline.frames import AudioFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame

__all__ = ["Utterance", "UtteranceCollector"]


@dataclass(slots=True, frozen=True)
class Utterance:
    """One stretch of speech: PCM plus where it sits in the stream (seconds)."""

    pcm: bytes
    sample_rate: int
    channels: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / (2 * self.channels * self.sample_rate)


class _Cut:
    """Where one utterance lies in the stream; ``end`` is None until its stop is known."""

    __slots__ = ("end", "start")

    def __init__(self, start: float, end: float | None = None) -> None:
        self.start = start
        self.end = end


class UtteranceCollector:
    """Collects the audio between speech start and stop, aligned on ``stream_time``.

    Feed it every audio frame (``add_audio``) and every speaking frame; each call returns the
    utterances it completed. Speaking frames may arrive before or after the audio they mark, and a
    consumer that lags may see a stop *and the next start* before the first utterance's audio: each
    utterance waits in a queue until its audio is in. ``open_audio()`` gives the audio of the
    utterance in progress (for interim re-transcription) and ``flush()`` closes it at the end of
    the stream. A change of sample rate or channels closes the utterance in progress.
    """

    def __init__(
        self,
        pre_roll: float = 0.3,
        post_roll: float = 0.15,
        max_duration: float = 30.0,
        history: float = 2.0,
    ) -> None:
        self.pre_roll = pre_roll
        self.post_roll = post_roll
        self.max_duration = max_duration
        self.history = max(history, pre_roll)
        self._buffer = bytearray()
        self._buffer_start = 0.0  # stream time of the first byte in _buffer
        self._format_start = 0.0  # stream time at which the current format began
        self._format_samples = 0  # samples per channel received in the current format
        self._rate = 0
        self._channels = 1
        self._cuts: deque[_Cut] = deque()  # utterances not yet delivered, in order; only the last is open

    @property
    def in_speech(self) -> bool:
        """True between a start and the delivery of its utterance."""
        return bool(self._cuts)

    @property
    def stream_time(self) -> float:
        """Seconds of audio received so far."""
        return self._received

    @property
    def channels(self) -> int:
        """Channels of the audio being collected."""
        return self._channels

    @property
    def _received(self) -> float:
        # Counted in whole samples per format, so long streams do not drift by float rounding.
        return self._format_start + (self._format_samples / self._rate if self._rate else 0.0)

    def add_audio(self, frame: AudioFrame) -> list[Utterance]:
        """Append ``frame``; returns the utterances its arrival completed."""
        done: list[Utterance] = []
        if (frame.sample_rate, frame.channels) != (self._rate, self._channels):
            if self._rate:
                done = self.flush()
            self._format_start = self._received
            self._format_samples = 0
            self._rate, self._channels = frame.sample_rate, frame.channels
            self._buffer.clear()
            self._buffer_start = self._format_start
        self._buffer += frame.pcm
        self._format_samples += frame.num_samples
        return done + self._collect()

    def speech_started(self, frame: UserStartedSpeakingFrame) -> list[Utterance]:
        """Open an utterance at ``frame.stream_time`` minus the pre-roll (ignored while one is open)."""
        if not self._cuts or self._cuts[-1].end is not None:
            self._cuts.append(_Cut(max(0.0, frame.stream_time - self.pre_roll)))
        return []

    def speech_stopped(self, frame: UserStoppedSpeakingFrame) -> list[Utterance]:
        """Close the open utterance at ``frame.stream_time`` plus the post-roll."""
        if not self._cuts or self._cuts[-1].end is not None:
            return []
        cut = self._cuts[-1]
        cut.end = max(cut.start, frame.stream_time + self.post_roll)
        return self._collect()

    def open_audio(self) -> bytes:
        """PCM received so far of the next utterance to be delivered (empty when none is pending)."""
        if not self._cuts:
            return b""
        cut = self._cuts[0]
        end = self._received if cut.end is None else min(cut.end, self._received)
        return bytes(self._slice(max(cut.start, self._buffer_start), end))

    def flush(self) -> list[Utterance]:
        """Close every pending utterance with whatever audio has arrived (end of stream)."""
        received = self._received
        done = []
        for cut in self._cuts:
            if cut.start < received:
                cut.end = received if cut.end is None else min(cut.end, received)
                done.append(self._cut(cut))
        self._cuts.clear()
        self._trim(received - self.history)
        return done

    def reset(self) -> None:
        """Forget the pending utterances and the history."""
        self._buffer.clear()
        self._buffer_start = self._received
        self._cuts.clear()

    def _collect(self) -> list[Utterance]:
        received = self._received
        tolerance = 0.5 / self._rate if self._rate else 0.0  # half a sample of float rounding
        done = []
        while self._cuts:
            cut = self._cuts[0]
            if cut.end is None and received - cut.start >= self.max_duration - tolerance:
                # A run-on utterance is cut so latency stays bounded; the speech goes on in a new one.
                cut.end = received
                self._cuts.append(_Cut(received))
            if cut.end is None or received + tolerance < cut.end:
                break
            done.append(self._cut(self._cuts.popleft()))
        self._trim(min((cut.start for cut in self._cuts), default=received - self.history))
        return done

    def _cut(self, cut: _Cut) -> Utterance:
        assert cut.end is not None
        start = min(max(cut.start, self._buffer_start), cut.end)
        return Utterance(bytes(self._slice(start, cut.end)), self._rate, self._channels, start, cut.end)

    def _offset(self, time: float) -> int:
        """Byte offset of stream ``time`` in the buffer, on a whole-sample boundary."""
        frame_bytes = 2 * self._channels
        samples = round((time - self._buffer_start) * self._rate)
        return max(0, min(len(self._buffer), samples * frame_bytes))

    def _slice(self, start: float, end: float) -> bytearray:
        return self._buffer[self._offset(start) : self._offset(end)]

    def _trim(self, before: float) -> None:
        if before <= self._buffer_start or not self._rate:
            return
        cut = self._offset(before)
        del self._buffer[:cut]
        self._buffer_start += cut / (2 * self._channels * self._rate)
