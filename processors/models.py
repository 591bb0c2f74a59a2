"""Loaded models shared across graphs: every graph (one per websocket session) that names the same
model uses one copy in memory, loaded once, with a lock that serialises inference on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SharedModel", "shared_model"]


@dataclass
class SharedModel:
    """One loaded model and the lock that serialises inference on it (engines are not re-entrant,
    and two inferences on 2 cores would only slow each other down)."""

    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    warmed: bool = False  # a first inference has run (see WhisperSTT's warm-up)
    priority_passes: int = 0  # passes nothing optional may delay (finals) started, not finished (loop-owned)


_models: dict[Hashable, SharedModel] = {}
_models_lock = threading.Lock()


def shared_model(key: Hashable, load: Callable[[], Any]) -> SharedModel:
    """The model cached under ``key``, loading it with ``load()`` the first time (blocking: call it
    from a thread). Concurrent callers with the same key wait for one load instead of making two."""
    with _models_lock:
        entry = _models.get(key)
        if entry is None:
            entry = _models[key] = SharedModel(load())
        return entry
