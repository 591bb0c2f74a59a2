"""Exceptions and the ``Problem`` record that validation reports, all at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Problem:
    """One thing wrong with a graph or config, and how to fix it."""

    message: str
    fix: str = ""
    node: str | None = None  # the node it concerns, if any
    key: str | None = None  # the param (or node-level key) it concerns, if any
    file: str | None = None  # filled in by the YAML loader
    line: int | None = None  # 1-based, filled in by the YAML loader
    code: str = ""  # what kind of problem, stable for tools and tests (e.g. "cycle", "unfed")
    edge: int | None = None  # index of the edge it concerns, in the edge list that was checked

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        node = f"node '{self.node}': " if self.node else ""
        fix = f"\n    fix: {self.fix}" if self.fix else ""
        return f"{where}{node}{self.message}{fix}"


class VoxgraphError(Exception):
    """Base of the errors Voxgraph raises on purpose."""


class ValidationError(VoxgraphError):
    """A graph or config is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''} found:"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))


class UnknownTypeError(VoxgraphError):
    """A node ``type:`` names no registered processor and no importable class."""


class FatalProcessorError(VoxgraphError):
    """Raise from a processor to end the whole graph (bad credentials, missing model, …)."""


class ProcessorFailedError(VoxgraphError):
    """A processor under test reported an error (``Captured.raise_errors``); the message holds where."""
