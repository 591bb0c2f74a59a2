"""Load a graph from YAML, checking everything before anything runs and reporting every problem at once.

Reference::

    name: transcribe-file          # optional; default: the file name without extension
    description: "..."             # optional; shown by the CLI
    settings:                      # optional
      auto_resample: false         # insert audio.resample nodes where audio formats differ
      start_timeout: 300.0         # seconds every on_start together may take (model loading)
      end_timeout: 10.0            # seconds stop() lets the end drain before cancelling
      cancel_timeout: 5.0          # seconds each processor gets to stop when cancelled
    nodes:                         # required: node name -> node
      src: {type: source.tone, frequency: 440, duration: 1.0}
      vad:
        type: vad.webrtc           # required: a registered type or an import path 'package.module:Class'
        aggressiveness: 2          # every other key is a param of the type, checked against its Params
        queue:                     # optional: the node's inbox
          size: 32                 #   bound in frames (>= 1); default: the type's queue_size
          overflow: drop_oldest    #   block (backpressure) or drop_oldest (live audio)
      out: {type: debug.print}
    edges:                         # frames flow along these, downstream
      - src -> vad -> out          # a chain is one edge per arrow
      - [src, out]                 # or a two-item list
                                   # fan-out / fan-in: name a node in several edges

Node names use letters, digits, ``_`` and ``-``. ``type`` and ``queue`` are reserved keys, not params.

Environment variables: every string *value* (not keys, not edges) may use ``${VAR}``, ``${VAR:-default}``
(used when ``VAR`` is unset or empty), and ``$$`` for a literal ``$``. A value that is exactly one
``${...}`` is read as a YAML scalar once substituted, so ``port: ${PORT:-8000}`` is the number 8000
(a param typed ``str`` still gets the text). In a flow mapping (``{...}``) quote it:
``{port: "${PORT:-8000}"}``. Substituted values and ``secret`` params never appear in messages.

Overrides (``--set``): ``node.param=value``, ``node.queue.size=value``, ``node.type=value`` or
``settings.key=value``; the value is read as a YAML scalar (``--set vad.aggressiveness=3`` is the int 3)
or a flow list (``--set out.kinds=[transcript,llm_text]``). Overrides are checked like the file's values;
``settings.`` always means the settings, so a node named ``settings`` cannot be overridden.

Mappings may use YAML anchors and merge keys (``<<: *base``) to share settings between nodes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import Problem, UnknownTypeError, ValidationError
from pipeline.formats import AudioFormat
from pipeline.graph import Edge, Graph, find_cycle, structure_problems
from pipeline.inbox import Overflow
from pipeline.negotiate import ResamplerFactory, diagnose, insert_resamplers
from pipeline.params import build_params, convert, did_you_mean, type_name
from pipeline.processor import Processor
from pipeline.registry import resolve

TOP_LEVEL_KEYS = ("name", "description", "settings", "nodes", "edges")
QUEUE_KEYS = ("size", "overflow")
NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
EDGE_FIX = "write edges as 'a -> b' (a chain: 'a -> b -> c') or as a two-item list [a, b]"

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHOLE_REFERENCE = re.compile(r"\$\{[^}]*\}")


@dataclass(slots=True)
class Settings:
    """Graph-wide settings (``settings:`` in YAML)."""

    auto_resample: bool = False
    """Insert ``audio.resample`` nodes where a consumer cannot take the audio it is given."""
    start_timeout: float = 300.0
    """Seconds all ``on_start`` hooks together may take."""
    end_timeout: float = 10.0
    """Seconds ``Graph.stop()`` lets the end drain before cancelling."""
    cancel_timeout: float = 5.0
    """Seconds each processor gets to stop when the graph is cancelled."""


@dataclass(slots=True)
class NodeSpec:
    """One node as written: type, raw param values, and where each key is (for messages)."""

    name: str
    type: str | None = None
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    """Param values as written, interpolated (may hold secrets: left out of ``repr``)."""
    queue: Any = None
    """The ``queue:`` value as written (checked when the graph is built)."""
    line: int | None = None
    """Line of the node's name."""
    lines: dict[str, int] = field(default_factory=dict)
    """Line of each key: ``type``, ``queue``, ``queue.size``, param names."""
    interpolated: dict[str, str] = field(default_factory=dict)
    """Key -> the ``${...}`` references its value came from (the value itself is never shown)."""
    substituted: dict[str, str] = field(default_factory=dict, repr=False)
    """Key -> substituted text, for values that were exactly one ``${...}`` (typed re-parse fallback)."""
    overridden: set[str] = field(default_factory=set)
    """Keys set by ``--set``."""

    def line_of(self, key: str | None) -> int | None:
        """Where to report a problem with ``key``: its line, else the ``type:`` line, else the node's."""
        if key is not None and key in self.lines:
            return self.lines[key]
        return self.lines.get("type", self.line)


