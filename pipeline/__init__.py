"""Voxgraph: real-time voice pipelines as graphs of async processors.

The public face: frames, ``Processor`` and ``Source`` to subclass, ``Graph`` to wire them,
``load`` to build a graph from YAML, and ``register`` to name a type. ``pipeline.testing`` holds
the testing kit.
"""

from typing import Any

from pipeline import frames
from pipeline.errors import (
    FatalProcessorError,
    Problem,
    ProcessorFailedError,
    UnknownTypeError,
    ValidationError,
)
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import DOWNSTREAM, UPSTREAM, Direction, Frame
from pipeline.graph import Graph, GraphFailedError
from pipeline.inbox import Overflow
from pipeline.observers import Observer
from pipeline.params import param
from pipeline.processor import Processor, Source
from pipeline.registry import register


def __getattr__(name: str) -> Any:
    # The YAML loader (and PyYAML) is imported only by code that loads configs.
    if name in ("load", "load_text"):
        from pipeline import config

        return getattr(config, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = [
    "DOWNSTREAM",
    "UPSTREAM",
    "AudioCaps",
    "AudioFormat",
    "Direction",
    "FatalProcessorError",
    "Frame",
    "Graph",
    "GraphFailedError",
    "Observer",
    "Overflow",
    "Problem",
    "Processor",
    "ProcessorFailedError",
    "Source",
    "UnknownTypeError",
    "ValidationError",
    "frames",
    "load",
    "load_text",
    "param",
    "register",
]
