"""``stt.assemblyai``: streaming speech recognition with AssemblyAI (v3, ``u3-rt-pro``) via its SDK.

Audio goes out in 50 ms chunks; partial turns come back as ``InterimTranscriptFrame`` and each finished
turn as one ``TranscriptFrame`` with word timings (seconds of the stream). When the VAD says the user
stopped, ``ForceEndpoint`` asks for the final at once instead of waiting for the server's silence.

Sessions drop (3008 expired, 3005 server error, a network blink): the node reconnects with backoff and
sends again the audio no final transcript covers yet, so the turn in progress is not lost. Audio that
arrives meanwhile waits (up to ``max_buffer_seconds``). A rejected key ends the graph with a message
that names ``ASSEMBLYAI_API_KEY``. At the end of the stream it sends ``Terminate`` and waits for
``Termination``: the last turn arrives and billing (per open session-second) stops.

The SDK's async client calls event handlers on the event loop, inline in its reader task, so the
handlers here only queue events, per session; ``receive`` turns them into frames in the base's task,
which also runs the reconnects (``processors.stt.streaming``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import traceback
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from pipeline.errors import FatalProcessorError, Problem
from pipeline.formats import AudioCaps
from pipeline.frames import (
    Frame,
    InterimTranscriptFrame,
    STTUpdateSettingsFrame,
    UserAudioFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from processors.stt.streaming import SessionError, StreamingParams, StreamingSTT, StreamSession

log = logging.getLogger("processors.stt.assemblyai")

KEY_VARIABLE = "ASSEMBLYAI_API_KEY"
BILLING = "app.assemblyai.com"
AUTH_CODES = frozenset({1008, 401, 403, 4001})
"""Close codes / HTTP statuses meaning the key (or token) was refused."""
ACCOUNT_CODES = frozenset({4002, 4003})
TRANSIENT_CODES = frozenset({None, 1001, 1006, 1011, 1012, 1013, 3005, 3008, 4008, 4031})
"""Worth a reconnect: the session ended, not the account or the request. ``None``: the network."""
EVENT_QUEUE_SIZE = 256


@dataclass(slots=True, kw_only=True)
class AssemblyAIParams(StreamingParams):
    """Params of ``stt.assemblyai``."""

    api_key: str = param(doc=f"AssemblyAI API key, e.g. ${{{KEY_VARIABLE}}}", secret=True)
    api_host: str = param(
        "streaming.assemblyai.com",
        doc="streaming host (streaming.eu.assemblyai.com in the EU); ws://host:port for a local server",
    )
    speech_model: str = param("u3-rt-pro", doc="streaming model, e.g. u3-rt-pro, universal-streaming-english")
    sample_rate: int = param(16000, gt=0, doc="sample rate sent, Hz (audio is resampled to it, mono)")
    format_turns: bool = param(True, doc="finals with punctuation and casing (waits for the formatted turn)")
    end_of_turn_confidence_threshold: float | None = param(
        None, doc="confidence (0..1) above which a pause ends the turn; null = the service's default"
    )
    min_turn_silence: int | None = param(None, doc="ms of silence that ends a confident turn; null = default")
    max_turn_silence: int | None = param(None, doc="ms of silence that always ends a turn; null = default")
    keyterms_prompt: list[str] = param([], doc="words and phrases to favour: names, jargon")
    force_endpoint_on_vad_stop: bool = param(
        True, doc="when the VAD reports the end of speech, ask for the final now (ForceEndpoint)"
    )
    use_temporary_token: bool = param(
        False, doc="connect with a short-lived token (GET /v3/token) fetched per connection, not the key"
    )
    token_expires_in: int = param(
        60, ge=1, le=600, doc="seconds a temporary token stays valid for connecting (1-600)"
    )
    chunk_ms: int = param(50, ge=50, le=1000, doc="audio per message in ms (the service takes 50-1000)")
    terminate_timeout: float = param(
        5.0, gt=0, doc="seconds to wait at the end for the last turn and Termination"
    )


class _Session(StreamSession):
    """One websocket session. The SDK's client is single-use, so every reconnect makes a new one."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client  # the SDK's AsyncStreamingClient; None once closed
        self.begun: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.terminated = asyncio.Event()  # Termination arrived
        self.events: asyncio.Queue[Any] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        """Turns, then a ``SessionError`` (it failed) or None (Termination): what ``receive`` reads."""