@dataclass(slots=True)
class GraphSpec:
    """A parsed, interpolated, line-annotated config; ``check`` and ``load`` turn it into a graph."""

    name: str
    file: str
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """Raw ``settings:`` values (checked when the graph is built)."""
    nodes: dict[str, NodeSpec] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    edge_lines: list[int | None] = field(default_factory=list)
    """Line of each edge, parallel to ``edges``."""
    lines: dict[str, int] = field(default_factory=dict)
    """Line of each top-level key and of each ``settings.<key>``."""
    interpolated: dict[str, str] = field(default_factory=dict)
    """``settings.<key>`` -> the ``${...}`` references its value came from."""
    overridden: set[str] = field(default_factory=set)
    """``settings.<key>`` set by ``--set``."""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Sensitive text -> what to show instead (substituted environment values, secret params)."""


@dataclass(slots=True)
class Compiled:
    """A config that passed every check: ready-to-run processors and edges."""

    spec: GraphSpec
    settings: Settings
    processors: dict[str, Processor]
    edges: list[Edge]

    def graph(self) -> Graph:
        """A new ``Graph`` of these processors (build it once: processors are wired in place)."""
        return Graph(
            self.processors,
            self.edges,
            name=self.spec.name,
            start_timeout=self.settings.start_timeout,
            end_timeout=self.settings.end_timeout,
            cancel_timeout=self.settings.cancel_timeout,
        )


def load(path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Graph:
    """Build a ready-to-run graph from a YAML file; raises ``ValidationError`` listing every problem."""
    return _loaded(*compile_config(path, overrides, env))


def load_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Graph:
    """Like ``load``, from YAML text; ``filename`` is what messages call it."""
    return _loaded(*compile_text(text, filename, overrides, env))


def check(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem of a config file ([] when it is valid). Never raises for a bad config."""
    return compile_config(path, overrides, env)[1]


def check_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[Problem]:
    """Like ``check``, from YAML text."""
    return compile_text(text, filename, overrides, env)[1]


