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
handlers here only queue events; one task turns them into frames and runs reconnects.
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
    AudioFrame,
    Frame,
    InterimTranscriptFrame,
    STTUpdateSettingsFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from processors.stt.streaming import SessionError, StreamingSTT

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
class AssemblyAIParams:
    """Params of ``stt.assemblyai``."""

    api_key: str = param(doc=f"AssemblyAI API key, e.g. ${{{KEY_VARIABLE}}}", secret=True)
    api_host: str = param(
        "streaming.assemblyai.com",
        doc="streaming host (streaming.eu.assemblyai.com in the EU); ws://host:port for a local server",
    )
    speech_model: str = param("u3-rt-pro", doc="streaming model, e.g. u3-rt-pro, universal-streaming-english")
    sample_rate: int = param(16000, doc="sample rate sent, Hz (audio is resampled to it, mono)")
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
    token_expires_in: int = param(60, doc="seconds a temporary token stays valid for connecting (1-600)")
    chunk_ms: int = param(50, doc="audio per message in ms (the service takes 50-1000)")
    connect_timeout: float = param(10.0, doc="seconds to wait for a session to begin")
    terminate_timeout: float = param(5.0, doc="seconds to wait at the end for the last turn and Termination")
    reconnect_attempts: int = param(3, doc="reconnects tried after a session drops, before giving up")
    reconnect_backoff: float = param(0.5, doc="seconds before the first reconnect; doubles each attempt")
    max_buffer_seconds: float = param(
        10.0, doc="unconfirmed audio kept for replay after a drop; older audio is dropped with a warning"
    )


class _Session:
    """One websocket session. The SDK's client is single-use, so every reconnect makes a new one."""

    def __init__(self, client: Any) -> None:
        self.client = client  # the SDK's AsyncStreamingClient; None once closed
        self.base = 0.0  # stream seconds at which this session's audio (its time 0) starts
        self.begun: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.terminated = asyncio.Event()  # Termination arrived
        self.failed = False  # an error (or the SDK's reader dying) ended it


@dataclass(slots=True)
class _Sync:
    """A marker through the event queue: everything queued before it has been handled."""

    done: asyncio.Future[None]


_Queued = tuple[_Session, Any]
"""A Turn or a SessionError, and the session it came from."""


