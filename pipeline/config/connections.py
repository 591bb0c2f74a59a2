"""Nodes that talk to a client connection: a served graph needs them, an unserved one cannot run them.

They say so with a ``connection_role`` class attribute (``"input"`` or ``"output"``); the core knows
nothing more of them.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.config.spec import GraphSpec
from pipeline.errors import Problem
from pipeline.processor import Processor

SERVER_FIX = "add e.g. 'server: {type: websocket, port: 8000}' to the config"


def connection_problems(
    spec: GraphSpec, classes: Mapping[str, type[Processor] | None], served: bool
) -> list[Problem]:
    """Nodes that talk to a connection need a ``server:``; a server needs such a node; one of each role."""
    roles: dict[str, list[str]] = {}
    for name, cls in classes.items():
        role = getattr(cls, "connection_role", "") if cls is not None else ""
        if role:
            roles.setdefault(role, []).append(name)
    problems: list[Problem] = []
    if served and not roles:
        fix = (
            "add a websocket.input node (the browser's microphone) and a websocket.output node (its speaker)"
        )
        problems.append(
            Problem(
                "server: is set but no node talks to the connection", fix=fix, line=spec.lines.get("server")
            )
        )
    for role, names in roles.items():
        first, *others = names
        for name in others if served else names:
            node = spec.nodes[name]
            if served:
                message = f"a served graph takes one connection {role} node; '{first}' is one already"
                fix = f"remove '{name}', or route its frames through '{first}'"
            else:
                message = f"'{name}' ({node.type}) talks to a client connection: it runs only under a server"
                fix = SERVER_FIX
            problems.append(Problem(message, fix=fix, node=name, line=node.line_of("type")))
    for problem in problems:
        problem.file = spec.file
    return problems
