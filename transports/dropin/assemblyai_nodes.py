"""``assemblyai.input`` and ``assemblyai.output``: a graph's two ends when an AssemblyAI streaming client
is the user.

They run only in a served config, bound to one ``/v3/ws`` connection (``transports.dropin.assemblyai``).
The input yields the client's audio as 16 kHz mono frames whatever it sent (``pcm_mulaw`` decoded, any
rate resampled), and turns ``ForceEndpoint`` into the key that ends speech at once in the VAD
(``end_speech_digit``, ``#``), so the recogniser's final comes now. The output turns the recogniser's
frames into the protocol's messages: ``SpeechStarted`` at the VAD's start, a partial ``Turn`` for each
interim transcript and, for each final, the unformatted final turn and (with ``format_turns``) the
formatted one. Word times are milliseconds of the session's audio: the recogniser's word timings when
it gives them (``stt.whisper`` with ``word_timestamps``), else the words spread over the utterance.
Confidences are the recogniser's when it gives them, else 1.0 (Whisper's are not passed on); a final
turn's ``end_of_turn_confidence`` is 1.0 (the VAD ended it), a partial's 0.0.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import FatalProcessorError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    DTMF_DIGITS,
    AudioFrame,
    DTMFFrame,
    Frame,
    InterimTranscriptFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.g711 import ulaw_decode
from pipeline.params import param
from pipeline.processor import Processor, Source
from pipeline.resampling import Int16Resampler
from transports.dropin import assemblyai_wire as wire
from transports.dropin.assemblyai_wire import StreamingConfig, Word
from transports.websocket.protocol import Audio, Rechunker
from transports.websocket.session import Connection

__all__ = ["AssemblyAIInput", "AssemblyAIOutput", "Endpoint", "StreamLink", "bound_stream"]

GRAPH_RATE = 16000
"""The audio in the graph: what VADs and recognisers take without another resampler."""
_UNBOUND = "it serves an AssemblyAI streaming client and runs only in a served config, on /v3/ws"
_UNBOUND_FIX = "add 'server: {type: websocket}' and point the client's api_host at ws://HOST:PORT"


class StreamLink:
    """What a session's two nodes share besides the ``Connection``: its configuration and clock."""

    def __init__(self, config: StreamingConfig) -> None:
        self.config = config  # the query's values, then UpdateConfiguration's
        self.opened = time.monotonic()  # the session began: its duration is billed from here
        self.audio_ms = 0.0  # client audio received, ms
        self.turn_order = 0  # of the turn in progress


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``ForceEndpoint``, in order with the audio before it."""


class StreamConnection(Connection):
    """A session's connection whose client speaks AssemblyAI's protocol: ``stream`` is its link."""

    def __init__(self, session_id: str, link: StreamLink) -> None:
        super().__init__(session_id)
        self.stream = link


def bound_stream(connection: Connection | None) -> StreamLink | None:
    """The stream behind ``connection``, or None for another kind of connection (or none)."""
    link = getattr(connection, "stream", None)
    return link if isinstance(link, StreamLink) else None


@dataclass(slots=True, kw_only=True)
class InputParams:
    """Params of ``assemblyai.input``."""

    frame_ms: int = param(20, gt=0, fix="use 10, 20 or 30 (what VADs take)", doc="audio frame length, ms")
    endpoint_key: str = param(
        "#",
        choices=DTMF_DIGITS,
        doc="key sent for ForceEndpoint: the VAD's end_speech_digit, which ends speech at once",
    )


@dataclass(slots=True, kw_only=True)
class OutputParams:
    """Params of ``assemblyai.output``."""

    pre_roll: float = param(
        0.3, ge=0, doc="the recogniser's pre_roll: its word times count from this long before the start"
    )


class AssemblyAIInput(Source):
    """The client's audio as 16 kHz mono ``UserAudioFrame``s, and ``ForceEndpoint`` as a key press."""

    type_name = "assemblyai.input"
    connection_role: ClassVar[str] = "input"
    Params = InputParams
    params: InputParams
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, DTMFFrame)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._connection: Connection | None = None

    def bind_connection(self, connection: Connection) -> None:
        """Take the client's audio from ``connection`` (called by the session before the graph starts)."""
        self._connection = connection

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(GRAPH_RATE, 1)

    async def on_start(self) -> None:
        if bound_stream(self._connection) is None:
            raise FatalProcessorError(f"{self.type_name} '{self.name}': {_UNBOUND}; {_UNBOUND_FIX}")

    async def generate(self) -> AsyncIterator[Frame]:
        connection, link = self._connection, bound_stream(self._connection)
        if connection is None or link is None:
            return
        decoder = _Decoder(link.config)
        chunker = Rechunker(2 * GRAPH_RATE * self.params.frame_ms // 1000)
        while (event := await connection.inbound.get()) is not None:
            if isinstance(event, Audio):
                for pcm in chunker.feed(decoder.decode(event.pcm)):
                    yield UserAudioFrame(pcm=pcm, sample_rate=GRAPH_RATE)
            elif isinstance(event, Endpoint):
                yield DTMFFrame(digit=self.params.endpoint_key)
        for pcm in chunker.feed(decoder.flush()):
            yield UserAudioFrame(pcm=pcm, sample_rate=GRAPH_RATE)
        rest = chunker.flush()
        if rest:
            yield UserAudioFrame(pcm=rest, sample_rate=GRAPH_RATE)


class _Decoder:
    """Client audio (s16le or µ-law, at the session's rate) to 16 kHz s16le."""

    def __init__(self, config: StreamingConfig) -> None:
        self.mulaw = config.encoding == "pcm_mulaw"
        rate = config.sample_rate
        self.resampler = None if rate == GRAPH_RATE else Int16Resampler(rate, GRAPH_RATE, 1)

    def decode(self, data: bytes) -> bytes:
        pcm = ulaw_decode(data) if self.mulaw else data[: len(data) // 2 * 2]
        if self.resampler is None:
            return pcm
        return bytes(self.resampler.resample(np.frombuffer(pcm, dtype="<i2")).astype("<i2").tobytes())

    def flush(self) -> bytes:
        if self.resampler is None:
            return b""
        return bytes(self.resampler.flush().astype("<i2").tobytes())


class AssemblyAIOutput(Processor):
    """Transcripts to the client as ``SpeechStarted`` and ``Turn`` messages (see the module docstring)."""

    type_name = "assemblyai.output"
    connection_role: ClassVar[str] = "output"
    Params = OutputParams
    params: OutputParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        InterimTranscriptFrame,
        TranscriptFrame,
    )

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._connection: Connection | None = None
        self._heard = 0.0  # seconds of the session's audio that reached this node
        self._utterances: deque[list[float]] = deque(maxlen=64)  # [start, stop] of each unfinished one

    def bind_connection(self, connection: Connection) -> None:
        """Write to ``connection`` (called by the session before the graph starts)."""
        self._connection = connection

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return None  # a sink

    async def on_start(self) -> None:
        if bound_stream(self._connection) is None:
            raise FatalProcessorError(f"{self.type_name} '{self.name}': {_UNBOUND}; {_UNBOUND_FIX}")

    async def process(self, frame: Frame) -> None:
        link, connection = bound_stream(self._connection), self._connection
        if link is None or connection is None:
            return
        if isinstance(frame, UserAudioFrame):
            self._heard += frame.duration
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._utterances.append([frame.stream_time, -1.0])
            await connection.send(wire.speech_started(_ms(frame.stream_time)))
        elif isinstance(frame, UserStoppedSpeakingFrame):
            open_ones = [u for u in self._utterances if u[1] < 0]
            if open_ones:
                open_ones[-1][1] = frame.stream_time
        elif isinstance(frame, InterimTranscriptFrame):
            await self._partial(connection, link, frame)
        elif isinstance(frame, TranscriptFrame):
            await self._final(connection, link, frame)

    async def _partial(self, connection: Connection, link: StreamLink, frame: InterimTranscriptFrame) -> None:
        texts = [wire.unformatted(t) for t in frame.text.split()]
        texts = [t for t in texts if t]
        if not texts:
            return
        start = self._utterances[0][0] if self._utterances else self._heard
        words = _spread(texts, start, max(start, self._heard), final=False)
        message = wire.turn(link.turn_order, words, end_of_turn=False, formatted=False, confidence=0.0)
        await connection.send(message)

    async def _final(self, connection: Connection, link: StreamLink, frame: TranscriptFrame) -> None:
        span = self._utterances.popleft() if self._utterances else [self._heard, self._heard]
        start, stop = span[0], span[1] if span[1] >= 0 else self._heard
        formatted = self._words(frame, start, stop)
        plain = [
            Word(text, w.start, w.end, w.confidence) for w in formatted if (text := wire.unformatted(w.text))
        ]
        if not plain:
            return  # nothing was said: no turn
        language = frame.language or "en"
        order = link.turn_order
        await connection.send(
            wire.turn(order, plain, end_of_turn=True, formatted=False, confidence=1.0, language=language)
        )
        if link.config.format_turns:
            await connection.send(
                wire.turn(
                    order, formatted, end_of_turn=True, formatted=True, confidence=1.0, language=language
                )
            )
        link.turn_order += 1

    def _words(self, frame: TranscriptFrame, start: float, stop: float) -> list[Word]:
        """The final's words, timed from the recogniser's timings if it gave them."""
        timed = [w for w in frame.words or () if str(w.get("text", "")).strip()]
        if not timed:
            return _spread(frame.text.split(), start, max(stop, start), final=True)
        base = max(0.0, start - self.params.pre_roll)  # the recogniser's audio began here
        return [
            Word(
                str(w["text"]).strip(),
                _ms(base + float(w.get("start", 0.0))),
                _ms(base + float(w.get("end", 0.0))),
                float(w.get("confidence", 1.0)),
            )
            for w in timed
        ]


def _spread(texts: list[str], start: float, stop: float, *, final: bool) -> list[Word]:
    """Words without timings, each given an equal share of ``start``..``stop`` (seconds)."""
    share = (stop - start) / max(1, len(texts))
    return [
        Word(
            text,
            _ms(start + i * share),
            _ms(start + (i + 1) * share),
            1.0,
            final or i < len(texts) - 1,
        )
        for i, text in enumerate(texts)
    ]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
