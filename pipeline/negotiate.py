"""Negotiation: check, before anything runs, that every node gets the frames and audio it can use.

Evaluated in topological order, from what processors declare (no frame flows, nothing is started):

* **Audio formats.** The format on an edge is its producer's ``output_format(incoming)``, where
  ``incoming`` is the one format all of the producer's inputs agree on (a fan-in that joins two
  formats is a problem). A node that handles audio must accept (``accepts_audio``) the format on
  each edge into it; ``insert_resamplers`` fixes mismatches with ``audio.resample`` nodes.
* **Frame kinds.** The kinds reaching a node are what each input ``produces`` plus what reaches the
  input and it does not consume. A processor consumes the specific data kinds (audio, text,
  transcripts) in its ``handles`` unless it also lists them in ``produces`` — so a processor that
  transforms text and pushes text on must say ``produces = (TextFrame,)``. A node that handles
  specific data kinds none of which can reach it is a problem. Handling the generic ``DataFrame``
  or ``Frame`` never is, and a source that declares no ``produces`` may emit anything.

Pure functions, no I/O: ``Graph`` runs ``check`` when it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pipeline.errors import Problem
from pipeline.formats import AudioFormat
from pipeline.frames import AudioFrame, DataFrame, Frame, TextFrame
from pipeline.processor import Processor, Source
from pipeline.topology import topological_names

Edge = tuple[str, str]
ResamplerFactory = Callable[[str, AudioFormat], Processor]
"""Builds a resampling node: ``factory(node_name, target_format)``."""

SPECIFIC_KINDS: tuple[type[Frame], ...] = (AudioFrame, TextFrame)
"""Data kinds a processor handles on purpose; handling one of these and nothing else is checked."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem, the edge it is about (for the config's line number) and the audio fix, if any."""

    problem: Problem
    edge: Edge | None = None
    resample_to: AudioFormat | None = None  # a resampler on ``edge`` producing this fixes it


def check(processors: Mapping[str, Processor], edges: Iterable[Edge]) -> list[Problem]:
    """Every frame-kind and audio-format problem of the graph; [] when it negotiates."""
    return [finding.problem for finding in diagnose(processors, edges)]


def diagnose(processors: Mapping[str, Processor], edges: Iterable[Edge]) -> list[Finding]:
    """Like ``check``, with each problem's edge and resampling fix."""
    return _Negotiation(processors, list(edges)).findings


def edge_formats(
    processors: Mapping[str, Processor], edges: Iterable[Edge]
) -> dict[Edge, AudioFormat | None]:
    """The audio format carried by each edge (``None``: no audio), for labelling diagrams."""
    edge_list = list(edges)
    outputs = _Negotiation(processors, edge_list).outputs
    return {edge: outputs.get(edge[0]) for edge in edge_list}


def insert_resamplers(
    processors: Mapping[str, Processor], edges: Iterable[Edge], factory: ResamplerFactory
) -> tuple[dict[str, Processor], list[Edge]]:
    """Put a resampler on every edge whose audio its consumer cannot take (or that joins a fan-in
    in another format). Named ``resample_<from>_<to>``; placed right after ``<from>`` in node order.

    Problems that resampling cannot fix are left for ``check`` to report.
    """
    nodes = dict(processors)
    edge_list = list(edges)
    for _ in range(len(edge_list) + 1):
        fixable = [f for f in diagnose(nodes, edge_list) if f.edge is not None and f.resample_to is not None]
        if not fixable:
            break
        finding = fixable[0]
        assert finding.edge is not None and finding.resample_to is not None
        a, b = finding.edge
        name = _free_name(f"resample_{a}_{b}", nodes)
        resampler = factory(name, finding.resample_to)
        nodes = _insert_after(nodes, a, name, resampler)
        index = edge_list.index((a, b))
        edge_list[index : index + 1] = [(a, name), (name, b)]
    return nodes, edge_list


