"""Was the machine quiet? Load average, CPU steal and other processes' CPU over a benchmark run.

Latency on a shared or busy machine says more about the neighbours than about the graph, so every
run records what else was going on and the report warns when the numbers should not be trusted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MachineSample", "Quietness", "quietness", "sample"]

STEAL_LIMIT = 0.02
"""Fraction of CPU time taken by the hypervisor above which a virtual machine is not quiet."""
OTHERS_LIMIT = 0.15
"""Fraction of all CPUs used by other processes above which the machine is not quiet."""
LOAD_LIMIT = 0.5
"""1-minute load average per CPU, before the run, above which the machine was busy."""


@dataclass(frozen=True, slots=True)
class MachineSample:
    """CPU counters at one moment (``/proc/stat`` jiffies; zeros where it is unavailable)."""

    at: float
    load: tuple[float, float, float]
    busy: int
    steal: int
    total: int
    own_cpu: float
    """Seconds of CPU this process (and its waited-for children) used so far."""


@dataclass(frozen=True, slots=True)
class Quietness:
    """What else ran during the benchmark, and the warnings it calls for."""

    cpus: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    steal: float
    """Fraction of CPU time stolen by the hypervisor during the run."""
    others: float
    """Fraction of all CPUs used by other processes during the run."""
    warnings: list[str]

    @property
    def quiet(self) -> bool:
        return not self.warnings


def sample() -> MachineSample:
    busy = steal = total = 0
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        fields = []
    if len(fields) >= 8:
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        total = sum(fields[:8])
        idle = fields[3] + fields[4]
        steal = fields[7]
        busy = total - idle - steal
    times = os.times()
    own = times.user + times.system + times.children_user + times.children_system
    return MachineSample(time.monotonic(), os.getloadavg(), busy, steal, total, own)


def quietness(before: MachineSample, after: MachineSample) -> Quietness:
    """Compare two samples taken around a run."""
    cpus = os.cpu_count() or 1
    ticks = max(1, after.total - before.total)
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    steal = (after.steal - before.steal) / ticks
    others_ticks = (after.busy - before.busy) - (after.own_cpu - before.own_cpu) * hz
    others = max(0.0, others_ticks / ticks) if after.total else 0.0
    warnings = []
    if before.load[0] / cpus > LOAD_LIMIT:
        warnings.append(
            f"the machine was busy before the run (load average {before.load[0]:.2f} on {cpus} CPUs)"
        )
    if steal > STEAL_LIMIT:
        warnings.append(f"the hypervisor took {steal:.1%} of the CPU time (steal): a noisy neighbour")
    if others > OTHERS_LIMIT:
        warnings.append(f"other processes used {others:.0%} of the CPUs during the run")
    return Quietness(cpus, before.load, after.load, round(steal, 4), round(others, 4), warnings)
