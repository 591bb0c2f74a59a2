"""``recorder``: keep each conversation on disk as it happens — audio tracks and a transcript.

One folder per conversation, ``{directory}/{session_id}/``:

* ``user.wav`` — the user's audio (``UserAudioFrame``), at its own rate;
* ``bot.wav`` — the bot's voice (``BotAudioFrame``), on the same timeline, silence between replies;
* ``mixed.wav`` — both on one timeline at the user's rate, as a listener on the call heard it;
* ``transcript.json`` — ``{"session_id", "start_time", "end_time", "metadata"?, "messages": [{"role",
  "content", "type"?}]}``, replaced atomically as each message completes: the user's as its turn (a final
  transcript or a typed message: ``UserTextFrame``) leaves the node that made it, the assistant's
  when its reply ends or is cut short.

Wherever the recorder sits, it takes the user's audio as it leaves the input node and user turns as
they leave the node nearest it that makes or handles them (taps: ``pipeline.observers``), so neither
waits behind the LLM and TTS; the same frames arriving along its edges are only passed on. The bot's
audio keeps its place in the graph, just before the output: what was generated but never played is
known only there.

The clock is the user's audio: its sample count, so the timeline is the same whether a microphone
paces the graph or a file is read as fast as possible. Bot audio is placed at the later of where the
bot track ends and the user clock, and is held until the user clock passes it: TTS runs ahead of
playback, and on a barge-in the audio that was generated but never played is taken back. A source
that sends nothing while the bot speaks (a file read as fast as possible waits for the reply) is
padded with silence to the reply's end when the playing transport reports the bot silent
(``BotStoppedSpeakingFrame``), so its next words follow the reply as the listener heard them. A
graph without user audio (text in, voice out) has no clock: its bot audio is written back to back,
and ``mixed.wav`` starts with the first user audio.

The assistant message keeps what was heard (``SpokenTextFrame``): of a reply cut short, with
``"type": "interrupted"``; of one played out, without the sentences TTS failed to speak. A reply
nobody heard any of is not saved, as the LLM's history drops it too. Each report is credited to the
reply whose ``TTSTextFrame`` it matches (the transport reports them in the order they passed here):
after a barge-in, a report of the cut reply can arrive after the next reply began.

Files are written as the call goes (``pipeline.wavfile``), by one disk task at a time, off the event
loop: a crash loses under a second of audio, and the next start repairs WAV headers a crash left
behind. Audio that comes while the disk task is busy waits in a backlog of at most ``max_backlog``
seconds per track; beyond it the oldest is dropped (tapped audio cannot hold the microphone back),
with one warning and the seconds per track in the transcript's ``"audio_dropped"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.formats import AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotAudioFrame,
    BotStoppedSpeakingFrame,
    BotTextFrame,
    Frame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    SpokenTextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserTextFrame,
)
from pipeline.observers import TapRequest
from pipeline.params import param
from pipeline.processor import Processor
from pipeline.sessions import new_session_id
from pipeline.wavfile import FormatConverter, WavWriter, repair_wav

__all__ = ["Recorder", "Timeline", "TrackAudio"]

log = logging.getLogger("processors.recorder")

Track = Literal["user", "bot", "mixed", "transcript"]
_MIX_DELAY = 0.1  # seconds the mix is built behind the clock: the resampler releases bot audio late
_REPLIES_QUEUED = 8  # replies sent to play that ``played_out`` may still be told about
_SENTENCES_UNHEARD = 256  # sentences sent to play whose ``SpokenTextFrame`` may still come
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


_repaired: set[Path] = set()
"""Recordings directories this process has repaired. Only a crashed process leaves broken headers,
so one repair per process is enough: a server would otherwise read every saved WAV at each
connection, and could patch the header of a file another live session is writing."""
_repaired_lock = threading.Lock()  # recorders start in worker threads


def _first_start_in(directory: Path) -> bool:
    """True for the first recorder of this process that starts in ``directory``."""
    key = directory.resolve()
    with _repaired_lock:
        if key in _repaired:
            return False
        _repaired.add(key)
        return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True, kw_only=True)
class RecorderParams:
    """Params of ``recorder``."""

    directory: str = param("recordings", doc="folder that holds one sub-folder per conversation")
    session_id: str | None = param(
        None,
        check=lambda session_id: _SESSION_ID.fullmatch(session_id) is not None,
        fix="use letters, digits, '.', '_' and '-' (it names a folder), or null for a generated one",
        doc="this conversation's folder name; null = YYYYmmdd-HHMMSS-xxxx (UTC, sorts by time)",
    )
    tracks: list[Track] = param(
        ["user", "bot", "mixed", "transcript"], doc="what to write: user, bot, mixed (WAVs), transcript"
    )
    max_backlog: float = param(
        30.0,
        gt=0,
        doc="seconds of audio per track held while the disk is busy; beyond it the oldest is dropped "
        "(counted in the transcript's audio_dropped)",
    )


# --- the timeline --------------------------------------------------------------------------------


@dataclass(slots=True)
class TrackAudio:
    """PCM to append to each track, in that track's format."""

    user: bytes = b""
    bot: bytes = b""
    mixed: bytes = b""


