"""The websocket server's Prometheus metrics: one registry per server, fed by its sessions, at ``/metrics``.

``ServerMetrics`` is told when a session starts and ends and when a connection is refused; while a
session runs it watches the session's graph (a ``SessionWatch`` observer: turns, errors) and its
processors' timing samples (``ProcessorMetrics.listener``: processing time, time to first byte,
voice-to-voice), so histograms move as things happen, across all sessions. Inbox drops and the client
audio each connection received (and dropped) are read at scrape time from the live sessions and added
to what ended sessions left behind, so every counter only goes up and nothing is counted twice.
Per-session state goes with the session.

Labels are bounded: node names and types come from the config, error kinds are exception class
names (at most ``MAX_ERROR_KINDS``), refusal reasons and session outcomes are fixed sets; never a
session id.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from pipeline.frames import DOWNSTREAM, Direction, ErrorFrame, Frame, UserTextFrame
from pipeline.observers import Observer
from pipeline.processor import Processor, timings_of
from transports.websocket import protocol

if TYPE_CHECKING:
    from pipeline.config import Compiled
    from transports.websocket.session import Inbound, Session

__all__ = ["REFUSALS", "ServerMetrics", "SessionWatch"]

PREFIX = "voxgraph"
REFUSALS = ("full", "load", "draining", "loading")
"""Why a connection was refused: every slot taken, no headroom, shutting down, models still loading."""
OUTCOMES: Mapping[int, str] = {
    protocol.CLOSE_NORMAL: "normal",  # the client stopped or left, or stayed idle too long
    protocol.CLOSE_GOING_AWAY: "shutdown",
    protocol.CLOSE_POLICY_VIOLATION: "flood",
    protocol.CLOSE_INTERNAL_ERROR: "error",
}
"""How a session ended, by its close code; any other code is ``other``. A session may say instead
(``Session.outcome``): a phone stream refused at its ``start`` is ``refused``, not a flood."""
SESSION_OUTCOMES = ("refused",)
"""Outcomes a session sets itself."""
VOICE_TO_VOICE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
TIMING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Processing time and time to first byte: from a fast filter's milliseconds to a slow model's seconds."""
MAX_ERROR_KINDS = 64
"""Distinct exception class names labelled; later ones are counted as ``other``."""
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,79}")


class ServerMetrics:
    """A server's registry and everything that feeds it."""

    def __init__(self, compiled: Compiled) -> None:
        self.registry = CollectorRegistry()  # per server: tests and embedders run several
        self.node_types = {name: node.type or "" for name, node in compiled.spec.nodes.items()}
        self._live: dict[str, SessionWatch] = {}  # session id -> its watch, while it runs
        self._ended_drops: Tally[str] = Tally()  # node -> inbox drops of sessions that ended
        self._ended_audio_drops = 0  # client audio bytes dropped by sessions that ended
        self._ended_audio_received = 0  # client audio bytes received by sessions that ended
        self._error_kinds: set[str] = set()
        registry = self.registry
        self.active = Gauge(f"{PREFIX}_sessions_active", "Conversations running now.", registry=registry)
        self.active.set_function(lambda: len(self._live))
        self.sessions = Counter(
            f"{PREFIX}_sessions",
            "Conversations that ended, by how: normal, error, shutdown, flood, other.",
            ["outcome"],
            registry=registry,
        )
        self.refusals = Counter(
            f"{PREFIX}_connections_refused",
            "Conversation connections refused, by reason: full, load, draining, loading.",
            ["reason"],
            registry=registry,
        )
        self.turns = Counter(
            f"{PREFIX}_turns",
            "User turns (final transcripts, typed messages) that reached the client's output node.",
            registry=registry,
        )
        self.voice_to_voice = Histogram(
            f"{PREFIX}_voice_to_voice_seconds",
            "From the end of the user's speech to the start of the bot's reply.",
            buckets=VOICE_TO_VOICE_BUCKETS,
            registry=registry,
        )
        self.processing = Histogram(
            f"{PREFIX}_processor_processing_seconds",
            "Processing time of a processor's measured work.",
            ["node", "type"],
            buckets=TIMING_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            f"{PREFIX}_processor_ttfb_seconds",
            "Time from the start of a processor's measured work to its first output.",
            ["node", "type"],
            buckets=TIMING_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            f"{PREFIX}_processor_errors",
            "Processor failures, by node, exception class and whether they ended the conversation.",
            ["node", "kind", "fatal"],
            registry=registry,
        )
        registry.register(_SessionTotalsCollector(self))
        ProcessCollector(registry=registry)
        for reason in REFUSALS:
            self.refusals.labels(reason)
        for outcome in (*OUTCOMES.values(), *SESSION_OUTCOMES, "other"):
            self.sessions.labels(outcome)

    def session_started(self, session: Session) -> None:
        """Watch ``session``'s graph and timings (call before it runs)."""
        watch = SessionWatch(self, session.graph.processors, session.connection.inbound)
        session.graph.add_observer(watch)
        self._live[session.id] = watch

    def session_ended(self, session: Session) -> None:
        """Count how ``session`` ended and keep its drops; nothing of it is held afterwards."""
        watch = self._live.pop(session.id, None)
        if watch is not None:
            self._ended_drops.update(watch.inbox_drops())
            self._ended_audio_drops += watch.client_audio_dropped()
            self._ended_audio_received += watch.client_audio_received()
            watch.close()
        failed = session.graph.failed is not None
        outcome = session.outcome or OUTCOMES.get(session.close_code, "other")
        self.sessions.labels("error" if failed else outcome).inc()

    def refused(self, reason: str) -> None:
        """A connection was refused a conversation; ``reason`` is one of ``REFUSALS``."""
        self.refusals.labels(reason if reason in REFUSALS else "other").inc()

    def error_kind(self, report: ErrorFrame) -> str:
        """The exception class named by an error report (``Class: message``), or ``other``."""
        kind = report.message.partition(":")[0]
        if not _CLASS_NAME.fullmatch(kind):
            return "other"
        if kind not in self._error_kinds:
            if len(self._error_kinds) >= MAX_ERROR_KINDS:
                return "other"
            self._error_kinds.add(kind)
        return kind

    def node_type(self, node: str, processor: Processor) -> str:
        """The node's ``type:`` in the config (a node the server added: its registered type or class)."""
        return self.node_types.get(node) or processor.type_name or type(processor).__name__

    def drops(self) -> tuple[Tally[str], int]:
        """Inbox drops per node and client audio bytes dropped: ended sessions plus live ones, now."""
        nodes = Tally(self._ended_drops)
        audio = self._ended_audio_drops
        for watch in self._live.values():
            nodes.update(watch.inbox_drops())
            audio += watch.client_audio_dropped()
        return nodes, audio

    def client_audio_received(self) -> int:
        """Client audio bytes the connections received: ended sessions plus live ones, now."""
        live = sum(watch.client_audio_received() for watch in self._live.values())
        return self._ended_audio_received + live

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the registry in the format the scraper asks for (text or OpenMetrics)."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})


