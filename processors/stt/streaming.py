"""The part every cloud streaming recogniser shares: audio out in fixed chunks, kept until a final
transcript covers it, bounded reconnects with backoff that send that audio again, and failures that
end the graph with a message saying what to do.

``StreamingSTT`` runs the node: ``process`` (audio in -> chunks out; the VAD's stop -> ask for the
final; settings), ``on_start`` (the first session, with retries), one task that lets the provider
read the live session and reconnects and replays when it drops, the end of the stream, and shutdown.
A provider subclasses it with a session class (a ``StreamSession``) and implements public hooks:

* ``open_session``: connect one session; a ``SessionError`` says why not.
* ``send_audio``: send one chunk on a live session.
* ``receive``: turn what the session sends into frames until it ends; return the failure, or None
  when it ended as asked (``finish_session``, ``close_session``).
* ``finish_session``: end of stream: ask for the last transcripts and wait (bounded) for them.
* ``close_session``: close one at once (bounded).
* ``describe_error`` (words a failure so the user knows what to do) and ``is_refused`` (a failure to
  connect that a retry would repeat). ``transient_codes`` are the drops worth a reconnect.
* Optional: ``end_turn`` asks for the final of the audio sent so far, on the VAD's stop, when
  ``ends_turn_on_vad_stop``; ``update_settings`` takes an ``STTUpdateSettingsFrame`` (list it in
  ``handles``).

The provider reports what it heard with ``push_final`` (which frees the audio it covers) and marks a
session it saw fail with ``session_failed`` (audio then waits for the replacement). The end of a turn
requested on the VAD's stop goes out once the audio up to the stop has been sent, and again after a
replay that sends that audio anew, so a turn ends when the VAD says so, not when the user speaks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pipeline.errors import FatalProcessorError, Problem, ValidationError, VoxgraphError
from pipeline.formats import AudioFormat
from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptFrame,
    STTUpdateSettingsFrame,
    TranscriptFrame,
    UserAudioFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.params import param
from pipeline.processor import Processor
from processors.stt.replay import Chunker, ReplayBuffer

__all__ = ["SessionError", "StreamSession", "StreamingParams", "StreamingSTT"]


@dataclass(slots=True, kw_only=True)
class StreamingParams:
    """Params every streaming recogniser has; a provider's params extend them (and may redeclare
    ``api_key`` to name its variable, or ``chunk_ms`` for the sizes its service takes)."""

    api_key: str = param(doc="the provider's API key", secret=True)
    chunk_ms: int = param(50, ge=1, doc="audio per message in ms")
    connect_timeout: float = param(10.0, gt=0, doc="seconds to wait for a new session to be ready")
    reconnect_attempts: int = param(3, ge=0, doc="reconnects tried after a session drops, before giving up")
    reconnect_backoff: float = param(
        0.5, ge=0, doc="seconds before the first reconnect; doubles each attempt"
    )
    max_buffer_seconds: float = param(
        10.0,
        gt=0,
        doc="unconfirmed audio kept for replay after a drop; older audio is dropped with a warning",
    )


class SessionError(VoxgraphError):
    """A session could not begin or ended abnormally; ``code`` is the close code or HTTP status."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamSession:
    """What the base keeps of one provider session; a provider's session class extends it."""

    def __init__(self) -> None:
        self.base = 0.0  # stream seconds at which this session's audio (its time 0) starts
        self.failed = False  # the provider saw it fail: audio waits in the replay buffer
        self.ended = asyncio.Event()  # ``receive`` returned: everything it sent has been handled


S = TypeVar("S", bound=StreamSession)
"""One provider session (a websocket connection and its state)."""
P = TypeVar("P", bound=StreamingParams)
"""The provider's params."""