class AssemblyAISTT(StreamingSTT[_Session]):
    """Streams 16 kHz mono audio to AssemblyAI; emits interim and final transcripts. Audio passes on."""

    Params = AssemblyAIParams
    params: AssemblyAIParams
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStoppedSpeakingFrame,
        STTUpdateSettingsFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, InterimTranscriptFrame, TranscriptFrame)
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(16000, 1)  # per node below: the sample_rate param
    service = "AssemblyAI"
    key_variable = KEY_VARIABLE
    transient_codes = TRANSIENT_CODES

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.accepts_audio = AudioCaps.of(p.sample_rate, 1)  # type: ignore[misc]  # negotiation reads the node
        self._sdk: Any = None  # assemblyai.streaming.v3, imported in on_start
        self._session: _Session | None = None  # the live session, None while (re)connecting
        self._events: asyncio.Queue[_Queued | _Sync] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._settings: dict[str, Any] = {}  # STTUpdateSettingsFrame values, kept for reconnects
        self._format_turns = p.format_turns
        self._pending_final: _Queued | None = None  # an unformatted final waiting for its formatted twin

    def _param_problems(self) -> list[Problem]:
        return _param_problems(self.params)

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

    # --- lifecycle -------------------------------------------------------------------------------

    async def on_start(self) -> None:
        from assemblyai.streaming import v3  # heavy: only when a graph uses this node

        self._sdk = v3
        self._events = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._pump = asyncio.get_running_loop().create_task(self._pump_events(), name=f"{self.name}:events")
        session = await self._first_session()
        try:
            await self._replay(session)
        finally:
            if self._session is not session:  # cancelled before it went live: nobody else closes it
                await _close_quietly(session)

    def _finishable(self) -> bool:
        return self._sdk is not None

    async def process(self, frame: Frame) -> None:
        if self._fatal is not None:
            raise self._fatal
        if isinstance(frame, AudioFrame):  # the user's: the bot's voice passes by (handles)
            await self.push(frame)
            await self._take_audio(frame)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self.push(frame)
            await self._vad_stopped(frame, endpoint=self.params.force_endpoint_on_vad_stop)
        elif isinstance(frame, STTUpdateSettingsFrame):
            await self.push(frame)
            await self._update_settings(frame.settings)

    # --- audio out -------------------------------------------------------------------------------

    def _stream_rate(self) -> int:
        return int(self.params.sample_rate)

    def _current_session(self) -> _Session | None:
        session = self._session
        return None if session is None or session.failed else session

    async def _stream_audio(self, session: _Session, pcm: bytes) -> None:
        await session.client.stream(pcm)

    async def _endpoint(self, session: _Session, at: float) -> None:
        await session.client.force_endpoint()

    async def _update_settings(self, settings: dict[str, Any]) -> None:
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
        session = self._session
        if session is not None and not session.failed:
            await session.client.set_params(update)

    # --- sessions --------------------------------------------------------------------------------

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

    async def _open(self) -> _Session:
        """Connect a new session and wait for ``Begin``; ``SessionError`` says why not."""
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
            await _close_quietly(session)
            raise
        return session

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

    def _refused(self, code: int | None) -> bool:
        return code in AUTH_CODES | ACCOUNT_CODES  # anything else may work on the next attempt

    def _describe(self, error: SessionError) -> str:
        code = error.code
        if code in AUTH_CODES:
            how = f"close {code}" if (code or 0) >= 1000 else f"HTTP {code}"
            return f"AssemblyAI rejected the API key ({how}): check {KEY_VARIABLE}"
        if code in ACCOUNT_CODES:
            return f"AssemblyAI refused the account ({code}: {error.message}): check billing at {BILLING}"
        return f"{error.message} (code {code})" if code is not None else error.message

    async def _replay(self, session: _Session) -> None:
        """Send the unconfirmed audio (the turn in progress, the gap) again, then go live."""
        session.base = self._audio.start
        await self._audio.resend(session.client.stream)
        self._session = session  # no await since the last check: no chunk slips between
        self._gap_warned = False
        await self._endpoint_replayed(session.base)  # the replayed turn had been cut by the VAD already

    async def _finish(self) -> None:
        """End of stream: send the last audio, Terminate, and wait (bounded) for the last turn.

        A session that drops while closing is replaced and its unconfirmed audio replayed, like
        any other drop: the last words are usually the ones the user waits for.
        """
        await self._send_tail()
        terminated = False
        for _ in range(self.params.reconnect_attempts + 1):
            await self._drain()
            session = self._session
            if session is None or session.failed:
                break
            try:
                timeout = self.params.terminate_timeout + 3  # the SDK bounds each step; this bounds all
                await asyncio.wait_for(session.client.disconnect(terminate=True), timeout)
            except TimeoutError:
                log.warning("%s: closing the session took too long", self.name)
            await self._drain()
            terminated = session.terminated.is_set()
            if terminated or self._session is session or self._session is None:
                break  # done, or no replacement session to terminate
        if not terminated and len(self._audio):
            log.warning(
                "%s: the session did not confirm its end; %.1f s of audio may have no transcript",
                self.name,
                self._audio.seconds,
            )
        await self._emit_pending_final()

    async def _drain(self) -> None:
        """Wait (bounded) until every queued event was handled, reconnects included."""
        if self._events is None or self._pump is None or self._pump.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._events.put(_Sync(done)), self.params.terminate_timeout)
            await asyncio.wait_for(done, self.params.terminate_timeout + self.params.connect_timeout)
        except TimeoutError:
            log.warning("%s: transcripts still pending at the end were dropped", self.name)

    async def _shutdown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await _close_quietly(session)
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            await asyncio.wait({pump}, timeout=2.0)
        for watcher in list(self._watchers):
            watcher.cancel()

    # --- SDK handlers (called inline by the SDK's reader task, on this loop) ---------------------

    def _on_begin(self, session: _Session, _client: Any, event: Any) -> None:
        log.debug("%s: session %s began", self.name, event.id)
        if not session.begun.done():
            session.begun.set_result(None)

    async def _on_turn(self, session: _Session, _client: Any, event: Any) -> None:
        if self._events is not None:
            await self._events.put((session, event))

    def _on_termination(self, session: _Session, _client: Any, event: Any) -> None:
        log.debug("%s: session terminated after %s s of audio", self.name, event.audio_duration_seconds)
        session.terminated.set()

    async def _on_error(self, session: _Session, _client: Any, error: Any) -> None:
        failure = SessionError(getattr(error, "code", None), str(error))
        if not session.begun.done():
            session.begun.set_exception(failure)
        elif not session.failed and not session.terminated.is_set():
            session.failed = True
            if self._events is not None:
                await self._events.put((session, failure))

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
        session.failed = True
        if self._events is not None:
            watcher = asyncio.get_running_loop().create_task(self._events.put((session, failure)))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)

    # --- events -> frames ------------------------------------------------------------------------

    async def _pump_events(self) -> None:
        """Handle queued events in order: turns become frames, failures become reconnects."""
        assert self._events is not None
        while True:
            item = await self._events.get()
            if isinstance(item, _Sync):
                if not item.done.done():
                    item.done.set_result(None)
                continue
            session, payload = item
            try:
                if isinstance(payload, SessionError):
                    await self._session_failed(session, payload)
                else:
                    await self._turn(session, payload)
            except Exception as error:  # one bad event must not stop the transcripts
                trace = self.hide_secrets("".join(traceback.format_exception(error)))  # may quote the key
                log.error("%s: handling a %s failed:\n%s", self.name, type(payload).__name__, trace)
                self._report(f"handling an AssemblyAI event failed: {type(error).__name__}: {error}")

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
        if words:
            self._audio.confirm(words[-1]["end"])
        self._drops = 0
        if not event.transcript.strip():
            return
        self._record_final()
        await self.push(TranscriptFrame(text=event.transcript, language=event.language_code, words=words))

    async def _session_failed(self, session: _Session, failure: SessionError) -> None:
        if session is not self._session:
            return
        self._session = None
        self._pending_final = None  # its audio is not confirmed: the replay brings the turn back
        await _close_quietly(session)
        replacement = await self._reconnect(failure)
        if replacement is not None:
            await self._replay(replacement)
            log.info("%s: reconnected; replayed %.2f s of audio", self.name, self._audio.seconds)