class _Negotiation:
    """One pass over the graph in topological order."""

    def __init__(self, processors: Mapping[str, Processor], edges: list[Edge]) -> None:
        self.processors = processors
        self.edges = [(a, b) for a, b in edges if a in processors and b in processors]
        self.inputs: dict[str, list[str]] = {n: [] for n in processors}
        for a, b in self.edges:
            self.inputs[b].append(a)
        self.outputs: dict[str, AudioFormat | None] = {}
        self.reaching: dict[str, frozenset[type[Frame]]] = {}
        self.findings: list[Finding] = []
        for name in topological_names(processors, self.edges):
            self._audio(name)
            self._kinds(name)

    def _audio(self, name: str) -> None:
        processor = self.processors[name]
        arriving = [(a, fmt) for a in self.inputs[name] if (fmt := self.outputs.get(a)) is not None]
        caps = processor.accepts_audio
        effective: list[tuple[str, AudioFormat, AudioFormat]] = []  # (input, format, after a fix)
        for a, fmt in arriving:
            target = fmt
            if _handles_audio(processor) and not caps.allows(fmt):
                target = caps.closest(fmt)
                self._needs_resampler((a, name), target, f"'{name}' expects {caps}; '{a}' produces {fmt}")
            effective.append((a, fmt, target))
        incoming = effective[0][2] if effective else None
        if effective:
            first, first_fmt, reference = effective[0]
            for a, fmt, target in effective[1:]:
                if target != reference:
                    joins = f"fan-in into '{name}' joins {first_fmt} from '{first}' and {fmt} from '{a}'"
                    self._needs_resampler((a, name), reference, joins)
        try:
            self.outputs[name] = processor.output_format(incoming)
        except Exception as error:
            self.outputs[name] = None
            self.findings.append(
                Finding(
                    Problem(
                        f"output_format({incoming}) raised {type(error).__name__}: {error}",
                        fix=f"fix {type(processor).__name__}.output_format; it must return a format or None",
                        node=name,
                    )
                )
            )

    def _kinds(self, name: str) -> None:
        processor = self.processors[name]
        reaching: set[type[Frame]] = set()
        for a in self.inputs[name]:
            upstream = self.processors[a]
            reaching.update(_emitted(upstream))
            consumed = _consumed(upstream)
            reaching.update(k for k in self.reaching[a] if not issubclass(k, consumed))
        self.reaching[name] = frozenset(reaching)
        if isinstance(processor, Source) or not self.inputs[name]:
            return
        wanted = [h for h in processor.handles if issubclass(h, SPECIFIC_KINDS)]
        if not wanted or any(_generic(h) for h in processor.handles):
            return  # a generic handler (DataFrame, Frame) takes whatever comes
        if any(_overlaps(kind, wanted) for kind in reaching):
            return
        handled = _kind_names(wanted)
        data = _kind_names([k for k in reaching if issubclass(k, DataFrame)])
        received = f"receives only {data}" if data else "receives no data frames"
        swallower = self._swallower(name, wanted)
        if swallower is not None:
            cls = type(self.processors[swallower]).__name__
            taken = [k.__name__ for k in _consumed(self.processors[swallower]) if _overlaps(k, wanted)]
            kinds = f"{taken[0]}," if len(taken) == 1 else ", ".join(taken)
            message = f"'{swallower}' produces nothing, so '{name}' (which handles {handled}) {received}"
            fix = f"if {cls} pushes frames on, declare them: produces = ({kinds})"
            self.findings.append(Finding(Problem(message, fix=fix, node=swallower)))
            return
        self.findings.append(
            Finding(
                Problem(
                    f"'{name}' handles {handled} but {received}", fix=self._kinds_fix(name, wanted), node=name
                )
            )
        )

    def _swallower(self, name: str, wanted: list[type[Frame]]) -> str | None:
        """An input of ``name`` that takes the kinds it wants and declares it produces none: most
        likely a custom processor whose ``produces`` was forgotten, not a mistake in ``name``."""
        for a in self.inputs[name]:
            upstream = self.processors[a]
            silent = not isinstance(upstream, Source) and not upstream.produces
            if silent and any(_overlaps(kind, wanted) for kind in _consumed(upstream)):
                return a
        return None

    def _kinds_fix(self, name: str, wanted: list[type[Frame]]) -> str:
        handled = _kind_names(wanted, joiner=" or ")
        downstream = descendants([name], self.edges)
        for candidate, processor in self.processors.items():
            if candidate == name or candidate in downstream:
                continue
            if any(_overlaps(kind, wanted) for kind in _emitted(processor)):
                return (
                    f"feed '{name}' from a node that produces {handled}, e.g. an edge '{candidate} -> {name}'"
                )
        return (
            f"feed '{name}' from a node that produces {handled} "
            "('python -m pipeline list' shows what each type produces), or check the edges into it"
        )

    def _needs_resampler(self, edge: Edge, target: AudioFormat, message: str) -> None:
        a, b = edge
        fix = (
            f"add an audio.resample node ({_resample_params(target)}) between '{a}' and '{b}', "
            "or set settings.auto_resample: true"
        )
        self.findings.append(Finding(Problem(message, fix=fix, node=b), edge=edge, resample_to=target))


def descendants(names: Iterable[str], edges: Iterable[Edge]) -> set[str]:
    """Every node downstream of any of ``names`` (not ``names`` themselves, unless in a cycle)."""
    children: dict[str, list[str]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    seen: set[str] = set()
    stack = list(names)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def _handles_audio(processor: Processor) -> bool:
    return any(issubclass(h, AudioFrame) or issubclass(AudioFrame, h) for h in processor.handles)


def _generic(cls: type[Frame]) -> bool:
    """``DataFrame``, ``Frame`` and the like: a base of the specific kinds rather than one of them."""
    return not issubclass(cls, SPECIFIC_KINDS) and any(issubclass(k, cls) for k in SPECIFIC_KINDS)


def _emitted(processor: Processor) -> tuple[type[Frame], ...]:
    """What a processor emits of its own; a source that does not say may emit anything."""
    if isinstance(processor, Source) and not processor.produces:
        return (Frame,)
    return processor.produces


def _consumed(processor: Processor) -> tuple[type[Frame], ...]:
    return tuple(
        h for h in processor.handles if issubclass(h, SPECIFIC_KINDS) and h not in processor.produces
    )


def _overlaps(kind: type[Frame], wanted: Iterable[type[Frame]]) -> bool:
    return any(issubclass(kind, w) or issubclass(w, kind) for w in wanted)


def _kind_names(classes: Iterable[type[Frame]], joiner: str = ", ") -> str:
    return joiner.join(sorted({c.kind for c in classes}))


def _resample_params(fmt: AudioFormat) -> str:
    return f"sample_rate: {fmt.sample_rate}, channels: {fmt.channels}"


def _free_name(name: str, taken: Mapping[str, object]) -> str:
    if name not in taken:
        return name
    number = 2
    while f"{name}_{number}" in taken:
        number += 1
    return f"{name}_{number}"


def _insert_after(
    nodes: dict[str, Processor], after: str, name: str, processor: Processor
) -> dict[str, Processor]:
    result: dict[str, Processor] = {}
    for key, value in nodes.items():
        result[key] = value
        if key == after:
            result[name] = processor
    return result