class SessionWatch(Observer):
    """One session's feed: its graph's pushes and its processors' timing samples.

    ``on_push`` runs on every push of the session's graph: it looks at two kinds of frame and returns
    at once for the rest.
    """

    def __init__(self, metrics: ServerMetrics, processors: Mapping[str, Processor], inbound: Inbound) -> None:
        self.processors = dict(processors)  # node name -> processor, until the session ends
        self.inbound = inbound  # client events waiting for the graph: audio received and dropped
        self.output = _by_role(processors.values(), "output")
        self._metrics = metrics
        self._turns = metrics.turns
        self._last_error: ErrorFrame | None = None  # one report pushed to several neighbours counts once
        for node, processor in processors.items():
            timings_of(processor).listener = _SampleFeed(metrics, node, metrics.node_type(node, processor))

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        if target is not None and target is self.output and direction is DOWNSTREAM:
            if isinstance(frame, UserTextFrame):
                self._turns.inc()
        elif isinstance(frame, ErrorFrame) and frame.processor == source.name:
            self._count_error(frame)

    def _count_error(self, report: ErrorFrame) -> None:
        if report is self._last_error:
            return  # the same report pushed to another upstream neighbour
        self._last_error = report
        metrics = self._metrics
        fatal = "true" if report.fatal else "false"
        metrics.errors.labels(report.processor, metrics.error_kind(report), fatal).inc()

    def inbox_drops(self) -> Tally[str]:
        """Frames each node's inbox has dropped so far."""
        return Tally({node: p.inbox.dropped for node, p in self.processors.items() if p.inbox.dropped})

    def client_audio_dropped(self) -> int:
        """Client audio bytes dropped so far because the graph fell behind."""
        return self.inbound.dropped_bytes

    def client_audio_received(self) -> int:
        """Client audio bytes the connection has received so far (16-bit PCM at the input's rate: 16 kHz
        from a browser, 8 kHz from a phone), dropped or not."""
        return self.inbound.received_audio_bytes

    def close(self) -> None:
        """Stop feeding: the session ended (its drops were read first)."""
        for processor in self.processors.values():
            timings_of(processor).listener = None
        self.output = None
        self._last_error = None
        self.processors.clear()


class _SessionTotalsCollector(Collector):
    """Counters read from the sessions at scrape time, so a live session's figures show before it ends."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        nodes, audio = self._metrics.drops()
        yield CounterMetricFamily(
            f"{PREFIX}_client_audio_bytes",
            "Client audio received by conversations' connections (16-bit PCM at the input's rate), "
            "dropped later or not.",
            value=self._metrics.client_audio_received(),
        )
        frames = CounterMetricFamily(
            f"{PREFIX}_inbox_dropped_frames",
            "Frames dropped by processor inboxes (drop-oldest overflow, interruptions, closing).",
            labels=["node"],
        )
        for node, count in sorted(nodes.items()):
            frames.add_metric([node], count)
        yield frames
        yield CounterMetricFamily(
            f"{PREFIX}_client_audio_dropped_bytes",
            "Client audio bytes dropped before the graph took them because it fell behind.",
            value=audio,
        )


class _SampleFeed:
    """A processor's ``ProcessorMetrics.listener``: its samples into the server's histograms.

    A node's series appear with its first sample, so nodes that time nothing add none to a scrape.
    """

    def __init__(self, metrics: ServerMetrics, node: str, node_type: str) -> None:
        self._metrics = metrics
        self._labels = (node, node_type)
        self._observe: dict[str, Callable[[float], None]] = {}  # metric -> its histogram's observe

    def __call__(self, metric: str, seconds: float) -> None:
        observe = self._observe.get(metric) or self._observer(metric)
        if observe is not None:
            observe(max(0.0, seconds))

    def _observer(self, metric: str) -> Callable[[float], None] | None:
        metrics = self._metrics
        if metric == "processing":
            observe = metrics.processing.labels(*self._labels).observe
        elif metric == "ttfb":
            observe = metrics.ttfb.labels(*self._labels).observe
        elif metric == "voice_to_voice":
            observe = metrics.voice_to_voice.observe
        else:
            return None  # other timings (stt_final, barge_in_decision...) stay in the runner's summary
        self._observe[metric] = observe
        return observe


def _by_role(processors: Iterable[Processor], role: str) -> Processor | None:
    return next((p for p in processors if getattr(p, "connection_role", "") == role), None)
