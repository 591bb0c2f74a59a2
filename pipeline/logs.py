"""Logging: quiet by default, ``key=value`` lines, and secrets redacted before anything is written."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline import secrets
from pipeline.secrets import is_secret, is_secret_name


class RedactSecrets(logging.Filter):
    """Replaces the values of secret-looking environment variables with ``***`` in every record.

    Processors never log keys on purpose; this catches the accidents (an SDK's exception text that
    echoes a request header, a URL with a token in it).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        source = os.environ if env is None else env
        self.environment = [v for k, v in source.items() if is_secret_name(k) and is_secret(v)]

    @property
    def secrets(self) -> list[str]:
        """Secret-looking environment values, and every value a loaded config registered as secret
        (a key given with ``--set`` included)."""
        return [*self.environment, *secrets.registered()]

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced."""
        return secrets.hide(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = self.redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


@dataclass(slots=True)
class _Window:
    """One kind of message in the current interval."""

    start: float  # when the interval began
    passed: int = 0  # records let through in it
    dropped: int = 0  # records dropped in it


class RateLimit(logging.Filter):
    """Lets the first ``burst`` records of one message through per ``interval`` seconds, drops the rest.

    A client (or the operating system) can make a server repeat one line thousands of times a second:
    out of file descriptors, every failed ``accept`` is logged. The first record after a quiet spell
    says how many were dropped: ``(N similar messages suppressed)``. Records are alike when they
    share a logger, a level and the first line of their format string; at most ``max_keys`` kinds
    are tracked (the least recent is forgotten). Records below ``level`` pass untouched: they are off
    unless asked for (``-v``), and then every one is wanted.
    """

    def __init__(
        self,
        burst: int = 5,
        interval: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        super().__init__()
        self.level = level  # records below it are not limited
        self.burst = burst  # records of one kind let through per interval
        self.interval = interval  # seconds
        self.max_keys = max_keys  # kinds of message tracked at once
        self.clock = clock
        self.suppressed = 0  # records dropped in all
        self._windows: OrderedDict[tuple[str, int, str], _Window] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        key = (record.name, record.levelno, str(record.msg).split("\n", 1)[0][:200])
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.interval:
            if window is not None and window.dropped:
                record.msg = f"{record.msg} ({window.dropped} similar messages suppressed)"
            window = self._windows[key] = _Window(now)
        self._windows.move_to_end(key)
        if len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.dropped += 1
        self.suppressed += 1
        return False


def rate_limit(*names: str, burst: int = 5, interval: float = 60.0) -> RateLimit:
    """Rate-limit what each named logger itself logs (a logger that has a ``RateLimit`` keeps it)."""
    limit = RateLimit(burst, interval)
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimit) for f in logger.filters):
            logger.addFilter(limit)
    return limit


def configure(verbosity: int = 0, stream: object = None) -> None:
    """Set up logging for the CLI: 0 = warnings only, 1 = info (-v), 2+ = debug (-vv)."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if verbosity < 3:
        for noisy in ("asyncio", "aiohttp.access", "websockets", "urllib3", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
