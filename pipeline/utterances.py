"""Cut an audio stream into utterances from the VAD's speaking frames, whatever order they arrive in.

Speaking frames are system frames: they overtake audio still queued in front of a busy processor, and
a recogniser may already have consumed the first syllables when the start frame arrives. So cuts are
made on the stream clock instead: the VAD stamps each speaking frame with ``stream_time`` (seconds of
audio it had received), and the collector counts the audio *it* receives the same way. Audio from a
little before the start (``pre_roll``) is kept in a short history so the first syllable is never lost.
"""

from __future__ import annotations

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


class UtteranceCollector:
    """Collects the audio between speech start and stop, aligned on ``stream_time``.

    Feed it every audio frame (``add_audio``) and every speaking frame; each call returns the
    utterances it completed. ``open_audio()`` gives the audio of the utterance in progress (for
    interim re-transcription) and ``flush()`` closes it at the end of the stream.
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
        self._received = 0.0  # stream time just after the last byte received
        self._rate = 0
        self._channels = 1
        self._start: float | None = None  # stream time where the open utterance begins
        self._end: float | None = None  # stream time where it ends, once the stop is known

    @property
    def in_speech(self) -> bool:
        """True between a start and the delivery of its utterance."""
        return self._start is not None

    @property
    def stream_time(self) -> float:
        """Seconds of audio received so far."""
        return self._received

    def add_audio(self, frame: AudioFrame) -> list[Utterance]:
        """Append ``frame``; returns the utterances its arrival completed."""
        if (frame.sample_rate, frame.channels) != (self._rate, self._channels):
            done = self.flush() if self._rate else []
            self._rate, self._channels = frame.sample_rate, frame.channels
            self._buffer.clear()
            self._buffer_start = self._received
            if done:
                return done
        self._buffer += frame.pcm
        self._received += frame.duration
        return self._collect()

    def speech_started(self, frame: UserStartedSpeakingFrame) -> list[Utterance]:
        """Open an utterance at ``frame.stream_time`` minus the pre-roll."""
        done = self.flush() if self._end is not None else []
        if self._start is None:
            self._start = max(0.0, frame.stream_time - self.pre_roll)
            self._end = None
        return done

    def speech_stopped(self, frame: UserStoppedSpeakingFrame) -> list[Utterance]:
        """Close the open utterance at ``frame.stream_time`` plus the post-roll."""
        if self._start is None:
            return []
        self._end = max(self._start, frame.stream_time + self.post_roll)
        return self._collect()

    def open_audio(self) -> bytes:
        """PCM of the utterance in progress so far (empty when none is open)."""
        if self._start is None:
            return b""
        return bytes(self._slice(self._start, self._received))

    def flush(self) -> list[Utterance]:
        """Close the open utterance with whatever audio has arrived (end of stream)."""
        if self._start is None or self._received <= self._start:
            self._start = self._end = None
            return []
        self._end = min(self._end if self._end is not None else self._received, self._received)
        return [self._cut()]

    def reset(self) -> None:
        """Forget the open utterance and the history."""
        self._buffer.clear()
        self._buffer_start = self._received
        self._start = self._end = None

    def _collect(self) -> list[Utterance]:
        if self._start is not None:
            if self._end is None and self._received - self._start >= self.max_duration:
                self._end = self._received  # a run-on utterance is cut so latency stays bounded
            if self._end is not None and self._received >= self._end:
                return [self._cut()]
            return []
        self._trim(self._received - self.history)
        return []

    def _cut(self) -> Utterance:
        assert self._start is not None and self._end is not None
        start, end = max(self._start, self._buffer_start), self._end
        utterance = Utterance(bytes(self._slice(start, end)), self._rate, self._channels, start, end)
        self._start = self._end = None
        self._trim(end - self.pre_roll)  # the next utterance's pre-roll may overlap this one's tail
        return utterance

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