def websocket_errors() -> type[Exception]:
    """The base of the ``websockets`` errors the SDK lets escape from ``connect`` (a bad URI)."""
    from websockets.exceptions import WebSocketException

    return WebSocketException


async def _close_quietly(session: _Session) -> None:
    """Close a session's client at once (no Terminate), whatever state it is in, and let it go."""
    client = session.client
    if client is None:
        return
    try:
        await asyncio.wait_for(client.disconnect(terminate=False), 3.0)
    except Exception as error:  # closing a broken connection may fail in many ways
        log.debug("closing an AssemblyAI session failed: %s", error)
    finally:
        session.client = None  # its handlers hold the session and the node: no cycle outlives the close


def _param_problems(p: AssemblyAIParams) -> list[Problem]:
    checks: list[tuple[bool, str, str, str]] = [
        (p.sample_rate > 0, "sample_rate must be positive", "e.g. sample_rate: 16000", "sample_rate"),
        (50 <= p.chunk_ms <= 1000, "chunk_ms must be 50-1000", "e.g. chunk_ms: 50", "chunk_ms"),
        (1 <= p.token_expires_in <= 600, "token_expires_in must be 1-600", "e.g. 60", "token_expires_in"),
        (p.connect_timeout > 0, "connect_timeout must be positive", "e.g. 10", "connect_timeout"),
        (p.terminate_timeout > 0, "terminate_timeout must be positive", "e.g. 5", "terminate_timeout"),
    ]
    return [Problem(message, fix=fix, key=key) for ok, message, fix, key in checks if not ok]
