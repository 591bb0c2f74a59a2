"""Line-aware YAML: read a document's mappings and values while keeping the line of every key.

Constructed Python objects forget where they came from, so configs are read from PyYAML's composed
node tree instead: each problem can point at the line the user wrote. String values have their
``${...}`` references substituted on the way (``pipeline.interpolate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.config.interpolate import is_whole_reference, substitute
from pipeline.errors import Problem

STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
NULL_TAG = "tag:yaml.org,2002:null"
MAX_DEPTH = 50
"""Deeper values are taken for a recursive alias (``&a [*a]``), which would never finish."""

Entry = tuple[str, yaml.Node, yaml.Node]
"""A mapping entry: (key, key node, value node)."""


@dataclass(slots=True)
class Value:
    """A YAML value read into Python, and what interpolation did to it."""

    value: Any
    references: list[str] = field(default_factory=list)
    """``${NAME}`` of every variable used, in order."""
    text: str | None = None
    """For a value written as exactly one ``${...}``: its substituted text, before it was read as a scalar."""

    @property
    def interpolated(self) -> str:
        """What messages say the value came from: ``${A}, ${B}`` ('' when nothing was substituted)."""
        return ", ".join(dict.fromkeys(self.references))


def line(node: yaml.Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


def is_text(node: yaml.Node) -> bool:
    """A plain string scalar (not a number, a null or an explicitly tagged value)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


def compose(text: str, file: str) -> yaml.Node | Problem | None:
    """The document's root node, None for an empty document, or the syntax problem."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        context = f" ({error.context})" if error.context else ""
        return Problem(
            f"YAML syntax error: {error.problem}{context}",
            fix="check indentation and quoting here; quote values that contain ': ', ' #', '{' or '['",
            file=file,
            line=int(mark.line) + 1 if mark is not None else None,
        )
    except yaml.YAMLError as error:
        return Problem(f"YAML error: {error}", fix="check the file is YAML", file=file)


def parse_scalar(text: str) -> Any:
    """Read ``text`` as one YAML scalar: ``3`` -> 3, ``true`` -> True, ``~`` -> None, ``a: b`` -> 'a: b'."""
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(yaml.ScalarNode(tag, text))
    except (yaml.YAMLError, ValueError):  # looks like a number or date but is none: '0x_', '2001-13-45'
        return text
    finally:
        loader.dispose()


class YamlSource:
    """One document being read: the problems found and the secrets substitution revealed so far."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[Problem] = []
        self.secrets: dict[str, str] = {}
        self._loader = yaml.SafeLoader("")
        self._inherited: dict[yaml.Node, int] = {}

    def problem(
        self, message: str, fix: str, line: int | None, node: str | None = None, key: str | None = None
    ) -> None:
        self.problems.append(Problem(message, fix=fix, node=node, key=key, file=self.file, line=line))

    def items(self, mapping: yaml.MappingNode, node: str | None = None) -> list[Entry]:
        """The entries of a mapping, merge keys applied; reports keys that are not names or appear twice.

        A key may repeat one it inherited through ``<<:`` (that is how merges are overridden), but not
        one written in the mapping itself: the later one would silently win.
        """
        inherited = self._merge(mapping, node)
        found: dict[str, Entry] = {}
        written: set[str] = set()
        for index, (key_node, value) in enumerate(mapping.value):
            if not is_text(key_node):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                self.problem(f"key {shown!s} is not a name", "quote the key", line(key_node), node)
                continue
            key = str(key_node.value)
            if key in written:
                self.problem(
                    f"key '{key}' appears twice (also on line {line(found[key][1])})",
                    fix="remove one; the later one would silently win",
                    line=line(key_node),
                    node=node,
                    key=key,
                )
                continue
            found[key] = (key, key_node, value)
            if index >= inherited:
                written.add(key)
        return list(found.values())

    def value(self, node: yaml.Node, owner: str | None, key: str, depth: int = 0) -> Value:
        """The Python value of ``key``'s YAML value (of node ``owner``), ``${...}`` substituted."""
        if depth > MAX_DEPTH:
            self.problem("value nests too deeply (a recursive alias?)", "simplify it", line(node), owner, key)
            return Value(None)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, owner, key)
        if isinstance(node, yaml.SequenceNode):
            items = [self.value(item, owner, key, depth + 1) for item in node.value]
            return Value([v.value for v in items], [r for v in items for r in v.references])
        assert isinstance(node, yaml.MappingNode)
        entries = [
            (name, self.value(item, owner, key, depth + 1)) for name, _, item in self.items(node, owner)
        ]
        return Value({name: v.value for name, v in entries}, [r for _, v in entries for r in v.references])

    def _scalar(self, node: yaml.ScalarNode, owner: str | None, key: str) -> Value:
        if not is_text(node):
            return self._tagged(node, owner, key)
        written = str(node.value)
        result = substitute(written, self.env, key)
        for problem in result.problems:
            problem.node, problem.file, problem.line = owner, self.file, line(node)
        self.problems += result.problems
        self.secrets.update(result.secrets)
        if result.references and is_whole_reference(written):
            return Value(parse_scalar(result.text), result.references, text=result.text)
        return Value(result.text, result.references)

    def _tagged(self, node: yaml.ScalarNode, owner: str | None, key: str) -> Value:
        """A number, boolean, null or explicitly tagged scalar, as PyYAML constructs it."""
        try:
            return Value(self._loader.construct_object(node))
        except yaml.YAMLError as error:
            reason = str(getattr(error, "problem", error))
        except Exception:  # the constructors raise plain errors for bad values: '!!int x'
            reason = "not a valid " + node.tag.replace("tag:yaml.org,2002:", "!!")
        fix = "remove the tag or quote the value"
        self.problem(f"cannot read value: {reason}", fix, line(node), owner, key)
        return Value(None)

    def _merge(self, mapping: yaml.MappingNode, node: str | None) -> int:
        """Apply the mapping's merge keys; returns how many of its entries they added (they come first).

        Merging rewrites the node in place and aliases share nodes, so each mapping is merged once and
        the count remembered: merged a second time, every entry would look written.
        """
        if mapping not in self._inherited:
            written = sum(1 for key_node, _ in mapping.value if key_node.tag != MERGE_TAG)
            try:
                self._loader.flatten_mapping(mapping)
            except yaml.YAMLError as error:
                self.problem(
                    f"bad merge key: {getattr(error, 'problem', error)}",
                    fix="merge a mapping: '<<: *name'",
                    line=line(mapping),
                    node=node,
                )
            self._inherited[mapping] = len(mapping.value) - written
        return self._inherited[mapping]
