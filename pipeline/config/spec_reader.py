"""YAML text -> ``GraphSpec``: the config's shape (top-level keys, settings, nodes, edges).

Only the shape is checked here, and every problem is collected rather than raised, so that a user
fixing a config sees all its mistakes at once. Types and param values are checked when it is built.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.spec import GraphSpec, NodeSpec
from pipeline.config.yaml_reader import YamlSource, compose, is_null, is_text, line
from pipeline.errors import Problem
from pipeline.params import did_you_mean

TOP_LEVEL_KEYS = ("name", "description", "plugins", "settings", "server", "nodes", "edges")
NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
"""What an edge can name: an arrow or a comma in a node name would make edges ambiguous."""
EDGE_FIX = "write edges as 'a -> b' (a chain: 'a -> b -> c') or as a two-item list [a, b]"


def read_spec(text: str, file: str, env: Mapping[str, str]) -> tuple[GraphSpec | None, list[Problem]]:
    """The spec of a config and every shape problem; no spec when the text is not YAML at all."""
    root = compose(text, file)
    if isinstance(root, Problem):
        return None, [root]
    source = YamlSource(file, env)
    name = "graph" if file.startswith("<") else Path(file).stem
    spec = GraphSpec(name=name, file=file, secrets=source.secrets)  # shared: reading values adds to it
    if root is None:
        source.problem("the config is empty", "declare nodes: and edges: (see configs/examples)", line=1)
    elif not isinstance(root, yaml.MappingNode):
        source.problem(
            "the top level must be a mapping with nodes: and edges:",
            fix="start the file with 'nodes:' (see configs/examples)",
            line=line(root),
        )
    else:
        _SpecReader(source, spec).read(root)
    return spec, source.problems


class _SpecReader:
    """Fills a ``GraphSpec`` from the document's root mapping."""

    def __init__(self, source: YamlSource, spec: GraphSpec) -> None:
        self.source = source
        self.spec = spec

    def read(self, root: yaml.MappingNode) -> None:
        sections = self.sections(root)
        for key in ("name", "description"):
            if key in sections:
                self.text_field(key, sections[key])
        if "plugins" in sections:
            self.plugins(sections["plugins"])
        if "settings" in sections:
            self.settings(sections["settings"])
        if "server" in sections:
            self.server(sections["server"])
        if "nodes" in sections:
            self.nodes(sections["nodes"], self.spec.lines["nodes"])
        else:
            self.source.problem(
                "no nodes: declared",
                fix="add a nodes: mapping, e.g. 'nodes: {src: {type: source.tone}}'",
                line=line(root),
            )
        if "edges" in sections:
            self.edges(sections["edges"])

    def sections(self, root: yaml.MappingNode) -> dict[str, yaml.Node]:
        """Top-level key -> value, reporting unknown keys."""
        sections = {}
        for key, key_node, value in self.source.items(root):
            self.spec.lines[key] = line(key_node)
            if key in TOP_LEVEL_KEYS:
                sections[key] = value
                continue
            guess = did_you_mean(key, list(TOP_LEVEL_KEYS))
            fix = f"did you mean '{guess}'?" if guess else "top-level keys are: " + ", ".join(TOP_LEVEL_KEYS)
            self.source.problem(f"unknown top-level key '{key}'", fix=fix, line=line(key_node))
        return sections

    def text_field(self, key: str, node: yaml.Node) -> None:
        value = self.source.value(node, None, key).value
        if isinstance(value, str):
            setattr(self.spec, key, value)
        elif value is not None:
            self.source.problem(
                f"'{key}' must be text", fix=f'quote it: {key}: "..."', line=self.spec.lines[key]
            )

    def plugins(self, node: yaml.Node) -> None:
        value = self.source.value(node, None, "plugins").value
        modules = [value] if isinstance(value, str) else value
        if value is None:
            return
        if not (isinstance(modules, list) and all(isinstance(m, str) and m for m in modules)):
            fix = "list module names, e.g. 'plugins: [my_nodes]' (my_nodes.py beside the config)"
            self.source.problem("plugins must be a list of module names", fix=fix, line=line(node))
            return
        self.spec.plugins = modules

    def settings(self, node: yaml.Node) -> None:
        if is_null(node):
            return
        if not isinstance(node, yaml.MappingNode):
            fix = "e.g. 'settings: {auto_resample: true}'"
            self.source.problem("settings must be a mapping", fix=fix, line=line(node))
            return
        self.section_values(node, "settings", self.spec.settings)

    def server(self, node: yaml.Node) -> None:
        self.spec.server = {}
        if is_null(node):
            return  # 'server:' alone: every default
        if not isinstance(node, yaml.MappingNode):
            fix = "e.g. 'server: {type: websocket, port: 8000}'"
            self.source.problem("server must be a mapping", fix=fix, line=line(node))
            return
        self.section_values(node, "server", self.spec.server)

    def section_values(self, node: yaml.MappingNode, section: str, values: dict[str, Any]) -> None:
        """Read a flat mapping of ``section`` into ``values``, keeping lines and interpolations."""
        for key, key_node, value_node in self.source.items(node):
            path = f"{section}.{key}"
            value = self.source.value(value_node, None, path)
            values[key] = value.value
            self.spec.lines[path] = line(key_node)
            if value.references:
                self.spec.interpolated[path] = value.interpolated

    def nodes(self, node: yaml.Node, at: int) -> None:
        if is_null(node) or (isinstance(node, yaml.MappingNode) and not node.value):
            fix = "declare at least one node, e.g. 'src: {type: source.tone}'"
            self.source.problem("nodes: is empty", fix=fix, line=at)
            return
        if not isinstance(node, yaml.MappingNode):
            fix = "e.g. 'nodes: {src: {type: source.tone}}'"
            self.source.problem("nodes: must be a mapping of node name to node", fix=fix, line=at)
            return
        for name, key_node, value in self.source.items(node):
            if not NODE_NAME.fullmatch(name):
                self.source.problem(
                    f"node name '{name}' cannot be used in edges",
                    fix="use letters, digits, '_' and '-', starting with a letter or '_'",
                    line=line(key_node),
                    node=name,
                )
            self.spec.nodes[name] = self.node(name, line(key_node), value)

    def node(self, name: str, at: int, node: yaml.Node) -> NodeSpec:
        spec = NodeSpec(name=name, line=at)
        if not isinstance(node, yaml.MappingNode):
            fix = f"write '{name}: {{type: <type>, ...params}}'"
            self.source.problem("a node must be a mapping with a type:", fix=fix, line=at, node=name)
            return spec
        for key, key_node, value_node in self.source.items(node, name):
            spec.lines[key] = line(key_node)
            value = self.source.value(value_node, name, key)
            if value.references:
                spec.interpolated[key] = value.interpolated
            if value.text is not None:
                spec.substituted[key] = value.text
            if key == "type":
                self.node_type(spec, value.value, line(key_node))
            elif key == "queue":
                spec.queue = value.value
                if isinstance(value_node, yaml.MappingNode):  # merged already, so inherited keys count
                    for queue_key, _ in value_node.value:
                        spec.lines.setdefault(f"queue.{queue_key.value}", line(queue_key))
            else:
                spec.params[key] = value.value
        if "type" not in spec.lines:
            fix = "add 'type: <type>'; 'python -m pipeline list' shows every type"
            self.source.problem("missing 'type'", fix=fix, line=at, node=name)
        return spec

    def node_type(self, spec: NodeSpec, value: Any, at: int) -> None:
        if isinstance(value, str) and value:
            spec.type = value
        else:
            fix = "e.g. 'type: source.tone'"
            self.source.problem("type must be a type name", fix=fix, line=at, node=spec.name, key="type")

    def edges(self, node: yaml.Node) -> None:
        if is_null(node):
            return
        if not isinstance(node, yaml.SequenceNode):
            self.source.problem("edges must be a list", fix=EDGE_FIX, line=line(node))
            return
        for item in node.value:
            names = self.edge_names(item)
            for a, b in itertools.pairwise(names or []):
                self.spec.edges.append((a, b))
                self.spec.edge_lines.append(line(item))

    def edge_names(self, item: yaml.Node) -> list[str] | None:
        """The names in one ``edges:`` entry (a chain or a pair), or None once what is wrong is reported."""
        at = line(item)
        if is_text(item):
            shown = str(item.value)
            names = [part.strip() for part in shown.split("->")]
        elif isinstance(item, yaml.SequenceNode):
            texts = [v for v in item.value if is_text(v)]
            names = [str(v.value).strip() for v in texts]
            shown = "[" + ", ".join(names) + "]"
            if len(texts) != len(item.value) or len(names) != 2:
                self.source.problem(
                    f"edge {shown} is not a pair of node names",
                    fix="a list edge has exactly two names; for a chain write 'a -> b -> c'",
                    line=at,
                    key="edges",
                )
                return None
        else:
            message = "an edge must be text like 'a -> b' or a pair [a, b]"
            self.source.problem(message, fix=EDGE_FIX, line=at, key="edges")
            return None
        if len(names) < 2 or not all(NODE_NAME.fullmatch(n) for n in names):
            self.source.problem(f"cannot read edge '{shown}'", fix=EDGE_FIX, line=at, key="edges")
            return None
        return names
