"""Logging: quiet by default, ``key=value`` lines, and secrets redacted before anything is written."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
MIN_SECRET_LENGTH = 6  # shorter values are too likely to collide with ordinary words


class RedactSecrets(logging.Filter):
    """Replaces the values of secret-looking environment variables with ``***`` in every record.

    Processors never log keys on purpose; this catches the accidents (an SDK's exception text that
    echoes a request header, a URL with a token in it).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        source = os.environ if env is None else env
        self.secrets = sorted(
            {v for k, v in source.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH},
            key=len,
            reverse=True,
        )

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced."""
        for value in self.secrets:
            if value in text:
                text = text.replace(value, "***")
        return text

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
