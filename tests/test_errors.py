"""Every public exception the package defines derives from ``VoxgraphError``: one ``except`` takes all."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pipeline
import processors
import transports
from pipeline.errors import VoxgraphError

OPTIONAL = {"transports.local"}  # PortAudio: imports only where the library is installed


def _modules() -> list[str]:
    names = []
    for package in (pipeline, processors, transports):
        names.append(package.__name__)
        walked = pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        names += [m.name for m in walked if not m.name.endswith(".__main__")]
    return names


def _exceptions() -> list[type[BaseException]]:
    found = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError:
            if name in OPTIONAL:
                continue
            raise
        found += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == name
            and not obj.__name__.startswith("_")  # private signals that never leave their module
        ]
    return found


def test_the_package_defines_exceptions_to_check() -> None:
    assert len(_exceptions()) >= 10


@pytest.mark.parametrize("error", _exceptions(), ids=lambda e: f"{e.__module__}.{e.__qualname__}")
def test_every_package_exception_derives_from_voxgraph_error(error: type[BaseException]) -> None:
    assert issubclass(error, VoxgraphError)
