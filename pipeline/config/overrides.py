"""``--set`` overrides: edit a parsed config from the command line before it is checked.

Overridden values go through the same checks as the file's own; they are marked so that a problem
with one names the override (``--set vad.aggressiveness``) rather than a line it did not come from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from pipeline.config.spec import GraphSpec, NodeSpec
from pipeline.config.yaml_reader import parse_scalar
from pipeline.errors import Problem
from pipeline.params import did_you_mean


def apply_overrides(spec: GraphSpec, overrides: Iterable[str]) -> list[Problem]:
    """Apply ``target=value`` strings to the spec; returns the ones that name nothing settable."""
    problems: list[Problem] = []
    for item in overrides:
        target, equals, raw = item.partition("=")
        target = target.strip()
        head, _, key = target.partition(".")
        where = f"--set {target}"
        if equals and head in spec.nodes and not key:
            problem = _replace(spec.nodes[head], override_value(raw.strip()))
            if problem is not None:
                problem.file = where
                problems.append(problem)
        elif not (equals and head and key):
            fix = "e.g. --set vad.aggressiveness=3 or --set settings.end_timeout=5"
            problems.append(Problem(f"'{target}' is not node.param=value", fix=fix, file=where))
        elif head == "settings":
            spec.settings[key] = override_value(raw.strip())
            spec.overridden.add(target)
            spec.interpolated.pop(target, None)
        elif head == "server":
            if spec.server is None:
                fix = "add a server: section to serve it (see configs/examples/echo-websocket.yaml)"
                problems.append(Problem("the config has no server: section", fix=fix, file=where))
                continue
            spec.server[key] = override_value(raw.strip())
            spec.overridden.add(target)
            spec.interpolated.pop(target, None)
        elif head in spec.nodes:
            _set(spec.nodes[head], key, override_value(raw.strip()))
        else:
            guess = did_you_mean(head, [*spec.nodes, "settings", "server"])
            fix = f"did you mean '{guess}'?" if guess else "nodes are: " + ", ".join(spec.nodes)
            problems.append(Problem(f"unknown node '{head}'", fix=fix, file=where))
    return problems


def override_value(text: str) -> Any:
    """A ``--set`` value: a YAML scalar, or a flow list/mapping (``[a, b]``, ``{k: v}``)."""
    if text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except (yaml.YAMLError, ValueError):  # ValueError: a bad number or date inside, like [0x_]
            return text
    return parse_scalar(text)


def _replace(node: NodeSpec, value: Any) -> Problem | None:
    """``--set node={type: ..., param: ...}``: the node becomes this one; the file's params are gone.

    This is how an engine is switched from the command line: the new type rarely takes the old
    type's params. A ``queue`` given here replaces the file's; without one the file's is kept.
    """
    if not (isinstance(value, dict) and isinstance(value.get("type"), str) and value["type"]):
        fix = f"e.g. --set '{node.name}={{type: vad.webrtc, aggressiveness: 2}}'"
        return Problem(f"replacing node '{node.name}' takes a mapping with a type", fix=fix, node=node.name)
    node.params.clear()
    node.interpolated.clear()
    node.substituted.clear()
    for key, item in value.items():
        _set(node, str(key), item)
    return None


def _set(node: NodeSpec, key: str, value: Any) -> None:
    """Set ``type``, ``queue.<key>`` or a param; the value no longer comes from the file or environment."""
    if key == "type":
        node.type = value if isinstance(value, str) else str(value)
    elif key == "queue":
        node.queue = value
    elif key.startswith("queue."):
        node.queue = dict(node.queue) if isinstance(node.queue, dict) else {}
        node.queue[key.removeprefix("queue.")] = value
    else:
        node.params[key] = value
    node.overridden.add(key)
    node.interpolated.pop(key, None)
    node.substituted.pop(key, None)