class StreamingSTT(Processor[P], Generic[S, P]):
    """Chunking, replay and reconnects of a streaming recogniser; the provider part is in a subclass.

    The audio sent is the single rate (mono) of ``accepts_audio``; a node whose rate is a param sets
    ``accepts_audio`` in ``setup``.
    """

    service: ClassVar[str]  # the provider's name in messages, e.g. "AssemblyAI"
    link: ClassVar[str] = "session"  # what one connection is called in messages
    warm_up: ClassVar[bool] = False  # on_start opens a billed provider session: nothing to load early
    key_variable: ClassVar[str]  # the environment variable the API key should come from
    transient_codes: ClassVar[frozenset[int | None]]  # a drop with one of these is worth a reconnect
    auth_codes: ClassVar[frozenset[int | None]] = frozenset()  # close codes / statuses: key refused
    owned_hooks: ClassVar[dict[str, str]] = {"on_stop": "close"}
    handles: ClassVar[tuple[type[Frame], ...]] = (
        UserAudioFrame,  # the bot's voice passes by
        UserStoppedSpeakingFrame,
    )
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, InterimTranscriptFrame, TranscriptFrame)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        problems = _key_problems(self.params.api_key, self.key_variable)
        for problem in problems:
            problem.node = self.name
        if problems:
            raise ValidationError(problems)
        self._log = logging.getLogger(type(self).__module__)
        rates = self.accepts_audio.rates
        if rates is None or len(rates) != 1:
            raise TypeError(f"{type(self).__name__}.accepts_audio must name the one rate the service takes")
        self._sample_rate = next(iter(rates))
        self._bytes_per_second = self._sample_rate * 2
        self._chunker = Chunker(self._bytes_per_second * self.params.chunk_ms // 2000 * 2)
        self._audio = ReplayBuffer(self._bytes_per_second, self.params.max_buffer_seconds)
        self._session: S | None = None  # the live session; None while (re)connecting
        self._live = asyncio.Event()  # set while a session is live and not seen failing
        self._runner: asyncio.Task[None] | None = None  # receives, reconnects and replays
        self._fatal: FatalProcessorError | None = None  # raised from the next process() or on_stop
        self._drops = 0  # sessions lost since the last final transcript (bounds reconnect loops)
        self._gap_warned = False
        self._endpoint_at: float | None = None  # stream time after which to ask for the final (VAD stop)
        self._endpointed_at: float | None = None  # stream time of the last final asked for
        self._stopped_clock: float | None = None  # monotonic time the user stopped (stt_final metric)

    # --- what a provider implements --------------------------------------------------------------

    async def open_session(self) -> S:
        """Connect a new session; ``SessionError`` says why not. It goes live after the replay."""
        raise NotImplementedError

    async def send_audio(self, session: S, pcm: bytes) -> None:
        """Send one chunk; a connection that closed meanwhile is for ``receive`` to report."""
        raise NotImplementedError

    async def receive(self, session: S) -> SessionError | None:
        """Handle what ``session`` sends until it ends: the failure, or None when it ended as asked."""
        raise NotImplementedError

    async def finish_session(self, session: S) -> bool:
        """End of stream: ask for the last transcripts and wait (bounded) until ``receive`` had them.

        True once the service confirmed the end. False otherwise: when ``session`` was replaced
        meanwhile (it dropped), the replacement is finished next, with the audio replayed to it.
        """
        raise NotImplementedError

    async def close_session(self, session: S) -> None:
        """Close ``session`` at once, whatever state it is in (bounded; failures only get logged)."""
        raise NotImplementedError

    def describe_error(self, error: SessionError) -> str:
        """A message that tells the user what to do."""
        code = error.code
        if code in self.auth_codes:
            how = f"close {code}" if (code or 0) >= 1000 else f"HTTP {code}"
            return f"{self.service} rejected the API key ({how}): check {self.key_variable}"
        return f"{error.message} (code {code})" if code is not None else error.message

    def is_refused(self, error: SessionError) -> bool:
        """A failure to connect that is final: retrying would fail the same way."""
        return error.code not in self.transient_codes

    @property
    def ends_turn_on_vad_stop(self) -> bool:
        """Whether the VAD's stop asks for the final at once (``end_turn``)."""
        return False

    async def end_turn(self, session: S, at: float) -> None:
        """Ask for the final of all audio sent so far (up to ``at``, stream seconds), without waiting."""
        raise NotImplementedError

    async def update_settings(self, settings: dict[str, Any]) -> None:
        """Apply an ``STTUpdateSettingsFrame`` (kept for the sessions to come); ValueError if invalid."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the subclass holds beyond the session: runs at the end, after the last
        transcript left and the provider session closed."""

    # --- what a provider calls -------------------------------------------------------------------

    async def push_final(
        self, text: str, language: str | None, words: list[dict[str, Any]] | None, heard_until: float | None
    ) -> None:
        """A final transcript (nothing goes out when ``text`` is blank): the audio up to
        ``heard_until`` (stream seconds) needs no replay, and the session is no longer dropping."""
        if heard_until is not None:
            self._audio.confirm(heard_until)
        self._drops = 0
        if not text.strip():
            return
        self._record_final()
        await self.push(TranscriptFrame(text=text, language=language, words=words))

    def session_failed(self, session: S) -> None:
        """The provider saw ``session`` fail: audio waits for the replacement ``receive`` leads to."""
        session.failed = True
        if session is self._session:
            self._live.clear()

    # --- the node --------------------------------------------------------------------------------

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming  # the audio passes on to the nodes after the recogniser

    async def on_start(self) -> None:
        session = await self._first_session()
        await self._go_live(session)
        self._runner = asyncio.get_running_loop().create_task(
            self._run_sessions(session), name=f"{self.name}:sessions"
        )

    async def process(self, frame: Frame) -> None:
        if self._fatal is not None:
            raise self._fatal
        await self.push(frame)
        if isinstance(frame, AudioFrame):  # the user's: the bot's voice passes by (handles)
            await self._take_audio(frame)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._vad_stopped(frame)
        elif isinstance(frame, STTUpdateSettingsFrame):
            await self.update_settings(frame.settings)

    async def on_stop(self) -> None:
        graceful = not self.inbox.closed  # after a cancel nobody listens: close at once
        try:
            if graceful and self._runner is not None:
                await self._finish()
        finally:
            try:
                await self._shutdown()
            finally:
                await self.close()
        if graceful and self._fatal is not None:
            raise self._fatal

    # --- audio out -------------------------------------------------------------------------------

    def _current(self) -> S | None:
        """The session audio goes to now; None while (re)connecting."""
        session = self._session
        return None if session is None or session.failed else session

    async def _take_audio(self, frame: AudioFrame) -> None:
        """Cut the user's audio into chunks and send them."""
        if frame.sample_rate != self._sample_rate or frame.channels != 1:
            raise ValueError(
                f"got {AudioFormat(frame.sample_rate, frame.channels)} audio, expected "
                f"{self._sample_rate} Hz mono: put an audio.resample node before '{self.name}'"
            )
        for pcm in self._chunker.feed(frame.pcm):
            await self._send(pcm)

    async def _send(self, pcm: bytes) -> None:
        """Keep the chunk for replay and send it if a session is up."""
        self._audio.add(pcm)
        dropped = self._audio.take_dropped()
        session = self._current()
        if session is None:
            if dropped and not self._gap_warned:
                self._gap_warned = True
                self._log.warning(
                    "%s: still reconnecting; dropping the oldest audio beyond %.0f s",
                    self.name,
                    self.params.max_buffer_seconds,
                )
            return
        await self.send_audio(session, pcm)
        await self._endpoint_if_due()

    async def _vad_stopped(self, frame: UserStoppedSpeakingFrame) -> None:
        """The VAD says the user stopped: ask for the final once their audio is out (if asked to).

        The stop overtakes queued audio (a system frame), so the request waits until the audio up to
        its ``stream_time`` has been sent: asked earlier, the turn's last words would miss it.
        """
        self._stopped_clock = frame.at or time.monotonic()
        if self.ends_turn_on_vad_stop:
            self._endpoint_at = frame.stream_time
            await self._endpoint_if_due()

    async def _endpoint_if_due(self) -> None:
        """Send the end of turn asked for by the VAD's stop, if the audio up to it has been sent."""
        at, session = self._endpoint_at, self._current()
        if at is None or session is None or self._audio.position < at:
            return
        self._endpoint_at = None
        self._endpointed_at = at
        await self.end_turn(session, at)

    def _record_final(self) -> None:
        """A final transcript went out: the time since the VAD's stop is the ``stt_final`` metric."""
        if self._stopped_clock is not None:
            self.metrics.record("stt_final", max(0.0, time.monotonic() - self._stopped_clock))
            self._stopped_clock = None

    # --- sessions --------------------------------------------------------------------------------

    async def _go_live(self, session: S) -> None:
        """Send the unconfirmed audio (the turn in progress, the gap) again, then go live.

        An end of turn asked for within the replayed audio is asked again: the new session never
        had it. A session that never went live (a cancel) is closed here: nobody else knows it.
        """
        session.base = self._audio.start
        try:
            await self._audio.resend(lambda pcm: self.send_audio(session, pcm))
        except BaseException:
            await self.close_session(session)
            raise
        self._session = session  # no await since the last chunk: none slips between
        self._live.set()
        self._gap_warned = False
        if self._endpointed_at is not None and self._endpointed_at > session.base:
            self._endpoint_at = max(self._endpoint_at or 0.0, self._endpointed_at)
        await self._endpoint_if_due()

    async def _run_sessions(self, session: S) -> None:
        """Let the provider read the live session; when it drops, reconnect (bounded) and replay."""
        while True:
            try:
                failure = await self.receive(session)
            finally:
                session.ended.set()
            if failure is None or self._session is not session:  # ended as asked, or shut down
                return  # the shutdown closes it
            self._session = None
            self._live.clear()
            await self.close_session(session)
            replacement = await self._reconnect(failure)
            if replacement is None:
                return
            await self._go_live(replacement)
            self._log.info("%s: reconnected; replayed %.2f s of audio", self.name, self._audio.seconds)
            session = replacement

    async def _first_session(self) -> S:
        """The session ``on_start`` begins with, after retries if the first attempt fails transiently."""
        try:
            return await self.open_session()
        except SessionError as error:
            if self.is_refused(error):
                raise FatalProcessorError(self.describe_error(error)) from None
            self._log.warning("%s: %s; retrying", self.name, self.hide_secrets(self.describe_error(error)))
            retried = await self._connect_with_retries()
            if retried is None:
                raise self._fatal or FatalProcessorError(self.describe_error(error)) from None
            return retried

    async def _connect_with_retries(self) -> S | None:
        """Open a session with bounded attempts and backoff; None (and ``_fatal`` set) on failure."""
        p = self.params
        last: SessionError | None = None
        for attempt in range(p.reconnect_attempts):
            await asyncio.sleep(self._backoff(attempt))
            try:
                return await self.open_session()
            except SessionError as error:
                last = error
                if self.is_refused(error):
                    break
                self._log.warning(
                    "%s: reconnect %d/%d failed: %s",
                    self.name,
                    attempt + 1,
                    p.reconnect_attempts,
                    self.hide_secrets(str(error)),
                )
        if last is not None and self.is_refused(last):
            self._fatal = FatalProcessorError(self.describe_error(last))
        else:
            reason = self.describe_error(last) if last else "no attempts allowed (reconnect_attempts: 0)"
            self._fatal = FatalProcessorError(
                f"lost the {self.service} {self.link} and {p.reconnect_attempts} reconnects failed; "
                f"last: {reason}"
            )
        return None

    def _backoff(self, attempt: int) -> float:
        return float(min(self.params.reconnect_backoff * 2**attempt, 8.0))

    async def _reconnect(self, failure: SessionError) -> S | None:
        """The live session dropped: a new one (bounded attempts), or None with ``_fatal`` set."""
        if failure.code not in self.transient_codes:
            self._fatal = FatalProcessorError(self.describe_error(failure))
            return None
        self._drops += 1
        if self._drops > self.params.reconnect_attempts:
            self._fatal = FatalProcessorError(
                f"the {self.service} {self.link} dropped {self._drops} times without a final transcript; "
                f"last: {self.describe_error(failure)}"
            )
            return None
        self._report(f"{self.service} {self.link} dropped ({self.describe_error(failure)}); reconnecting")
        return await self._connect_with_retries()

    def _report(self, message: str) -> None:
        """A non-fatal problem: logged and sent upstream as an ErrorFrame (to the client), key hidden."""
        message = self.hide_secrets(message)
        self._log.warning("%s: %s", self.name, message)
        self.push_system(ErrorFrame(message=message, processor=self.name), UPSTREAM)

    # --- the end ---------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """End of stream: send the last audio and finish the live session, or its replacement when it
        drops meanwhile (the last words are usually the ones the user waits for)."""
        tail = self._chunker.tail()
        if tail is not None:
            await self._send(tail)
        confirmed = False
        for _ in range(self.params.reconnect_attempts + 1):
            session = await self._live_session()
            if session is None:
                break
            confirmed = await self.finish_session(session)
            if confirmed or self._session is session:
                break
        if not confirmed and len(self._audio):
            self._log.warning(
                "%s: the %s did not confirm its end; %.1f s of audio may have no transcript",
                self.name,
                self.link,
                self._audio.seconds,
            )

    async def _live_session(self) -> S | None:
        """The live session, waiting (bounded) while the runner reconnects; None if it gave up."""
        runner = self._runner
        if self._current() is not None or runner is None or runner.done():
            return self._current()
        p = self.params
        bound = sum(self._backoff(i) for i in range(p.reconnect_attempts))
        bound += (p.reconnect_attempts + 1) * p.connect_timeout
        live = asyncio.ensure_future(self._live.wait())
        try:
            await asyncio.wait({live, runner}, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        return self._current()

    async def _shutdown(self) -> None:
        """Close the live session and stop the runner, at once."""
        session, self._session = self._session, None
        runner, self._runner = self._runner, None
        self._live.clear()
        if session is not None:
            await self.close_session(session)
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=2.0)


def _key_problems(api_key: str, variable: str) -> list[Problem]:
    if api_key.strip():
        return []
    return [
        Problem(
            "api_key is empty",
            fix=f"export {variable}=<your key> and set api_key: ${{{variable}}}",
            key="api_key",
        )
    ]
