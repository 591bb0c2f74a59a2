"""The part every cloud streaming recogniser shares: audio out in fixed chunks, kept until a final
transcript covers it, bounded reconnects with backoff that send that audio again, and failures that
end the graph with a message saying what to do.

A provider subclasses ``StreamingSTT`` and says how to open one session (``_open``), send audio on
it (``_stream_audio``), which session is live (``_current_session``), which failures are worth no
retry (``_refused``), how to word a failure (``_describe``) and how to finish. Its ``_replay`` sends
``ReplayBuffer.resend`` to a new session before it goes live.

A provider that can be asked for a final at once (``_endpoint``) hands the VAD's stop to
``_vad_stopped``: the request goes out once the audio up to the stop has been sent, and again after a
replay that sends that audio anew, so a turn ends when the VAD says so, not when the user speaks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar, Generic, TypeVar

from pipeline.errors import FatalProcessorError, Problem, ValidationError, VoxgraphError
from pipeline.formats import AudioFormat
from pipeline.frames import UPSTREAM, AudioFrame, ErrorFrame, UserStoppedSpeakingFrame
from pipeline.processor import Processor
from processors.stt.replay import Chunker, ReplayBuffer

S = TypeVar("S")
"""One provider session (a websocket connection and its state)."""


class SessionError(VoxgraphError):
    """A session could not begin or ended abnormally; ``code`` is the close code or HTTP status."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamingSTT(Processor, Generic[S]):
    """Chunking, replay and reconnects of a streaming recogniser; the provider part is in a subclass."""

    service: ClassVar[str]  # the provider's name in messages, e.g. "AssemblyAI"
    link: ClassVar[str] = "session"  # what one connection is called in messages
    warm_up: ClassVar[bool] = False  # on_start opens a billed provider session: nothing to load early
    key_variable: ClassVar[str]  # the environment variable the API key should come from
    transient_codes: ClassVar[frozenset[int | None]]  # a drop with one of these is worth a reconnect
    owned_hooks: ClassVar[dict[str, str]] = {"on_stop": "close"}

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        problems = [*_key_problems(self.params.api_key, self.key_variable), *self._param_problems()]
        problems += _reconnect_problems(self.params)
        for problem in problems:
            problem.node = self.name
        if problems:
            raise ValidationError(problems)
        self._log = logging.getLogger(type(self).__module__)
        self._sample_rate = self._stream_rate()
        self._bytes_per_second = self._sample_rate * 2
        self._chunker = Chunker(self._bytes_per_second * self.params.chunk_ms // 2000 * 2)
        self._audio = ReplayBuffer(self._bytes_per_second, self.params.max_buffer_seconds)
        self._fatal: FatalProcessorError | None = None  # raised from the next process() or on_stop
        self._drops = 0  # sessions lost since the last final transcript (bounds reconnect loops)
        self._gap_warned = False
        self._endpoint_at: float | None = None  # stream time after which to ask for the final (VAD stop)
        self._endpointed_at: float | None = None  # stream time of the last final asked for
        self._stopped_clock: float | None = None  # monotonic time the user stopped (stt_final metric)

    # --- what a provider says --------------------------------------------------------------------

    def _stream_rate(self) -> int:
        """The sample rate the service is sent (mono)."""
        raise NotImplementedError

    def _param_problems(self) -> list[Problem]:
        """Problems with the provider's own params (the key and the reconnect params are checked here)."""
        return []

    async def _open(self) -> S:
        """Connect a new session; ``SessionError`` says why not."""
        raise NotImplementedError

    def _current_session(self) -> S | None:
        """The session audio goes to now; None while (re)connecting."""
        raise NotImplementedError

    async def _stream_audio(self, session: S, pcm: bytes) -> None:
        """Send one chunk on a live session."""
        raise NotImplementedError

    def _refused(self, code: int | None) -> bool:
        """A failure to connect with this code is final: retrying would fail the same way."""
        return code not in self.transient_codes

    def _describe(self, error: SessionError) -> str:
        """A message that tells the user what to do."""
        raise NotImplementedError

    async def _finish(self) -> None:
        """End of stream: send the last audio and wait (bounded) for the last transcripts."""
        raise NotImplementedError

    def _finishable(self) -> bool:
        """``on_start`` got far enough for ``_finish`` to make sense."""
        raise NotImplementedError

    async def _shutdown(self) -> None:
        """Close everything at once."""
        raise NotImplementedError

    async def _endpoint(self, session: S, at: float) -> None:
        """Ask for the final of all audio sent so far (up to ``at``, stream seconds), without waiting.

        Only needed by a provider that passes the VAD's stop to ``_vad_stopped``.
        """
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------------------

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming  # the audio passes on to the nodes after the recogniser

    async def on_stop(self) -> None:
        graceful = not self.inbox.closed  # after a cancel nobody listens: close at once
        try:
            if graceful and self._finishable():
                await self._finish()
        finally:
            try:
                await self._shutdown()
            finally:
                await self.close()
        if graceful and self._fatal is not None:
            raise self._fatal

    async def close(self) -> None:
        """Release what the subclass holds beyond the session: runs at the end, after the last
        transcript left and the provider session closed."""

    async def _take_audio(self, frame: AudioFrame) -> None:
        """Cut the user's audio into chunks and send them."""
        if frame.sample_rate != self._sample_rate or frame.channels != 1:
            raise ValueError(
                f"got {AudioFormat(frame.sample_rate, frame.channels)} audio, expected "
                f"{self._sample_rate} Hz mono: put an audio.resample node before '{self.name}'"
            )
        for pcm in self._chunker.feed(frame.pcm):
            await self._send(pcm)

    async def _send_tail(self) -> None:
        """Send what the chunker still holds (padded to a whole chunk)."""
        tail = self._chunker.tail()
        if tail is not None:
            await self._send(tail)

    async def _send(self, pcm: bytes) -> None:
        """Keep the chunk for replay and send it if a session is up."""
        self._audio.add(pcm)
        dropped = self._audio.take_dropped()
        session = self._current_session()
        if session is None:
            if dropped and not self._gap_warned:
                self._gap_warned = True
                self._log.warning(
                    "%s: still reconnecting; dropping the oldest audio beyond %.0f s",
                    self.name,
                    self.params.max_buffer_seconds,
                )
            return
        await self._stream_audio(session, pcm)
        await self._endpoint_if_due()

    async def _vad_stopped(self, frame: UserStoppedSpeakingFrame, *, endpoint: bool = True) -> None:
        """The VAD says the user stopped: with ``endpoint``, ask for the final once their audio is out.

        The stop overtakes queued audio (a system frame), so the request waits until the audio up to
        its ``stream_time`` has been sent: asked earlier, the turn's last words would miss it.
        """
        self._stopped_clock = frame.at or time.monotonic()
        if endpoint:
            self._endpoint_at = frame.stream_time
            await self._endpoint_if_due()

    async def _endpoint_if_due(self) -> None:
        """Send the endpoint asked for by the VAD's stop, if the audio up to it has been sent."""
        at, session = self._endpoint_at, self._current_session()
        if at is None or session is None or self._audio.position < at:
            return
        self._endpoint_at = None
        self._endpointed_at = at
        await self._endpoint(session, at)

    async def _endpoint_replayed(self, base: float) -> None:
        """A new session got the audio from ``base`` again: an endpoint asked for within it is asked again.

        Call it once the session is live (``_current_session`` returns it).
        """
        if self._endpointed_at is not None and self._endpointed_at > base:
            self._endpoint_at = max(self._endpoint_at or 0.0, self._endpointed_at)
        await self._endpoint_if_due()

    def _record_final(self) -> None:
        """A final transcript went out: the time since the VAD's stop is the ``stt_final`` metric."""
        if self._stopped_clock is not None:
            self.metrics.record("stt_final", max(0.0, time.monotonic() - self._stopped_clock))
            self._stopped_clock = None

    async def _first_session(self) -> S:
        """The session ``on_start`` begins with, after retries if the first attempt fails transiently."""
        try:
            return await self._open()
        except SessionError as error:
            if self._refused(error.code):
                raise FatalProcessorError(self._describe(error)) from None
            self._log.warning("%s: %s; retrying", self.name, self.hide_secrets(self._describe(error)))
            retried = await self._connect_with_retries()
            if retried is None:
                raise self._fatal or FatalProcessorError(self._describe(error)) from None
            return retried

    async def _connect_with_retries(self) -> S | None:
        """Open a session with bounded attempts and backoff; None (and ``_fatal`` set) on failure."""
        p = self.params
        last: SessionError | None = None
        for attempt in range(p.reconnect_attempts):
            await asyncio.sleep(min(p.reconnect_backoff * 2**attempt, 8.0))
            try:
                return await self._open()
            except SessionError as error:
                last = error
                if self._refused(error.code):
                    break
                self._log.warning(
                    "%s: reconnect %d/%d failed: %s",
                    self.name,
                    attempt + 1,
                    p.reconnect_attempts,
                    self.hide_secrets(str(error)),
                )
        if last is not None and self._refused(last.code):
            self._fatal = FatalProcessorError(self._describe(last))
        else:
            reason = self._describe(last) if last else "no attempts allowed (reconnect_attempts: 0)"
            self._fatal = FatalProcessorError(
                f"lost the {self.service} {self.link} and {p.reconnect_attempts} reconnects failed; "
                f"last: {reason}"
            )
        return None

    async def _reconnect(self, failure: SessionError) -> S | None:
        """The live session dropped: a new one (bounded attempts), or None with ``_fatal`` set.

        The caller replays the unconfirmed audio on the new session.
        """
        if failure.code not in self.transient_codes:
            self._fatal = FatalProcessorError(self._describe(failure))
            return None
        self._drops += 1
        if self._drops > self.params.reconnect_attempts:
            self._fatal = FatalProcessorError(
                f"the {self.service} {self.link} dropped {self._drops} times without a final transcript; "
                f"last: {self._describe(failure)}"
            )
            return None
        self._report(f"{self.service} {self.link} dropped ({self._describe(failure)}); reconnecting")
        return await self._connect_with_retries()

    def _report(self, message: str) -> None:
        """A non-fatal problem: logged and sent upstream as an ErrorFrame (to the client), key hidden."""
        message = self.hide_secrets(message)
        self._log.warning("%s: %s", self.name, message)
        self.push_system(ErrorFrame(message=message, processor=self.name), UPSTREAM)


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


def _reconnect_problems(p: Any) -> list[Problem]:
    checks: list[tuple[bool, str, str, str]] = [
        (p.reconnect_attempts >= 0, "reconnect_attempts cannot be negative", "e.g. 3", "reconnect_attempts"),
        (p.reconnect_backoff >= 0, "reconnect_backoff cannot be negative", "e.g. 0.5", "reconnect_backoff"),
        (p.max_buffer_seconds > 0, "max_buffer_seconds must be positive", "e.g. 10", "max_buffer_seconds"),
    ]
    return [Problem(message, fix=fix, key=key) for ok, message, fix, key in checks if not ok]
