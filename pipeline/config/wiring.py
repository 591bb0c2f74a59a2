"""The edges of a config: structure and negotiation problems placed on their lines, and auto-resampling.

``pipeline.graph`` and ``pipeline.negotiate`` find the problems; this module decides which are worth
reporting for a config (not the ones that follow from a problem already reported) and which line
each is about, and inserts resamplers when ``settings.auto_resample`` asks for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config.spec import GraphSpec
from pipeline.errors import Problem
from pipeline.formats import AudioFormat
from pipeline.graph import Edge, structure_problems
from pipeline.negotiate import ResamplerFactory, descendants, diagnose, insert_resamplers
from pipeline.processor import Processor
from pipeline.registry import resolve


def wire(
    spec: GraphSpec,
    classes: Mapping[str, type[Processor] | None],
    built: Mapping[str, Processor],
    auto_resample: bool,
) -> tuple[dict[str, Processor], list[Edge], list[Problem]]:
    """Check the edges between ``built`` nodes (``classes``: every node's type, None if unresolved).

    Returns the processors and edges to run (resamplers included) and the problems found.
    """
    wiring = _Wiring(spec)
    edges = wiring.structure(classes)
    processors, edges = wiring.negotiate(built, edges, auto_resample)
    return processors, edges, wiring.problems


class _Wiring:
    """Checks a config's edges, each problem placed on the line of its edge or node."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.problems: list[Problem] = []
        self.edge_line: dict[Edge, int | None] = {}
        """Line of each edge's first declaration."""
        for edge, line in zip(spec.edges, spec.edge_lines, strict=True):
            self.edge_line.setdefault(edge, line)

    def structure(self, classes: Mapping[str, type[Processor] | None]) -> list[Edge]:
        """Report structure problems; returns the edges worth negotiating (known ends, no duplicates)."""
        nodes: dict[str, Any] = {n: object if c is None else c for n, c in classes.items()}
        unresolved = {n for n, c in classes.items() if c is None}
        edges = self.spec.edges
        usable = list(dict.fromkeys((a, b) for a, b in edges if a in nodes and b in nodes))
        misspelt = {end for a, b in edges if a not in nodes or b not in nodes for end in (a, b)}
        for problem in structure_problems(nodes, edges):
            if problem.node in unresolved and problem.code in ("unfed", "source_has_input"):
                continue  # whether it is a source is unknown: its type is already reported
            if problem.node in misspelt and problem.code == "unfed":
                continue  # follows from a misspelt edge, reported already
            problem.file = self.spec.file
            problem.line = self.structure_line(problem)
            self.problems.append(problem)
        return usable

    def structure_line(self, problem: Problem) -> int | None:
        """The line of the edge or node a structure problem is about."""
        if problem.edge is not None:
            return self.spec.edge_lines[problem.edge]
        node = self.spec.nodes.get(problem.node or "")
        return node.line if node else None

    def negotiate(
        self, built: Mapping[str, Processor], edges: list[Edge], auto_resample: bool
    ) -> tuple[dict[str, Processor], list[Edge]]:
        """Frame kinds and audio formats over the nodes that were built and all they depend on.

        Downstream of a node that was not built, what arrives is unknown: checking it would only
        report problems that follow from the one already reported.
        """
        unbuilt = {n for n in self.spec.nodes if n not in built}
        unknown = unbuilt | descendants(unbuilt, edges)
        processors = {n: p for n, p in built.items() if n not in unknown}
        edges = [(a, b) for a, b in edges if a in processors and b in processors]
        if auto_resample:
            factory = self.resampler_factory()
            if factory is not None:
                processors, edges = insert_resamplers(processors, edges, factory)
        for finding in diagnose(processors, edges):
            problem = finding.problem
            node = self.spec.nodes.get(problem.node or "")
            line = self.edge_line.get(finding.edge) if finding.edge else None
            problem.file = self.spec.file
            problem.line = line or (node.line_of(None) if node else None)
            self.problems.append(problem)
        return processors, edges

    def resampler_factory(self) -> ResamplerFactory | None:
        try:
            cls = resolve("audio.resample")
        except Exception as error:
            self.problems.append(
                Problem(
                    f"auto_resample needs the audio.resample type: {error}",
                    fix="reinstall voxgraph, or add resample nodes by hand",
                    file=self.spec.file,
                    line=self.spec.lines.get("settings.auto_resample"),
                )
            )
            return None

        def factory(name: str, target: AudioFormat) -> Processor:
            return cls(name=name, sample_rate=target.sample_rate, channels=target.channels)

        return factory
