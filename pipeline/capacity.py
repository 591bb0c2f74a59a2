"""Admission by measured headroom: may one more conversation start without slowing the others?

A fixed session cap cannot know what the sessions cost: two people talking at once can saturate two
cores that four quiet tabs would not. So the server measures, and refuses new sessions while:

* the process — or the whole machine, when other programs compete for its cores — used more than
  ``max_cpu`` of the cores over the last ``window`` seconds, or would with one more session of the
  current average cost (``machine + process / n``);
* the event loop woke more than ``max_loop_lag`` seconds late (everything on it waits that long);
* a running session is more than ``max_session_lag`` seconds behind: live audio waiting for its graph,
  its latest turn slower than its first ones by that much, or a reply it is still waiting for already
  that late (which shows a queue on a shared model before the turn completes).

``decide`` is pure (a ``LoadSample`` and ``Thresholds`` in, a ``Decision`` out), so the policy is
tested without clocks or sockets. ``LoadMeter`` collects the samples, with injectable clocks;
``LoadMeter.run`` ticks it on the event loop (the tick's own lateness is the loop lag).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Decision",
    "LoadMeter",
    "LoadSample",
    "SessionLoad",
    "Thresholds",
    "decide",
    "machine_cpu_times",
]

BASELINE_TURNS = 3
"""A session's first turns that set its baseline latency (the fastest of them)."""
DEFAULT_BASELINE = 1.5
"""Seconds a reply is expected to take before a session has a turn of its own to compare with."""
CpuTimes = tuple[float, float]
"""(busy, total) CPU time of the whole machine, in any one unit."""


@dataclass(slots=True, frozen=True)
class Thresholds:
    """When to stop admitting (server keys of the same names)."""

    max_cpu: float = 0.85
    """Fraction of all cores the process may use over ``window``, now or projected with one more session."""
    max_loop_lag: float = 0.25
    """Seconds the event loop may run late before new sessions are refused."""
    max_session_lag: float = 2.0
    """Seconds any session may be behind (audio backlog, or turn latency over its first turns)."""
    window: float = 10.0
    """Seconds of history behind the CPU and loop-lag figures."""


@dataclass(slots=True, frozen=True)
class SessionLoad:
    """How far one running session is behind."""

    backlog: float = 0.0
    """Seconds of live input audio received and not yet taken by its graph."""
    turns: Sequence[float] = ()
    """Its voice-to-voice latencies so far, in seconds, oldest first."""
    waiting: float = 0.0
    """Seconds the user has been waiting for the reply to their last turn (0: not waiting)."""

    @property
    def baseline(self) -> float:
        """The latency this session showed it can have: the fastest of its first turns."""
        return min(self.turns[:BASELINE_TURNS]) if self.turns else DEFAULT_BASELINE

    @property
    def turn_growth(self) -> float:
        """Seconds the latest turn — or the reply still awaited, if later already — takes beyond the
        baseline (a single finished turn sets the baseline and shows no growth)."""
        latest = self.turns[-1] if len(self.turns) >= 2 else 0.0
        return max(0.0, max(latest, self.waiting) - self.baseline)

    @property
    def lag(self) -> float:
        """How far behind the session is: the worse of its backlog and its turn latency growth."""
        return max(self.backlog, self.turn_growth)


@dataclass(slots=True, frozen=True)
class LoadSample:
    """What the meter saw over its window."""

    cpu: float | None = None
    """Fraction of all cores used by this process (None until two readings exist)."""
    machine_cpu: float | None = None
    """Fraction of all cores busy on the whole machine, this process included (None: unknown)."""
    loop_lag: float = 0.0
    """Worst lateness of the event loop, in seconds."""
    window: float = 0.0
    """Seconds the CPU figure covers."""
    sessions: Mapping[str, SessionLoad] = field(default_factory=dict)
    """Running sessions by id."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (for ``/health``); session lags worst first, without their ids (which
        name saved conversations, and ``/health`` is open)."""
        lags = sorted((round(s.lag, 3) for s in self.sessions.values()), reverse=True)
        return {
            "cpu": None if self.cpu is None else round(self.cpu, 3),
            "machine_cpu": None if self.machine_cpu is None else round(self.machine_cpu, 3),
            "window_s": round(self.window, 1),
            "loop_lag_ms": round(self.loop_lag * 1000, 1),
            "session_lag_s": lags,
        }


@dataclass(slots=True, frozen=True)
class Decision:
    """Whether one more session may start; ``reason`` says why not."""

    admit: bool
    reason: str = ""


