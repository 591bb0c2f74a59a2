"""Secrets out of every message: one list of sensitive values, one way to hide them.

Three kinds of text may hold a key: config problems (an interpolated ``${VAR}`` or a ``secret``
param), errors that leave a processor (an SDK echoing a request), and log lines (a library logging a
header at debug level). All of them hide values with ``hide``; log lines also hide every value a
config registered with ``register``, so a key given with ``--set`` is as safe as one in the
environment.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import TypeGuard

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASS|PWD|CREDENTIAL|AUTH|BEARER|PRIVATE)", re.IGNORECASE)
"""Names (of environment variables and config keys) whose values are credentials."""
SHORTEST_SECRET = 6
"""Values shorter than this are not treated as secrets: they are too likely to be ordinary words."""
MAX_REGISTERED = 1024
"""Values ``register`` keeps at most (one per key of each config loaded; more means a bug)."""
HIDDEN = "***"

_registered: dict[str, None] = {}  # ordered set, oldest first
_lock = threading.Lock()  # log records come from worker threads too


def is_secret(value: object) -> TypeGuard[str]:
    """Whether ``value`` is long enough to hide (shorter text would hide ordinary words)."""
    return isinstance(value, str) and len(value) >= SHORTEST_SECRET


def is_secret_name(name: str) -> bool:
    """Whether a variable or key called ``name`` holds a credential (``OPENAI_API_KEY``, ``token``)."""
    return SECRET_NAME.search(name) is not None


def hide(text: str, secrets: Mapping[str, str] | Iterable[str]) -> str:
    """``text`` with each secret replaced by what to show instead (``***`` for a plain list).

    Longest first, so a secret that contains another is never half hidden.
    """
    shown = secrets if isinstance(secrets, Mapping) else dict.fromkeys(secrets, HIDDEN)
    for value in sorted(shown, key=len, reverse=True):
        if is_secret(value) and value in text:
            text = text.replace(value, shown[value])
    return text


def register(values: Iterable[str]) -> None:
    """Remember sensitive values for the log filter (``registered``), the oldest forgotten past
    ``MAX_REGISTERED``."""
    with _lock:
        for value in values:
            if is_secret(value):
                _registered.pop(value, None)
                _registered[value] = None
        while len(_registered) > MAX_REGISTERED:
            del _registered[next(iter(_registered))]


def registered() -> list[str]:
    """The values registered so far."""
    with _lock:
        return list(_registered)
