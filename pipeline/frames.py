"""Frames: the units of work that flow between processors.

Three tiers decide how the runtime treats a frame:

* **System** frames (start, cancel, interruption, speaking events, errors, metrics) overtake queued
  data in every processor's inbox and are never dropped.
* **Data** frames (audio, text, transcripts, LLM text) flow in order; an interruption drops the ones
  still queued.
* **Control** frames (end, response and TTS boundaries) flow in order with the data.

Frames are shared between the branches of a fan-out: treat them as immutable and build a new one
(``dataclasses.replace``) instead of editing one you received.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar


class Direction(Enum):
    """Which way a frame travels along the graph's edges."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"


DOWNSTREAM = Direction.DOWNSTREAM
UPSTREAM = Direction.UPSTREAM


@dataclass(slots=True)
class Frame:
    """Base of every frame. ``created`` is ``time.monotonic_ns()`` at construction, for latency."""

    created: int = field(default_factory=time.monotonic_ns, kw_only=True, repr=False, compare=False)

    system: ClassVar[bool] = False
    """System frames overtake queued data and are handled even by a busy processor's inbox."""
    uninterruptible: ClassVar[bool] = False
    """Frames marked so survive interruptions: an interruption neither drops nor cancels them."""
    live: ClassVar[bool] = False
    """Live media: a full ``drop_oldest`` inbox may drop it even when it survives interruptions."""
    kind: ClassVar[str] = "frame"
    """Short name used in YAML, error messages and ``python -m pipeline list``."""

    @property
    def name(self) -> str:
        """The frame's class name, for logs."""
        return type(self).__name__

    def age_ms(self) -> float:
        """Milliseconds since this frame was created."""
        return (time.monotonic_ns() - self.created) / 1e6


@dataclass(slots=True)
class SystemFrame(Frame):
    """Overtakes queued data; never dropped by a full queue or an interruption."""

    system: ClassVar[bool] = True
    uninterruptible: ClassVar[bool] = True
    kind: ClassVar[str] = "system"


@dataclass(slots=True)
class DataFrame(Frame):
    """Payload that flows in order and is dropped from queues by an interruption."""

    kind: ClassVar[str] = "data"


@dataclass(slots=True)
class ControlFrame(Frame):
    """An in-order marker (end of stream, response boundaries)."""

    kind: ClassVar[str] = "control"


class Uninterruptible:
    """Mixin marking a frame class as surviving interruptions and drop-oldest queues."""

    __slots__ = ()
    uninterruptible: ClassVar[bool] = True


# --- system frames -------------------------------------------------------------------------------


@dataclass(slots=True)
class StartFrame(SystemFrame):
    """First frame on every edge; the runtime sends it after every processor's ``on_start``."""

    kind: ClassVar[str] = "start"


@dataclass(slots=True)
class CancelFrame(SystemFrame):
    """Stop now: in-flight work is cancelled and queued frames are discarded."""

    reason: str = ""
    kind: ClassVar[str] = "cancel"


@dataclass(slots=True)
class InterruptionFrame(SystemFrame):
    """The user barged in: cancel in-flight work and drop queued interruptible frames."""

    kind: ClassVar[str] = "interruption"


@dataclass(slots=True)
class UserStartedSpeakingFrame(SystemFrame):
    """Speech began (after the VAD's start hysteresis), stamped with when it *truly* began.

    ``at`` is that moment on the ``time.monotonic()`` clock. ``stream_time`` is the same moment as a
    position in the audio stream (seconds of audio the VAD had received): system frames overtake
    queued audio, so consumers that cut audio into utterances align on ``stream_time``, not on arrival.
    """

    at: float = 0.0
    stream_time: float = 0.0
    kind: ClassVar[str] = "user_started_speaking"


@dataclass(slots=True)
class UserStoppedSpeakingFrame(SystemFrame):
    """Speech ended (after the VAD's stop hangover); ``at`` / ``stream_time`` mark the true end."""

    at: float = 0.0
    stream_time: float = 0.0
    kind: ClassVar[str] = "user_stopped_speaking"


