"""``GraphSpec`` -> ready-to-run processors: settings, types, params and queues, each node on its own.

Every node is built even when another fails, and each problem gets the line of the key it is about
(or the ``--set`` that supplied the value), so one run reports everything. ``pipeline.wiring`` then
checks the edges between the nodes that were built.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.connections import connection_problems
from pipeline.config.server import read_server
from pipeline.config.spec import GraphSpec, NodeSpec, ServerSettings, Settings
from pipeline.config.wiring import wire
from pipeline.errors import Problem, UnknownTypeError, ValidationError
from pipeline.graph import Edge, Graph
from pipeline.inbox import Overflow
from pipeline.params import build_params, convert, did_you_mean, type_name
from pipeline.processor import Processor
from pipeline.registry import import_plugins, resolve
from pipeline.secrets import is_secret

QUEUE_KEYS = ("size", "overflow")


@dataclass(slots=True)
class Compiled:
    """A config that passed every check: ready-to-run processors and edges."""

    spec: GraphSpec
    settings: Settings
    processors: dict[str, Processor]
    edges: list[Edge]
    server: ServerSettings | None = None
    """How to serve it (``server:``); None: run it once (``Compiled.graph``)."""
    handed_out: bool = False
    """Whether ``processors`` went into a graph already: a processor runs in one graph only."""

    def graph(self) -> Graph:
        """A new ``Graph``: the first of these processors, every later one of processors built
        afresh from the spec, so two graphs never share (and corrupt) one processor."""
        processors, edges = self.processors, self.edges
        if self.handed_out:
            fresh, problems = build(self.spec)
            if problems:  # the environment changed since the config was checked
                raise ValidationError(problems)
            processors, edges = fresh.processors, fresh.edges
        self.handed_out = True
        return Graph(
            processors,
            edges,
            name=self.spec.name,
            start_timeout=self.settings.start_timeout,
            end_timeout=self.settings.end_timeout,
            cancel_timeout=self.settings.cancel_timeout,
        )


def build(
    spec: GraphSpec, unchecked: frozenset[tuple[str, str | None]] = frozenset()
) -> tuple[Compiled, list[Problem]]:
    """Build every node that can be built and wire them; the result is only usable without problems.

    ``unchecked`` holds (node, key) pairs that already have a problem in how they were written (an
    unset ``${VAR}``, say): those nodes' ``check()`` is skipped and what their constructor says about
    those keys is left out, since it would only report the consequence again ("api_key is empty").
    """
    builder = _Builder(spec, unchecked)
    builder.plugins()
    settings = builder.settings()
    server, server_problems = read_server(spec)
    for node in spec.nodes.values():
        builder.node(node)
    builder.node_references()
    processors, edges, problems = wire(spec, builder.classes, builder.processors, settings.auto_resample)
    problems += server_problems + connection_problems(spec, builder.classes, spec.server is not None)
    return Compiled(spec, settings, processors, edges, server), builder.problems + problems


class _Builder:
    """Builds nodes one at a time, each problem placed where its value was written."""

    def __init__(self, spec: GraphSpec, unchecked: frozenset[tuple[str, str | None]] = frozenset()) -> None:
        self.spec = spec
        self.unchecked = unchecked
        self.unchecked_nodes = {name for name, _ in unchecked}
        self.problems: list[Problem] = []
        self.classes: dict[str, type[Processor] | None] = {}
        """Every node's type; None where it could not be resolved."""
        self.processors: dict[str, Processor] = {}
        """The nodes that were built."""

    def report(self, problem: Problem, node: NodeSpec) -> None:
        """Record a problem of ``node`` with its line (``--set`` problems name the override instead)."""
        problem.node = problem.node or node.name
        if problem.key is not None and problem.key in node.overridden:
            problem.file, problem.line = f"--set {node.name}.{problem.key}", None
        else:
            problem.file, problem.line = self.spec.file, node.line_of(problem.key)
        self.problems.append(problem)

    def plugins(self) -> None:
        """Import the config's ``plugins:`` before any type is resolved, so their types are known."""
        beside = None if self.spec.file.startswith("<") else Path(self.spec.file).resolve().parent
        for module, reason in import_plugins(self.spec.plugins, beside).items():
            fix = f"check that {module}.py is beside the config, in this folder, or installed"
            self.problems.append(
                Problem(
                    f"cannot import plugin '{module}': {reason}",
                    fix=fix,
                    file=self.spec.file,
                    line=self.spec.lines.get("plugins"),
                )
            )

    def settings(self) -> Settings:
        """The valid settings; the others are reported and keep their defaults."""
        values: dict[str, Any] = {}
        for key, value in self.spec.settings.items():
            path = f"settings.{key}"
            converted, problem = _setting(key, value, self.spec.interpolated.get(path))
            if problem is None:
                values[key] = converted
                continue
            if path in self.spec.overridden:
                problem.file = f"--set {path}"
            else:
                problem.file, problem.line = self.spec.file, self.spec.lines.get(path)
            self.problems.append(problem)
        return Settings(**values)

    def node(self, node: NodeSpec) -> None:
        cls = self.resolve(node)
        self.classes[node.name] = cls
        queue = self.queue(node)
        if cls is None:
            return
        params = self.params(node, cls)
        if params is None:
            return
        try:  # built even with a bad queue: wiring can still check it
            processor = self.processors[node.name] = cls(params, name=node.name, **queue)
            for problem in [] if node.name in self.unchecked_nodes else processor.check():
                self.report(problem, node)
        except ValidationError as error:
            for problem in error.problems:
                if (node.name, problem.key) not in self.unchecked:
                    self.report(problem, node)
        except Exception as error:
            message = f"creating {cls.__name__} failed: {type(error).__name__}: {error}"
            fix = "check the node's params; heavy work belongs in on_start"
            if isinstance(error, TypeError) and "__init__" in vars(cls):
                fix = f"drop {cls.__name__}.__init__; set up per-instance state in setup() (no super())"
            self.report(Problem(message, fix=fix, key="type"), node)

    def node_references(self) -> None:
        """Nodes whose params name other nodes check them (``check_nodes``) once every node is built."""
        for name, processor in list(self.processors.items()):
            check = getattr(processor, "check_nodes", None)
            if callable(check) and name not in self.unchecked_nodes:
                for problem in check(self.processors):
                    self.report(problem, self.spec.nodes[name])

    def resolve(self, node: NodeSpec) -> type[Processor] | None:
        if node.type is None:
            return None  # reported while reading
        try:
            return resolve(node.type)
        except UnknownTypeError as error:
            message, _, fix = str(error).rpartition("; ")
            if not message:
                message, fix = fix, "run 'python -m pipeline list' to see every type"
            self.report(Problem(message, fix=fix, key="type"), node)
        except Exception as error:
            message = f"loading type '{node.type}' failed: {type(error).__name__}: {error}"
            fix = "check that the package providing it is installed and imports cleanly"
            self.report(Problem(message, fix=fix, key="type"), node)
        return None

    def params(self, node: NodeSpec, cls: type[Processor]) -> Any:
        """The node's params object, or None once the problems with its values are reported."""
        try:
            params, problems = _params(node, cls, self.spec.secrets)
        except Exception as error:  # a Params that is not a dataclass, or whose __post_init__ raises
            message = f"checking the params of {cls.__name__} failed: {type(error).__name__}: {error}"
            fix = f"{cls.__name__}.Params must be a dataclass of typed fields"
            params, problems = None, [Problem(message, fix=fix, key="type")]
        for problem in problems:
            if (
                problem.code == "unknown-param"
                and "type" in node.overridden
                and problem.key not in node.overridden
            ):
                problem.message += f" (written for the file's type, not {node.type})"
                problem.fix = f"switch the whole node instead: --set '{node.name}={{type: {node.type}}}'"
            self.report(problem, node)
        return None if problems else params

    def queue(self, node: NodeSpec) -> dict[str, Any]:
        """Processor kwargs from ``queue:`` (the valid part; problems are reported)."""
        if node.queue is None:
            return {}
        if not isinstance(node.queue, dict):
            fix = "write 'queue: {size: 32, overflow: drop_oldest}'"
            self.report(Problem("queue must be a mapping", fix=fix, key="queue"), node)
            return {}
        kwargs: dict[str, Any] = {}
        for key, value in node.queue.items():
            option = _queue_option(key, value, hide="queue" in node.interpolated)
            if isinstance(option, Problem):
                self.report(option, node)
            else:
                kwargs[option[0]] = option[1]
        return kwargs


