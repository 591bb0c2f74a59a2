"""``websocket.input`` and ``websocket.output``: a graph's two ends when a browser is the user.

They run only in a served config (``server:``): each connection builds its own graph and binds these
nodes to it. The input turns the client's messages into frames (microphone PCM re-cut into whole
frames, typed text, hold-to-talk gating); the output tells the client what happens (transcripts, the
reply as it streams, status, per-turn latency) and plays bot audio through ``Playout``, so a barge-in
silences it at once. User audio reaching the output is not sent back (unless ``loopback``).

The input's ``protocol`` says what the client speaks (the default ``/ws`` protocol, or ``whisper-json``)
and both nodes talk through it; ``audio_messages: clip`` makes each audio message one utterance.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.errors import FatalProcessorError
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import (
    AudioFrame,
    BotAudioFrame,
    BotTextFrame,
    Frame,
    InterimTranscriptFrame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TranscriptFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    UserTextFrame,
)
from pipeline.params import param
from pipeline.processor import Processor, Source
from transports.playout import Playout
from transports.websocket import protocol, whisper_protocol
from transports.websocket.protocol import Audio, MicGate, PushToTalk, Rechunker, Start, UserText
from transports.websocket.session import Connection, Wire

__all__ = ["WebsocketInput", "WebsocketOutput"]

_UNBOUND = "it serves a browser connection and runs only in a served config"
_UNBOUND_FIX = "add 'server: {type: websocket}' to the config and run it with 'python -m pipeline run'"
PROTOCOLS: dict[str, Wire] = {"voxgraph": protocol, "whisper-json": whisper_protocol}
"""``websocket.input``'s ``protocol`` -> the module that parses and encodes its messages."""
UPLOAD_BUFFERED_AUDIO = 60 * 2 * protocol.SAMPLE_RATE
"""Bytes of client audio held for a busy graph (60 s) when the client uploads (clips, or a whisper
client sending a file faster than real time) rather than streams a live microphone (5 s)."""


@dataclass(slots=True, kw_only=True)
class InputParams:
    """Params of ``websocket.input``."""

    frame_ms: int = param(
        20,
        gt=0,
        fix="use 10, 20 or 30 (what VADs take)",
        doc="microphone audio is re-cut into frames of this many milliseconds",
    )
    protocol: Literal["voxgraph", "whisper-json"] = param(
        "voxgraph", doc="what the client speaks: voxgraph (the page at /) or whisper-json ({type: audio})"
    )
    audio_messages: Literal["stream", "clip"] = param(
        "stream",
        doc="stream: messages continue the microphone (a VAD cuts utterances); clip: each is one utterance",
    )
    clip_gap: float = param(
        0.5,
        ge=0,
        le=10,
        fix="use seconds from 0 to 10, at least the recogniser's post_roll (e.g. 0.5)",
        doc="clip: seconds of silence after each clip (covers the recogniser's post- and pre-roll)",
    )
    text_role: Literal["user", "bot"] = param(
        "user",
        doc="whose typed text is: user = turns for an LLM (user_text); bot = lines to speak (bot_text)",
    )


@dataclass(slots=True, kw_only=True)
class OutputParams:
    """Params of ``websocket.output``."""

    lead: float = param(
        0.1, ge=0, doc="seconds of bot audio sent ahead of playback (the client's jitter buffer)"
    )
    chunk_ms: int = param(40, gt=0, doc="bot audio goes out in pieces of this length, so little is in flight")
    realtime: bool = param(True, doc="pace bot audio at playback speed; false sends it as it comes (tests)")
    loopback: bool = param(
        False, doc="send the user's own audio and typed text back as the bot's: a microphone check"
    )