@dataclass(slots=True)
class UserSpeechPausedFrame(SystemFrame):
    """The user has been silent for the VAD's ``pause_secs``: speech *may* have ended at ``stream_time``.

    It comes before ``UserStoppedSpeakingFrame`` (which waits for the longer ``stop_secs``), so a
    recogniser can start transcribing early and have the final transcript ready when the stop is
    confirmed; if speech resumes, a later pause (or the stop) supersedes it.
    """

    at: float = 0.0
    stream_time: float = 0.0
    kind: ClassVar[str] = "user_speech_paused"


@dataclass(slots=True)
class BotStartedSpeakingFrame(SystemFrame):
    """The transport began playing bot audio."""

    kind: ClassVar[str] = "bot_started_speaking"


@dataclass(slots=True)
class BotStoppedSpeakingFrame(SystemFrame):
    """The transport finished (or stopped) playing bot audio."""

    kind: ClassVar[str] = "bot_stopped_speaking"


@dataclass(slots=True)
class ErrorFrame(SystemFrame):
    """A processor failed. Travels upstream; a fatal error ends the graph."""

    message: str = ""
    processor: str = ""
    fatal: bool = False
    traceback: str = field(default="", repr=False, compare=False)
    """Where it failed (the original traceback, secrets hidden): tests show it (``raise_errors``)."""
    kind: ClassVar[str] = "error"


@dataclass(slots=True)
class MetricsFrame(SystemFrame):
    """One measurement from a processor (``ttfb`` or ``processing``, in seconds)."""

    processor: str = ""
    metric: str = ""
    value: float = 0.0
    kind: ClassVar[str] = "metrics"


# --- data frames ---------------------------------------------------------------------------------


@dataclass(slots=True)
class AudioFrame(DataFrame):
    """Interleaved PCM, signed 16-bit little-endian: audio of either side of the call.

    The base of ``UserAudioFrame`` and ``BotAudioFrame``. Handle it to take both (a recorder, a
    resampler, an output); handle one of them to take that side only, and the other passes by.
    """

    pcm: bytes = b""
    sample_rate: int = 16000
    channels: int = 1
    kind: ClassVar[str] = "audio"
    uninterruptible: ClassVar[bool] = True
    live: ClassVar[bool] = True

    @property
    def num_samples(self) -> int:
        """Samples per channel."""
        return len(self.pcm) // (2 * self.channels)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate


@dataclass(slots=True)
class UserAudioFrame(AudioFrame):
    """The user's voice as it came in (a microphone, a file, a synthetic source).

    It survives interruptions — a barge-in must not punch holes in the user's audio on its way to a
    recorder — but as live media a full ``drop_oldest`` inbox may still drop it.
    """

    kind: ClassVar[str] = "user_audio"


@dataclass(slots=True)
class BotAudioFrame(AudioFrame):
    """Audio synthesised for the bot's voice: an interruption drops and cancels it."""

    kind: ClassVar[str] = "bot_audio"
    uninterruptible: ClassVar[bool] = False


@dataclass(slots=True)
class TextFrame(DataFrame):
    """Text of any kind: handle it to see every kind, the user's and the bot's.

    Its subclasses say whose text it is, so a processor takes one side by handling that class:
    ``UserTextFrame`` (what the user said or typed: the LLM's input), ``InterimTranscriptFrame``
    (a partial that may still change) and ``BotTextFrame`` (what the bot says: the TTS's input). A
    plain ``TextFrame`` is nobody's turn: the LLM and the TTS let it pass.
    """

    text: str = ""
    kind: ClassVar[str] = "text"


@dataclass(slots=True)
class UserTextFrame(TextFrame):
    """What the user said or typed, final: one turn for the LLM (a typed message, a transcript)."""

    kind: ClassVar[str] = "user_text"