class AssemblyAISTT(StreamingSTT[_Session, AssemblyAIParams]):
    """Streams 16 kHz mono audio to AssemblyAI; emits interim and final transcripts. Audio passes on."""

    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStoppedSpeakingFrame,
        STTUpdateSettingsFrame,
    )
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(16000, 1)  # per node in setup: the sample_rate param
    service = "AssemblyAI"
    key_variable = KEY_VARIABLE
    transient_codes = TRANSIENT_CODES
    auth_codes = AUTH_CODES

    def setup(self) -> None:
        # Negotiation reads the node: it resamples to the sample_rate param.
        self.accepts_audio = AudioCaps.of(self.params.sample_rate, 1)  # type: ignore[misc]
        self._sdk: Any = None  # assemblyai.streaming.v3, imported with the first session
        self._watchers: set[asyncio.Task[None]] = set()
        self._settings: dict[str, Any] = {}  # STTUpdateSettingsFrame values, kept for reconnects
        self._format_turns = self.params.format_turns
        self._pending_final: tuple[_Session, Any] | None = None  # an unformatted final awaiting its twin

    def check(self) -> list[Problem]:
        if importlib.util.find_spec("assemblyai") is None:
            return [
                Problem(
                    "the AssemblyAI SDK is not installed",
                    fix="pip install 'voxgraph[cloud]' (or: pip install assemblyai)",
                    node=self.name,
                )
            ]
        return []

    # --- the base's hooks ------------------------------------------------------------------------

    @property
    def ends_turn_on_vad_stop(self) -> bool:
        return self.params.force_endpoint_on_vad_stop

    async def send_audio(self, session: _Session, pcm: bytes) -> None:
        await session.client.stream(pcm)  # quiet once the connection closed

    async def end_turn(self, session: _Session, at: float) -> None:
        await session.client.force_endpoint()

    async def update_settings(self, settings: dict[str, Any]) -> None:
        model = self._sdk.StreamingSessionParameters
        fields = getattr(model, "model_fields", None) or model.__fields__  # pydantic 2, or 1
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown AssemblyAI setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
            )
        update = model(**settings)  # pydantic checks the values
        self._settings.update(settings)
        if "format_turns" in settings:
            self._format_turns = bool(settings["format_turns"])
        session = self._current()
        if session is not None:
            await session.client.set_params(update)

    async def open_session(self) -> _Session:
        """Connect a new session and wait for ``Begin``; ``SessionError`` says why not."""
        if self._sdk is None:
            from assemblyai.streaming import v3  # heavy: only when a graph uses this node

            self._sdk = v3
        p, sdk = self.params, self._sdk
        token = await self._temporary_token() if p.use_temporary_token else None
        options = sdk.StreamingClientOptions(
            api_key=None if token else p.api_key,
            token=token,
            api_host=p.api_host,
            connect_timeout=p.connect_timeout,
            max_connection_retries=0,  # reconnects are ours: bounded, with backoff and replay
            terminate_timeout=p.terminate_timeout,
        )
        session = _Session(sdk.AsyncStreamingClient(options))
        client, events = session.client, sdk.StreamingEvents
        client.on(events.Begin, partial(self._on_begin, session))
        client.on(events.Turn, partial(self._on_turn, session))
        client.on(events.Termination, partial(self._on_termination, session))
        client.on(events.Error, partial(self._on_error, session))
        client.on(events.Warning, partial(self._on_warning, session))
        try:
            await self._begin(session)
        except BaseException:  # a failure, or a cancel (the graph stopped while this connected)
            if not session.begun.done():
                session.begun.cancel()  # a late error then has nowhere to go (and nothing to leak)
            await self.close_session(session)
            raise
        return session

    async def receive(self, session: _Session) -> SessionError | None:
        """Turn the session's events into frames, in order, until it failed or terminated."""
        while True:
            event = await session.events.get()
            if event is None:
                return None
            if isinstance(event, SessionError):
                self._pending_final = None  # its audio is not confirmed: the replay brings the turn back
                return event
            try:
                await self._turn(session, event)
            except Exception as error:  # one bad event must not stop the transcripts
                trace = self.hide_secrets("".join(traceback.format_exception(error)))  # may quote the key
                log.error("%s: handling a %s failed:\n%s", self.name, type(event).__name__, trace)
                self._report(f"handling an AssemblyAI event failed: {type(error).__name__}: {error}")

    async def finish_session(self, session: _Session) -> bool:
        """Terminate, and wait (bounded) for the last turn and Termination."""
        p = self.params
        try:
            timeout = p.terminate_timeout + 3  # the SDK bounds each step; this bounds all
            await asyncio.wait_for(session.client.disconnect(terminate=True), timeout)
        except TimeoutError:
            log.warning("%s: closing the session took too long", self.name)
        try:
            await asyncio.wait_for(session.ended.wait(), p.terminate_timeout)
        except TimeoutError:
            log.warning("%s: transcripts still pending at the end were dropped", self.name)
        await self._emit_pending_final()
        return session.terminated.is_set()

    async def close_session(self, session: _Session) -> None:
        """Close the client at once (no Terminate), whatever state it is in, and let it go."""
        client = session.client
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(terminate=False), 3.0)
        except Exception as error:  # closing a broken connection may fail in many ways
            log.debug("closing an AssemblyAI session failed: %s", error)
        finally:
            session.client = None  # its handlers hold the session and the node: no cycle outlives it

    def is_refused(self, error: SessionError) -> bool:
        return error.code in AUTH_CODES | ACCOUNT_CODES  # anything else may work on the next attempt

    def describe_error(self, error: SessionError) -> str:
        if error.code in ACCOUNT_CODES:
            return (
                f"AssemblyAI refused the account ({error.code}: {error.message}): check billing at {BILLING}"
            )
        return super().describe_error(error)

    async def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.cancel()

    # --- connecting ------------------------------------------------------------------------------

    def _connection_params(self) -> Any:
        p = self.params
        values: dict[str, Any] = {
            "sample_rate": p.sample_rate,
            "encoding": "pcm_s16le",
            "speech_model": p.speech_model,
            "format_turns": p.format_turns,
            "end_of_turn_confidence_threshold": p.end_of_turn_confidence_threshold,
            "min_turn_silence": p.min_turn_silence,
            "max_turn_silence": p.max_turn_silence,
            "keyterms_prompt": list(p.keyterms_prompt) or None,
        }
        values.update(self._settings)
        try:
            return self._sdk.StreamingParameters(**{k: v for k, v in values.items() if v is not None})
        except ValueError as error:  # pydantic's ValidationError: a speech_model it does not know, say
            raise FatalProcessorError(f"invalid AssemblyAI parameters: {error}") from None

    async def _begin(self, session: _Session) -> None:
        """Connect ``session``'s client and wait for ``Begin``; ``SessionError`` says why not."""
        p, client = self.params, session.client
        try:
            await client.connect(self._connection_params())
        except (OSError, ValueError, websocket_errors()) as error:  # a malformed host, say
            raise SessionError(
                None, f"could not connect to {p.api_host}: {type(error).__name__}: {error}"
            ) from None
        reader = getattr(client, "_read_task", None)
        if isinstance(reader, asyncio.Task):
            reader.add_done_callback(partial(self._reader_done, session))
        try:
            await asyncio.wait_for(asyncio.shield(session.begun), p.connect_timeout)
        except TimeoutError:
            raise SessionError(None, f"no session began within {p.connect_timeout:g}s") from None

    async def _temporary_token(self) -> str:
        """A single-use token from ``GET /v3/token``. The SDK's own helper only speaks https to a
        bare host, so a local ``ws://`` server needs this plain request (same path, header, query)."""
        import httpx

        p = self.params
        host = p.api_host
        base = host.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        if "://" not in base:
            base = f"https://{base}"
        try:
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": p.api_key}, timeout=p.connect_timeout
            ) as http:
                response = await http.get("/v3/token", params={"expires_in_seconds": p.token_expires_in})
        except httpx.HTTPError as error:
            raise SessionError(None, f"could not fetch a temporary token: {type(error).__name__}") from None
        if response.status_code in (401, 403):
            raise SessionError(response.status_code, "temporary token request refused")
        if response.status_code != 200:
            raise SessionError(response.status_code, f"temporary token request failed: {response.text[:200]}")
        return str(response.json()["token"])

    # --- SDK handlers (called inline by the SDK's reader task, on this loop) ---------------------

    def _on_begin(self, session: _Session, _client: Any, event: Any) -> None:
        log.debug("%s: session %s began", self.name, event.id)
        if not session.begun.done():
            session.begun.set_result(None)

    async def _on_turn(self, session: _Session, _client: Any, event: Any) -> None:
        await session.events.put(event)

    async def _on_termination(self, session: _Session, _client: Any, event: Any) -> None:
        log.debug("%s: session terminated after %s s of audio", self.name, event.audio_duration_seconds)
        session.terminated.set()
        await session.events.put(None)

    async def _on_error(self, session: _Session, _client: Any, error: Any) -> None:
        failure = SessionError(getattr(error, "code", None), str(error))
        if not session.begun.done():
            session.begun.set_exception(failure)
        elif not session.failed and not session.terminated.is_set():
            self.session_failed(session)
            await session.events.put(failure)

    def _on_warning(self, session: _Session, _client: Any, warning: Any) -> None:
        log.warning("%s: AssemblyAI warning %s: %s", self.name, warning.warning_code, warning.warning)

    def _reader_done(self, session: _Session, reader: asyncio.Task[None]) -> None:
        """The SDK's reader ended. A message it could not parse kills it silently (a Turn missing a
        field raises inside it), and a close 1000 without Termination reports nothing: both are drops."""
        if reader.cancelled() or session.failed or session.terminated.is_set():
            return
        error = reader.exception()
        if error is not None:
            failure = SessionError(None, f"the SDK's reader failed: {type(error).__name__}: {error}")
        else:
            failure = SessionError(None, "the connection closed without Termination")
        if not session.begun.done():
            session.begun.set_exception(failure)
            return
        self.session_failed(session)
        watcher = asyncio.get_running_loop().create_task(session.events.put(failure))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    # --- turns -> frames -------------------------------------------------------------------------

    async def _turn(self, session: _Session, event: Any) -> None:
        pending = self._pending_final
        if pending is not None and pending[1].turn_order != event.turn_order:
            await self._emit_pending_final()  # the formatted twin never came
        if not event.end_of_turn:
            if event.transcript:
                await self.push(InterimTranscriptFrame(text=event.transcript, language=event.language_code))
            return
        if self._format_turns and not event.turn_is_formatted:
            self._pending_final = (session, event)
            return
        self._pending_final = None
        await self._emit_final(session, event)

    async def _emit_pending_final(self) -> None:
        pending, self._pending_final = self._pending_final, None
        if pending is not None:
            await self._emit_final(*pending)

    async def _emit_final(self, session: _Session, event: Any) -> None:
        words = [
            {
                "text": w.text,
                "start": round(session.base + w.start / 1000, 3),
                "end": round(session.base + w.end / 1000, 3),
                "confidence": w.confidence,
            }
            for w in event.words
        ]
        heard_until = words[-1]["end"] if words else None
        await self.push_final(event.transcript, event.language_code, words, heard_until)


def websocket_errors() -> type[Exception]:
    """The base of the ``websockets`` errors the SDK lets escape from ``connect`` (a bad URI)."""
    from websockets.exceptions import WebSocketException

    return WebSocketException