def decide(sample: LoadSample, thresholds: Thresholds) -> Decision:
    """May one more session start now? Pure: the same sample always gives the same answer.

    With no session running there is no one to protect: the first is always admitted (however busy
    the machine is with other work, one slow conversation serves better than none).
    """
    active = len(sample.sessions)
    if not active:
        return Decision(True)
    cpu, machine, limit = sample.cpu, sample.machine_cpu, thresholds.max_cpu
    if sample.window < thresholds.window / 4:
        cpu = machine = None  # a second or two of readings shows a burst, not the load
    over = f"over the last {sample.window:.0f} s"
    if cpu is not None and cpu > limit:
        return Decision(False, f"server at capacity: CPU {cpu:.0%} {over} (limit {limit:.0%})")
    if machine is not None and machine > limit:
        return Decision(
            False, f"server at capacity: the machine's CPU {machine:.0%} {over} (limit {limit:.0%})"
        )
    if cpu is not None:
        projected = (cpu if machine is None else max(cpu, machine)) + cpu / active
        if projected > limit:
            busy = "" if machine is None or machine <= cpu else f", the machine at {machine:.0%}"
            return Decision(
                False,
                f"server at capacity: CPU {cpu:.0%} {over} for {active} conversation"
                f"{'s' if active != 1 else ''}{busy}; one more would need ~{projected:.0%} "
                f"(limit {limit:.0%})",
            )
    if sample.loop_lag > thresholds.max_loop_lag:
        return Decision(False, f"server at capacity: its event loop ran {sample.loop_lag * 1000:.0f} ms late")
    behind = max(sample.sessions.values(), key=lambda s: s.lag, default=None)
    if behind is not None and behind.lag > thresholds.max_session_lag:
        what = "its live audio" if behind.backlog >= behind.turn_growth else "its first turns' latency"
        if behind.backlog < behind.turn_growth and not behind.turns:
            what = "the latency a reply should have"
        return Decision(False, f"server at capacity: a conversation is {behind.lag:.1f} s behind {what}")
    return Decision(True)


class LoadMeter:
    """Readings of process CPU time and event-loop lateness over a sliding window.

    The clocks are injectable (``cpu_clock`` = ``time.process_time``, ``wall_clock`` =
    ``time.monotonic``), so tests drive the meter without burning CPU or waiting.
    """

    def __init__(
        self,
        window: float = 10.0,
        *,
        cores: int | None = None,
        cpu_clock: Callable[[], float] = time.process_time,
        wall_clock: Callable[[], float] = time.monotonic,
        machine_clock: Callable[[], CpuTimes | None] | None = None,
    ) -> None:
        self.window = window  # seconds of readings kept
        self.cores = cores or _usable_cores()  # CPU fractions are of all of these
        self.cpu_clock = cpu_clock
        self.wall_clock = wall_clock
        self.machine_clock = machine_clock or machine_cpu_times  # None readings: not measured
        self._readings: deque[tuple[float, float, CpuTimes | None]] = deque()  # (wall, cpu, machine)
        self._lags: deque[tuple[float, float]] = deque()  # (wall, lateness) of each tick

    def tick(self, loop_lag: float = 0.0) -> None:
        """Take one reading; ``loop_lag`` is how late this tick ran."""
        now = self.wall_clock()
        if self._readings and self._readings[-1][0] >= now:
            self._readings.pop()  # no time passed (a coarse or fake clock): the newer reading wins
        self._readings.append((now, self.cpu_clock(), self.machine_clock()))
        self._lags.append((now, max(0.0, loop_lag)))
        horizon = now - self.window
        while len(self._readings) > 2 and self._readings[1][0] <= horizon:
            self._readings.popleft()  # keep one reading at or before the horizon: the window's start
        while self._lags and self._lags[0][0] < horizon:
            self._lags.popleft()

    def sample(self, sessions: Mapping[str, SessionLoad] | None = None) -> LoadSample:
        """The figures over the window, with the given sessions' loads."""
        cpu, machine, span = None, None, 0.0
        if len(self._readings) >= 2:
            (wall0, cpu0, times0), (wall1, cpu1, times1) = self._readings[0], self._readings[-1]
            span = wall1 - wall0
            if span > 0:
                cpu = max(0.0, (cpu1 - cpu0) / span / self.cores)
            if times0 is not None and times1 is not None and times1[1] > times0[1]:
                machine = max(0.0, min(1.0, (times1[0] - times0[0]) / (times1[1] - times0[1])))
        lag = max((late for _, late in self._lags), default=0.0)
        return LoadSample(
            cpu=cpu, machine_cpu=machine, loop_lag=lag, window=span, sessions=dict(sessions or {})
        )

    async def run(self, interval: float = 0.5) -> None:
        """Tick every ``interval`` seconds until cancelled; lateness of each wake-up is the loop lag."""
        loop = asyncio.get_running_loop()
        self.tick()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            self.tick(loop.time() - due)


def machine_cpu_times(cores: Iterable[int] | None = None) -> CpuTimes | None:
    """(busy, total) jiffies from ``/proc/stat`` (Linux; None elsewhere) of the CPUs this process may
    run on (``cores``: by default its affinity): a server pinned to one core competes only there."""
    allowed = set(_affinity() if cores is None else cores)
    busy = total = 0.0
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, _, rest = line.partition(" ")
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed):
                    continue
                fields = [float(v) for v in rest.split()]
                idle = fields[3] + fields[4]  # idle + iowait
                busy += sum(fields[:8]) - idle  # guest time is already in user
                total += sum(fields[:8])
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def _usable_cores() -> int:
    return len(_affinity()) or 1