@dataclass(slots=True)
class TranscriptFrame(UserTextFrame):
    """A final transcript of one user utterance."""

    language: str | None = None
    words: list[dict[str, Any]] | None = None
    kind: ClassVar[str] = "transcript"


@dataclass(slots=True)
class InterimTranscriptFrame(TextFrame):
    """A partial transcript that later frames may revise: not a turn, so not ``UserTextFrame``."""

    language: str | None = None
    kind: ClassVar[str] = "interim_transcript"


@dataclass(slots=True)
class BotTextFrame(TextFrame):
    """What the bot says: the TTS speaks it. Outside an LLM response, each one is a whole reply."""

    kind: ClassVar[str] = "bot_text"


@dataclass(slots=True)
class LLMTextFrame(BotTextFrame):
    """A chunk of an LLM's streamed reply."""

    kind: ClassVar[str] = "llm_text"


@dataclass(slots=True)
class TTSTextFrame(BotTextFrame):
    """The text that the ``BotAudioFrame``s following it speak (one sentence, usually).

    Its audio is made already, so a TTS passes it on unspoken.
    """

    kind: ClassVar[str] = "tts_text"


@dataclass(slots=True)
class LLMToolCallFrame(DataFrame):
    """The LLM asked to call a tool. ``arguments`` is the JSON text the model produced."""

    call_id: str = ""
    name: str = ""
    arguments: str = ""
    kind: ClassVar[str] = "llm_tool_call"


DTMF_DIGITS = "0123456789*#ABCD"
"""The keys a ``DTMFFrame`` may carry: a telephone keypad's, and the A-D column some have."""


@dataclass(slots=True)
class DTMFFrame(Uninterruptible, DataFrame):
    """The user pressed a telephone key: one of ``DTMF_DIGITS``.

    It flows in order with the caller's audio, so a ``#`` that ends a turn comes after the words
    before it. A keypress is the user's input like their voice: an interruption does not drop it.
    """

    digit: str = ""
    kind: ClassVar[str] = "dtmf"


# --- control frames ------------------------------------------------------------------------------


@dataclass(slots=True)
class EndFrame(Uninterruptible, ControlFrame):
    """End of stream: processors finish their queued work, run ``on_stop`` and forward it."""

    kind: ClassVar[str] = "end"


@dataclass(slots=True)
class LLMResponseStartFrame(ControlFrame):
    """An LLM reply begins."""

    kind: ClassVar[str] = "llm_response_start"


@dataclass(slots=True)
class LLMResponseEndFrame(ControlFrame):
    """An LLM reply is complete."""

    kind: ClassVar[str] = "llm_response_end"


@dataclass(slots=True)
class TTSStartedFrame(ControlFrame):
    """TTS began producing audio for a reply."""

    kind: ClassVar[str] = "tts_started"


@dataclass(slots=True)
class TTSStoppedFrame(ControlFrame):
    """TTS finished producing audio for a reply."""

    kind: ClassVar[str] = "tts_stopped"


@dataclass(slots=True)
class SpokenTextFrame(Uninterruptible, ControlFrame):
    """Sent *upstream* by an output transport when the audio of a ``TTSTextFrame`` starts playing.

    It tells the LLM and the recorder what the user actually heard, so that after a barge-in the
    conversation keeps only the spoken part of the reply.
    """

    text: str = ""
    kind: ClassVar[str] = "spoken_text"


@dataclass(slots=True)
class STTUpdateSettingsFrame(ControlFrame):
    """Change a streaming recogniser's settings mid-session (provider-specific keys)."""

    settings: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "stt_update_settings"


def frame_kinds() -> dict[str, type[Frame]]:
    """Every frame class in this module by its ``kind`` name (for YAML and ``list``)."""
    kinds: dict[str, type[Frame]] = {}
    stack: list[type[Frame]] = [Frame]
    while stack:
        cls = stack.pop()
        kinds.setdefault(cls.kind, cls)
        stack.extend(cls.__subclasses__())
    return kinds
