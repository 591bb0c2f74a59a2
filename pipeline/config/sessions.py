"""One new graph per connection, built afresh from a validated config (processors hold per-call state)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pipeline.config.build import Compiled, build
from pipeline.errors import ValidationError
from pipeline.graph import Graph


def session_graph(compiled: Compiled, values: Mapping[str, Any]) -> Graph:
    """A new graph from the validated config, for one connection.

    ``values`` (such as ``session_id``) go to every node whose params have a field of that name.
    Raises ``ValidationError`` if a node refuses its values.
    """
    spec = compiled.spec
    nodes = {}
    for name, node in spec.nodes.items():
        fields = {f.name for f in dataclasses.fields(type(compiled.processors[name]).Params)}
        extra = {key: value for key, value in values.items() if key in fields}
        nodes[name] = dataclasses.replace(node, params={**node.params, **extra}) if extra else node
    fresh, problems = build(dataclasses.replace(spec, nodes=nodes))
    if problems:
        raise ValidationError(problems)
    return fresh.graph()
