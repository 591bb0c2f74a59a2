"""The websocket server's admission: ``pipeline.capacity`` applied to its running sessions.

``Admission`` owns the load meter (ticked by a task while the server listens) and knows how far each
session is behind: client audio its graph has not taken yet (``Inbound``), the voice-to-voice
latencies its graph recorded (the ``voice_to_voice`` metric of ``turn.taking``) and how long its user
has been waiting for the current reply (a node's ``reply_wait()``, which ``turn.taking`` has).
``/health`` shows its figures; a refused connection gets its reason. A readiness route can ask it the
same question.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from pipeline.capacity import Decision, LoadMeter, LoadSample, SessionLoad, Thresholds, decide
from pipeline.config import ServerSettings
from pipeline.processor import timings_of
from transports.websocket import protocol
from transports.websocket.session import Session

__all__ = ["Admission", "session_load", "thresholds"]

AUDIO_BYTES_PER_SECOND = protocol.SAMPLE_RATE * 2
"""Client audio is 16-bit mono at the protocol's rate."""
TURN_LATENCY_METRIC = "voice_to_voice"
TICK_SECONDS = 0.5


def thresholds(settings: ServerSettings) -> Thresholds:
    """The admission thresholds a ``server:`` section sets."""
    return Thresholds(
        max_cpu=settings.max_cpu,
        max_loop_lag=settings.max_loop_lag,
        max_session_lag=settings.max_session_lag,
        window=settings.load_window,
    )


def session_load(session: Session) -> SessionLoad:
    """How far ``session`` is behind: its waiting client audio and its turn latencies so far."""
    backlog = session.connection.inbound.audio_bytes / AUDIO_BYTES_PER_SECOND
    turns: list[float] = []
    waiting = 0.0
    for processor in session.graph.processors.values():
        turns.extend(timings_of(processor).samples.get(TURN_LATENCY_METRIC, ()))
        reply_wait = getattr(processor, "reply_wait", None)
        if callable(reply_wait):
            waiting = max(waiting, float(reply_wait()))
    return SessionLoad(backlog=backlog, turns=tuple(turns), waiting=waiting)


class Admission:
    """Decides whether one more session fits, from the meter and the sessions' own lag."""

    def __init__(
        self, sessions: Mapping[str, Session], limits: Thresholds, meter: LoadMeter | None = None
    ) -> None:
        self.sessions = sessions  # the server's running sessions (read, never changed)
        self.limits = limits
        self.meter = meter or LoadMeter(limits.window)
        self._ticker: asyncio.Task[None] | None = None

    def sample(self) -> LoadSample:
        """Current figures: CPU and loop lag over the window, and every session's lag."""
        return self.meter.sample({sid: session_load(s) for sid, s in self.sessions.items()})

    def decision(self) -> Decision:
        """May one more session start now (the hard ``max_sessions`` cap is the server's)?"""
        return decide(self.sample(), self.limits)

    def start(self) -> None:
        """Start ticking the meter (on the running loop); idempotent."""
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(
                self.meter.run(TICK_SECONDS), name="admission-meter"
            )

    async def stop(self) -> None:
        """Stop ticking."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
