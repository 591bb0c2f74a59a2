"""Node types: YAML ``type:`` names mapped to processor classes.

A type is found, in order, among:

1. classes registered in this process with ``@register("my.type")``;
2. the ``voxgraph.processors`` entry-point group — built-ins and third-party packages alike::

       [project.entry-points."voxgraph.processors"]
       "acme.denoise" = "acme_voice.denoise:Denoiser"

3. an import path ``package.module:ClassName`` written directly as the ``type:``.

Modules that register types with ``@register`` are imported first when a config lists them under
``plugins:`` or the command line names them with ``--import`` (``import_plugins``).

Classes are imported only when a graph uses them (``list`` imports them all).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from pipeline.errors import UnknownTypeError
from pipeline.params import did_you_mean
from pipeline.processor import Processor

ENTRY_POINT_GROUP = "voxgraph.processors"

P = TypeVar("P", bound=type[Processor])

_registered: dict[str, type[Processor]] = {}


def register(type_name: str) -> Callable[[P], P]:
    """Class decorator: make a processor available as ``type: <type_name>`` in this process."""

    def decorate(cls: P) -> P:
        cls.type_name = type_name
        _registered[type_name] = cls
        return cls

    return decorate


def import_plugins(modules: Iterable[str], beside: Path | None = None) -> dict[str, str]:
    """Import modules that register node types; returns module -> why it failed, for those that did.

    A module is looked up on ``sys.path`` (the current folder, under ``python -m pipeline``) and, if
    given, in ``beside`` — the config's own folder, so a config and its ``my_nodes.py`` travel together.
    """
    if beside is not None and str(beside) not in sys.path:
        sys.path.append(str(beside))
    failures: dict[str, str] = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:
            failures[module] = f"{type(error).__name__}: {error}"
    return failures


def available() -> dict[str, str]:
    """Every known type name with where it comes from (``module:Class``), sorted by name."""
    names = {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in _registered.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return dict(sorted(names.items()))


def resolve(type_name: str) -> type[Processor]:
    """The processor class for a YAML ``type:``; raises ``UnknownTypeError`` with a suggestion."""
    if type_name in _registered:
        return _registered[type_name]
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
        try:
            loaded = ep.load()
        except Exception as error:
            raise UnknownTypeError(
                f"loading type '{type_name}' from {ep.value} failed: {type(error).__name__}: {error}; "
                "check that its package and extras are installed"
            ) from error
        cls = _checked(loaded, type_name)
        cls.type_name = type_name
        return cls
    if ":" in type_name:
        return _import_path(type_name)
    known = list(available())
    guess = did_you_mean(type_name, known)
    hint = f"did you mean '{guess}'?" if guess else "run 'python -m pipeline list' to see every type"
    raise UnknownTypeError(f"unknown type '{type_name}'; {hint}")


def _import_path(path: str) -> type[Processor]:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UnknownTypeError(
            f"cannot import module '{module_name}' for type '{path}': {error}; "
            "check the module is installed or on PYTHONPATH"
        ) from error
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        guess = did_you_mean(attribute, names)
        hint = f"; did you mean '{module_name}:{guess}'?" if guess else ""
        raise UnknownTypeError(f"module '{module_name}' has no '{attribute}'{hint}") from None
    return _checked(obj, path)


def _checked(obj: object, type_name: str) -> type[Processor]:
    if not (isinstance(obj, type) and issubclass(obj, Processor)):
        raise UnknownTypeError(f"type '{type_name}' is {obj!r}, not a Processor subclass")
    return obj