class WebsocketInput(Source):
    """The browser's microphone and keyboard: 16 kHz mono audio frames and typed ``UserTextFrame``s.

    With ``audio_messages: clip`` each audio message is a whole utterance: its audio goes out between
    a ``UserStartedSpeakingFrame`` and a ``UserStoppedSpeakingFrame`` (the client did the VAD's job,
    so the graph needs none), followed by ``clip_gap`` of silence so a recogniser's post-roll is
    complete at once and the next clip's pre-roll takes in silence, not this clip.
    """

    type_name = "websocket.input"
    connection_role: ClassVar[str] = "input"
    Params = InputParams
    params: InputParams
    produces: ClassVar[tuple[type[Frame], ...]] = (
        AudioFrame,
        UserTextFrame,
        BotTextFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._text_class: type[TextFrame] = BotTextFrame if self.params.text_role == "bot" else UserTextFrame
        # Per node, so validation checks its edges against the one text kind it sends.
        other_text = UserTextFrame if self._text_class is BotTextFrame else BotTextFrame
        self.produces = tuple(kind for kind in type(self).produces if kind is not other_text)  # type: ignore[misc]
        self._frame_bytes = 2 * protocol.SAMPLE_RATE * self.params.frame_ms // 1000
        self._connection: Connection | None = None
        self._clip_samples = 0  # clip mode: samples sent so far, the stream clock of the speaking frames

    def bind_connection(self, connection: Connection) -> None:
        """Take events from ``connection``, which speaks this node's ``protocol`` (called by the session
        before the graph starts)."""
        self._connection = connection
        connection.wire = PROTOCOLS[self.params.protocol]
        if self.params.protocol == "whisper-json" or self.params.audio_messages == "clip":
            inbound = connection.inbound  # uploads, not a live microphone: held, not dropped, up to a bound
            inbound.max_audio_bytes = max(inbound.max_audio_bytes, UPLOAD_BUFFERED_AUDIO)

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(protocol.SAMPLE_RATE, 1)

    async def on_start(self) -> None:
        if self._connection is None:
            raise FatalProcessorError(f"{self.type_name} '{self.name}': {_UNBOUND}; {_UNBOUND_FIX}")

    async def generate(self) -> AsyncIterator[Frame]:
        connection = self._connection
        if connection is None:
            return
        gate, chunker = MicGate(), Rechunker(self._frame_bytes)
        clips = self.params.audio_messages == "clip"
        while (event := await connection.inbound.get()) is not None:
            if isinstance(event, Audio) and clips:
                for frame in self._clip(gate.apply(event.pcm)):
                    yield frame
            elif isinstance(event, Audio):
                for pcm in chunker.feed(gate.apply(event.pcm)):
                    yield UserAudioFrame(pcm=pcm, sample_rate=protocol.SAMPLE_RATE)
            elif isinstance(event, UserText):
                yield self._text_class(text=event.text)
            elif isinstance(event, Start | PushToTalk):
                gate.feed(event)
        rest = chunker.flush()
        if rest:
            yield UserAudioFrame(pcm=rest, sample_rate=protocol.SAMPLE_RATE)

    def _clip(self, pcm: bytes) -> Iterator[Frame]:
        """One clip as one utterance: speaking frames around its audio, then ``clip_gap`` of silence."""
        rate, size = protocol.SAMPLE_RATE, self._frame_bytes
        start = self._clip_samples / rate
        audio = pcm + bytes(-len(pcm) % size)  # whole frames
        gap = bytes(round(self.params.clip_gap * rate * 2 / size) * size)
        self._clip_samples += (len(audio) + len(gap)) // 2
        yield UserStartedSpeakingFrame(at=time.monotonic(), stream_time=start)
        for offset in range(0, len(audio), size):
            yield UserAudioFrame(pcm=audio[offset : offset + size], sample_rate=rate)
        yield UserStoppedSpeakingFrame(at=time.monotonic(), stream_time=start + len(pcm) / 2 / rate)
        for offset in range(0, len(gap), size):
            yield UserAudioFrame(pcm=gap[offset : offset + size], sample_rate=rate)


class WebsocketOutput(Processor):
    """The browser's speaker and screen: bot audio, transcripts, the streamed reply, status, latency.

    Bot audio is queued in ``Playout`` and paced by its writer task, so ``process`` never waits for
    playback: the user's audio behind TTS keeps flowing to the VAD, STT and recorder while the bot
    talks, and a barge-in drops the queued bot audio at once.
    """

    type_name = "websocket.output"
    connection_role: ClassVar[str] = "output"
    Params = OutputParams
    params: OutputParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        AudioFrame,
        LLMTextFrame,
        TTSTextFrame,
        InterimTranscriptFrame,
        UserTextFrame,
        LLMResponseStartFrame,
        LLMResponseEndFrame,
        TTSStoppedFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    accepts_audio = AudioCaps.of(channels=1)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.playout = Playout(self, realtime=p.realtime, lead=p.lead)
        self._connection: Connection | None = None
        self._format: AudioFormat | None = None  # the bot audio format last announced
        self._reply: list[str] = []  # the reply streamed so far
        self._turn_end: float | None = None  # monotonic true end of the user's last utterance
        self._speaking_sent = False  # "speaking" status sent for the reply being played

    def bind_connection(self, connection: Connection) -> None:
        """Write to ``connection`` (called by the session before the graph starts)."""
        self._connection = connection

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None  # a sink: nothing leaves

    async def on_start(self) -> None:
        if self._connection is None:
            raise FatalProcessorError(f"{self.type_name} '{self.name}': {_UNBOUND}; {_UNBOUND_FIX}")

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, BotAudioFrame) or (isinstance(frame, AudioFrame) and self.params.loopback):
            await self._play(frame)
        elif isinstance(frame, TTSTextFrame):
            await self.playout.text(frame)
        elif isinstance(frame, LLMTextFrame):
            self._reply.append(frame.text)
            await self._send(self._wire.assistant_text(frame.text, final=False))
        elif isinstance(frame, InterimTranscriptFrame | TranscriptFrame):
            await self._send(self._wire.transcript(frame.text, isinstance(frame, TranscriptFrame)))
        elif isinstance(frame, UserTextFrame) and self.params.loopback:
            await self._send(self._wire.assistant_text(frame.text, final=True))
        # other typed text (UserTextFrame) is the client's own: not sent back
        elif isinstance(frame, LLMResponseStartFrame):
            self._reply = []
            await self._send(self._wire.status("thinking"))
        elif isinstance(frame, LLMResponseEndFrame):
            await self._send(self._wire.assistant_text("".join(self._reply), final=True))
            self._reply = []
        elif isinstance(frame, TTSStoppedFrame):
            await self.playout.finished(self._played)
        elif isinstance(frame, UserStartedSpeakingFrame | UserStoppedSpeakingFrame):
            await self._speaking(frame)
        # user audio (AudioFrame) stops here: it is never sent back

    async def _played(self) -> None:
        """The reply has played to its end."""
        self._speaking_sent = False
        await self._send(self._wire.status("listening"))

    async def on_stop(self) -> None:
        connection = self._connection
        listening = connection is not None and not connection.hung_up and not self.inbox.closed
        await self.playout.close(drain=listening)

    async def on_interrupt(self) -> None:
        self.playout.interrupted()
        self._speaking_sent = False
        self._reply = []
        if self._connection is not None:
            self._connection.send_nowait(self._wire.interrupted(), drop_audio=True)

    async def _speaking(self, frame: UserStartedSpeakingFrame | UserStoppedSpeakingFrame) -> None:
        if isinstance(frame, UserStoppedSpeakingFrame):
            self._turn_end = frame.at or time.monotonic()
            await self._send(self._wire.status("thinking"))
        else:
            await self._send(self._wire.status("hearing"))
        await self.push(frame)

    async def _play(self, frame: AudioFrame) -> None:
        connection = self._connection
        if connection is None:
            return
        if connection.hung_up:
            self.playout.realtime = False  # nobody listens any more: drain without waiting for playback
        fmt = AudioFormat(frame.sample_rate, frame.channels)
        if fmt != self._format:
            announcement = connection.wire.audio_format(fmt.sample_rate, fmt.channels)
            if announcement is None:
                return  # the client's protocol carries no bot audio
            self._format = fmt
            await connection.send(announcement)
        step = 2 * frame.channels * max(1, frame.sample_rate * self.params.chunk_ms // 1000)
        for offset in range(0, len(frame.pcm), step):
            piece = dataclasses.replace(frame, pcm=frame.pcm[offset : offset + step])
            await self.playout.audio(piece, self._write)

    async def _write(self, frame: AudioFrame) -> None:
        """Send one paced piece of bot audio (called by the playout's writer task)."""
        connection = self._connection
        if connection is None:
            return
        if not self._speaking_sent:
            self._speaking_sent = True
            await connection.send(connection.wire.status("speaking"))
            if self._turn_end is not None:  # the first bot audio of a turn is playing now
                latency_ms = (time.monotonic() - self._turn_end) * 1000
                await connection.send(connection.wire.metrics(latency_ms))
                self._turn_end = None
        await connection.send(frame.pcm)

    @property
    def _wire(self) -> Wire:
        return protocol if self._connection is None else self._connection.wire

    async def _send(self, message: str | None) -> None:
        if self._connection is not None:
            await self._connection.send(message)