class Timeline:
    """Places user and bot audio on one clock and says what each track gets. No I/O.

    Each track keeps the format of its first audio; audio arriving in another one is converted.
    """

    def __init__(self, mix: bool = True) -> None:
        self.mix = mix  # whether to build the mixed track
        self.user_format: AudioFormat | None = None
        self.bot_format: AudioFormat | None = None
        self._to_user: dict[AudioFormat, FormatConverter] = {}  # for user audio in a later format
        self._to_bot: dict[AudioFormat, FormatConverter] = {}
        self.user_samples = 0  # the clock: user samples (per channel) so far
        self._origin = 0  # bot-track sample where user sample 0 lies
        self._bot_written = 0  # bot samples handed out (nothing before can be taken back)
        self._pending = bytearray()  # bot audio after ``_bot_written``, not yet passed by the clock
        self._mixed_at = 0  # mixed-track samples handed out
        self._delay = 0  # user samples the mix stays behind the clock
        self._held = bytearray()  # user audio from ``_mixed_at`` to the clock
        self._mix = bytearray()  # bot audio in the user format, from ``_mixed_at`` on
        self._segment: FormatConverter | None = None  # bot -> user rate, for one run of bot audio
        self._segment_at = 0  # mixed-track sample where the segment's next output goes
        self._reply_from: int | None = None  # the clock when the reply being voiced placed its audio
        self._replies: deque[tuple[int, int]] = deque(maxlen=_REPLIES_QUEUED)  # (that clock, bot end)

    @property
    def bot_ahead(self) -> float:
        """Seconds of bot audio beyond the user clock: generated, not yet played."""
        if self.bot_format is None or self.user_format is None:
            return 0.0
        ahead = self._bot_cursor() - self._clock_in_bot()
        return max(0, ahead) / self.bot_format.sample_rate

    def add_user(self, pcm: bytes, fmt: AudioFormat) -> TrackAudio:
        """The user's audio advances the clock; bot audio it passes is handed out."""
        if self.user_format is None:
            self.user_format = fmt
            self._origin = self._bot_cursor()
            self._delay = round(_MIX_DELAY * fmt.sample_rate)
        user = _conform(pcm, fmt, self.user_format, self._to_user)
        self.user_samples += len(user) // _width(self.user_format)
        bot = self._hand_out(self._clock_in_bot()) if self.bot_format is not None else b""
        if not self.mix:
            return TrackAudio(user=user, bot=bot)
        self._held += user
        mix_to = self.user_samples - self._delay
        if self._segment is not None and self._segment_at < mix_to:
            self._end_segment()  # the bot's run ended: its filter's tail is due in the mix now
        return TrackAudio(user=user, bot=bot, mixed=self._mix_out(mix_to - self._mixed_at))

    def add_bot(self, pcm: bytes, fmt: AudioFormat) -> TrackAudio:
        """Bot audio goes where the bot track ends, or at the user clock if that is later."""
        if self.bot_format is None:
            self.bot_format = fmt
        bot = _conform(pcm, fmt, self.bot_format, self._to_bot)
        if self.user_format is None:  # no clock yet: nothing to place against or take back
            self._bot_written += len(bot) // _width(self.bot_format)
            return TrackAudio(bot=bot)
        if self._reply_from is None:
            self._reply_from = self.user_samples
        clock, cursor = self._clock_in_bot(), self._bot_cursor()
        if clock > cursor:  # the bot was silent: fill the gap, start a new run
            self._pending += bytes((clock - cursor) * _width(self.bot_format))
            self._end_segment()
            cursor = clock
        self._pending += bot
        if self.mix:
            if self._segment is None:
                self._segment = FormatConverter(self.bot_format, self.user_format)
                self._segment_at = (
                    (cursor - self._origin) * self.user_format.sample_rate // self.bot_format.sample_rate
                )
            self._place(self._segment.convert(bot))
        return TrackAudio(bot=self._hand_out(clock))

    def reply_queued(self) -> None:
        """The reply's audio is all here (``TTSStoppedFrame``): note where it ends, for ``played_out``."""
        if self._reply_from is not None:
            self._replies.append((self._reply_from, self._bot_cursor()))
        self._reply_from = None

    def played_out(self) -> TrackAudio:
        """The playing transport reports the oldest queued reply played (``BotStoppedSpeakingFrame``).

        A live microphone kept sending while it played, so the clock is at its end or close behind
        (its audio on the way). A source that paused instead (a file read as fast as possible waits
        for the reply) sent nothing: the listener heard the reply in that pause, so the clock moves to
        the reply's end over silence, and the user's next words come after the reply, not under it.
        """
        if not self._replies or self.user_format is None or self.bot_format is None:
            return TrackAudio()
        started, end = self._replies.popleft()
        clock = self._clock_in_bot()
        kept_up = clock - self._clock_in_bot(started - self.user_samples)  # bot samples of user audio
        if end - clock <= kept_up:
            return TrackAudio()  # the user's audio kept pace with the reply: a live source
        user_rate, bot_rate = self.user_format.sample_rate, self.bot_format.sample_rate
        pause = -(-(end - self._origin) * user_rate // bot_rate) - self.user_samples
        return self.add_user(bytes(pause * _width(self.user_format)), self.user_format)

    def interrupt(self) -> None:
        """Barge-in: bot audio beyond the user clock was never played; take it back."""
        self._replies.clear()
        self._reply_from = None
        if self.bot_format is None or self.user_format is None:
            return
        keep = max(0, self._clock_in_bot() - self._bot_written)
        del self._pending[keep * _width(self.bot_format) :]
        self._segment = None
        del self._mix[(self.user_samples - self._mixed_at) * _width(self.user_format) :]

    def finish(self) -> TrackAudio:
        """The end: hand out all bot audio still held, over silence where the user audio ended."""
        self._end_segment()
        bot = bytes(self._pending)
        if self.bot_format is not None:
            self._bot_written += len(bot) // _width(self.bot_format)
        self._pending.clear()
        mixed = b""
        if self.mix and self.user_format is not None:
            mixed = self._mix_out(self.user_samples - self._mixed_at) + bytes(self._mix)
            self._mix.clear()
        return TrackAudio(bot=bot, mixed=mixed)

    def _bot_cursor(self) -> int:
        """Where the bot track ends (handed out and pending), in bot samples."""
        if self.bot_format is None:
            return 0
        return self._bot_written + len(self._pending) // _width(self.bot_format)

    def _clock_in_bot(self, ahead: int = 0) -> int:
        """The user clock (plus ``ahead`` user samples) as a bot-track position."""
        assert self.user_format is not None and self.bot_format is not None
        user = self.user_samples + ahead
        return self._origin + user * self.bot_format.sample_rate // self.user_format.sample_rate

    def _hand_out(self, clock: int) -> bytes:
        """Pending bot audio up to ``clock`` (bot samples)."""
        assert self.bot_format is not None
        count = min(clock - self._bot_written, len(self._pending) // _width(self.bot_format))
        if count <= 0:
            return b""
        size = count * _width(self.bot_format)
        out = bytes(self._pending[:size])
        del self._pending[:size]
        self._bot_written += count
        return out

    def _place(self, pcm: bytes) -> None:
        """Put converted bot audio into the mix at the segment's position (late samples are dropped)."""
        assert self.user_format is not None
        width = _width(self.user_format)
        offset = self._segment_at - self._mixed_at
        self._segment_at += len(pcm) // width
        if offset < 0:
            pcm = pcm[-offset * width :]
            offset = 0
        start, end = offset * width, offset * width + len(pcm)
        if len(self._mix) < end:
            self._mix += bytes(end - len(self._mix))
        self._mix[start:end] = pcm

    def _end_segment(self) -> None:
        if self._segment is not None:
            self._place(self._segment.flush())
            self._segment = None

    def _mix_out(self, count: int) -> bytes:
        """The next ``count`` samples of the mixed track: held user audio with the bot's over it."""
        if count <= 0:
            return b""
        assert self.user_format is not None
        size = count * _width(self.user_format)
        user, bot = bytes(self._held[:size]), bytes(self._mix[:size])
        del self._held[:size], self._mix[:size]
        self._mixed_at += count
        if not bot:
            return user
        voices = np.frombuffer(user, dtype="<i2").astype(np.int32)
        voices[: len(bot) // 2] += np.frombuffer(bot, dtype="<i2")
        return np.clip(voices, -32768, 32767).astype("<i2").tobytes()


def _width(fmt: AudioFormat) -> int:
    """Bytes per sample frame (all channels)."""
    return 2 * fmt.channels


def _conform(
    pcm: bytes, fmt: AudioFormat, track: AudioFormat, converters: dict[AudioFormat, FormatConverter]
) -> bytes:
    """``pcm`` in the track's format. QQ: steady output with nothing held back, so the clock stays exact."""
    if fmt == track:
        return pcm
    converter = converters.get(fmt)
    if converter is None:
        converter = converters[fmt] = FormatConverter(fmt, track, quality="QQ")
    return converter.convert(pcm)


# --- the transcript ------------------------------------------------------------------------------


def _letters(text: str) -> str:
    """Lower-case letters and digits only: how spoken text is compared with generated text."""
    return "".join(c for c in text.lower() if c.isalnum())


@dataclass(slots=True)
class _Reply:
    """One assistant reply as it streams, plays and maybe gets cut short."""

    chunks: list[str] = field(default_factory=list)  # LLM text as it streamed
    spoken: list[str] = field(default_factory=list)  # text the output transport started playing
    ended: bool = False  # the LLM finished it
    voiced: bool = False  # TTS spoke (some of) it: the transcript keeps what was heard
    tts_busy: bool = False  # TTS started and has not stopped
    audio: bool = False  # some of its bot audio passed here
    closed: bool = False  # played out or interrupted: later frames start a new reply
    interrupted: bool = False
    played_out: bool = False  # its audio all played: what was not reported heard was not (TTS failed it)
    index: int | None = None  # its place in the transcript's messages, once added

    @property
    def unheard(self) -> bool:
        """The playing transport reported some of this reply as heard, but not all of it."""
        return bool(self.spoken) and _letters(" ".join(self.spoken)) != _letters("".join(self.chunks))

    def message(self) -> dict[str, str] | None:
        """Its transcript entry: what was heard when it was voiced and cut short or partly unspoken.

        None when that is nothing (cut before any of it played): nobody heard a reply, the LLM's
        history drops it too, so the transcript does not claim one.
        """
        if self.voiced and not self.audio and not self.tts_busy and not self.spoken:
            return None  # TTS finished it without a sound (it failed every sentence)
        heard_only = self.voiced and (self.interrupted or (self.played_out and self.unheard))
        content = (" ".join(self.spoken) if heard_only else "".join(self.chunks)).strip()
        if not content:
            return None
        if self.interrupted:
            return {"role": "assistant", "content": content, "type": "interrupted"}
        return {"role": "assistant", "content": content}


class _Transcript:
    """``transcript.json``, replaced atomically. One writer task at a time, in a thread: changes made
    while it writes are saved together by its next write (two writers would race for the temp file)."""

    def __init__(self, path: Path | None, session_id: str) -> None:
        self.path = path  # None: the transcript track is off
        self.doc: dict[str, Any] = {"session_id": session_id, "start_time": _now(), "end_time": None}
        self.messages: list[dict[str, str] | None] = []  # None: a reply nobody heard (kept for indices)
        self._changes = 0  # changes made so far
        self._written = 0  # changes on disk
        self._writer: asyncio.Task[None] | None = None

    def set(self, index: int | None, message: dict[str, str] | None) -> int:
        """Add ``message`` (index None) or replace the one at ``index``; returns its index."""
        if index is None:
            self.messages.append(message)
            return len(self.messages) - 1
        self.messages[index] = message
        return index

    @property
    def unsaved(self) -> bool:
        """True while a change is not on disk yet."""
        return self._written < self._changes

    def changed(self) -> None:
        """Save the current state soon, without waiting (callable from synchronous code)."""
        if self.path is None:
            return
        self.doc["end_time"] = _now()
        self._changes += 1
        if self._writer is None or self._writer.done():
            self._start_writer()

    async def saved(self) -> None:
        """Wait until every change so far is on disk; a cancelled caller does not stop the write.

        Raises the writer's error if the write failed.
        """
        wanted = self._changes
        while self._written < wanted:
            if self._writer is None or self._writer.done():
                self._start_writer()  # the last writer failed: try again
            assert self._writer is not None
            await asyncio.shield(self._writer)

    async def save(self) -> None:
        """Write the current state and wait until it is on disk."""
        self.changed()
        await self.saved()

    def _start_writer(self) -> None:
        self._writer = asyncio.ensure_future(self._write())
        self._writer.add_done_callback(_retrieve)  # its error reaches whoever awaits ``saved``

    async def _write(self) -> None:
        assert self.path is not None
        while self._written < self._changes:
            changes = self._changes
            messages = [m for m in self.messages if m is not None]
            text = json.dumps({**self.doc, "messages": messages}, ensure_ascii=False, indent=2)
            await asyncio.to_thread(_replace, self.path, text)
            self._written = changes


def _retrieve(task: asyncio.Task[None]) -> None:
    """Log a failed save at once: a save started by a tap may have nobody waiting for it (the next
    change, or a frame passing the recorder, tries again and raises the error to the graph)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("cannot save the transcript: %s: %s", type(error).__name__, error)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` next to ``path`` and rename it over: readers see the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


# --- the processor -------------------------------------------------------------------------------


class Recorder(Processor):
    """Writes user, bot and mixed audio and the transcript of one conversation; passes every frame on."""

    type_name = "recorder"
    Params = RecorderParams
    params: RecorderParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        AudioFrame,
        UserTextFrame,
        LLMResponseStartFrame,
        BotTextFrame,
        LLMResponseEndFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    )
    handles_upstream: ClassVar[tuple[type[Frame], ...]] = (SpokenTextFrame, BotStoppedSpeakingFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, UserTextFrame, BotTextFrame)  # passed on
    taps: ClassVar[tuple[TapRequest, ...]] = (
        TapRequest(UserAudioFrame, at="source"),  # the user, from the input node
        TapRequest(UserTextFrame),  # each user turn, from the node that made or handled it last
    )

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self._tracks = set(p.tracks)
        self._timeline = Timeline(mix="mixed" in self._tracks)
        self._writers: dict[str, WavWriter] = {}
        self._unopened: dict[str, AudioFormat] = {}  # tracks whose file the disk task is to open
        self._backlog: dict[str, bytearray] = {}  # audio that came while the disk task was busy
        self.dropped: dict[str, float] = {}  # seconds of audio dropped per track: the disk fell behind
        self.session_id = ""
        self._dir = Path(p.directory)
        self._transcript = _Transcript(None, "")
        self._use_session(p.session_id or new_session_id())
        self._reply: _Reply | None = None
        # Sentences passed on to play, oldest first, with their reply, until reported heard.
        self._unheard: deque[tuple[_Reply, str]] = deque(maxlen=_SENTENCES_UNHEARD)
        self._in_response = False  # between LLMResponseStartFrame and its end: all bot text is that reply
        self._disk: asyncio.Task[None] | None = None  # the one task writing audio
        self._disk_again = False  # more audio became due while it wrote
        self._user_tapped = False  # user audio comes by tap; along the edges it is only passed on
        self._transcripts_tapped = False
        self._stopping = False  # on_stop began: taps are ignored

    @property
    def session_dir(self) -> Path:
        """The folder this conversation is written to."""
        return self._dir

    @property
    def conversations_directory(self) -> Path:
        """The folder of every conversation's sub-folder (``ConversationKeeper``)."""
        return Path(self.params.directory)

    def bind_session(self, session_id: str) -> None:
        """Record conversation ``session_id`` (``ConversationKeeper``: a server calls this before the
        graph starts). Raises ``ValueError`` for an id that cannot name a folder."""
        if not _SESSION_ID.fullmatch(session_id):
            raise ValueError(f"session id {session_id!r} cannot name a folder")
        self._use_session(session_id)

    def annotate(self, metadata: Mapping[str, str]) -> None:
        """Keep facts about the conversation (a phone call's caller and call id) in ``transcript.json``
        under ``metadata`` (``ConversationNotes``: the server calls this once it knows them); saved with
        the transcript's next change (every conversation's end is one)."""
        notes = self._transcript.doc.setdefault("metadata", {})
        notes.update({str(key): str(value) for key, value in metadata.items()})

    def _use_session(self, session_id: str) -> None:
        self.session_id = session_id
        self._dir = Path(self.params.directory) / session_id
        transcript = self._dir / "transcript.json" if "transcript" in self._tracks else None
        self._transcript = _Transcript(transcript, session_id)

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming  # audio is recorded and passed on unchanged

    def tapping(self, request: TapRequest) -> Callable[[Frame], None]:
        if request.kind is UserAudioFrame:
            self._user_tapped = True
        else:
            self._transcripts_tapped = True
        return self._tapped

    def _tapped(self, frame: Frame) -> None:
        """A frame by tap, inside another node's push: record it now, never raise into that node."""
        if self._stopping:
            return
        try:
            if self._record(frame):
                self._kick_disk()
        except Exception as error:
            self.report_error(error)

    async def on_start(self) -> None:
        await self.run_in_thread(self._prepare)
        await self._transcript.save()

    def _prepare(self) -> None:
        """Repair what a crash left in earlier sessions' folders (once per process), then make this one."""
        directory = Path(self.params.directory)
        if _first_start_in(directory):
            for path in sorted(directory.glob("*/*.wav")):
                try:
                    repair_wav(path)
                except (OSError, ValueError) as error:
                    log.warning("cannot repair '%s': %s", path, error)
        self._dir.mkdir(parents=True, exist_ok=True)

    async def process(self, frame: Frame) -> None:
        by_tap = self._by_tap(frame)  # then it was recorded as it was made: only pass it on
        if not by_tap and self._record(frame):
            self._kick_disk()
        try:
            # Shielded waits: an interruption cancelling this frame leaves a write whole.
            disk = self._disk
            if not by_tap and disk is not None and not disk.done():
                await asyncio.shield(disk)  # paced by the disk, as the bot's audio always was
            if self._transcript.unsaved and not isinstance(frame, AudioFrame):
                await self._transcript.saved()  # a message seen downstream is on disk
        except Exception:
            await self.push(frame)  # a failed write is reported, the frame still goes on
            raise
        await self.push(frame)

    def _by_tap(self, frame: Frame) -> bool:
        """Whether ``frame`` reached the recorder by tap already (and only needs passing on)."""
        if isinstance(frame, UserTextFrame):
            return self._transcripts_tapped
        return self._user_tapped and isinstance(frame, UserAudioFrame)

    async def process_upstream(self, frame: SpokenTextFrame | BotStoppedSpeakingFrame) -> None:
        if isinstance(frame, BotStoppedSpeakingFrame):
            self._played_out()  # before passing it on: a caller that waits for it speaks next
            await self.push(frame, UPSTREAM)
            return
        await self.push(frame, UPSTREAM)
        reply = self._heard(frame.text)
        if reply is None:
            return
        reply.spoken.append(frame.text.strip())
        reply.voiced = True
        if reply.interrupted or reply.played_out:  # reported after the system frame that ended it
            reply.index = self._transcript.set(reply.index, reply.message())
            await self._transcript.save()

    def _heard(self, text: str) -> _Reply | None:
        """The reply whose sentence ``text`` is; sentences sent before it were never played (TTS failed
        them, or a barge-in took them back) and are forgotten. None for text that passed elsewhere."""
        letters = _letters(text)
        if not letters:
            return None
        for index, (reply, sentence) in enumerate(self._unheard):
            if _letters(sentence) == letters:
                for _ in range(index + 1):
                    self._unheard.popleft()
                return reply
        return None

    def _played_out(self) -> None:
        """The playing transport has played the oldest reply sent to it: place the user's next audio
        after it (``Timeline.played_out``); a reply not all heard keeps what was."""
        if self._store(self._timeline.played_out()):
            self._kick_disk()
        reply = self._reply
        if reply is None or reply.closed or reply.tts_busy:
            return
        # What was not reported heard was not (TTS failed a sentence); reports still on their way
        # (this system frame overtakes them) extend it in ``process_upstream``.
        reply.played_out = reply.closed = True
        if reply.ended and reply.unheard:
            reply.index = self._transcript.set(reply.index, reply.message())
            self._transcript.changed()

    async def on_interrupt(self) -> None:
        self._in_response = False  # the LLM's cut response sends no end
        await self._idle()
        reply = self._reply
        if reply is not None and not reply.closed:
            if not reply.ended or reply.tts_busy or self._timeline.bot_ahead > 0 or reply.unheard:
                reply.interrupted = True
                reply.index = self._transcript.set(reply.index, reply.message())
                await self._transcript.save()
            reply.closed = True
        self._timeline.interrupt()

    async def on_stop(self) -> None:
        self._stopping = True
        await self._idle()
        reply = self._reply
        if reply is not None and not reply.ended and reply.index is None and reply.chunks:
            reply.interrupted = True  # the call ended mid-reply
            reply.index = self._transcript.set(None, reply.message())
        try:
            self._store(self._timeline.finish())
            await self._to_disk()
        finally:
            for writer in self._writers.values():
                await writer.close()
            await self._transcript.save()

    async def _idle(self) -> None:
        """Wait for the disk task to finish what is due (its errors were reported already)."""
        disk = self._disk
        if disk is not None:
            await asyncio.shield(disk)

    def _record(self, frame: Frame) -> bool:
        """Update the state and buffers at once (no awaiting, so nothing is half done, whichever task
        calls it); True when audio is due on disk. Transcript changes start their own save."""
        if isinstance(frame, BotAudioFrame):
            voicing = self._current_reply()
            voicing.voiced = voicing.audio = True
            return self._store(
                self._timeline.add_bot(frame.pcm, AudioFormat(frame.sample_rate, frame.channels))
            )
        if isinstance(frame, AudioFrame):
            return self._store(
                self._timeline.add_user(frame.pcm, AudioFormat(frame.sample_rate, frame.channels))
            )
        if isinstance(frame, TTSTextFrame):  # a sentence of a reply whose text came already
            self._unheard.append((self._current_reply(), frame.text))
        elif isinstance(frame, BotTextFrame) and (self._in_response or isinstance(frame, LLMTextFrame)):
            self._current_reply().chunks.append(frame.text)  # a chunk of the reply, whatever its class
        elif isinstance(frame, BotTextFrame):
            greeting = self._reply = _Reply(chunks=[frame.text], ended=True)  # bot text of its own
            greeting.index = self._transcript.set(None, greeting.message())
            self._transcript.changed()
        elif isinstance(frame, UserTextFrame):
            if frame.text.strip():
                self._transcript.set(None, {"role": "user", "content": frame.text.strip()})
                self._transcript.changed()
        elif isinstance(frame, LLMResponseStartFrame):
            self._reply = _Reply()
            self._in_response = True
        elif isinstance(frame, LLMResponseEndFrame):
            self._in_response = False
            reply = self._reply
            if reply is not None and not reply.ended and not reply.interrupted:  # else: cut short already
                reply.ended = True
                reply.index = self._transcript.set(reply.index, reply.message())
                self._transcript.changed()
        elif isinstance(frame, TTSStartedFrame):
            reply = self._current_reply()
            reply.tts_busy = reply.voiced = True
        elif isinstance(frame, TTSStoppedFrame):
            self._timeline.reply_queued()
            if self._reply is not None:
                self._reply.tts_busy = False
        return False

    def _current_reply(self) -> _Reply:
        """The reply in progress; frames after a closed one begin the next."""
        if self._reply is None or self._reply.closed:
            self._reply = _Reply()
        return self._reply

    @property
    def backlog(self) -> float:
        """Seconds of audio (the longest track's) waiting for the busy disk task."""
        return max((len(pcm) / self._byte_rate(t) for t, pcm in self._backlog.items()), default=0.0)

    def _store(self, audio: TrackAudio) -> bool:
        """Buffer each track's audio; True when a write (or opening a file) is due.

        While the disk task is busy, audio waits in a backlog of at most ``max_backlog`` seconds per
        track: tapped audio cannot hold the microphone back, so a stalled disk costs the oldest audio
        (counted in ``dropped``) rather than memory without bound. With the write in flight and the
        one waiting for it, a track holds at most about three times ``max_backlog``.
        """
        timeline = self._timeline
        busy = self._disk is not None and not self._disk.done()
        due = False
        for track, pcm, fmt in (
            ("user", audio.user, timeline.user_format),
            ("bot", audio.bot, timeline.bot_format),
            ("mixed", audio.mixed, timeline.user_format),
        ):
            if not pcm or fmt is None or track not in self._tracks:
                continue
            writer = self._writers.get(track)
            if writer is not None and not busy and track not in self._backlog:
                due = writer.append(pcm) or due
                continue
            if writer is None and track not in self._unopened:
                self._unopened[track] = fmt
            self._hold(track, pcm, fmt)
            due = True
        return due

    def _hold(self, track: str, pcm: bytes, fmt: AudioFormat) -> None:
        """Add ``pcm`` to the track's backlog, dropping its oldest audio beyond ``max_backlog``."""
        backlog = self._backlog.setdefault(track, bytearray())
        backlog += pcm
        limit = round(self.params.max_backlog * fmt.sample_rate) * _width(fmt)
        excess = len(backlog) - limit
        if excess <= 0:
            return
        del backlog[:excess]
        if not self.dropped:
            log.warning(
                "%s: the disk is too slow: dropping the oldest unwritten audio (max_backlog %.1f s)",
                self.name,
                self.params.max_backlog,
            )
        self.dropped[track] = self.dropped.get(track, 0.0) + excess / self._byte_rate(track)
        self._transcript.doc["audio_dropped"] = {t: round(s, 3) for t, s in self.dropped.items()}

    def _byte_rate(self, track: str) -> int:
        fmt = self._timeline.bot_format if track == "bot" else self._timeline.user_format
        return 2 * fmt.channels * fmt.sample_rate if fmt is not None else 1

    def _kick_disk(self) -> None:
        """Start the disk task, or have the running one go round once more: one writer per file."""
        if self._disk is None or self._disk.done():
            self._disk = asyncio.ensure_future(self._disk_work())
        else:
            self._disk_again = True

    async def _disk_work(self) -> None:
        """Write what is due until nothing more is; errors are reported, recording goes on."""
        self._disk_again = True
        while self._disk_again:
            self._disk_again = False
            try:
                await self._to_disk()
            except Exception as error:
                self.report_error(error)
                return

    async def _to_disk(self) -> None:
        """Open the files of new tracks, then hand each file's due audio to its writer thread."""
        while self._unopened:
            track, fmt = next(iter(self._unopened.items()))
            self._writers[track] = await WavWriter.open(
                self._dir / f"{track}.wav", fmt.sample_rate, fmt.channels
            )
            del self._unopened[track]
        for track, writer in list(self._writers.items()):
            if (pcm := self._backlog.pop(track, None)) is not None:
                writer.append(bytes(pcm))
        for writer in list(self._writers.values()):
            await writer.drain()