def parse(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[GraphSpec | None, list[Problem]]:
    """Read, interpolate and override a config file without resolving types (shape problems only)."""
    text, problem = _read(path)
    if problem is not None:
        return None, [problem]
    return parse_text(text, str(path), overrides, env)


def parse_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[GraphSpec | None, list[Problem]]:
    """Like ``parse``, from YAML text."""
    reader = _Reader(filename, os.environ if env is None else env)
    spec = reader.read(text)
    if spec is not None:
        _apply_overrides(spec, overrides, reader.problems)
    return spec, _finished(reader.problems, spec.secrets if spec else reader.secrets)


def compile_config(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[Compiled | None, list[Problem]]:
    """Parse and check a config file: (the compiled graph or None, every problem)."""
    text, problem = _read(path)
    if problem is not None:
        return None, [problem]
    return compile_text(text, str(path), overrides, env)


def compile_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[Compiled | None, list[Problem]]:
    """Like ``compile_config``, from YAML text."""
    reader = _Reader(filename, os.environ if env is None else env)
    spec = reader.read(text)
    if spec is None:
        return None, _finished(reader.problems, reader.secrets)
    _apply_overrides(spec, overrides, reader.problems)
    builder = _Builder(spec, reader.problems)
    compiled = builder.build()
    problems = _finished(builder.problems, spec.secrets)
    return (None if problems else compiled), problems


def parse_scalar(text: str) -> Any:
    """Read ``text`` as one YAML scalar: ``3`` -> 3, ``true`` -> True, ``~`` -> None, ``a: b`` -> 'a: b'."""
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(yaml.ScalarNode(tag, text))
    except yaml.YAMLError:
        return text
    finally:
        loader.dispose()


# --- reading -------------------------------------------------------------------------------------


def _read(path: str | Path) -> tuple[str, Problem | None]:
    try:
        return Path(path).read_text(encoding="utf-8"), None
    except OSError as error:
        reason = error.strerror or str(error)
        return "", Problem(f"cannot read the config: {reason}", fix="check the path", file=str(path))
    except UnicodeDecodeError:
        return "", Problem("the config is not UTF-8 text", fix="save it as UTF-8", file=str(path))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Reader:
    """YAML text -> ``GraphSpec``, collecting every shape and interpolation problem."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[Problem] = []
        self.secrets: dict[str, str] = {}
        self._loader = yaml.SafeLoader("")
        self._inherited: dict[int, int] = {}  # mapping -> how many of its entries came from merge keys

    def problem(
        self, message: str, fix: str, line: int | None, node: str | None = None, key: str | None = None
    ) -> None:
        self.problems.append(Problem(message, fix=fix, node=node, key=key, file=self.file, line=line))

    def read(self, text: str) -> GraphSpec | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            context = f" ({error.context})" if error.context else ""
            self.problem(
                f"YAML syntax error: {error.problem}{context}",
                fix="check indentation and quoting here; quote values that contain ': ', ' #', '{' or '['",
                line=int(mark.line) + 1 if mark is not None else None,
            )
            return None
        except yaml.YAMLError as error:
            self.problem(f"YAML error: {error}", fix="check the file is YAML", line=None)
            return None
        stem = Path(self.file).stem
        spec = GraphSpec(name=stem if not self.file.startswith("<") else "graph", file=self.file)
        spec.secrets = self.secrets
        if root is None:
            self.problem(
                "the config is empty", fix="declare nodes: and edges: (see configs/examples)", line=1
            )
            return spec
        if not isinstance(root, yaml.MappingNode):
            self.problem(
                "the top level must be a mapping with nodes: and edges:",
                fix="start the file with 'nodes:' (see configs/examples)",
                line=_line(root),
            )
            return spec
        sections = {}
        for key, key_node, value in self.items(root):
            spec.lines[key] = _line(key_node)
            if key not in TOP_LEVEL_KEYS:
                guess = did_you_mean(key, list(TOP_LEVEL_KEYS))
                self.problem(
                    f"unknown top-level key '{key}'",
                    fix=f"did you mean '{guess}'?"
                    if guess
                    else "top-level keys are: " + ", ".join(TOP_LEVEL_KEYS),
                    line=_line(key_node),
                )
            else:
                sections[key] = value
        for key in ("name", "description"):
            if key in sections:
                value, _ = self.value(sections[key], None, key)
                if isinstance(value, str) and key == "name":
                    spec.name = value
                elif isinstance(value, str):
                    spec.description = value
                elif value is not None:
                    self.problem(f"'{key}' must be text", fix=f'quote it: {key}: "..."', line=spec.lines[key])
        if "settings" in sections:
            self.read_settings(spec, sections["settings"])
        if "nodes" not in sections:
            self.problem(
                "no nodes: declared",
                fix="add a nodes: mapping, e.g. 'nodes: {src: {type: source.tone}}'",
                line=_line(root),
            )
        else:
            self.read_nodes(spec, sections["nodes"], spec.lines["nodes"])
        if "edges" in sections:
            self.read_edges(spec, sections["edges"])
        return spec

    def items(
        self, mapping: yaml.MappingNode, node: str | None = None
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) of a mapping, merge keys applied; reports duplicate and odd keys."""
        if id(mapping) not in self._inherited:
            explicit = sum(1 for k, _ in mapping.value if k.tag != _MERGE_TAG)
            try:
                self._loader.flatten_mapping(mapping)
            except yaml.YAMLError as error:
                self.problem(
                    f"bad merge key: {getattr(error, 'problem', error)}",
                    fix="merge a mapping: '<<: *name'",
                    line=_line(mapping),
                    node=node,
                )
            self._inherited[id(mapping)] = len(mapping.value) - explicit
        inherited = self._inherited[id(mapping)]  # merged entries come first, explicit ones override them
        found: dict[str, tuple[str, yaml.Node, yaml.Node]] = {}
        explicit_keys: set[str] = set()
        for index, (key_node, value) in enumerate(mapping.value):
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                self.problem(
                    f"key {shown!s} is not a name", fix="quote the key", line=_line(key_node), node=node
                )
                continue
            key = str(key_node.value)
            if key in explicit_keys:
                self.problem(
                    f"key '{key}' appears twice (also on line {_line(found[key][1])})",
                    fix="remove one; the later one would silently win",
                    line=_line(key_node),
                    node=node,
                    key=key,
                )
                continue
            found[key] = (key, key_node, value)
            if index >= inherited:
                explicit_keys.add(key)
        return list(found.values())

    def value(self, node: yaml.Node, owner: str | None, key: str, depth: int = 0) -> tuple[Any, list[str]]:
        """The Python value of a YAML value with ``${...}`` substituted, and the references used."""
        if depth > 50:
            self.problem(
                "value nests too deeply (a recursive alias?)",
                fix="simplify it",
                line=_line(node),
                node=owner,
                key=key,
            )
            return None, []
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:
                text, references = self.substitute(str(node.value), _line(node), owner, key)

                if references and _WHOLE_REFERENCE.fullmatch(str(node.value)):
                    return parse_scalar(text), references
                return text, references
            try:
                return self._loader.construct_object(node), []
            except yaml.YAMLError as error:
                self.problem(
                    f"cannot read value: {getattr(error, 'problem', error)}",
                    fix="remove the tag or quote the value",
                    line=_line(node),
                    node=owner,
                    key=key,
                )
                return None, []
        collected: list[str] = []
        if isinstance(node, yaml.SequenceNode):
            items = []
            for item in node.value:
                value, used = self.value(item, owner, key, depth + 1)
                items.append(value)
                collected += used
            return items, collected
        assert isinstance(node, yaml.MappingNode)
        mapping = {}
        for name, _, item in self.items(node, owner):
            value, used = self.value(item, owner, key, depth + 1)
            mapping[name] = value
            collected += used
        return mapping, collected

    def substitute(
        self, text: str, line: int, owner: str | None, key: str, report: bool = True
    ) -> tuple[str, list[str]]:
        """Substitute ``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``; also the references used."""
        problem = self.problem if report else _ignore
        if "$" not in text:
            return text, []
        out: list[str] = []
        references: list[str] = []
        index = 0
        while index < len(text):
            dollar = text.find("$", index)
            if dollar < 0:
                out.append(text[index:])
                break
            out.append(text[index:dollar])
            following = text[dollar + 1 : dollar + 2]
            if following == "$":
                out.append("$")
                index = dollar + 2
                continue
            if following != "{":
                out.append("$")
                index = dollar + 1
                continue
            close = text.find("}", dollar)
            if close < 0:
                problem(
                    f"unclosed '${{' in the value of '{key}'",
                    fix="close it with '}', or write '$$' for a literal '$'",
                    line=line,
                    node=owner,
                    key=key,
                )
                return text, references
            reference = text[dollar : close + 1]
            name, has_default, default = text[dollar + 2 : close].partition(":-")
            index = close + 1
            if not _VARIABLE.fullmatch(name):
                problem(
                    f"'{reference}' is not a variable reference",
                    fix="write ${NAME} or ${NAME:-default} (letters, digits, _), or '$$' for a literal '$'",
                    line=line,
                    node=owner,
                    key=key,
                )
                continue
            references.append(f"${{{name}}}")
            value = self.env.get(name)
            if value:
                if len(value) >= 4:
                    self.secrets[value] = f"${{{name}}}"
                out.append(value)
            elif has_default:
                out.append(default)
            elif value is None:
                problem(
                    f"environment variable {name} is not set",
                    fix=f"export {name}=... or give a default: ${{{name}:-...}}",
                    line=line,
                    node=owner,
                    key=key,
                )
            else:
                out.append(value)
        return "".join(out), references

    def read_settings(self, spec: GraphSpec, node: yaml.Node) -> None:
        if _is_null(node):
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                "settings must be a mapping", fix="e.g. 'settings: {auto_resample: true}'", line=_line(node)
            )
            return
        for key, key_node, value_node in self.items(node):
            path = f"settings.{key}"
            value, references = self.value(value_node, None, path)
            spec.settings[key] = value
            spec.lines[path] = _line(key_node)
            if references:
                spec.interpolated[path] = ", ".join(dict.fromkeys(references))

    def read_nodes(self, spec: GraphSpec, node: yaml.Node, line: int) -> None:
        if _is_null(node) or (isinstance(node, yaml.MappingNode) and not node.value):
            self.problem(
                "nodes: is empty", fix="declare at least one node, e.g. 'src: {type: source.tone}'", line=line
            )
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                "nodes: must be a mapping of node name to node",
                fix="e.g. 'nodes: {src: {type: source.tone}}'",
                line=line,
            )
            return
        for name, key_node, value in self.items(node):
            line = _line(key_node)
            if not NODE_NAME.fullmatch(name):
                self.problem(
                    f"node name '{name}' cannot be used in edges",
                    fix="use letters, digits, '_' and '-', starting with a letter or '_'",
                    line=line,
                    node=name,
                )
            spec.nodes[name] = self.read_node(name, line, value)

    def read_node(self, name: str, line: int, node: yaml.Node) -> NodeSpec:
        spec = NodeSpec(name=name, line=line)
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                "a node must be a mapping with a type:",
                fix=f"write '{name}: {{type: <type>, ...params}}'",
                line=line,
                node=name,
            )
            return spec
        for key, key_node, value_node in self.items(node, name):
            spec.lines[key] = _line(key_node)
            value, references = self.value(value_node, name, key)
            if references:
                spec.interpolated[key] = ", ".join(dict.fromkeys(references))
                if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _STR_TAG:
                    spec.substituted[key] = self.substitute(
                        str(value_node.value), 0, name, key, report=False
                    )[0]
            if key == "type":
                if isinstance(value, str) and value:
                    spec.type = value
                else:
                    self.problem(
                        "type must be a type name",
                        fix="e.g. 'type: source.tone'",
                        line=_line(key_node),
                        node=name,
                        key=key,
                    )
            elif key == "queue":
                spec.queue = value
                if isinstance(value_node, yaml.MappingNode):
                    for queue_key_node, _ in value_node.value:
                        spec.lines.setdefault(f"queue.{queue_key_node.value}", _line(queue_key_node))
            else:
                spec.params[key] = value
        if spec.type is None and "type" not in spec.lines:
            self.problem(
                "missing 'type'",
                fix="add 'type: <type>'; 'python -m pipeline list' shows every type",
                line=line,
                node=name,
            )
        return spec

    def read_edges(self, spec: GraphSpec, node: yaml.Node) -> None:
        if _is_null(node):
            return
        if not isinstance(node, yaml.SequenceNode):
            self.problem("edges must be a list", fix=EDGE_FIX, line=_line(node))
            return
        for item in node.value:
            line = _line(item)
            names: list[str] = []
            if isinstance(item, yaml.ScalarNode) and item.tag == _STR_TAG:
                names = [part.strip() for part in str(item.value).split("->")]
                shown = str(item.value)
            elif isinstance(item, yaml.SequenceNode):
                scalars = [v for v in item.value if isinstance(v, yaml.ScalarNode) and v.tag == _STR_TAG]
                names = [str(v.value).strip() for v in scalars]
                shown = "[" + ", ".join(names) + "]"
                if len(scalars) != len(item.value) or len(names) != 2:
                    self.problem(
                        f"edge {shown} is not a pair of node names",
                        fix="a list edge has exactly two names; for a chain write 'a -> b -> c'",
                        line=line,
                        key="edges",
                    )
                    continue
            else:
                self.problem(
                    "an edge must be text like 'a -> b' or a pair [a, b]",
                    fix=EDGE_FIX,
                    line=line,
                    key="edges",
                )
                continue
            if len(names) < 2 or not all(NODE_NAME.fullmatch(n) for n in names):
                self.problem(f"cannot read edge '{shown}'", fix=EDGE_FIX, line=line, key="edges")
                continue
            for a, b in itertools.pairwise(names):
                spec.edges.append((a, b))
                spec.edge_lines.append(line)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``_Reader.problem`` when a value is substituted a second time."""


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _apply_overrides(spec: GraphSpec, overrides: Iterable[str], problems: list[Problem]) -> None:
    """Apply ``--set target=value`` strings to the spec (values are checked with the rest)."""
    for item in overrides:
        target, equals, raw = item.partition("=")
        target = target.strip()
        head, dot, key = target.partition(".")
        where = f"--set {target}"
        if not equals or not dot or not head or not key:
            problems.append(
                Problem(
                    f"'{target}' is not node.param=value",
                    fix="e.g. --set vad.aggressiveness=3 or --set settings.end_timeout=5",
                    file=where,
                )
            )
            continue
        value = _override_value(raw.strip())
        if head == "settings":
            spec.settings[key] = value
            spec.overridden.add(f"settings.{key}")
            spec.interpolated.pop(f"settings.{key}", None)
            continue
        node = spec.nodes.get(head)
        if node is None:
            guess = did_you_mean(head, [*spec.nodes, "settings"])
            problems.append(
                Problem(
                    f"unknown node '{head}'",
                    fix=f"did you mean '{guess}'?" if guess else "nodes are: " + ", ".join(spec.nodes),
                    file=where,
                )
            )
            continue
        if key == "type":
            node.type = value if isinstance(value, str) else str(value)
        elif key.startswith("queue."):
            node.queue = dict(node.queue) if isinstance(node.queue, dict) else {}
            node.queue[key.removeprefix("queue.")] = value
        else:
            node.params[key] = value
        node.overridden.add(key)
        node.interpolated.pop(key, None)
        node.substituted.pop(key, None)


def _override_value(text: str) -> Any:
    """A ``--set`` value: a YAML scalar, or a flow list/mapping (``[a, b]``, ``{k: v}``)."""
    if text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return parse_scalar(text)


# --- building ------------------------------------------------------------------------------------


class _Builder:
    """``GraphSpec`` -> processors and edges, with every type, param, structure and negotiation problem."""

    def __init__(self, spec: GraphSpec, problems: list[Problem]) -> None:
        self.spec = spec
        self.problems = problems
        self.classes: dict[str, type[Processor] | None] = {}
        self.processors: dict[str, Processor] = {}
        self.edge_line: dict[Edge, int | None] = {}
        for edge, line in zip(spec.edges, spec.edge_lines, strict=True):
            self.edge_line.setdefault(edge, line)

    def report(self, problem: Problem, node: NodeSpec | None = None) -> None:
        """Record ``problem`` with its file and line (``--set`` problems name the override instead)."""
        if node is not None:
            problem.node = problem.node or node.name
            key = problem.key
            if key is not None and key in node.overridden:
                problem.file = f"--set {node.name}.{key}"
                problem.line = None
            else:
                problem.file = self.spec.file
                problem.line = node.line_of(key)
        else:
            problem.file = problem.file or self.spec.file
        self.problems.append(problem)

    def build(self) -> Compiled:
        settings = self.settings()
        for node in self.spec.nodes.values():
            self.node(node)
        edges = self.structure()
        processors, edges = self.negotiate(settings, edges)
        return Compiled(self.spec, settings, processors, edges)

    def settings(self) -> Settings:
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(Settings)
        known = [f.name for f in dataclasses.fields(Settings)]
        for key, value in self.spec.settings.items():
            path = f"settings.{key}"
            problem: Problem | None = None
            if key not in known:
                guess = did_you_mean(key, known)
                fix = f"did you mean '{guess}'?" if guess else "settings are: " + ", ".join(known)
                problem = Problem(f"unknown setting '{key}'", fix=fix, key=key)
            else:
                converted, expected = convert(value, hints[key])
                if not expected and isinstance(converted, float) and converted <= 0:
                    expected = "a number of seconds above 0"
                if not expected:
                    values[key] = converted
                    continue
                interpolated = self.spec.interpolated.get(path)
                shown = f"{_a(type(value).__name__)} from {interpolated}" if interpolated else repr(value)
                message = f"setting '{key}' expects {type_name(hints[key])}, got {shown}"
                problem = Problem(message, fix=f"set {key} to {expected}", key=key)
            if path in self.spec.overridden:
                problem.file = f"--set {path}"
            else:
                problem.file, problem.line = self.spec.file, self.spec.lines.get(path)
            self.problems.append(problem)
        return Settings(**values)

    def node(self, node: NodeSpec) -> None:
        cls = self.resolve(node)
        self.classes[node.name] = cls
        kwargs = self.queue(node)
        if cls is None:
            return
        try:
            params, problems = self.params(node, cls)
        except Exception as error:  # a Params that is not a dataclass, or whose __post_init__ raises
            params, problems = (
                None,
                [
                    Problem(
                        f"checking the params of {cls.__name__} failed: {type(error).__name__}: {error}",
                        fix=f"{cls.__name__}.Params must be a dataclass of typed fields",
                        key="type",
                    )
                ],
            )
        for problem in problems:
            self.report(problem, node)
        if problems:
            return
        try:  # built even with a bad queue: negotiation can still check it
            self.processors[node.name] = cls(params, name=node.name, **kwargs)
        except ValidationError as error:
            for problem in error.problems:
                self.report(problem, node)
        except Exception as error:
            self.report(
                Problem(
                    f"creating {cls.__name__} failed: {type(error).__name__}: {error}",
                    fix="check the node's params; heavy work belongs in on_start",
                    key="type",
                ),
                node,
            )

    def params(self, node: NodeSpec, cls: type[Processor]) -> tuple[Any, list[Problem]]:
        """The node's params object, or the problems with its values (never showing substituted ones)."""
        hints = typing.get_type_hints(cls.Params)
        secret = {f.name for f in dataclasses.fields(cls.Params) if f.metadata.get("secret")}
        values = dict(node.params)
        for key, text in node.substituted.items():
            if key in hints and convert(values[key], hints[key])[1] and not convert(text, hints[key])[1]:
                values[key] = text  # ${ZIP} = 01234 for a str param stays "01234"
        for key in secret & values.keys():
            if isinstance(values[key], str) and len(values[key]) >= 4:
                self.spec.secrets.setdefault(values[key], "<secret>")
        params, problems = build_params(cls.Params, values, node=node.name)
        for problem in problems:
            if problem.key in node.interpolated and ", got " in problem.message:
                value = values[problem.key]
                problem.message = (
                    problem.message.partition(", got ")[0]
                    + f", got {_a(type(value).__name__)} from {node.interpolated[problem.key]}"
                )
        return params, problems

    def resolve(self, node: NodeSpec) -> type[Processor] | None:
        if node.type is None:
            return None
        try:
            return resolve(node.type)
        except UnknownTypeError as error:
            message, _, fix = str(error).rpartition("; ")
            if not message:
                message, fix = fix, "run 'python -m pipeline list' to see every type"
            self.report(Problem(message, fix=fix, key="type"), node)
        except Exception as error:
            self.report(
                Problem(
                    f"loading type '{node.type}' failed: {type(error).__name__}: {error}",
                    fix="check that the package providing it is installed and imports cleanly",
                    key="type",
                ),
                node,
            )
        return None

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
            if key not in QUEUE_KEYS:
                guess = did_you_mean(key, list(QUEUE_KEYS))
                fix = f"did you mean '{guess}'?" if guess else "queue keys are: size, overflow"
                self.report(Problem(f"unknown queue key '{key}'", fix=fix, key=f"queue.{key}"), node)
            elif key == "size":
                if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                    kwargs["queue_size"] = value
                else:
                    shown = "the value" if "queue" in node.interpolated else repr(value)
                    self.report(
                        Problem(
                            f"queue size must be a whole number >= 1, got {shown}",
                            fix="e.g. 'size: 32'",
                            key="queue.size",
                        ),
                        node,
                    )
            else:
                choices = [o.value for o in Overflow]
                if value in choices:
                    kwargs["overflow"] = Overflow(value)
                else:
                    shown = "the value" if "queue" in node.interpolated else repr(value)
                    self.report(
                        Problem(
                            f"queue overflow must be {' or '.join(choices)}, got {shown}",
                            fix="block: backpressure (text, files); drop_oldest: live audio",
                            key="queue.overflow",
                        ),
                        node,
                    )
        return kwargs

    def structure(self) -> list[Edge]:
        """Report structure problems; returns the edges worth negotiating (known ends, no duplicates)."""
        unresolved = {n for n, c in self.classes.items() if c is None}
        nodes: dict[str, Any] = {n: (c if c is not None else object) for n, c in self.classes.items()}
        edges = self.spec.edges
        problems = structure_problems(nodes, edges)
        usable = list(dict.fromkeys((a, b) for a, b in edges if a in nodes and b in nodes))
        broken = {end for a, b in edges if a not in nodes or b not in nodes for end in (a, b)}
        for problem in problems:
            if problem.node in unresolved and not problem.message.startswith("edge "):
                continue  # whether it is a source is unknown: its type is already reported
            if problem.node in broken and problem.message.startswith("nothing feeds"):
                continue  # follows from a misspelt edge, reported already
            self.locate(problem)
        return usable

    def locate(self, problem: Problem) -> None:
        """Give a structure problem the line of the edge or node it is about."""
        problem.file = self.spec.file
        message = problem.message
        if message.startswith("edge "):
            twice = message.endswith("declared twice")
            counts: dict[Edge, int] = {}
            for (a, b), line in zip(self.spec.edges, self.spec.edge_lines, strict=True):
                counts[(a, b)] = counts.get((a, b), 0) + 1
                if message.startswith(f"edge {a} -> {b} ") and (not twice or counts[(a, b)] == 2):
                    problem.line = line
                    break
        elif message.startswith("edges form a cycle"):
            known = [(a, b) for a, b in self.spec.edges if a in self.spec.nodes and b in self.spec.nodes]
            cycle = find_cycle(list(self.spec.nodes), known) or []
            if cycle:
                problem.line = self.edge_line.get((cycle[-1], cycle[0]))
        elif problem.node in self.spec.nodes:
            node = self.spec.nodes[problem.node]
            into = [line for (a, b), line in self.edge_line.items() if b == problem.node]
            problem.line = into[0] if "is a source" in message and into else node.line
        self.problems.append(problem)

    def negotiate(self, settings: Settings, edges: list[Edge]) -> tuple[dict[str, Processor], list[Edge]]:
        """Frame kinds and audio formats over the nodes that were built (and all they depend on)."""
        tainted = {n for n in self.spec.nodes if n not in self.processors}
        for name in _descendants_of(tainted, edges):
            tainted.add(name)
        processors = {n: p for n, p in self.processors.items() if n not in tainted}
        edges = [(a, b) for a, b in edges if a in processors and b in processors]
        if settings.auto_resample:
            factory = self.resampler_factory()
            if factory is not None:
                processors, edges = insert_resamplers(processors, edges, factory)
        for finding in diagnose(processors, edges):
            problem = finding.problem
            problem.file = self.spec.file
            node = self.spec.nodes.get(problem.node or "")
            line = self.edge_line.get(finding.edge) if finding.edge else None
            problem.line = line or (node.line_of(None) if node else None)
            self.problems.append(problem)
        return processors, edges

    def resampler_factory(self) -> ResamplerFactory | None:
        try:
            cls = resolve("audio.resample")
        except Exception as error:
            line = self.spec.lines.get("settings.auto_resample")
            self.problems.append(
                Problem(
                    f"auto_resample needs the audio.resample type: {error}",
                    fix="reinstall voxgraph, or add resample nodes by hand",
                    file=self.spec.file,
                    line=line,
                )
            )
            return None

        def factory(name: str, target: AudioFormat) -> Processor:
            return cls(name=name, sample_rate=target.sample_rate, channels=target.channels)

        return factory


def _descendants_of(names: set[str], edges: list[Edge]) -> set[str]:
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


def _finished(problems: list[Problem], secrets: Mapping[str, str]) -> list[Problem]:
    """Hide sensitive text in every message, then order by line (problems without a line last)."""
    hidden = sorted(secrets.items(), key=lambda item: -len(item[0]))
    for problem in problems:
        for text, shown in hidden:
            problem.message = problem.message.replace(text, shown)
            problem.fix = problem.fix.replace(text, shown)
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def _loaded(compiled: Compiled | None, problems: list[Problem]) -> Graph:
    if compiled is None or problems:
        raise ValidationError(problems)
    return compiled.graph()
