"""``stt.fireworks``: streaming speech recognition with Fireworks (Whisper v3) over its websocket.

Fireworks has no SDK for this, so the node speaks the documented protocol with ``websockets``: 16 kHz
mono PCM in ``chunk_ms`` chunks (50-400 ms) out; ``verbose_json`` messages in, whose ``segments`` are
keyed by ``id`` (an update overwrites its segment; ids come as ``"0"`` or ``0``). Each update emits an
``InterimTranscriptFrame`` with the text of the segments still open. A segment is final
(``TranscriptFrame``) once a later one appears, or once the user stopped: on the VAD's
``UserStoppedSpeakingFrame``, when the audio up to its ``stream_time`` has been sent, the node sends
``{"checkpoint_id": "endpoint-N"}``, and the server's echo (all audio before it transcribed) makes the
segments open until then final, so turn-taking gets the turn without waiting for the user's next words.
At the end of the stream ``{"checkpoint_id": "final"}`` asks the server to finish, and after its echo
every segment left is final.

Caveat: Fireworks documents the checkpoint for finishing a stream; what the service does with the
segment after a checkpoint mid-stream is undocumented. If it keeps the same segment id open and adds
the next words to it, those words are not dropped as a revision of a final: the part of the segment
after what was emitted (by word timings, else by word count) becomes a new segment, final in its turn.
A revision that adds no words (punctuation, casing) keeps the final already sent.
``checkpoint_on_vad_stop: false`` turns the mid-stream checkpoints off.

A dropped connection is reopened with backoff and the audio no final covers is sent again
(``processors.stt.replay``); a refused key ends the graph naming ``FIREWORKS_API_KEY``; a message that
is not JSON becomes an ``ErrorFrame`` and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from pipeline.formats import AudioCaps
from pipeline.frames import InterimTranscriptFrame
from pipeline.params import param
from processors.stt.streaming import SessionError, StreamingParams, StreamingSTT, StreamSession

log = logging.getLogger("processors.stt.fireworks")

KEY_VARIABLE = "FIREWORKS_API_KEY"
STREAMING_PATH = "/v1/audio/transcriptions/streaming"
SAMPLE_RATE = 16000
AUTH_CODES = frozenset({401, 403, 1008, 4001, 4003, 4401, 4403})
"""HTTP statuses / close codes meaning the key was refused."""
TRANSIENT_CODES = frozenset({None, 1000, 1001, 1006, 1011, 1012, 1013, 1014, 429, 500, 502, 503, 504})
"""Worth a reconnect. 1000 counts: the server should not end a stream the client has not finished."""


@dataclass(slots=True, kw_only=True)
class FireworksParams(StreamingParams):
    """Params of ``stt.fireworks``."""

    api_key: str = param(doc=f"Fireworks API key, e.g. ${{{KEY_VARIABLE}}}", secret=True)
    base_url: str = param(
        "wss://audio-streaming.api.fireworks.ai",
        check=lambda url: url.startswith(("ws://", "wss://")),
        fix="use a websocket URL, e.g. base_url: wss://audio-streaming.api.fireworks.ai",
        doc=f"service URL ({STREAMING_PATH} is added); ws://host:port for a local server",
    )
    model: str = param("whisper-v3", doc="whisper-v3 or whisper-v3-turbo")
    language: str | None = param(None, doc="language code, e.g. en; null = detect")
    prompt: str | None = param(None, doc="text that primes the model: vocabulary, style")
    temperature: float = param(0.0, doc="sampling temperature for decoding")
    chunk_ms: int = param(50, ge=50, le=400, doc="audio per message in ms (the service takes 50-400)")
    final_timeout: float = param(5.0, gt=0, doc="seconds to wait at the end for the server to finish")
    checkpoint_on_vad_stop: bool = param(
        True, doc="when the VAD reports the end of speech, send a checkpoint; its echo makes the turn final"
    )


@dataclass(slots=True)
class _Emitted:
    """What of one segment id went out as final: later text under that id counts only past it."""

    end: float | None = None  # connection seconds the emitted words reach (None: no word timings)
    words: int = 0  # words of the segment's text emitted


class _Stream(StreamSession):
    """One websocket connection and the segments it has sent so far."""

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws
        self.open_segments: dict[str, dict[str, Any]] = {}  # by normalised id, in arrival order
        self.finished: dict[str, _Emitted] = {}  # ids already emitted as final
        self.checkpoints: dict[str, asyncio.Event] = {}  # checkpoint id -> set on its echo
        self.endpoints: dict[str, float] = {}  # endpoint checkpoint id -> stream time it ends the turn at
        self.language: str | None = None  # as the server last reported it
        self.last_interim = ""
        self.closing = False  # we are closing it: its end is not a drop


class FireworksSTT(StreamingSTT[_Stream, FireworksParams]):
    """Streams 16 kHz mono audio to Fireworks; emits interim and final transcripts. Audio passes on."""

    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(SAMPLE_RATE, 1)
    service = "Fireworks"
    link = "connection"
    key_variable = KEY_VARIABLE
    transient_codes = TRANSIENT_CODES
    auth_codes = AUTH_CODES

    def setup(self) -> None:
        self._endpoints = 0  # endpoint checkpoints sent (they number their ids)

    @property
    def url(self) -> str:
        """The streaming endpoint with the query this node sends (no key: that goes in a header)."""
        p = self.params
        base = p.base_url.rstrip("/")
        if not base.endswith(STREAMING_PATH):
            base += STREAMING_PATH
        query: dict[str, str] = {"model": p.model, "response_format": "verbose_json"}
        if p.language:
            query["language"] = p.language
        if p.prompt:
            query["prompt"] = p.prompt
        query["temperature"] = f"{p.temperature:g}"
        query["timestamp_granularities"] = "word,segment"
        return f"{base}?{urlencode(query)}"

    # --- the base's hooks ------------------------------------------------------------------------

    @property
    def ends_turn_on_vad_stop(self) -> bool:
        return self.params.checkpoint_on_vad_stop

    async def send_audio(self, stream: _Stream, pcm: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader sees the close and reconnects;
            await stream.ws.send(pcm)  # meanwhile the chunk waits in the replay buffer

    async def end_turn(self, stream: _Stream, at: float) -> None:
        """The user stopped at ``at`` and their audio is out: a checkpoint whose echo ends the turn."""
        self._endpoints += 1
        checkpoint = f"endpoint-{self._endpoints}"
        stream.endpoints[checkpoint] = at
        with contextlib.suppress(ConnectionClosed):  # the reader reconnects; the replay asks again
            await stream.ws.send(json.dumps({"checkpoint_id": checkpoint}))

    # --- connections -----------------------------------------------------------------------------

    async def open_session(self) -> _Stream:
        p = self.params
        try:
            ws = await connect(
                self.url,
                additional_headers={"Authorization": p.api_key},  # the bare key: no "Bearer"
                open_timeout=p.connect_timeout,
                close_timeout=2.0,
                max_size=1 << 22,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            body = error.response.body.decode("utf-8", "replace")[:200] if error.response.body else ""
            raise SessionError(status, f"handshake refused (HTTP {status}) {body}".strip()) from None
        except (OSError, TimeoutError, WebSocketException) as error:
            raise SessionError(None, f"could not connect: {type(error).__name__}: {error}") from None
        return _Stream(ws)

    async def receive(self, stream: _Stream) -> SessionError | None:
        """Handle messages until the connection ends; the failure, or None when we closed it."""
        try:
            async for message in stream.ws:
                if isinstance(message, str):
                    await self._message(stream, message)
        except ConnectionClosed:
            pass  # the close code says what happened
        if stream.closing:
            return None
        code = stream.ws.close_code or 1006
        return SessionError(code, stream.ws.close_reason or "connection closed")

    async def finish_session(self, stream: _Stream) -> bool:
        """The final checkpoint; after its echo (or without it, in time) every segment left is final."""
        echoed = await self._checkpoint(stream, "final")
        if not echoed and stream.ended.is_set():
            return False  # it dropped while finishing: the replacement gets the audio again
        if not echoed:
            log.warning("%s: no final checkpoint within %.0f s", self.name, self.params.final_timeout)
        await self._finalise(stream)
        return echoed

    async def close_session(self, stream: _Stream) -> None:
        """Close the connection at once (bounded); failures only matter to the debug log."""
        stream.closing = True
        try:
            await asyncio.wait_for(stream.ws.close(), 3.0)
        except (TimeoutError, OSError, WebSocketException) as error:
            log.debug("closing the Fireworks connection failed: %s", error)

    def describe_error(self, error: SessionError) -> str:
        code = error.code
        if code not in AUTH_CODES and code is not None and 400 <= code < 500 and code != 429:
            return f"Fireworks refused the request ({error.message}): check the node's params"
        return super().describe_error(error)

    async def _checkpoint(self, stream: _Stream, checkpoint: str) -> bool:
        """Send a checkpoint; True once the server echoes it (all audio before it is transcribed)."""
        echoed = stream.checkpoints[checkpoint] = asyncio.Event()
        waits = {asyncio.ensure_future(echoed.wait()), asyncio.ensure_future(stream.ended.wait())}
        with contextlib.suppress(ConnectionClosed):  # then the reader is about to see the close
            await stream.ws.send(json.dumps({"checkpoint_id": checkpoint}))
        try:
            await asyncio.wait(waits, timeout=self.params.final_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return echoed.is_set()

    async def _finalise(self, stream: _Stream, before: float | None = None) -> None:
        """Emit the open segments as finals: all, or those that began before ``before`` (stream seconds)."""
        for key, segment in list(stream.open_segments.items()):
            if before is None or stream.base + float(segment.get("start") or 0.0) < before:
                await self._emit_final(stream, key)

    # --- messages -> frames ----------------------------------------------------------------------

    async def _message(self, stream: _Stream, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            self._report(f"Fireworks sent a message that is not JSON: {text[:80]!r}")
            return
        try:
            if not isinstance(data, dict):
                raise TypeError(f"expected an object, got {type(data).__name__}")
            if "checkpoint_id" in data:
                checkpoint = str(data["checkpoint_id"])
                ended = stream.endpoints.pop(checkpoint, None)
                if ended is not None:  # the turn's audio is transcribed: its segments are final
                    await self._finalise(stream, before=ended)
                    self._stopped_clock = None  # a turn without words has no stt_final
                echoed = stream.checkpoints.get(checkpoint)
                if echoed is not None:
                    echoed.set()
            elif "segments" in data:
                await self._segments(stream, data)
            elif "error" in data:
                self._report(f"Fireworks reported an error: {data['error']}")
            else:
                log.debug("%s: ignoring %s", self.name, data.get("object", "a message"))
        except (KeyError, TypeError, ValueError) as error:
            self._report(f"Fireworks sent a message this node cannot read ({type(error).__name__}: {error})")

    async def _segments(self, stream: _Stream, data: dict[str, Any]) -> None:
        stream.language = data.get("language") or self.params.language
        for segment in data["segments"]:
            key = _segment_key(segment["id"])
            str(segment["text"])  # a segment without text is malformed: fail before changing state
            emitted = stream.finished.get(key)
            if emitted is not None:
                rest = _unemitted(segment, emitted)
                if rest is None:
                    log.debug("%s: segment %s revised after it was final; keeping the final", self.name, key)
                    continue
                segment = rest  # the segment went on after its final (a checkpoint did not close it)
            if key not in stream.open_segments:
                await self._finalise(stream)  # a later segment appeared: the open ones are done
            stream.open_segments[key] = segment
        interim = " ".join(t for s in stream.open_segments.values() if (t := str(s["text"]).strip()))
        if interim and interim != stream.last_interim:
            await self.push(InterimTranscriptFrame(text=interim, language=stream.language))
        stream.last_interim = interim

    async def _emit_final(self, stream: _Stream, key: str) -> None:
        segment = stream.open_segments.pop(key)
        _mark_emitted(stream.finished.setdefault(key, _Emitted()), segment)
        words = [
            {
                "text": str(w.get("word", w.get("text", ""))).strip(),
                "start": round(stream.base + float(w["start"]), 3),
                "end": round(stream.base + float(w["end"]), 3),
                "confidence": w.get("probability"),
            }
            for w in segment.get("words") or ()
            if "start" in w and "end" in w
        ]
        end = segment.get("end")
        heard_until = stream.base + float(end) if end is not None else words[-1]["end"] if words else None
        stream.last_interim = ""
        await self.push_final(str(segment["text"]).strip(), stream.language, words or None, heard_until)


def _segment_key(segment_id: Any) -> str:
    """Segment ids come as ``"0"`` or ``0`` (or ``0.0``): one key for all spellings."""
    if isinstance(segment_id, bool) or segment_id is None:
        raise ValueError(f"bad segment id {segment_id!r}")
    if isinstance(segment_id, float) and segment_id.is_integer():
        return str(int(segment_id))
    text = str(segment_id).strip()
    return str(int(text)) if text.lstrip("-").isdigit() else text


def _timed_words(segment: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in segment.get("words") or () if "start" in w and "end" in w]


def _unemitted(segment: dict[str, Any], emitted: _Emitted) -> dict[str, Any] | None:
    """The part of a segment after what went out as final; None when it adds no words (a revision).

    By word timings (a word counts when its middle lies past the emitted end), else by word count.
    """
    timed = _timed_words(segment)
    if timed and emitted.end is not None:
        end = emitted.end
        new = [w for w in timed if (float(w["start"]) + float(w["end"])) / 2 > end]
        if not new:
            return None
        text = " ".join(str(w.get("word", w.get("text", ""))).strip() for w in new)
        return {**segment, "start": new[0]["start"], "text": text, "words": new}
    texts = str(segment["text"]).split()
    if len(texts) <= emitted.words:
        return None
    return {**segment, "text": " ".join(texts[emitted.words :]), "words": []}


def _mark_emitted(emitted: _Emitted, segment: dict[str, Any]) -> None:
    """Count ``segment`` (the part of its id going out as final) as emitted."""
    timed = _timed_words(segment)
    end = float(timed[-1]["end"]) if timed else segment.get("end")
    if end is not None:
        emitted.end = max(emitted.end or 0.0, float(end))
    emitted.words += len(str(segment["text"]).split())