def _params(node: NodeSpec, cls: type[Processor], secrets: dict[str, str]) -> tuple[Any, list[Problem]]:
    """Check the node's values against ``cls.Params``; adds its secret values to ``secrets``.

    Messages about a value that came from the environment say so instead of showing it.
    """
    hints = typing.get_type_hints(cls.Params)
    values = dict(node.params)
    for key, text in node.substituted.items():
        if key in hints and convert(values[key], hints[key])[1] and not convert(text, hints[key])[1]:
            values[key] = text  # ${ZIP} = 01234 for a str param stays "01234"
    for f in dataclasses.fields(cls.Params):
        value = values.get(f.name)
        if f.metadata.get("secret") and is_secret(value):
            secrets.setdefault(value, "<secret>")
    params, problems = build_params(cls.Params, values, node=node.name)
    for problem in problems:
        if problem.key in node.interpolated and ", got " in problem.message:
            expects = problem.message.partition(", got ")[0]
            problem.message = f"{expects}, got {_shown(values[problem.key], node.interpolated[problem.key])}"
    return params, problems


def _setting(key: str, value: Any, interpolated: str | None) -> tuple[Any, Problem | None]:
    """A setting's value converted to its type, or what is wrong with it."""
    hints = typing.get_type_hints(Settings)
    if key not in hints:
        guess = did_you_mean(key, list(hints))
        fix = f"did you mean '{guess}'?" if guess else "settings are: " + ", ".join(hints)
        return None, Problem(f"unknown setting '{key}'", fix=fix, key=key)
    converted, expected = convert(value, hints[key])
    if not expected and isinstance(converted, float) and converted <= 0:
        expected = "a number of seconds above 0"
    if not expected:
        return converted, None
    message = f"setting '{key}' expects {type_name(hints[key])}, got {_shown(value, interpolated)}"
    return None, Problem(message, fix=f"set {key} to {expected}", key=key)


def _queue_option(key: str, value: Any, hide: bool) -> tuple[str, Any] | Problem:
    """One ``queue:`` entry as a processor kwarg, or what is wrong with it (not showing it if ``hide``)."""
    shown = "the value" if hide else repr(value)
    if key == "size":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return "queue_size", value
        message = f"queue size must be a whole number >= 1, got {shown}"
        return Problem(message, fix="e.g. 'size: 32'", key="queue.size")
    if key == "overflow":
        choices = [o.value for o in Overflow]
        if value in choices:
            return "overflow", Overflow(value)
        message = f"queue overflow must be {' or '.join(choices)}, got {shown}"
        return Problem(
            message, fix="block: backpressure (text, files); drop_oldest: live audio", key="queue.overflow"
        )
    guess = did_you_mean(key, list(QUEUE_KEYS))
    fix = f"did you mean '{guess}'?" if guess else "queue keys are: size, overflow"
    return Problem(f"unknown queue key '{key}'", fix=fix, key=f"queue.{key}")


def _shown(value: Any, interpolated: str | None) -> str:
    """A value as messages show it: its ``repr``, or only its type and where it came from."""
    if not interpolated:
        return repr(value)
    noun = type(value).__name__
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun} from {interpolated}"
